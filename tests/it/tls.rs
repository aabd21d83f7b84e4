//! Client TLS flags (`--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth`) as etcd 3.5 applies them, seen through etcdctl and
//! the etcd-client crate.
//!
//! Every test makes its own CA, server certificate (SANs 127.0.0.1 and
//! localhost) and client certificate with rcgen, in the test's temporary
//! directory, so no key material lives in the repository.

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::support::{ok_stdout, StartOptions, TestServer};

/// PEM files of one throwaway PKI.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate signed by another CA, which the server must not trust.
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes `<name>.pem` and `<name>-key.pem`, signed by `issuer`.
fn leaf(
    dir: &Path,
    name: &str,
    sans: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn pki() -> Pki {
    let dir = tempfile::Builder::new()
        .prefix("oxcd-it-pki-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let issuer = ca("oxcd test CA");
    let ca_path = d.join("ca.pem");
    std::fs::write(&ca_path, issuer.pem()).unwrap();
    let (server_cert, server_key) = leaf(
        d,
        "server",
        &["127.0.0.1", "localhost"],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        &issuer,
    );
    let (client_cert, client_key) = leaf(
        d,
        "client",
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        &issuer,
    );
    let (rogue_cert, rogue_key) = leaf(
        d,
        "rogue",
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        &ca("some other CA"),
    );
    Pki {
        _dir: dir,
        ca: ca_path,
        server_cert,
        server_key,
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

impl Pki {
    /// `--cert-file`, `--key-file`, plus `extra`.
    fn server_args(&self, extra: &[String]) -> Vec<String> {
        let mut a = vec![
            "--cert-file".to_string(),
            s(&self.server_cert),
            "--key-file".to_string(),
            s(&self.server_key),
        ];
        a.extend_from_slice(extra);
        a
    }

    fn client_auth_args(&self) -> Vec<String> {
        vec![
            "--trusted-ca-file".to_string(),
            s(&self.ca),
            "--client-cert-auth".to_string(),
        ]
    }

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    /// etcd-client TLS trusting our CA, without a client certificate.
    fn tls_ca_only(&self) -> TlsOptions {
        TlsOptions::new().ca_certificate(Certificate::from_pem(Self::read(&self.ca)))
    }

    /// etcd-client TLS trusting our CA, presenting the given certificate.
    fn tls_with(&self, cert: &Path, key: &Path) -> TlsOptions {
        self.tls_ca_only()
            .identity(Identity::from_pem(Self::read(cert), Self::read(key)))
    }

    fn tls_client(&self) -> TlsOptions {
        self.tls_with(&self.client_cert, &self.client_key)
    }

    fn etcdctl_cacert(&self) -> Vec<String> {
        vec![format!("--cacert={}", s(&self.ca))]
    }

    fn etcdctl_client(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", s(&self.ca)),
            format!("--cert={}", s(&self.client_cert)),
            format!("--key={}", s(&self.client_key)),
        ]
    }
}

/// Strings for `etcdctl_bare`.
fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A put then a get with the etcd-client crate; any failure is returned.
async fn put_get(srv: &TestServer, tls: Option<TlsOptions>) -> Result<String, String> {
    let mut c = srv.try_client_tls(tls).await.map_err(|e| e.to_string())?;
    c.put("crate-key", "crate-value", None)
        .await
        .map_err(|e| e.to_string())?;
    let r = c.get("crate-key", None).await.map_err(|e| e.to_string())?;
    Ok(r.kvs()[0].value_str().unwrap().to_string())
}

#[tokio::test]
async fn etcdctl_put_get_over_tls() {
    let pki = pki();
    let srv = TestServer::start_with(StartOptions {
        args: pki.server_args(&[]),
        https: true,
        client_tls: Some(pki.tls_ca_only()),
        etcdctl_args: pki.etcdctl_cacert(),
    })
    .await;
    assert!(srv.endpoint().starts_with("https://"));
    assert_eq!(ok_stdout(&srv.etcdctl(&["put", "foo", "bar"])), "OK\n");
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "foo"])), "foo\nbar\n");

    // Without --cacert, etcdctl does not trust the server's certificate.
    let out = srv.etcdctl_bare(&["get", "foo"]);
    assert!(!out.status.success(), "etcdctl without --cacert succeeded");

    // Without --client-cert-auth or --trusted-ca-file no client certificate
    // is asked for; one that is offered anyway does no harm.
    let mut with_cert = pki.etcdctl_client();
    with_cert.extend(["get".to_string(), "foo".to_string()]);
    assert_eq!(
        ok_stdout(&srv.etcdctl_bare(&strs(&with_cert))),
        "foo\nbar\n"
    );
}

#[tokio::test]
async fn client_cert_auth_requires_a_certificate_from_the_trusted_ca() {
    let pki = pki();
    let srv = TestServer::start_with(StartOptions {
        args: pki.server_args(&pki.client_auth_args()),
        https: true,
        client_tls: Some(pki.tls_client()),
        etcdctl_args: pki.etcdctl_client(),
    })
    .await;
    assert_eq!(ok_stdout(&srv.etcdctl(&["put", "foo", "bar"])), "OK\n");
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "foo"])), "foo\nbar\n");

    // No client certificate: refused.
    let mut no_cert = pki.etcdctl_cacert();
    no_cert.extend(["get".to_string(), "foo".to_string()]);
    let out = srv.etcdctl_bare(&strs(&no_cert));
    assert!(
        !out.status.success(),
        "etcdctl without a client cert succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A certificate from another CA: refused.
    let mut rogue = pki.etcdctl_cacert();
    rogue.extend([
        format!("--cert={}", s(&pki.rogue_cert)),
        format!("--key={}", s(&pki.rogue_key)),
        "get".to_string(),
        "foo".to_string(),
    ]);
    let out = srv.etcdctl_bare(&strs(&rogue));
    assert!(
        !out.status.success(),
        "etcdctl with a cert from another CA succeeded"
    );
}

#[tokio::test]
async fn trusted_ca_alone_requires_client_certificates() {
    // etcd requires and verifies client certificates whenever
    // --trusted-ca-file is given, even without --client-cert-auth.
    let pki = pki();
    let srv = TestServer::start_with(StartOptions {
        args: pki.server_args(&["--trusted-ca-file".to_string(), s(&pki.ca)]),
        https: true,
        client_tls: Some(pki.tls_client()),
        etcdctl_args: pki.etcdctl_client(),
    })
    .await;
    assert_eq!(ok_stdout(&srv.etcdctl(&["put", "foo", "bar"])), "OK\n");
    let mut no_cert = pki.etcdctl_cacert();
    no_cert.extend(["get".to_string(), "foo".to_string()]);
    assert!(!srv.etcdctl_bare(&strs(&no_cert)).status.success());
    assert!(put_get(&srv, Some(pki.tls_ca_only())).await.is_err());
}

#[tokio::test]
async fn etcd_client_crate_over_tls() {
    let pki = pki();
    let srv = TestServer::start_with(StartOptions {
        args: pki.server_args(&pki.client_auth_args()),
        https: true,
        client_tls: Some(pki.tls_client()),
        etcdctl_args: pki.etcdctl_client(),
    })
    .await;
    assert_eq!(
        put_get(&srv, Some(pki.tls_client())).await.unwrap(),
        "crate-value"
    );
    // The same data through etcdctl: one server, two clients.
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["get", "crate-key", "--print-value-only"])),
        "crate-value\n"
    );
    // Without a client certificate, or with one from another CA, or without
    // TLS at all: no request gets through.
    let no_cert = put_get(&srv, Some(pki.tls_ca_only())).await;
    assert!(no_cert.is_err(), "no client cert: {no_cert:?}");
    let rogue = put_get(&srv, Some(pki.tls_with(&pki.rogue_cert, &pki.rogue_key))).await;
    assert!(rogue.is_err(), "rogue client cert: {rogue:?}");
}

#[tokio::test]
async fn plaintext_client_is_refused_by_a_tls_listener() {
    let pki = pki();
    let srv = TestServer::start_with(StartOptions {
        args: pki.server_args(&[]),
        https: true,
        client_tls: Some(pki.tls_ca_only()),
        etcdctl_args: pki.etcdctl_cacert(),
    })
    .await;
    let http = srv.endpoint().replace("https://", "http://");
    let out = crate::support::run_bounded(
        {
            let mut cmd = std::process::Command::new(crate::support::etcdctl_bin());
            cmd.arg(format!("--endpoints={http}"))
                .args(["--dial-timeout=3s", "--command-timeout=5s", "get", "foo"])
                .env("ETCDCTL_API", "3")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd
        },
        "",
        crate::support::ETCDCTL_TIMEOUT,
    );
    assert!(!out.status.success(), "plaintext etcdctl got an answer");
}

#[tokio::test]
async fn https_url_without_cert_and_key_is_a_startup_error() {
    let pki = pki();
    let (status, logs) = TestServer::start_expecting_exit(StartOptions {
        // A trusted CA is not enough: the server needs its own pair.
        args: vec!["--trusted-ca-file".to_string(), s(&pki.ca)],
        https: true,
        ..Default::default()
    })
    .await;
    assert!(!status.success());
    assert!(
        logs.contains("TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:"),
        "unexpected start-up output:\n{logs}"
    );
}

#[tokio::test]
async fn cert_flags_on_an_http_url_serve_plaintext() {
    let pki = pki();
    let srv = TestServer::start_with(StartOptions {
        args: pki.server_args(&pki.client_auth_args()),
        https: false,
        ..Default::default()
    })
    .await;
    assert!(srv.endpoint().starts_with("http://"));
    // Plain etcdctl and etcd-client, no certificates: it is plaintext, and
    // --client-cert-auth does not apply to an http URL.
    assert_eq!(ok_stdout(&srv.etcdctl(&["put", "foo", "bar"])), "OK\n");
    assert_eq!(put_get(&srv, None).await.unwrap(), "crate-value");
    assert!(
        srv.logs().contains("ignoring key and cert files"),
        "no warning in:\n{}",
        srv.logs()
    );
}

//! Client TLS: etcd's `--cert-file`, `--key-file`, `--trusted-ca-file` and
//! `--client-cert-auth`, served by rustls (ring) through tonic.
//!
//! What it models is etcd 3.5's client listener set-up (`embed`'s
//! `configureClientListeners` and `TLSInfo.ServerConfig`):
//!
//! - TLS is chosen per listen URL. An `https://` URL in
//!   `--listen-client-urls` is served with the `--cert-file`/`--key-file`
//!   pair; an `http://` URL is served in plaintext even when the cert flags are
//!   given, with a warning, as etcd does.
//! - An `https://` URL without `--cert-file`/`--key-file` is a start-up error,
//!   with etcd's message.
//! - `--trusted-ca-file` makes the `https` listeners require a client
//!   certificate signed by that CA, with or without `--client-cert-auth`:
//!   etcd requires and verifies one when `TrustedCAFile != "" ||
//!   ClientCertAuth`. A client without one fails the handshake.
//! - `--client-cert-auth` without `--trusted-ca-file` is refused at start-up.
//!   etcd would verify client certificates against the system's roots, which
//!   is never what a cluster wants; oxcd asks for the CA instead.
//!
//! Files are read and the TLS configuration is built once at start-up, so a
//! missing file, an unparsable key or an empty CA bundle stops the server
//! before Raft starts, naming the flag and the path.
//!
//! Not modelled: `--auto-tls` (self-signed certificates), `--client-crl-file`,
//! `--cipher-suites`, `--tls-min-version`/`--tls-max-version`, and the common
//! name of a client certificate as the auth user (oxcd has no auth yet).
//! The peer flags (`--peer-cert-file` and the rest) are parsed by `config` but
//! unused: there is no peer transport yet to secure.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::{split_urls, Config};

/// How long a client may take to complete the TLS handshake before its
/// connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// etcd's start-up error for an `https` client URL without a cert/key pair.
pub fn missing_cert_error(url: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "TLS key/cert (--cert-file, --key-file) must be provided for client url {url} with HTTPS scheme"
    )
}

/// Checks `--listen-client-urls` against the TLS flags as etcd does before it
/// binds: an `https` URL needs `--cert-file`/`--key-file`; TLS flags on an
/// `http` URL are ignored with a warning.
pub fn check_client_urls(config: &Config) -> anyhow::Result<()> {
    let has_pair = config.cert_file.is_some() && config.key_file.is_some();
    for (raw, url) in config
        .listen_client_urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .zip(split_urls(&config.listen_client_urls).map_err(anyhow::Error::msg)?)
    {
        if url.tls {
            if !has_pair {
                return Err(missing_cert_error(raw));
            }
            continue;
        }
        if config.cert_file.is_some() || config.key_file.is_some() {
            tracing::warn!(
                client_url = raw,
                "scheme is HTTP while key and cert files are present; ignoring key and cert files"
            );
        }
        if config.client_cert_auth {
            tracing::warn!(
                client_url = raw,
                "scheme is HTTP while --client-cert-auth is enabled; ignoring client cert auth for this URL"
            );
        }
    }
    Ok(())
}

/// The TLS configuration of the `https` client listeners: `None` when no
/// `--cert-file`/`--key-file` pair is given, an error when the files cannot be
/// read or do not make a usable configuration.
pub fn server_tls(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (cert_file, key_file) = match (&config.cert_file, &config.key_file) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => return Ok(None),
        _ => bail!("--cert-file and --key-file must be given together"),
    };
    let cert = read_pem("--cert-file", cert_file)?;
    let key = read_pem("--key-file", key_file)?;
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT);
    match &config.trusted_ca_file {
        // etcd requires and verifies client certificates whenever a trusted
        // CA is given, --client-cert-auth or not.
        Some(ca_file) => {
            let ca = read_pem("--trusted-ca-file", ca_file)?;
            tls = tls
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        None if config.client_cert_auth => {
            bail!(
                "--client-cert-auth needs --trusted-ca-file, the CA that signs client certificates"
            )
        }
        None => {}
    }
    // Build the rustls configuration once now, so a bad key or an empty CA
    // bundle is a start-up error rather than a failure of every handshake.
    Server::builder().tls_config(tls.clone()).map_err(|e| {
        anyhow::anyhow!(
            "client TLS configuration (--cert-file {}, --key-file {}{}): {}",
            cert_file.display(),
            key_file.display(),
            config
                .trusted_ca_file
                .as_ref()
                .map(|c| format!(", --trusted-ca-file {}", c.display()))
                .unwrap_or_default(),
            error_chain(&e)
        )
    })?;
    Ok(Some(tls))
}

/// Reads a PEM file, naming the flag and the path on failure, and refusing a
/// file with no PEM block in it (tonic would silently find nothing).
fn read_pem(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("{flag}: read {}", path.display()))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        bail!("{flag}: {} holds no PEM data", path.display());
    }
    Ok(pem)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("oxcd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn https_without_a_cert_is_refused_with_etcds_message() {
        let c = config(&["--listen-client-urls=http://127.0.0.1:1,https://127.0.0.1:2"]);
        let e = check_client_urls(&c).unwrap_err().to_string();
        assert_eq!(
            e,
            "TLS key/cert (--cert-file, --key-file) must be provided for client url \
             https://127.0.0.1:2 with HTTPS scheme"
        );
    }

    #[test]
    fn http_with_tls_flags_is_plaintext() {
        let c = config(&[
            "--listen-client-urls=http://127.0.0.1:1",
            "--cert-file=/nonexistent/c.pem",
            "--key-file=/nonexistent/k.pem",
            "--client-cert-auth",
        ]);
        check_client_urls(&c).unwrap();
    }

    #[test]
    fn no_cert_no_tls() {
        assert!(server_tls(&config(&[])).unwrap().is_none());
    }

    #[test]
    fn missing_files_name_the_flag() {
        let c = config(&[
            "--cert-file=/nonexistent/c.pem",
            "--key-file=/nonexistent/k.pem",
        ]);
        let e = format!("{:#}", server_tls(&c).unwrap_err());
        assert!(e.starts_with("--cert-file: read /nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn client_cert_auth_needs_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let p = pem.to_str().unwrap();
        let c = config(&["--cert-file", p, "--key-file", p, "--client-cert-auth"]);
        let e = server_tls(&c).unwrap_err().to_string();
        assert!(
            e.contains("--client-cert-auth needs --trusted-ca-file"),
            "{e}"
        );
    }

    #[test]
    fn unusable_pem_is_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let p = pem.to_str().unwrap();
        let e = server_tls(&config(&["--cert-file", p, "--key-file", p]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("client TLS configuration (--cert-file "),
            "{e}"
        );
    }
}

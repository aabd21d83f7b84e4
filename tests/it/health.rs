//! etcd's HTTP endpoints beside gRPC on the client port (`/health`,
//! `/version`, `/livez`, `/readyz`) and on `--listen-metrics-urls`, and the
//! `oxcd probe` subcommand built on them.
//!
//! etcd 3.5.1 facts (checked with `OXCD_TEST_TARGET=etcd`):
//! - The client port answers HTTP/1.1 beside gRPC. `GET /health` → 200
//!   `{"health":"true","reason":""}` (no newline), `Content-Type: text/plain;
//!   charset=utf-8`. `?serializable=true` answers the same from the member
//!   alone.
//! - Without a leader: 503, body `{"health":"false","reason":"RAFT NO
//!   LEADER"}` plus Go's `http.Error` newline. With `?serializable=true`
//!   3.5.1 answers the same 503; later 3.5 releases (and oxcd, which reports
//!   3.5.17) skip the leader check there and answer 200 from the member's
//!   own store — the one difference the tests switch on.
//! - Any other method: 405 `Method Not Allowed\n` with `Allow: GET`. Unknown
//!   paths (`/`, `/health/`): 404 `404 page not found\n`.
//! - `GET /version` → `{"etcdserver":"3.5.1","etcdcluster":"3.5.0"}`,
//!   `Content-Type: application/json`. oxcd says 3.5.17 and adds `"oxcd"`.
//! - The metrics listener serves `/health` but not `/version` (404).
//! - `/livez` and `/readyz` arrived in etcd 3.5.11 (404 on 3.5.1): those
//!   checks follow the later 3.5 releases' code (`ok\n`; `?verbose` lists
//!   `[+]<check> ok` lines; a failure is 503 with `[-]<check> failed: <err>`)
//!   and run against oxcd only.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{reserve_ports, target, StartOptions, Target, TestCluster, TestServer};

/// One HTTP answer: status, lower-cased header lines, body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `http://host:port` (the endpoint form the harness uses),
/// HTTP/1.1 with `Connection: close`, bounded to `limit`.
pub async fn http(
    method: &str,
    endpoint: &str,
    path: &str,
    limit: Duration,
) -> Result<HttpAnswer, String> {
    let addr = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let work = async {
        let mut conn = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        parse(&raw)
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(format!("{method} {endpoint}{path}: no answer in {limit:?}")))
}

pub async fn get(endpoint: &str, path: &str) -> HttpAnswer {
    http("GET", endpoint, path, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("GET {endpoint}{path}: {e}"))
}

fn parse(raw: &[u8]) -> Result<HttpAnswer, String> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

const HEALTHY: &str = r#"{"health":"true","reason":""}"#;

#[tokio::test]
async fn health_and_version_on_the_client_port() {
    let s = TestServer::start().await;
    let ep = s.endpoint();

    for path in ["/health", "/health?serializable=true"] {
        let a = get(&ep, path).await;
        assert_eq!((a.status, a.body.as_str()), (200, HEALTHY), "{path}");
        assert_eq!(
            a.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{path}"
        );
    }

    let v = get(&ep, "/version").await;
    assert_eq!(v.status, 200);
    assert_eq!(v.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&v.body).unwrap();
    assert!(
        json["etcdserver"].as_str().unwrap().starts_with("3.5."),
        "{v:?}"
    );
    assert_eq!(json["etcdcluster"], "3.5.0");
    if target() == Target::Oxcd {
        assert_eq!(json["etcdserver"], "3.5.17");
        assert_eq!(json["oxcd"], env!("CARGO_PKG_VERSION"));
    }

    let post = http("POST", &ep, "/health", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (post.status, post.body.as_str(), post.header("allow")),
        (405, "Method Not Allowed\n", Some("GET"))
    );
    for path in ["/", "/health/", "/no-such-path"] {
        let a = get(&ep, path).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (404, "404 page not found\n"),
            "{path}"
        );
    }

    // gRPC keeps working on the same port, before and after HTTP/1 traffic.
    let mut c = s.client().await;
    c.put("health-key", "v", None).await.unwrap();
    let r = c.get("health-key", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"v");
    let out = s.etcdctl(&["endpoint", "health"]);
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn livez_and_readyz() {
    if target() == Target::Etcd {
        eprintln!("skipped on etcd 3.5.1: /livez and /readyz arrived in 3.5.11");
        return;
    }
    let s = TestServer::start().await;
    let ep = s.endpoint();
    for path in [
        "/livez",
        "/readyz",
        "/livez/serializable_read",
        "/readyz/linearizable_read",
    ] {
        let a = get(&ep, path).await;
        assert_eq!((a.status, a.body.as_str()), (200, "ok\n"), "{path}");
    }
    let a = get(&ep, "/readyz?verbose").await;
    assert_eq!(
        a.body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n"
    );
    let a = get(&ep, "/readyz?verbose&exclude=linearizable_read").await;
    assert_eq!(
        a.body,
        "[+]data_corruption ok\n[+]serializable_read ok\nok\n"
    );
    let a = get(&ep, "/livez?verbose").await;
    assert_eq!(a.body, "[+]serializable_read ok\nok\n");
}

#[tokio::test]
async fn metrics_listener_serves_health() {
    let port = reserve_ports(1)[0];
    let s = TestServer::start_with(StartOptions {
        args: vec![
            "--listen-metrics-urls".into(),
            format!("http://127.0.0.1:{port}"),
        ],
        ..Default::default()
    })
    .await;
    let ep = format!("http://127.0.0.1:{port}");
    let a = get(&ep, "/health").await;
    assert_eq!((a.status, a.body.as_str()), (200, HEALTHY));
    let a = get(&ep, "/health?serializable=true").await;
    assert_eq!((a.status, a.body.as_str()), (200, HEALTHY));
    // etcd serves /version on the client port only.
    assert_eq!(get(&ep, "/version").await.status, 404);
    if target() == Target::Oxcd {
        assert_eq!(get(&ep, "/livez").await.body, "ok\n");
        assert_eq!(get(&ep, "/readyz").await.body, "ok\n");
        // The probe subcommand, through both listeners.
        for (endpoint, path) in [(ep.as_str(), "/health"), (&s.endpoint(), "/readyz")] {
            let out = probe(&["--endpoint", endpoint, "--path", path]);
            assert!(out.status.success(), "{out:?}");
        }
        let out = probe(&["--endpoint", &ep, "--path", "/nope"]);
        assert!(!out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("HTTP 404"), "{stdout}");
    }
}

fn probe(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_oxcd"))
        .arg("probe")
        .args(args)
        .args(["--timeout", "10s"])
        .output()
        .unwrap()
}

/// Polls `path` until it answers `status` with `want` in the body, bounded;
/// that answer.
async fn wait_for_answer(
    ep: &str,
    path: &str,
    status: u16,
    want: &str,
    limit: Duration,
) -> HttpAnswer {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        match http("GET", ep, path, Duration::from_secs(10)).await {
            Ok(a) if a.status == status && a.body.contains(want) => return a,
            Ok(a) => last = Some(format!("{a:?}")),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{ep}{path} did not answer {status} {want:?} within {limit:?}; last: {last:?}");
}

#[tokio::test]
async fn no_leader_is_unhealthy_until_quorum_returns() {
    let mut c = TestCluster::start(3).await;
    let ep = c.member(0).endpoint();
    let a = get(&ep, "/health").await;
    assert_eq!((a.status, a.body.as_str()), (200, HEALTHY));

    c.member_mut(1).stop();
    c.member_mut(2).stop();
    // While the member still knows its (departed) leader, the read times
    // out (`RANGE ERROR:etcdserver: request timed out`); once an election
    // timeout has passed, no member knows a leader.
    let a = wait_for_answer(&ep, "/health", 503, "NO LEADER", Duration::from_secs(30)).await;
    assert_eq!(
        a.body, "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n",
        "{a:?}"
    );
    // The member alone is fine (etcd 3.5.1 still checked for a leader here;
    // later 3.5 releases, whose behaviour oxcd follows, do not).
    let a = get(&ep, "/health?serializable=true").await;
    match target() {
        Target::Oxcd => assert_eq!((a.status, a.body.as_str()), (200, HEALTHY)),
        Target::Etcd => assert_eq!(a.status, 503, "{a:?}"),
    }

    if target() == Target::Oxcd {
        assert_eq!(get(&ep, "/livez").await.body, "ok\n");
        // The linearizable read waits out the request timeout (~6 s here).
        let started = Instant::now();
        let a = get(&ep, "/readyz").await;
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(
            a.body,
            "[+]data_corruption ok\n[+]serializable_read ok\n\
             [-]linearizable_read failed: etcdserver: request timed out\n\n"
        );
        assert!(started.elapsed() < Duration::from_secs(12));
        let out = probe(&["--endpoint", &ep]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("RAFT NO LEADER"));
    }

    c.member_mut(1).start();
    c.member_mut(2).start();
    let a = wait_for_answer(&ep, "/health", 200, "", Duration::from_secs(30)).await;
    assert_eq!(a.body, HEALTHY);
    if target() == Target::Oxcd {
        assert_eq!(get(&ep, "/readyz").await.body, "ok\n");
    }
}

//! `oxcd probe`: a health check for images without a shell or curl.
//!
//! ```text
//! oxcd probe [--endpoint http://127.0.0.1:2379] [--path /health] [--timeout 5s]
//! ```
//!
//! Sends one `GET <path>` over plain HTTP/1.1 and exits 0 when the member
//! answers 200 (for `/health`, also `"health":"true"` in the body), 1
//! otherwise; the answer (or the error) is printed so `docker inspect` shows
//! why a container is unhealthy. Use it in a compose `healthcheck` or a
//! Kubernetes `exec` probe; an https client port can be probed through a
//! plain `--listen-metrics-urls` listener.

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{parse_duration, Url};

#[derive(Debug, Parser)]
#[command(
    name = "oxcd probe",
    about = "Exit 0 when the member's health endpoint answers healthy"
)]
pub struct ProbeArgs {
    /// The member's client (or metrics) URL.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub endpoint: String,
    /// The path to ask: /health, /health?serializable=true, /livez, /readyz.
    #[arg(long, default_value = "/health")]
    pub path: String,
    /// How long the whole probe may take.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs the probe with `args` (without the `probe` word itself); the
/// process's exit code.
pub async fn main(args: impl IntoIterator<Item = String>) -> std::process::ExitCode {
    let args =
        match ProbeArgs::try_parse_from(std::iter::once("oxcd probe".to_string()).chain(args)) {
            Ok(a) => a,
            Err(e) => e.exit(),
        };
    match tokio::time::timeout(args.timeout, probe(&args)).await {
        Ok(Ok(body)) => {
            println!("{}", body.trim_end());
            std::process::ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            println!("unhealthy: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            println!("unhealthy: no answer within {:?}", args.timeout);
            std::process::ExitCode::FAILURE
        }
    }
}

/// The body of a healthy answer, or why the member is not healthy.
pub async fn probe(args: &ProbeArgs) -> anyhow::Result<String> {
    let url = Url::parse(&args.endpoint).map_err(anyhow::Error::msg)?;
    if url.tls {
        bail!("https endpoints are not supported; probe a plain --listen-metrics-urls listener");
    }
    let (status, body) = get(&url.host, url.port, &args.path).await?;
    if status != 200 {
        bail!("HTTP {status}: {}", body.trim_end());
    }
    let health_path = args.path.split('?').next() == Some("/health");
    if health_path && !body.contains(r#""health":"true""#) {
        bail!("{}", body.trim_end());
    }
    Ok(body)
}

/// One `GET` with `Connection: close`; the status code and body.
async fn get(host: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut conn = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connect to {host}:{port}"))?;
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: oxcd-probe\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.context("send")?;
    let mut raw = Vec::new();
    // A health answer is tiny; refuse to buffer anything large.
    (&mut conn)
        .take(1 << 20)
        .read_to_end(&mut raw)
        .await
        .context("read the answer")?;
    parse_response(&raw)
}

/// Status code and body of an HTTP/1.1 response (plain or chunked body).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP status line")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let (s, b) = parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 29\r\n\r\n{\"health\":\"true\",\"reason\":\"\"}",
        )
        .unwrap();
        assert_eq!((s, b.as_str()), (200, r#"{"health":"true","reason":""}"#));
        let (s, b) = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_str()), (503, "abcde"));
        assert!(parse_response(b"garbage").is_err());
    }
}

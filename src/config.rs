//! etcd's command-line flags and `ETCD_*` environment variables.
//!
//! Every flag has etcd's name, default and meaning, and can also be given as
//! the environment variable etcd would read (`--initial-cluster` ↔
//! `ETCD_INITIAL_CLUSTER`); a flag on the command line wins over the
//! environment, as in etcd. Boolean flags accept `--flag`, `--flag=true` and
//! `--flag=false` like Go's flag package.
//!
//! Without any flag, oxcd starts a one-member cluster named `default` on
//! 127.0.0.1:2379 (peer 2380) with its data in `./default.oxcd`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// etcd's version that oxcd reports in `Status.version` and `/version`.
/// kube-apiserver parses it: 3.5.13 and later unlock watch progress requests.
pub const ETCD_VERSION: &str = "3.5.17";
/// etcd's cluster version (major.minor.0), as etcd reports it.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

#[derive(Debug, Clone, Parser)]
#[command(name = "oxcd", version, about = "A drop-in replacement for etcd v3")]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory (default: `<name>.oxcd`).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Path to a dedicated WAL directory (default: `<data-dir>/wal`).
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (comma-separated).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,

    /// Additional URLs to listen on for plain-HTTP `/health`, `/livez` and
    /// `/readyz` (kubeadm probes port 2381); none by default.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,

    /// Client URLs of this member advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,

    /// URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,

    /// This member's peer URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping: `name=peerURL,...`.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER",
        default_value = "default=http://localhost:2380"
    )]
    pub initial_cluster: String,

    /// Initial cluster state (`new` or `existing`).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new",
          value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,

    /// Initial cluster token, mixed into member and cluster ids.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Number of entries kept behind a snapshot for slow followers to catch up
    /// from the log (instead of a snapshot).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    pub experimental_snapshot_catchup_entries: u64,

    /// Raise alarms when backend size exceeds the given quota (0 = default 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,

    /// TEST ONLY, UNSAFE: serve linearizable reads from local state without
    /// the ReadIndex barrier (stale reads). Exists so the Jepsen-style tests
    /// can prove their checker catches a broken read path (issue 6).
    #[arg(long, hide = true)]
    pub unsafe_no_read_barrier: bool,

    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Enable client cert authentication.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,

    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Enable peer client cert authentication.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,

    /// Duration of periodic watch progress notifications (e.g. 10m, 5s).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
          default_value = "10m", value_parser = parse_duration)]
    pub experimental_watch_progress_notify_interval: Duration,

    /// Log level: debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: `console` (human-readable) or `json`.
    #[arg(long, env = "ETCD_LOG_FORMAT", default_value = "console",
          value_parser = ["console", "json"])]
    pub log_format: String,
}

impl Config {
    /// The data directory: `--data-dir`, else `<name>.oxcd` in the working directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.oxcd", self.name)))
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.wal_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("wal"))
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval)
    }

    pub fn election(&self) -> Duration {
        Duration::from_millis(self.election_timeout)
    }

    /// The backend quota in bytes; etcd's default when the flag is 0.
    pub fn quota_bytes(&self) -> i64 {
        if self.quota_backend_bytes <= 0 {
            2 * 1024 * 1024 * 1024
        } else {
            self.quota_backend_bytes
        }
    }

    /// Checks that etcd would also refuse at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        if self.max_txn_ops == 0 {
            return Err("--max-txn-ops must be positive".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("--cert-file and --key-file must be given together".into());
        }
        split_urls(&self.listen_client_urls)?;
        split_urls(&self.listen_peer_urls)?;
        if split_urls(&self.listen_metrics_urls)?.iter().any(|u| u.tls) {
            return Err("--listen-metrics-urls: https is not supported yet; use http".into());
        }
        Ok(())
    }
}

/// A parsed `http://host:port` or `https://host:port` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let s = s.trim();
        let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("URL scheme must be http or https: {s}"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("URL address does not have the form \"host:port\": {s}"))?;
        let port = port
            .parse()
            .map_err(|_| format!("invalid port in URL: {s}"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Url { tls, host, port })
    }

    /// The socket address to bind: `localhost` binds the IPv4 loopback.
    pub fn bind_addr(&self) -> Result<SocketAddr, String> {
        let host = if self.host == "localhost" {
            "127.0.0.1"
        } else {
            &self.host
        };
        format!(
            "{}:{}",
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            },
            self.port
        )
        .parse()
        .map_err(|_| format!("cannot listen on host {:?}: give an IP address", self.host))
    }
}

/// Splits a comma-separated URL list, as etcd's URL flags take.
pub fn split_urls(s: &str) -> Result<Vec<Url>, String> {
    s.split(',')
        .filter(|u| !u.trim().is_empty())
        .map(Url::parse)
        .collect()
}

/// Parses Go-style durations: `10m`, `5s`, `250ms`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(total);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        total += Duration::from_secs_f64(value * secs);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_one_member_cluster_on_loopback() {
        let c = Config::try_parse_from(["oxcd"]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir(), PathBuf::from("default.oxcd"));
        let client = split_urls(&c.listen_client_urls).unwrap();
        assert_eq!(
            client[0].bind_addr().unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        assert_eq!(c.initial_cluster, "default=http://localhost:2380");
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.max_request_bytes, 1_572_864);
        c.validate().unwrap();
    }

    #[test]
    fn go_style_booleans_and_durations() {
        let c = Config::try_parse_from([
            "oxcd",
            "--client-cert-auth",
            "--peer-client-cert-auth=false",
            "--experimental-watch-progress-notify-interval=5s",
        ])
        .unwrap();
        assert!(c.client_cert_auth);
        assert!(!c.peer_client_cert_auth);
        assert_eq!(
            c.experimental_watch_progress_notify_interval,
            Duration::from_secs(5)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn urls() {
        let u = Url::parse("https://[::1]:2379").unwrap();
        assert!(u.tls);
        assert_eq!(u.bind_addr().unwrap(), "[::1]:2379".parse().unwrap());
        assert!(Url::parse("127.0.0.1:2379").is_err());
        assert!(Url::parse("http://127.0.0.1").is_err());
    }

    #[test]
    fn election_timeout_must_cover_five_heartbeats() {
        let c = Config::try_parse_from(["oxcd", "--heartbeat-interval=300"]).unwrap();
        assert!(c.validate().is_err());
    }
}

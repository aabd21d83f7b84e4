//! Load generator shaped like etcd's `tools/benchmark`, for comparing oxcd
//! with etcd over the same client code: the KV workloads on our generated
//! KV client over `oxcd::channel::Direct`, the watch and lease workloads on
//! `etcd-client` (both tonic).
//!
//! ```text
//! cargo bench --bench load -- put --endpoints http://127.0.0.1:2379 \
//!     --conns 10 --clients 100 --total 20000 --key-size 8 --val-size 256 \
//!     [--sequential-keys] [--key-space-size N]
//! cargo bench --bench load -- range KEY [END] [--consistency l|s] --clients 100 --total 20000
//! cargo bench --bench load -- txn-put --txn-ops 4 --clients 100 --total 20000
//! cargo bench --bench load -- txn-mixed --rw-ratio 1 --key-space-size 20000 --clients 100
//! cargo bench --bench load -- watch --streams 10 --watch-per-stream 100 \
//!     --watched-key-total 10 --sequential-keys --key-space-size 10 --put-total 2000
//! cargo bench --bench load -- watch-latency --streams 10 --watchers-per-stream 10 \
//!     --put-total 1000 --put-rate 100
//! cargo bench --bench load -- lease-keepalive --clients 100 --total 20000
//! ```
//!
//! Request/response workloads (`put`, `range`, `txn-put`, `txn-mixed`,
//! `lease-keepalive`): `--conns` connections are opened; client task `i`
//! uses connection `i % conns` and issues requests back to back until
//! `--total` requests have been issued (shared counter) or `--max-seconds`
//! have passed. The watch workloads (`watch`, `watch-latency`) open watch
//! streams, then put at `--put-rate` and time every event from its put's
//! send to its arrival (`watch.rs`).
//!
//! Prints ops/s (events/s for the watch workloads) and latency percentiles;
//! `--json` prints one JSON line instead. Exit status: 0 when every request
//! succeeded (and every expected event arrived), 2 when some failed, 1 on a
//! setup error (bad flags, cannot connect, cannot create a watch or lease).
//!
//! Keys follow `tools/benchmark`: a request's key index is written as a
//! zigzag varint into a zeroed buffer of `--key-size` bytes; the index is
//! `i % key-space-size` with `--sequential-keys`, uniform random otherwise.
//! As in etcd, `put`'s key space defaults to 1 (one key written over and
//! over): pass `--sequential-keys --key-space-size TOTAL` for distinct keys.
//! `txn-put` keys are `(i * txn-ops + j) % key-space-size`, the key space
//! defaulting to `total * txn-ops`, so a transaction never names a key twice.

mod kv;
mod lease;
mod watch;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use etcd_client::{Client, ConnectOptions, GetOptions};
use oxcd::channel::Direct;
use oxcd::proto::etcdserverpb::kv_client::KvClient;
use oxcd::proto::etcdserverpb::RangeRequest;

#[derive(Parser, Debug)]
#[command(
    name = "load",
    about = "etcd v3 load generator (etcd tools/benchmark shaped)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Comma-separated client URLs; connections are spread over them round-robin.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Number of gRPC connections (HTTP/2 channels).
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent clients (tasks); client i uses connection i % conns.
    /// For the watch workloads: the number of put tasks.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Total number of requests (the watch workloads use --put-total).
    #[arg(long, global = true, default_value_t = 10000)]
    pub total: u64,
    /// Safety limit: stop issuing requests after this many seconds.
    #[arg(long, global = true, default_value_t = 120.0)]
    pub max_seconds: f64,
    /// Per-request timeout in seconds (a timed-out request counts as an error).
    #[arg(long, global = true, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Seconds to wait for each endpoint to answer a first request.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub dial_timeout: f64,
    /// Print one JSON line instead of the human-readable summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Free-form label copied into the JSON line (e.g. server name, rep).
    #[arg(long, global = true, default_value = "")]
    pub label: String,
    /// Passed by `cargo bench` to harness=false targets; ignored.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Put requests.
    Put(kv::PutArgs),
    /// Range requests over KEY (or [KEY, END)).
    Range(kv::RangeArgs),
    /// Txn requests, each holding --txn-ops puts.
    TxnPut(kv::TxnPutArgs),
    /// Txn requests, each one range (a read) or one put (a write), mixed by --rw-ratio.
    TxnMixed(kv::TxnMixedArgs),
    /// Watch fan-out: streams × watchers over --watched-key-total keys, then
    /// --put-total puts on those keys; events/s delivered and put-to-event latency.
    Watch(watch::WatchArgs),
    /// Watch latency: streams × watchers on one key, --put-total puts at
    /// --put-rate; put-to-event latency.
    WatchLatency(watch::WatchLatencyArgs),
    /// Lease keepalives: one lease and one keepalive stream per client,
    /// --total keepalives in all, each awaiting its response.
    LeaseKeepalive,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

/// splitmix64: enough randomness for key choice without a dependency.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed that differs between runs.
pub fn time_seed() -> u64 {
    mix(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1))
}

/// Go's binary.PutVarint (zigzag) into a zeroed buffer of `size` bytes.
pub fn make_key(size: usize, n: u64) -> Vec<u8> {
    let mut k = vec![0u8; size.max(1)];
    let mut ux = (n as i64 as u64) << 1; // n >= 0, so zigzag is n << 1
    let mut i = 0;
    while ux >= 0x80 && i < k.len() {
        k[i] = (ux as u8) | 0x80;
        ux >>= 7;
        i += 1;
    }
    if i < k.len() {
        k[i] = ux as u8;
    }
    k
}

/// Microseconds of `d`, saturated into a u32 (71 minutes).
pub fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// Latency summary in ms of a sorted list of µs.
#[derive(Clone, Copy, Default)]
pub struct Lat {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Lat {
    pub fn of(sorted: &[u32]) -> Lat {
        let n = sorted.len();
        Lat {
            mean: if n > 0 {
                sorted.iter().map(|&x| x as f64).sum::<f64>() / n as f64 / 1000.0
            } else {
                0.0
            },
            p50: pct(sorted, 50.0),
            p90: pct(sorted, 90.0),
            p99: pct(sorted, 99.0),
            p999: pct(sorted, 99.9),
            max: sorted.last().copied().unwrap_or(0) as f64 / 1000.0,
        }
    }

    fn text(&self) -> String {
        format!(
            "mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.mean, self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// What a workload measured, printed the same way for every workload.
pub struct Summary {
    pub workload: &'static str,
    /// Requests (or, for the watch workloads, events) planned.
    pub total: u64,
    /// Successful requests, or events delivered.
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Seconds over which `ok` is counted (the rate's denominator).
    pub elapsed: f64,
    /// Latencies in µs, sorted: one per successful request, or per event.
    pub lat: Vec<u32>,
    pub hit_limit: bool,
    /// Text output: what `ok` counts ("requests", "events") and its rate unit.
    pub noun: &'static str,
    pub unit: &'static str,
    /// Text output: the workload's shape, after its name.
    pub shape: String,
    /// Text output: what --max-seconds cut short ("--total 20000").
    pub limit_of: String,
    /// Workload-specific JSON fields (name, raw JSON value), after the common ones.
    pub extra_json: Vec<(String, String)>,
    /// Workload-specific text lines, after the common ones.
    pub extra_text: Vec<String>,
}

impl Summary {
    fn print(&self, c: &Common) {
        let ops = self.ok as f64 / self.elapsed.max(1e-9);
        let l = Lat::of(&self.lat);
        if c.json {
            let mut extra = String::new();
            for (k, v) in &self.extra_json {
                extra.push_str(&format!(",\"{k}\":{v}"));
            }
            println!(
                "{{\"workload\":{},\"label\":{},\"endpoints\":{},\"conns\":{},\"clients\":{},\"total\":{},\
\"ok\":{},\"errors\":{},\"elapsed_s\":{:.4},\"ops_per_s\":{:.1},\"mean_ms\":{:.3},\"p50_ms\":{:.3},\
\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"hit_max_seconds\":{},\"first_error\":{}{extra}}}",
                json_str(self.workload),
                json_str(&c.label),
                json_str(&c.endpoints.join(",")),
                c.conns,
                c.clients,
                self.total,
                self.ok,
                self.errors,
                self.elapsed,
                ops,
                l.mean,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                self.hit_limit,
                self.first_error
                    .as_deref()
                    .map(json_str)
                    .unwrap_or_else(|| "null".into()),
            );
        } else {
            println!("workload   {} ({})", self.workload, self.shape);
            println!(
                "{:<10} {} ok, {} errors in {:.3} s",
                self.noun, self.ok, self.errors, self.elapsed
            );
            println!("throughput {ops:.1} {}", self.unit);
            println!("latency ms {}", l.text());
            for line in &self.extra_text {
                println!("{line}");
            }
            if self.hit_limit {
                println!(
                    "stopped by --max-seconds {} before {}",
                    c.max_seconds, self.limit_of
                );
            }
            if let Some(e) = &self.first_error {
                println!("first error: {e}");
            }
        }
    }
}

/// The request/response workloads' shape line: "10 conns, 100 clients".
pub fn conns_clients(c: &Common) -> String {
    format!("{} conns, {} clients", c.conns, c.clients)
}

/// Connects to `endpoint` and waits for it to answer a serializable read,
/// so that dialing (and a server still starting up) is not measured.
pub async fn connect(endpoint: &str, c: &Common) -> anyhow::Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs_f64(c.dial_timeout))
        .with_timeout(Duration::from_secs_f64(c.request_timeout));
    let deadline = Instant::now() + Duration::from_secs_f64(c.dial_timeout);
    let client = Client::connect([endpoint], Some(opts)).await?;
    let mut kv = client.kv_client();
    loop {
        match kv
            .get("\0load-warmup", Some(GetOptions::new().with_serializable()))
            .await
        {
            Ok(_) => return Ok(client),
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("{endpoint}: no answer within {}s: {e}", c.dial_timeout)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Like [`connect`], on a channel straight onto one HTTP/2 connection
/// (`oxcd::channel::Direct`): no tower `Buffer` task between a client task
/// and the connection, so the generator takes less of the CPU the servers
/// share with it (benches/README.md). Requests are not timed out by the
/// channel: the workloads bound them with `--request-timeout`.
pub async fn connect_direct(endpoint: &str, c: &Common) -> anyhow::Result<Direct> {
    let channel = Direct::lazy(endpoint, Duration::from_secs_f64(c.dial_timeout), None)
        .map_err(|e| anyhow::anyhow!("{endpoint}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs_f64(c.dial_timeout);
    let mut kv = KvClient::new(channel.clone());
    loop {
        let warmup = RangeRequest {
            key: b"\0load-warmup".to_vec(),
            serializable: true,
            ..Default::default()
        };
        match kv.range(warmup).await {
            Ok(_) => return Ok(channel),
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("{endpoint}: no answer within {}s: {e}", c.dial_timeout)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `--conns` direct channels, spread round-robin over `--endpoints`.
pub async fn connect_direct_all(c: &Common) -> anyhow::Result<Vec<Direct>> {
    let mut conns = Vec::with_capacity(c.conns);
    for i in 0..c.conns {
        conns.push(connect_direct(&c.endpoints[i % c.endpoints.len()], c).await?);
    }
    Ok(conns)
}

/// `--conns` connections, spread round-robin over `--endpoints`.
pub async fn connect_all(c: &Common) -> anyhow::Result<Vec<Client>> {
    let mut conns = Vec::with_capacity(c.conns);
    for i in 0..c.conns {
        conns.push(connect(&c.endpoints[i % c.endpoints.len()], c).await?);
    }
    Ok(conns)
}

/// This process's CPU time (utime + stime of all its threads), in µs;
/// `None` where /proc cannot tell.
fn own_cpu_us() -> Option<u64> {
    // Linux reports these in USER_HZ, 100 per second on every architecture
    // we run on.
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after "pid (comm) ", comm may hold spaces: state is the
    // first, utime the 12th, stime the 13th.
    let mut f = stat.rsplit_once(") ")?.1.split(' ');
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / USER_HZ)
}

async fn run(c: Common, cmd: Cmd) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        c.conns >= 1 && c.clients >= 1,
        "--conns and --clients must be >= 1"
    );
    anyhow::ensure!(!c.endpoints.is_empty(), "--endpoints is empty");
    let cpu0 = own_cpu_us();
    let mut summary = match cmd {
        Cmd::Put(a) => kv::run(&c, kv::Workload::put(&a)?).await?,
        Cmd::Range(a) => kv::run(&c, kv::Workload::range(&a)).await?,
        Cmd::TxnPut(a) => kv::run(&c, kv::Workload::txn_put(&a, c.total)?).await?,
        Cmd::TxnMixed(a) => kv::run(&c, kv::Workload::txn_mixed(&a)?).await?,
        Cmd::Watch(a) => watch::run(&c, watch::Plan::watch(&a)?).await?,
        Cmd::WatchLatency(a) => watch::run(&c, watch::Plan::latency(&a)?).await?,
        Cmd::LeaseKeepalive => lease::run(&c).await?,
    };
    // The generator shares the machine with the servers it measures: its
    // own CPU, set-up included, tells how much of it it took.
    if let (Some(a), Some(b)) = (cpu0, own_cpu_us()) {
        summary
            .extra_json
            .push(("load_cpu_us".into(), (b - a).to_string()));
        summary.extra_text.push(format!(
            "load CPU   {:.1} µs per {} (set-up included)",
            (b - a) as f64 / summary.ok.max(1) as f64,
            summary.noun.trim_end_matches('s')
        ));
    }
    summary.print(&c);
    Ok(if summary.errors > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(cmd) = cli.cmd else {
        // Plain `cargo bench` runs every bench target with only `--bench`:
        // do nothing rather than fail the whole run.
        eprintln!(
            "load: no workload given (put | range | txn-put | txn-mixed | watch | \
             watch-latency | lease-keepalive); see --help"
        );
        return ExitCode::SUCCESS;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli.common, cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::from(1)
        }
    }
}

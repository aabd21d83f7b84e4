//! Load generator shaped like etcd's `tools/benchmark`, for comparing oxcd
//! with etcd over the same client stack (`etcd-client`, tonic).
//!
//! ```text
//! cargo bench --bench load -- put --endpoints http://127.0.0.1:2379 \
//!     --conns 10 --clients 100 --total 20000 --key-size 8 --val-size 256 \
//!     [--sequential-keys] [--key-space-size N]
//! cargo bench --bench load -- range KEY [END] [--consistency l|s] --clients 100 --total 20000
//! cargo bench --bench load -- txn-put --txn-ops 4 --clients 100 --total 20000
//! ```
//!
//! `--conns` connections are opened; client task `i` uses connection
//! `i % conns` and issues requests back to back until `--total` requests
//! have been issued (shared counter) or `--max-seconds` have passed.
//! Prints ops/s and latency percentiles; `--json` prints one JSON line
//! instead. Exit status: 0 when every request succeeded, 2 when some failed,
//! 1 on a setup error (bad flags, cannot connect).
//!
//! Keys follow `tools/benchmark`: a request's key index is written as a
//! zigzag varint into a zeroed buffer of `--key-size` bytes; the index is
//! `i % key-space-size` with `--sequential-keys`, uniform random otherwise.
//! As in etcd, `put`'s key space defaults to 1 (one key written over and
//! over): pass `--sequential-keys --key-space-size TOTAL` for distinct keys.
//! `txn-put` keys are `(i * txn-ops + j) % key-space-size`, the key space
//! defaulting to `total * txn-ops`, so a transaction never names a key twice.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, Txn, TxnOp};

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
struct Common {
    /// Comma-separated client URLs; connections are spread over them round-robin.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Number of gRPC connections (HTTP/2 channels).
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Number of concurrent clients (tasks); client i uses connection i % conns.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Total number of requests.
    #[arg(long, global = true, default_value_t = 10000)]
    total: u64,
    /// Safety limit: stop issuing requests after this many seconds.
    #[arg(long, global = true, default_value_t = 120.0)]
    max_seconds: f64,
    /// Per-request timeout in seconds (a timed-out request counts as an error).
    #[arg(long, global = true, default_value_t = 10.0)]
    request_timeout: f64,
    /// Seconds to wait for each endpoint to answer a first request.
    #[arg(long, global = true, default_value_t = 10.0)]
    dial_timeout: f64,
    /// Print one JSON line instead of the human-readable summary.
    #[arg(long, global = true)]
    json: bool,
    /// Free-form label copied into the JSON line (e.g. server name, rep).
    #[arg(long, global = true, default_value = "")]
    label: String,
    /// Passed by `cargo bench` to harness=false targets; ignored.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Put requests.
    Put(PutArgs),
    /// Range requests over KEY (or [KEY, END)).
    Range(RangeArgs),
    /// Txn requests, each holding --txn-ops puts.
    TxnPut(TxnPutArgs),
}

#[derive(Args, Debug, Clone)]
struct KeyArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Key index i % key-space-size instead of random.
    #[arg(long)]
    sequential_keys: bool,
    /// Number of distinct keys (default: put 1, as etcd; txn-put total*txn-ops).
    #[arg(long)]
    key_space_size: Option<u64>,
}

#[derive(Args, Debug, Clone)]
struct PutArgs {
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Args, Debug, Clone)]
struct TxnPutArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Puts per transaction.
    #[arg(long, default_value_t = 1)]
    txn_ops: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

#[derive(Args, Debug, Clone)]
struct RangeArgs {
    /// Key to read.
    key: String,
    /// Optional range end (exclusive).
    end: Option<String>,
    /// l = linearizable, s = serializable.
    #[arg(long, value_enum, default_value = "l")]
    consistency: Consistency,
    /// Maximum number of keys returned (0 = no limit).
    #[arg(long, default_value_t = 0)]
    limit: i64,
}

/// What each request does, shared read-only by every client task.
enum Workload {
    Put {
        key_size: usize,
        value: Vec<u8>,
        seq: bool,
        space: u64,
    },
    Range {
        key: Vec<u8>,
        opts: GetOptions,
    },
    TxnPut {
        key_size: usize,
        value: Vec<u8>,
        ops: u64,
        space: u64,
    },
}

/// splitmix64: enough randomness for key choice without a dependency.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Go's binary.PutVarint (zigzag) into a zeroed buffer of `size` bytes.
fn make_key(size: usize, n: u64) -> Vec<u8> {
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

impl Workload {
    async fn issue(&self, kv: &mut KvClient, i: u64, seed: u64) -> Result<(), etcd_client::Error> {
        match self {
            Workload::Put {
                key_size,
                value,
                seq,
                space,
            } => {
                let n = if *seq {
                    i % space
                } else {
                    mix(seed ^ i) % space
                };
                kv.put(make_key(*key_size, n), value.clone(), None).await?;
            }
            Workload::Range { key, opts } => {
                kv.get(key.clone(), Some(opts.clone())).await?;
            }
            Workload::TxnPut {
                key_size,
                value,
                ops,
                space,
            } => {
                let puts: Vec<TxnOp> = (0..*ops)
                    .map(|j| {
                        let n = (i * ops + j) % space;
                        TxnOp::put(make_key(*key_size, n), value.clone(), None)
                    })
                    .collect();
                kv.txn(Txn::new().and_then(puts)).await?;
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        match self {
            Workload::Put { .. } => "put",
            Workload::Range { .. } => "range",
            Workload::TxnPut { .. } => "txn-put",
        }
    }
}

struct ClientResult {
    lat_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn json_str(s: &str) -> String {
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

async fn connect(endpoint: &str, c: &Common) -> anyhow::Result<KvClient> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs_f64(c.dial_timeout))
        .with_timeout(Duration::from_secs_f64(c.request_timeout));
    let deadline = Instant::now() + Duration::from_secs_f64(c.dial_timeout);
    let client = Client::connect([endpoint], Some(opts)).await?;
    let mut kv = client.kv_client();
    // One serializable read per connection so that dialing (and a server
    // still starting up) is not counted in the measurement.
    loop {
        match kv
            .get("\0load-warmup", Some(GetOptions::new().with_serializable()))
            .await
        {
            Ok(_) => return Ok(kv),
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("{endpoint}: no answer within {}s: {e}", c.dial_timeout)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn run(c: Common, cmd: Cmd) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        c.conns >= 1 && c.clients >= 1,
        "--conns and --clients must be >= 1"
    );
    anyhow::ensure!(!c.endpoints.is_empty(), "--endpoints is empty");
    let workload = match &cmd {
        Cmd::Put(a) => {
            let space = a.keys.key_space_size.unwrap_or(1);
            anyhow::ensure!(space >= 1, "--key-space-size must be >= 1");
            Workload::Put {
                key_size: a.keys.key_size,
                value: vec![b'x'; a.keys.val_size],
                seq: a.keys.sequential_keys,
                space,
            }
        }
        Cmd::Range(a) => {
            let mut opts = GetOptions::new();
            if a.consistency == Consistency::S {
                opts = opts.with_serializable();
            }
            if let Some(end) = &a.end {
                opts = opts.with_range(end.as_bytes());
            }
            if a.limit > 0 {
                opts = opts.with_limit(a.limit);
            }
            Workload::Range {
                key: a.key.as_bytes().to_vec(),
                opts,
            }
        }
        Cmd::TxnPut(a) => {
            anyhow::ensure!(a.txn_ops >= 1, "--txn-ops must be >= 1");
            let space = a.keys.key_space_size.unwrap_or(c.total.max(1) * a.txn_ops);
            anyhow::ensure!(space >= a.txn_ops, "--key-space-size must be >= --txn-ops");
            Workload::TxnPut {
                key_size: a.keys.key_size,
                value: vec![b'x'; a.keys.val_size],
                ops: a.txn_ops,
                space,
            }
        }
    };

    let mut conns = Vec::with_capacity(c.conns);
    for i in 0..c.conns {
        conns.push(connect(&c.endpoints[i % c.endpoints.len()], &c).await?);
    }

    let workload = Arc::new(workload);
    let next = Arc::new(AtomicU64::new(0));
    let seed = mix(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(c.max_seconds);
    let timed_out = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(c.clients);
    for t in 0..c.clients {
        let mut kv = conns[t % c.conns].clone();
        let (workload, next, total, timed_out) =
            (workload.clone(), next.clone(), c.total, timed_out.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = ClientResult {
                lat_us: Vec::new(),
                errors: 0,
                first_error: None,
            };
            loop {
                if Instant::now() >= deadline {
                    timed_out.store(true, Ordering::Relaxed);
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t0 = Instant::now();
                match workload.issue(&mut kv, i, seed).await {
                    Ok(()) => r
                        .lat_us
                        .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            r
        }));
    }
    let mut lat: Vec<u32> = Vec::with_capacity(c.total.min(10_000_000) as usize);
    let (mut errors, mut first_error) = (0u64, None);
    for t in tasks {
        let r = t.await?;
        lat.extend_from_slice(&r.lat_us);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let ok = lat.len() as u64;
    let ops = ok as f64 / elapsed;
    let mean = if ok > 0 {
        lat.iter().map(|&x| x as f64).sum::<f64>() / ok as f64 / 1000.0
    } else {
        0.0
    };
    let (p50, p90, p99, p999) = (
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
    );
    let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
    let hit_limit = timed_out.load(Ordering::Relaxed);

    if c.json {
        println!(
            "{{\"workload\":{},\"label\":{},\"endpoints\":{},\"conns\":{},\"clients\":{},\"total\":{},\
\"ok\":{},\"errors\":{},\"elapsed_s\":{:.4},\"ops_per_s\":{:.1},\"mean_ms\":{:.3},\"p50_ms\":{:.3},\
\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"hit_max_seconds\":{},\"first_error\":{}}}",
            json_str(workload.name()),
            json_str(&c.label),
            json_str(&c.endpoints.join(",")),
            c.conns,
            c.clients,
            c.total,
            ok,
            errors,
            elapsed,
            ops,
            mean,
            p50,
            p90,
            p99,
            p999,
            max,
            hit_limit,
            first_error.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
        );
    } else {
        println!(
            "workload   {} ({} conns, {} clients)",
            workload.name(),
            c.conns,
            c.clients
        );
        println!("requests   {ok} ok, {errors} errors in {elapsed:.3} s");
        println!("throughput {ops:.1} ops/s");
        println!(
            "latency ms mean {mean:.3}  p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}"
        );
        if hit_limit {
            println!(
                "stopped by --max-seconds {} before --total {}",
                c.max_seconds, c.total
            );
        }
        if let Some(e) = &first_error {
            println!("first error: {e}");
        }
    }
    Ok(if errors > 0 {
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
        eprintln!("load: no workload given (put | range | txn-put); see --help");
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

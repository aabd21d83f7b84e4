//! The watch workloads: `watch` (fan-out, events/s) and `watch-latency`.
//!
//! Both follow the same plan, as etcd's `tools/benchmark` does:
//!
//! 1. open `--streams` watch streams (stream `s` on connection
//!    `s % conns`), each carrying `watchers per stream` watchers; watcher
//!    `w` (counted stream by stream) watches key `keys[w % keys.len()]`;
//!    wait until every watcher is created (timed: `create_s`);
//! 2. `--clients` tasks put `--put-total` values, put `i` on key
//!    `keys[i % keys.len()]`, paced to `--put-rate` puts/s in all (0 = no
//!    pacing); each value starts with its send time (8 bytes, µs), so every
//!    delivered event gives a put-to-event latency, measured from the put's
//!    send (etcd's `watch-latency` measures from the put's response, which
//!    leaves out the commit);
//! 3. wait until every expected event arrived (one per put per watcher of
//!    its key, counting only acknowledged puts), for at most
//!    `--request-timeout` seconds after the last put.
//!
//! Events/s = events delivered / (last event − first put). An expected
//! event that never arrived counts as an error, as does a failed put.
//!
//! `watch`: `--watched-key-total` keys, key `j` being index `j %
//! key-space-size` (`--sequential-keys`) or a random index below it — so,
//! as in etcd, the default key space of 1 makes every watched key the same
//! key and every watcher sees every put. `watch-latency`: one key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use etcd_client::{WatchStream, Watcher};

use crate::{connect_all, make_key, micros, mix, time_seed, Common, Lat, Summary};

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Watch streams, spread over the connections round-robin.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Watchers per stream.
    #[arg(long, default_value_t = 100)]
    watch_per_stream: usize,
    /// Keys watched: watcher w watches key w % watched-key-total.
    #[arg(long, default_value_t = 1)]
    watched_key_total: usize,
    /// Puts; put i writes watched key i % watched-key-total.
    #[arg(long, default_value_t = 1000)]
    put_total: u64,
    /// Puts per second over all put tasks (0 = no pacing).
    #[arg(long, default_value_t = 0.0)]
    put_rate: f64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 32)]
    key_size: usize,
    /// Value size in bytes (at least 8: a value starts with its send time).
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Watched key j is key index j % key-space-size (--sequential-keys),
    /// else a random index below it.
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// See --key-space-size.
    #[arg(long)]
    sequential_keys: bool,
}

#[derive(Args, Debug, Clone)]
pub struct WatchLatencyArgs {
    /// Watch streams, spread over the connections round-robin.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Watchers per stream, all on the same key.
    #[arg(long, default_value_t = 10)]
    watchers_per_stream: usize,
    /// Puts.
    #[arg(long, default_value_t = 1000)]
    put_total: u64,
    /// Puts per second over all put tasks (0 = no pacing).
    #[arg(long, default_value_t = 100.0)]
    put_rate: f64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 32)]
    key_size: usize,
    /// Value size in bytes (at least 8: a value starts with its send time).
    #[arg(long, default_value_t = 32)]
    val_size: usize,
}

pub struct Plan {
    name: &'static str,
    streams: usize,
    per_stream: usize,
    /// Watcher w watches keys[w % len]; put i writes keys[i % len].
    keys: Vec<Vec<u8>>,
    put_total: u64,
    put_rate: f64,
    val_size: usize,
}

impl Plan {
    pub fn watch(a: &WatchArgs) -> anyhow::Result<Plan> {
        anyhow::ensure!(a.watched_key_total >= 1, "--watched-key-total must be >= 1");
        anyhow::ensure!(a.key_space_size >= 1, "--key-space-size must be >= 1");
        let seed = time_seed();
        let keys = (0..a.watched_key_total as u64)
            .map(|j| {
                let n = if a.sequential_keys {
                    j % a.key_space_size
                } else {
                    mix(seed ^ j) % a.key_space_size
                };
                make_key(a.key_size, n)
            })
            .collect();
        Plan::new("watch", a.streams, a.watch_per_stream, keys)
            .map(|p| p.puts(a.put_total, a.put_rate, a.val_size))
    }

    pub fn latency(a: &WatchLatencyArgs) -> anyhow::Result<Plan> {
        let keys = vec![make_key(a.key_size, 0)];
        Plan::new("watch-latency", a.streams, a.watchers_per_stream, keys)
            .map(|p| p.puts(a.put_total, a.put_rate, a.val_size))
    }

    fn new(
        name: &'static str,
        streams: usize,
        per_stream: usize,
        keys: Vec<Vec<u8>>,
    ) -> anyhow::Result<Plan> {
        anyhow::ensure!(
            streams >= 1 && per_stream >= 1,
            "need at least one stream and one watcher per stream"
        );
        Ok(Plan {
            name,
            streams,
            per_stream,
            keys,
            put_total: 0,
            put_rate: 0.0,
            val_size: 8,
        })
    }

    fn puts(mut self, total: u64, rate: f64, val_size: usize) -> Plan {
        self.put_total = total;
        self.put_rate = rate.max(0.0);
        self.val_size = val_size.max(8);
        self
    }

    fn watched(&self, w: usize) -> &[u8] {
        &self.keys[w % self.keys.len()]
    }

    /// Events expected per watcher, given the puts acknowledged per key
    /// index (several indexes may name the same key).
    fn expected_per_watcher(&self, puts_per_index: &[u64]) -> Vec<u64> {
        let mut puts_of: HashMap<&[u8], u64> = HashMap::new();
        for (j, n) in puts_per_index.iter().enumerate() {
            *puts_of.entry(&self.keys[j]).or_default() += n;
        }
        (0..self.streams * self.per_stream)
            .map(|w| puts_of.get(self.watched(w)).copied().unwrap_or(0))
            .collect()
    }

    /// Puts on each key index if all `put_total` are acknowledged.
    fn planned_puts(&self) -> Vec<u64> {
        let k = self.keys.len() as u64;
        (0..k)
            .map(|j| self.put_total / k + u64::from(j < self.put_total % k))
            .collect()
    }
}

/// Opens one stream carrying `keys.len()` watchers; returns once all are created.
async fn open_stream(
    mut wc: etcd_client::WatchClient,
    keys: Vec<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<(Watcher, WatchStream)> {
    use tokio::time::timeout as within;
    let (mut watcher, mut stream) = within(timeout, wc.watch(keys[0].clone(), None)).await??;
    for k in &keys[1..] {
        watcher.watch(k.clone(), None).await?;
    }
    let mut created = 1;
    while created < keys.len() {
        let Some(r) = within(timeout, stream.message()).await?? else {
            anyhow::bail!("watch stream closed while creating watchers");
        };
        anyhow::ensure!(
            !r.canceled(),
            "watch canceled while creating: {}",
            r.cancel_reason()
        );
        if r.created() {
            created += 1;
        }
    }
    Ok((watcher, stream))
}

struct ReaderResult {
    lat_us: Vec<u32>,
    last_event: Option<Instant>,
    error: Option<String>,
}

pub async fn run(c: &Common, p: Plan) -> anyhow::Result<Summary> {
    let conns = connect_all(c).await?;
    let p = Arc::new(p);
    let timeout = Duration::from_secs_f64(c.request_timeout);
    let watchers = p.streams * p.per_stream;
    let planned = p.expected_per_watcher(&p.planned_puts());

    // 1. Watchers.
    let t_create = Instant::now();
    let mut creating = Vec::with_capacity(p.streams);
    for s in 0..p.streams {
        let wc = conns[s % conns.len()]
            .watch_client()
            .max_decoding_message_size(64 << 20);
        let keys: Vec<Vec<u8>> = (s * p.per_stream..(s + 1) * p.per_stream)
            .map(|w| p.watched(w).to_vec())
            .collect();
        creating.push(tokio::spawn(open_stream(wc, keys, timeout)));
    }
    let mut streams = Vec::with_capacity(p.streams);
    for t in creating {
        streams.push(t.await??);
    }
    let create_s = t_create.elapsed().as_secs_f64();

    // Readers: every event's latency from the send time in its value.
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::with_capacity(p.streams);
    for (s, (watcher, mut stream)) in streams.into_iter().enumerate() {
        let want: u64 = planned[s * p.per_stream..(s + 1) * p.per_stream]
            .iter()
            .sum();
        let (received, mut stop) = (received.clone(), stop_rx.clone());
        readers.push(tokio::spawn(async move {
            let _watcher = watcher; // dropping it would close the request side
            let mut r = ReaderResult {
                lat_us: Vec::with_capacity(want.min(10_000_000) as usize),
                last_event: None,
                error: None,
            };
            let mut n = 0u64;
            while n < want {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = stop.wait_for(|&v| v) => break,
                };
                match msg {
                    Ok(Some(resp)) if resp.canceled() => {
                        r.error = Some(format!("watch canceled: {}", resp.cancel_reason()));
                        break;
                    }
                    Ok(Some(resp)) => {
                        let now = epoch.elapsed().as_micros() as u64;
                        for e in resp.events() {
                            if let Some(v) = e.kv().map(|kv| kv.value()) {
                                if let Some(sent) = v.get(..8) {
                                    let sent = u64::from_be_bytes(sent.try_into().unwrap());
                                    r.lat_us
                                        .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                                }
                            }
                        }
                        let k = resp.events().len() as u64;
                        if k > 0 {
                            n += k;
                            received.fetch_add(k, Ordering::Relaxed);
                            r.last_event = Some(Instant::now());
                        }
                    }
                    Ok(None) => {
                        r.error = Some("watch stream closed by the server".into());
                        break;
                    }
                    Err(e) => {
                        r.error = Some(e.to_string());
                        break;
                    }
                }
            }
            r
        }));
    }

    // 2. Puts, paced.
    let k = p.keys.len();
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(c.max_seconds);
    let timed_out = Arc::new(AtomicBool::new(false));
    let mut putters = Vec::with_capacity(c.clients);
    for t in 0..c.clients {
        let mut kv = conns[t % conns.len()].kv_client();
        let (p, next, timed_out) = (p.clone(), next.clone(), timed_out.clone());
        putters.push(tokio::spawn(async move {
            let mut ok_per_index = vec![0u64; k];
            let (mut lat, mut errors, mut first_error) = (Vec::new(), 0u64, None);
            let mut value = vec![b'x'; p.val_size];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= p.put_total {
                    break;
                }
                if p.put_rate > 0.0 {
                    let at = t0 + Duration::from_secs_f64(i as f64 / p.put_rate);
                    tokio::time::sleep_until(at.min(deadline).into()).await;
                }
                if Instant::now() >= deadline {
                    timed_out.store(true, Ordering::Relaxed);
                    break;
                }
                let j = (i % k as u64) as usize;
                let sent = epoch.elapsed().as_micros() as u64;
                value[..8].copy_from_slice(&sent.to_be_bytes());
                let start = Instant::now();
                match kv.put(p.keys[j].clone(), value.clone(), None).await {
                    Ok(_) => {
                        lat.push(micros(start.elapsed()));
                        ok_per_index[j] += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("put: {e}"));
                    }
                }
            }
            (ok_per_index, lat, errors, first_error)
        }));
    }
    let mut ok_per_index = vec![0u64; k];
    let (mut put_lat, mut put_errors, mut first_error) = (Vec::new(), 0u64, None);
    for t in putters {
        let (ok, lat, errors, fe) = t.await?;
        for (a, b) in ok_per_index.iter_mut().zip(ok) {
            *a += b;
        }
        put_lat.extend(lat);
        put_errors += errors;
        if first_error.is_none() {
            first_error = fe;
        }
    }
    let puts_done = t0.elapsed().as_secs_f64();

    // 3. Wait for the events of the acknowledged puts, bounded.
    let expected: u64 = p.expected_per_watcher(&ok_per_index).iter().sum();
    let wait_until = Instant::now() + timeout;
    while received.load(Ordering::Relaxed) < expected && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let mut lat = Vec::with_capacity(expected.min(10_000_000) as usize);
    let mut last = None::<Instant>;
    let mut stream_errors = 0u64;
    for t in readers {
        let r = t.await?;
        lat.extend(r.lat_us);
        last = last.max(r.last_event);
        if let Some(e) = r.error {
            stream_errors += 1;
            first_error.get_or_insert(e);
        }
    }
    let delivered = received.load(Ordering::Relaxed);
    let missing = expected.saturating_sub(delivered);
    if missing > 0 {
        first_error.get_or_insert_with(|| {
            format!(
                "{missing} of {expected} events not delivered within {}s of the last put",
                c.request_timeout
            )
        });
    }
    lat.sort_unstable();
    put_lat.sort_unstable();
    let elapsed = last.map_or(puts_done, |l| l.saturating_duration_since(t0).as_secs_f64());
    let put_l = Lat::of(&put_lat);
    let puts_ok = put_lat.len() as u64;
    let distinct: std::collections::HashSet<&Vec<u8>> = p.keys.iter().collect();
    let rate = if p.put_rate > 0.0 {
        format!("{}/s", p.put_rate)
    } else {
        "unpaced".into()
    };
    Ok(Summary {
        workload: p.name,
        total: planned.iter().sum(),
        ok: delivered,
        errors: put_errors + missing + stream_errors,
        first_error,
        elapsed,
        lat,
        hit_limit: timed_out.load(Ordering::Relaxed),
        noun: "events",
        unit: "events/s",
        shape: format!(
            "{} streams × {} watchers on {} keys, {} conns; {} puts {rate} by {} clients",
            p.streams,
            p.per_stream,
            distinct.len(),
            c.conns,
            p.put_total,
            c.clients
        ),
        limit_of: format!("--put-total {}", p.put_total),
        extra_json: vec![
            ("watchers".into(), watchers.to_string()),
            ("streams".into(), p.streams.to_string()),
            ("watched_keys".into(), distinct.len().to_string()),
            ("create_s".into(), format!("{create_s:.4}")),
            ("puts_ok".into(), puts_ok.to_string()),
            ("put_errors".into(), put_errors.to_string()),
            (
                "put_ops_per_s".into(),
                format!("{:.1}", puts_ok as f64 / puts_done.max(1e-9)),
            ),
            ("put_p50_ms".into(), format!("{:.3}", put_l.p50)),
            ("put_p99_ms".into(), format!("{:.3}", put_l.p99)),
            ("events_expected".into(), expected.to_string()),
            ("events_missing".into(), missing.to_string()),
        ],
        extra_text: vec![
            format!("watchers   {watchers} created in {create_s:.3} s"),
            format!(
                "puts       {puts_ok} ok, {put_errors} errors, {:.1} puts/s, latency ms {}",
                puts_ok as f64 / puts_done.max(1e-9),
                put_l.text()
            ),
            "(latency: from a put's send to its event's arrival)".into(),
            format!("missing    {missing} of {expected} expected events"),
        ],
    })
}

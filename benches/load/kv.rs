//! The closed-loop KV workloads: `put`, `range`, `txn-put`, `txn-mixed`.
//!
//! `--clients` tasks issue requests back to back over `--conns` connections
//! until `--total` have been issued; every successful request's latency is
//! kept, so the percentiles are exact.
//!
//! `txn-mixed` follows etcd's `txn-mixed`: each request is a txn holding
//! either one range (a read, with probability rw-ratio / (1 + rw-ratio)) or
//! one put of key `i % key-space-size` (a write). etcd's read is a range
//! over all keys limited to `--limit` (its `--end-key` is overridden by the
//! prefix option it also sets); here `--end-key` is honoured, the range then
//! being ["\0", end-key). Reads and writes are also summarised apart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use oxcd::channel::Direct;
use oxcd::proto::etcdserverpb::kv_client::KvClient;
use oxcd::proto::etcdserverpb::request_op::Request as Op;
use oxcd::proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};

use crate::{
    connect_direct_all, conns_clients, make_key, micros, mix, time_seed, Common, Consistency,
};
use crate::{Lat, Summary};

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
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
pub struct PutArgs {
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Args, Debug, Clone)]
pub struct TxnPutArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Puts per transaction.
    #[arg(long, default_value_t = 1)]
    txn_ops: u64,
}

#[derive(Args, Debug, Clone)]
pub struct RangeArgs {
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

#[derive(Args, Debug, Clone)]
pub struct TxnMixedArgs {
    /// Key size in bytes of the writes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes of the writes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Writes go to key i % key-space-size.
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Reads per write (a request is a read with probability r / (1 + r)).
    #[arg(long, default_value_t = 1.0)]
    rw_ratio: f64,
    /// Reads: l = linearizable, s = serializable.
    #[arg(long, value_enum, default_value = "l")]
    consistency: Consistency,
    /// Reads: maximum number of keys returned (0 = no limit).
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    /// Reads: range end (exclusive); default all keys.
    #[arg(long)]
    end_key: Option<String>,
}

/// What each request does, shared read-only by every client task.
pub enum Workload {
    Put {
        key_size: usize,
        value: Vec<u8>,
        seq: bool,
        space: u64,
    },
    Range(RangeRequest),
    TxnPut {
        key_size: usize,
        value: Vec<u8>,
        ops: u64,
        space: u64,
    },
    TxnMixed {
        key_size: usize,
        value: Vec<u8>,
        space: u64,
        /// A request is a read when mix(seed ^ i) < read_below.
        read_below: u64,
        read: RangeRequest,
    },
}

/// What a successful request was, for `txn-mixed`'s separate summaries.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Read,
    Write,
}

impl Workload {
    pub fn put(a: &PutArgs) -> anyhow::Result<Workload> {
        let space = a.keys.key_space_size.unwrap_or(1);
        anyhow::ensure!(space >= 1, "--key-space-size must be >= 1");
        Ok(Workload::Put {
            key_size: a.keys.key_size,
            value: vec![b'x'; a.keys.val_size],
            seq: a.keys.sequential_keys,
            space,
        })
    }

    pub fn range(a: &RangeArgs) -> Workload {
        Workload::Range(RangeRequest {
            key: a.key.as_bytes().to_vec(),
            range_end: a.end.as_deref().unwrap_or("").as_bytes().to_vec(),
            limit: a.limit.max(0),
            serializable: a.consistency == Consistency::S,
            ..Default::default()
        })
    }

    pub fn txn_put(a: &TxnPutArgs, total: u64) -> anyhow::Result<Workload> {
        anyhow::ensure!(a.txn_ops >= 1, "--txn-ops must be >= 1");
        let space = a.keys.key_space_size.unwrap_or(total.max(1) * a.txn_ops);
        anyhow::ensure!(space >= a.txn_ops, "--key-space-size must be >= --txn-ops");
        Ok(Workload::TxnPut {
            key_size: a.keys.key_size,
            value: vec![b'x'; a.keys.val_size],
            ops: a.txn_ops,
            space,
        })
    }

    pub fn txn_mixed(a: &TxnMixedArgs) -> anyhow::Result<Workload> {
        anyhow::ensure!(a.key_space_size >= 1, "--key-space-size must be >= 1");
        anyhow::ensure!(
            a.rw_ratio >= 0.0 && a.rw_ratio.is_finite(),
            "--rw-ratio must be >= 0"
        );
        let p_read = a.rw_ratio / (1.0 + a.rw_ratio);
        // ["\0", end-key), or every key ("\0", "\0").
        let read = RangeRequest {
            key: vec![0],
            range_end: a
                .end_key
                .as_deref()
                .map_or(vec![0], |e| e.as_bytes().to_vec()),
            limit: a.limit.max(0),
            serializable: a.consistency == Consistency::S,
            ..Default::default()
        };
        Ok(Workload::TxnMixed {
            key_size: a.key_size,
            value: vec![b'x'; a.val_size],
            space: a.key_space_size,
            read_below: (p_read * u64::MAX as f64) as u64,
            read,
        })
    }

    async fn issue(
        &self,
        kv: &mut KvClient<Direct>,
        i: u64,
        seed: u64,
    ) -> Result<Kind, tonic::Status> {
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
                kv.put(put(make_key(*key_size, n), value)).await?;
            }
            Workload::Range(r) => {
                kv.range(r.clone()).await?;
                return Ok(Kind::Read);
            }
            Workload::TxnPut {
                key_size,
                value,
                ops,
                space,
            } => {
                let puts = (0..*ops)
                    .map(|j| {
                        let n = (i * ops + j) % space;
                        Op::RequestPut(put(make_key(*key_size, n), value))
                    })
                    .collect();
                kv.txn(txn(puts)).await?;
            }
            Workload::TxnMixed {
                key_size,
                value,
                space,
                read_below,
                read,
            } => {
                if mix(seed ^ i) < *read_below {
                    kv.txn(txn(vec![Op::RequestRange(read.clone())])).await?;
                    return Ok(Kind::Read);
                }
                let p = put(make_key(*key_size, i % space), value);
                kv.txn(txn(vec![Op::RequestPut(p)])).await?;
            }
        }
        Ok(Kind::Write)
    }

    fn name(&self) -> &'static str {
        match self {
            Workload::Put { .. } => "put",
            Workload::Range { .. } => "range",
            Workload::TxnPut { .. } => "txn-put",
            Workload::TxnMixed { .. } => "txn-mixed",
        }
    }
}

fn put(key: Vec<u8>, value: &[u8]) -> PutRequest {
    PutRequest {
        key,
        value: value.to_vec(),
        ..Default::default()
    }
}

/// A txn without compares: its success branch always runs.
fn txn(ops: Vec<Op>) -> TxnRequest {
    TxnRequest {
        success: ops
            .into_iter()
            .map(|op| RequestOp { request: Some(op) })
            .collect(),
        ..Default::default()
    }
}

#[derive(Default)]
struct ClientResult {
    lat_us: Vec<u32>,
    /// `txn-mixed` only: the reads' and the writes' latencies (also in `lat_us`).
    read_us: Vec<u32>,
    write_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(c: &Common, workload: Workload) -> anyhow::Result<Summary> {
    let conns = connect_direct_all(c).await?;
    let mixed = matches!(workload, Workload::TxnMixed { .. });
    let workload = Arc::new(workload);
    let next = Arc::new(AtomicU64::new(0));
    let seed = time_seed();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(c.max_seconds);
    let timed_out = Arc::new(AtomicBool::new(false));
    let timeout = Duration::from_secs_f64(c.request_timeout);
    let mut tasks = Vec::with_capacity(c.clients);
    for t in 0..c.clients {
        let mut kv = KvClient::new(conns[t % c.conns].clone());
        let (workload, next, total, timed_out) =
            (workload.clone(), next.clone(), c.total, timed_out.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = ClientResult::default();
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
                let answer = tokio::time::timeout(timeout, workload.issue(&mut kv, i, seed)).await;
                match answer.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("timed out")))
                {
                    Ok(kind) => {
                        let us = micros(t0.elapsed());
                        r.lat_us.push(us);
                        if mixed {
                            match kind {
                                Kind::Read => r.read_us.push(us),
                                Kind::Write => r.write_us.push(us),
                            }
                        }
                    }
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
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    let (mut errors, mut first_error) = (0u64, None);
    for t in tasks {
        let r = t.await?;
        lat.extend_from_slice(&r.lat_us);
        reads.extend_from_slice(&r.read_us);
        writes.extend_from_slice(&r.write_us);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let mut s = Summary {
        workload: workload.name(),
        total: c.total,
        ok: lat.len() as u64,
        errors,
        first_error,
        elapsed,
        lat,
        hit_limit: timed_out.load(Ordering::Relaxed),
        noun: "requests",
        unit: "ops/s",
        shape: conns_clients(c),
        limit_of: format!("--total {}", c.total),
        extra_json: Vec::new(),
        extra_text: Vec::new(),
    };
    if mixed {
        mixed_summary(&mut s, reads, writes);
    }
    Ok(s)
}

/// `txn-mixed`: reads and writes apart, as etcd's tool prints them.
fn mixed_summary(s: &mut Summary, mut reads: Vec<u32>, mut writes: Vec<u32>) {
    reads.sort_unstable();
    writes.sort_unstable();
    let secs = s.elapsed.max(1e-9);
    for (name, v) in [("read", &reads), ("write", &writes)] {
        let l = Lat::of(v);
        let ops = v.len() as f64 / secs;
        s.extra_json.extend([
            (format!("{name}s"), v.len().to_string()),
            (format!("{name}_ops_per_s"), format!("{ops:.1}")),
            (format!("{name}_p50_ms"), format!("{:.3}", l.p50)),
            (format!("{name}_p99_ms"), format!("{:.3}", l.p99)),
        ]);
        s.extra_text.push(format!(
            "{name:<10} {} ok ({ops:.1} ops/s), latency ms {}",
            v.len(),
            l.text()
        ));
    }
}

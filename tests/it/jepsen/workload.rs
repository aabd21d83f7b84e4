//! The register workload: `clients` concurrent etcd-client connections, each
//! bound to one member's client proxy, issuing read / write / compare-and-set
//! on a few keys, one request at a time, every op recorded in the history.
//!
//! Every written value is unique (`p<process>-<n>`), which keeps the
//! linearizability search small. CAS compares on the value this client last
//! saw for the key (a Txn: value == expected ? put : get).

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp, TxnOpResponse};

use super::history::{History, Op, OpKind, Outcome, Ret};
use super::Rng;

/// Per request; a request that outlives it is indeterminate.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);

pub struct Config {
    pub keys: Vec<String>,
    pub until: Instant,
    pub seed: u64,
    /// A process's op budget, so the loop is bounded in count too.
    pub max_ops_per_client: usize,
}

pub async fn connect(endpoint: &str) -> Option<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(OP_TIMEOUT);
    match tokio::time::timeout(
        Duration::from_secs(2),
        Client::connect([endpoint.to_string()], Some(opts)),
    )
    .await
    {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// Classifies an error: `Fail` only when the request certainly had no effect.
pub fn classify<R>(e: &etcd_client::Error) -> super::history::Out<R> {
    use super::history::Out as Outcome;
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::OutOfRange
            | tonic::Code::NotFound => Outcome::Fail(format!("{:?}: {}", s.code(), s.message())),
            c => Outcome::Info(format!("{c:?}: {}", s.message())),
        },
        other => Outcome::Info(other.to_string()),
    }
}

pub async fn run_client(process: usize, endpoint: String, cfg: Arc<Config>, hist: Arc<History>) {
    let mut rng = Rng::new(cfg.seed ^ (process as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut client: Option<Client> = None;
    let mut last_seen: Vec<Option<String>> = vec![None; cfg.keys.len()];
    let mut n = 0usize;
    for _ in 0..cfg.max_ops_per_client {
        if Instant::now() >= cfg.until {
            return;
        }
        let Some(c) = client.as_mut() else {
            client = connect(&endpoint).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let ki = rng.below(cfg.keys.len() as u64) as usize;
        let key = cfg.keys[ki].clone();
        let roll = rng.below(10);
        n += 1;
        let kind = if roll < 4 {
            OpKind::Read
        } else if roll < 7 || last_seen[ki].is_none() {
            OpKind::Write(format!("p{process}-{n}"))
        } else {
            OpKind::Cas {
                expected: last_seen[ki].clone().unwrap(),
                new: format!("p{process}-{n}"),
            }
        };
        let invoke_ns = hist.now_ns();
        let res = tokio::time::timeout(OP_TIMEOUT, async {
            match &kind {
                OpKind::Read => c.get(key.as_str(), None).await.map(|r| {
                    Ret::Read(
                        r.kvs()
                            .first()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                    )
                }),
                OpKind::Write(v) => {
                    c.put(key.as_str(), v.as_str(), None)
                        .await
                        .map(|r| Ret::Write {
                            rev: r.header().map(|h| h.revision()).unwrap_or(-1),
                        })
                }
                OpKind::Cas { expected, new } => {
                    let txn = Txn::new()
                        .when([Compare::value(
                            key.as_str(),
                            CompareOp::Equal,
                            expected.as_str(),
                        )])
                        .and_then([TxnOp::put(key.as_str(), new.as_str(), None)])
                        .or_else([TxnOp::get(key.as_str(), None)]);
                    c.txn(txn).await.map(|r| {
                        let observed = r.op_responses().into_iter().find_map(|o| match o {
                            TxnOpResponse::Get(g) => Some(
                                g.kvs()
                                    .first()
                                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                            ),
                            _ => None,
                        });
                        Ret::Cas {
                            succeeded: r.succeeded(),
                            rev: r.header().map(|h| h.revision()).unwrap_or(-1),
                            observed: observed.flatten(),
                        }
                    })
                }
            }
        })
        .await;
        let complete_ns = hist.now_ns();
        let outcome = match res {
            Ok(Ok(ret)) => {
                match &ret {
                    Ret::Read(v) => last_seen[ki] = v.clone(),
                    Ret::Write { .. } => {
                        if let OpKind::Write(v) = &kind {
                            last_seen[ki] = Some(v.clone())
                        }
                    }
                    Ret::Cas {
                        succeeded: true, ..
                    } => {
                        if let OpKind::Cas { new, .. } = &kind {
                            last_seen[ki] = Some(new.clone())
                        }
                    }
                    Ret::Cas { observed, .. } => last_seen[ki] = observed.clone(),
                }
                Outcome::Ok(ret)
            }
            Ok(Err(e)) => classify(&e),
            Err(_) => Outcome::Info("client timeout".into()),
        };
        // A read has no effect: an unknown outcome is simply a failure.
        let outcome = match (&kind, outcome) {
            (OpKind::Read, Outcome::Info(e)) => Outcome::Fail(e),
            (_, o) => o,
        };
        let errored = !matches!(outcome, Outcome::Ok(_));
        hist.record(Op {
            id: 0,
            process,
            key,
            kind,
            invoke_ns,
            complete_ns,
            outcome,
        });
        if errored {
            // Back off a little; a fresh connection after repeated trouble.
            tokio::time::sleep(Duration::from_millis(50 + rng.below(100))).await;
            if rng.below(4) == 0 {
                client = None;
            }
        }
    }
}

//! `lease-keepalive`: keepalive round trips on long-lived streams.
//!
//! Before the clock starts, each of `--clients` tasks grants its own lease
//! (TTL 100 s, as etcd's tool) over connection `i % conns` and opens one
//! LeaseKeepAlive stream for it. Then the tasks send keepalives, each
//! awaiting its response (TTL > 0, else the lease is gone: an error), until
//! `--total` have been sent. A broken stream is reopened for the next
//! keepalive. The leases are revoked afterwards, outside the measurement, so
//! that they do not expire during a later workload.
//!
//! etcd's `lease-keepalive` calls `KeepAliveOnce`, which opens a new stream
//! per keepalive; a stream per client, as here, is what real clients
//! (`clientv3.KeepAlive`, etcd-client's `LeaseKeeper`) do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{LeaseClient, LeaseKeepAliveStream, LeaseKeeper};

use crate::{connect_all, conns_clients, micros, Common, Summary};

const TTL: i64 = 100;

/// One keepalive round trip: send, then the response, bounded by `timeout`.
async fn once(
    keeper: &mut LeaseKeeper,
    stream: &mut LeaseKeepAliveStream,
    timeout: Duration,
) -> anyhow::Result<()> {
    keeper.keep_alive().await?;
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => anyhow::bail!("no keepalive response within {timeout:?}"),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(None)) => anyhow::bail!("keepalive stream closed by the server"),
        Ok(Ok(Some(r))) if r.ttl() <= 0 => anyhow::bail!("lease {} not found", r.id()),
        Ok(Ok(Some(_))) => Ok(()),
    }
}

pub async fn run(c: &Common) -> anyhow::Result<Summary> {
    let conns = connect_all(c).await?;
    let timeout = Duration::from_secs_f64(c.request_timeout);

    // Leases and their streams, before the clock starts.
    let mut setup = Vec::with_capacity(c.clients);
    for t in 0..c.clients {
        let mut lc = conns[t % c.conns].lease_client();
        setup.push(tokio::spawn(async move {
            let id = tokio::time::timeout(timeout, lc.grant(TTL, None))
                .await??
                .id();
            let (keeper, stream) = tokio::time::timeout(timeout, lc.keep_alive(id)).await??;
            anyhow::Ok((lc, id, keeper, stream))
        }));
    }
    let mut clients = Vec::with_capacity(c.clients);
    for t in setup {
        clients.push(t.await??);
    }

    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(c.max_seconds);
    let timed_out = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(c.clients);
    for (mut lc, id, keeper, stream) in clients {
        let (next, total, timed_out) = (next.clone(), c.total, timed_out.clone());
        tasks.push(tokio::spawn(async move {
            let mut open = Some((keeper, stream));
            let (mut lat, mut errors, mut first_error) = (Vec::new(), 0u64, None);
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
                let r = match open.as_mut() {
                    Some((k, s)) => once(k, s, timeout).await,
                    None => match tokio::time::timeout(timeout, lc.keep_alive(id)).await {
                        // keep_alive sends the first keepalive and awaits its answer.
                        Ok(Ok(ks)) => {
                            open = Some(ks);
                            Ok(())
                        }
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => Err(anyhow::anyhow!("no keepalive response within {timeout:?}")),
                    },
                };
                match r {
                    Ok(()) => lat.push(micros(t0.elapsed())),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        open = None;
                    }
                }
            }
            (lc, id, lat, errors, first_error)
        }));
    }
    let mut lat: Vec<u32> = Vec::with_capacity(c.total.min(10_000_000) as usize);
    let (mut errors, mut first_error) = (0u64, None);
    let mut leases: Vec<(LeaseClient, i64)> = Vec::with_capacity(c.clients);
    for t in tasks {
        let (lc, id, l, e, fe) = t.await?;
        lat.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = fe;
        }
        leases.push((lc, id));
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();

    // Revoke (best effort, bounded): not measured.
    let revokes: Vec<_> = leases
        .into_iter()
        .map(|(mut lc, id)| {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), lc.revoke(id)).await;
            })
        })
        .collect();
    for r in revokes {
        let _ = r.await;
    }

    Ok(Summary {
        workload: "lease-keepalive",
        total: c.total,
        ok: lat.len() as u64,
        errors,
        first_error,
        elapsed,
        lat,
        hit_limit: timed_out.load(Ordering::Relaxed),
        noun: "keepalives",
        unit: "ops/s",
        shape: format!("{}, one lease and stream per client", conns_clients(c)),
        limit_of: format!("--total {}", c.total),
        extra_json: Vec::new(),
        extra_text: Vec::new(),
    })
}

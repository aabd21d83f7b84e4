//! The lessor's task on every member: follows Raft leadership (promote /
//! demote) and, while primary, proposes revokes of expired leases (rate
//! limited) and due checkpoints.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::{Lessor, MAX_CHECKPOINT_BATCH};
use crate::api::Context;
use crate::proto::etcdserverpb::{LeaseCheckpointRequest, LeaseRevokeRequest};
use crate::raft::types::Request;

/// etcd `maxPendingRevokes`: revoke proposals in flight at once.
const MAX_PENDING_REVOKES: usize = 16;
/// Longest sleep with nothing scheduled (leadership changes wake us anyway).
const IDLE: Duration = Duration::from_millis(500);

/// A token bucket: `rate` tokens per second, at most `rate / 2` banked
/// (etcd revokes at most rate/2 per 500 ms tick).
struct Bucket {
    rate: f64,
    cap: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Bucket {
        let rate = f64::from(rate.max(1));
        let cap = (rate / 2.0).max(1.0);
        Bucket {
            rate,
            cap,
            tokens: cap,
            at: now,
        }
    }
    fn available(&mut self, now: Instant) -> usize {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        self.at = now;
        self.tokens.floor() as usize
    }
    fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
    /// When at least one token is back.
    fn next_token(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.rate)
    }
}

/// Runs until `stop` turns true.
pub async fn run(ctx: Context, lessor: Lessor, mut stop: watch::Receiver<bool>) {
    let mut server = ctx.raft.server_metrics();
    let mut changed = lessor.subscribe();
    let mut bucket = Bucket::new(lessor.config().revoke_rate, Instant::now());
    let pending = Arc::new(Semaphore::new(MAX_PENDING_REVOKES));
    loop {
        let (leader, term) = {
            let m = server.borrow_and_update();
            (m.state == ServerState::Leader, m.vote.leader_id.term)
        };
        changed.borrow_and_update();
        lessor.sync_leadership(leader, term);

        let now = Instant::now();
        let budget = bucket.available(now);
        let expired = lessor.take_expired(budget);
        bucket.take(expired.len());
        for id in expired {
            let Ok(permit) = pending.clone().acquire_owned().await else {
                return;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match ctx
                    .propose(Request::LeaseRevoke(LeaseRevokeRequest { id }))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(lease = %format!("{id:016x}"), "lease expired; revoked")
                    }
                    // Revoked meanwhile by a client: nothing to do.
                    Err(crate::error::Error::LeaseNotFound) => {}
                    Err(e) => {
                        tracing::warn!(lease = %format!("{id:016x}"), error = %e, "failed to revoke an expired lease; will retry")
                    }
                }
            });
        }
        let cps = lessor.take_due_checkpoints(MAX_CHECKPOINT_BATCH);
        if !cps.is_empty() {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let n = cps.len();
                let req = Request::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints: cps });
                if let Err(e) = ctx.propose(req).await {
                    tracing::warn!(checkpoints = n, error = %e, "lease checkpoint failed");
                }
            });
        }

        let now = Instant::now();
        let mut wake = lessor.next_wake().unwrap_or(now + IDLE).min(now + IDLE);
        if bucket.available(now) == 0 {
            wake = wake.max(bucket.next_token());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            r = server.changed() => if r.is_err() { return },
            _ = changed.changed() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_the_rate_and_no_burst_beyond_half() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        assert_eq!(b.available(t0), 500);
        b.take(500);
        assert_eq!(b.available(t0), 0);
        let next = b.next_token();
        assert!(next > t0 && next <= t0 + Duration::from_millis(1));
        assert_eq!(b.available(t0 + Duration::from_millis(100)), 100);
        // Banked tokens stop at rate/2.
        assert_eq!(b.available(t0 + Duration::from_secs(10)), 500);
    }
}

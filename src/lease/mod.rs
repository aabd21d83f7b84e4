//! The lessor: the time-driven half of leases (etcd `server/lease/lessor.go`).
//!
//! Which leases exist, their TTLs and attached keys are replicated state
//! (`mvcc::lease`), changed only by applied LeaseGrant / LeaseRevoke /
//! LeaseCheckpoint entries. *When* a lease expires is decided here, by the
//! Raft leader alone — the "primary" lessor:
//!
//! - A follower holds every lease with no deadline ("forever"). It never
//!   expires anything; keepalives are the leader's to answer.
//! - Once the leader has applied an entry of its own term (the blank entry
//!   it appends when elected, or — a one-member cluster restarting in the
//!   same term — whatever it applied last), it is promoted: every lease's deadline becomes
//!   `now + election timeout + (checkpointed remaining TTL, else TTL)`
//!   (etcd's `Promote(extend)`), so no lease expires sooner than it would
//!   have under the old leader, and none outlives its TTL + one election
//!   timeout after the change. Leases that would all fall due in the same
//!   second are spread out so a pile-up cannot exceed the revoke rate.
//! - The primary's task ([`run`]) proposes a LeaseRevoke through Raft for
//!   each lease past its deadline, at most `revoke_rate` per second; a revoke
//!   that did not commit is retried after `retry_interval`. Every member
//!   deletes the same keys at the same revision because the delete is the
//!   applied revoke, never a local decision.
//! - Checkpoints: for a lease whose remaining TTL exceeds the checkpoint
//!   interval, the primary periodically proposes its remaining TTL, so a new
//!   leader continues from there instead of from the full TTL. A keepalive
//!   of a checkpointed lease first clears the checkpoint (remaining 0)
//!   through Raft, so a later leader never cuts a renewed lease short.
//!
//! ```text
//!  t=0   grant id=7 ttl=10       leader: deadline 10
//!  t=4   keepalive 7             leader: deadline 14, reply TTL 10
//!  t=6   leader dies; t=7 new leader applies its blank entry
//!        new leader: deadline 7 + 1 (election timeout) + 10 = 18
//!  t=18  new leader proposes LeaseRevoke 7 → keys deleted at one revision
//! ```
//!
//! All of this state is volatile: a restarted member reloads the lease
//! table from the store and starts as a follower.

mod run;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use run::run;

use crate::mvcc::LeaseRecord;
use crate::proto::etcdserverpb::LeaseCheckpoint;

/// etcd `leaseRevokeRate`: revokes proposed per second at most.
pub const REVOKE_RATE: u32 = 1000;
/// etcd `defaultLeaseCheckpointInterval`.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// etcd `maxLeaseCheckpointBatchSize`: checkpoints per log entry.
pub const MAX_CHECKPOINT_BATCH: usize = 1000;
/// etcd `defaultExpiredleaseRetryInterval`: when to propose a revoke again
/// if the previous one has not been applied.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// Deadlines beyond this are treated as this far (`Instant` cannot hold
/// etcd's maximum TTL of 285 years on every platform).
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct LessorConfig {
    /// etcd's minimum TTL: a grant below it is raised to it.
    pub min_ttl: i64,
    /// Added to every deadline on promotion: the election timeout.
    pub extend: Duration,
    /// etcd `--experimental-enable-lease-checkpoint`; on in oxcd.
    pub checkpoints: bool,
    pub checkpoint_interval: Duration,
    pub revoke_rate: u32,
    pub retry_interval: Duration,
}

impl LessorConfig {
    /// etcd's settings for the given Raft timing. The minimum TTL is etcd's
    /// `ceil((3 * electionTicks / 2) * heartbeat)`: 2 s with the defaults.
    pub fn new(heartbeat: Duration, election: Duration) -> LessorConfig {
        let hb = heartbeat.as_millis().max(1) as u64;
        let ticks = election.as_millis() as u64 / hb;
        let min_ms = (3 * ticks / 2) * hb;
        LessorConfig {
            min_ttl: min_ms.div_ceil(1000) as i64,
            extend: election,
            checkpoints: true,
            checkpoint_interval: CHECKPOINT_INTERVAL,
            revoke_rate: REVOKE_RATE,
            retry_interval: RETRY_INTERVAL,
        }
    }
}

/// Why a keepalive was not answered with a TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewError {
    /// This member is not the primary lessor: the leader must answer.
    NotPrimary,
    /// No such lease (TTL 0 in the keepalive reply).
    NotFound,
    /// Past its deadline; its revoke is on its way.
    Expired,
}

/// A successful renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The granted TTL, as etcd answers a keepalive.
    pub ttl: i64,
}

/// A lease as the lessor tracks it.
#[derive(Debug, Clone)]
struct Clock {
    ttl: i64,
    /// Checkpointed remaining TTL (s); 0 = none.
    remaining_ttl: i64,
    /// Deadline while primary; `None` = forever (follower).
    expiry: Option<Instant>,
    /// Key of this lease in `State::expiries`.
    due: Option<Instant>,
    /// Key of this lease in `State::checkpoints`.
    checkpoint_at: Option<Instant>,
}

impl Clock {
    /// etcd `getRemainingTTL`: the checkpoint if there is one, else the TTL.
    fn remaining_or_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<i64, Clock>,
    primary: bool,
    /// Expiry checks by time: a lease's deadline, or its retry time once
    /// its revoke was proposed.
    expiries: BTreeSet<(Instant, i64)>,
    /// Checkpoints due, by time.
    checkpoints: BTreeSet<(Instant, i64)>,
    /// Term of the newest applied entry (see [`Lessor::applied_term`]).
    applied_term: u64,
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(n.max(0) as u64).min(FAR)
}

fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

impl State {
    fn set_due(&mut self, id: i64, due: Option<Instant>) {
        let Some(c) = self.leases.get_mut(&id) else {
            return;
        };
        if let Some(old) = c.due.take() {
            self.expiries.remove(&(old, id));
        }
        if let Some(t) = due {
            self.expiries.insert((t, id));
        }
        c.due = due;
    }

    /// etcd `Lease.refresh(extend)`.
    fn refresh(&mut self, id: i64, extend: Duration, now: Instant) {
        let Some(c) = self.leases.get_mut(&id) else {
            return;
        };
        let expiry = after(now, extend + secs(c.remaining_or_ttl()));
        c.expiry = Some(expiry);
        self.set_due(id, Some(expiry));
    }

    /// etcd `scheduleCheckpointIfNeeded`.
    fn schedule_checkpoint(&mut self, id: i64, cfg: &LessorConfig, now: Instant) {
        let Some(c) = self.leases.get_mut(&id) else {
            return;
        };
        if !cfg.checkpoints || c.remaining_or_ttl() <= cfg.checkpoint_interval.as_secs() as i64 {
            return;
        }
        if let Some(old) = c.checkpoint_at.take() {
            self.checkpoints.remove(&(old, id));
        }
        let at = after(now, cfg.checkpoint_interval);
        c.checkpoint_at = Some(at);
        self.checkpoints.insert((at, id));
    }

    fn remove(&mut self, id: i64) {
        if let Some(c) = self.leases.remove(&id) {
            if let Some(t) = c.due {
                self.expiries.remove(&(t, id));
            }
            if let Some(t) = c.checkpoint_at {
                self.checkpoints.remove(&(t, id));
            }
        }
    }

    fn promote(&mut self, cfg: &LessorConfig, now: Instant) {
        self.primary = true;
        let ids: Vec<i64> = self.leases.keys().copied().collect();
        for &id in &ids {
            self.refresh(id, cfg.extend, now);
            self.schedule_checkpoint(id, cfg, now);
        }
        if ids.len() < cfg.revoke_rate as usize {
            return; // no possible pile-up
        }
        // etcd: spread deadlines so that no second holds more than 3/4 of
        // the revoke rate.
        let mut by_expiry: Vec<(Instant, i64)> = self
            .leases
            .iter()
            .map(|(id, c)| (c.expiry.unwrap_or(now), *id))
            .collect();
        by_expiry.sort();
        let target = (3 * cfg.revoke_rate as usize / 4).max(1);
        let remaining = |t: Instant| t.saturating_duration_since(now).as_secs_f64();
        let mut base = remaining(by_expiry[0].0);
        let mut next = base + 1.0;
        let mut expires = 0usize;
        for (t, id) in by_expiry {
            let r = remaining(t);
            if r > next {
                base = r;
                next = base + 1.0;
                expires = 1;
                continue;
            }
            expires += 1;
            if expires <= target {
                continue;
            }
            let delay = (expires as f64 / target as f64 - (r - base)).max(0.0);
            next = base + delay;
            self.refresh(id, cfg.extend + Duration::from_secs_f64(delay), now);
        }
    }

    fn demote(&mut self) {
        self.primary = false;
        for c in self.leases.values_mut() {
            c.expiry = None;
            c.due = None;
            c.checkpoint_at = None;
        }
        self.expiries.clear();
        self.checkpoints.clear();
    }
}

/// The lessor handle: cheap to clone, shared by the state machine (which
/// reports applied lease entries), the Lease service and the primary's task.
#[derive(Clone)]
pub struct Lessor {
    state: Arc<Mutex<State>>,
    cfg: Arc<LessorConfig>,
    /// Bumped on every change that may wake the task or a waiting keepalive.
    changed: Arc<watch::Sender<u64>>,
}

impl Lessor {
    /// A follower lessor holding `records` (the store's lease table).
    pub fn new(cfg: LessorConfig, records: Vec<LeaseRecord>) -> Lessor {
        let l = Lessor {
            state: Arc::default(),
            cfg: Arc::new(cfg),
            changed: Arc::new(watch::Sender::new(0)),
        };
        l.recover(records);
        l
    }

    pub fn config(&self) -> &LessorConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The TTL a grant asking for `ttl` gets (etcd raises it to the minimum).
    pub fn granted_ttl(&self, ttl: i64) -> i64 {
        ttl.max(self.cfg.min_ttl)
    }

    /// Replaces everything with `records` (open, snapshot install).
    pub fn recover(&self, records: Vec<LeaseRecord>) {
        let now = Instant::now();
        let mut s = self.lock();
        let primary = s.primary;
        s.demote();
        s.leases = records
            .into_iter()
            .map(|r| {
                (
                    r.id,
                    Clock {
                        ttl: r.ttl.max(self.cfg.min_ttl),
                        remaining_ttl: r.remaining_ttl,
                        expiry: None,
                        due: None,
                        checkpoint_at: None,
                    },
                )
            })
            .collect();
        if primary {
            s.promote(&self.cfg, now);
        }
        drop(s);
        self.bump();
    }

    // ----------------------------------------------------------- applied

    /// A LeaseGrant was applied.
    pub fn granted(&self, id: i64, ttl: i64) {
        let now = Instant::now();
        let mut s = self.lock();
        s.leases.insert(
            id,
            Clock {
                ttl,
                remaining_ttl: 0,
                expiry: None,
                due: None,
                checkpoint_at: None,
            },
        );
        if s.primary {
            s.refresh(id, Duration::ZERO, now);
            s.schedule_checkpoint(id, &self.cfg, now);
        }
        drop(s);
        self.bump();
    }

    /// A LeaseRevoke was applied (by a client or on expiry).
    pub fn revoked(&self, id: i64) {
        self.lock().remove(id);
        self.bump();
    }

    /// A LeaseCheckpoint was applied.
    pub fn checkpointed(&self, checkpoints: &[LeaseCheckpoint]) {
        let now = Instant::now();
        let mut s = self.lock();
        for cp in checkpoints {
            if let Some(c) = s.leases.get_mut(&cp.id) {
                c.remaining_ttl = cp.remaining_ttl;
                if s.primary {
                    s.schedule_checkpoint(cp.id, &self.cfg, now);
                }
            }
        }
    }

    /// The newest applied entry is of `term`. A leader of that term has
    /// then applied everything of earlier terms (its own first entry is the
    /// blank one it appends when elected) and may be promoted.
    pub fn applied_term(&self, term: u64) {
        let mut s = self.lock();
        if s.applied_term != term {
            s.applied_term = term;
            drop(s);
            self.bump();
        }
    }

    // -------------------------------------------------------- leadership

    pub fn is_primary(&self) -> bool {
        self.lock().primary
    }

    /// Follows Raft: promote a leader of `term` once an entry of its term
    /// is applied; demote on losing leadership. Returns true on a change.
    pub fn sync_leadership(&self, leader: bool, term: u64) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        let changed = if leader && !s.primary && s.applied_term == term {
            s.promote(&self.cfg, now);
            tracing::info!(term, leases = s.leases.len(), "lessor promoted");
            true
        } else if !leader && s.primary {
            s.demote();
            tracing::info!(term, "lessor demoted");
            true
        } else {
            false
        };
        drop(s);
        if changed {
            self.bump();
        }
        changed
    }

    // ------------------------------------------------------------ queries

    /// etcd `Renew`, on the primary: the deadline becomes now + TTL.
    pub fn renew(&self, id: i64) -> Result<Renewed, RenewError> {
        self.renew_at(id, Instant::now())
    }

    fn renew_at(&self, id: i64, now: Instant) -> Result<Renewed, RenewError> {
        let mut s = self.lock();
        if !s.primary {
            return Err(RenewError::NotPrimary);
        }
        let c = s.leases.get(&id).ok_or(RenewError::NotFound)?;
        if c.expiry.is_some_and(|e| e <= now) {
            return Err(RenewError::Expired);
        }
        let ttl = c.ttl;
        let expiry = after(now, secs(ttl));
        s.leases.get_mut(&id).expect("checked").expiry = Some(expiry);
        s.set_due(id, Some(expiry));
        Ok(Renewed { ttl })
    }

    /// Whether a renewal of `id` must first clear its checkpoint through
    /// Raft (etcd clears it so a later leader does not use a stale one).
    pub fn needs_checkpoint_clear(&self, id: i64) -> bool {
        self.cfg.checkpoints
            && self
                .lock()
                .leases
                .get(&id)
                .is_some_and(|c| c.remaining_ttl > 0)
    }

    /// Time left and granted TTL of `id`, as the primary sees it; `None`
    /// if unknown. The time left is `None` on a follower (no deadline) and
    /// negative once past the deadline.
    pub fn time_to_live(&self, id: i64) -> Option<(Option<f64>, i64)> {
        let now = Instant::now();
        let s = self.lock();
        let c = s.leases.get(&id)?;
        let left = c.expiry.map(|e| {
            if e >= now {
                (e - now).as_secs_f64()
            } else {
                -(now - e).as_secs_f64()
            }
        });
        Some((left, c.ttl))
    }

    /// Lease ids by deadline (etcd `Leases()`), ties by id.
    pub fn leases(&self) -> Vec<i64> {
        let s = self.lock();
        let mut v: Vec<(Option<Instant>, i64)> =
            s.leases.iter().map(|(id, c)| (c.expiry, *id)).collect();
        v.sort_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => x.cmp(&y).then(a.1.cmp(&b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1),
        });
        v.into_iter().map(|(_, id)| id).collect()
    }

    pub fn contains(&self, id: i64) -> bool {
        self.lock().leases.contains_key(&id)
    }

    // ------------------------------------------------ the primary's task

    /// Up to `limit` leases past their deadline, to revoke; each is checked
    /// again after the retry interval in case its revoke is lost.
    pub fn take_expired(&self, limit: usize) -> Vec<i64> {
        self.take_expired_at(Instant::now(), limit)
    }

    fn take_expired_at(&self, now: Instant, limit: usize) -> Vec<i64> {
        let mut s = self.lock();
        let mut out = Vec::new();
        if !s.primary {
            return out;
        }
        while out.len() < limit {
            let Some(&(t, id)) = s.expiries.first() else {
                break;
            };
            if t > now {
                break;
            }
            let expired = s
                .leases
                .get(&id)
                .and_then(|c| c.expiry)
                .is_some_and(|e| e <= now);
            s.set_due(id, Some(after(now, self.cfg.retry_interval)));
            if expired {
                out.push(id);
            }
        }
        out
    }

    /// Checkpoints that are due (etcd `findDueScheduledCheckpoints`).
    pub fn take_due_checkpoints(&self, limit: usize) -> Vec<LeaseCheckpoint> {
        self.take_due_checkpoints_at(Instant::now(), limit)
    }

    fn take_due_checkpoints_at(&self, now: Instant, limit: usize) -> Vec<LeaseCheckpoint> {
        let mut s = self.lock();
        let mut out = Vec::new();
        if !s.primary {
            return out;
        }
        while out.len() < limit {
            let Some(&(t, id)) = s.checkpoints.first() else {
                break;
            };
            if t > now {
                break;
            }
            s.checkpoints.remove(&(t, id));
            let Some(c) = s.leases.get_mut(&id) else {
                continue;
            };
            c.checkpoint_at = None;
            let Some(expiry) = c.expiry.filter(|e| *e > now) else {
                continue;
            };
            let remaining = (expiry - now).as_secs_f64().ceil() as i64;
            if remaining >= c.ttl {
                continue;
            }
            out.push(LeaseCheckpoint {
                id,
                remaining_ttl: remaining,
            });
        }
        out
    }

    /// When the task has something to do next (a deadline or a checkpoint).
    pub fn next_wake(&self) -> Option<Instant> {
        let s = self.lock();
        let a = s.expiries.first().map(|x| x.0);
        let b = s.checkpoints.first().map(|x| x.0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// etcd's `idutil.Generator`: lease ids that differ between members (the
/// low 16 bits of the member id on top), between restarts (the start time
/// in milliseconds below it) and between calls (a counter), all positive.
pub struct IdGen {
    prefix: u64,
    suffix: AtomicU64,
}

impl IdGen {
    const TS_BITS: u32 = 40;
    const CNT_BITS: u32 = 8;
    const SUFFIX_BITS: u32 = Self::TS_BITS + Self::CNT_BITS;

    pub fn new(member_id: u64, unix_millis: u64) -> IdGen {
        let low = |v: u64, bits: u32| v & ((1u64 << bits) - 1);
        IdGen {
            prefix: (member_id & 0xffff) << Self::SUFFIX_BITS,
            suffix: AtomicU64::new(low(unix_millis, Self::TS_BITS) << Self::CNT_BITS),
        }
    }

    pub fn next(&self) -> i64 {
        let suffix = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
        let id = self.prefix | (suffix & ((1u64 << Self::SUFFIX_BITS) - 1));
        (id & (u64::MAX >> 1)) as i64
    }
}

#[cfg(test)]
mod tests;

//! The lease workload and its checker.
//!
//! Each client, one lease at a time: grant a lease with its own id and a
//! TTL of 2–4 s, put two keys under it (`jepsen/l/<id>/0`, `/1`), then for
//! 1.5–5.5 s read both keys (one prefix range) every 100–300 ms while doing
//! one of: keep it alive (a keepalive every TTL/3) and then revoke it; keep
//! it alive and then stop (let it lapse); never keep it alive. After a
//! revoke is acknowledged the client reads once more and tries one more put
//! under the lease; a lapsing lease is read until its keys are gone (at
//! most TTL + 6 s). Every request is recorded with its invoke and complete
//! times. A keepalive is one request on a fresh stream: TTL > 0 renewed,
//! TTL 0 (lease not found) is an answer too, no answer is indeterminate.
//!
//! ## What etcd guarantees, and what is checked
//!
//! Keys under a lease are deleted only by an applied LeaseRevoke, proposed
//! by a client or by the leader once the lease is past its deadline. The
//! leader alone keeps deadlines: a grant or keepalive it handles at `r`
//! sets the deadline to at least `r + TTL`, and a newly elected leader
//! restarts every deadline at `now + election timeout + TTL` (etcd's
//! `Promote`). So under faults:
//!
//! - a keepalive acknowledged by a deposed leader that has not noticed yet
//!   (a paused or isolated one) may not count: the real leader may expire
//!   the lease on its own schedule. Only keepalives whose request and answer
//!   both fall outside every fault window, extended by `TRUST_MARGIN` (2 s:
//!   a deposed leader steps down within 2 election timeouts), are trusted;
//!   grants always count (they are committed, so every leader that knows the
//!   lease set its deadline after the grant was sent);
//! - a keepalive whose answer was lost may still have been applied — even
//!   after the partition healed (the proxies hold bytes), so the last
//!   possible renewal is unknown until the faults end;
//! - leader changes push every deadline out by an election timeout + TTL,
//!   so "expired by its deadline" only holds once the cluster is stable.
//!
//! The checked properties (all satisfied by etcd 3.5, checked against it
//! with `OXCD_TEST_TARGET=etcd`):
//!
//! 1. **kept alive ⇒ present**: a read that returns without a key whose put
//!    was acknowledged before the read began is a violation if the lease
//!    was granted, or renewed by a trusted keepalive, at `s` (the request's
//!    send time) with TTL `T` and the read completed before `s + T − 250 ms`,
//!    unless a revoke of the lease was sent before the read completed.
//! 2. **revoke is final and atomic**: after a revoke is acknowledged, no
//!    read begun later sees a key of the lease, no put under the lease sent
//!    later succeeds (it must fail with etcd's `requested lease not found`),
//!    and no trusted keepalive sent later renews it. While both puts are
//!    acknowledged and the lease is not revoked, a read sees both keys or
//!    neither (one LeaseRevoke deletes them at one revision).
//! 3. **expired ⇒ gone**: (a) during the run, for a lease never renewed by
//!    a keepalive of unknown outcome nor revoked, a read begun after
//!    `max(last acknowledged grant/keepalive, first read in the term +
//!    election timeout) + T + 3 s` must not see its keys when the read's
//!    answer carries the same raft term as the grant's (no election in
//!    between: that term's leader, promoted by the first read in the term,
//!    kept the deadline, and a read in that term is linearizable) and no
//!    fault window, extended by `TRUST_MARGIN`, overlaps the time from
//!    `deadline − 3 s` to the read (a slowed or split cluster may not commit
//!    the revoke in time); (b) once the run is over and healed,
//!    with the raft term observed unchanged, every lease is past
//!    `max(last renewal + T, last term change + election timeout + T) + 2 s`
//!    (an unanswered keepalive counts as a renewal up to 5 s after it was
//!    given up on); then no key under `jepsen/l/` may remain, and a put
//!    under any of the leases must fail with `requested lease not found`.
//! 4. **no phantom**: a read sees only keys this lease's client put, with
//!    the values it put.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, LeaseGrantOptions, PutOptions};

use super::history::{History, Out, Recorded};
use super::workload::{classify, connect, OP_TIMEOUT};
use super::Rng;

/// After a fault window ends, a deposed leader may still answer for this long.
pub const TRUST_MARGIN_NS: u64 = 2_000_000_000;
/// Tolerance for "renewed at s with TTL T ⇒ present until s + T".
const PRESENT_SLACK_NS: u64 = 250_000_000;
/// How long after its client gave up an unanswered keepalive may still be
/// handled (a member waits for a leader up to its request timeout).
const LATE_RENEWAL_NS: u64 = 5_000_000_000;
/// Added to the expiry deadline after the run (an idle, healed cluster):
/// the leader's revoke loop (etcd checks every 500 ms) and the commit.
pub const EXPIRY_SLACK: Duration = Duration::from_secs(2);
/// The same during the run, under load on a shared machine.
pub const IN_RUN_EXPIRY_SLACK: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LKind {
    Grant {
        ttl: i64,
    },
    Put {
        key: String,
        value: String,
    },
    KeepAlive,
    Revoke,
    /// The lease's keys (one prefix range).
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LRet {
    /// `term`: the raft term in the answer's header.
    Granted {
        ttl: i64,
        term: u64,
    },
    Put {
        rev: i64,
    },
    /// The TTL answered; 0: no such lease.
    KeptAlive {
        ttl: i64,
    },
    Revoked,
    /// The keys and values, and the header's raft term.
    Read(Vec<(String, String)>, u64),
}

/// What the client meant to do with the lease (for the report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    KeepAliveThenRevoke,
    KeepAliveThenLapse,
    Lapse,
}

#[derive(Clone, Debug)]
pub struct LOp {
    pub id: usize,
    pub process: usize,
    pub lease: i64,
    pub kind: LKind,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub outcome: Out<LRet>,
}

impl Recorded for LOp {
    fn set_id(&mut self, id: usize) {
        self.id = id;
    }
}

impl LOp {
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            LKind::Grant { ttl } => format!("grant ttl={ttl}"),
            LKind::Put { key, value } => format!("put {key}={value}"),
            LKind::KeepAlive => "keepalive".into(),
            LKind::Revoke => "revoke".into(),
            LKind::Read => "read".into(),
        };
        let res = match &self.outcome {
            Out::Ok(LRet::Granted { ttl, term }) => format!("ok ttl={ttl} term={term}"),
            Out::Ok(LRet::Put { rev }) => format!("ok rev={rev}"),
            Out::Ok(LRet::KeptAlive { ttl }) => format!("ok ttl={ttl}"),
            Out::Ok(LRet::Revoked) => "ok".into(),
            Out::Ok(LRet::Read(kvs, term)) => format!(
                "ok [{}] term={term}",
                kvs.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Out::Fail(e) => format!("fail ({e})"),
            Out::Info(e) => format!("info ({e})"),
        };
        format!(
            "#{} p{} lease {:x} {what} -> {res} [{:.3}s..{:.3}s]",
            self.id,
            self.process,
            self.lease,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9
        )
    }
}

pub fn prefix_of(lease: i64) -> String {
    format!("jepsen/l/{lease:x}/")
}

pub fn value_of(lease: i64, i: usize) -> String {
    format!("v{lease:x}-{i}")
}

/// Is `msg` etcd's answer to a put under a lease that does not exist?
pub fn is_lease_not_found(o: &Out<LRet>) -> bool {
    matches!(o, Out::Fail(e) if e.starts_with("NotFound") && e.contains("requested lease not found"))
}

struct Client1<'a> {
    process: usize,
    hist: &'a History<LOp>,
}

impl Client1<'_> {
    /// Runs one request, bounded by `OP_TIMEOUT`, and records it.
    async fn op<F>(&self, lease: i64, kind: LKind, f: F) -> Out<LRet>
    where
        F: std::future::Future<Output = Out<LRet>>,
    {
        let invoke_ns = self.hist.now_ns();
        let outcome = match tokio::time::timeout(OP_TIMEOUT, f).await {
            Ok(o) => o,
            Err(_) => Out::Info("client timeout".into()),
        };
        // A read has no effect: an unknown outcome is a failure.
        let outcome = match (&kind, outcome) {
            (LKind::Read, Out::Info(e)) => Out::Fail(e),
            (_, o) => o,
        };
        self.hist.record(LOp {
            id: 0,
            process: self.process,
            lease,
            kind,
            invoke_ns,
            complete_ns: self.hist.now_ns(),
            outcome: outcome.clone(),
        });
        outcome
    }
}

async fn keepalive(c: &mut Client, lease: i64, ttl: i64) -> Out<LRet> {
    match c.lease_keep_alive(lease).await {
        // etcd-client checks the first answer's TTL > 0; it is the granted TTL.
        Ok(_) => Out::Ok(LRet::KeptAlive { ttl }),
        Err(etcd_client::Error::LeaseKeepAliveError(e)) if e.contains("not found") => {
            Out::Ok(LRet::KeptAlive { ttl: 0 })
        }
        Err(e) => classify(&e),
    }
}

async fn read(c: &mut Client, lease: i64) -> Out<LRet> {
    match c
        .get(prefix_of(lease), Some(GetOptions::new().with_prefix()))
        .await
    {
        Ok(r) => Out::Ok(LRet::Read(
            r.kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect(),
            r.header().map(|h| h.raft_term()).unwrap_or(0),
        )),
        Err(e) => Out::Fail(e.to_string()),
    }
}

pub async fn put(c: &mut Client, key: &str, value: &str, lease: i64) -> Out<LRet> {
    match c
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        Ok(r) => Out::Ok(LRet::Put {
            rev: r.header().map(|h| h.revision()).unwrap_or(-1),
        }),
        Err(e) => classify(&e),
    }
}

pub async fn run_client(
    process: usize,
    endpoint: String,
    until: Instant,
    seed: u64,
    hist: Arc<History<LOp>>,
) -> Vec<(i64, Fate)> {
    let mut rng = Rng::new(seed ^ (process as u64 + 7).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let me = Client1 {
        process,
        hist: &hist,
    };
    let mut fates = Vec::new();
    let mut client: Option<Client> = None;
    for n in 1..100_000i64 {
        if Instant::now() >= until {
            break;
        }
        let Some(c) = client.as_mut() else {
            client = connect(&endpoint).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let lease = ((process as i64 + 1) << 32) | n;
        let ttl = 2 + rng.below(3) as i64;
        let granted = me
            .op(lease, LKind::Grant { ttl }, async {
                match c
                    .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(lease)))
                    .await
                {
                    Ok(r) => Out::Ok(LRet::Granted {
                        ttl: r.ttl(),
                        term: r.header().map(|h| h.raft_term()).unwrap_or(0),
                    }),
                    Err(e) => classify(&e),
                }
            })
            .await;
        let Out::Ok(LRet::Granted { ttl, .. }) = granted else {
            tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
            if rng.below(3) == 0 {
                client = None;
            }
            continue;
        };
        let fate = match rng.below(10) {
            0..=3 => Fate::KeepAliveThenRevoke,
            4..=6 => Fate::KeepAliveThenLapse,
            _ => Fate::Lapse,
        };
        fates.push((lease, fate));
        for i in 0..2 {
            let key = format!("{}{i}", prefix_of(lease));
            let value = value_of(lease, i);
            me.op(
                lease,
                LKind::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
                put(c, &key, &value, lease),
            )
            .await;
        }
        let end = (Instant::now() + Duration::from_millis(1500 + rng.below(4000))).min(until);
        let every = Duration::from_millis(ttl as u64 * 1000 / 3);
        let mut next_ka = Instant::now() + every;
        let mut alive = true;
        for _ in 0..1000 {
            if Instant::now() >= end {
                break;
            }
            if fate != Fate::Lapse && alive && Instant::now() >= next_ka {
                let o = me
                    .op(lease, LKind::KeepAlive, keepalive(c, lease, ttl))
                    .await;
                if o == Out::Ok(LRet::KeptAlive { ttl: 0 }) {
                    alive = false;
                }
                next_ka = Instant::now() + every;
            }
            me.op(lease, LKind::Read, read(c, lease)).await;
            tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
        }
        if fate == Fate::KeepAliveThenRevoke && alive && Instant::now() < until {
            let o = me
                .op(lease, LKind::Revoke, async {
                    match c.lease_revoke(lease).await {
                        Ok(_) => Out::Ok(LRet::Revoked),
                        Err(e) => classify(&e),
                    }
                })
                .await;
            if o.is_ok() {
                me.op(lease, LKind::Read, read(c, lease)).await;
                let key = format!("{}2", prefix_of(lease));
                let value = value_of(lease, 2);
                me.op(
                    lease,
                    LKind::Put {
                        key: key.clone(),
                        value: value.clone(),
                    },
                    put(c, &key, &value, lease),
                )
                .await;
            }
        } else if fate != Fate::KeepAliveThenRevoke {
            // Lapsing: read on until the keys are gone (bounded), to see
            // the expiry happen.
            let stop = (Instant::now() + Duration::from_secs(ttl as u64 + 6)).min(until);
            for _ in 0..1000 {
                if Instant::now() >= stop {
                    break;
                }
                let o = me.op(lease, LKind::Read, read(c, lease)).await;
                if matches!(&o, Out::Ok(LRet::Read(kvs, _)) if kvs.is_empty()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 + rng.below(150))).await;
            }
        }
    }
    fates
}

/// Per lease, the ops in invocation order.
fn by_lease(ops: &[LOp]) -> BTreeMap<i64, Vec<&LOp>> {
    let mut m: BTreeMap<i64, Vec<&LOp>> = BTreeMap::new();
    for op in ops {
        m.entry(op.lease).or_default().push(op);
    }
    for v in m.values_mut() {
        v.sort_by_key(|o| o.invoke_ns);
    }
    m
}

/// Is `[a, b]` clear of every fault window extended by the trust margin?
fn trusted(a: u64, b: u64, faults: &[(u64, u64)]) -> bool {
    faults
        .iter()
        .all(|&(s, e)| b < s || a > e.saturating_add(TRUST_MARGIN_NS))
}

/// Properties 1, 2 and 4 of the module docs over the run's history;
/// `faults` are the nemesis's windows (ns). Returns the violations.
pub fn check(ops: &[LOp], faults: &[(u64, u64)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (lease, ops) in by_lease(ops) {
        let revokes: Vec<&LOp> = ops
            .iter()
            .copied()
            .filter(|o| o.kind == LKind::Revoke && !o.outcome.is_fail())
            .collect();
        let revoke_acked = revokes
            .iter()
            .filter(|o| o.outcome.is_ok())
            .min_by_key(|o| o.complete_ns)
            .copied();
        // Protections: (send time, TTL s, the op).
        let mut protect: Vec<(u64, i64, &LOp)> = Vec::new();
        let mut puts: HashMap<&str, (&str, &LOp)> = HashMap::new();
        let mut attempted: HashMap<&str, &str> = HashMap::new();
        // Trusted keepalives answered "no such lease".
        let mut gone: Vec<&LOp> = Vec::new();
        for &o in &ops {
            match (&o.kind, &o.outcome) {
                (LKind::Grant { .. }, Out::Ok(LRet::Granted { ttl, .. })) => {
                    protect.push((o.invoke_ns, *ttl, o))
                }
                (LKind::KeepAlive, Out::Ok(LRet::KeptAlive { ttl }))
                    if trusted(o.invoke_ns, o.complete_ns, faults) =>
                {
                    if *ttl == 0 {
                        gone.push(o);
                        continue;
                    }
                    protect.push((o.invoke_ns, *ttl, o));
                    if let Some(r) = revoke_acked.filter(|r| o.invoke_ns > r.complete_ns) {
                        bad.push(format!(
                            "keepalive renewed a revoked lease: {} after {}",
                            o.describe(),
                            r.describe()
                        ));
                    }
                }
                (LKind::Put { key, value }, out) => {
                    if !out.is_fail() {
                        attempted.insert(key, value);
                    }
                    if out.is_ok() {
                        puts.insert(key, (value, o));
                        if let Some(r) = revoke_acked.filter(|r| o.invoke_ns > r.complete_ns) {
                            bad.push(format!(
                                "put under a revoked lease succeeded: {} after {}",
                                o.describe(),
                                r.describe()
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        // 1. A trusted "no such lease" while a renewal still holds it.
        for g in &gone {
            if revokes.iter().any(|rv| rv.invoke_ns < g.complete_ns) {
                continue;
            }
            if let Some((_, _, p)) = protect.iter().find(|(s, ttl, _)| {
                g.complete_ns + PRESENT_SLACK_NS < s + (*ttl as u64) * 1_000_000_000
            }) {
                bad.push(format!(
                    "lease expired early: {} answered no such lease, but {} keeps it alive until after that",
                    g.describe(),
                    p.describe()
                ));
            }
        }
        // 3. In-run expiry, judged only within one leader's term: the
        // grant's answer and the read's carry the same raft term, so no
        // election (which restarts deadlines) happened in between.
        if let Some((d, g, term)) = in_term_deadline(&ops) {
            for &r in &ops {
                let Out::Ok(LRet::Read(kvs, t)) = &r.outcome else {
                    continue;
                };
                // The revoke must also have been able to commit: no fault
                // (nor its aftermath) from the lease's natural deadline on.
                let due = d - IN_RUN_EXPIRY_SLACK.as_nanos() as u64;
                if *t == term
                    && r.invoke_ns > d
                    && !kvs.is_empty()
                    && trusted(due, r.invoke_ns, faults)
                {
                    bad.push(format!(
                        "key outlived its lease's expiry: {} began at {:.3}s, after the deadline {:.3}s (last renewal or first read in the term + election timeout, + TTL + {:?}) of a lease granted by {} with no leader change since",
                        r.describe(),
                        r.invoke_ns as f64 / 1e9,
                        d as f64 / 1e9,
                        IN_RUN_EXPIRY_SLACK,
                        g.describe()
                    ));
                    break;
                }
            }
        }
        let keys: Vec<String> = (0..2).map(|i| format!("{}{i}", prefix_of(lease))).collect();
        for &r in &ops {
            let Out::Ok(LRet::Read(kvs, _)) = &r.outcome else {
                continue;
            };
            // 4. no phantom
            for (k, v) in kvs {
                if attempted.get(k.as_str()) != Some(&v.as_str()) {
                    bad.push(format!(
                        "phantom: {} saw {k}={v}, which its client did not put",
                        r.describe()
                    ));
                }
            }
            // 2. nothing after an acknowledged revoke
            if let Some(rv) = revoke_acked.filter(|rv| r.invoke_ns > rv.complete_ns) {
                if !kvs.is_empty() {
                    bad.push(format!(
                        "key outlived its lease's revoke: {} after {}",
                        r.describe(),
                        rv.describe()
                    ));
                }
                continue;
            }
            let revoke_sent = revokes.iter().any(|rv| rv.invoke_ns < r.complete_ns);
            let acked_before: Vec<&str> = keys
                .iter()
                .filter(|k| {
                    puts.get(k.as_str())
                        .is_some_and(|(_, p)| p.complete_ns < r.invoke_ns)
                })
                .map(String::as_str)
                .collect();
            let present = |k: &str| kvs.iter().any(|(kk, _)| kk == k);
            // 2. atomic revoke/expiry
            if acked_before.len() == 2 && present(keys[0].as_str()) != present(keys[1].as_str()) {
                bad.push(format!(
                    "lease keys deleted separately: {} sees one of the two keys",
                    r.describe()
                ));
            }
            // 1. kept alive ⇒ present
            if revoke_sent {
                continue;
            }
            for k in acked_before.iter().filter(|k| !present(k)) {
                let by = protect.iter().find(|(s, ttl, _)| {
                    r.complete_ns + PRESENT_SLACK_NS < s + (*ttl as u64) * 1_000_000_000
                });
                if let Some((_, _, p)) = by {
                    bad.push(format!(
                        "key vanished while its lease was alive: {} misses {k} (put by {}), but {} keeps the lease alive until after the read",
                        r.describe(),
                        puts[k].1.describe(),
                        p.describe()
                    ));
                }
            }
        }
    }
    bad
}

/// For a lease granted (acknowledged) in raft term `term`, never renewed by
/// a keepalive of unknown outcome and not revoked: its expiry deadline as
/// long as the term's leader stays,
/// `max(grant, acknowledged keepalives, c + election timeout) + TTL + slack`,
/// where `c` is when the first read of the lease in that term completed: the
/// term's leader was promoted by then (a linearizable read needs a leader
/// that has committed an entry of its term), and a lease granted before the
/// promotion got `promotion + election timeout + TTL`.
fn in_term_deadline<'a>(ops: &[&'a LOp]) -> Option<(u64, &'a LOp, u64)> {
    let (g, ttl, term) = ops.iter().find_map(|o| match o.outcome {
        Out::Ok(LRet::Granted { ttl, term }) if term > 0 => Some((*o, ttl, term)),
        _ => None,
    })?;
    if ops.iter().any(|o| {
        (o.kind == LKind::KeepAlive && o.outcome.is_info())
            || (o.kind == LKind::Revoke && !o.outcome.is_fail())
    }) {
        return None;
    }
    let led = ops
        .iter()
        .filter(|o| matches!(o.outcome, Out::Ok(LRet::Read(_, t)) if t == term))
        .map(|o| o.complete_ns)
        .min()?;
    let election = Duration::from_millis(crate::support::ELECTION_MS).as_nanos() as u64;
    let last = ops
        .iter()
        .filter(|o| matches!(o.outcome, Out::Ok(LRet::KeptAlive { ttl }) if ttl > 0))
        .map(|o| o.complete_ns)
        .chain([g.complete_ns, led + election])
        .max()?;
    Some((
        last + ttl as u64 * 1_000_000_000 + IN_RUN_EXPIRY_SLACK.as_nanos() as u64,
        g,
        term,
    ))
}

/// For each lease whose expiry was seen within one term (see
/// `in_term_deadline`): seconds from its last renewal's send time + TTL to
/// the answer of the first read that found its keys gone (for the report;
/// negative would break property 1).
pub fn expiry_lateness(ops: &[LOp]) -> Vec<f64> {
    let mut out = Vec::new();
    for (_, ops) in by_lease(ops) {
        let Some((_, _, term)) = in_term_deadline(&ops) else {
            continue;
        };
        let Some((sent, ttl)) = ops
            .iter()
            .filter_map(|o| match o.outcome {
                Out::Ok(LRet::Granted { ttl, .. }) => Some((o.invoke_ns, ttl)),
                Out::Ok(LRet::KeptAlive { ttl }) if ttl > 0 => Some((o.invoke_ns, ttl)),
                _ => None,
            })
            .max()
        else {
            continue;
        };
        let due = sent + ttl as u64 * 1_000_000_000;
        let put_acked = ops
            .iter()
            .any(|o| matches!(o.kind, LKind::Put { .. }) && o.outcome.is_ok());
        let first_gone = ops.iter().find(|o| {
            o.invoke_ns > sent
                && matches!(&o.outcome, Out::Ok(LRet::Read(kvs, t)) if kvs.is_empty() && *t == term)
        });
        if let (true, Some(r)) = (put_acked, first_gone) {
            out.push((r.complete_ns as f64 - due as f64) / 1e9);
        }
    }
    out
}

/// The expiry deadline of property 3 for every lease not revoked by an
/// acknowledged revoke, given when the cluster was last seen to change
/// term (or healed), in ns since the run began. `None`: no such lease.
pub fn expiry_deadline_ns(ops: &[LOp], stable_ns: u64, election: Duration) -> Option<u64> {
    let mut deadline = None;
    for (_, ops) in by_lease(ops) {
        if ops
            .iter()
            .any(|o| o.kind == LKind::Revoke && o.outcome.is_ok())
        {
            continue;
        }
        let Some(ttl) = ops.iter().find_map(|o| match o.outcome {
            Out::Ok(LRet::Granted { ttl, .. }) => Some(ttl),
            _ => None,
        }) else {
            // Grant failed or unknown: an unknown grant's TTL is the one sent.
            let Some(ttl) = ops.iter().find_map(|o| match (&o.kind, &o.outcome) {
                (LKind::Grant { ttl }, Out::Info(_)) => Some(*ttl),
                _ => None,
            }) else {
                continue;
            };
            let d = stable_ns + (election + Duration::from_secs(ttl as u64)).as_nanos() as u64;
            deadline = deadline.max(Some(d));
            continue;
        };
        // An unanswered keepalive may still be handled a little later (a
        // member waits up to its request timeout for a leader).
        let last_renewal = ops
            .iter()
            .filter_map(|o| match (&o.kind, &o.outcome) {
                (_, Out::Ok(LRet::Granted { .. })) | (_, Out::Ok(LRet::KeptAlive { .. })) => {
                    Some(o.complete_ns)
                }
                (LKind::KeepAlive, Out::Info(_)) => Some(o.complete_ns + LATE_RENEWAL_NS),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let ttl_ns = ttl as u64 * 1_000_000_000;
        let d = (last_renewal + ttl_ns).max(stable_ns + election.as_nanos() as u64 + ttl_ns);
        deadline = deadline.max(Some(d));
    }
    deadline.map(|d| d + EXPIRY_SLACK.as_nanos() as u64)
}

/// Leases that existed for sure (an acknowledged grant), for the final
/// put-must-fail probe.
pub fn granted_leases(ops: &[LOp]) -> Vec<i64> {
    let mut v: Vec<i64> = ops
        .iter()
        .filter(|o| matches!(o.outcome, Out::Ok(LRet::Granted { .. })))
        .map(|o| o.lease)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Property 3: `remaining` is every key under `jepsen/l/` read after the
/// deadline; `probes` the outcomes of puts under expired leases.
pub fn check_final(
    remaining: &[(String, String)],
    probes: &[(i64, Out<LRet>)],
    deadline_s: f64,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (k, v) in remaining {
        bad.push(format!(
            "key outlived its lease: {k}={v} still present after the expiry deadline ({deadline_s:.3}s)"
        ));
    }
    for (lease, o) in probes {
        match o {
            o if is_lease_not_found(o) => {}
            Out::Info(_) => {}
            o => bad.push(format!(
                "put under expired lease {lease:x}: {o:?}, not etcd's NotFound \"requested lease not found\""
            )),
        }
    }
    bad
}

/// (grants ok, keepalives ok/ttl0/info, trusted renewals, revokes ok, reads ok).
pub struct Counts {
    pub leases: usize,
    pub keepalive_ok: usize,
    pub keepalive_gone: usize,
    pub keepalive_info: usize,
    pub trusted: usize,
    pub revokes_ok: usize,
    pub reads_ok: usize,
    pub puts_ok: usize,
    pub puts_after_revoke_refused: usize,
}

pub fn counts(ops: &[LOp], faults: &[(u64, u64)]) -> Counts {
    let ka = |o: &&LOp| o.kind == LKind::KeepAlive;
    Counts {
        leases: granted_leases(ops).len(),
        keepalive_ok: ops
            .iter()
            .filter(ka)
            .filter(|o| matches!(o.outcome, Out::Ok(LRet::KeptAlive { ttl }) if ttl > 0))
            .count(),
        keepalive_gone: ops
            .iter()
            .filter(ka)
            .filter(|o| o.outcome == Out::Ok(LRet::KeptAlive { ttl: 0 }))
            .count(),
        keepalive_info: ops
            .iter()
            .filter(ka)
            .filter(|o| o.outcome.is_info())
            .count(),
        trusted: ops
            .iter()
            .filter(ka)
            .filter(|o| {
                matches!(o.outcome, Out::Ok(LRet::KeptAlive { ttl }) if ttl > 0)
                    && trusted(o.invoke_ns, o.complete_ns, faults)
            })
            .count(),
        revokes_ok: ops
            .iter()
            .filter(|o| o.kind == LKind::Revoke && o.outcome.is_ok())
            .count(),
        reads_ok: ops
            .iter()
            .filter(|o| o.kind == LKind::Read && o.outcome.is_ok())
            .count(),
        puts_ok: ops
            .iter()
            .filter(|o| matches!(o.kind, LKind::Put { .. }) && o.outcome.is_ok())
            .count(),
        puts_after_revoke_refused: ops
            .iter()
            .filter(|o| matches!(o.kind, LKind::Put { .. }) && is_lease_not_found(&o.outcome))
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: i64 = 0x1_0000_0001;

    fn op(kind: LKind, t0: u64, t1: u64, outcome: Out<LRet>) -> LOp {
        LOp {
            id: 0,
            process: 0,
            lease: L,
            kind,
            invoke_ns: t0 * 1_000_000,
            complete_ns: t1 * 1_000_000,
            outcome,
        }
    }
    fn key(i: usize) -> String {
        format!("{}{i}", prefix_of(L))
    }
    fn put_op(i: usize, t0: u64, t1: u64) -> LOp {
        op(
            LKind::Put {
                key: key(i),
                value: value_of(L, i),
            },
            t0,
            t1,
            Out::Ok(LRet::Put { rev: 10 + i as i64 }),
        )
    }
    fn read(t0: u64, t1: u64, keys: &[usize]) -> LOp {
        op(
            LKind::Read,
            t0,
            t1,
            Out::Ok(LRet::Read(
                keys.iter().map(|&i| (key(i), value_of(L, i))).collect(),
                1,
            )),
        )
    }
    fn ka(t0: u64, t1: u64) -> LOp {
        op(
            LKind::KeepAlive,
            t0,
            t1,
            Out::Ok(LRet::KeptAlive { ttl: 2 }),
        )
    }
    /// Grant (ttl 2 s) at 0, both keys put by 30 ms.
    fn base() -> Vec<LOp> {
        vec![
            op(
                LKind::Grant { ttl: 2 },
                0,
                10,
                Out::Ok(LRet::Granted { ttl: 2, term: 1 }),
            ),
            put_op(0, 10, 20),
            put_op(1, 20, 30),
            read(40, 50, &[0, 1]),
        ]
    }
    fn numbered(mut v: Vec<LOp>) -> Vec<LOp> {
        for (i, o) in v.iter_mut().enumerate() {
            o.id = i;
        }
        v
    }

    #[test]
    fn good_histories_pass() {
        // Kept alive, read, revoked, gone, put refused.
        let mut h = base();
        h.push(ka(1000, 1010));
        h.push(read(2500, 2510, &[0, 1]));
        h.push(op(LKind::Revoke, 2600, 2610, Out::Ok(LRet::Revoked)));
        h.push(read(2620, 2630, &[]));
        h.push(op(
            LKind::Put {
                key: key(2),
                value: value_of(L, 2),
            },
            2640,
            2650,
            Out::Fail("NotFound: etcdserver: requested lease not found".into()),
        ));
        assert_eq!(check(&numbered(h), &[]), Vec::<String>::new());
        // Lapsed: gone after the TTL is fine.
        let mut h = base();
        h.push(read(2100, 2110, &[]));
        assert_eq!(check(&numbered(h), &[]), Vec::<String>::new());
    }

    #[test]
    fn key_surviving_its_revoked_lease_is_caught() {
        let mut h = base();
        h.push(op(LKind::Revoke, 100, 110, Out::Ok(LRet::Revoked)));
        h.push(read(120, 130, &[0, 1]));
        let bad = check(&numbered(h), &[]);
        assert!(
            bad.iter()
                .any(|b| b.contains("outlived its lease's revoke")),
            "{bad:?}"
        );
        // A put under the revoked lease must not succeed either.
        let mut h = base();
        h.push(op(LKind::Revoke, 100, 110, Out::Ok(LRet::Revoked)));
        h.push(put_op(2, 120, 130));
        let bad = check(&numbered(h), &[]);
        assert!(
            bad.iter().any(|b| b.contains("put under a revoked lease")),
            "{bad:?}"
        );
    }

    #[test]
    fn key_vanishing_while_kept_alive_is_caught() {
        // Renewed at 1.0 s (TTL 2): the key must be there until 3.0 s.
        let mut h = base();
        h.push(ka(1000, 1010));
        h.push(read(2500, 2510, &[]));
        let bad = check(&numbered(h.clone()), &[]);
        assert!(
            bad.iter()
                .any(|b| b.contains("vanished while its lease was alive")),
            "{bad:?}"
        );
        // The same keepalive during a fault is not trusted: no verdict.
        assert_eq!(
            check(
                &numbered(h),
                &[(900, 950)].map(|(a, b)| (a * 1_000_000, b * 1_000_000))
            ),
            Vec::<String>::new()
        );
        // Vanishing within the grant's TTL is caught too.
        let mut h = base();
        h.push(read(1000, 1010, &[]));
        let bad = check(&numbered(h), &[]);
        assert!(bad.iter().any(|b| b.contains("vanished")), "{bad:?}");
    }

    #[test]
    fn key_outliving_its_expiry_within_a_term_is_caught() {
        // Granted (TTL 2) at 10 ms, first read in term 1 done at 50 ms:
        // deadline max(10, 50 + 500) + 2000 + 3000 slack = 5.55 s.
        let mut h = base();
        h.push(read(5600, 5610, &[0, 1]));
        let bad = check(&numbered(h), &[]);
        assert!(
            bad.iter()
                .any(|b| b.contains("outlived its lease's expiry")),
            "{bad:?}"
        );
        // Not before the deadline, and not across an election (another term).
        let mut h = base();
        h.push(read(5500, 5510, &[0, 1]));
        assert_eq!(check(&numbered(h), &[]), Vec::<String>::new());
        let mut h = base();
        let mut r = read(5600, 5610, &[0, 1]);
        r.outcome = Out::Ok(LRet::Read(
            vec![(key(0), value_of(L, 0)), (key(1), value_of(L, 1))],
            2,
        ));
        h.push(r);
        assert_eq!(check(&numbered(h), &[]), Vec::<String>::new());
        // A fault after the natural deadline (2.55 s) may delay the revoke.
        let mut h = base();
        h.push(read(5600, 5610, &[0, 1]));
        let f = [(3_000_000_000u64, 3_500_000_000u64)];
        assert_eq!(check(&numbered(h), &f), Vec::<String>::new());
        // An unanswered keepalive may have renewed it: no verdict.
        let mut h = base();
        h.push(op(
            LKind::KeepAlive,
            1000,
            2500,
            Out::Info("timeout".into()),
        ));
        h.push(read(5600, 5610, &[0, 1]));
        assert_eq!(check(&numbered(h), &[]), Vec::<String>::new());
        // The lateness measure: granted (sent) at 0 with TTL 2, gone at 2.25 s.
        let mut h = base();
        h.push(read(2200, 2250, &[]));
        let late = expiry_lateness(&numbered(h));
        assert_eq!(late.len(), 1);
        assert!((late[0] - 0.25).abs() < 1e-6, "{late:?}");
    }

    #[test]
    fn half_deleted_lease_and_phantom_are_caught() {
        let mut h = base();
        h.push(read(60, 70, &[1]));
        let bad = check(&numbered(h), &[]);
        assert!(
            bad.iter().any(|b| b.contains("deleted separately")),
            "{bad:?}"
        );
        let mut h = base();
        h.push(op(
            LKind::Read,
            60,
            70,
            Out::Ok(LRet::Read(vec![(key(0), "other".into())], 1)),
        ));
        let bad = check(&numbered(h), &[]);
        assert!(bad.iter().any(|b| b.contains("phantom")), "{bad:?}");
    }

    #[test]
    fn expiry_deadline_and_final_check() {
        let mut h = base();
        h.push(ka(1000, 1010));
        let h = numbered(h);
        // Last renewal answered at 1.01 s, TTL 2; stable since 5 s; ET 0.5 s.
        let d = expiry_deadline_ns(&h, 5_000_000_000, Duration::from_millis(500)).unwrap();
        assert_eq!(
            d,
            5_000_000_000 + 500_000_000 + 2_000_000_000 + 2_000_000_000
        );
        let bad = check_final(&[(key(0), value_of(L, 0))], &[], 9.5);
        assert!(bad[0].contains("outlived its lease"), "{bad:?}");
        let ok = Out::Ok(LRet::Put { rev: 3 });
        let bad = check_final(&[], &[(L, ok)], 9.5);
        assert!(bad[0].contains("put under expired lease"), "{bad:?}");
        let nf = Out::Fail("NotFound: etcdserver: requested lease not found".into());
        assert!(check_final(&[], &[(L, nf)], 9.5).is_empty());
    }
}

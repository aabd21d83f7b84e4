//! The append workload and its checker: lists that only ever grow.
//!
//! Each list is one key, `jepsen/a/<slot>.<generation>`; its value is the
//! list's elements joined by `,`. Every element is unique in the whole run
//! (`<process>.<n>`). A client appends `v` by read-modify-CAS in one Txn:
//!
//! ```text
//! if mod_revision(k) == R then put(k, L + "," + v) else get(k)
//! ```
//!
//! where `(L, R)` is the list and mod_revision the client last saw (absent:
//! `("", 0)`). A failed compare returns the current list; the client
//! retries with the same `v` (up to 5 times), each attempt recorded. An
//! attempt whose outcome is unknown (timeout, unavailable) ends the append:
//! `v` is never sent again, so a value can be applied at most once unless
//! the server applies one Txn twice or a failed compare writes. Reads get
//! the whole list. A list is retired (the slot moves to the next generation)
//! once a client sees 100 elements, so values stay small.
//!
//! ## Checked (per list; the final list is read after the run, healed)
//!
//! - **no lost append**: every acknowledged append is in the final list;
//! - **no duplicate**: no element appears twice in any list read;
//! - **no phantom or failed append**: every element read was sent by an
//!   append attempt that did not certainly fail (acknowledged, or of
//!   unknown outcome), and that attempt was invoked before the read returned;
//! - **no reorder**: every list read (reads and the lists failed compares
//!   returned) is a prefix of the final list, and so is the list each
//!   acknowledged or visible append wrote; acknowledged appends sit in the
//!   final list in the order of their revisions, and in real-time order (an
//!   append acknowledged before another was invoked comes first);
//! - **no stale read**: a read contains every append acknowledged before
//!   the read was invoked, and is no shorter than any read that completed
//!   before it was invoked (prefixes grow in real time).
//!
//! Indeterminate appends may or may not be in the lists, but at most once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::history::{History, Out, Recorded};
use super::workload::{classify, connect, OP_TIMEOUT};
use super::Rng;

/// A list with this many elements is retired.
pub const MAX_LEN: usize = 100;
const SLOTS: u64 = 4;
const ATTEMPTS: usize = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AKind {
    Read,
    /// One Txn attempt to append `value`; `wrote` is the list the put
    /// would store (the list it compared against, plus `value`).
    Append {
        value: String,
        wrote: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ARet {
    /// The whole list (empty: absent).
    Read(Vec<String>),
    /// The compare held; the put's revision.
    Appended { rev: i64 },
    /// The compare failed; the else-branch read the list.
    CompareFailed(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct AOp {
    pub id: usize,
    pub process: usize,
    pub key: String,
    pub kind: AKind,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub outcome: Out<ARet>,
}

impl Recorded for AOp {
    fn set_id(&mut self, id: usize) {
        self.id = id;
    }
}

fn show(l: &[String]) -> String {
    if l.len() <= 6 {
        format!("[{}]", l.join(","))
    } else {
        format!(
            "[{},{},{} ... {},{},{}] ({} elements)",
            l[0],
            l[1],
            l[2],
            l[l.len() - 3],
            l[l.len() - 2],
            l[l.len() - 1],
            l.len()
        )
    }
}

impl AOp {
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            AKind::Read => "read".to_string(),
            AKind::Append { value, wrote } => {
                format!("append {value} (would write {})", show(wrote))
            }
        };
        let res = match &self.outcome {
            Out::Ok(ARet::Read(l)) => format!("ok {}", show(l)),
            Out::Ok(ARet::Appended { rev }) => format!("ok rev={rev}"),
            Out::Ok(ARet::CompareFailed(l)) => {
                format!("compare failed, list is {}", show(l))
            }
            Out::Fail(e) => format!("fail ({e})"),
            Out::Info(e) => format!("info ({e})"),
        };
        format!(
            "#{} p{} {} {what} -> {res} [{:.3}s..{:.3}s]",
            self.id,
            self.process,
            self.key,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9
        )
    }

    /// The list this op read, if it read one.
    pub fn read_list(&self) -> Option<&[String]> {
        match &self.outcome {
            Out::Ok(ARet::Read(l)) | Out::Ok(ARet::CompareFailed(l)) => Some(l),
            _ => None,
        }
    }

    fn acked(&self) -> bool {
        matches!(self.outcome, Out::Ok(ARet::Appended { .. }))
    }
}

pub fn parse(v: &[u8]) -> Vec<String> {
    let s = String::from_utf8_lossy(v);
    if s.is_empty() {
        vec![]
    } else {
        s.split(',').map(String::from).collect()
    }
}

/// What the client last saw of a list: elements and mod_revision.
#[derive(Clone)]
struct Seen {
    list: Vec<String>,
    mod_rev: i64,
}

fn key_of(slot: u64, gen: u64) -> String {
    format!("jepsen/a/{slot}.{gen}")
}

fn seen_of(kv: Option<&etcd_client::KeyValue>) -> Seen {
    match kv {
        Some(kv) => Seen {
            list: parse(kv.value()),
            mod_rev: kv.mod_revision(),
        },
        None => Seen {
            list: vec![],
            mod_rev: 0,
        },
    }
}

pub async fn run_client(
    process: usize,
    endpoint: String,
    until: Instant,
    seed: u64,
    hist: Arc<History<AOp>>,
) {
    let mut rng = Rng::new(seed ^ (process as u64 + 101).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut client: Option<Client> = None;
    let mut gens = [0u64; SLOTS as usize];
    let mut seen: Vec<Option<Seen>> = vec![None; SLOTS as usize];
    let mut n = 0u64;
    for _ in 0..1_000_000 {
        if Instant::now() >= until {
            return;
        }
        let Some(c) = client.as_mut() else {
            client = connect(&endpoint).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let slot = rng.below(SLOTS) as usize;
        let key = key_of(slot as u64, gens[slot]);
        let mut errored = false;
        if rng.below(10) < 3 || seen[slot].is_none() {
            let invoke_ns = hist.now_ns();
            let r = tokio::time::timeout(OP_TIMEOUT, c.get(key.as_str(), None)).await;
            let complete_ns = hist.now_ns();
            let outcome = match r {
                Ok(Ok(g)) => {
                    let s = seen_of(g.kvs().first());
                    let l = s.list.clone();
                    seen[slot] = Some(s);
                    Out::Ok(ARet::Read(l))
                }
                // A read has no effect: any error is a failure.
                Ok(Err(e)) => Out::Fail(e.to_string()),
                Err(_) => Out::Fail("client timeout".into()),
            };
            errored = !outcome.is_ok();
            hist.record(AOp {
                id: 0,
                process,
                key: key.clone(),
                kind: AKind::Read,
                invoke_ns,
                complete_ns,
                outcome,
            });
        } else {
            n += 1;
            let value = format!("{process}.{n}");
            for _attempt in 0..ATTEMPTS {
                let s = seen[slot].clone().expect("seen before appending");
                let mut wrote = s.list.clone();
                wrote.push(value.clone());
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        s.mod_rev,
                    )])
                    .and_then([TxnOp::put(key.as_str(), wrote.join(","), None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let invoke_ns = hist.now_ns();
                let r = tokio::time::timeout(OP_TIMEOUT, c.txn(txn)).await;
                let complete_ns = hist.now_ns();
                let outcome = match r {
                    Ok(Ok(t)) if t.succeeded() => {
                        let rev = t.header().map(|h| h.revision()).unwrap_or(-1);
                        seen[slot] = Some(Seen {
                            list: wrote.clone(),
                            mod_rev: rev,
                        });
                        Out::Ok(ARet::Appended { rev })
                    }
                    Ok(Ok(t)) => {
                        // The else-branch read: the list to try again on.
                        let cur = t
                            .op_responses()
                            .into_iter()
                            .find_map(|o| match o {
                                TxnOpResponse::Get(g) => Some(seen_of(g.kvs().first())),
                                _ => None,
                            })
                            .unwrap_or_else(|| seen_of(None));
                        let l = cur.list.clone();
                        seen[slot] = Some(cur);
                        Out::Ok(ARet::CompareFailed(l))
                    }
                    Ok(Err(e)) => classify(&e),
                    Err(_) => Out::Info("client timeout".into()),
                };
                let again = matches!(outcome, Out::Ok(ARet::CompareFailed(_)));
                errored = !outcome.is_ok();
                hist.record(AOp {
                    id: 0,
                    process,
                    key: key.clone(),
                    kind: AKind::Append {
                        value: value.clone(),
                        wrote,
                    },
                    invoke_ns,
                    complete_ns,
                    outcome,
                });
                // An indeterminate attempt may still apply: never resend
                // its value. A certain failure may be retried.
                if !again {
                    break;
                }
            }
        }
        if seen[slot].as_ref().is_some_and(|s| s.list.len() >= MAX_LEN) {
            gens[slot] += 1;
            seen[slot] = None;
        }
        if errored {
            tokio::time::sleep(Duration::from_millis(50 + rng.below(100))).await;
            if rng.below(4) == 0 {
                client = None;
            }
        }
    }
}

/// Runs the checks of the module docs on one list's ops; `final_list` is
/// the list read after the run. Returns the violations.
pub fn check_list(key: &str, ops: &[AOp], final_list: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    let pos: HashMap<&str, usize> = {
        let mut m = HashMap::new();
        for (i, e) in final_list.iter().enumerate() {
            if m.insert(e.as_str(), i).is_some() {
                bad.push(format!(
                    "{key}: duplicate append: {e} appears twice in the final list {}",
                    show(final_list)
                ));
            }
        }
        m
    };
    // Per value: the attempt that may have written it (acknowledged or
    // indeterminate; the client sends a value again only after a certain
    // failure), and whether it was acknowledged.
    let mut writer: HashMap<&str, &AOp> = HashMap::new();
    let mut failed_only: HashSet<&str> = HashSet::new();
    for op in ops {
        if let AKind::Append { value, .. } = &op.kind {
            match &op.outcome {
                Out::Ok(ARet::Appended { .. }) | Out::Info(_) => {
                    if let Some(prev) = writer.insert(value, op) {
                        bad.push(format!(
                            "{key}: harness: two live attempts to append {value}: {} and {}",
                            prev.describe(),
                            op.describe()
                        ));
                    }
                }
                _ => {
                    failed_only.insert(value);
                }
            }
        }
    }
    // Lost appends.
    for (v, op) in &writer {
        if op.acked() && !pos.contains_key(v) {
            bad.push(format!(
                "{key}: lost append: {} acknowledged, but {v} is not in the final list {}",
                op.describe(),
                show(final_list)
            ));
        }
    }
    // Every list anyone saw or wrote must be a prefix of the final list.
    let is_prefix = |l: &[String]| l.len() <= final_list.len() && l == &final_list[..l.len()];
    let mut lists: Vec<(&AOp, &[String])> = Vec::new();
    for op in ops {
        if let Some(l) = op.read_list() {
            lists.push((op, l));
        }
        if let AKind::Append { value, wrote } = &op.kind {
            let visible = pos.contains_key(value.as_str())
                && writer.get(value.as_str()).is_some_and(|w| w.id == op.id);
            if (op.acked() || visible) && !is_prefix(wrote) {
                bad.push(format!(
                    "{key}: reordered append: {} wrote {}, not a prefix of the final list {}",
                    op.describe(),
                    show(wrote),
                    show(final_list)
                ));
            }
        }
    }
    for (op, l) in &lists {
        let mut dup = HashSet::new();
        if let Some(e) = l.iter().find(|e| !dup.insert(e.as_str())) {
            bad.push(format!(
                "{key}: duplicate append: {e} twice in {}",
                op.describe()
            ));
            continue;
        }
        if !is_prefix(l) {
            let i = l
                .iter()
                .zip(final_list)
                .position(|(a, b)| a != b)
                .unwrap_or(final_list.len());
            bad.push(format!(
                "{key}: read is not a prefix of the final list (reordered, lost or dirty): {}\n      element #{i}: read {:?}, final {:?}; final list {}",
                op.describe(),
                l.get(i),
                final_list.get(i),
                show(final_list)
            ));
        }
        for e in l.iter() {
            match writer.get(e.as_str()) {
                Some(w) if w.invoke_ns < op.complete_ns => {}
                Some(w) => bad.push(format!(
                    "{key}: read from the future: {} saw {e}, appended by {} invoked later",
                    op.describe(),
                    w.describe()
                )),
                None if failed_only.contains(e.as_str()) => bad.push(format!(
                    "{key}: failed append visible: {} saw {e}, whose every attempt failed",
                    op.describe()
                )),
                None => bad.push(format!(
                    "{key}: phantom element: {} saw {e}, which no client appended",
                    op.describe()
                )),
            }
        }
    }
    for e in final_list {
        if !writer.contains_key(e.as_str()) {
            bad.push(format!(
                "{key}: {} element {e} in the final list {}",
                if failed_only.contains(e.as_str()) {
                    "failed append visible:"
                } else {
                    "phantom:"
                },
                show(final_list)
            ));
        }
    }
    // Acknowledged appends: revisions increase along the final list, and
    // real-time order is list order.
    let mut acked_pos: Vec<(usize, &AOp)> = writer
        .iter()
        .filter(|(_, op)| op.acked())
        .filter_map(|(v, op)| pos.get(v).map(|&p| (p, *op)))
        .collect();
    acked_pos.sort_by_key(|(p, _)| *p);
    let rev = |op: &AOp| match op.outcome {
        Out::Ok(ARet::Appended { rev }) => rev,
        _ => -1,
    };
    for w in acked_pos.windows(2) {
        if rev(w[1].1) <= rev(w[0].1) {
            bad.push(format!(
                "{key}: reordered appends: {} precedes {} in the final list but has a higher revision",
                w[0].1.describe(),
                w[1].1.describe()
            ));
        }
    }
    // Real time: for each op, the latest list position acknowledged before
    // it was invoked.
    let mut by_complete: Vec<(u64, usize, &AOp)> = acked_pos
        .iter()
        .map(|(p, op)| (op.complete_ns, *p, *op))
        .collect();
    by_complete.sort_by_key(|x| x.0);
    // prefix maximum of positions, with the op that holds it
    let mut pmax: Vec<(usize, &AOp)> = Vec::with_capacity(by_complete.len());
    for &(_, p, op) in &by_complete {
        match pmax.last() {
            Some(&(q, o)) if q >= p => pmax.push((q, o)),
            _ => pmax.push((p, op)),
        }
    }
    let latest_acked_before = |t: u64| -> Option<(usize, &AOp)> {
        let i = by_complete.partition_point(|x| x.0 < t);
        (i > 0).then(|| pmax[i - 1])
    };
    for (p, op) in &acked_pos {
        if let Some((q, before)) = latest_acked_before(op.invoke_ns) {
            if q > *p {
                bad.push(format!(
                    "{key}: appends out of real-time order: {} was acknowledged before {} began, yet comes after it",
                    before.describe(),
                    op.describe()
                ));
            }
        }
    }
    // Reads: contain every append acknowledged before they began; no
    // shorter than a read completed before they began.
    let mut reads: Vec<(u64, usize, &AOp)> = lists
        .iter()
        .map(|(op, l)| (op.complete_ns, l.len(), *op))
        .collect();
    reads.sort_by_key(|x| x.0);
    let mut rmax: Vec<(usize, &AOp)> = Vec::with_capacity(reads.len());
    for &(_, n, op) in &reads {
        match rmax.last() {
            Some(&(m, o)) if m >= n => rmax.push((m, o)),
            _ => rmax.push((n, op)),
        }
    }
    for (op, l) in &lists {
        if let Some((q, before)) = latest_acked_before(op.invoke_ns) {
            if q >= l.len() {
                bad.push(format!(
                    "{key}: stale read: {} misses {}, acknowledged before the read began",
                    op.describe(),
                    before.describe()
                ));
                continue;
            }
        }
        let i = reads.partition_point(|x| x.0 < op.invoke_ns);
        if i > 0 && rmax[i - 1].0 > l.len() {
            bad.push(format!(
                "{key}: stale read: {} is shorter than {}, which completed before it began",
                op.describe(),
                rmax[i - 1].1.describe()
            ));
        }
    }
    bad
}

/// All lists: (key, ops, violations), in key order.
pub fn check_all(
    ops: &[AOp],
    finals: &BTreeMap<String, Vec<String>>,
) -> Vec<(String, usize, Vec<String>)> {
    let mut by_key: BTreeMap<&str, Vec<AOp>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    by_key
        .into_iter()
        .map(|(k, ops)| {
            let bad = match finals.get(k) {
                Some(f) => check_list(k, &ops, f),
                None => vec![format!("{k}: final list not read")],
            };
            (k.to_string(), ops.len(), bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Vec<String> {
        parse(s.as_bytes())
    }
    /// (process, kind, invoke ms, complete ms, ret); `None` ret = info.
    fn op(p: usize, kind: AKind, t0: u64, t1: u64, ret: Option<ARet>) -> AOp {
        AOp {
            id: 0,
            process: p,
            key: "k".into(),
            kind,
            invoke_ns: t0 * 1_000_000,
            complete_ns: t1 * 1_000_000,
            outcome: match ret {
                Some(r) => Out::Ok(r),
                None => Out::Info("timeout".into()),
            },
        }
    }
    fn app(v: &str, wrote: &str) -> AKind {
        AKind::Append {
            value: v.into(),
            wrote: l(wrote),
        }
    }
    fn ok(rev: i64) -> Option<ARet> {
        Some(ARet::Appended { rev })
    }
    fn rd(s: &str) -> Option<ARet> {
        Some(ARet::Read(l(s)))
    }
    fn check(ops: Vec<AOp>, fin: &str) -> Vec<String> {
        let ops: Vec<AOp> = ops
            .into_iter()
            .enumerate()
            .map(|(i, mut o)| {
                o.id = i;
                o
            })
            .collect();
        check_list("k", &ops, &l(fin))
    }
    fn good() -> Vec<AOp> {
        vec![
            op(0, app("a", "a"), 0, 10, ok(2)),
            op(1, app("b", "a,b"), 20, 30, ok(3)),
            op(2, AKind::Read, 15, 25, rd("a")),
            op(2, AKind::Read, 40, 50, rd("a,b")),
            // A failed compare: its list counts as a read.
            op(
                1,
                app("c", "a,x"),
                40,
                50,
                Some(ARet::CompareFailed(l("a,b"))),
            ),
            op(1, app("c", "a,b,c"), 60, 70, None),
        ]
    }

    #[test]
    fn good_history_passes_with_or_without_the_indeterminate_append() {
        assert_eq!(check(good(), "a,b,c"), Vec::<String>::new());
        assert_eq!(check(good(), "a,b"), Vec::<String>::new());
    }

    #[test]
    fn lost_append_is_caught() {
        let bad = check(good(), "a");
        assert!(bad.iter().any(|b| b.contains("lost append")), "{bad:?}");
    }

    #[test]
    fn duplicate_append_is_caught() {
        let bad = check(good(), "a,b,b");
        assert!(
            bad.iter().any(|b| b.contains("duplicate append")),
            "{bad:?}"
        );
        let mut h = good();
        h.push(op(3, AKind::Read, 80, 90, rd("a,a")));
        let bad = check(h, "a,b");
        assert!(
            bad.iter().any(|b| b.contains("duplicate append")),
            "{bad:?}"
        );
    }

    #[test]
    fn reordered_list_is_caught() {
        let bad = check(good(), "b,a");
        assert!(bad.iter().any(|b| b.contains("not a prefix")), "{bad:?}");
        let mut h = good();
        h.push(op(3, AKind::Read, 80, 90, rd("b")));
        let bad = check(h, "a,b");
        assert!(bad.iter().any(|b| b.contains("not a prefix")), "{bad:?}");
    }

    #[test]
    fn stale_read_is_caught() {
        // Misses b, acknowledged at 30, read began at 40.
        let mut h = good();
        h.push(op(3, AKind::Read, 40, 45, rd("a")));
        let bad = check(h, "a,b");
        assert!(
            bad.iter()
                .any(|b| b.contains("stale read") && b.contains("misses")),
            "{bad:?}"
        );
        // Shorter than a read that completed (at 50) before it began.
        // (c's append is indeterminate, so only the earlier read says c
        // must be visible.)
        let mut h = good();
        h.push(op(4, AKind::Read, 62, 64, rd("a,b,c")));
        h.push(op(5, AKind::Read, 66, 68, rd("a,b")));
        let bad = check(h, "a,b,c");
        assert!(
            bad.iter()
                .any(|b| b.contains("stale read") && b.contains("shorter")),
            "{bad:?}"
        );
    }

    #[test]
    fn phantom_failed_and_future_values_are_caught() {
        let bad = check(good(), "a,b,zz");
        assert!(bad.iter().any(|b| b.contains("phantom")), "{bad:?}");
        let mut h = good();
        h.push(op(
            3,
            app("f", "a,b,f"),
            80,
            90,
            Some(ARet::CompareFailed(l("a,b"))),
        ));
        let bad = check(h, "a,b,f");
        assert!(
            bad.iter().any(|b| b.contains("failed append visible")),
            "{bad:?}"
        );
        // A read that saw c before c's append was invoked (at 60).
        let mut h = good();
        h.push(op(3, AKind::Read, 52, 55, rd("a,b,c")));
        let bad = check(h, "a,b,c");
        assert!(
            bad.iter().any(|b| b.contains("read from the future")),
            "{bad:?}"
        );
    }

    #[test]
    fn real_time_order_of_appends_is_checked() {
        // a acknowledged before b was invoked, but b sits first.
        let h = vec![
            op(0, app("a", "b,a"), 0, 10, ok(3)),
            op(1, app("b", "b"), 20, 30, ok(2)),
        ];
        let bad = check(h, "b,a");
        assert!(bad.iter().any(|b| b.contains("real-time order")), "{bad:?}");
    }
}

//! Checkers over a recorded history. All pure functions of their inputs, so
//! they are unit-tested on hand-written good and bad histories (below).
//!
//! ## Linearizability of registers (per key)
//!
//! A Wing–Gong–Lowe search, as in Porcupine: walk the history's call and
//! return events in time order, try to linearize some pending call (apply it
//! to the register model), backtrack when a return is reached whose operation
//! could not be linearized before it. A cache of (set of linearized ops,
//! register value) prunes revisits. Keys are independent registers, so each
//! key is checked on its own (P-compositionality).
//!
//! Indeterminate operations never return (their return event is at +inf) and
//! have two possible effects: took effect, or did not. An indeterminate write
//! whose value nobody ever observed is dropped before the search — choosing
//! "did not happen" is always possible for it and changes nothing else.
//! Every written value is unique, so a read pins the write it saw.
//!
//! Example (a stale read, not linearizable):
//! ```text
//! p0 |--write 1--|
//! p1               |--read -> 0--|
//! ```
//!
//! ## Lost acknowledged writes
//!
//! Every acknowledged write of every workload (a register Put or CAS whose
//! compare held, an append whose compare held, a Put under a lease) carries
//! the revision it was committed at. After the run the key is read at that
//! revision: it must hold the written value with that mod_revision. No two
//! acknowledged writes may share a revision.
//!
//! ## Convergence
//!
//! After healing, every member's serializable read of the whole keyspace
//! (key, value, create/mod revision, version) must be identical, and so must
//! every member's HashKV at the same revision (etcd's hash of the whole MVCC
//! history up to it, deletes and overwritten versions included).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::history::{Op, OpKind, Outcome, Ret};

/// The register value: 0 = absent, else an interned value.
type State = u32;

#[derive(Clone, Debug, PartialEq, Eq)]
enum F {
    Read(State),
    /// definite (acknowledged) or not
    Write(State, bool),
    CasOk(State, State),
    /// observed value, expected value
    CasFailed(State, State),
    CasInfo(State, State),
}

struct COp {
    /// index into the caller's op slice
    src: usize,
    call: u64,
    ret: u64,
    f: F,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Violation(String),
    /// The search hit its step bound before deciding.
    Unknown(String),
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Ok)
    }
}

fn outcomes(f: &F, s: State) -> Vec<State> {
    match *f {
        F::Read(v) => {
            if s == v {
                vec![s]
            } else {
                vec![]
            }
        }
        F::Write(v, true) => vec![v],
        F::Write(v, false) => vec![v, s],
        F::CasOk(e, n) => {
            if s == e {
                vec![n]
            } else {
                vec![]
            }
        }
        F::CasFailed(obs, e) => {
            if s == obs && obs != e {
                vec![s]
            } else {
                vec![]
            }
        }
        F::CasInfo(e, n) => {
            if s == e {
                vec![n, s]
            } else {
                vec![s]
            }
        }
    }
}

/// Checks one key's operations (all ops must be on the same key); `init` is
/// the register's value before the history (`None`: absent).
pub fn check_register(ops: &[Op], init: Option<&str>, max_steps: u64) -> Verdict {
    let mut ids: HashMap<String, State> = HashMap::new();
    let mut intern = |v: Option<&str>| -> State {
        match v {
            None => 0,
            Some(v) => {
                let n = ids.len() as State + 1;
                *ids.entry(v.to_string()).or_insert(n)
            }
        }
    };
    let init_s = intern(init);
    // Values somebody observed: only indeterminate writes of these matter.
    let mut observed: HashSet<State> = HashSet::new();
    let mut cops = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let (f, ret) = match (&op.kind, &op.outcome) {
            (OpKind::Read, Outcome::Ok(Ret::Read(v))) => {
                let s = intern(v.as_deref());
                observed.insert(s);
                (F::Read(s), op.complete_ns)
            }
            (OpKind::Read, _) => continue,
            (OpKind::Write(v), Outcome::Ok(_)) => (F::Write(intern(Some(v)), true), op.complete_ns),
            (OpKind::Write(_), Outcome::Fail(_)) => continue,
            (OpKind::Write(v), Outcome::Info(_)) => (F::Write(intern(Some(v)), false), u64::MAX),
            (
                OpKind::Cas { expected, new },
                Outcome::Ok(Ret::Cas {
                    succeeded,
                    observed: obs,
                    ..
                }),
            ) => {
                let e = intern(Some(expected));
                if *succeeded {
                    observed.insert(e);
                    (F::CasOk(e, intern(Some(new))), op.complete_ns)
                } else {
                    let o = intern(obs.as_deref());
                    observed.insert(o);
                    (F::CasFailed(o, e), op.complete_ns)
                }
            }
            (OpKind::Cas { .. }, Outcome::Fail(_)) => continue,
            (OpKind::Cas { expected, new }, Outcome::Info(_)) => (
                F::CasInfo(intern(Some(expected)), intern(Some(new))),
                u64::MAX,
            ),
            (k, o) => panic!("malformed op {k:?} -> {o:?}"),
        };
        cops.push(COp {
            src: i,
            call: op.invoke_ns,
            ret,
            f,
        });
    }
    // Drop indeterminate ops whose effect nobody could have seen.
    cops.retain(|c| match c.f {
        F::Write(v, false) => observed.contains(&v),
        F::CasInfo(_, n) => observed.contains(&n),
        _ => true,
    });
    let names: HashMap<State, String> = ids.iter().map(|(k, v)| (*v, k.clone())).collect();
    let name = |s: State| -> String {
        if s == 0 {
            "<absent>".into()
        } else {
            names[&s].clone()
        }
    };
    match wgl(&cops, init_s, max_steps) {
        Search::Linearizable => Verdict::Ok,
        Search::GaveUp(steps) => Verdict::Unknown(format!(
            "{} ops on {}: no decision after {steps} steps",
            cops.len(),
            ops.first().map(|o| o.key.as_str()).unwrap_or("?")
        )),
        Search::Stuck {
            blocked,
            state,
            last,
        } => {
            let b = &ops[cops[blocked].src];
            let mut msg = format!(
                "not linearizable: {}\n    cannot be linearized; in the deepest attempt the register held {}",
                b.describe(),
                name(state)
            );
            if let Some(l) = last {
                msg.push_str(&format!(", last set by {}", ops[cops[l].src].describe()));
            }
            // Ops concurrent with the blocked one, for context (bounded).
            let conc: Vec<String> = cops
                .iter()
                .filter(|c| {
                    c.src != cops[blocked].src && c.call < b.complete_ns && c.ret > b.invoke_ns
                })
                .take(8)
                .map(|c| format!("\n    concurrent: {}", ops[c.src].describe()))
                .collect();
            msg.push_str(&conc.concat());
            Verdict::Violation(msg)
        }
    }
}

enum Search {
    Linearizable,
    GaveUp(u64),
    /// `blocked`: the op whose return could not be passed in the deepest
    /// attempt; `state` the register then; `last` the last op linearized.
    Stuck {
        blocked: usize,
        state: State,
        last: Option<usize>,
    },
}

fn wgl(ops: &[COp], init: State, max_steps: u64) -> Search {
    // Events: (time, call-before-return, op). Calls sort before returns at
    // equal instants (the permissive reading of a tie).
    let mut ev: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        ev.push((o.call, 0, i));
        ev.push((o.ret, 1, i));
    }
    ev.sort();
    let n = ev.len();
    let (head, tail) = (n, n + 1);
    let mut next: Vec<usize> = (0..n + 2).map(|i| i + 1).collect();
    let mut prev: Vec<usize> = (0..n + 2).map(|i| i.wrapping_sub(1)).collect();
    next[head] = if n == 0 { tail } else { 0 };
    prev[tail] = if n == 0 { head } else { n - 1 };
    if n > 0 {
        prev[0] = head;
        next[n - 1] = tail;
    }
    let mut ret_of = vec![0usize; ops.len()];
    for (i, e) in ev.iter().enumerate() {
        if e.1 == 1 {
            ret_of[e.2] = i;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize, r: usize| {
        next[prev[e]] = next[e];
        prev[next[e]] = prev[e];
        next[prev[r]] = next[r];
        prev[next[r]] = prev[r];
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize, r: usize| {
        next[prev[r]] = r;
        prev[next[r]] = r;
        next[prev[e]] = e;
        prev[next[e]] = e;
    };
    let words = ops.len().div_ceil(64).max(1);
    let mut lin = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State, usize)> = Vec::new();
    let mut state = init;
    let mut cur = next[head];
    let mut from_outcome = 0usize;
    let mut deepest: Option<(usize, usize, State, Option<usize>)> = None;
    for steps in 0..max_steps {
        if next[head] == tail {
            return Search::Linearizable;
        }
        if cur != tail && ev[cur].1 == 0 {
            let op = ev[cur].2;
            let outs = outcomes(&ops[op].f, state);
            let mut advanced = false;
            for (k, &s2) in outs.iter().enumerate().skip(from_outcome) {
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), s2)) {
                    stack.push((cur, state, k));
                    state = s2;
                    lift(&mut next, &mut prev, cur, ret_of[op]);
                    cur = next[head];
                    advanced = true;
                    break;
                }
                lin[op / 64] &= !(1 << (op % 64));
            }
            from_outcome = 0;
            if !advanced {
                cur = next[cur];
            }
        } else {
            // A return whose op is not linearized: undo the last choice.
            let blocked = if cur == tail { usize::MAX } else { ev[cur].2 };
            if blocked != usize::MAX && deepest.is_none_or(|d| stack.len() > d.0) {
                deepest = Some((stack.len(), blocked, state, stack.last().map(|t| ev[t.0].2)));
            }
            let Some((e, old, k)) = stack.pop() else {
                let (_, blocked, state, last) = deepest.expect("a blocked op");
                return Search::Stuck {
                    blocked,
                    state,
                    last,
                };
            };
            let op = ev[e].2;
            lin[op / 64] &= !(1 << (op % 64));
            state = old;
            unlift(&mut next, &mut prev, e, ret_of[op]);
            cur = e;
            from_outcome = k + 1;
        }
        let _ = steps;
    }
    Search::GaveUp(max_steps)
}

/// Linearizability of every key; `init` is each key's value before the
/// history. Returns one verdict per key, in key order.
pub fn check_registers(
    ops: &[Op],
    init: &BTreeMap<String, Option<String>>,
    max_steps: u64,
) -> Vec<(String, usize, Verdict)> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    by_key
        .into_iter()
        .map(|(k, ops)| {
            let init = init.get(k).cloned().flatten();
            let v = check_register(&ops, init.as_deref(), max_steps);
            (k.to_string(), ops.len(), v)
        })
        .collect()
}

/// An acknowledged write: the key, value and the revision the server said.
#[derive(Clone, Debug)]
pub struct AckedWrite {
    pub key: String,
    pub value: String,
    pub rev: i64,
    pub op: usize,
}

pub fn acked_writes(ops: &[Op]) -> Vec<AckedWrite> {
    let mut out = Vec::new();
    for op in ops {
        match (&op.kind, &op.outcome) {
            (OpKind::Write(v), Outcome::Ok(Ret::Write { rev })) => out.push(AckedWrite {
                key: op.key.clone(),
                value: v.clone(),
                rev: *rev,
                op: op.id,
            }),
            (
                OpKind::Cas { new, .. },
                Outcome::Ok(Ret::Cas {
                    succeeded: true,
                    rev,
                    ..
                }),
            ) => out.push(AckedWrite {
                key: op.key.clone(),
                value: new.clone(),
                rev: *rev,
                op: op.id,
            }),
            _ => {}
        }
    }
    out
}

/// `found[i]`: what reading `writes[i].key` at `writes[i].rev` returned,
/// (value, mod_revision), `None` if absent. Returns the violations.
pub fn check_lost_writes(writes: &[AckedWrite], found: &[Option<(String, i64)>]) -> Vec<String> {
    let mut bad = Vec::new();
    let mut by_rev: HashMap<i64, &AckedWrite> = HashMap::new();
    for (w, f) in writes.iter().zip(found) {
        if let Some(other) = by_rev.insert(w.rev, w) {
            bad.push(format!(
                "two acknowledged writes at revision {}: op #{} ({}={}) and op #{} ({}={})",
                w.rev, other.op, other.key, other.value, w.op, w.key, w.value
            ));
        }
        match f {
            Some((v, mr)) if *v == w.value && *mr == w.rev => {}
            other => bad.push(format!(
                "lost write: op #{} put {}={} acknowledged at revision {}, but reading {} at revision {} gives {:?}",
                w.op, w.key, w.value, w.rev, w.key, w.rev, other
            )),
        }
    }
    bad
}

/// One member's view of the keyspace: (key, value, create_rev, mod_rev, version).
pub type Snapshot = Vec<(String, String, i64, i64, i64)>;

/// Every member's snapshot must be identical; returns the differences.
pub fn check_convergence(snaps: &[(String, Snapshot)]) -> Vec<String> {
    let mut bad = Vec::new();
    let Some((n0, s0)) = snaps.first() else {
        return vec!["no member answered".into()];
    };
    for (n, s) in &snaps[1..] {
        if s != s0 {
            let a: HashSet<_> = s0.iter().collect();
            let b: HashSet<_> = s.iter().collect();
            let only0: Vec<_> = a.difference(&b).take(3).collect();
            let only1: Vec<_> = b.difference(&a).take(3).collect();
            bad.push(format!(
                "{n0} and {n} differ: only on {n0}: {only0:?}; only on {n}: {only1:?}"
            ));
        }
    }
    bad
}

/// Every member's HashKV at revision `rev` must be equal.
pub fn check_hashes(rev: i64, hashes: &[(String, u32)]) -> Vec<String> {
    match hashes.split_first() {
        None => vec!["no member answered HashKV".into()],
        Some(((n0, h0), rest)) => rest
            .iter()
            .filter(|(_, h)| h != h0)
            .map(|(n, h)| format!("HashKV at revision {rev}: {n0} has {h0}, {n} has {h}"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// op builder: (process, kind, invoke, complete, outcome), times in ms.
    fn op(p: usize, kind: OpKind, t0: u64, t1: u64, out: Outcome) -> Op {
        Op {
            id: 0,
            process: p,
            key: "k".into(),
            kind,
            invoke_ns: t0 * 1_000_000,
            complete_ns: t1 * 1_000_000,
            outcome: out,
        }
    }
    fn w(v: &str) -> OpKind {
        OpKind::Write(v.into())
    }
    fn cas(e: &str, n: &str) -> OpKind {
        OpKind::Cas {
            expected: e.into(),
            new: n.into(),
        }
    }
    fn okw(rev: i64) -> Outcome {
        Outcome::Ok(Ret::Write { rev })
    }
    fn okr(v: Option<&str>) -> Outcome {
        Outcome::Ok(Ret::Read(v.map(String::from)))
    }
    fn info() -> Outcome {
        Outcome::Info("timeout".into())
    }
    fn check(ops: &[Op]) -> Verdict {
        let mut ops = ops.to_vec();
        for (i, o) in ops.iter_mut().enumerate() {
            o.id = i;
        }
        check_register(&ops, Some("0"), 1_000_000)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, w("1"), 0, 10, okw(2)),
            op(1, OpKind::Read, 20, 30, okr(Some("1"))),
            op(
                0,
                cas("1", "2"),
                40,
                50,
                Outcome::Ok(Ret::Cas {
                    succeeded: true,
                    rev: 3,
                    observed: None,
                }),
            ),
            op(
                1,
                cas("1", "3"),
                60,
                70,
                Outcome::Ok(Ret::Cas {
                    succeeded: false,
                    rev: 3,
                    observed: Some("2".into()),
                }),
            ),
            op(1, OpKind::Read, 80, 90, okr(Some("2"))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        let h = [
            op(0, w("1"), 0, 100, okw(2)),
            op(1, OpKind::Read, 10, 20, okr(Some("1"))),
            op(2, OpKind::Read, 30, 40, okr(Some("1"))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // ... but once one read saw the new value, a later one may not see the old.
        let h = [
            op(0, w("1"), 0, 100, okw(2)),
            op(1, OpKind::Read, 10, 20, okr(Some("1"))),
            op(2, OpKind::Read, 30, 40, okr(Some("0"))),
        ];
        assert!(
            matches!(check(&h), Verdict::Violation(_)),
            "{:?}",
            check(&h)
        );
    }

    #[test]
    fn stale_read_is_a_violation() {
        let h = [
            op(0, w("1"), 0, 10, okw(2)),
            op(1, OpKind::Read, 20, 30, okr(Some("0"))),
        ];
        match check(&h) {
            Verdict::Violation(m) => assert!(m.contains("read -> ok 0"), "{m}"),
            v => panic!("stale read not caught: {v:?}"),
        }
    }

    #[test]
    fn lost_acknowledged_write_is_a_violation() {
        // write 1 acknowledged; every later read sees the initial value.
        let h = [
            op(0, w("1"), 0, 10, okw(2)),
            op(1, OpKind::Read, 20, 30, okr(Some("1"))),
            op(0, w("2"), 40, 50, okw(3)),
            op(1, OpKind::Read, 60, 70, okr(Some("1"))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
        // The revision check catches it without any read at all.
        let ws = acked_writes(
            &h.iter()
                .cloned()
                .enumerate()
                .map(|(i, mut o)| {
                    o.id = i;
                    o
                })
                .collect::<Vec<_>>(),
        );
        assert_eq!(ws.len(), 2);
        let bad = check_lost_writes(&ws, &[Some(("1".into(), 2)), None]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("lost write: op #2"), "{bad:?}");
        assert!(check_lost_writes(&ws, &[Some(("1".into(), 2)), Some(("2".into(), 3))]).is_empty());
        let dup = check_lost_writes(
            &ws[..1].iter().chain(&ws[..1]).cloned().collect::<Vec<_>>(),
            &[Some(("1".into(), 2)), Some(("1".into(), 2))],
        );
        assert!(
            dup[0].contains("two acknowledged writes at revision 2"),
            "{dup:?}"
        );
    }

    #[test]
    fn indeterminate_write_may_or_may_not_happen() {
        // Took effect, seen later:
        let h = [
            op(0, w("1"), 0, 10, info()),
            op(1, OpKind::Read, 200, 210, okr(Some("1"))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // Never took effect:
        let h = [
            op(0, w("1"), 0, 10, info()),
            op(1, OpKind::Read, 200, 210, okr(Some("0"))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        // Took effect late, after its client gave up — but not before it was invoked.
        let h = [
            op(1, OpKind::Read, 0, 5, okr(Some("1"))),
            op(0, w("1"), 10, 20, info()),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
        // Seen, then unseen: a flicker is a violation even if indeterminate.
        let h = [
            op(0, w("1"), 0, 10, info()),
            op(1, OpKind::Read, 20, 30, okr(Some("1"))),
            op(1, OpKind::Read, 40, 50, okr(Some("0"))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn cas_semantics() {
        // A CAS that succeeded against a value nobody could hold then.
        let h = [
            op(0, w("1"), 0, 10, okw(2)),
            op(
                1,
                cas("0", "5"),
                20,
                30,
                Outcome::Ok(Ret::Cas {
                    succeeded: true,
                    rev: 3,
                    observed: None,
                }),
            ),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
        // An indeterminate CAS whose new value is later read: fine iff its
        // compare could hold.
        let h = [
            op(0, cas("0", "5"), 0, 10, info()),
            op(1, OpKind::Read, 20, 30, okr(Some("5"))),
        ];
        assert_eq!(check(&h), Verdict::Ok);
        let h = [
            op(0, w("1"), 0, 10, okw(2)),
            op(0, cas("0", "5"), 20, 30, info()),
            op(1, OpKind::Read, 40, 50, okr(Some("5"))),
        ];
        assert!(matches!(check(&h), Verdict::Violation(_)));
    }

    #[test]
    fn many_concurrent_clients_good_history_passes_quickly() {
        // 8 processes writing unique values in overlapping windows, reads
        // returning the latest completed write: linearizable.
        let mut h = Vec::new();
        let mut last = "0".to_string();
        for i in 0..400u64 {
            let t = i * 10;
            if i % 3 == 0 {
                h.push(op(
                    (i % 8) as usize,
                    OpKind::Read,
                    t,
                    t + 25,
                    okr(Some(&last)),
                ));
            } else {
                let v = format!("v{i}");
                h.push(op((i % 8) as usize, w(&v), t, t + 5, okw(i as i64 + 2)));
                last = v;
            }
            if i % 7 == 0 {
                h.push(op(9, w(&format!("lost{i}")), t, t + 1, info()));
            }
        }
        assert_eq!(check(&h), Verdict::Ok);
    }

    #[test]
    fn hashes_must_agree() {
        let same = [
            ("m0".to_string(), 7),
            ("m1".to_string(), 7),
            ("m2".to_string(), 7),
        ];
        assert!(check_hashes(9, &same).is_empty());
        let differ = [
            ("m0".to_string(), 7),
            ("m1".to_string(), 7),
            ("m2".to_string(), 8),
        ];
        let bad = check_hashes(9, &differ);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("m2 has 8"), "{bad:?}");
        assert_eq!(check_hashes(9, &[]).len(), 1);
    }

    #[test]
    fn convergence_detects_divergence() {
        let a: Snapshot = vec![("k".into(), "1".into(), 2, 2, 1)];
        let b: Snapshot = vec![("k".into(), "1".into(), 2, 3, 2)];
        assert!(
            check_convergence(&[("m0".into(), a.clone()), ("m1".into(), a.clone())]).is_empty()
        );
        assert_eq!(
            check_convergence(&[("m0".into(), a), ("m1".into(), b)]).len(),
            1
        );
    }
}

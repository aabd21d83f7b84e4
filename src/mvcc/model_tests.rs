//! The store against a plain model: a full copy of the key space at every
//! revision. Random puts, deletes, txns, compactions, reads at random
//! revisions, restarts and snapshot installs; every response is compared.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::txn::tests::open;
use super::{ApplyError, Store};
use crate::proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

type State = BTreeMap<Vec<u8>, KeyValue>;

/// `states[r]` is the key space at revision r (index 0 unused).
struct Model {
    states: Vec<State>,
    compact: i64,
}

fn hdr(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        e => k >= key && k < e,
    }
}

impl Model {
    fn new() -> Self {
        Model {
            states: vec![State::new(), State::new()],
            compact: -1,
        }
    }
    fn cur(&self) -> i64 {
        self.states.len() as i64 - 1
    }
    fn range(&self, st: &State, cur: i64, r: &RangeRequest) -> Result<RangeResponse, String> {
        if r.revision > cur {
            return Err(ApplyError::FutureRev.to_string());
        }
        let at = if r.revision <= 0 { cur } else { r.revision };
        if at < self.compact {
            return Err(ApplyError::Compacted.to_string());
        }
        let st = if at == cur {
            st
        } else {
            &self.states[at as usize]
        };
        let mut kvs: Vec<KeyValue> = st
            .values()
            .filter(|kv| in_range(&kv.key, &r.key, &r.range_end))
            .cloned()
            .collect();
        let count = kvs.len() as i64;
        let mut more = false;
        if r.limit > 0 && kvs.len() as i64 > r.limit {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        Ok(RangeResponse {
            header: hdr(cur),
            kvs,
            more,
            count,
        })
    }
    fn put(st: &mut State, rev: i64, p: &PutRequest) -> PutResponse {
        let prev = st.get(&p.key).cloned();
        let kv = KeyValue {
            key: p.key.clone().into(),
            create_revision: prev.as_ref().map_or(rev, |kv| kv.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(0, |kv| kv.version) + 1,
            value: p.value.clone().into(),
            lease: 0,
        };
        st.insert(p.key.clone(), kv);
        PutResponse {
            header: hdr(rev),
            prev_kv: if p.prev_kv { prev } else { None },
        }
    }
    fn delete(st: &mut State, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let gone: Vec<KeyValue> = st
            .values()
            .filter(|kv| in_range(&kv.key, &d.key, &d.range_end))
            .cloned()
            .collect();
        for kv in &gone {
            st.remove(kv.key.as_ref());
        }
        DeleteRangeResponse {
            header: None,
            deleted: gone.len() as i64,
            prev_kvs: if d.prev_kv { gone } else { vec![] },
        }
    }
    fn compare(&self, c: &Compare) -> bool {
        let st = &self.states[self.cur() as usize];
        let kvs: Vec<&KeyValue> = st
            .values()
            .filter(|kv| in_range(&kv.key, &c.key, &c.range_end))
            .collect();
        let Some(TargetUnion::Version(v)) = c.target_union else {
            let Some(TargetUnion::Value(v)) = &c.target_union else {
                unreachable!()
            };
            return !kvs.is_empty() && kvs.iter().all(|kv| kv.value == *v);
        };
        let zero = KeyValue::default();
        let kvs = if kvs.is_empty() { vec![&zero] } else { kvs };
        kvs.iter().all(|kv| kv.version == v)
    }
    /// Flat txns of puts, deletes and ranges at revision 0.
    fn txn(&mut self, t: &TxnRequest) -> TxnResponse {
        let ok = t.compare.iter().all(|c| self.compare(c));
        let begin = self.cur();
        let mut st = self.states[begin as usize].clone();
        let mut changed = false;
        let mut responses = vec![];
        for op in if ok { &t.success } else { &t.failure } {
            let response = match &op.request {
                Some(Request::RequestPut(p)) => {
                    changed = true;
                    Response::ResponsePut(Self::put(&mut st, begin + 1, p))
                }
                Some(Request::RequestDeleteRange(d)) => {
                    let mut r = Self::delete(&mut st, d);
                    changed |= r.deleted > 0;
                    r.header = hdr(begin + changed as i64);
                    Response::ResponseDeleteRange(r)
                }
                Some(Request::RequestRange(r)) => {
                    Response::ResponseRange(self.range(&st, begin + changed as i64, r).unwrap())
                }
                _ => unreachable!(),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        if changed {
            self.states.push(st);
        }
        TxnResponse {
            header: hdr(self.cur()),
            succeeded: ok,
            responses,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8, bool),
    Delete(u8, u8, bool),
    Txn(u8, bool, u8, Vec<Op>, Vec<Op>),
    Range(u8, u8, u8, i64),
    Compact(u8),
    Reopen,
    SnapshotRoundTrip,
}

const KEYS: &[&str] = &["a", "b", "c", "d"];

fn key(i: u8) -> Vec<u8> {
    KEYS[i as usize % KEYS.len()].into()
}

/// Range end selector: single key, "\0", or a key above.
fn end(k: u8, e: u8) -> Vec<u8> {
    match e % 3 {
        0 => vec![],
        1 => vec![0],
        _ => key(k.saturating_add(1 + e % 2)),
    }
}

fn req_op(op: &Op) -> RequestOp {
    let request = match op {
        Op::Put(k, v, prev) => Request::RequestPut(PutRequest {
            key: key(*k),
            value: vec![b'0' + v % 4],
            prev_kv: *prev,
            ..Default::default()
        }),
        Op::Delete(k, e, prev) => Request::RequestDeleteRange(DeleteRangeRequest {
            key: key(*k),
            range_end: end(*k, *e),
            prev_kv: *prev,
        }),
        Op::Range(k, e, _, limit) => Request::RequestRange(RangeRequest {
            key: key(*k),
            range_end: end(*k, *e),
            limit: *limit,
            ..Default::default()
        }),
        _ => unreachable!(),
    };
    RequestOp {
        request: Some(request),
    }
}

fn inner_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(k, v, p)| Op::Put(k, v, p)),
        (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(k, e, p)| Op::Delete(k, e, p)),
        (any::<u8>(), any::<u8>(), 0..3i64).prop_map(|(k, e, l)| Op::Range(k, e, 0, l)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(k, v, p)| Op::Put(k, v, p)),
        3 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(k, e, p)| Op::Delete(k, e, p)),
        3 => (
            any::<u8>(),
            any::<bool>(),
            any::<u8>(),
            prop::collection::vec(inner_op(), 0..4),
            prop::collection::vec(inner_op(), 0..3)
        )
            .prop_map(|(k, by_value, v, s, f)| Op::Txn(k, by_value, v, s, f)),
        5 => (any::<u8>(), any::<u8>(), any::<u8>(), 0..3i64)
            .prop_map(|(k, e, r, l)| Op::Range(k, e, r, l)),
        1 => any::<u8>().prop_map(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::SnapshotRoundTrip),
    ]
}

/// Every read the model can answer: each key range at each revision.
fn all_reads(m: &Model) -> Vec<RangeRequest> {
    let mut out = vec![];
    for rev in 0..=m.cur() + 1 {
        for k in 0..KEYS.len() as u8 {
            for e in 0..3 {
                out.push(RangeRequest {
                    key: key(k),
                    range_end: end(k, e),
                    revision: rev,
                    ..Default::default()
                });
            }
        }
    }
    out
}

fn check_reads(m: &Model, s: &Store) {
    let st = &m.states[m.cur() as usize];
    for r in all_reads(m) {
        let got = s.range(&r).map_err(|e| e.to_string());
        assert_eq!(got, m.range(st, m.cur(), &r), "range {r:?}");
    }
}

fn run(ops: Vec<Op>) {
    let (dir, mut s) = open();
    let mut m = Model::new();
    for op in ops {
        match &op {
            Op::Put(..) | Op::Delete(..) => {
                let Some(req) = req_op(&op).request else {
                    unreachable!()
                };
                let mut a = s.begin_apply();
                let cur = m.cur();
                match req {
                    Request::RequestPut(p) => {
                        let got = a.put(&p).unwrap();
                        let mut st = m.states[cur as usize].clone();
                        let want = Model::put(&mut st, cur + 1, &p);
                        m.states.push(st);
                        assert_eq!(got, want);
                    }
                    Request::RequestDeleteRange(d) => {
                        let got = a.delete_range(&d).unwrap();
                        let mut st = m.states[cur as usize].clone();
                        let mut want = Model::delete(&mut st, &d);
                        if want.deleted > 0 {
                            m.states.push(st);
                        }
                        want.header = hdr(m.cur());
                        assert_eq!(got, want);
                    }
                    _ => unreachable!(),
                }
                a.commit().unwrap();
            }
            Op::Txn(k, by_value, v, success, failure) => {
                let compare = Compare {
                    key: key(*k),
                    target: if *by_value {
                        CompareTarget::Value
                    } else {
                        CompareTarget::Version
                    } as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(if *by_value {
                        TargetUnion::Value(vec![b'0' + v % 4])
                    } else {
                        TargetUnion::Version(*v as i64 % 3)
                    }),
                    range_end: end(*k, v / 4),
                };
                let t = TxnRequest {
                    compare: vec![compare],
                    success: success.iter().map(req_op).collect(),
                    failure: failure.iter().map(req_op).collect(),
                };
                let mut a = s.begin_apply();
                let got = a.txn(&t).unwrap();
                a.commit().unwrap();
                assert_eq!(got, m.txn(&t), "txn {t:?}");
            }
            Op::Range(k, e, r, limit) => {
                let req = RangeRequest {
                    key: key(*k),
                    range_end: end(*k, *e),
                    revision: *r as i64 % (m.cur() + 2),
                    limit: *limit,
                    ..Default::default()
                };
                let got = s.range(&req).map_err(|e| e.to_string());
                let st = &m.states[m.cur() as usize];
                assert_eq!(got, m.range(st, m.cur(), &req), "range {req:?}");
            }
            Op::Compact(r) => {
                let rev = *r as i64 % (m.cur() + 2);
                let mut a = s.begin_apply();
                let got = a
                    .compact(&CompactionRequest {
                        revision: rev,
                        physical: true,
                    })
                    .map_err(|e| e.to_string());
                a.commit().unwrap();
                let want = if rev <= m.compact {
                    Err(ApplyError::Compacted.to_string())
                } else if rev > m.cur() {
                    Err(ApplyError::FutureRev.to_string())
                } else {
                    m.compact = rev;
                    Ok(hdr(m.cur()))
                };
                assert_eq!(got.map(|r| r.header), want);
                // Reads are the same before and after physical removal.
                check_reads(&m, &s);
                futures::executor::block_on(s.wait_compacted(m.compact));
                check_reads(&m, &s);
            }
            Op::Reopen => {
                futures::executor::block_on(s.wait_compacted(m.compact));
                drop(s);
                s = Store::open(dir.path()).unwrap();
                assert_eq!(s.current_revision(), m.cur());
                assert_eq!(s.compact_revision(), m.compact);
            }
            Op::SnapshotRoundTrip => {
                let snap = s.snapshot().unwrap();
                let mut buf = vec![];
                snap.write_to(&mut buf).unwrap();
                drop(snap);
                let (_d2, fresh) = open();
                put(&fresh, "junk");
                fresh.install_snapshot(&mut buf.as_slice()).unwrap();
                assert_eq!(fresh.current_revision(), m.cur());
                assert_eq!(fresh.compact_revision(), m.compact);
                check_reads(&m, &fresh);
                futures::executor::block_on(fresh.wait_compacted(m.compact));
                check_reads(&m, &fresh);
            }
        }
    }
    check_reads(&m, &s);
}

fn put(s: &Store, k: &str) {
    super::txn::tests::put(s, k, "x");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

//! Request checks done before anything is proposed, with etcd's answers
//! (etcd's `v3rpc/key.go`: checkRangeRequest, checkPutRequest,
//! checkTxnRequest, checkIntervals). A request that fails here changes
//! nothing and never reaches the log.
//!
//! Checks that depend on the store (compacted revision, unknown lease, a
//! missing key under `ignore_value`) are made at apply time instead, where
//! every member decides them alike.

use std::collections::HashSet;

use crate::error::Error;
use crate::proto::etcdserverpb::{
    request_op::Request as Op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

pub fn check_range(r: &RangeRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if !(0..=2).contains(&r.sort_order) || !(0..=4).contains(&r.sort_target) {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` followed by `checkIntervals` on both branches.
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), Error> {
    check_txn_ops(r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_txn_ops: usize) -> Result<(), Error> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    // etcd passes the remaining budget down to nested txns.
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), Error> {
    match &op.request {
        Some(Op::RequestRange(r)) => check_range(r),
        Some(Op::RequestPut(r)) => check_put(r),
        Some(Op::RequestDeleteRange(r)) => check_delete(r),
        Some(Op::RequestTxn(r)) => check_txn_ops(r, max_txn_ops),
        // An empty RequestOp: etcd answers "key not found".
        None => Err(Error::KeyNotFound),
    }
}

/// A deleted interval `[start, end)`. As in etcd's interval tree, an empty
/// `end` is +infinity, and a single key `k` is the point `[k, k\0)`.
#[derive(Debug, Clone)]
struct Interval {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn of_delete(d: &DeleteRangeRequest) -> Interval {
        if d.range_end.is_empty() {
            let mut end = d.key.clone();
            end.push(0);
            Interval {
                start: d.key.clone(),
                end,
            }
        } else {
            Interval {
                start: d.key.clone(),
                end: d.range_end.clone(),
            }
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && (self.end.is_empty() || key < self.end.as_slice())
    }
}

/// etcd's `checkIntervals`: within one branch (and the branches nested in
/// it), no key may be put twice, nor both put and deleted. The two branches
/// of a nested txn exclude each other, so they may put the same key.
fn check_intervals(reqs: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), Error> {
    let mut dels: Vec<Interval> = reqs
        .iter()
        .filter_map(|r| match &r.request {
            Some(Op::RequestDeleteRange(d)) => Some(Interval::of_delete(d)),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Interval], k: &[u8]| dels.iter().any(|i| i.contains(k));

    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for r in reqs {
        let Some(Op::RequestTxn(t)) = &r.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for r in reqs {
        let Some(Op::RequestPut(p)) = &r.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }
    fn check(success: Vec<RequestOp>) -> Result<(), Error> {
        check_txn(
            &TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            },
            128,
        )
    }

    #[test]
    fn duplicate_puts_and_put_delete_overlaps_are_rejected() {
        assert_eq!(check(vec![put("a"), put("a")]), Err(Error::DuplicateKey));
        assert_eq!(
            check(vec![put("b"), del("a", "c")]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(
            check(vec![put("a"), del("a", "")]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(check(vec![put("c"), del("a", "c")]), Ok(()));
        assert_eq!(check(vec![put("a"), put("b")]), Ok(()));
        // Deleting twice is fine.
        assert_eq!(check(vec![del("a", ""), del("a", "")]), Ok(()));
    }

    #[test]
    fn nested_branches_exclude_each_other() {
        assert_eq!(check(vec![txn(vec![put("a")], vec![put("a")])]), Ok(()));
        assert_eq!(
            check(vec![put("a"), txn(vec![put("a")], vec![])]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(
            check(vec![del("a", "b"), txn(vec![], vec![put("a")])]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(
            check(vec![txn(vec![del("a", "")], vec![]), put("a")]),
            Err(Error::DuplicateKey)
        );
    }

    #[test]
    fn op_budget_and_empty_ops() {
        let many: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check(many), Err(Error::TooManyOps));
        assert_eq!(
            check(vec![RequestOp { request: None }]),
            Err(Error::KeyNotFound)
        );
        assert_eq!(check(vec![put("")]), Err(Error::EmptyKey));
        let ok: Vec<RequestOp> = (0..128).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check(ok), Ok(()));
    }

    #[test]
    fn put_flags() {
        let p = PutRequest {
            key: "k".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(Error::ValueProvided));
        let p = PutRequest {
            key: "k".into(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(Error::LeaseProvided));
    }
}

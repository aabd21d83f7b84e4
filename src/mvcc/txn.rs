//! Applying write requests, and etcd's Range semantics (etcd 3.5
//! `server/etcdserver/apply.go` applierV3backend and `server/mvcc/kvstore_txn.go`).
//!
//! An [`Applier`] collects the changes of one or more committed Raft entries
//! into one sled batch. Inside it every write request is a "write txn" in
//! etcd's sense: it starts at `begin_rev` (the current revision), its
//! changes take revision `begin_rev + 1` with subs 0, 1, …, and reads inside
//! it see `begin_rev + 1` once it changed something, `begin_rev` before.

use std::collections::HashMap;
use std::sync::{atomic::Ordering, MutexGuard};

use super::backend::{
    encode_i64, encode_stored, lease_key, rev_key, WriteBatch, META_APPLIED, META_CURRENT_REV,
    META_SCHEDULED_COMPACT,
};
use super::key_index::{KeyRev, RangeEnd};
use super::revision::Revision;
use super::store::Inner;
use super::{ApplyError, StorageError};
use crate::proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

pub(crate) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// A consistent view to read from: the published store, or an applier with
/// its pending changes.
pub(crate) trait ReadView {
    /// The revision a read at "0" means (etcd `curRev` of the txn).
    fn rev(&self) -> i64;
    /// Reads below this fail (etcd `compactMainRev`; -1 before any compaction).
    fn compact_rev(&self) -> i64;
    /// Visible keys at `at_rev` with their revisions, and the total count.
    fn index_revisions(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        at_rev: i64,
        limit: usize,
    ) -> (Vec<(Vec<u8>, KeyRev)>, i64);
    /// The stored value at `rev` (which the index says exists).
    fn fetch(&self, rev: Revision) -> Result<KeyValue, StorageError>;
}

/// etcd `RangeResult`.
pub(crate) struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub count: i64,
    pub rev: i64,
}

/// etcd `storeTxnRead.rangeKeys`: revision checks, then the index, then data.
pub(crate) fn range_keys<V: ReadView + ?Sized>(
    view: &V,
    key: &[u8],
    end: RangeEnd<'_>,
    rev: i64,
    limit: i64,
    count_only: bool,
) -> Result<RangeResult, ApplyError> {
    let cur = view.rev();
    if rev > cur {
        return Err(ApplyError::FutureRev);
    }
    let rev = if rev <= 0 { cur } else { rev };
    if rev < view.compact_rev() {
        return Err(ApplyError::Compacted);
    }
    let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
    let (pairs, count) = view.index_revisions(key, end, rev, limit);
    if count_only {
        return Ok(RangeResult {
            kvs: Vec::new(),
            count,
            rev: cur,
        });
    }
    let kvs = pairs
        .into_iter()
        .map(|(_, kr)| view.fetch(kr.modified))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RangeResult {
        kvs,
        count,
        rev: cur,
    })
}

/// etcd `applierV3backend.Range`.
pub(crate) fn range<V: ReadView + ?Sized>(
    view: &V,
    r: &RangeRequest,
) -> Result<RangeResponse, ApplyError> {
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    let mut limit = r.limit;
    if r.sort_order != SortOrder::None as i32 || filtered {
        // Fetch everything; sort and truncate afterwards.
        limit = 0;
    }
    if limit > 0 {
        // One extra tells whether there is more.
        limit = limit.saturating_add(1);
    }
    let rr = range_keys(
        view,
        &r.key,
        RangeEnd::from_request(&r.range_end),
        r.revision,
        limit,
        r.count_only,
    )?;
    let mut kvs = rr.kvs;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }

    let mut order = r.sort_order;
    if r.sort_target != SortTarget::Key as i32 && order == SortOrder::None as i32 {
        // The index yields keys ascending; other targets default to ascending.
        order = SortOrder::Ascend as i32;
    }
    let by_key_ascend = r.sort_target == SortTarget::Key as i32 && order == SortOrder::Ascend as i32;
    if !by_key_ascend {
        let cmp: Option<fn(&KeyValue, &KeyValue) -> std::cmp::Ordering> =
            match SortTarget::try_from(r.sort_target) {
                Ok(SortTarget::Key) => Some(|a, b| a.key.cmp(&b.key)),
                Ok(SortTarget::Version) => Some(|a, b| a.version.cmp(&b.version)),
                Ok(SortTarget::Create) => Some(|a, b| a.create_revision.cmp(&b.create_revision)),
                Ok(SortTarget::Mod) => Some(|a, b| a.mod_revision.cmp(&b.mod_revision)),
                Ok(SortTarget::Value) => Some(|a, b| a.value.cmp(&b.value)),
                Err(_) => None,
            };
        if let Some(cmp) = cmp {
            if order == SortOrder::Ascend as i32 {
                kvs.sort_by(cmp);
            } else if order == SortOrder::Descend as i32 {
                kvs.sort_by(|a, b| cmp(b, a));
            }
        }
    }

    let mut more = false;
    if r.limit > 0 && kvs.len() as i64 > r.limit {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(rr.rev),
        kvs,
        more,
        count: rr.count,
    })
}

/// etcd `compareKV`.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int = |v: Option<i64>| v.unwrap_or(0);
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int(match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => Some(v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int(match c.target_union {
            Some(TargetUnion::ModRevision(v)) => Some(v),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int(match c.target_union {
            Some(TargetUnion::Version(v)) => Some(v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int(match c.target_union {
            Some(TargetUnion::Lease(v)) => Some(v),
            _ => None,
        })),
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

/// etcd `applyCompare`: every key in the range must satisfy the compare; an
/// empty range compares the zero KeyValue, except VALUE, which fails.
fn apply_compare<V: ReadView + ?Sized>(view: &V, c: &Compare) -> Result<bool, StorageError> {
    let rr = match range_keys(view, &c.key, RangeEnd::from_request(&c.range_end), 0, 0, false) {
        Ok(rr) => rr,
        Err(ApplyError::Storage(e)) => return Err(e),
        Err(_) => return Ok(false),
    };
    if rr.kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(rr.kvs.iter().all(|kv| compare_kv(c, kv)))
}

/// etcd `compareToPath`: the outcome of every txn's compares that will run,
/// in pre-order, all evaluated before the txn changes anything.
fn compare_to_path<V: ReadView + ?Sized>(
    view: &V,
    t: &TxnRequest,
    path: &mut Vec<bool>,
) -> Result<(), StorageError> {
    let mut ok = true;
    for c in &t.compare {
        if !apply_compare(view, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in branch(t, ok) {
        if let Some(Request::RequestTxn(sub)) = &op.request {
            compare_to_path(view, sub, path)?;
        }
    }
    Ok(())
}

fn branch(t: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &t.success
    } else {
        &t.failure
    }
}

/// etcd `isTxnReadonly`: no put or delete in either branch, at any depth.
fn is_txn_readonly(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
        Some(Request::RequestTxn(sub)) => is_txn_readonly(sub),
        _ => true,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Put,
    Range,
}

/// Applies committed write requests; see the module docs. Obtained from
/// `Store::begin_apply`; its changes reach sled and readers at [`Applier::commit`].
/// An applier that changed something and is dropped without commit leaves
/// the in-memory index ahead of sled: treat it like a storage failure (stop).
pub struct Applier<'a> {
    inner: &'a Inner,
    _serial: MutexGuard<'a, ()>,
    batch: WriteBatch,
    /// Values written by this applier, not yet in sled.
    pending: HashMap<Revision, KeyValue>,
    /// Current revision including this applier's changes.
    rev: i64,
    /// Compact revision including this applier's compactions.
    compact_rev: i64,
    start_rev: i64,
    start_compact_rev: i64,
    /// Start of the current write request (etcd `beginRev`).
    begin_rev: i64,
    /// Changes made by the current write request (etcd `len(tw.changes)`).
    changes: i64,
}

impl ReadView for Applier<'_> {
    fn rev(&self) -> i64 {
        self.begin_rev + i64::from(self.changes > 0)
    }
    fn compact_rev(&self) -> i64 {
        self.compact_rev
    }
    fn index_revisions(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        at_rev: i64,
        limit: usize,
    ) -> (Vec<(Vec<u8>, KeyRev)>, i64) {
        self.inner.index().revisions(key, end, at_rev, limit)
    }
    fn fetch(&self, rev: Revision) -> Result<KeyValue, StorageError> {
        match self.pending.get(&rev) {
            Some(kv) => Ok(kv.clone()),
            None => self.inner.fetch(rev),
        }
    }
}

impl<'a> Applier<'a> {
    pub(crate) fn new(inner: &'a Inner, serial: MutexGuard<'a, ()>) -> Self {
        let rev = inner.current_rev.load(Ordering::SeqCst);
        let compact_rev = inner.compact_rev.load(Ordering::SeqCst);
        Applier {
            inner,
            _serial: serial,
            batch: WriteBatch::new(),
            pending: HashMap::new(),
            rev,
            compact_rev,
            start_rev: rev,
            start_compact_rev: compact_rev,
            begin_rev: rev,
            changes: 0,
        }
    }

    fn end_request(&mut self) -> i64 {
        if self.changes > 0 {
            self.rev = self.begin_rev + 1;
        }
        self.begin_rev = self.rev;
        self.changes = 0;
        self.rev
    }

    fn lease_exists(&self, id: i64) -> Result<bool, StorageError> {
        self.inner.backend.contains(&lease_key(id))
    }

    /// etcd `storeTxnWrite.put`; returns the header revision.
    fn put_kv(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> i64 {
        let rev = self.begin_rev + 1;
        let idx_rev = Revision::new(rev, self.changes);
        let mut index = self.inner.index_mut();
        let (created, ver) = match index.get(key, rev) {
            Some(kr) => (kr.created, kr.ver),
            None => (rev, 0),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: created,
            mod_revision: rev,
            version: ver + 1,
            value,
            lease,
        };
        index.put(key, idx_rev);
        drop(index);
        self.batch.insert(&rev_key(idx_rev), &encode_stored(&kv, false));
        self.pending.insert(idx_rev, kv);
        self.changes += 1;
        rev
    }

    /// etcd `storeTxnWrite.deleteRange`; returns the number deleted.
    fn delete_kvs(&mut self, key: &[u8], end: RangeEnd<'_>) -> i64 {
        let at = self.rev();
        let (pairs, _) = self.inner.index().revisions(key, end, at, 0);
        for (k, _) in &pairs {
            let idx_rev = Revision::new(self.begin_rev + 1, self.changes);
            let tomb = KeyValue {
                key: k.clone(),
                mod_revision: idx_rev.main,
                ..Default::default()
            };
            self.inner.index_mut().tombstone(k, idx_rev);
            self.batch.insert(&rev_key(idx_rev), &encode_stored(&tomb, true));
            self.changes += 1;
        }
        pairs.len() as i64
    }

    /// etcd `applierV3backend.Put` inside a write txn (lease already checked).
    fn apply_put(&mut self, p: &PutRequest) -> Result<PutResponse, ApplyError> {
        let mut resp = PutResponse::default();
        let (mut value, mut lease) = (p.value.clone(), p.lease);
        if p.ignore_value || p.ignore_lease || p.prev_kv {
            let rr = range_keys(self, &p.key, RangeEnd::Single, 0, 0, false)?;
            let prev = rr.kvs.into_iter().next();
            if (p.ignore_value || p.ignore_lease) && prev.is_none() {
                return Err(ApplyError::KeyNotFound);
            }
            if let Some(prev) = prev {
                if p.ignore_value {
                    value = prev.value.clone();
                }
                if p.ignore_lease {
                    lease = prev.lease;
                }
                if p.prev_kv {
                    resp.prev_kv = Some(prev);
                }
            }
        }
        resp.header = header(self.put_kv(&p.key, value, lease));
        Ok(resp)
    }

    /// etcd `applierV3backend.DeleteRange` inside a write txn.
    fn apply_delete_range(
        &mut self,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ApplyError> {
        let end = RangeEnd::from_request(&d.range_end);
        let mut resp = DeleteRangeResponse::default();
        if d.prev_kv {
            resp.prev_kvs = range_keys(self, &d.key, end, 0, 0, false)?.kvs;
        }
        resp.deleted = self.delete_kvs(&d.key, end);
        resp.header = header(self.rev());
        Ok(resp)
    }

    pub fn put(&mut self, p: &PutRequest) -> Result<PutResponse, ApplyError> {
        if p.lease != 0 && !self.lease_exists(p.lease)? {
            return Err(ApplyError::LeaseNotFound);
        }
        let resp = self.apply_put(p);
        self.end_request();
        resp
    }

    pub fn delete_range(
        &mut self,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ApplyError> {
        let resp = self.apply_delete_range(d);
        self.end_request();
        resp
    }

    /// A Range served from inside the applier (sees its pending changes).
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        range(self, r)
    }

    /// etcd `checkRequests` with `checkRequestPut` / `checkRequestRange`,
    /// against the state before the txn.
    fn check_requests(
        &self,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
        check: Check,
    ) -> Result<(), ApplyError> {
        let ok = path[*cursor];
        *cursor += 1;
        for op in branch(t, ok) {
            match (&op.request, check) {
                (Some(Request::RequestTxn(sub)), _) => {
                    self.check_requests(sub, path, cursor, check)?
                }
                (Some(Request::RequestPut(p)), Check::Put) => {
                    if p.ignore_value || p.ignore_lease {
                        let rr = range_keys(self, &p.key, RangeEnd::Single, 0, 0, false)?;
                        if rr.kvs.is_empty() {
                            return Err(ApplyError::KeyNotFound);
                        }
                    }
                    if p.lease != 0 && !self.lease_exists(p.lease)? {
                        return Err(ApplyError::LeaseNotFound);
                    }
                }
                (Some(Request::RequestRange(r)), Check::Range) => {
                    if r.revision == 0 {
                        continue;
                    }
                    if r.revision > self.rev() {
                        return Err(ApplyError::FutureRev);
                    }
                    if r.revision < self.compact_rev {
                        return Err(ApplyError::Compacted);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// etcd `applyTxn`: run the chosen branch in order.
    fn apply_txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<TxnResponse, ApplyError> {
        let ok = path[*cursor];
        *cursor += 1;
        let ops = branch(t, ok);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => Some(Response::ResponseRange(range(&*self, r)?)),
                Some(Request::RequestPut(p)) => Some(Response::ResponsePut(self.apply_put(p)?)),
                Some(Request::RequestDeleteRange(d)) => {
                    Some(Response::ResponseDeleteRange(self.apply_delete_range(d)?))
                }
                Some(Request::RequestTxn(sub)) => {
                    Some(Response::ResponseTxn(self.apply_txn(sub, path, cursor)?))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: ok,
            responses,
        })
    }

    /// etcd `applierV3backend.Txn`: compares at the revision before the txn,
    /// checks of the chosen branches (a failing txn changes nothing), then
    /// the branch in order.
    pub fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, ApplyError> {
        let mut path = Vec::new();
        compare_to_path(&*self, t, &mut path)?;
        if !is_txn_readonly(t) {
            self.check_requests(t, &path, &mut 0, Check::Put)?;
        }
        self.check_requests(t, &path, &mut 0, Check::Range)?;
        let result = self.apply_txn(t, &path, &mut 0);
        if let Err(e) = &result {
            if e.is_deterministic() && self.changes > 0 {
                // etcd panics too: the checks above make this unreachable.
                panic!("unexpected error during txn with writes: {e}");
            }
        }
        let rev = self.rev();
        self.end_request();
        let mut resp = result?;
        resp.header = header(rev);
        Ok(resp)
    }

    /// etcd `kvstore.Compact` as applied: validate, record as scheduled;
    /// reads below `revision` fail once committed; removal runs in the
    /// background (see `compact.rs`).
    pub fn compact(&mut self, c: &CompactionRequest) -> Result<CompactionResponse, ApplyError> {
        if c.revision <= self.compact_rev {
            return Err(ApplyError::Compacted);
        }
        if c.revision > self.rev {
            return Err(ApplyError::FutureRev);
        }
        self.compact_rev = c.revision;
        self.batch
            .insert(META_SCHEDULED_COMPACT, &encode_i64(c.revision));
        Ok(CompactionResponse {
            header: header(self.rev),
        })
    }

    /// Raft's applied state (e.g. last applied log id), written in this batch.
    pub fn set_applied_meta(&mut self, meta: Vec<u8>) {
        self.batch.insert(META_APPLIED, &meta);
    }

    /// The current revision including this applier's changes.
    pub fn current_revision(&self) -> i64 {
        self.rev
    }

    /// Whether a lease id is known (the `l` keyspace).
    pub fn lease_exists_in_store(&self, id: i64) -> Result<bool, StorageError> {
        self.lease_exists(id)
    }

    /// Write everything as one sled batch, then publish to readers.
    pub fn commit(mut self) -> Result<(), StorageError> {
        if self.rev != self.start_rev {
            self.batch.insert(META_CURRENT_REV, &encode_i64(self.rev));
        }
        let batch = std::mem::take(&mut self.batch);
        self.inner.backend.apply(batch)?;
        self.inner
            .compact_rev
            .store(self.compact_rev, Ordering::SeqCst);
        self.inner.current_rev.store(self.rev, Ordering::SeqCst);
        if self.compact_rev != self.start_compact_rev {
            self.inner.signal_compactor();
        }
        Ok(())
    }
}

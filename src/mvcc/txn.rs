//! Applying write requests, and etcd's Range semantics (etcd 3.5
//! `server/etcdserver/apply.go` applierV3backend and `server/mvcc/kvstore_txn.go`).
//!
//! An [`Applier`] collects the changes of one or more committed Raft entries
//! into one backend batch. Inside it every write request is a "write txn" in
//! etcd's sense: it starts at `begin_rev` (the current revision), its
//! changes take revision `begin_rev + 1` with subs 0, 1, …, and reads inside
//! it see `begin_rev + 1` once it changed something, `begin_rev` before.

use bytes::Bytes;
use std::sync::{atomic::Ordering, MutexGuard};

use super::backend::{
    encode_i64, encode_stored, rev_key, WriteBatch, META_APPLIED, META_CURRENT_REV,
    META_SCHEDULED_COMPACT,
};
use super::key_index::{KeyRev, RangeEnd};
use super::revision::Revision;
use super::store::{Change, Inner};
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
    let by_key_ascend =
        r.sort_target == SortTarget::Key as i32 && order == SortOrder::Ascend as i32;
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
            kv.value.as_ref().cmp(v)
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
    let rr = match range_keys(
        view,
        &c.key,
        RangeEnd::from_request(&c.range_end),
        0,
        0,
        false,
    ) {
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

/// etcd `isTxnReadonly`: every op of both branches, at any depth, is a
/// Range (or a nested txn that is itself read-only). An empty `RequestOp`
/// is not a read. Such a txn can be served by
/// [`Store::txn_readonly`](crate::mvcc::Store::txn_readonly) without going
/// through Raft.
pub fn is_txn_readonly(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) => true,
            Some(Request::RequestTxn(sub)) => is_txn_readonly(sub),
            _ => false,
        })
}

/// etcd `checkRequests`' walk: each op of the branches `path` chose, in
/// pre-order, nested txns entered rather than passed to `check`.
fn check_chosen<F>(
    t: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
    check: &mut F,
) -> Result<(), ApplyError>
where
    F: FnMut(&Request) -> Result<(), ApplyError>,
{
    let ok = path[*cursor];
    *cursor += 1;
    for op in branch(t, ok) {
        match &op.request {
            Some(Request::RequestTxn(sub)) => check_chosen(sub, path, cursor, check)?,
            Some(req) => check(req)?,
            None => {}
        }
    }
    Ok(())
}

/// etcd `checkRequestRange` (other ops pass).
fn check_range<V: ReadView + ?Sized>(view: &V, req: &Request) -> Result<(), ApplyError> {
    let Request::RequestRange(r) = req else {
        return Ok(());
    };
    if r.revision == 0 {
        return Ok(());
    }
    if r.revision > view.rev() {
        return Err(ApplyError::FutureRev);
    }
    if r.revision < view.compact_rev() {
        return Err(ApplyError::Compacted);
    }
    Ok(())
}

/// etcd `applyTxn`: run the branch `path` chose, in order; `exec` runs each
/// op but nested txns, which this enters. Nested responses carry an empty
/// header, as in etcd; the caller sets the outer one.
fn exec_chosen<F>(
    t: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
    exec: &mut F,
) -> Result<TxnResponse, ApplyError>
where
    F: FnMut(&Request) -> Result<Response, ApplyError>,
{
    let ok = path[*cursor];
    *cursor += 1;
    let ops = branch(t, ok);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestTxn(sub)) => {
                Some(Response::ResponseTxn(exec_chosen(sub, path, cursor, exec)?))
            }
            Some(req) => Some(exec(req)?),
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

/// etcd `applierV3backend.Txn` for a txn that [`is_txn_readonly`], on any
/// view: the steps of [`Applier::txn`] that apply to reads (compares, range
/// checks, the chosen branch), which `Applier::txn` runs through the same
/// functions. Panics on a write op.
pub(crate) fn txn_readonly<V: ReadView + ?Sized>(
    view: &V,
    t: &TxnRequest,
) -> Result<TxnResponse, ApplyError> {
    let mut path = Vec::new();
    compare_to_path(view, t, &mut path)?;
    check_chosen(t, &path, &mut 0, &mut |req| check_range(view, req))?;
    let mut resp = exec_chosen(t, &path, &mut 0, &mut |req| match req {
        Request::RequestRange(r) => Ok(Response::ResponseRange(range(view, r)?)),
        _ => unreachable!("write op in a read-only txn"),
    })?;
    resp.header = header(view.rev());
    Ok(resp)
}

/// Applies committed write requests; see the module docs. Obtained from
/// `Store::begin_apply`; its changes reach sled and readers at [`Applier::commit`].
/// An applier that changed something and is dropped without commit leaves
/// the in-memory index ahead of sled: treat it like a storage failure (stop).
pub struct Applier<'a> {
    pub(super) inner: &'a Inner,
    _serial: MutexGuard<'a, ()>,
    pub(super) batch: WriteBatch,
    /// Current revision including this applier's changes.
    pub(super) rev: i64,
    /// Compact revision including this applier's compactions.
    compact_rev: i64,
    start_rev: i64,
    start_compact_rev: i64,
    /// `(revision, previous compact revision)` of each compaction applied
    /// here, for the compaction hashes (`hash.rs`).
    compactions: Vec<(i64, i64)>,
    /// Start of the current write request (etcd `beginRev`).
    begin_rev: i64,
    /// Changes made by the current write request (etcd `len(tw.changes)`).
    changes: i64,
    /// Every change this applier made, in revision order: what reads inside
    /// the applier see before it is in sled, and what `commit` then hands to
    /// the watch hub.
    log: Vec<Change>,
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
        // A value this applier wrote is not in sled yet: it is in the log,
        // which is in revision order.
        let i = self.log.partition_point(|c| c.revision < rev);
        match self.log.get(i) {
            Some(c) if c.revision == rev => Ok(c.kv.clone()),
            _ => self.inner.fetch(rev),
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
            rev,
            compact_rev,
            start_rev: rev,
            start_compact_rev: compact_rev,
            compactions: Vec::new(),
            begin_rev: rev,
            changes: 0,
            log: Vec::new(),
        }
    }

    pub(super) fn end_request(&mut self) -> i64 {
        if self.changes > 0 {
            self.rev = self.begin_rev + 1;
        }
        self.begin_rev = self.rev;
        self.changes = 0;
        self.rev
    }

    /// etcd `storeTxnWrite.put`; returns the header revision.
    fn put_kv(&mut self, key: &[u8], value: Bytes, lease: i64) -> i64 {
        let rev = self.begin_rev + 1;
        let idx_rev = Revision::new(rev, self.changes);
        let (created, version) = self.inner.index_mut().put(key, idx_rev);
        let kv = KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: created,
            mod_revision: rev,
            version,
            value,
            lease,
        };
        self.inner.leases_mut().on_put(key, lease);
        self.batch
            .insert(&rev_key(idx_rev), &encode_stored(&kv, false));
        self.log.push(Change {
            revision: idx_rev,
            kv,
            is_delete: false,
        });
        self.changes += 1;
        rev
    }

    /// etcd `storeTxnWrite.deleteRange`; returns the number deleted.
    pub(super) fn delete_kvs(&mut self, key: &[u8], end: RangeEnd<'_>) -> i64 {
        let at = self.rev();
        let (pairs, _) = self.inner.index().revisions(key, end, at, 0);
        for (k, _) in &pairs {
            let idx_rev = Revision::new(self.begin_rev + 1, self.changes);
            let tomb = KeyValue {
                key: Bytes::copy_from_slice(k),
                mod_revision: idx_rev.main,
                ..Default::default()
            };
            self.inner.index_mut().tombstone(k, idx_rev);
            self.inner.leases_mut().detach(k);
            self.batch
                .insert(&rev_key(idx_rev), &encode_stored(&tomb, true));
            self.log.push(Change {
                revision: idx_rev,
                kv: tomb,
                is_delete: true,
            });
            self.changes += 1;
        }
        pairs.len() as i64
    }

    /// etcd `applierV3backend.Put` inside a write txn (lease already checked).
    fn apply_put(&mut self, p: &PutRequest) -> Result<PutResponse, ApplyError> {
        let mut resp = PutResponse::default();
        let (mut value, mut lease) = (Bytes::copy_from_slice(&p.value), p.lease);
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
        if p.lease != 0 && !self.lease_exists(p.lease) {
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

    /// etcd `checkRequestPut`, against the state before the txn.
    fn check_put(&self, req: &Request) -> Result<(), ApplyError> {
        let Request::RequestPut(p) = req else {
            return Ok(());
        };
        if p.ignore_value || p.ignore_lease {
            let rr = range_keys(self, &p.key, RangeEnd::Single, 0, 0, false)?;
            if rr.kvs.is_empty() {
                return Err(ApplyError::KeyNotFound);
            }
        }
        if p.lease != 0 && !self.lease_exists(p.lease) {
            return Err(ApplyError::LeaseNotFound);
        }
        Ok(())
    }

    /// One op of a txn branch (nested txns are entered by `exec_chosen`).
    fn apply_op(&mut self, req: &Request) -> Result<Response, ApplyError> {
        Ok(match req {
            Request::RequestRange(r) => Response::ResponseRange(range(&*self, r)?),
            Request::RequestPut(p) => Response::ResponsePut(self.apply_put(p)?),
            Request::RequestDeleteRange(d) => {
                Response::ResponseDeleteRange(self.apply_delete_range(d)?)
            }
            Request::RequestTxn(_) => unreachable!("exec_chosen enters nested txns"),
        })
    }

    /// etcd `applierV3backend.Txn`: compares at the revision before the txn,
    /// checks of the chosen branches (a failing txn changes nothing), then
    /// the branch in order.
    pub fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, ApplyError> {
        let mut path = Vec::new();
        compare_to_path(&*self, t, &mut path)?;
        if !is_txn_readonly(t) {
            check_chosen(t, &path, &mut 0, &mut |req| self.check_put(req))?;
        }
        check_chosen(t, &path, &mut 0, &mut |req| check_range(&*self, req))?;
        let result = exec_chosen(t, &path, &mut 0, &mut |req| self.apply_op(req));
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
        self.compactions.push((c.revision, self.compact_rev));
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

    /// Write everything as one backend batch, then publish to readers.
    /// Returns the committed changes in revision order (for the watch hub).
    pub fn commit(mut self) -> Result<Vec<Change>, StorageError> {
        if self.rev != self.start_rev {
            self.batch.insert(META_CURRENT_REV, &encode_i64(self.rev));
        }
        let batch = std::mem::take(&mut self.batch);
        self.inner.backend.apply(batch)?;
        // Current before compact (see `Inner::current_rev`): a reader that
        // sees the new compact revision then also sees the new current one.
        self.inner.current_rev.store(self.rev, Ordering::SeqCst);
        // Queued before the compact revision is published: a compactor
        // pass that loads it finds its compactions queued for hashing.
        if !self.compactions.is_empty() {
            let mut h = self.inner.compaction_hashes();
            for (rev, prev) in self.compactions.drain(..) {
                h.push_pending(rev, prev);
            }
        }
        self.inner
            .compact_rev
            .store(self.compact_rev, Ordering::SeqCst);
        if self.compact_rev != self.start_compact_rev {
            self.inner.signal_compactor();
        }
        Ok(std::mem::take(&mut self.log))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mvcc::Store;
    use crate::proto::etcdserverpb::{
        compare::{CompareResult as CR, CompareTarget as CT},
        RequestOp,
    };

    pub fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    pub fn put(s: &Store, k: &str, v: &str) -> PutResponse {
        let mut a = s.begin_apply();
        let r = a
            .put(&PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
            .unwrap();
        a.commit().unwrap();
        r
    }

    pub fn del(s: &Store, k: &str, end: &str) -> DeleteRangeResponse {
        let mut a = s.begin_apply();
        let r = a
            .delete_range(&DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                prev_kv: true,
            })
            .unwrap();
        a.commit().unwrap();
        r
    }

    fn txn(s: &Store, t: &TxnRequest) -> Result<TxnResponse, ApplyError> {
        let mut a = s.begin_apply();
        let r = a.txn(t);
        a.commit().unwrap();
        r
    }

    fn rng(k: &str, end: &str) -> RangeRequest {
        RangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        }
    }

    fn keys(r: &RangeResponse) -> Vec<String> {
        r.kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
            .collect()
    }

    fn op_put(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })),
        }
    }

    fn op_range(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(rng(k, ""))),
        }
    }

    fn cmp(k: &str, target: CT, result: CR, u: TargetUnion) -> Compare {
        Compare {
            key: k.into(),
            target: target as i32,
            result: result as i32,
            target_union: Some(u),
            range_end: vec![],
        }
    }

    #[test]
    fn revisions_versions_generations() {
        let (_d, s) = open();
        assert_eq!(s.current_revision(), 1);
        assert_eq!(s.compact_revision(), -1);
        assert_eq!(put(&s, "a", "1").header.unwrap().revision, 2);
        assert_eq!(put(&s, "a", "2").header.unwrap().revision, 3);
        let kv = &s.range(&rng("a", "")).unwrap().kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        let d = del(&s, "a", "");
        assert_eq!((d.deleted, d.header.unwrap().revision), (1, 4));
        assert_eq!(&d.prev_kvs[0].value[..], b"2");
        // Deleting nothing leaves the revision alone.
        let d = del(&s, "a", "");
        assert_eq!((d.deleted, d.header.unwrap().revision), (0, 4));
        assert_eq!(s.current_revision(), 4);
        put(&s, "a", "3");
        let kv = &s.range(&rng("a", "")).unwrap().kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
        // History stays readable.
        let mut r = rng("a", "");
        r.revision = 3;
        let old = s.range(&r).unwrap();
        assert_eq!(&old.kvs[0].value[..], b"2");
        assert_eq!(old.header.unwrap().revision, 5);
        r.revision = 4;
        assert_eq!(s.range(&r).unwrap().count, 0);
        r.revision = 6;
        assert!(matches!(s.range(&r), Err(ApplyError::FutureRev)));
    }

    #[test]
    fn range_options_golden() {
        let (_d, s) = open();
        put(&s, "d", "1"); // 2
        put(&s, "c", "3"); // 3
        put(&s, "b", "2"); // 4
        put(&s, "a", "4"); // 5
        put(&s, "c", "5"); // 6 (c version 2)
        let all = rng("a", "\0");
        let r = s.range(&all).unwrap();
        assert_eq!(keys(&r), ["a", "b", "c", "d"]);
        assert_eq!((r.count, r.more), (4, false));

        let r = s
            .range(&RangeRequest {
                limit: 2,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(keys(&r), ["a", "b"]);
        assert_eq!((r.count, r.more), (4, true));
        let r = s
            .range(&RangeRequest {
                limit: 4,
                ..all.clone()
            })
            .unwrap();
        assert!(!r.more);

        let r = s.range(&rng("b", "d")).unwrap();
        assert_eq!(keys(&r), ["b", "c"]);

        // Sort by mod revision descending, limit 3.
        let r = s
            .range(&RangeRequest {
                sort_target: SortTarget::Mod as i32,
                sort_order: SortOrder::Descend as i32,
                limit: 3,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(keys(&r), ["c", "a", "b"]);
        assert_eq!((r.count, r.more), (4, true));
        // Target VERSION with order NONE sorts ascending; stable on ties.
        let r = s
            .range(&RangeRequest {
                sort_target: SortTarget::Version as i32,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(keys(&r), ["a", "b", "d", "c"]);
        // Sort by value descending.
        let r = s
            .range(&RangeRequest {
                sort_target: SortTarget::Value as i32,
                sort_order: SortOrder::Descend as i32,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(keys(&r), ["c", "a", "b", "d"]);
        // Key descending.
        let r = s
            .range(&RangeRequest {
                sort_order: SortOrder::Descend as i32,
                limit: 1,
                ..all.clone()
            })
            .unwrap();
        assert_eq!((keys(&r), r.more), (vec!["d".to_string()], true));

        // Filters prune, count does not change, more reflects the pruned list.
        let r = s
            .range(&RangeRequest {
                min_mod_revision: 4,
                limit: 2,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(keys(&r), ["a", "b"]);
        assert_eq!((r.count, r.more), (4, true));
        let r = s
            .range(&RangeRequest {
                max_create_revision: 3,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(keys(&r), ["c", "d"]);
        assert_eq!(r.count, 4);
        let r = s
            .range(&RangeRequest {
                max_mod_revision: 5,
                min_create_revision: 3,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(keys(&r), ["a", "b"]);

        let r = s
            .range(&RangeRequest {
                keys_only: true,
                ..all.clone()
            })
            .unwrap();
        assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
        assert_eq!(r.kvs[2].version, 2);
        let r = s
            .range(&RangeRequest {
                count_only: true,
                limit: 1,
                ..all.clone()
            })
            .unwrap();
        assert_eq!((r.kvs.len(), r.count, r.more), (0, 4, false));
        // At an old revision: header is still the current revision.
        let r = s
            .range(&RangeRequest {
                revision: 3,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(keys(&r), ["c", "d"]);
        assert_eq!(r.header.unwrap().revision, 6);
        // Empty / inverted ranges.
        assert_eq!(s.range(&rng("zz", "")).unwrap().count, 0);
        assert_eq!(s.range(&rng("d", "a")).unwrap().count, 0);
    }

    #[test]
    fn put_options() {
        let (_d, s) = open();
        let mut a = s.begin_apply();
        let e = a.put(&PutRequest {
            key: "k".into(),
            ignore_value: true,
            ..Default::default()
        });
        assert!(matches!(e, Err(ApplyError::KeyNotFound)));
        let e = a.put(&PutRequest {
            key: "k".into(),
            lease: 7,
            ..Default::default()
        });
        assert!(matches!(e, Err(ApplyError::LeaseNotFound)));
        let r = a
            .put(&PutRequest {
                key: "k".into(),
                value: "v".into(),
                prev_kv: true,
                ..Default::default()
            })
            .unwrap();
        assert!(r.prev_kv.is_none());
        let r = a
            .put(&PutRequest {
                key: "k".into(),
                ignore_value: true,
                prev_kv: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(&r.prev_kv.unwrap().value[..], b"v");
        assert_eq!(r.header.unwrap().revision, 3);
        a.commit().unwrap();
        let kv = &s.range(&rng("k", "")).unwrap().kvs[0];
        assert_eq!((kv.value.as_ref(), kv.version), (&b"v"[..], 2));
        assert_eq!(s.current_revision(), 3);
    }

    #[test]
    fn txn_compares_golden() {
        let (_d, s) = open();
        put(&s, "a", "x"); // 2
        put(&s, "b", "y"); // 3
        let run = |c: Vec<Compare>| {
            txn(
                &s,
                &TxnRequest {
                    compare: c,
                    ..Default::default()
                },
            )
            .unwrap()
            .succeeded
        };
        assert!(run(vec![cmp(
            "a",
            CT::Value,
            CR::Equal,
            TargetUnion::Value("x".into())
        )]));
        assert!(!run(vec![cmp(
            "a",
            CT::Value,
            CR::Equal,
            TargetUnion::Value("z".into())
        )]));
        assert!(run(vec![cmp(
            "a",
            CT::Value,
            CR::Less,
            TargetUnion::Value("y".into())
        )]));
        // VALUE on a missing key is false whatever the operator.
        assert!(!run(vec![cmp(
            "m",
            CT::Value,
            CR::NotEqual,
            TargetUnion::Value("q".into())
        )]));
        // Other targets compare the zero KeyValue.
        assert!(run(vec![cmp(
            "m",
            CT::Version,
            CR::Equal,
            TargetUnion::Version(0)
        )]));
        assert!(run(vec![cmp(
            "m",
            CT::Create,
            CR::Less,
            TargetUnion::CreateRevision(1)
        )]));
        assert!(run(vec![cmp(
            "a",
            CT::Mod,
            CR::Equal,
            TargetUnion::ModRevision(2)
        )]));
        assert!(run(vec![cmp(
            "a",
            CT::Create,
            CR::Greater,
            TargetUnion::CreateRevision(1)
        )]));
        assert!(run(vec![cmp(
            "a",
            CT::Lease,
            CR::Equal,
            TargetUnion::Lease(0)
        )]));
        // Mismatched union compares against 0.
        assert!(run(vec![cmp(
            "a",
            CT::Version,
            CR::Greater,
            TargetUnion::Value("".into())
        )]));
        // Over a range every key must match.
        let mut c = cmp("a", CT::Mod, CR::Greater, TargetUnion::ModRevision(1));
        c.range_end = "c".into();
        assert!(run(vec![c.clone()]));
        c.target_union = Some(TargetUnion::ModRevision(2));
        assert!(!run(vec![c]));
        // All compares must hold.
        assert!(!run(vec![
            cmp("a", CT::Version, CR::Equal, TargetUnion::Version(1)),
            cmp("b", CT::Version, CR::Equal, TargetUnion::Version(2)),
        ]));
        // Read-only txns leave the revision alone.
        assert_eq!(s.current_revision(), 3);
    }

    #[test]
    fn txn_execution_golden() {
        let (_d, s) = open();
        put(&s, "a", "1"); // 2
        let nested = TxnRequest {
            // Evaluated before the outer txn writes: "n" does not exist yet.
            compare: vec![cmp("n", CT::Version, CR::Equal, TargetUnion::Version(0))],
            success: vec![op_put("n", "2"), op_range("n")],
            failure: vec![],
        };
        let t = TxnRequest {
            compare: vec![cmp(
                "a",
                CT::Value,
                CR::Equal,
                TargetUnion::Value("1".into()),
            )],
            success: vec![
                op_range("n"),
                op_put("n", "1"),
                op_range("n"),
                RequestOp {
                    request: Some(Request::RequestTxn(nested)),
                },
                RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: "a".into(),
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![op_put("f", "1")],
        };
        let r = txn(&s, &t).unwrap();
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 3);
        let resp = |i: usize| r.responses[i].response.clone().unwrap();
        let Response::ResponseRange(r0) = resp(0) else {
            panic!()
        };
        assert_eq!((r0.count, r0.header.unwrap().revision), (0, 2));
        let Response::ResponsePut(p1) = resp(1) else {
            panic!()
        };
        assert_eq!(p1.header.unwrap().revision, 3);
        let Response::ResponseRange(r2) = resp(2) else {
            panic!()
        };
        assert_eq!(&r2.kvs[0].value[..], b"1");
        assert_eq!(r2.header.unwrap().revision, 3);
        let Response::ResponseTxn(t3) = resp(3) else {
            panic!()
        };
        assert!(t3.succeeded);
        assert_eq!(t3.header.unwrap().revision, 0);
        let Some(Response::ResponseRange(inner)) = t3.responses[1].response.clone() else {
            panic!()
        };
        let kv = &inner.kvs[0];
        assert_eq!(
            (kv.value.as_ref(), kv.version, kv.mod_revision),
            (&b"2"[..], 2, 3)
        );
        let Response::ResponseDeleteRange(d4) = resp(4) else {
            panic!()
        };
        assert_eq!((d4.deleted, d4.header.unwrap().revision), (1, 3));
        // Sub-revisions 0 (put n), 1 (put n), 2 (tombstone a).
        let changes = s.changes(3, 3, 0).unwrap();
        let subs: Vec<_> = changes
            .iter()
            .map(|c| (c.revision.sub, c.is_delete))
            .collect();
        assert_eq!(subs, [(0, false), (1, false), (2, true)]);
        assert_eq!(s.current_revision(), 3);
    }

    #[test]
    fn failing_txn_changes_nothing() {
        let (_d, s) = open();
        put(&s, "a", "1"); // 2
        let bad_put = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: "missing".into(),
                ignore_value: true,
                ..Default::default()
            })),
        };
        let t = TxnRequest {
            success: vec![op_put("a", "2"), bad_put],
            ..Default::default()
        };
        assert!(matches!(txn(&s, &t), Err(ApplyError::KeyNotFound)));
        let future = RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: "a".into(),
                revision: 9,
                ..Default::default()
            })),
        };
        let nested = TxnRequest {
            failure: vec![future],
            compare: vec![cmp("a", CT::Version, CR::Equal, TargetUnion::Version(5))],
            ..Default::default()
        };
        let t = TxnRequest {
            success: vec![
                op_put("a", "3"),
                RequestOp {
                    request: Some(Request::RequestTxn(nested)),
                },
            ],
            ..Default::default()
        };
        assert!(matches!(txn(&s, &t), Err(ApplyError::FutureRev)));
        let mut lease_put = op_put("b", "1");
        if let Some(Request::RequestPut(p)) = &mut lease_put.request {
            p.lease = 42;
        }
        let t = TxnRequest {
            failure: vec![lease_put],
            compare: vec![cmp("a", CT::Version, CR::Equal, TargetUnion::Version(9))],
            ..Default::default()
        };
        assert!(matches!(txn(&s, &t), Err(ApplyError::LeaseNotFound)));
        assert_eq!(s.current_revision(), 2);
        assert_eq!(&s.range(&rng("a", "")).unwrap().kvs[0].value[..], b"1");
        // A txn whose writes delete nothing keeps the revision.
        let t = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: "zz".into(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert_eq!(txn(&s, &t).unwrap().header.unwrap().revision, 2);
        assert_eq!(s.current_revision(), 2);
    }

    #[test]
    fn compaction_rules_and_restart() {
        let (dir, s) = open();
        for i in 0..5 {
            put(&s, "a", &i.to_string()); // 2..=6
        }
        put(&s, "b", "x"); // 7
        del(&s, "b", ""); // 8
        put(&s, "c", "y"); // 9
        let compact = |s: &Store, rev| {
            let mut a = s.begin_apply();
            let r = a.compact(&CompactionRequest {
                revision: rev,
                physical: false,
            });
            a.commit().unwrap();
            r
        };
        assert!(matches!(compact(&s, 10), Err(ApplyError::FutureRev)));
        assert_eq!(compact(&s, 8).unwrap().header.unwrap().revision, 9);
        assert!(matches!(compact(&s, 8), Err(ApplyError::Compacted)));
        assert!(matches!(compact(&s, 3), Err(ApplyError::Compacted)));
        futures::executor::block_on(s.wait_compacted(8));
        let mut r = rng("a", "\0");
        r.revision = 7;
        assert!(matches!(s.range(&r), Err(ApplyError::Compacted)));
        r.revision = 8;
        let at8 = s.range(&r).unwrap();
        assert_eq!(keys(&at8), ["a"]);
        assert_eq!(at8.kvs[0].version, 5);
        // Only a@6 and c@9 are left on disk.
        let left: Vec<_> = s.changes(8, 9, 0).unwrap();
        assert_eq!(left.len(), 1);
        assert!(matches!(s.changes(7, 9, 0), Err(ApplyError::Compacted)));
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!((s.current_revision(), s.compact_revision()), (9, 8));
        assert_eq!(s.range(&r).unwrap(), at8);
        let kv = &s.range(&rng("a", "")).unwrap().kvs[0];
        assert_eq!((kv.create_revision, kv.version), (2, 5));
        put(&s, "a", "z");
        let kv = &s.range(&rng("a", "")).unwrap().kvs[0];
        assert_eq!(
            (kv.create_revision, kv.version, kv.mod_revision),
            (2, 6, 10)
        );
    }

    #[test]
    fn compaction_of_everything_keeps_revision() {
        let (dir, s) = open();
        put(&s, "a", "1");
        del(&s, "a", "");
        let mut a = s.begin_apply();
        a.compact(&CompactionRequest {
            revision: 3,
            physical: true,
        })
        .unwrap();
        a.set_applied_meta(b"log-7".to_vec());
        a.commit().unwrap();
        futures::executor::block_on(s.wait_compacted(3));
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!((s.current_revision(), s.compact_revision()), (3, 3));
        assert_eq!(s.applied_meta().unwrap().unwrap(), b"log-7");
        assert_eq!(put(&s, "a", "2").header.unwrap().revision, 4);
        let kv = &s.range(&rng("a", "")).unwrap().kvs[0];
        assert_eq!((kv.create_revision, kv.version), (4, 1));
    }

    #[test]
    fn is_txn_readonly_rules() {
        let txn_op = |t: TxnRequest| RequestOp {
            request: Some(Request::RequestTxn(t)),
        };
        let ro = TxnRequest {
            success: vec![op_range("a")],
            failure: vec![txn_op(TxnRequest {
                failure: vec![op_range("b")],
                ..Default::default()
            })],
            ..Default::default()
        };
        assert!(is_txn_readonly(&ro));
        assert!(is_txn_readonly(&TxnRequest::default()));
        let mut t = ro.clone();
        t.success.push(RequestOp { request: None });
        assert!(!is_txn_readonly(&t), "an empty op is not a read");
        let mut t = ro.clone();
        t.failure.push(txn_op(TxnRequest {
            success: vec![op_put("a", "1")],
            ..Default::default()
        }));
        assert!(!is_txn_readonly(&t), "a nested put");
        let mut t = ro;
        t.failure.push(RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest::default())),
        });
        assert!(!is_txn_readonly(&t));
    }

    /// `Store::txn_readonly` against `Applier::txn` on random histories and
    /// random read-only txns (nested, with compares of every kind and ranges
    /// at compacted, live and future revisions).
    mod readonly_equivalence {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        const KEYS: &[&str] = &["a", "b", "c"];

        #[derive(Debug, Clone)]
        enum Step {
            Put(u8, u8),
            Del(u8, bool),
            Compact(u8),
            Read(TxnRequest),
        }

        fn key(i: u8) -> Vec<u8> {
            KEYS[i as usize % KEYS.len()].into()
        }

        fn range_end(k: u8, e: u8) -> Vec<u8> {
            match e % 3 {
                0 => vec![],
                1 => vec![0],
                _ => key(k.saturating_add(1)),
            }
        }

        fn compare() -> impl Strategy<Value = Compare> {
            (any::<u8>(), any::<u8>(), 0..6i32, 0..5i32, 0..5u8, -1..6i64).prop_map(
                |(k, e, target, result, u, n)| Compare {
                    key: key(k),
                    range_end: range_end(k, e),
                    target,
                    result,
                    target_union: Some(match u {
                        0 => TargetUnion::Version(n),
                        1 => TargetUnion::CreateRevision(n),
                        2 => TargetUnion::ModRevision(n),
                        3 => TargetUnion::Value(vec![b'0' + (n.rem_euclid(3)) as u8]),
                        _ => TargetUnion::Lease(n.clamp(0, 1)),
                    }),
                },
            )
        }

        fn range_op() -> impl Strategy<Value = RequestOp> {
            (
                (any::<u8>(), any::<u8>(), -1..14i64, 0..3i64),
                (0..3i32, 0..5i32, any::<bool>(), any::<bool>(), 0..6i64),
            )
                .prop_map(|((k, e, revision, limit), (order, target, co, ko, f))| {
                    RequestOp {
                        request: Some(Request::RequestRange(RangeRequest {
                            key: key(k),
                            range_end: range_end(k, e),
                            revision,
                            limit,
                            sort_order: order,
                            sort_target: target,
                            count_only: co && f % 3 == 0,
                            keys_only: ko,
                            min_mod_revision: if f == 1 { 3 } else { 0 },
                            max_create_revision: if f == 2 { 4 } else { 0 },
                            ..Default::default()
                        })),
                    }
                })
        }

        fn ro_txn() -> impl Strategy<Value = TxnRequest> {
            let op = range_op().prop_recursive(2, 16, 3, |inner| {
                (
                    vec(compare(), 0..3),
                    vec(inner.clone(), 0..3),
                    vec(inner, 0..3),
                )
                    .prop_map(|(compare, success, failure)| RequestOp {
                        request: Some(Request::RequestTxn(TxnRequest {
                            compare,
                            success,
                            failure,
                        })),
                    })
            });
            (vec(compare(), 0..3), vec(op.clone(), 0..4), vec(op, 0..4)).prop_map(
                |(compare, success, failure)| TxnRequest {
                    compare,
                    success,
                    failure,
                },
            )
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
                1 => (any::<u8>(), any::<bool>()).prop_map(|(k, all)| Step::Del(k, all)),
                1 => any::<u8>().prop_map(Step::Compact),
                4 => ro_txn().prop_map(Step::Read),
            ]
        }

        fn run(steps: Vec<Step>) {
            let (_d, s) = open();
            let everything = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            };
            for step in steps {
                match step {
                    Step::Put(k, v) => {
                        let k = String::from_utf8(key(k)).unwrap();
                        put(&s, &k, &(v % 3).to_string());
                    }
                    Step::Del(k, all) => {
                        let k = String::from_utf8(key(k)).unwrap();
                        del(&s, &k, if all { "\0" } else { "" });
                    }
                    Step::Compact(r) => {
                        let rev = i64::from(r) % (s.current_revision() + 1);
                        if rev > s.compact_revision() {
                            let mut a = s.begin_apply();
                            a.compact(&CompactionRequest {
                                revision: rev,
                                physical: false,
                            })
                            .unwrap();
                            a.commit().unwrap();
                        }
                    }
                    Step::Read(t) => {
                        assert!(is_txn_readonly(&t));
                        let (rev, compact) = (s.current_revision(), s.compact_revision());
                        let state = s.range(&everything).unwrap();
                        let got = s.txn_readonly(&t).map_err(|e| e.to_string());
                        let mut a = s.begin_apply();
                        let want = a.txn(&t).map_err(|e| e.to_string());
                        assert_eq!(a.current_revision(), rev);
                        a.commit().unwrap();
                        assert_eq!(got, want, "txn {t:?}");
                        // The applier path changed nothing either.
                        assert_eq!((s.current_revision(), s.compact_revision()), (rev, compact));
                        assert_eq!(s.range(&everything).unwrap(), state);
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            #[test]
            fn txn_readonly_equals_applier(steps in vec(step(), 1..30)) {
                run(steps);
            }
        }
    }
}

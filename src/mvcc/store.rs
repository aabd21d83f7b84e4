//! The store handle: open/rebuild, reads, snapshots.
//!
//! Concurrency: one [`Applier`] at a time (the `serial` mutex); any number
//! of readers. Readers hold the `gate` for reading while they check the
//! compact revision and fetch values; a compaction chunk and a snapshot
//! install hold it for writing. Lock order: serial → gate → index.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::backend::{
    encode_i64, rev_key, Backend, WriteBatch, LEASE_PREFIX, META_APPLIED, META_CURRENT_REV,
    META_FINISHED_COMPACT, META_INSTALLING, META_SCHEDULED_COMPACT,
};
use super::hash::{self, CompactionHashes, KvHash};
use super::key_index::{KeyRev, RangeEnd, TreeIndex};
use super::lease::{LeaseInfo, LeaseRecord, LeaseTable};
use super::revision::Revision;
use super::txn::{self, Applier, ReadView};
use super::{compact, ApplyError, StorageError};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::proto::mvccpb::KeyValue;

/// etcd's revision of a new store; its first write is revision 2.
const INITIAL_REVISION: i64 = 1;
/// etcd's compact revision before any compaction.
const NO_COMPACTION: i64 = -1;
/// Bumped when the snapshot format changes.
const SNAPSHOT_MAGIC: &str = "oxcd-mvcc-snapshot-v1";
/// How long a snapshot install waits for live [`Snapshot`]s (being written
/// by a snapshot builder on another task) to be dropped before it replaces
/// the state anyway; their `write_to` then fails with
/// [`StorageError::SnapshotSuperseded`] rather than mixing two states.
const SNAPSHOT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct Inner {
    pub backend: Backend,
    index: RwLock<TreeIndex>,
    /// Leases and the keys attached to them (see `lease.rs`); like the
    /// index, an applier updates it in place before its batch commits.
    leases: RwLock<LeaseTable>,
    /// Published current revision: everything at or below it is in sled.
    ///
    /// Invariant with `compact_rev`: writers store `current_rev` before
    /// `compact_rev`, readers load `compact_rev` before `current_rev`. A
    /// compaction never exceeds the current revision of its own commit, so
    /// a reader that sees a new compact revision also sees a current
    /// revision at least as new, and a revision-0 read never lands below
    /// the compact revision ("required revision has been compacted").
    pub current_rev: AtomicI64,
    /// Published compact revision: reads below it fail. See `current_rev`
    /// for the publish/read order.
    pub compact_rev: AtomicI64,
    /// Revision whose physical compaction finished.
    pub finished_rev: AtomicI64,
    /// Same, for async waiters.
    pub finished_tx: watch::Sender<i64>,
    /// Serialises appliers (and snapshot capture, install).
    serial: Mutex<()>,
    /// Readers ↔ physical removal; see the module docs.
    pub gate: RwLock<()>,
    /// Live snapshots; compaction pauses while non-zero, and a snapshot
    /// install waits (up to [`SNAPSHOT_DRAIN_TIMEOUT`]) for it to reach 0.
    pub snapshot_pauses: AtomicUsize,
    /// Bumped by snapshot install, under `serial` and the gate, once before
    /// it touches sled and once after it published the new state: a
    /// running compaction pass restarts, and a [`Snapshot`] captured before
    /// the install refuses to finish [`Snapshot::write_to`].
    pub epoch: AtomicU64,
    wake_compactor: Mutex<mpsc::Sender<()>>,
    /// Compactions waiting to be hashed and the last hashes (see `hash.rs`).
    compaction_hashes: Mutex<CompactionHashes>,
}

impl Inner {
    pub fn index(&self) -> RwLockReadGuard<'_, TreeIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }
    pub fn index_mut(&self) -> RwLockWriteGuard<'_, TreeIndex> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn leases(&self) -> RwLockReadGuard<'_, LeaseTable> {
        self.leases.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn leases_mut(&self) -> RwLockWriteGuard<'_, LeaseTable> {
        self.leases.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn serial(&self) -> MutexGuard<'_, ()> {
        self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn compaction_hashes(&self) -> MutexGuard<'_, CompactionHashes> {
        self.compaction_hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
    pub fn fetch(&self, rev: Revision) -> Result<KeyValue, StorageError> {
        match self.backend.get_rev(rev)? {
            Some(s) if !s.tombstone => Ok(s.kv),
            _ => Err(StorageError::Corrupt(format!(
                "index names revision {}.{} which holds no value",
                rev.main, rev.sub
            ))),
        }
    }
    pub fn signal_compactor(&self) {
        let _ = self
            .wake_compactor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(());
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.backend.flush();
    }
}

/// A read of the published state.
struct PublishedView<'a> {
    inner: &'a Inner,
    rev: i64,
    compact_rev: i64,
}

impl ReadView for PublishedView<'_> {
    fn rev(&self) -> i64 {
        self.rev
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
        self.inner.fetch(rev)
    }
}

/// One change in history, as a watch replays it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub revision: Revision,
    /// For a delete: the key and `mod_revision` only.
    pub kv: KeyValue,
    pub is_delete: bool,
}

/// etcd's MVCC store; cheap to clone, reads run concurrently with apply.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Rebuilds the key index and the lease table (whose attachments come from
/// each live key's newest value) in one pass over history.
fn rebuild_index(backend: &Backend) -> Result<(TreeIndex, LeaseTable), StorageError> {
    let mut index = TreeIndex::default();
    let mut attached: HashMap<Vec<u8>, i64> = HashMap::new();
    for item in backend.scan_revs(0, i64::MAX) {
        let (rev, stored) = item?;
        if stored.tombstone {
            index.tombstone(&stored.kv.key, rev);
            attached.remove(stored.kv.key.as_ref());
        } else {
            index.restore(
                &stored.kv.key,
                stored.kv.create_revision,
                rev,
                stored.kv.version,
            );
            if stored.kv.lease != 0 {
                attached.insert(stored.kv.key.to_vec(), stored.kv.lease);
            } else {
                attached.remove(stored.kv.key.as_ref());
            }
        }
    }
    let leases = LeaseTable::load(backend, attached)?;
    Ok((index, leases))
}

struct Meta {
    current: i64,
    scheduled: i64,
    finished: i64,
}

fn read_meta(backend: &Backend) -> Result<Meta, StorageError> {
    let scheduled = backend
        .get_i64(META_SCHEDULED_COMPACT)?
        .unwrap_or(NO_COMPACTION);
    Ok(Meta {
        current: backend
            .get_i64(META_CURRENT_REV)?
            .unwrap_or(INITIAL_REVISION)
            .max(scheduled),
        scheduled,
        finished: backend
            .get_i64(META_FINISHED_COMPACT)?
            .unwrap_or(NO_COMPACTION),
    })
}

impl Store {
    /// Open (or create) the store in `dir`, rebuild the key index and resume
    /// an unfinished compaction.
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        let backend = Backend::open(dir)?;
        if backend.contains(META_INSTALLING)? {
            tracing::warn!("torn snapshot install found; wiping the store");
            backend.clear_except(META_INSTALLING)?;
            let mut batch = WriteBatch::new();
            batch.remove(META_INSTALLING);
            backend.apply(batch)?;
            backend.flush()?;
        }
        let meta = read_meta(&backend)?;
        let (index, leases) = rebuild_index(&backend)?;
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            backend,
            index: RwLock::new(index),
            leases: RwLock::new(leases),
            current_rev: AtomicI64::new(meta.current),
            compact_rev: AtomicI64::new(meta.scheduled),
            finished_rev: AtomicI64::new(meta.finished),
            finished_tx: watch::Sender::new(meta.finished),
            serial: Mutex::new(()),
            gate: RwLock::new(()),
            snapshot_pauses: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            wake_compactor: Mutex::new(tx),
            compaction_hashes: Mutex::new(CompactionHashes::default()),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("mvcc-compactor".into())
            .spawn(move || compact::run(weak, rx))?;
        if meta.scheduled > meta.finished {
            inner.signal_compactor();
        }
        Ok(Store { inner })
    }

    pub fn current_revision(&self) -> i64 {
        self.inner.current_rev.load(Ordering::SeqCst)
    }

    /// -1 until the first compaction (as etcd reports it).
    pub fn compact_revision(&self) -> i64 {
        self.inner.compact_rev.load(Ordering::SeqCst)
    }

    fn gate(&self) -> RwLockReadGuard<'_, ()> {
        self.inner.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self) -> PublishedView<'_> {
        // Compact before current: see `Inner::current_rev`.
        let compact_rev = self.compact_revision();
        PublishedView {
            inner: &self.inner,
            rev: self.current_revision(),
            compact_rev,
        }
    }

    /// etcd Range on the published state (serializable read).
    ///
    /// Blocking hazard: this holds the std `gate` read lock for the whole
    /// scan (index walk and every sled fetch), and takes the std index lock
    /// inside it; both block the calling thread, they do not yield to an
    /// async runtime. Called on a tokio worker, that worker is stuck while
    /// (a) a compaction chunk holds the gate (one chunk, bounded by
    /// `compact::CHUNK_KEYS`), (b) a snapshot install holds it (the whole
    /// clear, refill and index rebuild: seconds on a big store), and (c)
    /// once such a writer is waiting, behind every in-flight scan, since
    /// std's `RwLock` queues new readers behind a waiting writer. With few
    /// workers a handful of concurrent large ranges during an install can
    /// park every worker, stalling unrelated tasks (Raft heartbeats, leases,
    /// watches). A large scan also holds off compaction and installs for its
    /// duration. Async callers should run big or unbounded ranges via
    /// `spawn_blocking` / `block_in_place`. The same applies to
    /// [`Store::txn_readonly`] and [`Store::changes`].
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        let _gate = self.gate();
        txn::range(&self.view(), req)
    }

    /// A Txn whose branches hold only reads ([`txn::is_txn_readonly`]),
    /// served from the published state without Raft, as etcd 3.5 does:
    /// compares, range checks and the chosen branch's ranges all at one
    /// published revision, with exactly the outcome and response of
    /// [`Applier::txn`] on that state (the same code runs both). As with
    /// [`Store::range`], linearizability is the caller's business.
    ///
    /// # Panics
    /// If `!is_txn_readonly(t)`: route other txns through Raft.
    pub fn txn_readonly(&self, t: &TxnRequest) -> Result<TxnResponse, ApplyError> {
        assert!(
            txn::is_txn_readonly(t),
            "txn_readonly called with a txn that is not read-only"
        );
        let _gate = self.gate();
        txn::txn_readonly(&self.view(), t)
    }

    /// Changes with `from <= main revision <= to` (clamped to the current
    /// revision), at most `limit` (0 = all), for watch catch-up.
    pub fn changes(&self, from: i64, to: i64, limit: usize) -> Result<Vec<Change>, ApplyError> {
        let _gate = self.gate();
        let view = self.view();
        if from < view.compact_rev {
            return Err(ApplyError::Compacted);
        }
        let to = to.min(view.rev);
        let mut out = Vec::new();
        for item in self.inner.backend.scan_revs(from, to.saturating_add(1)) {
            let (revision, stored) = item?;
            out.push(Change {
                revision,
                kv: stored.kv,
                is_delete: stored.tombstone,
            });
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// etcd's `HashKV(rev)` (0 = current revision): the hash etcd computes
    /// for the same history, and the current revision (for the response
    /// header). `rev` below the compact revision fails with
    /// [`ApplyError::Compacted`], above the current one with
    /// [`ApplyError::FutureRev`]; a hash kept from the compaction at `rev`
    /// is answered first, as etcd 3.5.5+ does. See `hash.rs`.
    ///
    /// Blocking: walks the key index and streams every revision ≤ `rev`
    /// from sled (physical compaction waits meanwhile; apply does not).
    /// Async callers run it on a blocking thread.
    pub fn hash_kv(&self, rev: i64) -> Result<(KvHash, i64), ApplyError> {
        hash::hash_kv(&self.inner, rev)
    }

    /// etcd's `Hash`: CRC32-Castagnoli over the store's replicated state at
    /// the current revision (every key revision as etcd's `key` bucket
    /// holds it after compaction, the leases, the compact revision), and
    /// that revision. Equal on members that applied the same entries;
    /// unlike etcd's it is not a hash of a whole bolt file, so it differs
    /// from etcd's value. Blocking, like [`Store::hash_kv`].
    pub fn hash(&self) -> Result<(u32, i64), StorageError> {
        hash::hash(&self.inner)
    }

    /// Whether lease `id` exists (granted and not revoked).
    pub fn lease_exists(&self, id: i64) -> Result<bool, StorageError> {
        Ok(self.inner.leases().contains(id))
    }

    /// Lease `id` with its attached keys, if it exists.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.inner.leases().get(id)
    }

    /// Every lease, by id.
    pub fn lease_records(&self) -> Vec<LeaseRecord> {
        self.inner.leases().records()
    }

    /// Start applying committed entries; only the Raft state machine calls
    /// this, one applier at a time, in log order.
    pub fn begin_apply(&self) -> Applier<'_> {
        let serial = self.inner.serial.lock().unwrap_or_else(|e| e.into_inner());
        Applier::new(&self.inner, serial)
    }

    pub fn applied_meta(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.backend.get(META_APPLIED)
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        self.inner.backend.flush()
    }

    pub fn size_on_disk(&self) -> i64 {
        self.inner.backend.size_on_disk()
    }

    /// Resolves once physical compaction at or above `rev` has finished
    /// (at once if no compaction at `rev` was ever applied).
    pub async fn wait_compacted(&self, rev: i64) {
        let mut rx = self.inner.finished_tx.subscribe();
        if rev > self.compact_revision() {
            return;
        }
        let _ = rx.wait_for(|f| *f >= rev).await;
    }

    /// A consistent logical snapshot at the current revision. Waits for a
    /// running applier to commit; does not block later ones. Compaction
    /// pauses until the snapshot is dropped.
    ///
    /// Called on the state-machine task between two applies, so it is kept
    /// cheap: it does not wait for readers or a compaction chunk (no gate),
    /// only records the revision, compact revision, applied meta and
    /// leases under `serial`. [`Snapshot::write_to`] waits for a chunk that
    /// was in flight here; that chunk compacts at or below the captured
    /// compact revision (a higher one is published only by a later commit,
    /// and a pass that loads it loads the pause count after it), so it
    /// removes nothing a read at or above that revision needs.
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let _serial = self.inner.serial.lock().unwrap_or_else(|e| e.into_inner());
        let guard = SnapshotPause::new(self.inner.clone());
        // Stable: an install bumps it only while holding `serial`.
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        // Leases are captured here, not streamed by `write_to`: lease records
        // are not versioned (a grant or a keep-alive does not make a
        // revision) and applies go on after this returns, so a later read of
        // the `l` keyspace would see leases from after `revision`, and sled
        // has no point-in-time read. Capturing them costs one scan of the
        // live leases, which is small next to the revisions, which are
        // immutable up to `revision` and do stream lazily.
        let lease_end = [LEASE_PREFIX + 1];
        let leases = self
            .inner
            .backend
            .scan(&[LEASE_PREFIX], &lease_end)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot {
            revision: self.current_revision(),
            compact_revision: self.compact_revision(),
            applied_meta: self.inner.backend.get(META_APPLIED)?,
            leases,
            epoch,
            pause: guard,
        })
    }

    /// Replace all state with a snapshot written by [`Snapshot::write_to`].
    ///
    /// openraft builds snapshots on another task, so a [`Snapshot`] may be
    /// streaming from sled while this runs. Waits (with applies blocked) for
    /// live snapshots to be dropped, up to `SNAPSHOT_DRAIN_TIMEOUT` (60 s), so a
    /// builder is not failed needlessly; a `Snapshot` still alive after that
    /// (or one that is never dropped: waiting forever would hang apply) is
    /// voided, its `write_to` fails with
    /// [`StorageError::SnapshotSuperseded`]. Either way no written snapshot
    /// mixes the old and the new state.
    pub fn install_snapshot(&self, r: &mut impl Read) -> Result<(), StorageError> {
        self.install_snapshot_within(r, SNAPSHOT_DRAIN_TIMEOUT)
    }

    fn install_snapshot_within(
        &self,
        r: &mut impl Read,
        drain: Duration,
    ) -> Result<(), StorageError> {
        let _serial = self.inner.serial.lock().unwrap_or_else(|e| e.into_inner());
        // No new snapshot can be captured while we hold `serial`. Wait
        // before taking the gate: a snapshot writer may need it for reading.
        let deadline = Instant::now() + drain;
        while self.inner.snapshot_pauses.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                tracing::warn!("installing a snapshot while a snapshot is being written; that snapshot is void");
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _gate = self.inner.gate.write().unwrap_or_else(|e| e.into_inner());
        // Before sled changes: a `Snapshot::write_to` that read any of the
        // changes below sees a new epoch at its final check.
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        let backend = &self.inner.backend;
        // Mark first, so a crash while replacing is seen at open as torn.
        let mut batch = WriteBatch::new();
        batch.insert(META_INSTALLING, b"1");
        backend.apply(batch)?;
        backend.flush()?;
        backend.clear_except(META_INSTALLING)?;

        let head = match read_record(r)? {
            SnapRecord::Header {
                magic,
                revision,
                compact_revision,
                applied_meta,
            } if magic == SNAPSHOT_MAGIC => (revision, compact_revision, applied_meta),
            _ => return Err(StorageError::Corrupt("not an mvcc snapshot".into())),
        };
        let (revision, compact_revision, applied_meta) = head;
        let mut batch = WriteBatch::new();
        let mut n = 0;
        loop {
            match read_record(r)? {
                SnapRecord::Header { .. } => {
                    return Err(StorageError::Corrupt("second snapshot header".into()))
                }
                SnapRecord::Lease { key, value } => batch.insert(&key, &value),
                SnapRecord::Rev { rev, value } => {
                    let rev = Revision::from_bytes(&rev)
                        .ok_or_else(|| StorageError::Corrupt("bad snapshot revision".into()))?;
                    batch.insert(&rev_key(rev), &value);
                }
                SnapRecord::End => break,
            }
            n += 1;
            if n % compact::CHUNK_KEYS == 0 {
                backend.apply(std::mem::take(&mut batch))?;
            }
        }
        batch.insert(META_CURRENT_REV, &encode_i64(revision));
        batch.insert(META_SCHEDULED_COMPACT, &encode_i64(compact_revision));
        batch.insert(META_FINISHED_COMPACT, &encode_i64(NO_COMPACTION));
        if let Some(m) = &applied_meta {
            batch.insert(META_APPLIED, m);
        }
        batch.remove(META_INSTALLING);
        backend.apply(batch)?;
        backend.flush()?;

        let (index, leases) = rebuild_index(backend)?;
        // Hashes of the replaced history mean nothing here (etcd's are of
        // its old backend too; ours are simply dropped).
        self.inner.compaction_hashes().clear();
        *self.inner.index_mut() = index;
        *self.inner.leases_mut() = leases;
        // Current before compact: see `Inner::current_rev`.
        self.inner.current_rev.store(revision, Ordering::SeqCst);
        self.inner
            .compact_rev
            .store(compact_revision, Ordering::SeqCst);
        self.inner
            .finished_rev
            .store(NO_COMPACTION, Ordering::SeqCst);
        // After the new compact revision: the compactor loads the epoch
        // before its target, so a target from before this install always
        // comes with a stale epoch and its pass restarts.
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        tracing::info!(revision, compact_revision, "mvcc snapshot installed");
        if compact_revision > NO_COMPACTION {
            self.inner.signal_compactor();
        }
        Ok(())
    }
}

/// Holds physical compaction off while alive (a snapshot, a hash).
pub(crate) struct SnapshotPause(Arc<Inner>);

impl SnapshotPause {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        inner.snapshot_pauses.fetch_add(1, Ordering::SeqCst);
        SnapshotPause(inner)
    }
}

impl Drop for SnapshotPause {
    fn drop(&mut self) {
        self.0.snapshot_pauses.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Snapshot stream records (bincode, one after another).
#[derive(Serialize, Deserialize)]
enum SnapRecord {
    Header {
        magic: String,
        revision: i64,
        compact_revision: i64,
        applied_meta: Option<Vec<u8>>,
    },
    Lease {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Rev {
        rev: Vec<u8>,
        value: Vec<u8>,
    },
    End,
}

fn codec(e: bincode::ErrorKind) -> StorageError {
    match e {
        bincode::ErrorKind::Io(e) => StorageError::Io(e),
        e => StorageError::Corrupt(format!("snapshot: {e}")),
    }
}

fn read_record(r: &mut impl Read) -> Result<SnapRecord, StorageError> {
    bincode::deserialize_from(r).map_err(|e| codec(*e))
}

/// What a snapshot stream holds, read without installing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub revision: i64,
    /// Key revisions (puts and tombstones) in the stream.
    pub revisions: u64,
    pub leases: u64,
}

/// Reads a stream written by [`Snapshot::write_to`] to its end record,
/// checking its shape as [`Store::install_snapshot`] does.
pub fn read_snapshot_summary(r: &mut impl Read) -> Result<SnapshotSummary, StorageError> {
    copy_snapshot(r, &mut std::io::sink(), None)
}

/// Copies a stream written by [`Snapshot::write_to`] to `w`, record by
/// record and checked as [`read_snapshot_summary`] does, with Raft's
/// applied meta in its header replaced by `applied_meta`. Returns what the
/// source held.
pub fn copy_snapshot(
    r: &mut impl Read,
    w: &mut impl Write,
    applied_meta: Option<Vec<u8>>,
) -> Result<SnapshotSummary, StorageError> {
    let mut put = |rec: &SnapRecord| bincode::serialize_into(&mut *w, rec).map_err(|e| codec(*e));
    let mut summary = match read_record(r)? {
        SnapRecord::Header {
            magic,
            revision,
            compact_revision,
            ..
        } if magic == SNAPSHOT_MAGIC => {
            put(&SnapRecord::Header {
                magic,
                revision,
                compact_revision,
                applied_meta,
            })?;
            SnapshotSummary {
                revision,
                revisions: 0,
                leases: 0,
            }
        }
        _ => return Err(StorageError::Corrupt("not an mvcc snapshot".into())),
    };
    loop {
        let rec = read_record(r)?;
        match &rec {
            SnapRecord::Header { .. } => {
                return Err(StorageError::Corrupt("second snapshot header".into()))
            }
            SnapRecord::Lease { .. } => summary.leases += 1,
            SnapRecord::Rev { rev, .. } => {
                Revision::from_bytes(rev)
                    .ok_or_else(|| StorageError::Corrupt("bad snapshot revision".into()))?;
                summary.revisions += 1;
            }
            SnapRecord::End => {}
        }
        put(&rec)?;
        if matches!(rec, SnapRecord::End) {
            return Ok(summary);
        }
    }
}

/// A logical snapshot at [`Snapshot::revision`]: the revisions at or below
/// it (immutable but for compaction, which pauses while this lives), the
/// compact revision, leases and Raft's applied meta as of that revision.
pub struct Snapshot {
    revision: i64,
    compact_revision: i64,
    applied_meta: Option<Vec<u8>>,
    leases: Vec<(Vec<u8>, Vec<u8>)>,
    /// `Inner::epoch` at capture; a different one means an install replaced
    /// the state this snapshot reads.
    epoch: u64,
    pause: SnapshotPause,
}

impl Snapshot {
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Raft's applied meta captured with the snapshot.
    pub fn applied_meta(&self) -> Option<&[u8]> {
        self.applied_meta.as_deref()
    }

    /// Leaves Raft's applied meta out of the stream: a backup restored into
    /// a new cluster starts a new log, so the old log position and
    /// membership must not come with it.
    pub fn without_applied_meta(mut self) -> Snapshot {
        self.applied_meta = None;
        self
    }

    /// Stream the snapshot; reads sled lazily, holds no lock but the read
    /// gate for a moment at the start.
    ///
    /// Fails with [`StorageError::SnapshotSuperseded`] (before writing the
    /// end record, so the stream is also unusable) if a snapshot install
    /// started since the capture: what was read may mix both states.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), StorageError> {
        // Wait out a compaction chunk that was running at capture (see
        // `Store::snapshot`); later chunks see the pause and wait.
        drop(self.pause.0.gate.read().unwrap_or_else(|e| e.into_inner()));
        self.check_epoch()?;
        let mut put =
            |rec: &SnapRecord| bincode::serialize_into(&mut *w, rec).map_err(|e| codec(*e));
        put(&SnapRecord::Header {
            magic: SNAPSHOT_MAGIC.into(),
            revision: self.revision,
            compact_revision: self.compact_revision,
            applied_meta: self.applied_meta.clone(),
        })?;
        for (key, value) in &self.leases {
            put(&SnapRecord::Lease {
                key: key.clone(),
                value: value.clone(),
            })?;
        }
        let start = rev_key(Revision::new(0, 0));
        let end = rev_key(Revision::new(self.revision + 1, 0));
        for item in self.pause.0.backend.scan(&start, &end) {
            let (k, value) = item?;
            put(&SnapRecord::Rev {
                rev: k[1..].to_vec(),
                value,
            })?;
        }
        // After the last sled read: an install that changed anything we
        // read had bumped the epoch before (see `install_snapshot_within`).
        self.check_epoch()?;
        put(&SnapRecord::End)
    }

    fn check_epoch(&self) -> Result<(), StorageError> {
        if self.pause.0.epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(StorageError::SnapshotSuperseded);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::txn::tests::{open, put};
    use crate::proto::etcdserverpb::{CompactionRequest, PutRequest};

    fn all(rev: i64) -> RangeRequest {
        RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        }
    }

    #[test]
    fn readers_never_see_an_uncommitted_applier() {
        let (_d, s) = open();
        put(&s, "a", "1");
        let reader = s.clone();
        let mut a = s.begin_apply();
        for i in 0..3 {
            a.put(&PutRequest {
                key: format!("k{i}").into(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .unwrap();
        }
        assert_eq!(a.current_revision(), 5);
        // Applier-internal reads see the pending puts, readers do not.
        assert_eq!(a.range(&all(0)).unwrap().count, 4);
        let seen = std::thread::scope(|sc| sc.spawn(|| reader.range(&all(0)).unwrap()).join());
        let seen = seen.unwrap();
        assert_eq!((seen.count, seen.header.unwrap().revision), (1, 2));
        a.set_applied_meta(b"idx-9".to_vec());
        a.commit().unwrap();
        assert_eq!(reader.range(&all(0)).unwrap().count, 4);
        assert_eq!(reader.current_revision(), 5);
        assert_eq!(reader.applied_meta().unwrap().unwrap(), b"idx-9");
    }

    /// Reads at or above the compact revision stay correct while writes and
    /// physical compaction run concurrently.
    #[test]
    fn concurrent_reads_writes_and_compaction() {
        let (_d, s) = open();
        for i in 0..2500 {
            put(&s, &format!("key{:05}", i % 1200), &i.to_string());
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            let reader = sc.spawn(|| {
                let mut ok = 0;
                while !stop.load(Ordering::SeqCst) {
                    let rev = s.compact_revision().max(1) + 1;
                    match s.range(&all(rev)) {
                        Ok(r) => {
                            assert!(r.kvs.iter().all(|kv| kv.mod_revision <= rev));
                            ok += 1;
                        }
                        Err(ApplyError::Compacted) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                ok
            });
            let mut last = 0;
            for round in 0..5 {
                for i in 0..200 {
                    put(&s, &format!("key{:05}", (round * 200 + i) % 1200), "w");
                }
                last = s.current_revision() - 100;
                let mut a = s.begin_apply();
                a.compact(&CompactionRequest {
                    revision: last,
                    physical: false,
                })
                .unwrap();
                a.commit().unwrap();
            }
            futures::executor::block_on(s.wait_compacted(last));
            stop.store(true, Ordering::SeqCst);
            assert!(reader.join().unwrap() > 0);
        });
        let r = s.range(&all(0)).unwrap();
        assert_eq!(r.count, 1200);
        // At most one stored value per key at or below the compact revision.
        let below = s
            .inner
            .backend
            .scan_revs(0, s.compact_revision() + 1)
            .count();
        assert!(below <= 1200, "{below}");
    }

    /// A revision-0 read racing a commit that compacts up to its own new
    /// revision never sees the new compact revision with the old current
    /// one (which would fail as "compacted").
    #[test]
    fn latest_read_never_fails_as_compacted() {
        let (_d, s) = open();
        put(&s, "a", "0");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            let reader = sc.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let v = s.view();
                    assert!(v.rev >= v.compact_rev, "{} < {}", v.rev, v.compact_rev);
                    if n.is_multiple_of(64) {
                        s.range(&all(0)).unwrap();
                    }
                    n += 1;
                }
                n
            });
            for i in 0..2000 {
                let mut a = s.begin_apply();
                a.put(&PutRequest {
                    key: b"a".to_vec(),
                    value: i.to_string().into(),
                    ..Default::default()
                })
                .unwrap();
                let rev = a.current_revision();
                a.compact(&CompactionRequest {
                    revision: rev,
                    physical: false,
                })
                .unwrap();
                a.commit().unwrap();
            }
            stop.store(true, Ordering::SeqCst);
            assert!(reader.join().unwrap() > 0);
        });
    }

    fn snapshot_bytes(s: &Store) -> Vec<u8> {
        let mut buf = vec![];
        s.snapshot().unwrap().write_to(&mut buf).unwrap();
        buf
    }

    /// A store at a state unlike `s`'s, as snapshot bytes.
    fn other_state() -> Vec<u8> {
        let (_d, o) = open();
        for i in 0..50 {
            put(&o, &format!("other{i}"), "o");
        }
        snapshot_bytes(&o)
    }

    /// An install waits for a snapshot being written on another thread; the
    /// written snapshot is the state it was captured at.
    #[test]
    fn install_waits_for_live_snapshot() {
        let (_d, s) = open();
        for i in 0..20 {
            put(&s, &format!("k{i}"), "v");
        }
        let want = s.range(&all(0)).unwrap();
        let other = other_state();
        let snap = s.snapshot().unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            let installer = sc.spawn(|| {
                s.install_snapshot(&mut other.as_slice()).unwrap();
                done.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!done.load(Ordering::SeqCst), "install did not wait");
            let mut buf = vec![];
            snap.write_to(&mut buf).unwrap();
            drop(snap);
            installer.join().unwrap();
            let (_d2, fresh) = open();
            fresh.install_snapshot(&mut buf.as_slice()).unwrap();
            assert_eq!(fresh.range(&all(0)).unwrap(), want);
        });
        assert_eq!(s.current_revision(), 51);
    }

    /// A writer that installs `other` into `store` on its `at`-th write:
    /// an install landing in the middle of `Snapshot::write_to`.
    struct InstallMidway<'a> {
        store: &'a Store,
        other: &'a [u8],
        writes: usize,
        at: usize,
        out: Vec<u8>,
    }

    impl Write for InstallMidway<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes += 1;
            if self.writes == self.at {
                self.store
                    .install_snapshot_within(&mut &self.other[..], Duration::ZERO)
                    .unwrap();
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A snapshot still alive when an install gives up waiting is void:
    /// `write_to` fails instead of streaming a mix of both states, whether
    /// the install came before or in the middle of the write.
    #[test]
    fn install_voids_live_snapshot() {
        let (_d, s) = open();
        for i in 0..200 {
            put(&s, &format!("k{i:03}"), "v");
        }
        let other = other_state();
        for at in [0, 1, 5, 40, 300] {
            let before = snapshot_bytes(&s);
            let snap = s.snapshot().unwrap();
            if at == 0 {
                s.install_snapshot_within(&mut other.as_slice(), Duration::ZERO)
                    .unwrap();
            }
            let mut w = InstallMidway {
                store: &s,
                other: &other,
                writes: 0,
                at,
                out: vec![],
            };
            let r = snap.write_to(&mut w);
            assert!(
                matches!(r, Err(StorageError::SnapshotSuperseded)),
                "at {at}: {r:?}"
            );
            drop(snap);
            assert_eq!(s.current_revision(), 51);
            // Back to the original state for the next round.
            s.install_snapshot(&mut before.as_slice()).unwrap();
            assert_eq!(s.current_revision(), 201);
        }
        // Without an install the snapshot is fine.
        let snap = s.snapshot().unwrap();
        let mut w = InstallMidway {
            store: &s,
            other: &other,
            writes: 0,
            at: usize::MAX,
            out: vec![],
        };
        snap.write_to(&mut w).unwrap();
    }

    /// Capture does not wait for an in-flight read (which holds the gate)
    /// and the snapshot stays exact at its revision while physical
    /// compaction and further applies (a higher compaction too) go on.
    #[test]
    fn cheap_capture_is_consistent() {
        let (_d, s) = open();
        for i in 0..3000 {
            let k = format!("key{:05}", i % 1300);
            if i % 7 == 3 {
                crate::mvcc::txn::tests::del(&s, &k, "");
            } else {
                put(&s, &k, &i.to_string());
            }
        }
        let compact = |s: &Store, rev| {
            let mut a = s.begin_apply();
            a.compact(&CompactionRequest {
                revision: rev,
                physical: false,
            })
            .unwrap();
            a.commit().unwrap();
        };
        let c = s.current_revision() - 500;
        let want: Vec<_> = (c..=s.current_revision())
            .map(|r| s.range(&all(r)).unwrap().kvs)
            .collect();
        compact(&s, c); // physical compaction starts in the background
        let reader = s.gate();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|sc| {
            sc.spawn(|| tx.send(s.snapshot().unwrap()).unwrap());
            let snap = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("capture waited for a reader");
            drop(reader);
            assert_eq!(snap.revision(), c + 500);
            for i in 0..300 {
                put(&s, &format!("key{:05}", i), "later");
            }
            compact(&s, s.current_revision());
            let mut buf = vec![];
            snap.write_to(&mut buf).unwrap();
            drop(snap);
            let (_d2, fresh) = open();
            fresh.install_snapshot(&mut buf.as_slice()).unwrap();
            assert_eq!(fresh.compact_revision(), c);
            futures::executor::block_on(fresh.wait_compacted(c));
            for (i, kvs) in want.iter().enumerate() {
                let r = c + i as i64;
                assert_eq!(&fresh.range(&all(r)).unwrap().kvs, kvs, "at {r}");
            }
        });
    }

    #[test]
    fn torn_install_is_wiped_at_open() {
        let (dir, s) = open();
        put(&s, "a", "1");
        let mut snap = vec![];
        s.snapshot().unwrap().write_to(&mut snap).unwrap();
        // Cut the stream short: the install fails half-way.
        let torn = &snap[..snap.len() - 3];
        assert!(s.install_snapshot(&mut &torn[..]).is_err());
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.current_revision(), 1);
        assert_eq!(s.range(&all(0)).unwrap().count, 0);
        assert_eq!(s.applied_meta().unwrap(), None);
        s.install_snapshot(&mut snap.as_slice()).unwrap();
        assert_eq!(s.current_revision(), 2);
        assert_eq!(&s.range(&all(0)).unwrap().kvs[0].value[..], b"1");
    }
}

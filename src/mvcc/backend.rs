//! The narrow interface between the MVCC store and sled: one sled tree with
//! prefixed keyspaces, so that one batch updates revisions, leases and meta
//! atomically. Applied batches are visible to readers at once and reach sled
//! a few milliseconds later, several applies to one `sled::Batch` (see
//! [`WRITE_BEHIND`]). Nothing above this file names a sled type — swapping
//! the engine means rewriting this file only.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use prost::Message;

use super::revision::Revision;
use super::StorageError;
use crate::proto::mvccpb::KeyValue;

/// Keyspace of revision-keyed values: `b'r' ++ revision(16 bytes)`.
pub const REV_PREFIX: u8 = b'r';
/// Keyspace of leases: `b'l' ++ lease id (8 bytes, big-endian)`.
pub const LEASE_PREFIX: u8 = b'l';
/// Keyspace of meta values: `b'm' ++ name`.
pub const META_PREFIX: u8 = b'm';

/// Meta: the store's current revision (8 bytes BE).
pub const META_CURRENT_REV: &[u8] = b"mcurrent_rev";
/// Meta: the latest compaction applied (8 bytes BE); reads below fail.
pub const META_SCHEDULED_COMPACT: &[u8] = b"mscheduled_compact";
/// Meta: the latest compaction whose physical removal finished (8 bytes BE).
pub const META_FINISHED_COMPACT: &[u8] = b"mfinished_compact";
/// Meta: the Raft layer's opaque applied state (last applied log id, ...).
pub const META_APPLIED: &[u8] = b"mapplied";
/// Meta: present while a snapshot is being installed; found at open, it
/// means the install was torn and the store is wiped.
pub const META_INSTALLING: &[u8] = b"minstalling";

/// sled's page cache; the OS page cache does the rest. 32 MiB, not 64:
/// after 200,000 puts of 256 B the member's RSS is 116 MiB instead of
/// 147 MiB, at the same write throughput (sled re-reads cold pages from the
/// OS page cache, as bbolt's mmap does for etcd).
const CACHE_CAPACITY: u64 = 32 * 1024 * 1024;

pub fn rev_key(rev: Revision) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = REV_PREFIX;
    k[1..].copy_from_slice(&rev.to_bytes());
    k
}

pub fn lease_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LEASE_PREFIX;
    k[1..].copy_from_slice(&(id as u64).to_be_bytes());
    k
}

pub fn encode_i64(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn decode_i64(b: &[u8]) -> Result<i64, StorageError> {
    let a: [u8; 8] = b
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("bad i64 of {} bytes", b.len())))?;
    Ok(i64::from_be_bytes(a))
}

/// A stored change: a value, or a tombstone (whose `KeyValue` carries only
/// the key and `mod_revision`).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub kv: KeyValue,
    pub tombstone: bool,
}

/// `[0 = put | 1 = tombstone] ++ prost(KeyValue)`.
pub fn encode_stored(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + kv.encoded_len());
    out.push(tombstone as u8);
    kv.encode(&mut out).expect("vec grows");
    out
}

pub fn decode_stored(b: &[u8]) -> Result<Stored, StorageError> {
    let (&flag, rest) = b
        .split_first()
        .ok_or_else(|| StorageError::Corrupt("empty revision value".into()))?;
    let kv = KeyValue::decode(rest).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    Ok(Stored {
        kv,
        tombstone: flag == 1,
    })
}

/// A set of writes applied atomically by [`Backend::apply`]; a later write
/// of a key in the same batch wins.
#[derive(Default)]
pub struct WriteBatch {
    writes: Vec<PendingWrite>,
}

impl WriteBatch {
    pub fn new() -> Self {
        WriteBatch::default()
    }
    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.writes.push((key.to_vec(), Some(value.to_vec())));
    }
    pub fn remove(&mut self, key: &[u8]) {
        self.writes.push((key.to_vec(), None));
    }
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// How often the writer thread hands applied batches to sled. Every
/// `sled::Tree::apply_batch` seals and writes sled's current log buffer
/// (twice: its atomic-batch marker rolls the buffer before and after), so
/// one sled batch per Raft apply cost a third of the server's CPU under a
/// one-client write load. Batches gathered over this interval go to sled as
/// one. Durability does not change: sled was never fsynced per apply (it
/// flushes every 500 ms); the WAL holds every entry until the store has
/// flushed it (`Backend::flush` before a snapshot lets the WAL be purged),
/// and a restart re-applies the entries after the store's applied index.
const WRITE_BEHIND: Duration = Duration::from_millis(20);
/// Pending bytes beyond which `apply` writes to sled itself (a snapshot
/// install, a burst larger than the writer keeps up with).
const MAX_PENDING_BYTES: usize = 32 << 20;

type Pending = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
/// A pending write: the value, or `None` for a removal.
type PendingWrite = (Vec<u8>, Option<Vec<u8>>);

/// Applied writes not yet in sled. Readers consult `active`, then
/// `flushing`, then sled: a write leaves `flushing` only after sled holds it.
#[derive(Default)]
struct Overlay {
    /// Applied since the last hand-off to sled; newest write of a key wins.
    active: Pending,
    active_bytes: usize,
    /// Being written to sled by the flush in progress (empty when none).
    flushing: Arc<Pending>,
}

struct Shared {
    tree: sled::Tree,
    overlay: RwLock<Overlay>,
    /// One flush at a time, so that sled receives batches in apply order.
    flush_lock: Mutex<()>,
    /// Set when sled failed to take a batch: the store is unusable (as a
    /// failed `apply_batch` made it before), every later write fails.
    failed: Mutex<Option<String>>,
    /// (dirty, stop) for the writer thread.
    signal: Mutex<(bool, bool)>,
    wake: Condvar,
}

impl Shared {
    fn check_failed(&self) -> Result<(), StorageError> {
        match &*lock(&self.failed) {
            Some(e) => Err(StorageError::Corrupt(format!(
                "an earlier write to sled failed: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// Moves the pending writes into sled as one atomic batch.
    fn flush_pending(&self) -> Result<(), StorageError> {
        let _one = lock(&self.flush_lock);
        self.check_failed()?;
        let set = {
            let mut o = write(&self.overlay);
            if o.active.is_empty() {
                return Ok(());
            }
            let set = Arc::new(std::mem::take(&mut o.active));
            o.active_bytes = 0;
            o.flushing = set.clone();
            set
        };
        let mut batch = sled::Batch::default();
        for (k, v) in set.iter() {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        match self.tree.apply_batch(batch) {
            Ok(()) => {
                let done = std::mem::take(&mut write(&self.overlay).flushing);
                drop(set);
                drop(done); // freed outside the lock
                Ok(())
            }
            Err(e) => {
                // `flushing` stays: reads still see what was applied.
                *lock(&self.failed) = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    /// The pending write of `key`, if any (`Some(None)`: removed).
    fn pending(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let o = read(&self.overlay);
        o.active.get(key).or_else(|| o.flushing.get(key)).cloned()
    }

    fn writer(self: Arc<Self>) {
        loop {
            {
                let mut s = lock(&self.signal);
                while !s.0 && !s.1 {
                    s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                if s.1 {
                    return;
                }
                // Gather more applies; a stop cuts the wait short.
                let (g, _) = self
                    .wake
                    .wait_timeout_while(s, WRITE_BEHIND, |s| !s.1)
                    .unwrap_or_else(|e| e.into_inner());
                s = g;
                s.0 = false;
            }
            if let Err(e) = self.flush_pending() {
                tracing::error!(error = %e, "writing applied state to sled failed");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// The sled database and the one tree the store uses, with applied writes
/// handed to sled in the background (see [`WRITE_BEHIND`]).
pub struct Backend {
    db: sled::Db,
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Open sled in `dir`. sled holds a file lock while any handle lives; a
    /// store just dropped may still be released by its compactor thread
    /// (which finishes at most one chunk), so a held lock is retried for a
    /// few seconds before giving up.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let config = sled::Config::new().path(dir).cache_capacity(CACHE_CAPACITY);
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if attempts < 100 && e.to_string().contains("could not acquire lock") =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let tree = db.open_tree("mvcc")?;
        let shared = Arc::new(Shared {
            tree,
            overlay: RwLock::default(),
            flush_lock: Mutex::new(()),
            failed: Mutex::new(None),
            signal: Mutex::new((false, false)),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("sled-writer".into())
            .spawn(move || s.writer())?;
        Ok(Backend {
            db,
            shared,
            writer: Some(writer),
        })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(v) = self.shared.pending(key) {
            return Ok(v);
        }
        Ok(self.shared.tree.get(key)?.map(|v| v.to_vec()))
    }

    pub fn get_i64(&self, key: &[u8]) -> Result<Option<i64>, StorageError> {
        self.get(key)?.map(|v| decode_i64(&v)).transpose()
    }

    pub fn contains(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.get(key)?.is_some())
    }

    /// The stored change at `rev`.
    pub fn get_rev(&self, rev: Revision) -> Result<Option<Stored>, StorageError> {
        self.get(&rev_key(rev))?
            .map(|v| decode_stored(&v))
            .transpose()
    }

    /// Key/value pairs in `[start, end)`, ascending, lazily. The pending
    /// writes in the range are captured when this is called and override
    /// what sled yields for the same keys.
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> {
        let range = start.to_vec()..end.to_vec();
        let pending: Vec<PendingWrite> = {
            let o = read(&self.shared.overlay);
            // (BTreeMap::range panics on an inverted range; sled's is empty.)
            if start >= end || (o.active.is_empty() && o.flushing.is_empty()) {
                Vec::new()
            } else {
                let mut m: Pending = o
                    .flushing
                    .range(range.clone())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, v) in o.active.range(range.clone()) {
                    m.insert(k.clone(), v.clone());
                }
                m.into_iter().collect()
            }
        };
        Merge {
            sled: self.shared.tree.range(range).peekable(),
            pending: pending.into_iter().peekable(),
        }
    }

    /// Stored changes with `from <= rev.main < to`, ascending.
    pub fn scan_revs(
        &self,
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = Result<(Revision, Stored), StorageError>> {
        let start = rev_key(Revision::new(from.max(0), 0));
        let end = rev_key(Revision::new(to.max(0), 0));
        self.scan(&start, &end).map(|r| {
            let (k, v) = r?;
            let rev = Revision::from_bytes(&k[1..])
                .ok_or_else(|| StorageError::Corrupt("bad revision key".into()))?;
            Ok((rev, decode_stored(&v)?))
        })
    }

    /// Applies `batch` atomically: readers see all of it or none, and sled
    /// receives it whole, in apply order (see [`WRITE_BEHIND`]).
    pub fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if batch.writes.is_empty() {
            return Ok(());
        }
        self.shared.check_failed()?;
        let (was_idle, full) = {
            let mut o = write(&self.shared.overlay);
            let was_idle = o.active.is_empty();
            for (k, v) in batch.writes {
                o.active_bytes += k.len() + v.as_ref().map_or(0, Vec::len);
                o.active.insert(k, v);
            }
            (was_idle, o.active_bytes > MAX_PENDING_BYTES)
        };
        if full {
            self.shared.flush_pending()?;
        } else if was_idle {
            lock(&self.shared.signal).0 = true;
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Remove every key but `keep`, in bounded batches (snapshot install).
    pub fn clear_except(&self, keep: &[u8]) -> Result<(), StorageError> {
        self.shared.flush_pending()?;
        let tree = &self.shared.tree;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for k in tree.iter().keys() {
                let k = k?;
                if k != keep {
                    batch.remove(k);
                    n += 1;
                    if n == 1000 {
                        break;
                    }
                }
            }
            if n == 0 {
                return Ok(());
            }
            tree.apply_batch(batch)?;
        }
    }

    /// Hands every applied write to sled and makes sled durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.shared.flush_pending()?;
        self.db.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> i64 {
        self.db.size_on_disk().map(|n| n as i64).unwrap_or(0)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        lock(&self.shared.signal).1 = true;
        self.shared.wake.notify_one();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Err(e) = self.shared.flush_pending() {
            tracing::error!(error = %e, "writing applied state to sled at close failed");
        }
    }
}

/// sled's range merged with the pending writes captured for it.
struct Merge<I: Iterator> {
    sled: std::iter::Peekable<I>,
    pending: std::iter::Peekable<std::vec::IntoIter<PendingWrite>>,
}

impl<I> Iterator for Merge<I>
where
    I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
{
    type Item = Result<(Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_pending = match (self.sled.peek(), self.pending.peek()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(Err(_)), Some(_)) => false,
                (Some(Ok((sk, _))), Some((pk, _))) => match pk.as_slice().cmp(sk.as_ref()) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => {
                        // The pending write is newer than sled's copy.
                        self.sled.next();
                        true
                    }
                    std::cmp::Ordering::Greater => false,
                },
            };
            if take_pending {
                match self.pending.next() {
                    Some((k, Some(v))) => return Some(Ok((k, v))),
                    Some((_, None)) => continue, // removed
                    None => unreachable!("peeked"),
                }
            }
            return self
                .sled
                .next()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_all(b: &Backend) -> Vec<(Vec<u8>, Vec<u8>)> {
        b.scan(&[], &[0xff]).collect::<Result<_, _>>().unwrap()
    }

    fn sled_only(b: &Backend) -> Vec<(Vec<u8>, Vec<u8>)> {
        b.shared
            .tree
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect()
    }

    #[test]
    fn applied_writes_are_read_before_and_after_they_reach_sled() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let mut w = WriteBatch::new();
        w.insert(b"a", b"1");
        w.insert(b"b", b"2");
        b.apply(w).unwrap();
        b.shared.flush_pending().unwrap();
        let mut w = WriteBatch::new();
        w.remove(b"a");
        w.insert(b"b", b"3");
        w.insert(b"c", b"4");
        b.apply(w).unwrap();
        // Not in sled yet (unless the writer already ran): reads agree either way.
        let want = vec![
            (b"b".to_vec(), b"3".to_vec()),
            (b"c".to_vec(), b"4".to_vec()),
        ];
        assert_eq!(b.get(b"a").unwrap(), None);
        assert_eq!(b.get(b"b").unwrap(), Some(b"3".to_vec()));
        assert_eq!(scan_all(&b), want);
        b.flush().unwrap();
        assert_eq!(sled_only(&b), want);
        assert_eq!(scan_all(&b), want);
    }

    #[test]
    fn the_writer_hands_writes_to_sled_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let mut w = WriteBatch::new();
        w.insert(b"k", b"v");
        b.apply(w).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sled_only(&b).is_empty() {
            assert!(std::time::Instant::now() < deadline, "writer never ran");
            std::thread::sleep(WRITE_BEHIND);
        }
        assert_eq!(sled_only(&b), vec![(b"k".to_vec(), b"v".to_vec())]);
    }

    #[test]
    fn pending_writes_survive_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Backend::open(dir.path()).unwrap();
            for i in 0..100u8 {
                let mut w = WriteBatch::new();
                w.insert(&[i], &[i, i]);
                b.apply(w).unwrap();
            }
        }
        let b = Backend::open(dir.path()).unwrap();
        assert_eq!(scan_all(&b).len(), 100);
        assert_eq!(sled_only(&b).len(), 100);
        assert_eq!(b.get(&[7]).unwrap(), Some(vec![7, 7]));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Del(u8),
        /// Ends the current batch.
        Apply,
        /// Hands what is pending to sled.
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..24, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0u8..24).prop_map(Op::Del),
            2 => Just(Op::Apply),
            1 => Just(Op::Flush),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever mix of pending and flushed writes, reads equal a plain
        /// map that took every applied batch.
        #[test]
        fn reads_equal_a_model(ops in proptest::collection::vec(op(), 1..80),
                               lo in 0u8..24, hi in 0u8..25) {
            let dir = tempfile::tempdir().unwrap();
            let b = Backend::open(dir.path()).unwrap();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut batch = WriteBatch::new();
            let mut staged: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        batch.insert(&[k], &[v]);
                        staged.push((vec![k], Some(vec![v])));
                    }
                    Op::Del(k) => {
                        batch.remove(&[k]);
                        staged.push((vec![k], None));
                    }
                    Op::Apply => {
                        b.apply(std::mem::take(&mut batch)).unwrap();
                        for (k, v) in staged.drain(..) {
                            match v {
                                Some(v) => model.insert(k, v),
                                None => model.remove(&k),
                            };
                        }
                    }
                    Op::Flush => b.shared.flush_pending().unwrap(),
                }
                for k in 0u8..24 {
                    prop_assert_eq!(b.get(&[k]).unwrap(), model.get(&vec![k]).cloned());
                }
                let got: Vec<_> = b.scan(&[lo], &[hi]).collect::<Result<_, _>>().unwrap();
                let want: Vec<_> = model
                    .range(vec![lo]..vec![hi.max(lo)])
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}

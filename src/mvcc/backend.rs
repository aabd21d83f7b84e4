//! The narrow interface between the MVCC store and sled: one sled tree with
//! prefixed keyspaces, so that one batch updates revisions, leases and meta
//! atomically. Applied batches are visible to readers at once and reach sled
//! a few milliseconds later, several applies to one `sled::Batch` (see
//! [`WRITE_BEHIND`]). Nothing above this file names a sled type — swapping
//! the engine means rewriting this file only.
//!
//! Revisions reach sled packed in blocks (see [`BLOCK_FLAG`]): the keys and
//! values above this file are one per revision, sled holds one key per
//! block of consecutive revisions.

use std::collections::BTreeMap;
use std::ops::Bound;
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

/// First byte of a sled value in the revision keyspace that holds a block
/// of revisions rather than one. Every sled insert copies the leaf node it
/// lands in, so one sled key per revision made sled the largest cost of a
/// write after HTTP/2 (a quarter of the server's CPU under txn-put). The
/// revisions handed to sled together are packed into blocks instead:
///
/// ```text
/// sled key:   'r' ++ last revision of the block (16 bytes)
/// sled value: BLOCK_FLAG ++ n (u32 LE)
///             ++ n x (revision (16 bytes) ++ end of its value (u32 LE))
///             ++ the n values, concatenated
/// ```
///
/// Blocks never overlap, so the block holding revision `r` is the first
/// sled key `>= 'r' ++ r`. A sled value there not starting with this flag
/// is a single revision stored as such by an older version (its first byte
/// is a tombstone flag, 0 or 1), read as a block of one.
const BLOCK_FLAG: u8 = 2;
/// Bounds of one block: a read of one old revision reads its whole block
/// from sled, and a compaction rewrites the blocks it removes from.
#[cfg(not(test))]
const MAX_BLOCK_ENTRIES: usize = 128;
#[cfg(test)]
const MAX_BLOCK_ENTRIES: usize = 4;
/// Encoded size beyond which a block takes no more revisions (one larger
/// value makes a block of its own). A sled leaf holds up to 17 entries and
/// is written inline while under 128 KiB (a quarter of sled's segment);
/// with blocks of 64 KiB, leaves went far past that and sled's flush at
/// close hung in our micro-benchmark. 6 KiB keeps a leaf of blocks inline,
/// as a leaf of single revisions of 256 B was.
const MAX_BLOCK_BYTES: usize = 6 * 1024;
const REV_LEN: usize = 16;
const BLOCK_HEADER: usize = 1 + 4;
const BLOCK_SLOT: usize = REV_LEN + 4;
/// The end of the revision keyspace.
const REV_END: [u8; 1] = [REV_PREFIX + 1];

fn is_rev_space(key: &[u8]) -> bool {
    key.first() == Some(&REV_PREFIX)
}

/// `entries` (revision keys, ascending, each `'r' ++ 16 bytes`) as one
/// block value.
fn encode_block(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let data: usize = entries.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(BLOCK_HEADER + entries.len() * BLOCK_SLOT + data);
    out.push(BLOCK_FLAG);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let mut end = 0u32;
    for (k, v) in entries {
        debug_assert_eq!(k.len(), 1 + REV_LEN, "revision keys only");
        end += v.len() as u32;
        out.extend_from_slice(&k[1..]);
        out.extend_from_slice(&end.to_le_bytes());
    }
    for (_, v) in entries {
        out.extend_from_slice(v);
    }
    out
}

/// A block value as stored in sled, checked on parse.
struct Block<'a> {
    table: &'a [u8],
    data: &'a [u8],
}

impl<'a> Block<'a> {
    fn parse(v: &'a [u8]) -> Result<Block<'a>, StorageError> {
        let bad = || StorageError::Corrupt(format!("bad revision block of {} bytes", v.len()));
        let block = Block::split(v).ok_or_else(bad)?;
        // Offsets ascend and the last one ends the data.
        let mut prev = 0;
        for i in 0..block.len() {
            let end = block.end(i);
            if end < prev {
                return Err(bad());
            }
            prev = end;
        }
        if prev != block.data.len() {
            return Err(bad());
        }
        Ok(block)
    }

    /// The table and data of `v`, offsets not checked.
    fn split(v: &'a [u8]) -> Option<Block<'a>> {
        if v.len() < BLOCK_HEADER || v[0] != BLOCK_FLAG {
            return None;
        }
        let n = u32::from_le_bytes(v[1..5].try_into().expect("4 bytes")) as usize;
        let table_end = n
            .checked_mul(BLOCK_SLOT)
            .and_then(|t| t.checked_add(BLOCK_HEADER))
            .filter(|&t| t <= v.len() && n > 0)?;
        Some(Block {
            table: &v[BLOCK_HEADER..table_end],
            data: &v[table_end..],
        })
    }

    fn len(&self) -> usize {
        self.table.len() / BLOCK_SLOT
    }

    fn rev(&self, i: usize) -> &'a [u8] {
        &self.table[i * BLOCK_SLOT..i * BLOCK_SLOT + REV_LEN]
    }

    fn end(&self, i: usize) -> usize {
        let at = i * BLOCK_SLOT + REV_LEN;
        u32::from_le_bytes(self.table[at..at + 4].try_into().expect("4 bytes")) as usize
    }

    fn value(&self, i: usize) -> &'a [u8] {
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        &self.data[start..self.end(i)]
    }

    /// The position of revision key `key` (`'r' ++ 16 bytes`), if held here.
    fn find(&self, key: &[u8]) -> Option<usize> {
        let rev = key.get(1..)?;
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.rev(mid).cmp(rev) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The value at `i`, if its offsets lie within the data.
    fn checked_value(&self, i: usize) -> Option<&'a [u8]> {
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        self.data.get(start..self.end(i))
    }

    /// Every (revision key, value), ascending.
    fn entries(&self) -> impl Iterator<Item = (Vec<u8>, &'a [u8])> + '_ {
        (0..self.len()).map(|i| {
            let mut k = Vec::with_capacity(1 + REV_LEN);
            k.push(REV_PREFIX);
            k.extend_from_slice(self.rev(i));
            (k, self.value(i))
        })
    }
}

/// A key and its value.
type Entry = (Vec<u8>, Vec<u8>);

/// The revisions a sled entry of the revision keyspace holds: a block's, or
/// the one an older version stored under its own key.
fn physical_entries(key: &[u8], value: &[u8]) -> Result<Vec<Entry>, StorageError> {
    if value.first() == Some(&BLOCK_FLAG) {
        let b = Block::parse(value)?;
        Ok(b.entries().map(|(k, v)| (k, v.to_vec())).collect())
    } else {
        Ok(vec![(key.to_vec(), value.to_vec())])
    }
}

/// The value of revision key `key` in the sled entry `(pk, pv)` of the
/// revision keyspace, the first at or past `key`.
fn held(pk: &[u8], pv: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
    if pv.first() == Some(&BLOCK_FLAG) {
        // Only the offsets of the value read are checked: a lookup need not
        // walk the whole table.
        let bad = || StorageError::Corrupt(format!("bad revision block of {} bytes", pv.len()));
        let block = Block::split(pv).ok_or_else(bad)?;
        match block.find(key) {
            Some(i) => Ok(Some(block.checked_value(i).ok_or_else(bad)?.to_vec())),
            None => Ok(None),
        }
    } else {
        Ok((pk == key).then(|| pv.to_vec()))
    }
}

/// What a flush does to sled: the batch, and the block keys it removes and
/// inserts (for [`Shared::blocks`]).
#[derive(Default)]
struct Physical {
    batch: sled::Batch,
    removed: Vec<Vec<u8>>,
    inserted: Vec<Vec<u8>>,
}

impl Physical {
    /// Packs ascending revision entries into blocks within the bounds, each
    /// under its last revision.
    fn pack(&mut self, entries: &[(&[u8], &[u8])]) {
        let mut start = 0;
        let mut bytes = BLOCK_HEADER;
        for (i, (_, v)) in entries.iter().enumerate() {
            let size = BLOCK_SLOT + v.len();
            if i > start && (i - start == MAX_BLOCK_ENTRIES || bytes + size > MAX_BLOCK_BYTES) {
                self.block(&entries[start..i]);
                start = i;
                bytes = BLOCK_HEADER;
            }
            bytes += size;
        }
        if start < entries.len() {
            self.block(&entries[start..]);
        }
    }

    fn block(&mut self, entries: &[(&[u8], &[u8])]) {
        let last = entries[entries.len() - 1].0;
        self.batch.insert(last, encode_block(entries));
        self.inserted.push(last.to_vec());
    }
}

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
    /// The sled keys of the revision keyspace (blocks, and single revisions
    /// of older versions), so that reading one revision is a `get` of the
    /// first key at or past it: a sled range iterator copies a whole node
    /// to start (an eighth of the server's CPU under ranges of 1,000 keys
    /// when each revision was found that way). Updated after sled takes a
    /// flush and before its writes leave the overlay.
    blocks: RwLock<std::collections::BTreeSet<Vec<u8>>>,
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
        let written = self.physical_batch(&set).and_then(|p| {
            self.tree.apply_batch(p.batch)?;
            Ok((p.removed, p.inserted))
        });
        match written {
            Ok((removed, inserted)) => {
                {
                    let mut blocks = write(&self.blocks);
                    for k in removed {
                        blocks.remove(&k);
                    }
                    blocks.extend(inserted);
                }
                let done = std::mem::take(&mut write(&self.overlay).flushing);
                drop(set);
                drop(done); // freed outside the lock
                Ok(())
            }
            Err(e) => {
                // `flushing` stays: reads still see what was applied.
                *lock(&self.failed) = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The sled batch that stores `set`: keys outside the revision keyspace
    /// as they are; revisions packed into blocks (see [`BLOCK_FLAG`]). New
    /// revisions, past every stored one, make new blocks; a write that falls
    /// into a stored block (a compaction's removal) rewrites that block.
    fn physical_batch(&self, set: &Pending) -> Result<Physical, StorageError> {
        let mut out = Physical::default();
        let mut revs = Vec::new();
        for (k, v) in set {
            if is_rev_space(k) {
                revs.push((k, v));
            } else {
                match v {
                    Some(v) => out.batch.insert(k.as_slice(), v.as_slice()),
                    None => out.batch.remove(k.as_slice()),
                }
            }
        }
        if revs.is_empty() {
            return Ok(out);
        }
        // (`blocks` lists sled's revision keys: only flushes, one at a
        // time, change them.)
        let last_stored = read(&self.blocks).last().cloned();
        // Stored blocks that writes fall into, by sled key: their entries
        // with the writes applied.
        let mut touched: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        // The block the previous write fell into: (first key, sled key).
        let mut cur: Option<(Vec<u8>, Vec<u8>)> = None;
        // Inserts between stored blocks (none in practice: revisions only
        // grow), each stored as a block of its own.
        let mut between: Vec<(&[u8], &[u8])> = Vec::new();
        let mut fresh: Vec<(&[u8], &[u8])> = Vec::new();
        for (k, v) in revs {
            if last_stored.as_ref().is_none_or(|l| k > l) {
                if let Some(v) = v {
                    fresh.push((k, v));
                }
                continue;
            }
            let in_cur = cur
                .as_ref()
                .is_some_and(|(first, last)| k >= first && k <= last);
            if !in_cur {
                // The first sled key >= k is the block holding k, if any.
                let found = self.tree.range(k.as_slice()..&REV_END[..]).next();
                let Some((pk, pv)) = found.transpose()? else {
                    return Err(StorageError::Corrupt(format!(
                        "no revision block at or past {k:x?}, below the last one listed"
                    )));
                };
                let entries = physical_entries(&pk, &pv)?;
                let first = entries[0].0.clone();
                if *k < first {
                    if let Some(v) = v {
                        between.push((k, v));
                    }
                    continue;
                }
                touched.insert(pk.to_vec(), entries.into_iter().collect());
                cur = Some((first, pk.to_vec()));
            }
            let (_, pk) = cur.as_ref().expect("set above");
            let entries = touched.get_mut(pk).expect("touched above");
            match v {
                Some(v) => entries.insert(k.clone(), v.clone()),
                None => entries.remove(k),
            };
        }
        for (pk, entries) in &touched {
            out.batch.remove(pk.as_slice());
            out.removed.push(pk.clone());
            let entries: Vec<_> = entries
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            out.pack(&entries);
        }
        for one in between {
            out.pack(&[one]);
        }
        out.pack(&fresh);
        Ok(out)
    }

    /// The stored value of revision key `key`, not looking at the overlay
    /// (the caller did, before this).
    fn get_rev_key(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let block = read(&self.blocks)
            .range::<[u8], _>((Bound::Included(key), Bound::Unbounded))
            .next()
            .cloned();
        // None: no stored block reaches `key`; one flushed meanwhile holds
        // only revisions the overlay still has.
        let Some(pk) = block else { return Ok(None) };
        match self.tree.get(&pk)? {
            Some(pv) => held(&pk, &pv, key),
            // Rewritten since we looked (a compaction's removal): search.
            None => match self.tree.range(key..&REV_END[..]).next().transpose()? {
                Some((pk, pv)) => held(&pk, &pv, key),
                None => Ok(None),
            },
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
        let mut blocks = std::collections::BTreeSet::new();
        for item in tree.range(&[REV_PREFIX][..]..&REV_END[..]) {
            blocks.insert(item?.0.to_vec());
        }
        let shared = Arc::new(Shared {
            tree,
            overlay: RwLock::default(),
            blocks: RwLock::new(blocks),
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
        if is_rev_space(key) {
            return self.shared.get_rev_key(key);
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
        // The block holding the revisions just before `end` is keyed at or
        // past `end`: read on to the end of the revision keyspace.
        let phys_end = if start < &REV_END[..] && end > &[REV_PREFIX][..] && end < &REV_END[..] {
            REV_END.to_vec()
        } else {
            end.to_vec()
        };
        let sled = Logical {
            phys: self.shared.tree.range(range.start.clone()..phys_end),
            start: range.start,
            end: range.end,
            ready: std::collections::VecDeque::new(),
            done: false,
        };
        Merge {
            sled: sled.peekable(),
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
        // No flush reads or changes the revision blocks meanwhile.
        let _one = lock(&self.shared.flush_lock);
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
                // (Until now a read of a removed block's key fell back to
                // searching sled.)
                write(&self.shared.blocks).retain(|k| k == keep);
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
    I: Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>>,
{
    type Item = Result<(Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_pending = match (self.sled.peek(), self.pending.peek()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(Err(_)), Some(_)) => false,
                (Some(Ok((sk, _))), Some((pk, _))) => match pk.cmp(sk) {
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
            return self.sled.next();
        }
    }
}

/// sled's entries in `[start, end)` with revision blocks unpacked.
struct Logical {
    phys: sled::Iter,
    start: Vec<u8>,
    end: Vec<u8>,
    /// Unpacked revisions not yet yielded.
    ready: std::collections::VecDeque<Entry>,
    done: bool,
}

impl Iterator for Logical {
    type Item = Result<(Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(kv) = self.ready.pop_front() {
                return Some(Ok(kv));
            }
            if self.done {
                return None;
            }
            let (k, v) = match self.phys.next()? {
                Ok(kv) => kv,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            };
            if k.as_ref() >= self.end.as_slice() {
                // Past the end; a block keyed here may still hold some
                // revisions before it, and no later entry does.
                self.done = true;
                if !is_rev_space(&k) {
                    continue;
                }
            }
            if !is_rev_space(&k) {
                return Some(Ok((k.to_vec(), v.to_vec())));
            }
            match physical_entries(&k, &v) {
                Ok(entries) => {
                    let (start, end) = (&self.start, &self.end);
                    self.ready.extend(
                        entries
                            .into_iter()
                            .filter(|(ek, _)| ek >= start && ek < end),
                    );
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
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
        Put(Vec<u8>, Vec<u8>),
        Del(Vec<u8>),
        /// Ends the current batch.
        Apply,
        /// Hands what is pending to sled.
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..24, any::<u8>()).prop_map(|(k, v)| Op::Put(vec![k], vec![v])),
            2 => (0u8..24).prop_map(|k| Op::Del(vec![k])),
            2 => Just(Op::Apply),
            1 => Just(Op::Flush),
        ]
    }

    /// Writes gathered in a batch and, once the batch is applied, in the
    /// model the backend is checked against.
    #[derive(Default)]
    struct Staged {
        batch: WriteBatch,
        writes: Vec<PendingWrite>,
    }

    impl Staged {
        fn run(&mut self, op: Op, b: &Backend, model: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
            match op {
                Op::Put(k, v) => {
                    self.batch.insert(&k, &v);
                    self.writes.push((k, Some(v)));
                }
                Op::Del(k) => {
                    self.batch.remove(&k);
                    self.writes.push((k, None));
                }
                Op::Apply => {
                    b.apply(std::mem::take(&mut self.batch)).unwrap();
                    for (k, v) in self.writes.drain(..) {
                        match v {
                            Some(v) => model.insert(k, v),
                            None => model.remove(&k),
                        };
                    }
                }
                Op::Flush => b.shared.flush_pending().unwrap(),
            }
        }
    }

    type Model = BTreeMap<Vec<u8>, Vec<u8>>;

    /// Runs `ops` on a fresh backend and on a model, and `check`s the two
    /// after every op.
    fn run_against_model(
        ops: Vec<Op>,
        check: impl Fn(&Backend, &Model) -> Result<(), TestCaseError>,
    ) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let mut model = Model::new();
        let mut staged = Staged::default();
        for op in ops {
            staged.run(op, &b, &mut model);
            check(&b, &model)?;
        }
        Ok(())
    }

    /// The model's pairs in `[start, end)` (none when `start >= end`).
    fn model_range(model: &Model, start: &[u8], end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        if start >= end {
            return Vec::new();
        }
        model
            .range(start.to_vec()..end.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn rk(rev: u8) -> Vec<u8> {
        rev_key(Revision::new(rev as i64, 0)).to_vec()
    }

    /// Revisions 0..40 (values as stored: a tombstone flag and a byte), and
    /// now and then a key on either side of the revision keyspace.
    fn rev_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..40, any::<u8>()).prop_map(|(r, v)| Op::Put(rk(r), vec![0, v])),
            2 => (0u8..40).prop_map(|r| Op::Del(rk(r))),
            1 => (any::<bool>(), any::<u8>()).prop_map(|(hi, v)| {
                let k = if hi { vec![REV_PREFIX + 1, v] } else { vec![META_PREFIX, v] };
                Op::Put(k, vec![v])
            }),
            2 => Just(Op::Apply),
            2 => Just(Op::Flush),
        ]
    }

    #[test]
    fn revisions_are_stored_in_blocks_and_read_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        for r in 1..=10u8 {
            batch.insert(&rk(r), &[0, r]);
        }
        b.apply(batch).unwrap();
        b.flush().unwrap();
        // Ten revisions, blocks of at most MAX_BLOCK_ENTRIES (4 in tests),
        // keyed by their last revision.
        let keys: Vec<Vec<u8>> = sled_only(&b).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![rk(4), rk(8), rk(10)]);
        for r in 1..=10u8 {
            assert_eq!(b.get(&rk(r)).unwrap(), Some(vec![0, r]));
        }
        assert_eq!(b.get(&rk(11)).unwrap(), None);
        let got: Vec<_> = b.scan(&rk(3), &rk(7)).collect::<Result<_, _>>().unwrap();
        let want: Vec<_> = (3..7u8).map(|r| (rk(r), vec![0, r])).collect();
        assert_eq!(got, want);
        // Removing from a block rewrites it under its new last revision.
        let mut batch = WriteBatch::new();
        batch.remove(&rk(7));
        batch.remove(&rk(8));
        b.apply(batch).unwrap();
        b.flush().unwrap();
        let keys: Vec<Vec<u8>> = sled_only(&b).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![rk(4), rk(6), rk(10)]);
        assert_eq!(b.get(&rk(8)).unwrap(), None);
        assert_eq!(b.get(&rk(9)).unwrap(), Some(vec![0, 9]));
    }

    #[test]
    fn revisions_stored_one_per_key_by_older_versions_are_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        for r in [2u8, 3, 5] {
            b.shared.tree.insert(rk(r), vec![1, r]).unwrap();
        }
        b.flush().unwrap();
        drop(b);
        let b = Backend::open(dir.path()).unwrap();
        assert_eq!(b.get(&rk(3)).unwrap(), Some(vec![1, 3]));
        assert_eq!(b.get(&rk(4)).unwrap(), None);
        let all: Vec<_> = b.scan(&rk(0), &rk(9)).collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 3);
        let mut batch = WriteBatch::new();
        batch.remove(&rk(3));
        batch.insert(&rk(4), &[0, 4]);
        batch.insert(&rk(6), &[0, 6]);
        b.apply(batch).unwrap();
        b.flush().unwrap();
        let got: Vec<_> = b.scan(&rk(0), &rk(9)).collect::<Result<_, _>>().unwrap();
        let want = vec![
            (rk(2), vec![1, 2]),
            (rk(4), vec![0, 4]),
            (rk(5), vec![1, 5]),
            (rk(6), vec![0, 6]),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_damaged_block_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        batch.insert(&rk(1), &[0, 1]);
        batch.insert(&rk(2), &[0, 2]);
        b.apply(batch).unwrap();
        b.flush().unwrap();
        let (k, mut v) = sled_only(&b).pop().unwrap();
        v.truncate(v.len() - 1);
        b.shared.tree.insert(k, v).unwrap();
        // The revision whose value was cut is reported; a scan checks the
        // whole block.
        assert!(matches!(b.get(&rk(2)), Err(StorageError::Corrupt(_))));
        assert!(b.scan(&rk(0), &rk(3)).any(|r| r.is_err()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// The revision keyspace, packed in blocks, reads like a plain map
        /// whatever the mix of new revisions, removals and flushes; so do
        /// keys around it.
        #[test]
        fn revision_blocks_read_like_a_model(ops in proptest::collection::vec(rev_op(), 1..120),
                                             lo in 0u8..42, hi in 0u8..42, wide in any::<bool>()) {
            let (start, end) = if wide {
                (vec![META_PREFIX], vec![REV_PREFIX + 2])
            } else {
                (rk(lo), rk(hi))
            };
            run_against_model(ops, |b, model| {
                for r in 0u8..42 {
                    prop_assert_eq!(b.get(&rk(r)).unwrap(), model.get(&rk(r)).cloned());
                }
                let got: Vec<_> = b.scan(&start, &end).collect::<Result<_, _>>().unwrap();
                prop_assert_eq!(got, model_range(model, &start, &end));
                Ok(())
            })?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever mix of pending and flushed writes, reads equal a plain
        /// map that took every applied batch.
        #[test]
        fn reads_equal_a_model(ops in proptest::collection::vec(op(), 1..80),
                               lo in 0u8..24, hi in 0u8..25) {
            run_against_model(ops, |b, model| {
                for k in 0u8..24 {
                    prop_assert_eq!(b.get(&[k]).unwrap(), model.get(&vec![k]).cloned());
                }
                let got: Vec<_> = b.scan(&[lo], &[hi]).collect::<Result<_, _>>().unwrap();
                prop_assert_eq!(got, model_range(model, &[lo], &[hi]));
                Ok(())
            })?;
        }
    }
}

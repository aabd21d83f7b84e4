//! The narrow interface between the MVCC store and sled: one sled tree with
//! prefixed keyspaces, so that one [`sled::Batch`] updates revisions, leases
//! and meta atomically. Nothing above this file names a sled type except
//! [`sled::Batch`] (built through [`WriteBatch`]) — swapping the engine means
//! rewriting this file only.

use std::path::Path;

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

/// sled's page cache; the OS page cache does the rest.
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

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

/// A set of writes applied atomically by [`Backend::apply`].
pub struct WriteBatch {
    batch: sled::Batch,
    empty: bool,
}

impl Default for WriteBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteBatch {
    pub fn new() -> Self {
        WriteBatch {
            batch: sled::Batch::default(),
            empty: true,
        }
    }
    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.batch.insert(key, value);
        self.empty = false;
    }
    pub fn remove(&mut self, key: &[u8]) {
        self.batch.remove(key);
        self.empty = false;
    }
    pub fn is_empty(&self) -> bool {
        self.empty
    }
}

/// The sled database and the one tree the store uses.
pub struct Backend {
    db: sled::Db,
    tree: sled::Tree,
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
        Ok(Backend { db, tree })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    pub fn get_i64(&self, key: &[u8]) -> Result<Option<i64>, StorageError> {
        self.get(key)?.map(|v| decode_i64(&v)).transpose()
    }

    pub fn contains(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.tree.contains_key(key)?)
    }

    /// The stored change at `rev`.
    pub fn get_rev(&self, rev: Revision) -> Result<Option<Stored>, StorageError> {
        self.tree
            .get(rev_key(rev))?
            .map(|v| decode_stored(&v))
            .transpose()
    }

    /// Key/value pairs in `[start, end)`, ascending, lazily.
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> {
        self.tree
            .range(start.to_vec()..end.to_vec())
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
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

    pub fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if !batch.empty {
            self.tree.apply_batch(batch.batch)?;
        }
        Ok(())
    }

    /// Remove every key but `keep`, in bounded batches (snapshot install).
    pub fn clear_except(&self, keep: &[u8]) -> Result<(), StorageError> {
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for k in self.tree.iter().keys() {
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
            self.tree.apply_batch(batch)?;
        }
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> i64 {
        self.db.size_on_disk().map(|n| n as i64).unwrap_or(0)
    }
}

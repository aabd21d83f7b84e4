//! etcd's multi-version key-value store over sled.
//!
//! # Model
//!
//! The store keeps every change ever made to a key, each named by a
//! [`Revision`]: a store-wide `main` counter and a `sub` position inside one
//! write request. A new store is at revision 1 (etcd's initial revision), so
//! the first write is revision 2. Each Put, each DeleteRange that deletes at
//! least one key and each Txn whose executed branch changes something bumps
//! `main` by exactly one; the changes of a Txn share that `main` with subs
//! 0, 1, 2, …; a request that changes nothing leaves the revision alone.
//!
//! Every stored value carries etcd's per-key fields: `create_revision`,
//! `mod_revision`, `version` (1 on create, +1 per put, reset by delete) and
//! `lease`. A delete writes a tombstone; the next put starts a new
//! generation of the key (see [`key_index`]).
//!
//! A read at revision R returns, per key, the newest change at or below R
//! unless that change is a tombstone. Compact(C) makes reads below C fail
//! with [`ApplyError::Compacted`] and then physically drops every change
//! superseded at or before C, keeping the newest value ≤ C of each live key.
//!
//! ```text
//!  request                        rev  key "a"                      key "b"
//!  (new store)                     1
//!  put a=x                         2   a@2.0 c=2 v=1 "x"
//!  put a=y                         3   a@3.0 c=2 v=2 "y"
//!  txn{put b=1; delete a}          4   a@4.1 tombstone              b@4.0 c=4 v=1
//!  put a=z                         5   a@5.0 c=5 v=1 "z"  (new generation)
//!  delete c                        5   (nothing deleted: no new revision)
//!  range a..\0 @3   → a=y(c2,v2)
//!  range a..\0 @4   → b=1
//!  compact 4        → drops a@2.0 a@3.0 a@4.1; keeps b@4.0 and a@5.0
//! ```
//!
//! # On-disk layout
//!
//! One sled tree, `mvcc`, with three keyspaces (see [`backend`]):
//!
//! | key                                    | value                                  |
//! |----------------------------------------|----------------------------------------|
//! | `r` ++ main(u64 BE) ++ sub(u64 BE)     | `[0 put / 1 tombstone]` ++ prost `KeyValue` |
//! | `l` ++ lease id (u64 BE)               | bincode `LeaseRecord` (see [`lease`])  |
//! | `m` ++ name                            | meta: `current_rev`, `scheduled_compact`, `finished_compact`, `applied`, `installing` |
//!
//! Revision keys sort like revisions, so history is a range scan (watch
//! catch-up, snapshots, rebuilding the index).
//!
//! The key index (key → generations of revisions) lives in memory, as in
//! etcd, and is rebuilt from the `r` keyspace at open: every stored value
//! carries its `create_revision` and `version`, which is all a generation
//! needs even when its earlier revisions were compacted away.
//!
//! # Invariants
//!
//! - One [`Applier`] is one backend batch: the changes of every request it
//!   applied, the new `current_rev`, the scheduled compaction and the Raft
//!   applied meta land together or not at all. The backend hands
//!   consecutive batches to sled merged, in order, as one `sled::Batch`, so
//!   sled always holds a prefix of the applies.
//! - Readers see only published revisions: an applier appends revisions
//!   above the published current revision to the index as it goes (readers
//!   at R ignore them) and publishes the new current revision only after its
//!   batch is in sled.
//! - Compaction never removes what a read at or above the compact revision
//!   needs; the compact revision is published before any removal starts,
//!   and removal of one key's revisions is one sled batch, so a crash leaves
//!   each key either compacted or not — never a tombstone without its
//!   generation.
//! - Apply outcomes ([`ApplyError`]) are decided by the request and the
//!   state alone, so every member computes the same ones; storage failures
//!   ([`StorageError`]) are fatal to the member.

pub mod backend;
mod compact;
mod hash;
pub mod key_index;
pub mod lease;
#[cfg(test)]
mod model_tests;
pub mod revision;
mod store;
mod txn;

pub use hash::KvHash;
pub use lease::{LeaseInfo, LeaseRecord, MAX_LEASE_TTL};
pub use revision::Revision;
pub use store::{copy_snapshot, read_snapshot_summary, Change, Snapshot, SnapshotSummary, Store};
pub use txn::{is_txn_readonly, Applier};

/// Deterministic outcomes of a request, computed alike by every member.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// etcd `mvcc.ErrCompacted`.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// etcd `mvcc.ErrFutureRev`.
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// etcd `ErrKeyNotFound` (ignore_value / ignore_lease on a missing key).
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// etcd `lease.ErrLeaseNotFound`.
    #[error("lease not found")]
    LeaseNotFound,
    /// etcd `lease.ErrLeaseExists` (a grant of an id in use).
    #[error("lease already exists")]
    LeaseExists,
    /// etcd `lease.ErrLeaseTTLTooLarge` (TTL above [`MAX_LEASE_TTL`]).
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// Not an outcome: the storage failed; the member must stop.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ApplyError {
    /// True for outcomes every member computes alike (all but `Storage`).
    pub fn is_deterministic(&self) -> bool {
        !matches!(self, ApplyError::Storage(_))
    }
}

/// Storage I/O or corruption: fatal, never a request outcome.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// Not fatal to the store: a [`Snapshot::write_to`] raced with
    /// [`Store::install_snapshot`]; that snapshot is void, build a new one.
    #[error("snapshot superseded by a snapshot install")]
    SnapshotSuperseded,
}

//! Physical compaction (etcd `kvstore_compaction.go`), off the apply path.
//!
//! Applying Compact(C) only records `scheduled_compact = C` and publishes C
//! as the compact revision, so reads below C fail at once. A background
//! thread then walks the key index in chunks of [`CHUNK_KEYS`] keys; for each
//! chunk it compacts the keys' generations and deletes the dropped revisions
//! in one sled batch, holding the read gate (readers wait for one chunk at
//! most; apply never waits). The last chunk also records
//! `finished_compact = C`. On open, `scheduled != finished` restarts the pass;
//! a pass is idempotent, so a crash in the middle is harmless.
//!
//! While a snapshot is being streamed, compaction pauses between chunks, so
//! the revisions the snapshot reads stay put.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Weak;
use std::time::Duration;

use super::backend::{encode_i64, rev_key, WriteBatch, META_FINISHED_COMPACT};
use super::store::Inner;
use super::StorageError;

/// Keys per sled batch; bounds how long readers wait on a chunk.
pub const CHUNK_KEYS: usize = 1000;

/// Body of the compactor thread: a pass per wake-up until the finished
/// revision catches up with the scheduled one. Exits when the store is gone.
pub(crate) fn run(store: Weak<Inner>, wake: Receiver<()>) {
    while wake.recv().is_ok() {
        loop {
            let Some(inner) = store.upgrade() else {
                return;
            };
            // Epoch before target: a snapshot install stores its compact
            // revision before its last epoch bump, so a target from before
            // an install comes with an epoch the pass finds stale.
            let epoch = inner.epoch.load(Ordering::SeqCst);
            let target = inner.compact_rev.load(Ordering::SeqCst);
            if target <= inner.finished_rev.load(Ordering::SeqCst) {
                break;
            }
            // Hash the compactions up to `target` before removing anything
            // (etcd hashes while it compacts; see `hash.rs`).
            if let Err(e) = super::hash::hash_compactions(&inner, target, epoch) {
                tracing::error!(error = %e, compact_revision = target, "compaction hash failed; store must be restarted");
                return;
            }
            drop(inner);
            match pass(&store, target, epoch) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::error!(error = %e, compact_revision = target, "compaction failed; store must be restarted");
                    return;
                }
            }
        }
    }
}

/// One full pass at `target`. Ok(false) when the store was dropped.
fn pass(store: &Weak<Inner>, target: i64, epoch: u64) -> Result<bool, StorageError> {
    tracing::info!(compact_revision = target, "compaction started");
    let mut cursor: Option<Vec<u8>> = None;
    let mut removed_total = 0usize;
    loop {
        let Some(inner) = store.upgrade() else {
            return Ok(false);
        };
        let gate = inner.gate.write().unwrap_or_else(|e| e.into_inner());
        if inner.epoch.load(Ordering::SeqCst) != epoch {
            // A snapshot was installed: start over on the new state.
            return Ok(true);
        }
        if inner.snapshot_pauses.load(Ordering::SeqCst) > 0 {
            drop(gate);
            drop(inner);
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut batch = WriteBatch::new();
        let (last, done) = {
            let mut index = inner.index_mut();
            let keys = index.keys_after(cursor.as_deref(), CHUNK_KEYS);
            for k in &keys {
                for rev in index.compact_key(k, target) {
                    batch.remove(&rev_key(rev));
                    removed_total += 1;
                }
            }
            (keys.last().cloned(), keys.len() < CHUNK_KEYS)
        };
        if done {
            batch.insert(META_FINISHED_COMPACT, &encode_i64(target));
        }
        inner.backend.apply(batch)?;
        drop(gate);
        if done {
            inner.finished_rev.store(target, Ordering::SeqCst);
            inner.finished_tx.send_modify(|f| *f = (*f).max(target));
            tracing::info!(
                compact_revision = target,
                removed = removed_total,
                "compaction finished"
            );
            return Ok(true);
        }
        cursor = last;
    }
}

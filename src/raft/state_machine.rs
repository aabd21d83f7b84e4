//! The Raft state machine: committed entries applied to the MVCC store.
//!
//! Every call to `apply` turns one run of committed entries into ONE store
//! batch that also records the last applied log id and membership, so the
//! store is always a consistent prefix of the log (sled receives batches
//! whole and in order, a few milliseconds later): after a crash openraft
//! reads `applied_state` back and re-applies whatever came after it.
//!
//! Snapshots are files under `<data-dir>/snap/`:
//!
//! ```text
//! u32 LE length | bincode(SnapshotMeta) | store snapshot (mvcc::Snapshot::write_to)
//! ```
//!
//! A snapshot is captured between two applies (so its revision matches its
//! log id exactly) and streamed to disk without blocking later applies. The
//! store is flushed before a snapshot is reported built, because openraft
//! purges the WAL up to it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::types::{
    ApplyError, LogId, Member, MemberAttributes, MemberDirectory, MemberId, Request, Response,
    SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::lease::Lessor;
use crate::mvcc::{self, Applier, Store};
use crate::watch::Hub;

/// What the state machine persists beside the data, in the same batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Members' published names and client URLs.
    attributes: BTreeMap<MemberId, MemberAttributes>,
}

pub struct StateMachine {
    store: Store,
    snap_dir: PathBuf,
    applied: AppliedState,
    /// Path and meta of the newest complete snapshot file.
    current: Arc<Mutex<Option<(SnapshotMeta, PathBuf)>>>,
    /// Told about applied lease entries and applied terms (see `lease`).
    lessor: Option<Lessor>,
    /// Watchers hear of each committed batch, after it is in sled.
    watch: Option<Hub>,
    /// `applied.attributes`, readable by the Cluster API.
    directory: MemberDirectory,
    /// The index of the newest applied entry, published once its batch is
    /// in the store (see [`StateMachine::applied_index`]).
    applied_index: tokio::sync::watch::Sender<u64>,
}

/// What the lessor hears from one applied entry, once its batch committed.
enum LeaseEvent {
    Granted(i64, i64),
    Revoked(i64),
    Checkpointed(Vec<crate::proto::etcdserverpb::LeaseCheckpoint>),
}

impl LeaseEvent {
    /// The events of one applied request (a batch's, in order).
    fn collect(req: &Request, resp: &Response, out: &mut Vec<LeaseEvent>) {
        match (req, resp) {
            (Request::LeaseGrant(_), Response::LeaseGrant(r)) => {
                out.push(LeaseEvent::Granted(r.id, r.ttl))
            }
            (Request::LeaseRevoke(r), Response::LeaseRevoke(_)) => {
                out.push(LeaseEvent::Revoked(r.id))
            }
            (Request::LeaseCheckpoint(r), Response::LeaseCheckpoint(_)) => {
                out.push(LeaseEvent::Checkpointed(r.checkpoints.clone()))
            }
            (Request::Batch(reqs), Response::Batch(resps)) => {
                for (req, resp) in reqs.iter().zip(resps) {
                    Self::collect(req, resp, out);
                }
            }
            _ => {}
        }
    }

    fn deliver(self, lessor: &Lessor) {
        match self {
            LeaseEvent::Granted(id, ttl) => lessor.granted(id, ttl),
            LeaseEvent::Revoked(id) => lessor.revoked(id),
            LeaseEvent::Checkpointed(cps) => lessor.checkpointed(&cps),
        }
    }
}

impl StateMachine {
    pub fn open(store: Store, snap_dir: &Path) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(snap_dir)?;
        let mut applied = Self::read_applied(&store)?;
        let current = Self::find_newest_snapshot(snap_dir)?;
        // The store can be behind the newest snapshot: a crash cut short an
        // install (the store wiped itself) or came before the store flushed
        // after a build. The snapshot is durable, so it is the state to
        // start from; the log after it is still in the WAL.
        if let Some((meta, path)) = &current {
            if applied.last_applied < meta.last_log_id {
                tracing::info!(snapshot = %meta, "store is behind the newest snapshot (a restored backup's first start, or a crash during an install); installing it");
                let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
                read_meta(&mut r)?;
                store
                    .install_snapshot(&mut r)
                    .map_err(std::io::Error::other)?;
                store.flush().map_err(std::io::Error::other)?;
                applied = Self::read_applied(&store)?;
            }
        }
        let (applied_index, _) =
            tokio::sync::watch::channel(applied.last_applied.map_or(0, |l| l.index));
        Ok(StateMachine {
            store,
            snap_dir: snap_dir.to_path_buf(),
            directory: Arc::new(RwLock::new(applied.attributes.clone())),
            applied_index,
            applied,
            current: Arc::new(Mutex::new(current)),
            lessor: None,
            watch: None,
        })
    }

    /// Publish every committed change to this watch hub.
    pub fn with_watch_hub(mut self, hub: Hub) -> Self {
        self.watch = Some(hub);
        self
    }

    fn read_applied(store: &Store) -> std::io::Result<AppliedState> {
        Ok(match store.applied_meta().map_err(std::io::Error::other)? {
            Some(bytes) => bincode::deserialize(&bytes).map_err(std::io::Error::other)?,
            None => AppliedState::default(),
        })
    }

    /// Reports applied lease entries (and the term of the newest applied
    /// entry, which decides the lessor's promotion) to `lessor`.
    pub fn with_lessor(mut self, lessor: Lessor) -> StateMachine {
        // `open` may have reinstalled a snapshot: start from the store.
        lessor.recover(self.store.lease_records());
        if let Some(last) = self.applied.last_applied {
            lessor.applied_term(last.leader_id.term);
        }
        self.lessor = Some(lessor);
        self
    }

    /// Members' published attributes, kept current by apply.
    pub fn directory(&self) -> MemberDirectory {
        self.directory.clone()
    }

    /// The index of the newest applied entry, as soon as the store serves
    /// it. A request waiting for its entry to apply (a write forwarded to
    /// the leader, a read behind a ReadIndex) hears it from here, not from
    /// openraft's metrics, which change only after the state machine task
    /// reports to RaftCore and RaftCore publishes them: two task hand-offs
    /// fewer on that path.
    pub fn applied_index(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    fn publish_applied(&self) {
        let index = self.applied.last_applied.map_or(0, |l| l.index);
        self.applied_index.send_if_modified(|i| {
            let newer = index > *i;
            if newer {
                *i = index;
            }
            newer
        });
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Finds the newest readable snapshot; half-written `.tmp` files are removed.
    fn find_newest_snapshot(dir: &Path) -> std::io::Result<Option<(SnapshotMeta, PathBuf)>> {
        let mut best: Option<(SnapshotMeta, PathBuf)> = None;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("tmp") => {
                    let _ = std::fs::remove_file(&path);
                }
                Some("snap") => {
                    let meta = read_meta(&mut std::fs::File::open(&path)?)?;
                    if best
                        .as_ref()
                        .is_none_or(|(b, _)| b.last_log_id < meta.last_log_id)
                    {
                        best = Some((meta, path));
                    }
                }
                _ => {}
            }
        }
        Ok(best)
    }

    /// Applies one request. A rejection every member computes alike becomes
    /// the response; a storage failure stops the member.
    #[allow(clippy::result_large_err)] // openraft's StorageError, returned as is
    fn apply_request(
        a: &mut Applier<'_>,
        attributes: &mut BTreeMap<MemberId, MemberAttributes>,
        log_id: LogId,
        req: &Request,
    ) -> Result<Response, StorageError> {
        let r = match req {
            Request::Batch(reqs) => {
                let mut out = Vec::with_capacity(reqs.len());
                for r in reqs {
                    out.push(Self::apply_request(a, attributes, log_id, r)?);
                }
                return Ok(Response::Batch(out));
            }
            Request::Publish(m) => {
                attributes.insert(m.member_id, m.clone());
                return Ok(Response::None);
            }
            Request::Put(r) => a.put(r).map(Response::Put),
            Request::DeleteRange(r) => a.delete_range(r).map(Response::DeleteRange),
            Request::Txn(r) => a.txn(r).map(Response::Txn),
            Request::Compaction(r) => a.compact(r).map(Response::Compaction),
            Request::LeaseGrant(r) => a.lease_grant(r).map(Response::LeaseGrant),
            Request::LeaseRevoke(r) => a.lease_revoke(r).map(Response::LeaseRevoke),
            Request::LeaseCheckpoint(r) => a.lease_checkpoint(r).map(Response::LeaseCheckpoint),
        };
        match r {
            Ok(resp) => Ok(resp),
            Err(mvcc::ApplyError::Compacted) => Ok(Response::Rejected(ApplyError::Compacted)),
            Err(mvcc::ApplyError::FutureRev) => Ok(Response::Rejected(ApplyError::FutureRev)),
            Err(mvcc::ApplyError::KeyNotFound) => Ok(Response::Rejected(ApplyError::KeyNotFound)),
            Err(mvcc::ApplyError::LeaseNotFound) => {
                Ok(Response::Rejected(ApplyError::LeaseNotFound))
            }
            Err(mvcc::ApplyError::LeaseExists) => Ok(Response::Rejected(ApplyError::LeaseExists)),
            Err(mvcc::ApplyError::LeaseTtlTooLarge) => {
                Ok(Response::Rejected(ApplyError::LeaseTtlTooLarge))
            }
            Err(mvcc::ApplyError::Storage(e)) => Err(StorageIOError::apply(log_id, &e).into()),
        }
    }
}

fn snapshot_io_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

/// A snapshot's meta is a log id and a member list: small.
const MAX_META_BYTES: usize = 1 << 20;

fn read_meta(f: &mut impl Read) -> std::io::Result<SnapshotMeta> {
    let mut len = [0u8; 4];
    f.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_META_BYTES {
        return Err(std::io::Error::other(format!(
            "snapshot meta of {len} bytes is implausible"
        )));
    }
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    bincode::deserialize(&buf).map_err(std::io::Error::other)
}

fn write_meta(w: &mut impl Write, meta: &SnapshotMeta) -> std::io::Result<()> {
    let bytes = bincode::serialize(meta).map_err(std::io::Error::other)?;
    w.write_all(&(bytes.len() as u32).to_le_bytes())?;
    w.write_all(&bytes)
}

/// The log position of a backup restored into a new cluster: its log
/// starts after it (openraft purges up to what the state machine has
/// applied), so a member that holds nothing catches up by installing the
/// snapshot, never by replaying a log that does not hold the data.
pub fn restored_log_id() -> LogId {
    LogId::new(openraft::CommittedLeaderId::new(0, 0), 1)
}

/// Writes into `snap_dir` the snapshot a member of a new cluster of
/// `members` starts from: the MVCC stream read from `stream` (a backup's),
/// at [`restored_log_id`] with that membership and no published
/// attributes. The member's first start installs it, as `open` reinstalls
/// a snapshot the store is behind. The file appears under its final name
/// only once complete and synced.
pub fn write_restored_snapshot(
    snap_dir: &Path,
    members: BTreeMap<MemberId, Member>,
    stream: &mut impl Read,
) -> std::io::Result<mvcc::SnapshotSummary> {
    let log_id = restored_log_id();
    let voters: BTreeSet<MemberId> = members.keys().copied().collect();
    let membership = StoredMembership::new(
        Some(log_id),
        openraft::Membership::new(vec![voters], members),
    );
    let applied = AppliedState {
        last_applied: Some(log_id),
        membership: membership.clone(),
        attributes: BTreeMap::new(),
    };
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: membership,
        snapshot_id: format!("{}-{}-restored", log_id.leader_id.term, log_id.index),
    };
    std::fs::create_dir_all(snap_dir)?;
    let name = format!("{}.snap", meta.snapshot_id);
    let tmp = snap_dir.join(format!("{name}.tmp"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    write_meta(&mut f, &meta)?;
    let applied = bincode::serialize(&applied).map_err(std::io::Error::other)?;
    let summary =
        mvcc::copy_snapshot(stream, &mut f, Some(applied)).map_err(std::io::Error::other)?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, snap_dir.join(name))?;
    fsync_dir(snap_dir)?;
    Ok(summary)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Makes `(meta, path)` the current snapshot unless a newer one already is,
/// and deletes the files of older snapshots. Builds and installs can finish
/// in any order; the newest log id always wins.
fn publish_snapshot(
    current: &Mutex<Option<(SnapshotMeta, PathBuf)>>,
    dir: &Path,
    meta: &SnapshotMeta,
    path: &Path,
) -> bool {
    let mut cur = current.lock().unwrap();
    if let Some((m, p)) = cur.as_ref() {
        if m.last_log_id > meta.last_log_id && p != path {
            let _ = std::fs::remove_file(path);
            return false;
        }
    }
    *cur = Some((meta.clone(), path.to_path_buf()));
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p == path || p.extension().and_then(|e| e.to_str()) != Some("snap") {
                continue;
            }
            let older = std::fs::File::open(&p)
                .and_then(|mut f| read_meta(&mut f))
                .map_or(true, |m| m.last_log_id <= meta.last_log_id);
            if older {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    true
}

pub struct SnapshotBuilder {
    /// Captured between two applies; taken by `build_snapshot`.
    snapshot: Option<Result<mvcc::Snapshot, mvcc::StorageError>>,
    meta: SnapshotMeta,
    store: Store,
    snap_dir: PathBuf,
    current: Arc<Mutex<Option<(SnapshotMeta, PathBuf)>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let meta = self.meta.clone();
        let snapshot = self
            .snapshot
            .take()
            .ok_or_else(|| std::io::Error::other("snapshot builder used twice"))
            .map_err(snapshot_io_err)?
            .map_err(snapshot_io_err)?;
        let store = self.store.clone();
        let dir = self.snap_dir.clone();
        let built = tokio::task::spawn_blocking(move || -> std::io::Result<Option<PathBuf>> {
            let name = format!("{}.snap", meta.snapshot_id);
            let tmp = dir.join(format!("{name}.tmp"));
            let path = dir.join(name);
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            write_meta(&mut f, &meta)?;
            match snapshot.write_to(&mut f) {
                Ok(()) => {}
                // A snapshot from the leader replaced the store while this
                // one was being written: that one is newer.
                Err(mvcc::StorageError::SnapshotSuperseded) => {
                    drop(f);
                    let _ = std::fs::remove_file(&tmp);
                    return Ok(None);
                }
                Err(e) => return Err(std::io::Error::other(e)),
            }
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            fsync_dir(&dir)?;
            // The WAL will be purged up to this snapshot: the store must hold
            // at least as much durably before that happens.
            store.flush().map_err(std::io::Error::other)?;
            Ok(Some(path))
        })
        .await
        .map_err(snapshot_io_err)?
        .map_err(snapshot_io_err)?;
        let published = built
            .is_some_and(|path| publish_snapshot(&self.current, &self.snap_dir, &self.meta, &path));
        if published {
            tracing::info!(snapshot = %self.meta, "built snapshot");
        } else {
            tracing::info!(snapshot = %self.meta, "built snapshot superseded by a newer one");
        }
        // Report the current snapshot: this one, or the newer one installed
        // meanwhile (openraft treats a build error as fatal).
        let current = self.current.lock().unwrap().clone();
        let (meta, path) = current
            .ok_or_else(|| std::io::Error::other("no snapshot after a build"))
            .map_err(snapshot_io_err)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(snapshot_io_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut a = self.store.begin_apply();
        let mut out = Vec::new();
        let mut events = Vec::new();
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            out.push(match &entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(req) => {
                    let resp = Self::apply_request(
                        &mut a,
                        &mut self.applied.attributes,
                        entry.log_id,
                        req,
                    )?;
                    LeaseEvent::collect(req, &resp, &mut events);
                    resp
                }
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Response::None
                }
            });
        }
        let meta = bincode::serialize(&self.applied)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        a.set_applied_meta(meta);
        // An I/O failure here stops this member (openraft treats a storage
        // error as fatal) rather than letting it diverge from the others.
        let changes = a
            .commit()
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        if let Some(lessor) = &self.lessor {
            for ev in events {
                ev.deliver(lessor);
            }
            if let Some(last) = self.applied.last_applied {
                lessor.applied_term(last.leader_id.term);
            }
        }
        if let Some(hub) = &self.watch {
            hub.publish(changes); // non-blocking: apply never waits for watchers
        }
        if *self.directory.read().unwrap() != self.applied.attributes {
            *self.directory.write().unwrap() = self.applied.attributes.clone();
        }
        self.publish_applied();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let last = self.applied.last_applied;
        let snapshot = self.store.snapshot();
        let revision = snapshot.as_ref().map_or(0, |s| s.revision());
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, revision),
            None => format!("0-0-{revision}"),
        };
        SnapshotBuilder {
            snapshot: Some(snapshot),
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: self.applied.membership.clone(),
                snapshot_id,
            },
            store: self.store.clone(),
            snap_dir: self.snap_dir.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snap_dir.join("receiving.tmp");
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(snapshot_io_err)?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let file = snapshot.into_std().await;
        let store = self.store.clone();
        let dir = self.snap_dir.clone();
        let meta_c = meta.clone();
        // Make the received file durable under its final name first: if we
        // crash during the install, `open` reinstalls from it.
        let path = tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
            file.sync_all()?;
            drop(file);
            let path = dir.join(format!("{}.snap", meta_c.snapshot_id));
            std::fs::rename(dir.join("receiving.tmp"), &path)?;
            fsync_dir(&dir)?;
            let mut r = std::io::BufReader::new(std::fs::File::open(&path)?);
            let sent = read_meta(&mut r)?;
            if sent.last_log_id != meta_c.last_log_id {
                return Err(std::io::Error::other(format!(
                    "received snapshot is for {:?}, expected {:?}",
                    sent.last_log_id, meta_c.last_log_id
                )));
            }
            store
                .install_snapshot(&mut r)
                .map_err(std::io::Error::other)?;
            Ok(path)
        })
        .await
        .map_err(snapshot_io_err)?
        .map_err(snapshot_io_err)?;
        // The snapshot carries the sender's applied state (attributes
        // included); the log position is the snapshot's by definition.
        let installed = Self::read_applied(&self.store).map_err(snapshot_io_err)?;
        self.applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            attributes: installed.attributes,
        };
        *self.directory.write().unwrap() = self.applied.attributes.clone();
        let mut a = self.store.begin_apply();
        a.set_applied_meta(
            bincode::serialize(&self.applied)
                .map_err(|e| StorageIOError::write_state_machine(&e))?,
        );
        a.commit()
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.store
            .flush()
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        publish_snapshot(&self.current, &self.snap_dir, meta, &path);
        if let Some(hub) = &self.watch {
            hub.restored(self.store.current_revision());
        }
        if let Some(lessor) = &self.lessor {
            lessor.recover(self.store.lease_records());
            if let Some(last) = meta.last_log_id {
                lessor.applied_term(last.leader_id.term);
            }
        }
        self.publish_applied();
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.current.lock().unwrap().clone();
        match current {
            None => Ok(None),
            Some((meta, path)) => {
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(snapshot_io_err)?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(file),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    use super::*;
    use crate::proto::etcdserverpb::PutRequest;

    fn put(index: u64, key: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn applied_index_is_published_once_the_store_serves_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(store.clone(), &dir.path().join("snap")).unwrap();
        let mut applied = sm.applied_index();
        assert_eq!(*applied.borrow_and_update(), 0);

        sm.apply([put(1, "a"), put(2, "b")]).await.unwrap();
        assert!(applied.has_changed().unwrap());
        assert_eq!(*applied.borrow_and_update(), 2);
        // What a waiter reads next is there.
        assert_eq!(store.current_revision(), 3);

        // Reopened, it starts from what the store holds.
        drop(sm);
        let sm = StateMachine::open(store, &dir.path().join("snap")).unwrap();
        assert_eq!(*sm.applied_index().borrow(), 2);
    }
}

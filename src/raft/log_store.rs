//! openraft's log storage (storage-v2 `RaftLogStorage`) over the [`Wal`].
//!
//! The WAL stores opaque bytes; this layer encodes entries, the vote and log
//! ids with bincode 1.3. It is generic over the Raft type config so that the
//! same store serves the server's config and test configs alike.
//!
//! Durability mapping:
//! - `append`: entries are readable on return; `LogFlushed` fires after the
//!   group fsync that covers them: from the runtime's I/O driver when the log
//!   is idle (see [`Relay`]), from the WAL's writer thread when its next
//!   batch already waits. A follower's openraft waits for it before it
//!   acknowledges the entries; the leader's does not wait, and counts its
//!   own copy toward the quorum only once it fires (`vendor/openraft/OXCD.md`).
//! - `save_vote`: returns after the vote is fsynced.
//! - `save_committed`: written with the WAL's next batch (or alone within
//!   `wal::COMMITTED_DELAY`), durable with the next fsync.
//! - `truncate` / `purge`: return once durable.

// openraft's trait fixes the error type (`StorageError`, ~200 bytes); the
// helpers here just pass it through.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::RangeBounds;
use std::path::Path;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader,
    RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::relay::Relay;
use crate::wal::{Wal, WalError, WalOptions};

/// The Raft log store. Clones share the same WAL; `get_log_reader` hands one
/// out to replication tasks.
pub struct LogStore<C: RaftTypeConfig> {
    wal: Wal,
    /// Carries `LogFlushed` from the WAL's writer onto the runtime; `None`
    /// when opened outside a runtime (the writer then calls it itself).
    relay: Option<Relay>,
    _c: PhantomData<fn() -> C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            wal: self.wal.clone(),
            relay: self.relay.clone(),
            _c: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// Opens the log in `dir` with default options (64 MiB segments).
    pub fn open(dir: &Path) -> Result<Self, WalError> {
        Self::open_with(dir, WalOptions::default())
    }

    pub fn open_with(dir: &Path, opts: WalOptions) -> Result<Self, WalError> {
        let wal = Wal::open(dir, opts)?;
        let relay = Relay::spawn().map_err(|e| WalError::io(dir, e))?;
        Ok(LogStore {
            wal,
            relay,
            _c: PhantomData,
        })
    }

    /// The newest committed log id openraft has saved, for Status's
    /// `raftIndex` (etcd reports the committed index there).
    pub fn committed(&self) -> Option<LogId<C::NodeId>> {
        let b = self.wal.committed()?;
        decode::<Option<LogId<C::NodeId>>, C::NodeId>(&b, ErrorSubject::Store)
            .ok()
            .flatten()
    }

    /// The underlying WAL (for metrics such as `sync_count`, and tests).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }
}

fn sto_err<NID: openraft::NodeId>(
    subject: ErrorSubject<NID>,
    verb: ErrorVerb,
    e: impl ToString,
) -> StorageError<NID> {
    let e = io::Error::other(e.to_string());
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(&e)),
    }
}

fn encode<T: Serialize, NID: openraft::NodeId>(
    v: &T,
    subject: ErrorSubject<NID>,
) -> Result<Vec<u8>, StorageError<NID>> {
    bincode::serialize(v).map_err(|e| sto_err(subject, ErrorVerb::Write, e))
}

fn decode<T: DeserializeOwned, NID: openraft::NodeId>(
    b: &[u8],
    subject: ErrorSubject<NID>,
) -> Result<T, StorageError<NID>> {
    bincode::deserialize(b).map_err(|e| sto_err(subject, ErrorVerb::Read, e))
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    fn read_entries<R: RangeBounds<u64>>(
        &self,
        range: R,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let raw = self
            .wal
            .read(range)
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        raw.iter()
            .map(|(i, b)| decode(b, ErrorSubject::LogIndex(*i)))
            .collect()
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        self.read_entries(range)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let last_purged_log_id: Option<LogId<C::NodeId>> = match self.wal.purged() {
            Some((_, b)) => Some(decode(&b, ErrorSubject::Logs)?),
            None => None,
        };
        let last_log_id = match self.wal.last_index() {
            Some(i) => self
                .read_entries(i..=i)?
                .last()
                .map(|e| e.get_log_id().clone()),
            None => None,
        };
        Ok(LogState {
            last_log_id: last_log_id.or(last_purged_log_id.clone()),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let b = encode(vote, ErrorSubject::Vote)?;
        self.wal
            .save_vote(b)
            .await
            .map_err(|e| sto_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.wal
            .vote()
            .map(|b| decode(&b, ErrorSubject::Vote))
            .transpose()
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let b = encode(&committed, ErrorSubject::Store)?;
        self.wal
            .save_committed(b)
            .map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        match self.wal.committed() {
            Some(b) => decode::<Option<LogId<C::NodeId>>, _>(&b, ErrorSubject::Store),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        for e in entries {
            let id = e.get_log_id();
            let b = encode(&e, ErrorSubject::Log(id.clone()))?;
            batch.push((id.index, b));
        }
        let relay = self.relay.clone();
        let backlog = self.wal.backlog();
        let done = Box::new(move |r: Result<(), WalError>| {
            let flushed = move || {
                callback.log_io_completed(r.map_err(|e| io::Error::other(e.to_string())));
            };
            match relay {
                // The next batch already waits: the runtime is busy, and
                // waking it from here is cheap (no idle worker to unpark).
                Some(relay) if !backlog.is_empty() => relay.call(flushed),
                Some(relay) => relay.run(flushed),
                None => flushed(),
            }
        });
        self.wal
            .append(batch, done)
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.wal
            .truncate(log_id.index)
            .await
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let b = encode(&log_id, ErrorSubject::Log(log_id.clone()))?;
        self.wal
            .purge(log_id.index, b)
            .await
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! openraft's storage conformance suite against the WAL-backed log store.
    //! The state machine here is a throwaway in-memory one: the suite needs
    //! one, but it is not what is under test.

    use std::io::Cursor;
    use std::sync::{Arc, Mutex};

    use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{BasicNode, EntryPayload, RaftSnapshotBuilder, StoredMembership};

    use super::*;

    openraft::declare_raft_types!(pub TestConfig);

    type Applied = (Option<LogId<u64>>, StoredMembership<u64, BasicNode>);

    #[derive(Default)]
    struct MemSmInner {
        applied: Applied,
        snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
        snapshot_seq: u64,
    }

    #[derive(Clone, Default)]
    pub(crate) struct MemSm(Arc<Mutex<MemSmInner>>);

    impl RaftSnapshotBuilder<TestConfig> for MemSm {
        async fn build_snapshot(&mut self) -> Result<Snapshot<TestConfig>, StorageError<u64>> {
            let mut g = self.0.lock().unwrap();
            g.snapshot_seq += 1;
            let data = bincode::serialize(&g.applied).unwrap();
            let meta = SnapshotMeta {
                last_log_id: g.applied.0,
                last_membership: g.applied.1.clone(),
                snapshot_id: format!("snap-{}", g.snapshot_seq),
            };
            g.snapshot = Some((meta.clone(), data.clone()));
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        }
    }

    impl RaftStateMachine<TestConfig> for MemSm {
        type SnapshotBuilder = Self;

        async fn applied_state(&mut self) -> Result<Applied, StorageError<u64>> {
            Ok(self.0.lock().unwrap().applied.clone())
        }

        async fn apply<I>(&mut self, entries: I) -> Result<Vec<String>, StorageError<u64>>
        where
            I: IntoIterator<Item = openraft::Entry<TestConfig>> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            let mut g = self.0.lock().unwrap();
            let mut out = Vec::new();
            for e in entries {
                g.applied.0 = Some(e.log_id);
                if let EntryPayload::Membership(m) = e.payload {
                    g.applied.1 = StoredMembership::new(Some(e.log_id), m);
                }
                out.push(String::new());
            }
            Ok(out)
        }

        async fn get_snapshot_builder(&mut self) -> Self {
            self.clone()
        }

        async fn begin_receiving_snapshot(
            &mut self,
        ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
            Ok(Box::new(Cursor::new(Vec::new())))
        }

        async fn install_snapshot(
            &mut self,
            meta: &SnapshotMeta<u64, BasicNode>,
            snapshot: Box<Cursor<Vec<u8>>>,
        ) -> Result<(), StorageError<u64>> {
            let data = snapshot.into_inner();
            let mut g = self.0.lock().unwrap();
            g.applied = bincode::deserialize(&data).unwrap();
            g.snapshot = Some((meta.clone(), data));
            Ok(())
        }

        async fn get_current_snapshot(
            &mut self,
        ) -> Result<Option<Snapshot<TestConfig>>, StorageError<u64>> {
            let g = self.0.lock().unwrap();
            Ok(g.snapshot.clone().map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
        }
    }

    struct Builder;

    impl StoreBuilder<TestConfig, LogStore<TestConfig>, MemSm, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore<TestConfig>, MemSm), StorageError<u64>> {
            let dir = tempfile::tempdir().unwrap();
            // Small segments so the suite also crosses segment boundaries.
            let store = LogStore::open_with(dir.path(), WalOptions { segment_size: 256 }).unwrap();
            Ok((dir, store, MemSm::default()))
        }
    }

    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
        Suite::test_all(Builder)
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        use openraft::testing::log_id;
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions { segment_size: 200 };
        {
            let mut s = LogStore::<TestConfig>::open_with(dir.path(), opts.clone()).unwrap();
            let ents: Vec<_> = (1..=20)
                .map(|i| openraft::testing::blank_ent::<TestConfig>(1, 0, i))
                .collect();
            let (tx, rx) = tokio::sync::oneshot::channel();
            s.wal
                .append(
                    ents.iter()
                        .map(|e| (e.log_id.index, bincode::serialize(e).unwrap()))
                        .collect(),
                    Box::new(move |r| tx.send(r).unwrap()),
                )
                .unwrap();
            rx.await.unwrap().unwrap();
            s.save_vote(&Vote::new(3, 1)).await.unwrap();
            s.save_committed(Some(log_id(1, 0, 15))).await.unwrap();
            s.purge(log_id(1, 0, 9)).await.unwrap();
            s.truncate(log_id(1, 0, 18)).await.unwrap();
        }
        let mut s = LogStore::<TestConfig>::open_with(dir.path(), opts).unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 0, 9)));
        assert_eq!(st.last_log_id, Some(log_id(1, 0, 17)));
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 0, 15)));
        let got = s.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (10..=17).collect::<Vec<_>>()
        );
    }
}

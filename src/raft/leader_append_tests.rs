//! The leader's own log append does not hold up replication, and the leader
//! counts toward a quorum only once that append is flushed (the change to
//! openraft in `vendor/openraft/OXCD.md`).
//!
//! Three openraft members in one process, over an in-memory network, each
//! with a log store whose flushes a test can hold back: an append is stored
//! at once, but its `LogFlushed` is reported only on `release`, as a disk
//! that has not finished an fsync would report it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    ClientWriteError, InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    BasicNode, Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, Vote,
};

use super::log_store::tests::{MemSm, TestConfig};

type Raft = openraft::Raft<TestConfig>;

#[derive(Default)]
struct HeldInner {
    log: BTreeMap<u64, Entry<TestConfig>>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
    hold: bool,
    /// Flushes not reported yet, oldest first.
    held: Vec<LogFlushed<TestConfig>>,
}

/// An in-memory Raft log whose flush reports can be held back.
#[derive(Clone, Default)]
struct HeldLog(Arc<Mutex<HeldInner>>);

impl HeldLog {
    fn hold(&self) {
        self.0.lock().unwrap().hold = true;
    }

    /// Reports every held flush, in order, and stops holding.
    fn release(&self) {
        let held = {
            let mut g = self.0.lock().unwrap();
            g.hold = false;
            std::mem::take(&mut g.held)
        };
        for cb in held {
            cb.log_io_completed(Ok(()));
        }
    }

    fn last_index(&self) -> u64 {
        self.0
            .lock()
            .unwrap()
            .log
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
    }
}

impl RaftLogReader<TestConfig> for HeldLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TestConfig>>, StorageError<u64>> {
        let g = self.0.lock().unwrap();
        Ok(g.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TestConfig> for HeldLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TestConfig>, StorageError<u64>> {
        let g = self.0.lock().unwrap();
        let last = g.log.values().next_back().map(|e| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: last.or(g.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.0.lock().unwrap().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.0.lock().unwrap().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.0.lock().unwrap().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.0.lock().unwrap().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TestConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TestConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.0.lock().unwrap();
        for e in entries {
            g.log.insert(e.get_log_id().index, e);
        }
        // Flushes complete in order: behind a held one, this one waits too.
        if g.hold || !g.held.is_empty() {
            g.held.push(callback);
        } else {
            drop(g);
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut g = self.0.lock().unwrap();
        drop(g.log.split_off(&log_id.index));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut g = self.0.lock().unwrap();
        g.log = g.log.split_off(&(log_id.index + 1));
        g.purged = Some(log_id);
        Ok(())
    }
}

/// The in-memory network: calls go straight to the target's `Raft`,
/// except to or from a member cut off with `isolate`.
#[derive(Clone, Default)]
struct Router {
    members: Arc<Mutex<HashMap<u64, Raft>>>,
    isolated: Arc<Mutex<Option<u64>>>,
    /// The member whose calls this handle makes.
    from: u64,
}

impl Router {
    fn of(&self, from: u64) -> Router {
        Router {
            from,
            ..self.clone()
        }
    }

    fn isolate(&self, id: Option<u64>) {
        *self.isolated.lock().unwrap() = id;
    }
}

struct Conn {
    router: Router,
    target: u64,
}

impl Conn {
    /// Runs `call` on the target's `Raft`, as a peer call would.
    async fn call<T, E, F>(
        &self,
        call: impl FnOnce(Raft) -> F,
    ) -> Result<T, RPCError<u64, BasicNode, E>>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: std::error::Error,
    {
        let cut = *self.router.isolated.lock().unwrap();
        let raft = self
            .router
            .members
            .lock()
            .unwrap()
            .get(&self.target)
            .cloned();
        let raft = match raft {
            Some(r) if cut != Some(self.target) && cut != Some(self.router.from) => r,
            _ => {
                let e = std::io::Error::other(format!("member {} unreachable", self.target));
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        call(raft)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetworkFactory<TestConfig> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Conn {
        Conn {
            router: self.clone(),
            target,
        }
    }
}

impl RaftNetwork<TestConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(|raft| async move { raft.append_entries(rpc).await })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(|raft| async move { raft.install_snapshot(rpc).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(|raft| async move { raft.vote(rpc).await }).await
    }
}

struct Cluster {
    router: Router,
    rafts: HashMap<u64, Raft>,
    logs: HashMap<u64, HeldLog>,
}

/// Members 1, 2 and 3, with 1 the leader.
async fn cluster() -> Cluster {
    let config = Arc::new(
        openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 500,
            election_timeout_max: 700,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let router = Router::default();
    let (mut rafts, mut logs) = (HashMap::new(), HashMap::new());
    for id in 1..=3u64 {
        let log = HeldLog::default();
        let raft = Raft::new(
            id,
            config.clone(),
            router.of(id),
            log.clone(),
            MemSm::default(),
        )
        .await
        .unwrap();
        router.members.lock().unwrap().insert(id, raft.clone());
        rafts.insert(id, raft);
        logs.insert(id, log);
    }
    let members: BTreeMap<u64, BasicNode> = (1..=3).map(|id| (id, BasicNode::default())).collect();
    rafts[&1].initialize(members).await.unwrap();
    rafts[&1]
        .wait(Some(Duration::from_secs(10)))
        .current_leader(1, "member 1 leads")
        .await
        .unwrap();
    // Every member holds the leader's first entries before the test starts.
    let last = logs[&1].last_index();
    for id in 1..=3u64 {
        rafts[&id]
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last), "caught up")
            .await
            .unwrap();
    }
    Cluster {
        router,
        rafts,
        logs,
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn applied(raft: &Raft) -> u64 {
    raft.metrics().borrow().last_applied.map_or(0, |l| l.index)
}

type Write = tokio::task::JoinHandle<
    Result<
        openraft::raft::ClientWriteResponse<TestConfig>,
        RaftError<u64, ClientWriteError<u64, BasicNode>>,
    >,
>;

impl Cluster {
    /// Starts a write on the leader (member 1) and waits until both
    /// followers hold its entry; returns the entry's index and the write.
    async fn write_reaching_followers(&self) -> (u64, Write) {
        let index = self.logs[&1].last_index() + 1;
        let leader = self.rafts[&1].clone();
        let write = tokio::spawn(async move { leader.client_write("w".to_string()).await });
        until("both followers hold the entry", || {
            self.logs[&2].last_index() >= index && self.logs[&3].last_index() >= index
        })
        .await;
        (index, write)
    }

    async fn shutdown(self) {
        for log in self.logs.values() {
            log.release();
        }
        for raft in self.rafts.values() {
            raft.shutdown().await.unwrap();
        }
    }
}

/// Waits for `write` to commit and checks its entry's index.
async fn committed(write: Write, index: u64, what: &str) {
    let resp = tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap()
        .unwrap();
    assert_eq!(resp.log_id.index, index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_the_entry_while_the_leader_flushes_it() {
    let c = cluster().await;
    c.logs[&1].hold();
    // openraft 0.9 as published sent nothing before the leader's flush.
    let (index, write) = c.write_reaching_followers().await;
    // Two followers that flushed it are a majority: it commits and applies
    // although the leader's own flush is still outstanding.
    committed(write, index, "the write commits without the leader's flush").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_counts_toward_the_quorum_only_once_flushed() {
    let c = cluster().await;
    // The leader and member 3 have not flushed: only member 2 holds the
    // entry durably, one of three.
    c.logs[&1].hold();
    c.logs[&3].hold();
    let (index, write) = c.write_reaching_followers().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !write.is_finished(),
        "committed with one durable copy of three"
    );
    for id in 1..=3u64 {
        assert!(applied(&c.rafts[&id]) < index, "member {id} applied it");
    }

    // The leader's flush makes two of three.
    c.logs[&1].release();
    committed(write, index, "the write commits once the leader flushed it").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_answers_as_follower_only_once_flushed() {
    let c = cluster().await;
    c.logs[&1].hold();
    let (index, write) = c.write_reaching_followers().await;
    committed(write, index, "the followers commit it").await;

    // Cut member 1 off until 2 or 3 leads a later term, then let it hear.
    c.router.isolate(Some(1));
    let mut new_leader = None;
    until("another member leads", || {
        new_leader = [2u64, 3]
            .into_iter()
            .find(|id| c.rafts[id].metrics().borrow().current_leader == Some(*id));
        new_leader.is_some()
    })
    .await;
    let new_leader = new_leader.unwrap();
    c.router.isolate(None);

    // Member 1 learns of the later term but still has an append it made
    // as leader that is not flushed: it must not act as a follower yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = c.rafts[&1].metrics().borrow().clone();
    assert_ne!(
        m.current_leader,
        Some(new_leader),
        "followed before its flush"
    );

    c.logs[&1].release();
    until("member 1 follows the new leader", || {
        c.rafts[&1].metrics().borrow().current_leader == Some(new_leader)
    })
    .await;
    c.shutdown().await;
}

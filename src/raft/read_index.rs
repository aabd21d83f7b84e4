//! Batching of ReadIndex rounds: concurrent linearizable reads share one
//! quorum round.
//!
//! A ReadIndex round (openraft's `get_read_log_id`) makes the leader confirm
//! with a quorum that it still leads, and names the index a read must wait
//! for. Every linearizable read on every member needs one, so a hundred
//! concurrent readers would cost a hundred heartbeat rounds. Here one round
//! is in flight at a time; readers arriving meanwhile wait for the next,
//! which then answers all of them (etcd's `linearizableReadLoop` does the
//! same). A follower does the same with its peer calls to the leader: one
//! in flight, the readers that arrived meanwhile share the next.
//!
//! Why a shared round is still linearizable: a reader is answered only by a
//! round that *started after it arrived*. That round's leadership check and
//! read index both come after the reader's invocation, so the index covers
//! every write acknowledged before the read began. A follower's shared peer
//! call starts after its readers arrived, and the leader answers it from a
//! round that started after the call arrived: the same holds.
//!
//! ```text
//! readers r1 r2 ─┐          r3 r4 r5 ─┐
//!                ▼                    ▼
//!           [ round 1 ]──────►  [ round 2 ]──────► idle
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;

use super::network::{ForwardError, PeerError, Peers, ReadIndexResult};
use super::types::{known_leader, Raft};

/// A follower's answer: the leader's, or why it could not be asked.
pub type RemoteReadIndexResult = Result<ReadIndexResult, PeerError>;

#[derive(Clone)]
pub struct ReadIndex {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    peers: Peers,
    /// Longest wait for one round: a round that never ends must not hold
    /// every later reader behind it.
    round_timeout: Duration,
    /// This member's own rounds, as the leader.
    local: Rounds<ReadIndexResult>,
    /// This member's requests to the leader, as a follower: concurrent
    /// follower reads share one peer call as the leader's share a round.
    remote: Rounds<RemoteReadIndexResult>,
}

/// Readers waiting for the next round, and whether a task runs rounds.
struct Rounds<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    running: bool,
    /// Readers that arrived after the current round started.
    waiting: Vec<oneshot::Sender<T>>,
}

impl<T: Clone> Rounds<T> {
    fn new() -> Self {
        Rounds {
            state: Mutex::new(State {
                running: false,
                waiting: Vec::new(),
            }),
        }
    }

    /// Queues a reader for the next round. True when no task runs rounds:
    /// the caller starts one.
    fn join(&self) -> (oneshot::Receiver<T>, bool) {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().unwrap();
        st.waiting.push(tx);
        (rx, !std::mem::replace(&mut st.running, true))
    }

    /// The readers the next round answers; `None` (and the task stops) when
    /// nobody waits.
    fn next_round(&self) -> Option<Vec<oneshot::Sender<T>>> {
        let mut st = self.state.lock().unwrap();
        if st.waiting.is_empty() {
            st.running = false;
            return None;
        }
        Some(std::mem::take(&mut st.waiting))
    }
}

fn answer<T: Clone>(readers: Vec<oneshot::Sender<T>>, result: T) {
    for reader in readers {
        let _ = reader.send(result.clone());
    }
}

impl ReadIndex {
    pub fn new(raft: Raft, peers: Peers, round_timeout: Duration) -> ReadIndex {
        ReadIndex {
            inner: Arc::new(Inner {
                raft,
                peers,
                round_timeout,
                local: Rounds::new(),
                remote: Rounds::new(),
            }),
        }
    }

    /// The index a linearizable read must see, from a quorum round that
    /// started after this call. `NotLeader` when this member does not lead
    /// (or could not reach a quorum); `Stopped` when Raft has shut down.
    pub async fn read_index(&self) -> ReadIndexResult {
        let (rx, start) = self.inner.local.join();
        if start {
            tokio::spawn(self.inner.clone().local_rounds());
        }
        rx.await.unwrap_or(Err(ForwardError::Stopped))
    }

    /// On a follower: the leader's read index, from a peer call that
    /// started after this call (so the leader's round did too). `NotLeader`
    /// when no other member is known to lead; the caller looks again.
    pub async fn read_index_from_leader(&self) -> RemoteReadIndexResult {
        let (rx, start) = self.inner.remote.join();
        if start {
            tokio::spawn(self.inner.clone().remote_rounds());
        }
        rx.await.unwrap_or(Ok(Err(ForwardError::Stopped)))
    }
}

impl Inner {
    /// Runs rounds until no reader is waiting.
    async fn local_rounds(self: Arc<Self>) {
        while let Some(readers) = self.local.next_round() {
            answer(readers, self.local_round().await);
        }
    }

    async fn remote_rounds(self: Arc<Self>) {
        while let Some(readers) = self.remote.next_round() {
            answer(readers, self.remote_round().await);
        }
    }

    async fn local_round(&self) -> ReadIndexResult {
        let round = tokio::time::timeout(self.round_timeout, self.raft.get_read_log_id());
        match round.await {
            // Readers retry with a new round until their own deadline.
            Err(_) => Err(ForwardError::NotLeader(None)),
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ForwardError::NotLeader(f.leader_id))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(ForwardError::NotLeader(None))
            }
            Ok(Err(RaftError::Fatal(_))) => Err(ForwardError::Stopped),
        }
    }

    /// One peer call to whichever member leads when the round starts: any
    /// leader's read index covers every write acknowledged before it.
    async fn remote_round(&self) -> RemoteReadIndexResult {
        let target = {
            let m = self.raft.metrics();
            let m = m.borrow();
            known_leader(&m)
                .filter(|(l, _)| *l != m.id)
                .map(|(l, node)| (l, node.clone()))
        };
        let Some((leader, node)) = target else {
            return Ok(Err(ForwardError::NotLeader(None)));
        };
        self.peers
            .read_index(leader, &node, self.round_timeout)
            .await
    }
}

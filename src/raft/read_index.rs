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
//!
//! Before it takes a round's readers, the round task lets the tasks that
//! are already runnable go first (`gate::gather`): requests just read off
//! their connections join this round instead of starting the next. It
//! yields again only while a yield brought more readers, so a lone reader
//! waits one pass of the scheduler. Each round costs peer messages (the
//! leader's heartbeats, a follower's call to the leader) that cost as much
//! CPU as many reads; on three members under 100 clients' linearizable
//! ranges this gave +11% ranges/s and -11% server CPU per range (7
//! interleaved runs), with single-client latency unchanged.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::RaftMetrics;
use tokio::sync::{oneshot, watch};

use super::gate::gather;
use super::network::{ForwardError, PeerError, Peers, ReadIndexResult};
use super::types::{known_leader, Member, MemberId, Raft};

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
    /// Raft's metrics, read in place to find the leader for each remote
    /// round (`raft.metrics()` would clone the receiver every round).
    metrics: watch::Receiver<RaftMetrics<MemberId, Member>>,
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

    fn waiting(&self) -> usize {
        self.state.lock().unwrap().waiting.len()
    }

    /// Runs rounds until no reader is waiting.
    async fn run<F: Future<Output = T>>(&self, mut round: impl FnMut() -> F) {
        loop {
            self.gather().await;
            let Some(readers) = self.next_round() else {
                return;
            };
            answer(readers, round().await);
        }
    }

    /// Lets the runnable tasks go first while each pass brings readers
    /// (see the module docs and `gate::gather`).
    async fn gather(&self) {
        gather(|| self.waiting()).await
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
                metrics: raft.metrics(),
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
    async fn local_rounds(self: Arc<Self>) {
        self.local.run(|| self.local_round()).await
    }

    async fn remote_rounds(self: Arc<Self>) {
        self.remote.run(|| self.remote_round()).await
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
            let m = self.metrics.borrow();
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Runs `rounds` on a task, round n answering n; the first round stays
    /// open until `hold` fires, when given. Returns the rounds started.
    fn run_rounds(
        rounds: &Arc<Rounds<usize>>,
        hold: Option<oneshot::Receiver<()>>,
    ) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let started = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(tokio::sync::Mutex::new(hold));
        let (rounds, count) = (rounds.clone(), started.clone());
        let runner = tokio::spawn(async move {
            rounds
                .run(|| {
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    let hold = hold.clone();
                    async move {
                        if let Some(h) = hold.lock().await.take() {
                            let _ = h.await;
                        }
                        n
                    }
                })
                .await
        });
        (started, runner)
    }

    /// Readers that become runnable while a round task starts join its
    /// first round instead of waiting for a second.
    #[tokio::test(flavor = "current_thread")]
    async fn a_round_gathers_the_readers_already_runnable() {
        let rounds = Arc::new(Rounds::<usize>::new());
        let (first, start) = rounds.join();
        assert!(start);
        let (started, runner) = run_rounds(&rounds, None);
        // Spawned after the round task: on this single-threaded runtime
        // they run only once it yields.
        let others: Vec<_> = (0..5)
            .map(|_| {
                let rounds = rounds.clone();
                tokio::spawn(async move {
                    let (rx, start) = rounds.join();
                    assert!(!start, "the round task is running");
                    rx.await.unwrap()
                })
            })
            .collect();
        assert_eq!(first.await.unwrap(), 1);
        for o in others {
            assert_eq!(o.await.unwrap(), 1, "answered by the first round");
        }
        runner.await.unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert!(!rounds.state.lock().unwrap().running);
    }

    /// A reader arriving after a round took its readers waits for the next.
    #[tokio::test(flavor = "current_thread")]
    async fn a_later_reader_gets_the_next_round() {
        let rounds = Arc::new(Rounds::<usize>::new());
        let (first, _) = rounds.join();
        let (release, hold) = oneshot::channel::<()>();
        let (started, runner) = run_rounds(&rounds, Some(hold));
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let (late, start) = rounds.join();
        assert!(!start);
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(late.await.unwrap(), 2);
        runner.await.unwrap();
    }
}

//! Batching of ReadIndex rounds: concurrent linearizable reads share one
//! quorum round.
//!
//! A ReadIndex round (openraft's `get_read_log_id`) makes the leader confirm
//! with a quorum that it still leads, and names the index a read must wait
//! for. Every linearizable read on every member needs one, so a hundred
//! concurrent readers would cost a hundred heartbeat rounds. Here one round
//! is in flight at a time; readers arriving meanwhile wait for the next,
//! which then answers all of them (etcd's `linearizableReadLoop` does the
//! same).
//!
//! Why a shared round is still linearizable: a reader is answered only by a
//! round that *started after it arrived*. That round's leadership check and
//! read index both come after the reader's invocation, so the index covers
//! every write acknowledged before the read began.
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

use super::network::{ForwardError, ReadIndexResult};
use super::types::Raft;

#[derive(Clone)]
pub struct ReadIndex {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    /// Longest wait for one round: a round that never ends must not hold
    /// every later reader behind it.
    round_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A task is running rounds.
    running: bool,
    /// Readers that arrived after the current round started.
    waiting: Vec<oneshot::Sender<ReadIndexResult>>,
}

impl ReadIndex {
    pub fn new(raft: Raft, round_timeout: Duration) -> ReadIndex {
        ReadIndex {
            inner: Arc::new(Inner {
                raft,
                round_timeout,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The index a linearizable read must see, from a quorum round that
    /// started after this call. `NotLeader` when this member does not lead
    /// (or could not reach a quorum); `Stopped` when Raft has shut down.
    pub async fn read_index(&self) -> ReadIndexResult {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = self.inner.state.lock().unwrap();
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            tokio::spawn(self.inner.clone().rounds());
        }
        rx.await.unwrap_or(Err(ForwardError::Stopped))
    }
}

impl Inner {
    /// Runs rounds until no reader is waiting.
    async fn rounds(self: Arc<Self>) {
        loop {
            let readers = {
                let mut st = self.state.lock().unwrap();
                if st.waiting.is_empty() {
                    st.running = false;
                    return;
                }
                std::mem::take(&mut st.waiting)
            };
            let round = tokio::time::timeout(self.round_timeout, self.raft.get_read_log_id());
            let result = match round.await {
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
            };
            for reader in readers {
                let _ = reader.send(result.clone());
            }
        }
    }
}

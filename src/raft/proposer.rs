//! Group commit of proposals: concurrent client writes travel as one log
//! entry.
//!
//! Every write reaching the leader (from its own clients, or forwarded by a
//! follower) is queued here. A small number of batches is in flight at once;
//! whatever queues up meanwhile becomes the next batch, a single
//! [`Request::Batch`] entry: one WAL append and fsync, one replication
//! message, one sled batch for all of them. A write that finds nothing
//! queued and a batch slot free is proposed from its caller's task at once
//! (a lone client's write does not pass through the batching task: two task
//! hand-offs fewer on its path).
//!
//! ```text
//! client ─┐
//! client ─┼─► queue ─► [w1 w2 w3] ─► Raft entry #n ─► apply: rev r, r+1, r+2
//! client ─┘
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::network::ForwardError;
use super::types::{LogId, Raft, Request, Response};
use openraft::error::RaftError;

/// Batches in flight at once: the next batch forms while they commit. Two,
/// not four: fewer, larger entries cost fewer fsyncs and less Raft
/// bookkeeping per write (1 member, 100 clients: 0.086 -> 0.057 fdatasync
/// per put), and one slot is left for a lone write's direct path.
pub(super) const IN_FLIGHT: usize = 2;
/// Upper bounds of one batch.
pub(super) const MAX_BATCH_REQUESTS: usize = 512;
pub(super) const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

type Reply = oneshot::Sender<Result<(Response, LogId), ForwardError>>;

#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    tx: mpsc::UnboundedSender<(Request, Reply)>,
    /// Writes sent to the batching task and not yet taken by it.
    queued: Arc<AtomicUsize>,
    /// Entries in flight, batched or not (the batching task holds one
    /// while it waits for its next batch's first write).
    permits: Arc<Semaphore>,
}

impl Proposer {
    pub fn spawn(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(run(raft.clone(), rx, queued.clone(), permits.clone()));
        Proposer {
            raft,
            tx,
            queued,
            permits,
        }
    }

    /// Proposes `req` on this member (which should be the leader) and waits
    /// until it is applied here. `LeaderChanged` means the outcome is
    /// unknown: leadership moved before or while the entry committed.
    pub async fn propose(&self, req: Request) -> Result<(Response, LogId), ForwardError> {
        // Nothing waits to be batched and a slot is free: this write would
        // be a batch of one anyway. (A semaphore with waiters, such as the
        // batching task, hands no permit to `try_acquire`.)
        if self.queued.load(Ordering::Acquire) == 0 {
            if let Ok(_permit) = self.permits.try_acquire() {
                return write(&self.raft, req).await;
            }
        }
        let (reply, rx) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send((req, reply)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(ForwardError::Stopped);
        }
        rx.await.unwrap_or(Err(ForwardError::Stopped))
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<(Request, Reply)>,
    queued: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        queued.fetch_sub(1, Ordering::AcqRel);
        let mut bytes = first.0.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    bytes += next.0.encoded_len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch).await;
            drop(permit);
        });
    }
}

async fn commit(raft: &Raft, batch: Vec<(Request, Reply)>) {
    let (mut reqs, replies): (Vec<Request>, Vec<Reply>) = batch.into_iter().unzip();
    let entry = match reqs.len() {
        1 => reqs.pop().expect("one request"),
        _ => Request::Batch(reqs),
    };
    match write(raft, entry).await {
        Ok((Response::Batch(responses), log_id)) if replies.len() > 1 => {
            for (reply, resp) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok((resp, log_id)));
            }
        }
        Ok(one) => {
            for reply in replies {
                let _ = reply.send(Ok(one.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Proposes one log entry and waits until it is applied here.
async fn write(raft: &Raft, entry: Request) -> Result<(Response, LogId), ForwardError> {
    match raft.client_write(entry).await {
        Ok(resp) => Ok((resp.data, resp.log_id)),
        Err(RaftError::APIError(_)) => Err(ForwardError::LeaderChanged),
        Err(RaftError::Fatal(_)) => Err(ForwardError::Stopped),
    }
}

//! Group commit of proposals: concurrent client writes travel as one log
//! entry.
//!
//! Every write reaching the leader (from its own clients, or forwarded by a
//! follower) is queued here. A small number of batches is in flight at once;
//! whatever queues up meanwhile becomes the next batch, a single
//! [`Request::Batch`] entry: one WAL append and fsync, one replication
//! message, one sled batch for all of them. A lone client still gets a
//! batch of one at once, so this adds no latency.
//!
//! ```text
//! client ─┐
//! client ─┼─► queue ─► [w1 w2 w3] ─► Raft entry #n ─► apply: rev r, r+1, r+2
//! client ─┘
//! ```

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::network::ForwardError;
use super::types::{LogId, Raft, Request, Response};
use openraft::error::RaftError;

/// Batches in flight at once: the next batch forms while they commit.
pub(super) const IN_FLIGHT: usize = 4;
/// Upper bounds of one batch.
pub(super) const MAX_BATCH_REQUESTS: usize = 512;
pub(super) const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

type Reply = oneshot::Sender<Result<(Response, LogId), ForwardError>>;

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Request, Reply)>,
}

impl Proposer {
    pub fn spawn(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Proposer { tx }
    }

    /// Proposes `req` on this member (which should be the leader) and waits
    /// until it is applied here. `LeaderChanged` means the outcome is
    /// unknown: leadership moved before or while the entry committed.
    pub async fn propose(&self, req: Request) -> Result<(Response, LogId), ForwardError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((req, reply))
            .map_err(|_| ForwardError::Stopped)?;
        rx.await.unwrap_or(Err(ForwardError::Stopped))
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<(Request, Reply)>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = first.0.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
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
    let outcome = match raft.client_write(entry).await {
        Ok(resp) => Ok((resp.data, resp.log_id)),
        Err(RaftError::APIError(_)) => Err(ForwardError::LeaderChanged),
        Err(RaftError::Fatal(_)) => Err(ForwardError::Stopped),
    };
    match outcome {
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

//! Group forwarding: a follower's concurrent client writes travel to the
//! leader in one peer call.
//!
//! A follower does not propose; it forwards each write to the leader
//! (`Peer.Propose`). One gRPC call per write costs an HTTP/2 stream, two
//! bincode passes and a task wake-up on both members, which under many
//! clients is more CPU than the write itself. So, as the leader's
//! [`Proposer`](super::proposer::Proposer) does with its own clients, the
//! writes queued here while earlier calls are in flight leave together, as
//! one [`Request::Batch`]. The leader proposes that batch as it would any
//! request (it may join a larger batch there) and answers with a
//! [`Response::Batch`], which is split back among the callers. A write
//! that finds nothing queued and a call slot free makes its call of one
//! from its own task, as the proposer's lone writes do: no hand-off to the
//! batching task and to the task it would spawn.
//!
//! ```text
//! follower                                   leader
//! client ─┐                                  Peer.Propose
//! client ─┼─► queue ─► [w1 w2 w3] ───────►   proposer ─► entry #n
//! client ─┘                       ◄───────   [r1 r2 r3] (one log id)
//! ```
//!
//! Only the transport is shared: every caller keeps its own retry loop
//! (`Context::propose`), and a failure of the call (or an answer for the
//! whole batch, such as `NotLeader`) is every member's of the batch.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::gate::{gate, Gate, Queue};
use super::network::{PeerError, Peers, ProposeResult};
use super::types::{Member, MemberId, Request, Response};
use crate::raft::network::ForwardError;

// Calls in flight and the bounds of one call: the proposer's, whose
// batches these become.
use super::proposer::{IN_FLIGHT, MAX_BATCH_BYTES, MAX_BATCH_REQUESTS};

type Reply = oneshot::Sender<Result<ProposeResult, PeerError>>;

struct Queued {
    leader: MemberId,
    node: Member,
    req: Request,
    deadline: Instant,
    reply: Reply,
}

/// The follower's queue of writes for the leader.
#[derive(Clone)]
pub struct Forwarder {
    peers: Peers,
    /// `IN_FLIGHT` calls at once (see [`Gate`]).
    gate: Gate<Queued>,
}

impl Forwarder {
    pub fn spawn(peers: Peers) -> Forwarder {
        let (gate, queue) = gate(IN_FLIGHT);
        tokio::spawn(run(peers.clone(), queue));
        Forwarder { peers, gate }
    }

    /// Forwards `req` to `leader` and returns its answer, as
    /// [`Peers::propose`] does, within `timeout`.
    pub async fn propose(
        &self,
        leader: MemberId,
        node: Member,
        req: Request,
        timeout: Duration,
    ) -> Result<ProposeResult, PeerError> {
        if let Some(_slot) = self.gate.alone() {
            // The peer call is bounded by `timeout` itself (`Peers::call`).
            return self.peers.propose(leader, &node, &req, timeout).await;
        }
        let (reply, rx) = oneshot::channel();
        let queued = Queued {
            leader,
            node,
            req,
            deadline: Instant::now() + timeout,
            reply,
        };
        if self.gate.queue(queued).is_err() {
            return Ok(Err(ForwardError::Stopped));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(answer) => answer.unwrap_or(Ok(Err(ForwardError::Stopped))),
            // The batch's call outlives this caller's deadline.
            Err(_) => Err(timed_out(leader)),
        }
    }
}

fn timed_out(leader: MemberId) -> PeerError {
    PeerError::Rpc(
        leader,
        tonic::Status::deadline_exceeded("forwarded write timed out"),
    )
}

async fn run(peers: Peers, mut queue: Queue<Queued>) {
    // A write for another leader than the batch's waits for the next one.
    let mut held: Option<Queued> = None;
    loop {
        let Some(slot) = queue.slot().await else {
            return;
        };
        let first = match held.take() {
            Some(q) => q,
            None => match queue.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        queue.gather().await;
        let mut bytes = first.req.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Some(next) if next.leader == batch[0].leader => {
                    bytes += next.req.encoded_len();
                    batch.push(next);
                }
                Some(other) => {
                    held = Some(other);
                    break;
                }
                None => break,
            }
        }
        let peers = peers.clone();
        tokio::spawn(async move {
            call(&peers, batch).await;
            drop(slot);
        });
    }
}

/// Sends one batch as one call and hands every caller its answer.
async fn call(peers: &Peers, batch: Vec<Queued>) {
    let leader = batch[0].leader;
    let node = batch[0].node.clone();
    // The call may run as long as its most patient caller; each caller
    // stops waiting at its own deadline (see `Context::propose`).
    let deadline = batch.iter().map(|q| q.deadline).max().expect("non-empty");
    let timeout = deadline.saturating_duration_since(Instant::now());
    let (mut reqs, replies): (Vec<Request>, Vec<Reply>) =
        batch.into_iter().map(|q| (q.req, q.reply)).unzip();
    let n = reqs.len();
    let req = match n {
        1 => reqs.pop().expect("one request"),
        _ => Request::Batch(reqs),
    };
    let answer = peers.propose(leader, &node, &req, timeout).await;
    match answer {
        Ok(Ok((Response::Batch(resps), log_id))) if n > 1 && resps.len() == n => {
            for (reply, resp) in replies.into_iter().zip(resps) {
                let _ = reply.send(Ok(Ok((resp, log_id))));
            }
        }
        // A batch answered with anything but one response per request
        // cannot happen; its outcome is unknown, as after a lost leader.
        Ok(Ok(_)) if n > 1 => {
            tracing::error!("the leader answered a forwarded batch of {n} with another shape");
            for reply in replies {
                let _ = reply.send(Ok(Err(ForwardError::LeaderChanged)));
            }
        }
        other => {
            for reply in replies {
                let _ = reply.send(other.clone());
            }
        }
    }
}

//! etcd's v3 gRPC services: one module per service.
//!
//! Each handler decodes and validates the request (`validate`), then either
//! proposes it through Raft (writes) or serves it from the local store after
//! a ReadIndex barrier (linearizable reads) or at once (serializable reads).
//! Every response header carries this member's cluster id, member id and
//! the current Raft term; the revision comes from the store.

pub mod cluster;
pub mod health;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod status;
pub mod validate;
pub mod watch;

use std::time::{Duration, Instant};

use openraft::RaftMetrics;
use prost::Message;

use crate::error::Error;
use crate::lease::Lessor;
use crate::mvcc::Store;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::raft::forwarder::Forwarder;
use crate::raft::log_store::LogStore;
use crate::raft::network::{ForwardError, Peers};
use crate::raft::proposer::Proposer;
use crate::raft::read_index::ReadIndex;
use crate::raft::types::{
    known_leader, Member, MemberAttributes, MemberDirectory, MemberId, Raft, Request, Response,
    TypeConfig,
};

/// etcd's gRPC overhead allowance on top of `--max-request-bytes`.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// What every service handler needs: shared, cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub raft: Raft,
    /// Channels to the other members, for forwarding to the leader.
    pub peers: Peers,
    /// Batches this member's writes for the leader when it follows.
    pub forwarder: Forwarder,
    /// Batches this member's proposals when it leads.
    pub proposer: Proposer,
    /// Shares ReadIndex rounds among concurrent linearizable reads.
    pub reads: ReadIndex,
    pub store: Store,
    /// Lease deadlines and keepalives (see `crate::lease`).
    pub lessor: Lessor,
    /// Members' published names and client URLs.
    pub directory: MemberDirectory,
    /// The Raft log, read for Status's committed index.
    pub log: LogStore<TypeConfig>,
    /// The index of the newest entry the store serves
    /// ([`StateMachine::applied_index`](crate::raft::state_machine::StateMachine::applied_index)).
    pub applied_index: tokio::sync::watch::Receiver<u64>,
    /// Raft's metrics, read in place by every response header and every
    /// write and linearizable read: `raft.metrics()` would clone the
    /// receiver (four reference counts to bump and drop) each time.
    pub metrics: tokio::sync::watch::Receiver<RaftMetrics<MemberId, Member>>,
    pub cluster_id: u64,
    pub member_id: MemberId,
    /// `--data-dir`: Maintenance.Snapshot stages its backup here.
    pub data_dir: std::path::PathBuf,
    pub max_txn_ops: usize,
    /// TEST ONLY (hidden `--unsafe-no-read-barrier`): skip `read_barrier`.
    pub unsafe_no_read_barrier: bool,
    pub max_request_bytes: usize,
    /// The gRPC receive limit: `max_request_bytes` + [`GRPC_OVERHEAD_BYTES`].
    pub max_recv_bytes: usize,
    pub quota_bytes: i64,
    /// etcd's request timeout: 5 s plus two election timeouts.
    pub request_timeout: Duration,
}

impl Context {
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.metrics.borrow().current_term,
        }
    }

    /// Completes a header the store filled with its revision.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header
            .as_ref()
            .map_or_else(|| self.store.current_revision(), |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// etcd's gRPC server refuses a message past its receive limit with
    /// grpc-go's own status. tonic's decoder is given more room (see
    /// `server.rs`) so that this check, with grpc-go's code and message,
    /// is the one clients meet.
    pub fn check_received(&self, msg: &impl Message) -> Result<(), Error> {
        let got = msg.encoded_len();
        if got > self.max_recv_bytes {
            return Err(Error::MessageTooLarge {
                got,
                max: self.max_recv_bytes,
            });
        }
        Ok(())
    }

    /// Proposes a write and waits until this member has applied it.
    ///
    /// The leader proposes locally; a follower forwards the write to the
    /// leader and then waits for its own apply to reach the entry, so a
    /// client reads its own writes on the member it talks to. With no
    /// leader, the call waits for one, up to etcd's request timeout.
    pub async fn propose(&self, req: Request) -> Result<Response, Error> {
        if req.encoded_len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let deadline = Instant::now() + self.request_timeout;
        loop {
            // etcd's proposal waits in raft for a leader and, if none comes,
            // fails with raft's raw context error.
            let (leader, node) = match self.wait_for_leader(deadline).await {
                Err(Error::Timeout) => return Err(Error::DeadlineExceeded),
                other => other?,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Some(node) = node else {
                let write = self.proposer.propose(req);
                return match tokio::time::timeout(remaining, write).await {
                    Err(_) => Err(Error::Timeout),
                    Ok(Ok((resp, _))) => applied(resp),
                    // Leadership moved between our check and the proposal,
                    // or while the entry was in flight: the outcome is not
                    // known, as with etcd's "leader changed".
                    Ok(Err(ForwardError::LeaderChanged | ForwardError::NotLeader(_))) => {
                        Err(Error::LeaderChanged)
                    }
                    Ok(Err(ForwardError::Stopped)) => Err(Error::Stopped),
                };
            };
            let forwarded = self.forwarder.propose(leader, node, req.clone(), remaining);
            match forwarded.await {
                Ok(Ok((resp, log_id))) => {
                    self.wait_applied(log_id.index, deadline).await?;
                    return applied(resp);
                }
                // Nothing was proposed: look for the new leader and retry.
                Ok(Err(ForwardError::NotLeader(_))) => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(ForwardError::LeaderChanged)) => return Err(Error::LeaderChanged),
                Ok(Err(ForwardError::Stopped)) => return Err(Error::LeaderChanged),
                Err(e) => {
                    tracing::debug!(error = %e, "forwarding a write to the leader failed");
                    return Err(if Instant::now() >= deadline {
                        Error::Timeout
                    } else {
                        Error::LeaderChanged
                    });
                }
            }
        }
    }

    /// etcd's publish: proposes this member's name and client URLs until
    /// they are applied, retrying while there is no leader. Runs in the
    /// background from start-up.
    pub async fn publish(self, name: String, client_urls: Vec<String>) {
        let attrs = MemberAttributes {
            member_id: self.member_id,
            name,
            client_urls,
        };
        let mut pause = Duration::from_millis(100);
        loop {
            if self.directory.read().unwrap().get(&self.member_id) == Some(&attrs) {
                return;
            }
            match self.propose(Request::Publish(attrs.clone())).await {
                Ok(_) => {
                    tracing::info!(member_id = %format!("{:x}", self.member_id), "published member attributes")
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes failed; retrying")
                }
            }
            if self.metrics.borrow().running_state.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// The ReadIndex barrier of a linearizable read: the leader confirms its
    /// leadership with a quorum and names the index a read must see; this
    /// member then waits until its store has applied that index.
    pub async fn read_barrier(&self) -> Result<(), Error> {
        if self.unsafe_no_read_barrier {
            return Ok(());
        }
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let (_, forward_to) = self.wait_for_leader(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let index = if forward_to.is_none() {
                match tokio::time::timeout(remaining, self.reads.read_index()).await {
                    Err(_) => return Err(Error::Timeout),
                    Ok(Ok(index)) => Some(index),
                    Ok(Err(ForwardError::Stopped)) => return Err(Error::Stopped),
                    Ok(Err(_)) => None,
                }
            } else {
                match tokio::time::timeout(remaining, self.reads.read_index_from_leader()).await {
                    Err(_) => return Err(Error::Timeout),
                    Ok(Ok(Ok(index))) => Some(index),
                    Ok(Ok(Err(
                        ForwardError::Stopped
                        | ForwardError::NotLeader(_)
                        | ForwardError::LeaderChanged,
                    ))) => None,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "ReadIndex from the leader failed");
                        None
                    }
                }
            };
            match index {
                Some(index) => return self.wait_applied(index, deadline).await,
                // Reads are safe to retry until the deadline.
                None if Instant::now() < deadline => tokio::time::sleep(RETRY_PAUSE).await,
                None => return Err(Error::Timeout),
            }
        }
    }

    /// The current leader, waiting up to `deadline` for one to be known,
    /// with its member record when it is another member (the address to
    /// forward to; `None` when this member leads, which needs no copy of
    /// it).
    pub(crate) async fn wait_for_leader(
        &self,
        deadline: Instant,
    ) -> Result<(MemberId, Option<Member>), Error> {
        let of = |m: &RaftMetrics<MemberId, Member>| {
            known_leader(m)
                .map(|(leader, node)| (leader, (leader != self.member_id).then(|| node.clone())))
        };
        // Read in place: every write and linearizable read comes here, and
        // cloning all of RaftMetrics (the leader's replication map too) per
        // request is wasted work.
        if let Some(found) = of(&self.metrics.borrow()) {
            return Ok(found);
        }
        let mut metrics = self.metrics.clone();
        let known = tokio::time::timeout_at(
            deadline.into(),
            metrics.wait_for(|m| m.current_leader.is_some()),
        )
        .await;
        let m = match known {
            Err(_) => return Err(Error::Timeout),
            Ok(Err(_)) => return Err(Error::Stopped),
            Ok(Ok(m)) => m,
        };
        of(&m).ok_or(Error::NoLeader)
    }

    /// Waits until the local state machine has applied `index`: every
    /// linearizable read and every forwarded write waits here. The state
    /// machine publishes its applied index itself (openraft's metrics
    /// change later, after two task hand-offs, and its `Wait` clones all of
    /// RaftMetrics for every waiter at every change of any metric).
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), Error> {
        let mut applied_index = self.applied_index.clone();
        let applied = applied_index.wait_for(|i| *i >= index);
        let outcome = tokio::time::timeout_at(deadline.into(), applied)
            .await
            .map(|r| r.map(|_| ()));
        match outcome {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(Error::Stopped),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// How long a retry waits for a new leader to be known.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// The client's answer from an applied entry.
fn applied(resp: Response) -> Result<Response, Error> {
    match resp {
        Response::Rejected(e) => Err(e.into()),
        data => Ok(data),
    }
}

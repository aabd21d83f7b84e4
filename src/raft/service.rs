//! The peer transport, server side: the `Peer` gRPC service on the peer
//! URLs. Raft RPCs are handed to openraft; forwarded writes and ReadIndex
//! requests are served only by the leader.

use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::network::{ForwardError, ProposeResult, ReadIndexResult};
use super::proposer::Proposer;
use super::read_index::ReadIndex;
use super::types::{Raft, Request as Write};
use crate::proto::oxcdpeerpb::peer_server::Peer;
use crate::proto::oxcdpeerpb::PeerMessage;

pub struct PeerService {
    raft: Raft,
    proposer: Proposer,
    /// Shared ReadIndex rounds, for followers' linearizable reads.
    reads: ReadIndex,
    /// The client-API context, for the lease calls; set once it exists
    /// (the peer service starts first, so that elections can run).
    api: Arc<OnceLock<crate::api::Context>>,
    cluster_id: u64,
    member_id: u64,
}

impl PeerService {
    pub fn new(
        raft: Raft,
        proposer: Proposer,
        reads: ReadIndex,
        api: Arc<OnceLock<crate::api::Context>>,
        cluster_id: u64,
        member_id: u64,
    ) -> Self {
        PeerService {
            raft,
            proposer,
            reads,
            api,
            cluster_id,
            member_id,
        }
    }

    /// Checks the sender belongs to this cluster and decodes its payload.
    fn open<T: DeserializeOwned>(&self, req: Request<PeerMessage>) -> Result<T, Status> {
        let msg = req.into_inner();
        if msg.cluster_id != self.cluster_id {
            tracing::warn!(
                from = %format!("{:x}", msg.from),
                remote_cluster_id = %format!("{:x}", msg.cluster_id),
                local_cluster_id = %format!("{:x}", self.cluster_id),
                "refusing a peer message from another cluster"
            );
            return Err(Status::failed_precondition(format!(
                "request cluster ID mismatch (got {:x} want {:x})",
                msg.cluster_id, self.cluster_id
            )));
        }
        bincode::deserialize(&msg.data).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    fn reply<T: Serialize>(&self, value: &T) -> Result<Response<PeerMessage>, Status> {
        let data = bincode::serialize(value).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(PeerMessage {
            cluster_id: self.cluster_id,
            from: self.member_id,
            data,
        }))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        req: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc = self.open(req)?;
        self.reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let rpc = self.open(req)?;
        self.reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc = self.open(req)?;
        self.reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn propose(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let write: Write = self.open(req)?;
        let leader = self.raft.metrics().borrow().current_leader;
        let result: ProposeResult = if leader != Some(self.member_id) {
            Err(ForwardError::NotLeader(leader))
        } else {
            self.proposer.propose(write).await
        };
        self.reply(&result)
    }

    async fn lease_renew(
        &self,
        req: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let id: i64 = self.open(req)?;
        let result = match self.api.get() {
            Some(ctx) => crate::api::lease::renew_here(ctx, id).await,
            None => Err(ForwardError::NotLeader(None)),
        };
        self.reply(&result)
    }

    async fn lease_time_to_live(
        &self,
        req: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let r: crate::proto::etcdserverpb::LeaseTimeToLiveRequest = self.open(req)?;
        let result = match self.api.get() {
            Some(ctx) => crate::api::lease::time_to_live_here(ctx, &r).await,
            None => Err(ForwardError::NotLeader(None)),
        };
        self.reply(&result)
    }

    async fn ping(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let () = self.open(req)?;
        let leader: Option<u64> = self.raft.metrics().borrow().current_leader;
        self.reply(&leader)
    }

    async fn read_index(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let () = self.open(req)?;
        let result: ReadIndexResult = self.reads.read_index().await;
        self.reply(&result)
    }
}

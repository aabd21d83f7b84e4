//! The peer transport, client side: openraft's RPCs and the followers'
//! forwarding calls, as gRPC on the members' peer URLs (`proto/peer.proto`).
//!
//! One lazily connected channel per peer (`channel::Direct`), shared by
//! Raft replication and by request forwarding; it connects again on the
//! next call when a peer comes back. Every call carries a deadline. A peer
//! that cannot be reached is reported `Unreachable`, which openraft treats
//! as a partition: it backs off and retries.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::{LogId, Member, MemberId, Request, Response, TypeConfig};
use crate::channel::Direct;
use crate::proto::etcdserverpb::{LeaseTimeToLiveRequest, LeaseTimeToLiveResponse};
use crate::proto::oxcdpeerpb::peer_client::PeerClient;
use crate::proto::oxcdpeerpb::PeerMessage;

/// The largest peer message: a batch of entries or a snapshot chunk.
pub const MAX_PEER_MESSAGE: usize = 256 * 1024 * 1024;

/// Why a forwarded call did not run on the leader.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The callee is not the leader; nothing was proposed.
    #[error("not leader (leader is {0:?})")]
    NotLeader(Option<MemberId>),
    /// The callee's Raft stopped.
    #[error("stopped")]
    Stopped,
    /// The entry was appended but the callee lost leadership before it
    /// committed: the outcome is unknown.
    #[error("leader changed")]
    LeaderChanged,
}

/// What the leader answers to a forwarded write.
pub type ProposeResult = Result<(Response, LogId), ForwardError>;
/// What the leader answers to a ReadIndex request: the index to wait for.
pub type ReadIndexResult = Result<u64, ForwardError>;

/// Channels to every known peer, keyed by member id.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    cluster_id: u64,
    me: MemberId,
    connect_timeout: Duration,
    channels: RwLock<HashMap<MemberId, Direct>>,
}

/// A failure to talk to a peer at all (not an answer from it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0:x} has no usable peer URL: {1}")]
    BadUrl(MemberId, String),
    #[error("peer {0:x}: {1}")]
    Rpc(MemberId, tonic::Status),
    #[error("peer {0:x}: undecodable answer: {1}")]
    Decode(MemberId, String),
}

impl Peers {
    pub fn new(cluster_id: u64, me: MemberId, connect_timeout: Duration) -> Peers {
        Peers {
            inner: Arc::new(PeersInner {
                cluster_id,
                me,
                connect_timeout,
                channels: RwLock::new(HashMap::new()),
            }),
        }
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    fn channel(&self, id: MemberId, node: &Member) -> Result<Direct, PeerError> {
        if let Some(c) = self.inner.channels.read().unwrap().get(&id) {
            return Ok(c.clone());
        }
        let url = node
            .peer_urls
            .first()
            .ok_or_else(|| PeerError::BadUrl(id, "none".into()))?;
        let channel = Direct::lazy(
            url,
            self.inner.connect_timeout,
            Some(Duration::from_secs(5)),
        )
        .map_err(|e| PeerError::BadUrl(id, e.to_string()))?;
        self.inner
            .channels
            .write()
            .unwrap()
            .insert(id, channel.clone());
        Ok(channel)
    }

    /// One unary call: encode, send with a deadline, decode the answer.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: MemberId,
        node: &Member,
        method: Method,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let data = bincode::serialize(req).map_err(|e| PeerError::Decode(target, e.to_string()))?;
        let mut client = PeerClient::new(self.channel(target, node)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let mut request = tonic::Request::new(PeerMessage {
            cluster_id: self.inner.cluster_id,
            from: self.inner.me,
            data,
        });
        request.set_timeout(timeout);
        let call = async {
            match method {
                Method::AppendEntries => client.append_entries(request).await,
                Method::Vote => client.vote(request).await,
                Method::InstallSnapshot => client.install_snapshot(request).await,
                Method::Propose => client.propose(request).await,
                Method::ReadIndex => client.read_index(request).await,
                Method::Ping => client.ping(request).await,
                Method::LeaseRenew => client.lease_renew(request).await,
                Method::LeaseTimeToLive => client.lease_time_to_live(request).await,
            }
        };
        // The channel does not enforce the deadline; an expired one fails
        // as tonic's own channel failed it (Cancelled, "Timeout expired").
        let answer = tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::cancelled("Timeout expired")))
            .map_err(|s| PeerError::Rpc(target, s))?;
        bincode::deserialize(&answer.into_inner().data)
            .map_err(|e| PeerError::Decode(target, e.to_string()))
    }

    /// Forwards a client write to the leader.
    pub async fn propose(
        &self,
        leader: MemberId,
        node: &Member,
        req: &Request,
        timeout: Duration,
    ) -> Result<ProposeResult, PeerError> {
        self.call(leader, node, Method::Propose, req, timeout).await
    }

    /// Forwards a lease keepalive to the leader: the granted TTL, 0 for an
    /// unknown lease.
    pub async fn lease_renew(
        &self,
        leader: MemberId,
        node: &Member,
        id: i64,
        timeout: Duration,
    ) -> Result<Result<i64, ForwardError>, PeerError> {
        self.call(leader, node, Method::LeaseRenew, &id, timeout)
            .await
    }

    /// Forwards a LeaseTimeToLive to the leader (header left to the caller).
    pub async fn lease_time_to_live(
        &self,
        leader: MemberId,
        node: &Member,
        req: &LeaseTimeToLiveRequest,
        timeout: Duration,
    ) -> Result<Result<LeaseTimeToLiveResponse, ForwardError>, PeerError> {
        self.call(leader, node, Method::LeaseTimeToLive, req, timeout)
            .await
    }

    /// Asks a peer whom it follows.
    pub async fn ping(
        &self,
        target: MemberId,
        node: &Member,
        timeout: Duration,
    ) -> Result<Option<MemberId>, PeerError> {
        self.call(target, node, Method::Ping, &(), timeout).await
    }

    /// Asks the leader for a ReadIndex.
    pub async fn read_index(
        &self,
        leader: MemberId,
        node: &Member,
        timeout: Duration,
    ) -> Result<ReadIndexResult, PeerError> {
        self.call(leader, node, Method::ReadIndex, &(), timeout)
            .await
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Propose,
    ReadIndex,
    Ping,
    LeaseRenew,
    LeaseTimeToLive,
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: MemberId, node: &Member) -> PeerConnection {
        PeerConnection {
            peers: self.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// openraft's handle on one peer.
pub struct PeerConnection {
    peers: Peers,
    target: MemberId,
    node: Member,
}

impl PeerConnection {
    async fn raft_call<Req, Resp, E>(
        &self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<MemberId, Member, RaftError<MemberId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<MemberId, E>> = self
            .peers
            .call(self.target, &self.node, method, req, option.hard_ttl())
            .await
            .map_err(|e| match &e {
                PeerError::Rpc(_, s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) =>
                {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>>
    {
        self.raft_call(Method::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<MemberId>,
        RPCError<MemberId, Member, RaftError<MemberId, InstallSnapshotError>>,
    > {
        self.raft_call(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>> {
        self.raft_call(Method::Vote, &rpc, &option).await
    }
}

//! Peer transport for openraft.
//!
//! A one-member cluster never sends a Raft message: its single vote is a
//! quorum. Until the peer gRPC transport lands (many-member issue), every
//! attempt to reach another member reports it unreachable, which openraft
//! handles like a network partition (it backs off and retries).

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::types::{Member, MemberId, TypeConfig};

#[derive(Debug, Clone, Default)]
pub struct Network;

#[derive(Debug)]
pub struct PeerClient {
    target: MemberId,
}

#[derive(Debug, thiserror::Error)]
#[error("member {0:x} is unreachable: this build has no peer transport")]
struct NoTransport(MemberId);

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<MemberId, Member, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport(self.target)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: MemberId, _node: &Member) -> PeerClient {
        PeerClient { target }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>>
    {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<MemberId>,
        RPCError<MemberId, Member, RaftError<MemberId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<MemberId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>> {
        Err(self.unreachable())
    }
}

//! etcd's Cluster service. MemberList reads the Raft membership; member
//! changes land with the many-member issue.

use tonic::{Request, Response, Status};

use super::Context;
use crate::error::Error;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;

pub struct ClusterService {
    ctx: Context,
}

impl ClusterService {
    pub fn new(ctx: Context) -> Self {
        ClusterService { ctx }
    }

    fn members(&self) -> Vec<Member> {
        let m = self.ctx.metrics.borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let published = self.ctx.directory.read().unwrap();
        membership
            .nodes()
            .map(|(id, node)| {
                // As in etcd, a member that has not published yet shows no
                // name and no client URLs.
                let attrs = published.get(id);
                Member {
                    id: *id,
                    name: attrs.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: attrs.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(Error::Unimplemented("oxcd: MemberAdd is not supported yet").into())
    }

    async fn member_remove(
        &self,
        _r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(Error::Unimplemented("oxcd: MemberRemove is not supported yet").into())
    }

    async fn member_update(
        &self,
        _r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Error::Unimplemented("oxcd: MemberUpdate is not supported yet").into())
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.ctx.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(Error::Unimplemented("oxcd: MemberPromote is not supported yet").into())
    }
}

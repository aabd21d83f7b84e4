//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use tonic::{Request, Response, Status};

use super::{validate, Context};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::raft::types::{Request as Write, Response as Applied};

pub struct KvService {
    ctx: Context,
}

impl KvService {
    pub fn new(ctx: Context) -> Self {
        KvService { ctx }
    }
}

/// A response of another kind than the request's can only come from a bug.
fn mismatch() -> Status {
    Status::internal("oxcd: state machine answered with the wrong response type")
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = req.into_inner();
        validate::check_range(&r)?;
        if !r.serializable {
            self.ctx.read_barrier().await?;
        }
        let mut resp = self.ctx.store.range(&r).map_err(crate::error::Error::from)?;
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = req.into_inner();
        validate::check_put(&r)?;
        match self.ctx.propose(Write::Put(r)).await? {
            Applied::Put(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let r = req.into_inner();
        validate::check_delete(&r)?;
        match self.ctx.propose(Write::DeleteRange(r)).await? {
            Applied::DeleteRange(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = req.into_inner();
        validate::check_txn(&r, self.ctx.max_txn_ops)?;
        match self.ctx.propose(Write::Txn(r)).await? {
            Applied::Txn(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = req.into_inner();
        let (revision, physical) = (r.revision, r.physical);
        match self.ctx.propose(Write::Compaction(r)).await? {
            Applied::Compaction(mut resp) => {
                if physical {
                    self.ctx.store.wait_compacted(revision).await;
                }
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }
}

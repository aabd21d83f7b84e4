//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use tonic::{Request, Response, Status};

use super::{validate, Context};
use crate::error::Error;
use crate::mvcc;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::request_op::Request as Op;
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

/// etcd's `isTxnSerializable`: every op of both branches is a serializable
/// range (a nested txn counts as not serializable, as in etcd).
fn is_txn_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(&op.request, Some(Op::RequestRange(r)) if r.serializable))
}

/// A response of another kind than the request's can only come from a bug.
fn mismatch() -> Status {
    Status::internal("oxcd: state machine answered with the wrong response type")
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = req.into_inner();
        self.ctx.check_received(&r)?;
        validate::check_range(&r)?;
        if !r.serializable {
            self.ctx.read_barrier().await?;
        }
        let mut resp = self.ctx.store.range(&r).map_err(Error::from)?;
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = req.into_inner();
        self.ctx.check_received(&r)?;
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
        self.ctx.check_received(&r)?;
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
        self.ctx.check_received(&r)?;
        validate::check_txn(&r, self.ctx.max_txn_ops)?;
        if mvcc::is_txn_readonly(&r) {
            // As etcd: a txn that only reads never enters the log; it passes
            // the ReadIndex barrier unless every read is serializable.
            if !is_txn_serializable(&r) {
                self.ctx.read_barrier().await?;
            }
            let mut resp = self.ctx.store.txn_readonly(&r).map_err(Error::from)?;
            self.ctx.fill(&mut resp.header);
            return Ok(Response::new(resp));
        }
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
        self.ctx.check_received(&r)?;
        let (revision, physical) = (r.revision, r.physical);
        match self.ctx.propose(Write::Compaction(r)).await? {
            Applied::Compaction(mut resp) => {
                if physical {
                    // etcd answers a physical compaction once it is done and
                    // committed to the backend.
                    self.ctx.store.wait_compacted(revision).await;
                    self.ctx.store.flush().map_err(Error::internal)?;
                }
                // etcd's header carries the revision at reply time.
                resp.header = Some(self.ctx.header(self.ctx.store.current_revision()));
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }
}

//! etcd's Maintenance service: Status, Alarm list, Defragment, Hash, HashKV
//! and Snapshot (backups, `crate::backup`). Raising alarms, MoveLeader to
//! another member and Downgrade answer Unimplemented.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::Context;
use crate::backup;
use crate::config::ETCD_VERSION;
use crate::error::Error;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;

pub struct MaintenanceService {
    ctx: Context,
}

impl MaintenanceService {
    pub fn new(ctx: Context) -> Self {
        MaintenanceService { ctx }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No alarm is ever raised yet (no quota enforcement, no corruption
        // check), so the list is empty and deactivating is a no-op, as in
        // etcd when no alarm is set.
        match AlarmAction::try_from(req.into_inner().action) {
            Ok(AlarmAction::Get) | Ok(AlarmAction::Deactivate) => {
                Ok(Response::new(AlarmResponse {
                    header: Some(self.ctx.header(self.ctx.store.current_revision())),
                    alarms: vec![],
                }))
            }
            _ => Err(Error::Unimplemented("oxcd: raising alarms is not supported yet").into()),
        }
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let m = self.ctx.metrics.borrow().clone();
        let db_size = self.ctx.store.size_on_disk();
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            // etcd reports the committed index here.
            raft_index: self
                .ctx
                .log
                .committed()
                .map_or(0, |l| l.index)
                .max(m.last_applied.map_or(0, |l| l.index)),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: if m.current_leader.is_none() {
                vec![Error::NoLeader.to_string()]
            } else {
                vec![]
            },
            db_size_in_use: db_size,
            is_learner: false,
            storage_version: String::new(),
            db_size_quota: self.ctx.quota_bytes,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        // sled reclaims space from its own log-structured segments; there is
        // no separate defragmentation pass to run.
        Ok(Response::new(DefragmentResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
        }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        // Not a bolt-file hash as in etcd: see `Store::hash`.
        let store = self.ctx.store.clone();
        let (hash, _rev) = tokio::task::spawn_blocking(move || store.hash())
            .await
            .map_err(|e| Error::Internal(format!("hash task: {e}")))?
            .map_err(|e| Error::from(crate::mvcc::ApplyError::from(e)))?;
        Ok(Response::new(HashResponse {
            // etcd fills the header with the current revision.
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        // etcd serves HashKV from the local store, without a read barrier.
        let rev = req.into_inner().revision;
        let store = self.ctx.store.clone();
        let (h, current) = tokio::task::spawn_blocking(move || store.hash_kv(rev))
            .await
            .map_err(|e| Error::Internal(format!("hash task: {e}")))?
            .map_err(Error::from)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.ctx.header(current)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// `etcdctl snapshot save`: this member's store at its current
    /// revision, in oxcd's backup format (see `crate::backup`).
    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let stream = backup::serve(self.ctx.store.clone(), self.ctx.data_dir.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        let m = self.ctx.metrics.borrow().clone();
        // etcd's order: only the leader moves leadership, then the transferee
        // must be a voting member.
        if m.current_leader != Some(self.ctx.member_id) {
            return Err(Error::NotLeader.into());
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == target)
        {
            return Err(Error::BadLeaderTransferee.into());
        }
        if target != self.ctx.member_id {
            return Err(Error::Unimplemented("oxcd: leader transfer is not supported yet").into());
        }
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
        }))
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Error::Unimplemented("oxcd: Downgrade is not supported").into())
    }
}

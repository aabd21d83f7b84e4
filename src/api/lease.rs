//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive,
//! LeaseTimeToLive, LeaseLeases.
//!
//! Grant and revoke are proposed through Raft like any write. Keepalives
//! and TimeToLive need the deadlines, which only the leader's (primary)
//! lessor holds: this member answers them when it is the primary, waits a
//! moment when it is a leader about to be promoted, and otherwise forwards
//! them to the leader over the peer transport, as etcd does.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::error::Error;
use crate::lease::{IdGen, RenewError};
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use crate::raft::network::{ForwardError, PeerError};
use crate::raft::types::{Member, Request as Write, Response as Applied};

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

pub struct LeaseService {
    ctx: Context,
    ids: Arc<IdGen>,
}

impl LeaseService {
    pub fn new(ctx: Context) -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let ids = Arc::new(IdGen::new(ctx.member_id, millis));
        LeaseService { ctx, ids }
    }
}

fn mismatch() -> Status {
    Status::internal("oxcd: state machine answered with the wrong response type")
}

/// Runs a lease call where the deadlines are: on this member when it leads
/// (`call(None, ..)`), else forwarded to the leader
/// (`call(Some((leader, its record)), ..)`),
/// as etcd forwards keepalives and TimeToLive over its peer transport.
/// Retries while leadership moves, up to etcd's request timeout.
async fn anywhere<T, F, Fut>(ctx: &Context, call: F) -> Result<T, Error>
where
    F: Fn(Option<(u64, Member)>, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<Result<Result<T, ForwardError>, PeerError>, Error>>,
{
    let deadline = Instant::now() + ctx.request_timeout;
    loop {
        let (leader, node) = ctx.wait_for_leader(deadline.into_std()).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match call(node.map(|n| (leader, n)), remaining).await {
            Ok(Ok(Ok(v))) => return Ok(v),
            // Leadership moved under us: find the new leader and retry.
            Err(Error::NotLeader) | Ok(Ok(Err(_))) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "forwarding a lease call failed"),
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leader's side of a forwarded keepalive: the granted TTL, 0 for an
/// unknown lease.
pub(crate) async fn renew_here(ctx: &Context, id: i64) -> Result<i64, ForwardError> {
    let leader = ctx.metrics.borrow().current_leader;
    if leader != Some(ctx.member_id) {
        return Err(ForwardError::NotLeader(leader));
    }
    match renew(ctx, id).await {
        Ok(ttl) => Ok(ttl),
        Err(Error::LeaseNotFound) => Ok(0),
        Err(Error::NotLeader) => Err(ForwardError::NotLeader(None)),
        Err(_) => Err(ForwardError::LeaderChanged),
    }
}

/// The leader's side of a forwarded LeaseTimeToLive (no header).
pub(crate) async fn time_to_live_here(
    ctx: &Context,
    r: &LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, ForwardError> {
    let leader = ctx.metrics.borrow().current_leader;
    if leader != Some(ctx.member_id) {
        return Err(ForwardError::NotLeader(leader));
    }
    time_to_live_local(ctx, r).await.map_err(|e| match e {
        Error::NotLeader => ForwardError::NotLeader(None),
        _ => ForwardError::LeaderChanged,
    })
}

/// LeaseTimeToLive from this member's (primary) lessor; no header.
async fn time_to_live_local(
    ctx: &Context,
    r: &LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Error> {
    let deadline = Instant::now() + ctx.request_timeout;
    wait_primary(ctx, deadline).await?;
    Ok(match ctx.lessor.time_to_live(r.id) {
        // etcd answers an unknown (or already revoked) lease with TTL -1.
        None => LeaseTimeToLiveResponse {
            id: r.id,
            ttl: -1,
            ..Default::default()
        },
        Some((left, granted)) => {
            let keys = if r.keys {
                ctx.store.lease(r.id).map(|l| l.keys).unwrap_or_default()
            } else {
                Vec::new()
            };
            LeaseTimeToLiveResponse {
                header: None,
                id: r.id,
                // Go's int64(Duration.Seconds()): truncated toward zero.
                ttl: left.map_or(i64::MAX, |s| s.trunc() as i64),
                granted_ttl: granted,
                keys,
            }
        }
    })
}

/// Waits until this member's lessor is primary. A member that is not the
/// leader gets `NotLeader` (the caller forwards).
async fn wait_primary(ctx: &Context, deadline: Instant) -> Result<(), Error> {
    let mut changed = ctx.lessor.subscribe();
    loop {
        changed.borrow_and_update();
        if ctx.lessor.is_primary() {
            return Ok(());
        }
        if ctx.metrics.borrow().current_leader != Some(ctx.member_id) {
            return Err(Error::NotLeader);
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            return Err(Error::Timeout);
        }
    }
}

/// etcd `LeaseRenew`: the granted TTL, or `LeaseNotFound` (the stream then
/// answers TTL 0). A lease past its deadline is answered once its revoke
/// is applied, as etcd waits for it.
async fn renew(ctx: &Context, id: i64) -> Result<i64, Error> {
    let deadline = Instant::now() + ctx.request_timeout;
    let mut changed = ctx.lessor.subscribe();
    loop {
        changed.borrow_and_update();
        if ctx.lessor.is_primary() && ctx.lessor.needs_checkpoint_clear(id) {
            // etcd ignores the outcome too: at worst a later leader uses the
            // older, shorter remaining TTL.
            let clear = LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint {
                    id,
                    remaining_ttl: 0,
                }],
            };
            if let Err(e) = ctx.propose(Write::LeaseCheckpoint(clear)).await {
                tracing::debug!(lease = id, error = %e, "clearing a lease checkpoint failed");
            }
        }
        match ctx.lessor.renew(id) {
            Ok(r) => return Ok(r.ttl),
            Err(RenewError::NotFound) => return Err(Error::LeaseNotFound),
            Err(RenewError::NotPrimary) => wait_primary(ctx, deadline).await?,
            Err(RenewError::Expired) => {
                if tokio::time::timeout_at(deadline, changed.changed())
                    .await
                    .is_err()
                {
                    return Err(Error::Timeout);
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut r = req.into_inner();
        self.ctx.check_received(&r)?;
        // etcd raises a short TTL when applying; oxcd fixes it here so the
        // log entry, not each member's configuration, decides it.
        r.ttl = self.ctx.lessor.granted_ttl(r.ttl);
        if r.id == 0 {
            // etcd's reqIDGen; skip ids in use so the grant cannot collide
            // with a lease this member knows.
            loop {
                let id = self.ids.next();
                if id != 0 && !self.ctx.store.lease_exists(id).unwrap_or(true) {
                    r.id = id;
                    break;
                }
            }
        }
        match self.ctx.propose(Write::LeaseGrant(r)).await? {
            Applied::LeaseGrant(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let r = req.into_inner();
        self.ctx.check_received(&r)?;
        match self.ctx.propose(Write::LeaseRevoke(r)).await? {
            Applied::LeaseRevoke(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(mismatch()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            loop {
                let r = match inbound.message().await {
                    Ok(Some(r)) => r,
                    // Client closed its side, or the stream broke.
                    Ok(None) | Err(_) => return,
                };
                // etcd takes the header before renewing, so the revision is
                // never past one at which the lease was revoked.
                let header = Some(ctx.header(ctx.store.current_revision()));
                let id = r.id;
                let renewed = anywhere(&ctx, |leader, remaining| {
                    let ctx = ctx.clone();
                    async move {
                        match leader {
                            None => match renew(&ctx, id).await {
                                Err(Error::LeaseNotFound) => Ok(Ok(Ok(0))),
                                other => other.map(|ttl| Ok(Ok(ttl))),
                            },
                            Some((l, node)) => {
                                Ok(ctx.peers.lease_renew(l, &node, id, remaining).await)
                            }
                        }
                    }
                })
                .await;
                let ttl = match renewed {
                    Ok(ttl) => ttl,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let resp = LeaseKeepAliveResponse {
                    header,
                    id: r.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        let mut resp = anywhere(&self.ctx, |leader, remaining| {
            let (ctx, r) = (self.ctx.clone(), r);
            async move {
                match leader {
                    None => time_to_live_local(&ctx, &r).await.map(|v| Ok(Ok(v))),
                    Some((l, node)) => {
                        Ok(ctx.peers.lease_time_to_live(l, &node, &r, remaining).await)
                    }
                }
            }
        })
        .await?;
        resp.header = Some(self.ctx.header(self.ctx.store.current_revision()));
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .ctx
            .lessor
            .leases()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
            leases,
        }))
    }
}

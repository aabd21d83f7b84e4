//! etcd's v3 gRPC services: one module per service.
//!
//! Each handler decodes and validates the request (`validate`), then either
//! proposes it through Raft (writes) or serves it from the local store after
//! a ReadIndex barrier (linearizable reads) or at once (serializable reads).
//! Every response header carries this member's cluster id, member id and
//! the current Raft term; the revision comes from the store.

pub mod cluster;
pub mod kv;
pub mod maintenance;
pub mod status;
pub mod validate;
pub mod watch;

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use prost::Message;

use crate::error::Error;
use crate::mvcc::Store;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::raft::types::{MemberId, Raft, Request, Response};

/// etcd's gRPC overhead allowance on top of `--max-request-bytes`.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// What every service handler needs: shared, cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub raft: Raft,
    pub store: Store,
    pub cluster_id: u64,
    pub member_id: MemberId,
    pub max_txn_ops: usize,
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
            raft_term: self.raft.metrics().borrow().current_term,
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
    pub async fn propose(&self, req: Request) -> Result<Response, Error> {
        let size = match &req {
            Request::Put(r) => r.encoded_len(),
            Request::DeleteRange(r) => r.encoded_len(),
            Request::Txn(r) => r.encoded_len(),
            Request::Compaction(r) => r.encoded_len(),
        };
        if size > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let write = self.raft.client_write(req);
        match tokio::time::timeout(self.request_timeout, write).await {
            Err(_) => Err(Error::Timeout),
            Ok(Ok(resp)) => match resp.data {
                Response::Rejected(e) => Err(e.into()),
                data => Ok(data),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(if f.leader_id.is_some() {
                    Error::NotLeader
                } else {
                    Error::NoLeader
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(Error::internal(e))
            }
            Ok(Err(RaftError::Fatal(_))) => Err(Error::Stopped),
        }
    }

    /// The ReadIndex barrier of a linearizable read: confirms leadership with
    /// a quorum, then waits until the local store has applied the read index.
    pub async fn read_barrier(&self) -> Result<(), Error> {
        match tokio::time::timeout(self.request_timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(Error::Timeout),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(_))) => Err(Error::NoLeader),
            Ok(Err(RaftError::Fatal(_))) => Err(Error::Stopped),
        }
    }
}

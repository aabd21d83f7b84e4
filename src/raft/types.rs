//! The openraft type configuration: what travels through oxcd's Raft log.
//!
//! A log entry's payload is one etcd write request, exactly as the client
//! sent it (after validation); applying it yields the etcd response, or a
//! deterministic [`ApplyError`] that every member computes alike (for
//! example a Txn whose range reads a compacted revision). Reads never enter
//! the log: they pass a ReadIndex barrier instead.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};

openraft::declare_raft_types!(
    /// oxcd's Raft: node ids are etcd member ids.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = MemberId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// etcd's member id: the first 8 bytes of a SHA-1 over the member's peer URLs
/// and the cluster token (see `cluster::member_id`).
pub type MemberId = u64;

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<MemberId>;
pub type StoredMembership = openraft::StoredMembership<MemberId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<MemberId, Member>;
pub type StorageError = openraft::StorageError<MemberId>;

/// A cluster member as etcd's Cluster API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// The leader these metrics know of, with its member record (`None` when no
/// leader is known, or it is not in the membership). Borrowed: callers copy
/// the record only when they forward to it.
pub fn known_leader(m: &openraft::RaftMetrics<MemberId, Member>) -> Option<(MemberId, &Member)> {
    let leader = m.current_leader?;
    let node = m.membership_config.membership().get_node(&leader)?;
    Some((leader, node))
}

/// What a member publishes about itself through the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub member_id: MemberId,
    pub name: String,
    pub client_urls: Vec<String>,
}

/// Published attributes by member, as applied; shared with the Cluster API.
pub type MemberDirectory =
    std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<MemberId, MemberAttributes>>>;

/// A write request replicated through the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compaction(CompactionRequest),
    /// A grant whose id and TTL the proposer fixed (never 0, raised to the
    /// minimum TTL), so applying it needs no clock and no randomness.
    LeaseGrant(LeaseGrantRequest),
    /// A client's revoke, or the leader's on expiry.
    LeaseRevoke(LeaseRevokeRequest),
    /// The leader's record of remaining TTLs (see `crate::lease`).
    LeaseCheckpoint(LeaseCheckpointRequest),
    /// A member announces its name and client URLs (etcd's "publish"), so
    /// that every member's MemberList shows them.
    Publish(MemberAttributes),
    /// Client requests proposed together as one log entry (group commit of
    /// proposals: one append, one fsync, one apply batch). Applied in order,
    /// each with its own revision, exactly as if proposed one by one.
    Batch(Vec<Request>),
}

impl Request {
    /// The request's size as etcd measures it against `--max-request-bytes`.
    pub fn encoded_len(&self) -> usize {
        use prost::Message;
        match self {
            Request::Put(r) => r.encoded_len(),
            Request::DeleteRange(r) => r.encoded_len(),
            Request::Txn(r) => r.encoded_len(),
            Request::Compaction(r) => r.encoded_len(),
            Request::LeaseGrant(r) => r.encoded_len(),
            Request::LeaseRevoke(r) => r.encoded_len(),
            Request::LeaseCheckpoint(r) => r.encoded_len(),
            Request::Batch(reqs) => reqs.iter().map(Request::encoded_len).sum(),
            Request::Publish(m) => {
                m.name.len() + m.client_urls.iter().map(String::len).sum::<usize>()
            }
        }
    }
}

/// The outcome of applying one [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(LeaseCheckpointResponse),
    /// The responses to a [`Request::Batch`], in order.
    Batch(Vec<Response>),
    /// A request the state machine rejected; it changed nothing.
    Rejected(ApplyError),
    /// A blank or membership entry: no client waits for it.
    None,
}

/// Rejections decided by the state machine, identically on every member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyError {
    Compacted,
    FutureRev,
    KeyNotFound,
    LeaseNotFound,
    LeaseExists,
    LeaseTtlTooLarge,
}

impl From<ApplyError> for crate::error::Error {
    fn from(e: ApplyError) -> Self {
        use crate::error::Error;
        match e {
            ApplyError::Compacted => Error::Compacted,
            ApplyError::FutureRev => Error::FutureRev,
            ApplyError::KeyNotFound => Error::KeyNotFound,
            ApplyError::LeaseNotFound => Error::LeaseNotFound,
            ApplyError::LeaseExists => Error::LeaseExist,
            ApplyError::LeaseTtlTooLarge => Error::LeaseTtlTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{compare, request_op, Compare, RequestOp};

    /// How `PutRequest` was encoded before its bytes fields were marked
    /// `serde_bytes`: serde's default, a sequence of u8.
    #[derive(Serialize)]
    struct PutAsSequences {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
    }

    /// WAL entries written before the change must decode after it: bincode
    /// writes a byte string and a sequence of u8 identically.
    #[test]
    fn bytes_fields_encode_as_before_and_round_trip() {
        let put = PutRequest {
            key: b"some/key".to_vec(),
            value: (0..=255u8).collect(),
            lease: 7,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: true,
        };
        let old = bincode::serialize(&PutAsSequences {
            key: put.key.clone(),
            value: put.value.clone(),
            lease: put.lease,
            prev_kv: put.prev_kv,
            ignore_value: put.ignore_value,
            ignore_lease: put.ignore_lease,
        })
        .unwrap();
        assert_eq!(bincode::serialize(&put).unwrap(), old);

        let txn = Request::Txn(TxnRequest {
            compare: vec![Compare {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put.clone())),
            }],
            failure: vec![],
        });
        let back: Request = bincode::deserialize(&bincode::serialize(&txn).unwrap()).unwrap();
        match back {
            Request::Txn(t) => {
                assert_eq!(t.compare[0].key, b"k");
                assert_eq!(t.compare[0].range_end, b"l");
                assert_eq!(
                    t.compare[0].target_union,
                    Some(compare::TargetUnion::Value(b"v".to_vec()))
                );
                assert_eq!(
                    t.success[0].request,
                    Some(request_op::Request::RequestPut(put))
                );
            }
            other => panic!("decoded {other:?}"),
        }
    }
}

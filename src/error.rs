//! One error type for everything a client can be told, named after etcd's
//! sentinels (`rpctypes.ErrGRPC*`).
//!
//! The messages are etcd's, byte for byte: clients (clientv3 in particular)
//! match on them to turn a status back into a typed error. The only map from
//! these variants to a gRPC status code is `api::status`.

use thiserror::Error;

/// An error answered to a client. `Display` is etcd's exact message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// grpc-go's answer to a message past the server's receive limit
    /// (`--max-request-bytes` plus 512 KiB), which etcd clients see.
    #[error("grpc: received message larger than max ({got} vs. {max})")]
    MessageTooLarge { got: usize, max: usize },
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// What etcd passes through when a write waited its whole request
    /// timeout without any leader: raft's own context error, gRPC Unknown.
    #[error("context deadline exceeded")]
    DeadlineExceeded,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// An RPC whose feature has not landed yet: gRPC `Unimplemented`.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// A failure inside this member (storage I/O, Raft fatal). Clients see
    /// gRPC `Unknown` with the message, as etcd answers unexpected errors.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::mvcc::ApplyError> for Error {
    fn from(e: crate::mvcc::ApplyError) -> Self {
        use crate::mvcc::ApplyError as A;
        match e {
            A::Compacted => Error::Compacted,
            A::FutureRev => Error::FutureRev,
            A::KeyNotFound => Error::KeyNotFound,
            A::LeaseNotFound => Error::LeaseNotFound,
            A::LeaseExists => Error::LeaseExist,
            A::LeaseTtlTooLarge => Error::LeaseTtlTooLarge,
            A::Storage(e) => Error::internal(e),
        }
    }
}

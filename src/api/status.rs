//! The one map from [`Error`] to a gRPC status: code and message exactly as
//! etcd's `rpctypes` answers them.

use tonic::{Code, Status};

use crate::error::Error;

pub fn to_status(e: Error) -> Status {
    let code = match &e {
        Error::EmptyKey
        | Error::KeyNotFound
        | Error::ValueProvided
        | Error::LeaseProvided
        | Error::TooManyOps
        | Error::DuplicateKey
        | Error::InvalidSortOption
        | Error::RequestTooLarge => Code::InvalidArgument,
        Error::Compacted | Error::FutureRev | Error::LeaseTtlTooLarge => Code::OutOfRange,
        Error::NoSpace | Error::MessageTooLarge { .. } => Code::ResourceExhausted,
        Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
        Error::NotLeader | Error::BadLeaderTransferee | Error::LeaseExist => {
            Code::FailedPrecondition
        }
        Error::NoLeader | Error::LeaderChanged | Error::Stopped | Error::Timeout => {
            Code::Unavailable
        }
        Error::Corrupt => Code::DataLoss,
        Error::Unimplemented(_) => Code::Unimplemented,
        Error::Internal(_) | Error::DeadlineExceeded => Code::Unknown,
    };
    Status::new(code, e.to_string())
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        to_status(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_are_etcds() {
        let s = to_status(Error::EmptyKey);
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "etcdserver: key is not provided")
        );
        let s = to_status(Error::Compacted);
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        let s = to_status(Error::LeaseNotFound);
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
        let s = to_status(Error::LeaseExist);
        assert_eq!(
            (s.code(), s.message()),
            (Code::FailedPrecondition, "etcdserver: lease already exists")
        );
        let s = to_status(Error::LeaseTtlTooLarge);
        assert_eq!(
            (s.code(), s.message()),
            (Code::OutOfRange, "etcdserver: too large lease TTL")
        );
        let s = to_status(Error::NoLeader);
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "etcdserver: no leader")
        );
    }
}

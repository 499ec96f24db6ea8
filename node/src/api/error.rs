//! Every error a client can see, with etcd's exact message and gRPC code. This is the one
//! place where cairn's typed errors become `tonic::Status`; clients compare the strings, so
//! they are copied byte for byte from etcd's `api/v3rpc/rpctypes/error.go`.

use tonic::{Code, Status};

use crate::lease::LeaseError;
use crate::mvcc::MvccError;
use crate::raft::RaftError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// fjall keys are limited in size; etcd has no key limit below the request size.
    #[error("cairn: key is longer than {} bytes", crate::mvcc::MAX_KEY_LEN)]
    KeyTooLong,
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
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// etcd bounds nesting only by `--max-txn-ops` and the request size; cairn's validation
    /// and apply recurse, so it also stops at a fixed depth.
    #[error("cairn: txn nesting deeper than {0} levels is not supported")]
    TxnTooDeep(usize),
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A refusal of the lock and election recipes. etcd's v3lock/v3election servers return
    /// these as plain Go errors, which gRPC reports with code Unknown and the text as is.
    #[error("{0}")]
    Concurrency(&'static str),
    /// A capability a later release adds; the message names it.
    #[error("cairn: {0} is not supported yet")]
    NotSupported(&'static str),
    /// A storage or consensus failure the client cannot act on.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl ApiError {
    fn code(&self) -> Code {
        use ApiError::*;
        match self {
            EmptyKey | KeyNotFound | KeyTooLong | ValueProvided | LeaseProvided | TooManyOps
            | DuplicateKey | InvalidSortOption | RequestTooLarge | TxnTooDeep(_) => {
                Code::InvalidArgument
            }
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            NoSpace => Code::ResourceExhausted,
            LeaseNotFound => Code::NotFound,
            NotLeader | LeaseExists => Code::FailedPrecondition,
            NoLeader | Timeout | Stopped => Code::Unavailable,
            NotSupported(_) => Code::Unimplemented,
            Concurrency(_) => Code::Unknown,
            Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<MvccError> for ApiError {
    fn from(e: MvccError) -> ApiError {
        match e {
            MvccError::Compacted => ApiError::Compacted,
            MvccError::FutureRev => ApiError::FutureRev,
            MvccError::KeyNotFound => ApiError::KeyNotFound,
            MvccError::InvalidKey(0) => ApiError::EmptyKey,
            MvccError::InvalidKey(_) => ApiError::KeyTooLong,
            MvccError::LeaseNotFound => ApiError::LeaseNotFound,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<RaftError> for ApiError {
    fn from(e: RaftError) -> ApiError {
        match e {
            RaftError::NoLeader => ApiError::NoLeader,
            RaftError::NotLeader => ApiError::NotLeader,
            RaftError::Timeout => ApiError::Timeout,
            RaftError::Stopped => ApiError::Stopped,
            RaftError::Apply(e) => e.into(),
            RaftError::Lease(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(e: LeaseError) -> ApiError {
        match e {
            // An expired lease is as good as gone: etcd answers a renew with "not found"
            // once its revoke is through.
            LeaseError::NotFound | LeaseError::Expired => ApiError::LeaseNotFound,
            LeaseError::Exists => ApiError::LeaseExists,
            LeaseError::TtlTooLarge => ApiError::LeaseTtlTooLarge,
            // Requests are not forwarded yet, so only the leader serves lease calls.
            LeaseError::NotPrimary => ApiError::NotLeader,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_strings_and_codes() {
        let cases = [
            (
                ApiError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                ApiError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                ApiError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                ApiError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                MvccError::Compacted.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                MvccError::FutureRev.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                ApiError::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                ApiError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                RaftError::Lease(LeaseError::Exists).into(),
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                LeaseError::TtlTooLarge.into(),
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                MvccError::LeaseNotFound.into(),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                RaftError::NoLeader.into(),
                Code::Unavailable,
                "etcdserver: no leader",
            ),
        ];
        for (err, code, msg) in cases {
            let status = Status::from(err);
            assert_eq!((status.code(), status.message()), (code, msg));
        }
    }
}

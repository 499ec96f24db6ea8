//! The one place where the core's errors become gRPC statuses: each error keeps etcd's
//! message (made in `core::error`) and gets the gRPC code etcd answers it with.

use tonic::{Code, Status};

use crate::core::Error;

/// The gRPC code etcd answers `e` with.
pub fn code(e: &Error) -> Code {
    use Error::*;
    match e {
        EmptyKey
        | KeyNotFound
        | KeyTooLong
        | ValueProvided
        | LeaseProvided
        | TooManyOps
        | DuplicateKey
        | InvalidSortOption
        | UnknownAlarmAction(_)
        | RequestTooLarge
        | EmptyWatchRange
        | TxnTooDeep(_) => Code::InvalidArgument,
        Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
        NoSpace => Code::ResourceExhausted,
        Corrupt => Code::DataLoss,
        LeaseNotFound | MemberNotFound => Code::NotFound,
        NotLeader
        | LeaseExists
        | Refused(_)
        | ClusterIdMismatch
        | MemberIdExists
        | PeerUrlsExist
        | NotLearner
        | LearnerNotReady
        | BadLeaderTransferee
        | NotEnoughStartedMembers
        | TooManyLearners => Code::FailedPrecondition,
        BadMemberUrls | UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven
        | InvalidAuthMgmt => Code::InvalidArgument,
        RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
        | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted
        | AuthNotEnabled => Code::FailedPrecondition,
        AuthOldRevision | NoPasswordUser | VerifyOnly | MaintenanceAuth(_) => Code::Unknown,
        NoLeader | Timeout | Stopped | Unhealthy => Code::Unavailable,
        DeadlineExceeded => Code::DeadlineExceeded,
        PermissionDenied | Denied(_) => Code::PermissionDenied,
        InvalidAuthToken | AuthUnavailable(_) => Code::Unauthenticated,
        NotSupported(_) => Code::Unimplemented,
        Concurrency(_) => Code::Unknown,
        Internal => Code::Internal,
    }
}

/// The HTTP status grpc-gateway v1 answers a gRPC code with (`runtime.HTTPStatusFromCode`).
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        Code::Cancelled => S::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => S::BAD_REQUEST,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
    }
}

/// The status a peer call answers `e` with: as a client call, except that "no leader" and
/// "not leader" are ABORTED, which tells the calling member its request was not taken and
/// may be made again once a leader is known (see `raft::network::PeerError::unsent`).
pub fn peer_status(e: Error) -> Status {
    match e {
        Error::NoLeader | Error::NotLeader => Status::new(Code::Aborted, e.to_string()),
        other => other.into(),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(code(&e), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::lease::LeaseError;
    use crate::mvcc::MvccError;
    use crate::raft::{MemberError, RaftError};

    #[test]
    fn etcd_strings_and_codes() {
        let cases = [
            (
                Error::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                Error::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                Error::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                Error::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                RaftError::Member(MemberError::NotFound).into(),
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                RaftError::Member(MemberError::PeerUrlsExist).into(),
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                RaftError::Member(MemberError::IdExists).into(),
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                Error::BadMemberUrls,
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                RaftError::Member(MemberError::NotLearner).into(),
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                RaftError::Member(MemberError::LearnerNotReady).into(),
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                RaftError::Member(MemberError::NotEnoughStarted).into(),
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                RaftError::Member(MemberError::Unhealthy).into(),
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
            ),
            (
                RaftError::Member(MemberError::TooManyLearners).into(),
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                Error::ClusterIdMismatch,
                Code::FailedPrecondition,
                "cluster ID mismatch",
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
                Error::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                Error::LeaseNotFound,
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
            (
                Error::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                Error::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                AuthError::UserEmpty.into(),
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                AuthError::RootUserNotExist.into(),
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                AuthError::AuthNotEnabled.into(),
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                AuthError::OldRevision.into(),
                Code::Unknown,
                "auth: revision in header is old",
            ),
        ];
        for (err, code, msg) in cases {
            let status = Status::from(err);
            assert_eq!((status.code(), status.message()), (code, msg));
        }
    }

    #[test]
    fn http_statuses_are_grpc_gateways() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::Cancelled, 408),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unknown, 500),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ];
        for (code, status) in cases {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn storage_failures_do_not_leak_their_cause() {
        let e: Error = MvccError::Storage(crate::mvcc::StorageFault::Corrupt(
            "/var/lib/cairn/db/keyspaces/3: checksum".into(),
        ))
        .into();
        let status = Status::from(e);
        assert_eq!(status.code(), Code::Internal);
        assert!(
            !status.message().contains("/var/lib"),
            "{}",
            status.message()
        );
    }
}

//! Every error a client can see, with etcd's exact message (copied byte for byte from
//! etcd's `api/v3rpc/rpctypes/error.go`: clients compare the strings). The core answers
//! with these whatever the transport; `api::error` gives each its gRPC code.
//!
//! Lower layers' errors become these here, in one place. A failure the client cannot act
//! on (storage, consensus) is logged with its cause and answered with a fixed message, so
//! file paths and storage internals never reach a client.

use crate::auth::AuthError;
use crate::lease::LeaseError;
use crate::mvcc::MvccError;
use crate::raft::{MemberError, RaftError};

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// An Alarm request whose action is not GET, ACTIVATE or DEACTIVATE (etcd 3.5.1 applies
    /// it, answers nothing and its gRPC server crashes on the nil response).
    #[error("cairn: unknown alarm action {0}")]
    UnknownAlarmAction(i32),
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
    /// A member raised the CORRUPT alarm: writes are refused until it is disarmed.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
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
    /// The caller's deadline passed first (grpc-go's text for an expired context).
    #[error("context deadline exceeded")]
    DeadlineExceeded,
    /// A watch whose range holds no key (etcd answers it as a canceled watch).
    #[error("mvcc: watcher range is empty")]
    EmptyWatchRange,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// etcd 3.5 has no client error for these three: its server answers the auth store's
    /// own text with code Unknown.
    #[error("auth: revision in header is old")]
    AuthOldRevision,
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// Authenticate on a JWT member given only the public key.
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    /// etcd's maintenance server returns its admin check's errors unconverted: the auth
    /// store's own text (`auth: permission denied`, `auth: user name is empty`...), code
    /// Unknown.
    #[error("{0}")]
    MaintenanceAuth(AuthError),
    /// An authentication plugin failed (trap, timeout) and its policy refuses the request;
    /// the message names the plugin. Not `InvalidAuthToken`: the token may be fine.
    #[error("{0}")]
    AuthUnavailable(String),
    /// An admission hook refused a write; the reason is the hook's own.
    #[error("{0}")]
    Denied(String),
    /// An admission plugin refused a write and is configured to answer FailedPrecondition
    /// (the write may succeed once the state it depends on changes).
    #[error("{0}")]
    Refused(String),
    /// A refusal of the lock and election recipes. etcd's v3lock/v3election servers return
    /// these as plain Go errors, which gRPC reports with code Unknown and the text as is.
    #[error("{0}")]
    Concurrency(&'static str),
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberIdExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlsExist,
    #[error("etcdserver: given member URLs are invalid")]
    BadMemberUrls,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// A peer call from a member of another cluster (etcd's rafthttp wording).
    #[error("cluster ID mismatch")]
    ClusterIdMismatch,
    /// A capability a later release adds; the message names it.
    #[error("cairn: {0} is not supported yet")]
    NotSupported(&'static str),
    /// A storage or consensus failure the client cannot act on. The cause was logged when
    /// the error was made; the client sees only this fixed text.
    #[error("etcdserver: internal error (see the server log)")]
    Internal,
}

impl Error {
    /// Logs `cause` and answers the fixed internal error.
    pub fn internal(cause: impl std::fmt::Display) -> Error {
        tracing::error!(error = %cause, "request failed");
        Error::Internal
    }
}

impl From<MvccError> for Error {
    fn from(e: MvccError) -> Error {
        match e {
            MvccError::Compacted => Error::Compacted,
            MvccError::FutureRev => Error::FutureRev,
            MvccError::KeyNotFound => Error::KeyNotFound,
            MvccError::InvalidKey(0) => Error::EmptyKey,
            MvccError::InvalidKey(_) => Error::KeyTooLong,
            MvccError::LeaseNotFound => Error::LeaseNotFound,
            other => Error::internal(other),
        }
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Error {
        match e {
            AuthError::RootUserNotExist => Error::RootUserNotExist,
            AuthError::RootRoleNotExist => Error::RootRoleNotExist,
            AuthError::UserAlreadyExist => Error::UserAlreadyExist,
            AuthError::UserEmpty => Error::UserEmpty,
            AuthError::UserNotFound => Error::UserNotFound,
            AuthError::RoleAlreadyExist => Error::RoleAlreadyExist,
            AuthError::RoleNotFound => Error::RoleNotFound,
            AuthError::RoleEmpty => Error::RoleEmpty,
            AuthError::PermissionNotGiven => Error::PermissionNotGiven,
            AuthError::AuthFailed => Error::AuthFailed,
            AuthError::NoPasswordUser => Error::NoPasswordUser,
            AuthError::PermissionDenied => Error::PermissionDenied,
            AuthError::RoleNotGranted => Error::RoleNotGranted,
            AuthError::PermissionNotGranted => Error::PermissionNotGranted,
            AuthError::AuthNotEnabled => Error::AuthNotEnabled,
            AuthError::OldRevision => Error::AuthOldRevision,
            AuthError::InvalidAuthMgmt => Error::InvalidAuthMgmt,
            AuthError::VerifyOnly => Error::VerifyOnly,
            AuthError::SignFailed => Error::Internal,
        }
    }
}

impl From<RaftError> for Error {
    fn from(e: RaftError) -> Error {
        match e {
            RaftError::NoLeader => Error::NoLeader,
            RaftError::NotLeader(_) => Error::NotLeader,
            // The leader could not be asked in time: the outcome is unknown to the client.
            RaftError::Peer(e) => {
                tracing::warn!(error = %e, "request to the leader failed");
                Error::Timeout
            }
            RaftError::Timeout => Error::Timeout,
            RaftError::Stopped => Error::Stopped,
            RaftError::Apply(e) => e.into(),
            RaftError::NoSpace => Error::NoSpace,
            RaftError::Corrupt => Error::Corrupt,
            RaftError::Member(e) => match e {
                MemberError::NotFound => Error::MemberNotFound,
                MemberError::IdExists => Error::MemberIdExists,
                MemberError::PeerUrlsExist => Error::PeerUrlsExist,
                MemberError::NotLearner => Error::NotLearner,
                MemberError::LearnerNotReady => Error::LearnerNotReady,
                MemberError::NotEnoughStarted => Error::NotEnoughStartedMembers,
                MemberError::Unhealthy => Error::Unhealthy,
                MemberError::TooManyLearners => Error::TooManyLearners,
            },
            RaftError::Lease(e) => e.into(),
            RaftError::Auth(e) => e.into(),
            // The node stops on a fatal error; tell the client to go elsewhere meanwhile.
            other => {
                tracing::error!(error = %other, "raft failed");
                Error::Stopped
            }
        }
    }
}

impl From<LeaseError> for Error {
    fn from(e: LeaseError) -> Error {
        match e {
            // An expired lease is as good as gone: etcd answers a renew with "not found"
            // once its revoke is through.
            LeaseError::NotFound | LeaseError::Expired => Error::LeaseNotFound,
            LeaseError::Exists => Error::LeaseExists,
            LeaseError::TtlTooLarge => Error::LeaseTtlTooLarge,
            // Only once no member has led for a whole wait (`Core::on_lessor`).
            LeaseError::NotPrimary => Error::NotLeader,
            other => Error::internal(other),
        }
    }
}

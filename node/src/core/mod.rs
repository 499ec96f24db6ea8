//! The transport-free core: one operation per etcd request, whatever carried it (gRPC
//! today, the HTTP gateway next). Every operation takes the request and a
//! [`RequestContext`] and runs one pipeline, in this order:
//!
//! ```text
//! validate -> authenticate -> authorize -> admission (writes) -> quota (writes)
//!          -> propose -> wait for apply -> header
//! ```
//!
//! Reads stop after authorization: they wait for a ReadIndex barrier (unless
//! `serializable`) and read the local MVCC store, client-sized reads on the [`ReadPool`].
//! Authentication, authorization and admission are the [`hooks`] traits; the defaults
//! allow everything.
//!
//! Owns: request validation, the hooks' call sites, proposals and their results, response
//! headers, the lock/election recipes, the lease-expiry loop, and the client-visible
//! errors ([`Error`]). Must not know about tonic, HTTP or any wire format beyond etcd's
//! protobuf messages, which are the domain types.

mod alarms;
mod auth;
mod cluster;
mod concurrency;
mod context;
mod election;
mod error;
mod forward;
pub mod hooks;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod read_pool;
mod validate;
mod watch;

use std::future::Future;
use std::sync::Arc;

use futures::future::{self, Either, FutureExt};

pub use alarms::{spawn_monitor as spawn_alarm_monitor, AlarmSettings, Inconsistent};
pub use context::{Credentials, Principal, PrincipalSource, RequestContext, Transport};
pub use election::Observations;
pub use error::Error;
pub use hooks::{Hooks, Operation};
pub use kv::RangeChunks;
pub use lease::spawn_expiry as spawn_lease_expiry;
pub use maintenance::{Health, HealthCheck};
pub use read_pool::ReadPool;

use crate::auth::AuthStore;
use crate::lease::Lessor;
use crate::mvcc::Mvcc;
use crate::proto::cairnpb::{command::Cmd, Command};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::raft::{Applied, RaftNode};
use crate::storage::Store;
use crate::watch::WatchHub;

/// The etcd server version cairn reports to clients. Kubernetes and other clients gate
/// features on it, so it must look like an etcd release; cairn's own version is reported
/// separately (`/version`'s `cairn` field).
pub const ETCD_SERVER_VERSION: &str = "3.5.0";
/// The etcd cluster (API) version.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// Limits from the configuration that the core enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_backend_bytes: u64,
}

/// What the core runs on.
pub struct Parts {
    pub raft: Arc<RaftNode>,
    pub mvcc: Arc<Mvcc>,
    pub lessor: Arc<Lessor>,
    pub store: Arc<Store>,
    pub watch: Arc<WatchHub>,
    pub cluster_id: u64,
    pub member_id: u64,
    pub limits: Limits,
    /// etcd's auth store: the Auth service's state (its checks are among `hooks`).
    pub auth: Arc<AuthStore>,
    pub hooks: Hooks,
    /// Where client-sized reads run.
    pub reads: ReadPool,
    /// NOSPACE auto-disarm and the corruption checks.
    pub alarm_settings: AlarmSettings,
}

/// The node's request handling, shared by every transport.
pub struct Core {
    raft: Arc<RaftNode>,
    mvcc: Arc<Mvcc>,
    lessor: Arc<Lessor>,
    store: Arc<Store>,
    watch: Arc<WatchHub>,
    cluster_id: u64,
    member_id: u64,
    limits: Limits,
    auth: Arc<AuthStore>,
    hooks: Hooks,
    reads: ReadPool,
    alarm_settings: AlarmSettings,
}

impl Core {
    pub fn new(parts: Parts) -> Arc<Core> {
        Arc::new(Core {
            reads: parts.reads,
            raft: parts.raft,
            mvcc: parts.mvcc,
            lessor: parts.lessor,
            store: parts.store,
            watch: parts.watch,
            cluster_id: parts.cluster_id,
            member_id: parts.member_id,
            limits: parts.limits,
            auth: parts.auth,
            hooks: parts.hooks,
            alarm_settings: parts.alarm_settings,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// etcd's response header at store revision `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.status().term,
        })
    }

    /// The header at the current store revision.
    fn current_header(&self) -> Option<ResponseHeader> {
        self.header(self.mvcc.current_revision())
    }

    /// The pipeline's authenticate and authorize steps. The caller is authenticated once
    /// per context; the node's own requests are already, and are never refused.
    async fn authorize(&self, ctx: &RequestContext, op: Operation<'_>) -> Result<(), Error> {
        let principal = match ctx.principal() {
            Some(p) => p,
            None => ctx.set_principal(self.authenticate(ctx).await?),
        };
        if ctx.transport == context::Transport::Internal {
            return Ok(());
        }
        for authorizer in &self.hooks.authorizers {
            authorizer.authorize(principal, &op).await?;
        }
        Ok(())
    }

    /// The first authenticator that claims the credentials names the caller. With
    /// authentication on, a token or password that none claims is invalid (as etcd answers
    /// a token it did not issue); a caller that presents neither is anonymous.
    async fn authenticate(&self, ctx: &RequestContext) -> Result<Principal, Error> {
        if !self.hooks.authenticators.iter().any(|a| a.enabled()) {
            return Ok(Principal::anonymous());
        }
        for authenticator in self.hooks.authenticators.iter().filter(|a| a.enabled()) {
            if let Some(principal) = authenticator.authenticate(ctx).await? {
                return Ok(principal);
            }
        }
        let c = &ctx.credentials;
        if c.token.is_some() || c.user_password.is_some() {
            return Err(Error::InvalidAuthToken);
        }
        Ok(Principal::anonymous())
    }

    /// Proposes `cmd` and waits until it is applied; `pick` takes the result kind the
    /// command produces (anything else is a bug, reported as an internal error).
    async fn propose<T>(&self, cmd: Cmd, pick: fn(Applied) -> Option<T>) -> Result<T, Error> {
        let applied = self.propose_anywhere(Command { cmd: Some(cmd) }).await?;
        pick(applied).ok_or_else(|| Error::internal("apply answered with another result kind"))
    }

    /// Fills in etcd's header of a response whose header carries only the revision, as
    /// apply and MVCC reads make them.
    fn stamp<R: HasHeader>(&self, mut resp: R) -> R {
        let revision = resp.header_mut().as_ref().map_or(0, |h| h.revision);
        *resp.header_mut() = self.header(revision);
        resp
    }
}

/// Runs `op` until the context's deadline, if it has one.
///
/// Built from combinators, not as an `async fn`: an `async fn` keeps its future argument and
/// the future it awaits side by side, doubling a request's state (several KiB, with the
/// read barrier's) at each such layer, and every move of the request's future copies it.
fn until_deadline<T, F>(ctx: &RequestContext, op: F) -> impl Future<Output = Result<T, Error>>
where
    F: Future<Output = Result<T, Error>>,
{
    match ctx.deadline {
        None => Either::Left(op),
        // Expired already: refuse before starting. (A timer set in the past fires on the
        // timer's next tick, and a fast write could finish before it.)
        Some(deadline) if deadline <= std::time::Instant::now() => {
            Either::Right(Either::Left(future::ready(Err(Error::DeadlineExceeded))))
        }
        Some(deadline) => Either::Right(Either::Right(
            tokio::time::timeout_at(deadline.into(), op)
                .map(|result| result.unwrap_or(Err(Error::DeadlineExceeded))),
        )),
    }
}

/// A response with etcd's header.
trait HasHeader {
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! has_header {
    ($($t:ident),* $(,)?) => {
        $(impl HasHeader for crate::proto::etcdserverpb::$t {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        })*
    };
}

has_header!(
    RangeResponse,
    PutResponse,
    DeleteRangeResponse,
    TxnResponse,
    LeaseGrantResponse,
    LeaseRevokeResponse,
);

#[cfg(test)]
mod tests;

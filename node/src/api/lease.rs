//! etcd's Lease service (`api/v3rpc/lease.go` over `etcdserver/v3_server.go`), and the
//! leader's expiry loop. Grant and revoke go through Raft; keep-alive, time-to-live and the
//! lease list are answered by the leader from the [`Lessor`](crate::lease::Lessor) alone,
//! as etcd's primary lessor does. Requests are not forwarded to another leader yet: a
//! member that is not the leader answers "not leader".
//!
//! Expiry: every [`EXPIRY_TICK`] the leader proposes a revoke for each expired lease (at
//! most [`REVOKES_PER_TICK`], etcd's 1000 revokes/s), which deletes the lease's keys in one
//! revision. Becoming leader refreshes every lease (etcd's `Promote`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::ApiError;
use super::{metered, Node};
use crate::lease::{counters, LeaseError, MAX_LEASE_TTL};
use crate::proto::cairnpb::{command::Cmd, Command};
use crate::proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::raft::{Applied, RaftError};

const SERVICE: &str = "etcdserverpb.Lease";

/// How often the leader looks for expired leases (etcd's lessor loop: 500 ms).
const EXPIRY_TICK: Duration = Duration::from_millis(500);
/// etcd's `leaseRevokeRate` (1000/s) per tick.
const REVOKES_PER_TICK: usize = 500;
/// How often a keep-alive for an expired lease looks whether its revoke is through.
const REVOKE_POLL: Duration = Duration::from_millis(20);
/// How long a keep-alive waits for an expired lease's revoke before giving up.
const REVOKE_WAIT: Duration = Duration::from_secs(5);

pub struct LeaseService(pub Arc<Node>);

impl Node {
    /// The API-side check of a put's lease, before proposing (apply checks again). A put
    /// that keeps the old value is left to apply, which first answers "key not found" if
    /// the key is missing, as etcd's `checkRequestPut`.
    pub(super) fn check_put_lease(&self, lease: i64, ignore_value: bool) -> Result<(), ApiError> {
        if lease != 0 && !ignore_value && !self.lessor.contains(lease) {
            return Err(ApiError::LeaseNotFound);
        }
        Ok(())
    }

    /// etcd's `LeaseGrant`: id 0 asks the server to choose one; a TTL below the minimum is
    /// raised to it.
    pub(super) async fn lease_grant(
        &self,
        mut req: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, ApiError> {
        if self.over_quota() {
            return Err(ApiError::NoSpace);
        }
        if req.ttl > MAX_LEASE_TTL {
            return Err(ApiError::LeaseTtlTooLarge);
        }
        if req.id == 0 {
            req.id = self.lessor.fresh_id();
        } else if self.lessor.contains(req.id) {
            return Err(ApiError::LeaseExists);
        }
        req.ttl = req.ttl.max(self.lessor.min_ttl());
        match self.raft.propose(command(Cmd::LeaseGrant(req))).await? {
            Applied::LeaseGrant(mut resp) => {
                resp.header = self.header(resp.header.map_or(0, |h| h.revision));
                Ok(resp)
            }
            _ => Err(ApiError::Internal(
                "apply answered a lease grant with another result".into(),
            )),
        }
    }

    async fn lease_revoke(&self, req: LeaseRevokeRequest) -> Result<LeaseRevokeResponse, ApiError> {
        if !self.lessor.contains(req.id) {
            return Err(ApiError::LeaseNotFound);
        }
        match self.raft.propose(command(Cmd::LeaseRevoke(req))).await? {
            Applied::LeaseRevoke(mut resp, _events) => {
                resp.header = self.header(resp.header.map_or(0, |h| h.revision));
                Ok(resp)
            }
            _ => Err(ApiError::Internal(
                "apply answered a lease revoke with another result".into(),
            )),
        }
    }

    /// One keep-alive: the renewed TTL, or TTL 0 for a lease that does not exist (etcd's
    /// `leaseKeepAlive` turns "not found" into TTL 0). An expired lease is renewed by no
    /// one: as etcd, wait until its revoke is through, then answer TTL 0.
    async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, ApiError> {
        let deadline = tokio::time::Instant::now() + REVOKE_WAIT;
        let ttl = loop {
            match self.lessor.renew(id) {
                Ok(ttl) => break ttl,
                Err(LeaseError::NotFound) => break 0,
                Err(LeaseError::Expired) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(REVOKE_POLL).await;
                }
                Err(LeaseError::Expired) => return Err(ApiError::Timeout),
                Err(e) => return Err(e.into()),
            }
        };
        Ok(LeaseKeepAliveResponse {
            header: self.header(self.mvcc.current_revision()),
            id,
            ttl,
        })
    }

    /// etcd's `LeaseTimeToLive`: an unknown lease is answered with TTL -1, not an error.
    async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, ApiError> {
        let header = self.header(self.mvcc.current_revision());
        let Some(ttl) = self.lessor.time_to_live(req.id)? else {
            return Ok(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                ..Default::default()
            });
        };
        let keys = if req.keys {
            self.mvcc.lease_keys(req.id)?
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: ttl.remaining,
            granted_ttl: ttl.granted,
            keys,
        })
    }

    async fn lease_leases(&self) -> Result<LeaseLeasesResponse, ApiError> {
        Ok(LeaseLeasesResponse {
            header: self.header(self.mvcc.current_revision()),
            leases: self
                .lessor
                .leases()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        })
    }

    /// Revokes a lease the expiry loop found expired.
    async fn revoke_expired(&self, id: i64) {
        match self
            .raft
            .propose(command(Cmd::LeaseRevoke(LeaseRevokeRequest { id })))
            .await
        {
            Ok(_) => counters().expired.inc(),
            // Revoked by a client meanwhile.
            Err(RaftError::Lease(LeaseError::NotFound)) => {}
            // It is handed out again after the retry interval.
            Err(e) => {
                tracing::warn!(lease = %format!("{id:x}"), error = %e, "revoking an expired lease failed")
            }
        }
    }
}

/// Starts the leader's expiry loop (see the module header).
pub fn spawn_expiry(node: Arc<Node>) {
    // Promote at once, so keep-alives work as soon as the services are up.
    let mut leading = leading_term(&node);
    if leading.is_some() {
        node.lessor.promote();
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(EXPIRY_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let term = leading_term(&node);
            if term != leading {
                match term {
                    Some(_) => node.lessor.promote(),
                    None => node.lessor.demote(),
                }
                leading = term;
            }
            for id in node.lessor.expired(REVOKES_PER_TICK) {
                let node = node.clone();
                tokio::spawn(async move { node.revoke_expired(id).await });
            }
        }
    });
}

/// The term this member leads in, if it is the leader: a new term means a new promotion.
fn leading_term(node: &Node) -> Option<u64> {
    let status = node.raft.status();
    status.is_leader.then_some(status.term)
}

fn command(cmd: Cmd) -> Command {
    Command { cmd: Some(cmd) }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        metered(SERVICE, "LeaseGrant", self.0.lease_grant(req.into_inner())).await
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        metered(
            SERVICE,
            "LeaseRevoke",
            self.0.lease_revoke(req.into_inner()),
        )
        .await
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Answers each request in order; an error ends the stream, as etcd.
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let node = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        let m = crate::metrics::get();
        let labels = ["bidi_stream", SERVICE, "LeaseKeepAlive"];
        m.grpc_started.with_label_values(&labels).inc();
        tokio::spawn(async move {
            let mut code = "OK";
            // A transport error from the client ends the stream like a close.
            while let Ok(Some(req)) = inbound.message().await {
                let reply = node.lease_keep_alive(req.id).await.map_err(Status::from);
                if let Err(status) = &reply {
                    code = super::code_name(status.code());
                }
                if tx.send(reply).await.is_err() || code != "OK" {
                    break;
                }
            }
            m.grpc_handled
                .with_label_values(&[labels[0], labels[1], labels[2], code])
                .inc();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        metered(
            SERVICE,
            "LeaseTimeToLive",
            self.0.lease_time_to_live(req.into_inner()),
        )
        .await
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        metered(SERVICE, "LeaseLeases", self.0.lease_leases()).await
    }
}

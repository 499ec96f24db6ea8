//! etcd's lease requests (`etcdserver/v3_server.go`) and the leader's expiry loop. Grant and
//! revoke go through Raft; keep-alive, time-to-live and the lease list are answered by the
//! leader from the [`Lessor`](crate::lease::Lessor) alone, as etcd's primary lessor does.
//! A follower hands keep-alive, time-to-live and the lease list to the leader
//! (`core::forward`), as etcd does.
//!
//! Expiry: every [`EXPIRY_TICK`] the leader proposes a revoke for each expired lease (at
//! most [`REVOKES_PER_TICK`], etcd's 1000 revokes/s), which deletes the lease's keys in one
//! revision. Becoming leader refreshes every lease (etcd's `Promote`).
//!
//! Checkpoints: on the same tick the leader proposes the remaining TTLs of the leases whose
//! checkpoint is due (at most [`CHECKPOINTS_PER_TICK`], etcd's batch of 1000), and a
//! keep-alive of a checkpointed lease first proposes clearing its checkpoint, as etcd's
//! `Renew`, so a later leader gives it its full TTL.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::context::RequestContext;
use super::{until_deadline, Core, Error, Operation};
use crate::lease::{counters, LeaseError, MAX_LEASE_TTL};
use crate::proto::cairnpb::command::Cmd;
use crate::proto::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::raft::Applied;

/// How often the leader looks for expired leases (etcd's lessor loop: 500 ms).
const EXPIRY_TICK: Duration = Duration::from_millis(500);
/// etcd's `leaseRevokeRate` (1000/s) per tick.
const REVOKES_PER_TICK: usize = 500;
/// etcd's `maxLeaseCheckpointBatchSize`.
const CHECKPOINTS_PER_TICK: usize = 1000;
/// How often a request that waits for the lessor (see [`Core::on_lessor`]) looks again.
const LESSOR_POLL: Duration = Duration::from_millis(20);
/// How long a keep-alive or time-to-live waits for the lessor before giving up.
const LESSOR_WAIT: Duration = Duration::from_secs(5);

/// Where a leader-only lease request is answered.
enum Served<T> {
    Here(Result<T, LeaseError>),
    Forward(u64),
}

impl Core {
    /// etcd's `LeaseGrant`: id 0 asks the server to choose one; a TTL below the minimum is
    /// raised to it.
    pub async fn lease_grant(
        &self,
        ctx: &RequestContext,
        mut req: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, Error> {
        until_deadline(ctx, async {
            if req.ttl > MAX_LEASE_TTL {
                return Err(Error::LeaseTtlTooLarge);
            }
            self.authorize(ctx, Operation::LeaseGrant).await?;
            self.check_quota(super::alarms::LEASE_COST).await?;
            if req.id == 0 {
                req.id = self.lessor.fresh_id();
            } else if self.lessor.contains(req.id) {
                return Err(Error::LeaseExists);
            }
            req.ttl = req.ttl.max(self.lessor.min_ttl());
            let resp = self
                .propose(Cmd::LeaseGrant(req), |a| match a {
                    Applied::LeaseGrant(resp) => Some(resp),
                    _ => None,
                })
                .await?;
            Ok(self.stamp(resp))
        })
        .await
    }

    pub async fn lease_revoke(
        &self,
        ctx: &RequestContext,
        req: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::LeaseRevoke(req.id)).await?;
            if !self.lessor.contains(req.id) {
                return Err(Error::LeaseNotFound);
            }
            let resp = self
                .propose(Cmd::LeaseRevoke(req), |a| match a {
                    Applied::LeaseRevoke(resp, _events) => Some(resp),
                    _ => None,
                })
                .await?;
            Ok(self.stamp(resp))
        })
        .await
    }

    /// One keep-alive: the renewed TTL, or TTL 0 for a lease that does not exist (etcd's
    /// `leaseKeepAlive` turns "not found" into TTL 0). An expired lease is renewed by no
    /// one: as etcd, wait until its revoke is through, then answer TTL 0.
    pub async fn lease_keep_alive(
        &self,
        ctx: &RequestContext,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, Error> {
        self.authorize(ctx, Operation::LeaseKeepAlive(id)).await?;
        if self.leader_elsewhere().is_none() && self.lessor.needs_clear(id) {
            self.lease_checkpoint(vec![(id, 0)]).await?;
        }
        let deadline = Instant::now() + LESSOR_WAIT;
        let ttl = loop {
            match self.on_lessor(deadline, || self.lessor.renew(id)).await? {
                Served::Forward(leader) => return self.forward_keep_alive(leader, id).await,
                Served::Here(Ok(ttl)) => break ttl,
                Served::Here(Err(LeaseError::NotFound)) => break 0,
                Served::Here(Err(LeaseError::Expired)) if Instant::now() < deadline => {
                    tokio::time::sleep(LESSOR_POLL).await;
                }
                Served::Here(Err(LeaseError::Expired)) => return Err(Error::Timeout),
                Served::Here(Err(e)) => return Err(e.into()),
            }
        };
        Ok(LeaseKeepAliveResponse {
            header: self.current_header(),
            id,
            ttl,
        })
    }

    /// etcd's `LeaseTimeToLive`: an unknown lease is answered with TTL -1, not an error.
    pub async fn lease_time_to_live(
        &self,
        ctx: &RequestContext,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::LeaseTimeToLive(&req))
                .await?;
            let deadline = Instant::now() + LESSOR_WAIT;
            let ttl = match self
                .on_lessor(deadline, || self.lessor.time_to_live(req.id))
                .await?
            {
                Served::Forward(leader) => return self.forward_time_to_live(leader, req).await,
                Served::Here(ttl) => ttl?,
            };
            let header = self.current_header();
            let Some(ttl) = ttl else {
                return Ok(LeaseTimeToLiveResponse {
                    header,
                    id: req.id,
                    ttl: -1,
                    ..Default::default()
                });
            };
            // A lease may carry any number of keys: list them on the read pool.
            let keys = if req.keys {
                let (mvcc, id) = (self.mvcc.clone(), req.id);
                self.reads.run(move || Ok(mvcc.lease_keys(id)?)).await?
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
        })
        .await
    }

    pub async fn lease_leases(&self, ctx: &RequestContext) -> Result<LeaseLeasesResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::LeaseLeases).await?;
            if let Some(leader) = self.leader_elsewhere() {
                return self.forward_leases(leader).await;
            }
            Ok(LeaseLeasesResponse {
                header: self.current_header(),
                leases: self
                    .lessor
                    .leases()
                    .into_iter()
                    .map(|id| LeaseStatus { id })
                    .collect(),
            })
        })
        .await
    }

    /// Revokes a lease the expiry loop found expired.
    async fn revoke_expired(&self, id: i64) {
        let req = LeaseRevokeRequest { id };
        match self.lease_revoke(&RequestContext::internal(), req).await {
            Ok(_) => counters().expired.inc(),
            // Revoked by a client meanwhile.
            Err(Error::LeaseNotFound) => {}
            // It is handed out again after the retry interval.
            Err(e) => {
                tracing::warn!(lease = %format!("{id:x}"), error = %e, "revoking an expired lease failed")
            }
        }
    }

    /// Proposes remaining TTLs (`(lease, seconds)`, 0 clears) for every member to record.
    async fn lease_checkpoint(&self, checkpoints: Vec<(i64, i64)>) -> Result<(), Error> {
        let req = LeaseCheckpointRequest {
            checkpoints: checkpoints
                .into_iter()
                .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        };
        self.propose(Cmd::LeaseCheckpoint(req), |a| match a {
            Applied::LeaseCheckpoint(_) => Some(()),
            _ => None,
        })
        .await
    }

    /// Runs `op` on this member's lessor if it leads, or says which member to forward to.
    /// A member elected a moment ago whose lessor the expiry loop has not promoted yet (it
    /// does within a tick), or one in an election, looks again until `deadline`, as etcd's
    /// `LeaseRenew` waits for a leader until its request timeout.
    async fn on_lessor<T>(
        &self,
        deadline: Instant,
        op: impl Fn() -> Result<T, LeaseError>,
    ) -> Result<Served<T>, Error> {
        loop {
            if let Some(leader) = self.leader_elsewhere() {
                return Ok(Served::Forward(leader));
            }
            match op() {
                Err(LeaseError::NotPrimary) if Instant::now() < deadline => {
                    tokio::time::sleep(LESSOR_POLL).await;
                }
                Err(LeaseError::NotPrimary) => return Err(Error::NotLeader),
                done => return Ok(Served::Here(done)),
            }
        }
    }

    /// The term this member leads in, if it is the leader: a new term means a new promotion.
    fn leading_term(&self) -> Option<u64> {
        let status = self.raft.status();
        status.is_leader.then_some(status.term)
    }
}

/// Starts the leader's expiry loop (see the module header).
pub fn spawn_expiry(core: Arc<Core>) {
    // Promote at once, so keep-alives work as soon as the services are up.
    let mut leading = core.leading_term();
    if leading.is_some() {
        core.lessor.promote();
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(EXPIRY_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let term = core.leading_term();
            if term != leading {
                match term {
                    Some(_) => core.lessor.promote(),
                    None => core.lessor.demote(),
                }
                leading = term;
            }
            for id in core.lessor.expired(REVOKES_PER_TICK) {
                let core = core.clone();
                tokio::spawn(async move { core.revoke_expired(id).await });
            }
            let due = core.lessor.due_checkpoints(CHECKPOINTS_PER_TICK);
            if !due.is_empty() {
                let core = core.clone();
                tokio::spawn(async move {
                    // Missed ones are due again one interval later.
                    if let Err(e) = core.lease_checkpoint(due).await {
                        tracing::warn!(error = %e, "proposing lease checkpoints failed");
                    }
                });
            }
        }
    });
}

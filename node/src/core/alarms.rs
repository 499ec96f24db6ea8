//! Alarms: the Alarm request, the quota step of the write pipeline, which raises NOSPACE
//! through raft when a write would pass `--quota-backend-bytes` (etcd's `quotaAlarmer`),
//! the opt-in NOSPACE auto-disarm, and etcd's corruption checks (`corrupt.go`): the
//! leader compares every member's HashKV and raises CORRUPT through raft on a mismatch.
//!
//! The alarm list itself is applied state (`mvcc::alarm`), and what a raised alarm
//! refuses is decided at apply (`raft::state_machine`), so every member agrees.

use std::time::Duration;

use futures::future::join_all;

use super::context::RequestContext;
use super::{Core, Error, Operation};
use crate::mvcc::KvHash;
use crate::proto::cairnpb::command::Cmd;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, request_op::Request, AlarmRequest, AlarmResponse, AlarmType,
    HashKvResponse, TxnRequest,
};
use crate::raft::Applied;

/// etcd's `kvOverhead`: what a put costs the quota besides its key and value.
const KV_OVERHEAD: u64 = 256;
/// etcd's `leaseOverhead`: what a lease grant costs the quota.
const LEASE_OVERHEAD: u64 = 64;
/// How often a member looks whether its NOSPACE alarm may be disarmed automatically.
const AUTO_DISARM_TICK: Duration = Duration::from_secs(1);

/// What the alarm settings of the configuration turn on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlarmSettings {
    /// `--auto-disarm-nospace` (cairn only): clear this member's NOSPACE once the data in
    /// use is under the quota again.
    pub auto_disarm_nospace: bool,
    /// `--experimental-initial-corrupt-check`: compare with the peers before serving.
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time` (`--corrupt-check-time`): the leader's periodic
    /// check; `None` when 0.
    pub corrupt_check_interval: Option<Duration>,
}

/// Why the initial corruption check refused to start the member.
#[derive(Debug, thiserror::Error)]
#[error("{0:x} found data inconsistency with peers")]
pub struct Inconsistent(u64);

/// etcd's quota cost of a txn: the bigger branch's puts (`costTxn`); 0 if it puts nothing.
pub(super) fn txn_cost(txn: &TxnRequest) -> u64 {
    let branch = |ops: &[crate::proto::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => KV_OVERHEAD + (p.key.len() + p.value.len()) as u64,
                _ => 0,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
}

/// The cost of a lease grant (`costLease`).
pub(super) const LEASE_COST: u64 = LEASE_OVERHEAD;

impl Core {
    /// etcd's Alarm request; every action goes through raft, as in etcd.
    pub async fn alarm(
        &self,
        ctx: &RequestContext,
        req: AlarmRequest,
    ) -> Result<AlarmResponse, Error> {
        self.authorize(ctx, Operation::Admin("Alarm")).await?;
        if AlarmAction::try_from(req.action).is_err() {
            return Err(Error::UnknownAlarmAction(req.action));
        }
        let resp = self
            .propose(Cmd::Alarm(req), |a| match a {
                Applied::Alarm(resp) => Some(resp),
                _ => None,
            })
            .await?;
        Ok(AlarmResponse {
            header: self.current_header(),
            alarms: resp.alarms,
        })
    }

    /// Every raised alarm, as this member has applied them.
    pub(super) fn raised_alarms(&self) -> Vec<crate::proto::etcdserverpb::AlarmMember> {
        self.mvcc.alarms(AlarmType::None as i32)
    }

    /// Whether the live data plus `cost` would pass `--quota-backend-bytes` (etcd
    /// compares the bbolt file's size; cairn the data a defragmentation would leave).
    fn over_quota(&self, cost: u64) -> Result<bool, Error> {
        let in_use = self.mvcc.size_in_use()?;
        Ok(in_use.saturating_add(cost) >= self.limits.quota_backend_bytes)
    }

    /// The pipeline's quota step (etcd's `quotaAlarmer.check`): a write that would pass
    /// the quota raises NOSPACE for this member, through raft, and is refused.
    pub(super) async fn check_quota(&self, cost: u64) -> Result<(), Error> {
        if cost == 0 || !self.over_quota(cost)? {
            return Ok(());
        }
        if !self.raised_by_me(AlarmType::Nospace) {
            // As etcd, the refusal does not depend on the alarm going through.
            if let Err(e) = self.raise(self.member_id, AlarmType::Nospace).await {
                tracing::warn!(error = %e, "failed to raise the NOSPACE alarm");
            }
        }
        Err(Error::NoSpace)
    }

    fn raised_by_me(&self, alarm: AlarmType) -> bool {
        self.mvcc
            .alarms(alarm as i32)
            .iter()
            .any(|a| a.member_id == self.member_id)
    }

    /// Proposes `alarm` for `member`.
    async fn raise(&self, member: u64, alarm: AlarmType) -> Result<(), Error> {
        self.alarm_request(member, alarm, AlarmAction::Activate)
            .await
    }

    async fn alarm_request(
        &self,
        member_id: u64,
        alarm: AlarmType,
        action: AlarmAction,
    ) -> Result<(), Error> {
        let req = AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        };
        self.propose(Cmd::Alarm(req), |a| {
            matches!(a, Applied::Alarm(_)).then_some(())
        })
        .await
    }

    /// `--auto-disarm-nospace`: clears this member's NOSPACE once the data in use is
    /// under the quota again (after a compaction, or deletes).
    async fn auto_disarm(&self) -> Result<(), Error> {
        if !self.raised_by_me(AlarmType::Nospace) || self.over_quota(0)? {
            return Ok(());
        }
        let in_use = self.mvcc.size_in_use()?;
        self.alarm_request(self.member_id, AlarmType::Nospace, AlarmAction::Deactivate)
            .await?;
        tracing::warn!(
            current_db_size_in_use_bytes = in_use,
            quota_backend_bytes = self.limits.quota_backend_bytes,
            "disarmed the NOSPACE alarm: the data in use is under the quota again (--auto-disarm-nospace)"
        );
        Ok(())
    }

    /// This member's HashKV at `revision` in etcd's response form (the Maintenance and the
    /// peer service both answer it).
    pub async fn hash_kv_response(
        &self,
        ctx: &RequestContext,
        revision: i64,
    ) -> Result<HashKvResponse, Error> {
        let h = self.hash_kv(ctx, revision).await?;
        Ok(HashKvResponse {
            header: self.header(h.current_revision),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        })
    }

    async fn local_hash(&self) -> Result<KvHash, Error> {
        self.hash_kv(&RequestContext::internal(), 0).await
    }

    /// Every other member's HashKV at `revision`; members that could not answer are left
    /// out, with a warning (etcd's `getPeerHashKVs`).
    async fn peer_hashes(&self, revision: i64) -> Vec<HashKvResponse> {
        let peers = self.raft.peers();
        let asks = self
            .raft
            .member_list()
            .into_iter()
            .filter(|m| m.id != self.member_id)
            .map(|m| async move { (m.id, peers.hash_kv(m.id, revision).await) });
        join_all(asks)
            .await
            .into_iter()
            .filter_map(|(id, resp)| match resp {
                Ok(resp) => Some(resp),
                Err(e) => {
                    tracing::warn!(remote_peer_id = %format_args!("{id:x}"), revision, error = %e, "failed hash kv request");
                    None
                }
            })
            .collect()
    }

    /// etcd's `checkHashKV`, run by the leader: hashes itself before and after a read
    /// barrier (a change between two hashes of the same revisions is local corruption),
    /// then holds each member's hash to its own. At most one CORRUPT alarm is raised per
    /// pass, as in etcd.
    pub(super) async fn check_hash_kv(&self) -> Result<(), Error> {
        let h1 = self.local_hash().await?;
        let peers = self.peer_hashes(h1.current_revision).await;
        self.linearizable_barrier().await?;
        let h2 = self.local_hash().await?;
        let mut suspect = None;
        if h2.hash != h1.hash
            && h2.current_revision == h1.current_revision
            && h2.compact_revision == h1.compact_revision
        {
            tracing::warn!(
                revision_1 = h1.current_revision,
                compact_revision_1 = h1.compact_revision,
                hash_1 = h1.hash,
                revision_2 = h2.current_revision,
                compact_revision_2 = h2.compact_revision,
                hash_2 = h2.hash,
                "found hash mismatch"
            );
            suspect = Some(self.member_id);
        }
        for p in &peers {
            let (id, revision) = p
                .header
                .as_ref()
                .map_or((0, 0), |h| (h.member_id, h.revision));
            let peer = format!("{id:x}");
            let differs = if revision > h2.current_revision {
                tracing::warn!(leader_revision = h2.current_revision, follower_revision = revision, follower_peer_id = %peer, "revision from follower must be less than or equal to leader's");
                true
            } else if p.compact_revision > h2.compact_revision {
                tracing::warn!(leader_compact_revision = h2.compact_revision, follower_compact_revision = p.compact_revision, follower_peer_id = %peer, "compact revision from follower must be less than or equal to leader's");
                true
            } else if p.compact_revision == h1.compact_revision && p.hash != h1.hash {
                tracing::warn!(leader_compact_revision = h2.compact_revision, leader_hash = h1.hash, follower_compact_revision = p.compact_revision, follower_hash = p.hash, follower_peer_id = %peer, "same compact revision then hashes must match");
                true
            } else {
                false
            };
            if differs && suspect.is_none() {
                suspect = Some(id);
            }
        }
        tracing::info!(
            number_of_peers_checked = peers.len(),
            "finished peer corruption check"
        );
        if let Some(member) = suspect {
            self.raise(member, AlarmType::Corrupt).await?;
        }
        Ok(())
    }

    /// etcd's `CheckInitialHashKV`: before serving, this member's hash is compared with
    /// every peer's at its revision; a different hash at the same compact revision
    /// refuses the start.
    pub async fn initial_corrupt_check(&self) -> Result<(), Inconsistent> {
        tracing::info!(local_member_id = %format_args!("{:x}", self.member_id), "starting initial corruption check");
        let local = match self.local_hash().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "initial corruption check could not hash the local state");
                return Ok(());
            }
        };
        let mut mismatch = 0;
        for p in self.peer_hashes(local.current_revision).await {
            if p.hash == local.hash {
                continue;
            }
            let remote = p.header.as_ref().map_or(0, |h| h.member_id);
            let same_compaction = p.compact_revision == local.compact_revision;
            let what = if same_compaction {
                mismatch += 1;
                "found different hash values from remote peer"
            } else {
                "found different compact revision values from remote peer"
            };
            tracing::warn!(
                local_member_revision = local.current_revision,
                local_member_compact_revision = local.compact_revision,
                local_member_hash = local.hash,
                remote_peer_id = %format_args!("{remote:x}"),
                remote_peer_compact_revision = p.compact_revision,
                remote_peer_hash = p.hash,
                "{what}"
            );
        }
        if mismatch > 0 {
            return Err(Inconsistent(self.member_id));
        }
        tracing::info!(local_member_id = %format_args!("{:x}", self.member_id), "initial corruption checking passed; no corruption");
        Ok(())
    }
}

/// Runs the periodic alarm work the settings turn on: the leader's corruption check
/// (etcd's `monitorKVHash`) and the NOSPACE auto-disarm.
pub fn spawn_monitor(core: std::sync::Arc<Core>) {
    let settings = core.alarm_settings.clone();
    if let Some(interval) = settings.corrupt_check_interval {
        let core = core.clone();
        tracing::info!(local_member_id = %format_args!("{:x}", core.member_id), interval = ?interval, "enabled corruption checking");
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if !core.raft.status().is_leader {
                    continue;
                }
                if let Err(e) = core.check_hash_kv().await {
                    tracing::warn!(error = %e, "failed to check hash KV");
                }
            }
        });
    }
    if settings.auto_disarm_nospace {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(AUTO_DISARM_TICK).await;
                if let Err(e) = core.auto_disarm().await {
                    tracing::warn!(error = %e, "failed to disarm the NOSPACE alarm");
                }
            }
        });
    }
}

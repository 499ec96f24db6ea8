//! etcd's Maintenance requests: status and alarms for `etcdctl endpoint status/health` and
//! `alarm list`; defragment, a no-op because the LSM compacts in the background; Hash and
//! HashKV for corruption checks; the snapshot source; and the health check behind
//! `/health` and `/readyz`.

use std::time::Duration;

use super::context::RequestContext;
use super::{until_deadline, Core, Error, Operation, ETCD_SERVER_VERSION};
use crate::mvcc::snapshot::SnapshotSource;
use crate::mvcc::KvHash;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    DefragmentResponse, StatusResponse,
};

/// How long the health check waits for a linearizable read.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// etcd's health verdict: healthy, or why not (etcd's reason strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy(&'static str),
}

impl Core {
    pub async fn status(&self, ctx: &RequestContext) -> Result<StatusResponse, Error> {
        self.authorize(ctx, Operation::Admin("Status")).await?;
        let raft = self.raft.status();
        let db_size = i64::try_from(self.store.disk_space()).unwrap_or(i64::MAX);
        Ok(StatusResponse {
            header: self.current_header(),
            version: ETCD_SERVER_VERSION.to_string(),
            db_size,
            // An LSM has no free pages to reclaim, so everything it holds is in use.
            db_size_in_use: db_size,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            db_size_quota: i64::try_from(self.limits.quota_backend_bytes).unwrap_or(i64::MAX),
            ..Default::default()
        })
    }

    /// Alarms are derived from the current state rather than stored: NOSPACE holds exactly
    /// while the database is over quota.
    fn alarms(&self) -> Vec<AlarmMember> {
        if self.over_quota() {
            vec![AlarmMember {
                member_id: self.member_id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        }
    }

    pub async fn alarm(
        &self,
        ctx: &RequestContext,
        req: AlarmRequest,
    ) -> Result<AlarmResponse, Error> {
        self.authorize(ctx, Operation::Admin("Alarm")).await?;
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) | Ok(AlarmAction::Deactivate) => Ok(AlarmResponse {
                header: self.current_header(),
                alarms: self.alarms(),
            }),
            _ => Err(Error::NotSupported("raising alarms by hand")),
        }
    }

    pub async fn defragment(&self, ctx: &RequestContext) -> Result<DefragmentResponse, Error> {
        self.authorize(ctx, Operation::Admin("Defragment")).await?;
        Ok(DefragmentResponse {
            header: self.current_header(),
        })
    }

    /// etcd's `HashByRev` (see `mvcc::hash`), on the read pool: it reads the whole history.
    /// `Hash` is `HashKV(0)`: etcd hashes its whole backend there, but cairn's backend also
    /// holds the raft log, which differs between members.
    pub async fn hash_kv(&self, ctx: &RequestContext, revision: i64) -> Result<KvHash, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("HashKV")).await?;
            let mvcc = self.mvcc.clone();
            self.reads
                .run(move || {
                    let started = std::time::Instant::now();
                    let hash = mvcc.hash_kv(revision)?;
                    crate::metrics::get()
                        .hash_rev_duration
                        .observe(started.elapsed().as_secs_f64());
                    Ok(hash)
                })
                .await
        })
        .await
    }

    /// Pins the state for a snapshot stream; the transport reads and sends it.
    pub async fn snapshot(&self, ctx: &RequestContext) -> Result<SnapshotSource, Error> {
        self.authorize(ctx, Operation::Admin("Snapshot")).await?;
        Ok(self.mvcc.snapshot_source()?)
    }

    /// Downgrade, by RPC name.
    pub async fn unsupported_admin<T>(
        &self,
        ctx: &RequestContext,
        rpc: &'static str,
    ) -> Result<T, Error> {
        self.authorize(ctx, Operation::Admin(rpc)).await?;
        Err(Error::NotSupported(rpc))
    }

    /// etcd's `/health`: healthy when there is a leader, no alarm, and a linearizable read
    /// completes in time.
    pub async fn health(&self) -> Health {
        if self.raft.status().leader.is_none() {
            Health::Unhealthy("RAFT NO LEADER")
        } else if !self.alarms().is_empty() {
            Health::Unhealthy("ALARM NOSPACE")
        } else {
            match tokio::time::timeout(HEALTH_TIMEOUT, self.linearizable_barrier()).await {
                Ok(Ok(())) => Health::Healthy,
                _ => Health::Unhealthy("timeout"),
            }
        }
    }

    /// Sets the metrics etcd computes when it is scraped (its gauge functions): db size,
    /// revisions, live keys; and fjall's statistics. Every value is an atomic read (the db
    /// size is sampled in the background), so a scrape costs the same with any data size.
    pub fn publish_metrics(&self) {
        let m = crate::metrics::get();
        let size = i64::try_from(self.store.disk_space()).unwrap_or(i64::MAX);
        m.db_total_size.set(size);
        // An LSM has no free pages to defragment: all it allocates is in use until a
        // compaction drops it, so both are the allocated size.
        m.db_total_size_in_use.set(size);
        m.keys.set(self.mvcc.key_count());
        m.current_revision.set(self.mvcc.current_revision());
        m.compact_revision.set(self.mvcc.compact_revision());
        self.store.publish_metrics();
    }
}

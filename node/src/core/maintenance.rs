//! etcd's Maintenance requests: status for `etcdctl endpoint status`; defragment (a major
//! compaction of the state's keyspaces, while reads and writes go on); Hash and HashKV;
//! the snapshot source; and the health check behind `/health` and `/readyz`. The Alarm
//! request and the quota are in `alarms.rs`.

use std::time::Duration;

use super::context::RequestContext;
use super::{until_deadline, Core, Error, Operation, ETCD_SERVER_VERSION};
use crate::mvcc::snapshot::SnapshotSource;
use crate::mvcc::KvHash;
use crate::proto::etcdserverpb::{AlarmType, DefragmentResponse, RangeRequest, StatusResponse};

/// How long the health check waits for a linearizable read.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// etcd's health verdict: healthy, or why not (etcd's reason strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy(String),
}

/// etcd 3.6's named probe checks behind `/livez` and `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

impl HealthCheck {
    /// `/livez`: is this process serving its local state.
    pub const LIVEZ: &'static [HealthCheck] = &[HealthCheck::SerializableRead];
    /// `/readyz`: can it serve clients, in etcd's registration order.
    pub const READYZ: &'static [HealthCheck] = &[
        HealthCheck::DataCorruption,
        HealthCheck::SerializableRead,
        HealthCheck::LinearizableRead,
        HealthCheck::NonLearner,
    ];

    /// etcd's name of the check (`?exclude=` and the verbose lines use it).
    pub fn name(self) -> &'static str {
        match self {
            HealthCheck::DataCorruption => "data_corruption",
            HealthCheck::SerializableRead => "serializable_read",
            HealthCheck::LinearizableRead => "linearizable_read",
            HealthCheck::NonLearner => "non_learner",
        }
    }
}

/// etcd's name of an alarm type (`NOSPACE`), as `/health?exclude=` takes it.
fn alarm_name(alarm: i32) -> &'static str {
    AlarmType::try_from(alarm).map_or("", |a| a.as_str_name())
}

impl Core {
    pub async fn status(&self, ctx: &RequestContext) -> Result<StatusResponse, Error> {
        self.authorize(ctx, Operation::Admin("Status")).await?;
        let raft = self.raft.status();
        let (db_size, db_size_in_use) = self.db_sizes()?;
        Ok(StatusResponse {
            header: self.current_header(),
            version: ETCD_SERVER_VERSION.to_string(),
            db_size,
            db_size_in_use,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            db_size_quota: i64::try_from(self.limits.quota_backend_bytes).unwrap_or(i64::MAX),
            ..Default::default()
        })
    }

    /// `db_size` (the data dir's bytes on disk) and `db_size_in_use` (the estimate of
    /// what a defragmentation would leave, see [`crate::mvcc::Mvcc::size_in_use`]).
    fn db_sizes(&self) -> Result<(i64, i64), Error> {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Ok((
            gauge(self.store.disk_space()),
            gauge(self.mvcc.size_in_use()?),
        ))
    }

    /// etcd's defragmentation: here a major compaction of every keyspace of the state, on
    /// a blocking thread, holding no lock that reads or writes take; the call returns once
    /// it is done. Logged with etcd's field names.
    pub async fn defragment(&self, ctx: &RequestContext) -> Result<DefragmentResponse, Error> {
        self.authorize(ctx, Operation::Admin("Defragment")).await?;
        let (size, in_use) = self.db_sizes()?;
        let path = self.store.dir().display().to_string();
        tracing::info!(
            path = %path,
            current_db_size_bytes = size,
            current_db_size_in_use_bytes = in_use,
            "defragmenting"
        );
        let started = std::time::Instant::now();
        let mvcc = self.mvcc.clone();
        tokio::task::spawn_blocking(move || mvcc.defragment())
            .await
            .map_err(Error::internal)??;
        self.store.measure_disk_space();
        let (after, after_in_use) = self.db_sizes()?;
        tracing::info!(
            path = %path,
            current_db_size_bytes_diff = after - size,
            current_db_size_bytes = after,
            current_db_size_in_use_bytes_diff = after_in_use - in_use,
            current_db_size_in_use_bytes = after_in_use,
            took = ?started.elapsed(),
            "finished defragmenting directory"
        );
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

    /// etcd's `/health`: unhealthy on an alarm not in `excluded_alarms` (etcd's names,
    /// `NOSPACE`), without a leader (unless `serializable`), or when a one-key read fails;
    /// the reasons are etcd's.
    pub async fn health(&self, excluded_alarms: &[String], serializable: bool) -> Health {
        let alarm = self
            .raised_alarms()
            .into_iter()
            .find(|a| !excluded_alarms.iter().any(|x| x == alarm_name(a.alarm)));
        if let Some(alarm) = alarm {
            return Health::Unhealthy(match AlarmType::try_from(alarm.alarm) {
                Ok(AlarmType::Nospace) => "ALARM NOSPACE".into(),
                Ok(AlarmType::Corrupt) => "ALARM CORRUPT".into(),
                _ => "ALARM UNKNOWN".into(),
            });
        }
        if !serializable && self.raft.status().leader.is_none() {
            return Health::Unhealthy("RAFT NO LEADER".into());
        }
        match self.read_check(serializable).await {
            Ok(()) => Health::Healthy,
            Err(e) => Health::Unhealthy(format!("RANGE ERROR:{e}")),
        }
    }

    /// One of etcd 3.6's `/livez` and `/readyz` checks: `Err` carries the reason etcd
    /// prints after `[-]name failed: `.
    pub async fn check(&self, check: HealthCheck) -> Result<(), String> {
        match check {
            HealthCheck::DataCorruption => {
                let corrupt = self.mvcc.alarm_raised(AlarmType::Corrupt);
                if corrupt {
                    return Err("alarm activated: CORRUPT".into());
                }
                Ok(())
            }
            HealthCheck::SerializableRead => self.read_check(true).await.map_err(|e| e.to_string()),
            HealthCheck::LinearizableRead => {
                self.read_check(false).await.map_err(|e| e.to_string())
            }
            HealthCheck::NonLearner => {
                let learner = self
                    .raft
                    .member_list()
                    .iter()
                    .any(|m| m.id == self.member_id && m.is_learner);
                if learner {
                    return Err("not supported for learner".into());
                }
                Ok(())
            }
        }
    }

    /// etcd's probe read, as the node itself (no auth), bounded so a probe answers even
    /// when the cluster cannot. etcd reads the empty key (`RangeRequest{KeysOnly, Limit:
    /// 1}`, no range end): one lookup, whatever the data size. The empty key is refused
    /// before it reaches the store here, so the probe reads "\0", also alone. (It read
    /// every key from "\0" on, counting them for the response: 0.5 s at 1 M keys, past the
    /// probe's 1 s bound at a few million, and /health said false.)
    async fn read_check(&self, serializable: bool) -> Result<(), Error> {
        let probe = RangeRequest {
            key: vec![0],
            limit: 1,
            keys_only: true,
            serializable,
            ..Default::default()
        };
        let ctx = RequestContext::internal();
        match tokio::time::timeout(HEALTH_TIMEOUT, self.range(&ctx, probe)).await {
            Ok(read) => read.map(|_| ()),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Sets the metrics etcd computes when it is scraped (its gauge functions): db size,
    /// revisions, live keys; and fjall's statistics. Every value is an atomic read (the db
    /// size is sampled in the background), so a scrape costs the same with any data size.
    pub fn publish_metrics(&self) {
        let m = crate::metrics::get();
        if let Ok((size, in_use)) = self.db_sizes() {
            m.db_total_size.set(size);
            m.db_total_size_in_use.set(in_use);
        }
        m.keys.set(self.mvcc.key_count());
        m.current_revision.set(self.mvcc.current_revision());
        m.compact_revision.set(self.mvcc.compact_revision());
        self.store.publish_metrics();
    }
}

//! `--auto-compaction-mode` / `--auto-compaction-retention`: background tasks that propose
//! compactions as etcd 3.5's `v3compactor` does, on the leader only (etcd pauses the
//! compactor on followers), with its log messages.
//!
//! Periodic mode (etcd's `Periodic`): the compact interval is the retention, at most an
//! hour; the revision is sampled every tenth of that, and the samples cover one retention.
//! The first compaction comes one retention after start, then one every compact interval,
//! each to the revision the store had one retention before. Revision mode (etcd's
//! `Revision`): every 5 minutes, compact to the current revision minus the retention.
//! A compaction to a revision already compacted counts as done, as etcd's `ErrCompacted`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::AutoCompaction;
use crate::core::{Core, Error, RequestContext};
use crate::logging::go_duration;
use crate::proto::etcdserverpb::CompactionRequest;

/// etcd's `revInterval`.
const REVISION_INTERVAL: Duration = Duration::from_secs(300);
/// etcd's cap on the periodic compact interval.
const MAX_COMPACT_INTERVAL: Duration = Duration::from_secs(3600);
/// etcd's `retryDivisor`: samples (and retries) per compact interval.
const RETRY_DIVISOR: u32 = 10;

/// Starts the compactor for `mode`; does nothing when auto-compaction is off.
pub fn spawn(core: Arc<Core>, mode: &AutoCompaction) {
    match *mode {
        AutoCompaction::Off => {}
        AutoCompaction::Revision(retention) => {
            tokio::spawn(revision(core, retention));
        }
        AutoCompaction::Periodic(period) => {
            tokio::spawn(periodic(core, Schedule::new(period)));
        }
    }
}

/// etcd's periodic timing for a retention `period`.
#[derive(Debug, PartialEq, Eq)]
struct Schedule {
    period: Duration,
    compact_interval: Duration,
    retry_interval: Duration,
    /// Samples kept: the oldest is the revision one `period` ago.
    retentions: usize,
}

impl Schedule {
    fn new(period: Duration) -> Schedule {
        let compact_interval = period.min(MAX_COMPACT_INTERVAL);
        // A retention of a few nanoseconds would spin; a millisecond is etcd's intent.
        let retry_interval = (compact_interval / RETRY_DIVISOR).max(Duration::from_millis(1));
        let retentions = (period.as_nanos() / retry_interval.as_nanos()) as usize + 1;
        Schedule {
            period,
            compact_interval,
            retry_interval,
            retentions,
        }
    }
}

async fn periodic(core: Arc<Core>, schedule: Schedule) {
    let mut revs = VecDeque::with_capacity(schedule.retentions + 1);
    let mut last_success = Instant::now();
    // The first compaction waits a whole retention, the later ones a compact interval.
    let mut base_interval = schedule.period;
    loop {
        revs.push_back(core.current_revision());
        if revs.len() > schedule.retentions {
            revs.pop_front();
        }
        tokio::time::sleep(schedule.retry_interval).await;
        if !core.is_leader() || last_success.elapsed() < base_interval {
            continue;
        }
        base_interval = schedule.compact_interval;
        let Some(&rev) = revs.front() else { continue };
        let compact_period = go_duration(schedule.period);
        tracing::info!(revision = rev, compact_period = %compact_period, "starting auto periodic compaction");
        let started = Instant::now();
        match compact(&core, rev).await {
            Ok(()) => {
                tracing::info!(
                    revision = rev,
                    compact_period = %compact_period,
                    took = %go_duration(started.elapsed()),
                    "completed auto periodic compaction"
                );
                last_success = Instant::now();
            }
            Err(e) => tracing::warn!(
                revision = rev,
                compact_period = %compact_period,
                retry_interval = %go_duration(schedule.retry_interval),
                error = %e,
                "failed auto periodic compaction"
            ),
        }
    }
}

async fn revision(core: Arc<Core>, retention: i64) {
    let mut prev = 0;
    loop {
        tokio::time::sleep(REVISION_INTERVAL).await;
        if !core.is_leader() {
            continue;
        }
        let rev = core.current_revision() - retention;
        if rev <= 0 || rev == prev {
            continue;
        }
        tracing::info!(
            revision = rev,
            revision_compaction_retention = retention,
            "starting auto revision compaction"
        );
        let started = Instant::now();
        match compact(&core, rev).await {
            Ok(()) => {
                prev = rev;
                tracing::info!(
                    revision = rev,
                    revision_compaction_retention = retention,
                    took = %go_duration(started.elapsed()),
                    "completed auto revision compaction"
                );
            }
            Err(e) => tracing::warn!(
                revision = rev,
                revision_compaction_retention = retention,
                retry_interval = %go_duration(REVISION_INTERVAL),
                error = %e,
                "failed auto revision compaction"
            ),
        }
    }
}

/// Compacts to `rev` as the node itself; a revision already compacted is no failure.
async fn compact(core: &Core, rev: i64) -> Result<(), Error> {
    let req = CompactionRequest {
        revision: rev,
        physical: false,
    };
    match core.compact(&RequestContext::internal(), req).await {
        Ok(_) | Err(Error::Compacted) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_etcds() {
        let hour = Duration::from_secs(3600);
        // (retention, compact interval, retry interval, samples)
        let cases = [
            (
                Duration::from_secs(2),
                Duration::from_secs(2),
                Duration::from_millis(200),
                11,
            ),
            (hour, hour, Duration::from_secs(360), 11),
            (10 * hour, hour, Duration::from_secs(360), 101),
            (
                Duration::from_secs(59 * 60),
                Duration::from_secs(59 * 60),
                Duration::from_secs(354),
                11,
            ),
        ];
        for (period, compact_interval, retry_interval, retentions) in cases {
            assert_eq!(
                Schedule::new(period),
                Schedule {
                    period,
                    compact_interval,
                    retry_interval,
                    retentions
                },
                "{period:?}"
            );
        }
    }
}

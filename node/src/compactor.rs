//! `--auto-compaction-mode` / `--auto-compaction-retention`: a background task that proposes
//! compactions like etcd's compactors. Revision mode keeps the last N revisions, checked
//! every 5 minutes. Periodic mode samples the revision every retention/10 and compacts to the
//! revision the store had one retention ago.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::config::AutoCompaction;
use crate::core::{Core, RequestContext};
use crate::proto::etcdserverpb::CompactionRequest;

const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// Starts the compactor for `mode`; does nothing when auto-compaction is off.
pub fn spawn(core: Arc<Core>, mode: &AutoCompaction) {
    let (interval, keep) = match *mode {
        AutoCompaction::Off => return,
        AutoCompaction::Revision(keep) => (REVISION_CHECK_INTERVAL, Keep::Revisions(keep)),
        AutoCompaction::Periodic(retention) => {
            let samples = 10;
            (retention / samples, Keep::Samples(samples as usize))
        }
    };
    tokio::spawn(run(core, interval.max(Duration::from_secs(1)), keep));
}

enum Keep {
    Revisions(i64),
    Samples(usize),
}

async fn run(core: Arc<Core>, interval: Duration, keep: Keep) {
    let mut samples = VecDeque::new();
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let current = core.current_revision();
        let target = match keep {
            Keep::Revisions(n) => current - n,
            Keep::Samples(n) => {
                samples.push_back(current);
                if samples.len() <= n {
                    continue;
                }
                samples.pop_front().unwrap_or(0)
            }
        };
        if target > core.compact_revision() {
            let req = CompactionRequest {
                revision: target,
                physical: false,
            };
            if let Err(e) = core.compact(&RequestContext::internal(), req).await {
                tracing::warn!(revision = target, error = %e, "auto-compaction failed");
            } else {
                tracing::info!(revision = target, "auto-compacted");
            }
        }
    }
}

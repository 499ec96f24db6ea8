//! Physical compaction: a background thread that removes the history a compaction made
//! unreachable, in bounded batches, resuming after a restart from its cursor.
//!
//! It walks `kv_revs` in revision order from `compact_cursor` up to the compact revision.
//! For every record X of key K it meets, it deletes K's record just before X (X supersedes
//! it, since X is at or below the compact revision) and, if X is a tombstone, X itself.
//! X's `kv_revs` entry names the record it supersedes, so the walk does no lookups (entries
//! written before they named it are looked up in `kv_history`). A put that follows a
//! tombstone names nothing: the tombstone, older, has removed itself by then.
//! Walking in revision order means that when a record goes, every older record of its key
//! has already gone, in this batch or an earlier one, so a reader at or above the compact
//! revision never sees an old version come back. What stays is exactly etcd's `keep` set:
//! per key, the newest version at or below the compact revision unless it is a tombstone.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::codec::{self, Rev, Supersedes};
use super::{meta, Keyspaces, MvccError};
use crate::storage::Store;

/// etcd's defaults: 1000 revisions per batch, 10 ms between batches, so apply is never
/// held up for long.
const BATCH_REVISIONS: usize = 1000;
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Resolves once the physical removal for a compaction is on disk (as far as the store
/// persists at all: batches are committed like apply's, without fsync).
pub type CompactionDone = oneshot::Receiver<()>;

/// A caller waiting for the removal up to `rev`.
pub(super) struct Waiter {
    pub rev: i64,
    pub done: oneshot::Sender<()>,
}

/// The worker's loop. It ends when every sender is dropped (the `Mvcc` is closing).
pub(super) fn run(
    store: Arc<Store>,
    ks: Keyspaces,
    lock: Arc<Mutex<()>>,
    requests: Receiver<Waiter>,
) {
    let mut waiters: Vec<Waiter> = Vec::new();
    loop {
        let stepped = {
            let _installing = lock.lock().unwrap_or_else(PoisonError::into_inner);
            step(&store, &ks)
        };
        let progress = match stepped {
            Ok(progress) => progress,
            Err(e) => {
                // A storage error is fatal for the store; waiters see their channel close
                // and restart resumes from the cursor.
                tracing::error!(error = %e, "mvcc compaction stopped");
                return;
            }
        };
        if let Progress::Done(done_rev) = progress {
            let (ready, pending) = waiters.into_iter().partition(|w| w.rev <= done_rev);
            waiters = pending;
            for w in ready {
                // The caller may have stopped waiting; that is fine.
                let _ = w.done.send(());
            }
        }
        // Sleep until asked only when nothing is left to do. A waiter still pending means
        // its compaction was recorded after this pass read the target: go on with it.
        let idle = matches!(progress, Progress::Done(_)) && waiters.is_empty();
        let next = if idle {
            requests.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            requests.try_recv()
        };
        match next {
            Ok(w) => waiters.push(w),
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => thread::sleep(BATCH_PAUSE),
        }
    }
}

enum Progress {
    /// More history below the compact revision remains to be removed.
    More,
    /// Everything up to this compact revision is removed.
    Done(i64),
}

/// Removes one batch of unreachable history.
fn step(store: &Store, ks: &Keyspaces) -> Result<Progress, MvccError> {
    let target = meta::read_i64(&ks.meta, meta::COMPACT_REV)?.unwrap_or(-1);
    let done = meta::read_i64(&ks.meta, meta::COMPACT_DONE)?.unwrap_or(-1);
    if done >= target {
        return Ok(Progress::Done(done));
    }
    let cursor = match ks.meta.get(meta::COMPACT_CURSOR)? {
        Some(raw) => Rev::from_bytes(&raw)?,
        None => Rev::new(0, 0),
    };
    let end = Rev::new(target, i64::MAX).to_bytes();
    let mut batch = store.batch();
    let mut last = None;
    let mut seen = 0;
    let mut removed = 0;
    for item in ks.revs.range(cursor.to_bytes()..=end).take(BATCH_REVISIONS) {
        let (raw_rev, entry) = item?;
        let rev = Rev::from_bytes(&raw_rev)?;
        let entry = codec::decode_rev_entry(&entry)?;
        let key = entry.key;
        let superseded = match entry.supersedes {
            Supersedes::Unknown => predecessor(ks, key, rev)?,
            Supersedes::Nothing => None,
            Supersedes::At(prev) => Some(prev),
        };
        if let Some(prev) = superseded {
            batch.remove(&ks.revs, prev.to_bytes());
            batch.remove(&ks.history, codec::history_key(key, prev));
            removed += 1;
        }
        if entry.tombstone {
            batch.remove(&ks.history, codec::history_key(key, rev));
            batch.remove(&ks.revs, raw_rev);
            removed += 1;
        }
        last = Some(rev);
        seen += 1;
    }
    let finished = seen < BATCH_REVISIONS;
    let next = if finished {
        Rev::new(target + 1, 0)
    } else {
        last.map_or(cursor, Rev::next)
    };
    batch.insert(&ks.meta, meta::COMPACT_CURSOR, next.to_bytes());
    let total = meta::read_i64(&ks.meta, meta::HISTORY_REMOVED)?.unwrap_or(0) + removed;
    batch.insert(&ks.meta, meta::HISTORY_REMOVED, codec::encode_i64(total));
    if finished {
        batch.insert(&ks.meta, meta::COMPACT_DONE, codec::encode_i64(target));
    }
    let start = Instant::now();
    batch.commit()?;
    crate::metrics::get()
        .backend_commit_duration
        .observe(start.elapsed().as_secs_f64());
    Ok(if finished {
        Progress::Done(target)
    } else {
        Progress::More
    })
}

/// The revision of the record of `key` just before `rev`, if there is one: the lookup for
/// `kv_revs` entries that do not name it.
fn predecessor(ks: &Keyspaces, key: &[u8], rev: Rev) -> Result<Option<Rev>, MvccError> {
    let from = codec::history_prefix(key);
    let to = codec::history_key(key, rev);
    match ks.history.range(from..to).keys().next_back() {
        Some(raw) => Ok(Some(codec::split_history_key(&raw?)?.1)),
        None => Ok(None),
    }
}

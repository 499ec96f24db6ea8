//! The raft log, the vote and the committed log id, in the store's WAL database.
//!
//! Keyspaces (opened here, nowhere else):
//! - `raft_log`: key = log index as u64 big-endian; value = the openraft entry (bincode), whose
//!   command is the protobuf encoding of `cairnpb.Command`.
//! - `raft_meta`: `vote`, `committed`, `last_purged` -> bincode of openraft's vote / log id.
//!
//! Both live in the store's WAL database, whose journal holds nothing else, so writing and
//! fsyncing it never waits for MVCC writes or the other way round.
//!
//! Durability: [`RaftLogStorage::append`] commits its entries in one batch, so they are
//! readable at once, then queues openraft's `IOFlushed` callback to the fsync thread. That
//! thread takes every callback queued while its previous fsync ran, does one
//! `Store::sync_wal`, and completes them all in order: group commit, one fsync for many
//! appends. `save_vote` waits on the same thread, so a vote is durable before it returns.
//! A sole member with nothing queued on the thread fsyncs on openraft's core instead and
//! completes the callback there: the two thread hand-offs (to the fsync thread and back to
//! the core) cost more than the fsync on a fast disk, and with no follower to replicate to
//! the core has nothing to do meanwhile. With members to replicate to, the core must not
//! wait, so the thread always fsyncs; with callbacks queued, completing a later one first
//! would report the log flushed out of order.
//! Purge records `last_purged` and returns; the entries at or below it are removed in the
//! background, one purge after the other (removing a snapshot interval of entries held up
//! every append queued behind the purge for 150 ms). openraft never reads below
//! `last_purged`, and a start finishes a removal a crash interrupted.
//! Truncation, purge and the committed id are not fsynced on their own: the storage contract
//! makes a database's commits durable in order, so the next fsync covers them, and losing them in a crash is harmless
//! (openraft re-derives them). The committed id is written by the fsync thread just before
//! its next fsync: written by openraft's core, it would wait for the journal lock that an
//! fsync in flight holds, stalling the core for a whole fsync after every commit.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::{blocking, decode, encode, InUse, TypeConfig};
use crate::metrics;
use crate::storage::{Keyspace, Store};

const LOG: &str = "raft_log";
const META: &str = "raft_meta";
const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;

/// openraft's log storage on the shared [`Store`].
pub(super) struct LogStore {
    store: Arc<Store>,
    reader: LogReader,
    fsync: Fsync,
    /// Held by the background removal of a purge's entries, so purges run in order.
    purging: Arc<Mutex<()>>,
}

/// Read access to the log, handed to openraft's replication and apply tasks.
#[derive(Clone)]
pub(super) struct LogReader {
    log: Keyspace,
    meta: Keyspace,
    /// Keeps the store open for openraft's tasks and a purge's background removal.
    in_use: InUse,
}

impl LogStore {
    pub(super) fn open(store: Arc<Store>, in_use: InUse) -> io::Result<LogStore> {
        let reader = LogReader {
            log: store.wal_keyspace(LOG).map_err(io::Error::other)?,
            meta: store.wal_keyspace(META).map_err(io::Error::other)?,
            in_use: in_use.clone(),
        };
        reader.finish_purge(&store)?;
        let fsync = Fsync::spawn(store.clone(), reader.meta.clone(), in_use)?;
        Ok(LogStore {
            store,
            reader,
            fsync,
            purging: Arc::default(),
        })
    }

    /// The switch that lets appends fsync on openraft's core (see the module header).
    pub(super) fn sole_member(&self) -> SoleMember {
        self.fsync.sole.clone()
    }

    async fn put_meta(&self, key: &'static [u8], value: Vec<u8>) -> io::Result<()> {
        let meta = self.reader.meta.clone();
        blocking(move || meta.insert(key, value).map_err(io::Error::other)).await
    }
}

impl LogReader {
    /// Removes what a purge interrupted by a crash left at or below `last_purged` (nothing
    /// after a completed one: `purge_chunks` finds no entry in the range).
    fn finish_purge(&self, store: &Store) -> io::Result<()> {
        match self.meta::<LogId>(LAST_PURGED)? {
            Some(purged) => purge_chunks(store, &self.log, 0..=purged.index()),
            None => Ok(()),
        }
    }

    fn meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let value = self.meta.get(key).map_err(io::Error::other)?;
        value.map(|v| decode(&v)).transpose()
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for item in self.log.range(key_bounds(&range)) {
            let (_, value) = item.map_err(io::Error::other)?;
            entries.push(decode(&value)?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<TypeConfig>>> {
        self.meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.reader.meta(LAST_PURGED)?;
        let last_entry = match self.reader.log.last().map_err(io::Error::other)? {
            Some((_, value)) => Some(decode::<Entry>(&value)?.log_id()),
            None => None,
        };
        // A purge interrupted by a crash can leave entries at or below `last_purged`
        // (see `purge`); they are not the log's end then.
        let last_log_id = last_entry.max(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
        self.put_meta(VOTE, encode(vote)?).await?;
        self.fsync.wait().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        if let Some(log_id) = committed {
            self.fsync.save_committed(encode(&log_id)?)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.reader.meta(COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.store.wal_batch();
        let mut bytes = 0;
        for entry in entries {
            let value = encode(&entry)?;
            bytes += 8 + value.len() as u64;
            batch.insert(&self.reader.log, entry.index().to_be_bytes(), value);
        }
        // Inline: committing to the journal's buffer and the memtable takes microseconds,
        // far less than a hop to a blocking thread and back. It waits only while an fsync
        // is in flight, and the core could not complete this append any sooner then.
        batch.commit().map_err(io::Error::other)?;
        metrics::get()
            .wal_write_bytes
            .add(i64::try_from(bytes).unwrap_or(i64::MAX));
        if self.fsync.may_sync_here() {
            callback.io_completed(self.fsync.sync_here());
            return Ok(());
        }
        self.fsync.queue(Waiter::Log(callback))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        self.remove(from..).await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Only the entries after the previous purge are left to remove: starting the range
        // there skips the tombstones of earlier purges instead of walking them all.
        let from = self
            .reader
            .meta::<LogId>(LAST_PURGED)?
            .map_or(0, |l| l.index() + 1);
        self.put_meta(LAST_PURGED, encode(&log_id)?).await?;
        let (store, log) = (self.store.clone(), self.reader.log.clone());
        let (purging, in_use) = (self.purging.clone(), self.reader.in_use.clone());
        tokio::task::spawn_blocking(move || {
            let _turn = purging.lock().unwrap_or_else(|p| p.into_inner());
            // A failed removal fails the store (see `storage`), which stops the node; the
            // entries left are removed at the next start.
            if let Err(e) = purge_chunks(&store, &log, from..=log_id.index()) {
                tracing::error!(error = %e, "removing purged raft log entries failed");
            }
            drop(in_use);
        });
        Ok(())
    }
}

/// Entries removed per batch by a purge. A batch holds the journal's lock while it is
/// written, and appends wait for it: one batch of a whole snapshot interval (100 000
/// entries by default) stalled puts for tens of milliseconds.
const PURGE_CHUNK: u64 = 1024;

/// Removes the entries in `range`, which `last_purged` already covers, in ascending
/// batches of [`PURGE_CHUNK`]. A crash part way leaves a contiguous tail of the log,
/// possibly starting at or below `last_purged`; `get_log_state` allows for that, openraft
/// never reads below `last_purged`, and the next start removes the rest (`finish_purge`).
///
/// The log is contiguous, so the keys between its first and last entry in `range` are
/// known: they are removed without reading them. Reading them back, a scan of the whole
/// snapshot interval (every entry's block, merged against the tombstones being written),
/// cost a twentieth of the server's CPU under puts at 10 M keys.
fn purge_chunks(
    store: &Store,
    log: &Keyspace,
    range: std::ops::RangeInclusive<u64>,
) -> io::Result<()> {
    let mut present = log.range(key_bounds(&range)).keys();
    let Some(first) = present.next() else {
        return Ok(());
    };
    let first = log_index(&first.map_err(io::Error::other)?)?;
    let last = match present.next_back() {
        Some(key) => log_index(&key.map_err(io::Error::other)?)?,
        None => first,
    };
    let mut from = first;
    while from <= last {
        let to = last.min(from + PURGE_CHUNK - 1);
        let mut batch = store.wal_batch();
        for index in from..=to {
            batch.remove(log, index.to_be_bytes());
        }
        batch.commit().map_err(io::Error::other)?;
        from = to + 1;
    }
    Ok(())
}

/// The log index a `raft_log` key names.
fn log_index(key: &[u8]) -> io::Result<u64> {
    let bytes = key
        .try_into()
        .map_err(|_| io::Error::other(format!("raft_log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl LogStore {
    /// Removes the entries in `range` in one batch: a crash cannot leave a gap in the log.
    async fn remove(&self, range: impl RangeBounds<u64> + Send + 'static) -> io::Result<()> {
        let (store, log) = (self.store.clone(), self.reader.log.clone());
        blocking(move || {
            let mut batch = store.wal_batch();
            for key in log.range(key_bounds(&range)).keys() {
                batch.remove(&log, key.map_err(io::Error::other)?);
            }
            batch.commit().map_err(io::Error::other)
        })
        .await
    }
}

fn key_bounds(range: &impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    (
        range.start_bound().map(|i| i.to_be_bytes()),
        range.end_bound().map(|i| i.to_be_bytes()),
    )
}

/// Something waiting for the next fsync.
enum Waiter {
    /// openraft's append callback.
    Log(IOFlushed<TypeConfig>),
    /// A caller in this module awaiting durability (`save_vote`).
    Caller(oneshot::Sender<io::Result<()>>),
}

impl Waiter {
    fn complete(self, result: io::Result<()>) {
        match self {
            Waiter::Log(callback) => callback.io_completed(result),
            Waiter::Caller(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// Whether this member is its cluster's only member (no voter or learner to replicate to),
/// kept up to date from openraft's metrics. Until the first metrics say so, appends fsync on
/// the thread.
#[derive(Clone, Default)]
pub(super) struct SoleMember(Arc<AtomicBool>);

impl SoleMember {
    pub(super) fn set(&self, is_sole: bool) {
        self.0.store(is_sole, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The handle to the fsync thread. The thread ends when this handle is dropped, after it
/// has completed everything queued.
struct Fsync {
    tx: mpsc::Sender<Waiter>,
    /// Waiters queued and not yet completed by the thread.
    queued: Arc<AtomicUsize>,
    sole: SoleMember,
    store: Arc<Store>,
    meta: Keyspace,
    /// The latest committed log id (encoded) not yet written to `raft_meta`.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Fsync {
    fn spawn(store: Arc<Store>, meta: Keyspace, in_use: InUse) -> io::Result<Fsync> {
        let (tx, rx) = mpsc::channel();
        let committed = Arc::new(Mutex::new(None));
        let queued = Arc::new(AtomicUsize::new(0));
        let (thread_store, thread_meta, pending, thread_queued) = (
            store.clone(),
            meta.clone(),
            committed.clone(),
            queued.clone(),
        );
        std::thread::Builder::new()
            .name("raft-fsync".to_string())
            .spawn(move || {
                let _in_use = in_use;
                group_commit(&thread_store, &thread_meta, &pending, &thread_queued, &rx);
            })?;
        Ok(Fsync {
            tx,
            queued,
            sole: SoleMember::default(),
            store,
            meta,
            committed,
        })
    }

    /// Whether the caller (openraft's core, the only one queueing) may fsync itself: a sole
    /// member, and every waiter queued before has been completed, so completions stay in
    /// order.
    fn may_sync_here(&self) -> bool {
        self.sole.get() && self.queued.load(Ordering::Acquire) == 0
    }

    /// What the thread does for one group, on the caller's thread.
    fn sync_here(&self) -> io::Result<()> {
        sync(&self.store, &self.meta, &self.committed)
    }

    /// Has `committed` written before the next fsync, replacing an older one not yet written.
    fn save_committed(&self, committed: Vec<u8>) -> io::Result<()> {
        *self
            .committed
            .lock()
            .map_err(|_| io::Error::other("committed id lock poisoned"))? = Some(committed);
        Ok(())
    }

    fn queue(&self, waiter: Waiter) -> io::Result<()> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx
            .send(waiter)
            .map_err(|_| io::Error::other("raft fsync thread has stopped"))
    }

    /// Returns once everything written before the call is durable.
    async fn wait(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.queue(Waiter::Caller(tx))?;
        rx.await
            .map_err(|_| io::Error::other("raft fsync thread has stopped"))?
    }
}

/// The fsync thread: every waiter queued while an fsync runs shares the next one.
fn group_commit(
    store: &Store,
    meta: &Keyspace,
    committed: &Mutex<Option<Vec<u8>>>,
    queued: &AtomicUsize,
    rx: &mpsc::Receiver<Waiter>,
) {
    while let Ok(first) = rx.recv() {
        let group: Vec<Waiter> = std::iter::once(first).chain(rx.try_iter()).collect();
        let result = sync(store, meta, committed);
        for waiter in group {
            // io::Error is not Clone; each waiter gets its own copy of the message.
            waiter.complete(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| io::Error::other(e.to_string())),
            );
            // After completing: a caller that reads 0 knows every earlier waiter is done.
            queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Writes the pending committed id, then makes everything written to the WAL durable.
fn sync(store: &Store, meta: &Keyspace, committed: &Mutex<Option<Vec<u8>>>) -> io::Result<()> {
    write_committed(meta, committed)?;
    store
        .sync_wal()
        .map_err(|e| io::Error::other(e.to_string()))
}

fn write_committed(meta: &Keyspace, committed: &Mutex<Option<Vec<u8>>>) -> io::Result<()> {
    let value = committed
        .lock()
        .map_err(|_| io::Error::other("committed id lock poisoned"))?
        .take();
    match value {
        Some(value) => meta.insert(COMMITTED, value).map_err(io::Error::other),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorage;

    use super::*;
    use crate::raft::Proposal;

    fn entry(index: u64) -> Entry {
        openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: openraft::EntryPayload::Normal(Proposal(Default::default())),
        }
    }

    /// The log as a crash after the first batch of a purge leaves it: `last_purged` at
    /// `purged`, entries 1..=`last` still there.
    fn interrupted_purge(store: &Store, last: u64, purged: u64) {
        let (log, meta) = (
            store.wal_keyspace(LOG).expect("log"),
            store.wal_keyspace(META).expect("meta"),
        );
        let mut batch = store.wal_batch();
        for index in 1..=last {
            batch.insert(
                &log,
                index.to_be_bytes(),
                encode(&entry(index)).expect("encode"),
            );
        }
        batch.insert(
            &meta,
            LAST_PURGED,
            encode(&entry(purged).log_id).expect("encode"),
        );
        batch.commit().expect("commit");
    }

    fn indexes(store: &Store) -> Vec<u64> {
        let log = store.wal_keyspace(LOG).expect("log");
        log.iter()
            .keys()
            .map(|k| log_index(&k.expect("key")).expect("a log index"))
            .collect()
    }

    /// Appends `index` and returns its callback's receiver, after `append` has returned.
    async fn append_one(
        logs: &mut LogStore,
        index: u64,
    ) -> openraft::alias::OneshotReceiverOf<TypeConfig, io::Result<()>> {
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        logs.append([entry(index)], IOFlushed::signal(tx))
            .await
            .expect("append");
        rx
    }

    #[tokio::test]
    async fn a_sole_member_completes_an_append_before_it_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let (in_use, _released) = InUse::new();
        let mut logs = LogStore::open(store, in_use).expect("open log");
        logs.sole_member().set(true);
        let mut flushed = append_one(&mut logs, 1).await;
        assert!(matches!(flushed.try_recv(), Ok(Ok(()))));
        // With members to replicate to, the fsync thread completes it, later.
        logs.sole_member().set(false);
        let flushed = append_one(&mut logs, 2).await;
        assert!(matches!(flushed.await, Ok(Ok(()))));
    }

    #[tokio::test]
    async fn an_interrupted_purge_is_finished_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        interrupted_purge(&store, 3000, 2500);
        let (in_use, _released) = InUse::new();
        let mut logs = LogStore::open(store.clone(), in_use).expect("open log");
        assert_eq!(indexes(&store), (2501..=3000).collect::<Vec<_>>());
        let state = logs.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(3000));
        assert_eq!(state.last_purged_log_id.map(|l| l.index()), Some(2500));
        // The next purge starts after the last one; it counts at once, and its entries are
        // removed in the background, over several batches.
        logs.purge(entry(2999).log_id).await.expect("purge");
        let state = logs.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index()), Some(2999));
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(3000));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while indexes(&store) != vec![3000] {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                indexes(&store).len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_log_purged_past_its_last_entry_ends_at_the_purge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        interrupted_purge(&store, 10, 10);
        let (in_use, _released) = InUse::new();
        let mut logs = LogStore::open(store.clone(), in_use).expect("open log");
        assert!(indexes(&store).is_empty());
        let state = logs.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(10));
    }
}

//! The watch hub: fans the events of every applied revision out to watchers, with etcd's
//! synced/unsynced groups (watchable_store.go), so a slow watcher never blocks apply or the
//! other watchers.
//!
//! * Apply calls [`WatchHub::notify`] with each revision's events; that only queues them.
//!   The `watch-dispatch` thread takes them in order and, under the hub lock, hands each
//!   *synced* watcher whose range matches the revision's events, as one message.
//! * Each watcher may have at most [`WATCHER_BUFFER`] messages queued to its stream. A
//!   watcher whose buffer is full is moved to the *unsynced* set with `next_rev` = the
//!   revision it missed.
//! * The `watch-sync` thread feeds unsynced watchers from the MVCC history
//!   ([`Mvcc::events`]) in bounded chunks and moves a watcher back to synced, under the hub
//!   lock, once it has caught up with the hub's revision. A watcher whose next revision was
//!   compacted gets a [`WatchMsg::Compacted`] and is dropped.
//!
//! **Invariant:** the hub's revision is the last revision dispatched, and every change to
//! it, to a watcher's `next_rev` or to its group happens under the one hub lock. A new
//! watcher is registered under that lock: from "now" it joins synced at the hub revision
//! + 1; from the past it joins unsynced at its start revision, and history up to the hub
//!   revision is on disk (apply notifies after committing). So no event is lost between
//!   reading history and joining the live feed, and none is delivered twice.
//!
//! Each event is encoded once ([`SharedEvent`]) and shared, not copied, by the messages of
//! all the watchers it goes to.
//!
//! Messages of all watchers of one gRPC stream go through one unbounded channel (a
//! [`Sink`]); it is bounded in practice by the per-watcher buffer. The stream applies the
//! per-watcher options that do not change which revisions are sent (filters, prev_kv).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc as tokio_mpsc;

use crate::mvcc::{Mvcc, MvccError};
use crate::proto::mvccpb::Event;

mod event;
pub use event::SharedEvent;

/// Events of one message, shared by every watcher of the same range that gets them.
pub type Events = Arc<Vec<Arc<SharedEvent>>>;

/// Messages one watcher may have queued before it is moved to the unsynced set (etcd
/// buffers 128 responses per stream; cairn counts per watcher so one busy watch does not
/// push its stream's others out).
pub const WATCHER_BUFFER: usize = 128;
/// Events read from history per chunk; a revision is never split (etcd's
/// `watchBatchMaxRevs` is 1000 revisions).
const SYNC_CHUNK_EVENTS: usize = 1000;
/// How often unsynced watchers are retried when nothing wakes the syncer (etcd: 100 ms).
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// etcd's default `ProgressReportInterval`.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// A watcher's identity in the hub, unique for the life of the process (a stream maps it
/// to the client's watch id, which may be reused after a cancel).
pub type WatcherId = u64;

/// What to watch, with etcd's key conventions already decoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRange {
    pub key: Vec<u8>,
    /// `None`: exactly `key`; `Some(None)`: every key >= `key`; `Some(Some(end))`: `[key, end)`.
    pub end: Option<Option<Vec<u8>>>,
}

impl KeyRange {
    /// etcd's `key`/`range_end` pair: empty end = one key, `\0` = everything from `key`.
    pub fn new(key: Vec<u8>, range_end: &[u8]) -> KeyRange {
        let end = match range_end {
            [] => None,
            [0] => Some(None),
            end => Some(Some(end.to_vec())),
        };
        KeyRange { key, end }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.key.as_slice(),
            Some(None) => key >= self.key.as_slice(),
            Some(Some(end)) => key >= self.key.as_slice() && key < end.as_slice(),
        }
    }
}

/// A message for one stream.
#[derive(Debug)]
pub enum WatchMsg {
    /// Events of one or more whole revisions, in order. `revision` is the header revision.
    Events {
        watcher: WatcherId,
        revision: i64,
        events: Events,
        /// Frees the watcher's buffer slot when the message is dropped (sent or not).
        credit: Credit,
    },
    /// The watcher's next revision was compacted; it has been removed from the hub.
    Compacted {
        watcher: WatcherId,
        compact_revision: i64,
    },
    /// Everything up to `revision` has been sent to the watcher (`None`: to every watcher of
    /// the stream, in answer to a progress request).
    Progress {
        watcher: Option<WatcherId>,
        revision: i64,
    },
}

/// One buffer slot of a watcher, released on drop.
#[derive(Debug)]
pub struct Credit(Arc<AtomicUsize>);

impl Drop for Credit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The sending half of a stream's channel.
#[derive(Clone)]
pub struct Sink(tokio_mpsc::UnboundedSender<WatchMsg>);

/// A new stream channel.
pub fn channel() -> (Sink, tokio_mpsc::UnboundedReceiver<WatchMsg>) {
    let (tx, rx) = tokio_mpsc::unbounded_channel();
    (Sink(tx), rx)
}

impl Sink {
    fn send(&self, msg: WatchMsg) {
        // A closed stream cancels its watchers itself; until then its messages are dropped.
        let _ = self.0.send(msg);
    }
}

struct Watcher {
    range: KeyRange,
    /// Whether history reads must fetch the previous versions for this watcher.
    prev_kv: bool,
    /// The first revision not yet sent.
    next_rev: i64,
    /// Messages queued and not yet taken by the stream.
    queued: Arc<AtomicUsize>,
    sink: Sink,
    synced: bool,
}

impl Watcher {
    fn has_room(&self) -> bool {
        self.queued.load(Ordering::Acquire) < WATCHER_BUFFER
    }

    /// A lagging watcher gets its next history chunk only once the last one was taken by
    /// its stream, so catch-up holds at most one chunk per watcher however slow the client.
    fn is_drained(&self) -> bool {
        self.queued.load(Ordering::Acquire) == 0
    }

    fn credit(&self) -> Credit {
        self.queued.fetch_add(1, Ordering::AcqRel);
        Credit(self.queued.clone())
    }
}

/// The state behind the hub lock.
struct State {
    /// The last revision dispatched.
    rev: i64,
    next_id: WatcherId,
    watchers: HashMap<WatcherId, Watcher>,
    /// Synced watchers by range, so a revision is matched once per distinct range.
    synced: HashMap<KeyRange, HashSet<WatcherId>>,
    /// Synced single-key watchers by key.
    synced_keys: HashMap<Vec<u8>, HashSet<WatcherId>>,
    unsynced: HashSet<WatcherId>,
    /// Batches handed to the dispatcher and not yet through it: while there are none, apply
    /// may move an unwatched hub on itself (see [`WatchHub::notify`]).
    queued: usize,
}

impl State {
    fn join_synced(&mut self, id: WatcherId, range: &KeyRange) {
        match range.end {
            None => self.synced_keys.entry(range.key.clone()).or_default(),
            Some(_) => self.synced.entry(range.clone()).or_default(),
        }
        .insert(id);
    }

    fn leave_synced(&mut self, id: WatcherId, range: &KeyRange) {
        let (map_key, set) = match range.end {
            None => (None, self.synced_keys.get_mut(&range.key)),
            Some(_) => (Some(range), self.synced.get_mut(range)),
        };
        let Some(set) = set else { return };
        set.remove(&id);
        if set.is_empty() {
            match map_key {
                None => self.synced_keys.remove(&range.key),
                Some(r) => self.synced.remove(r),
            };
        }
    }

    fn remove(&mut self, id: WatcherId) -> bool {
        let Some(w) = self.watchers.remove(&id) else {
            return false;
        };
        if w.synced {
            self.leave_synced(id, &w.range);
        } else {
            self.unsynced.remove(&id);
        }
        self.publish_counts();
        true
    }

    fn mark_unsynced(&mut self, id: WatcherId, next_rev: i64) {
        let Some(w) = self.watchers.get_mut(&id) else {
            return;
        };
        w.synced = false;
        w.next_rev = next_rev;
        let range = w.range.clone();
        self.leave_synced(id, &range);
        self.unsynced.insert(id);
    }

    fn publish_counts(&self) {
        let m = crate::metrics::get();
        m.watchers.set(gauge(self.watchers.len()));
        m.slow_watchers.set(gauge(self.unsynced.len()));
    }

    /// With no watcher at all, applied revisions only move the hub on: nothing is encoded
    /// (a watcher that registers later starts after them or reads them from history).
    fn skip_unwatched(&mut self, revisions: &[Vec<Event>]) -> bool {
        if !self.watchers.is_empty() {
            return false;
        }
        let last = revisions
            .iter()
            .rev()
            .find_map(|events| events.first())
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision);
        if let Some(rev) = last {
            self.rev = self.rev.max(rev);
        }
        true
    }

    /// Hands one revision's events to the synced watchers they concern.
    fn dispatch(&mut self, events: &[Arc<SharedEvent>]) {
        let Some(rev) = events.first().map(|e| e.revision()) else {
            return;
        };
        if rev <= self.rev {
            // Queued before a snapshot install moved the hub past it: the watchers read
            // this revision from history instead (see `WatchHub::restored`).
            return;
        }
        self.rev = rev;
        let mut slow = Vec::new();
        for (range, ids) in &self.synced {
            let mine = matching(events, range);
            if !mine.is_empty() {
                let mine = Arc::new(mine);
                deliver(&mut self.watchers, ids, rev, &mine, &mut slow);
            }
        }
        for event in events {
            if let Some(ids) = self.synced_keys.get(event.key()) {
                let mine = Arc::new(vec![event.clone()]);
                deliver(&mut self.watchers, ids, rev, &mine, &mut slow);
            }
        }
        if !slow.is_empty() {
            for id in slow {
                self.mark_unsynced(id, rev);
            }
            self.publish_counts();
        }
    }
}

/// Sends `events` (of revision `rev`) to each watcher of `ids` that is waiting for it;
/// collects in `slow` those whose buffer is full.
fn deliver(
    watchers: &mut HashMap<WatcherId, Watcher>,
    ids: &HashSet<WatcherId>,
    rev: i64,
    events: &Events,
    slow: &mut Vec<WatcherId>,
) {
    for id in ids {
        let Some(w) = watchers.get_mut(id) else {
            continue;
        };
        if rev < w.next_rev {
            continue; // started at a future revision
        }
        if !w.has_room() {
            slow.push(*id);
            continue;
        }
        w.sink.send(WatchMsg::Events {
            watcher: *id,
            revision: rev,
            events: events.clone(),
            credit: w.credit(),
        });
        w.next_rev = rev + 1;
    }
}

/// The events among `events` whose key is in `range`.
fn matching(events: &[Arc<SharedEvent>], range: &KeyRange) -> Vec<Arc<SharedEvent>> {
    events
        .iter()
        .filter(|e| range.contains(e.key()))
        .cloned()
        .collect()
}

fn share(events: &[Event]) -> Vec<Arc<SharedEvent>> {
    events
        .iter()
        .map(|e| Arc::new(SharedEvent::new(e)))
        .collect()
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

struct Shared {
    state: Mutex<State>,
    mvcc: Arc<Mvcc>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves consistent data (every update is one step), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The hub. Dropping it stops its threads.
pub struct WatchHub {
    shared: Arc<Shared>,
    dispatch: Mutex<mpsc::Sender<Vec<Vec<Event>>>>,
    wake_syncer: Mutex<mpsc::Sender<()>>,
    /// How often idle watches with `progress_notify` get a progress response.
    pub progress_interval: Duration,
}

impl WatchHub {
    /// A hub at the store's current revision, with its dispatch and sync threads.
    pub fn start(mvcc: Arc<Mvcc>, progress_interval: Duration) -> Result<WatchHub, WatchError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rev: mvcc.current_revision(),
                next_id: 1,
                watchers: HashMap::new(),
                synced: HashMap::new(),
                synced_keys: HashMap::new(),
                unsynced: HashSet::new(),
                queued: 0,
            }),
            mvcc,
        });
        let (dispatch, queue) = mpsc::channel::<Vec<Vec<Event>>>();
        let (wake_syncer, wake) = mpsc::channel();
        let s = shared.clone();
        spawn("watch-dispatch", move || {
            while let Ok(revisions) = queue.recv() {
                let mut st = s.lock();
                if !st.skip_unwatched(&revisions) {
                    drop(st);
                    // Encoded here, not on apply's thread, and outside the hub lock.
                    let revisions: Vec<_> = revisions.iter().map(|events| share(events)).collect();
                    st = s.lock();
                    for events in &revisions {
                        st.dispatch(events);
                    }
                }
                st.queued -= 1;
            }
        })?;
        let s = shared.clone();
        spawn("watch-sync", move || sync_loop(&s, &wake))?;
        Ok(WatchHub {
            shared,
            dispatch: Mutex::new(dispatch),
            wake_syncer: Mutex::new(wake_syncer),
            progress_interval,
        })
    }

    /// Queues the events of applied revisions, one list per revision in apply order. Never
    /// blocks on watchers. Apply hands over its revisions in chunks (a batch, or the entries
    /// of a few replies): one wake-up of the dispatcher per chunk, not per revision. With no
    /// watcher and nothing queued, the hub moves on here instead: nothing to send, so no
    /// thread to wake on each write.
    pub fn notify(&self, revisions: Vec<Vec<Event>>) {
        if revisions.is_empty() {
            return;
        }
        {
            let mut st = self.shared.lock();
            // Only with nothing queued, so revisions still reach the hub in apply order.
            if st.queued == 0 && st.skip_unwatched(&revisions) {
                return;
            }
            st.queued += 1;
        }
        if let Ok(tx) = self.dispatch.lock() {
            // The dispatcher only stops when the hub is dropped.
            let _ = tx.send(revisions);
        }
    }

    /// The store was replaced by a raft snapshot at revision `rev` (this member was far
    /// behind): as etcd's `watchableStore.Restore`, every synced watcher becomes unsynced
    /// and catches up from history, so the revisions it missed reach it in order (or it
    /// is told they were compacted).
    pub fn restored(&self, rev: i64) {
        let mut st = self.shared.lock();
        let synced: Vec<(WatcherId, i64)> = st
            .watchers
            .iter()
            .filter(|(_, w)| w.synced)
            .map(|(id, w)| (*id, w.next_rev))
            .collect();
        for (id, next_rev) in synced {
            st.mark_unsynced(id, next_rev);
        }
        st.rev = st.rev.max(rev);
        st.publish_counts();
        drop(st);
        self.wake();
    }

    /// The last revision handed to watchers: a watch from "now" starts after it.
    pub fn revision(&self) -> i64 {
        self.shared.lock().rev
    }

    /// Registers a watcher from `start_rev` (0: from the next revision). Returns its id and
    /// the hub revision at registration (the `created` response's header revision).
    pub fn watch(
        &self,
        range: KeyRange,
        start_rev: i64,
        prev_kv: bool,
        sink: &Sink,
    ) -> (WatcherId, i64) {
        let mut st = self.shared.lock();
        let id = st.next_id;
        st.next_id += 1;
        let rev = st.rev;
        // As etcd's `watchableStore.watch`: from now or the future is synced.
        let synced = start_rev == 0 || start_rev > rev;
        let w = Watcher {
            range: range.clone(),
            prev_kv,
            next_rev: if synced {
                start_rev.max(rev + 1)
            } else {
                start_rev
            },
            queued: Arc::new(AtomicUsize::new(0)),
            sink: sink.clone(),
            synced,
        };
        st.watchers.insert(id, w);
        if synced {
            st.join_synced(id, &range);
        } else {
            st.unsynced.insert(id);
        }
        st.publish_counts();
        drop(st);
        if !synced {
            self.wake();
        }
        (id, rev)
    }

    /// Removes a watcher; false if it was not registered (already canceled or compacted).
    pub fn cancel(&self, id: WatcherId) -> bool {
        self.shared.lock().remove(id)
    }

    /// Sends a progress message for `id` if it is synced (etcd's `RequestProgress`).
    pub fn progress(&self, id: WatcherId) {
        let st = self.shared.lock();
        if let Some(w) = st.watchers.get(&id).filter(|w| w.synced) {
            w.sink.send(WatchMsg::Progress {
                watcher: Some(id),
                revision: st.rev,
            });
        }
    }

    /// If every watcher in `ids` is synced, queues one progress message for all of them on
    /// `sink` and returns true (etcd's `RequestProgressAll`); otherwise sends nothing.
    pub fn progress_all(&self, ids: &[WatcherId], sink: &Sink) -> bool {
        let st = self.shared.lock();
        if ids
            .iter()
            .any(|id| st.watchers.get(id).is_some_and(|w| !w.synced))
        {
            return false;
        }
        sink.send(WatchMsg::Progress {
            watcher: None,
            revision: st.rev,
        });
        true
    }

    fn wake(&self) {
        if let Ok(tx) = self.wake_syncer.lock() {
            let _ = tx.send(());
        }
    }
}

fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<(), WatchError> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(drop)
        .map_err(|e| WatchError::Thread(name, e))
}

/// The syncer: catches unsynced watchers up until the hub is dropped.
fn sync_loop(shared: &Shared, wake: &mpsc::Receiver<()>) {
    loop {
        match sync_pass(shared) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "watch catch-up failed; retrying"),
        }
        match wake.recv_timeout(SYNC_INTERVAL) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// An unsynced watcher as the syncer sees it outside the lock.
struct Lagging {
    id: WatcherId,
    range: KeyRange,
    next_rev: i64,
    sink: Sink,
    queued: Arc<AtomicUsize>,
}

/// One catch-up step for every unsynced watcher whose stream took its last message: reads
/// one chunk of history from the lowest `next_rev`, sends each watcher its part, then moves
/// those that reached the hub revision to synced. Watchers with the same range and next
/// revision share one copy of their part (after one pass, watchers that fell behind together
/// are at the same revision), so memory grows with distinct positions, not with watchers.
/// Returns true if more work is ready right away.
fn sync_pass(shared: &Shared) -> Result<bool, MvccError> {
    let (lagging, hub_rev, prev_kv) = {
        let st = shared.lock();
        let mut prev_kv = false;
        let lagging: Vec<Lagging> = st
            .unsynced
            .iter()
            .filter_map(|id| st.watchers.get(id).map(|w| (*id, w)))
            .filter(|(_, w)| w.is_drained())
            .map(|(id, w)| {
                prev_kv |= w.prev_kv;
                Lagging {
                    id,
                    range: w.range.clone(),
                    next_rev: w.next_rev,
                    sink: w.sink.clone(),
                    queued: w.queued.clone(),
                }
            })
            .collect();
        (lagging, st.rev, prev_kv)
    };
    let Some(from) = lagging.iter().map(|l| l.next_rev).min() else {
        return Ok(false);
    };
    let events = if from > hub_rev {
        Vec::new()
    } else {
        match shared
            .mvcc
            .events(from, hub_rev, SYNC_CHUNK_EVENTS, prev_kv)
        {
            Ok(events) => share(&events),
            Err(MvccError::Compacted) => {
                drop_compacted(shared, &lagging);
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
    };
    let chunk_end = match events.last() {
        Some(e) if events.len() >= SYNC_CHUNK_EVENTS => e.revision(),
        _ => hub_rev,
    };
    let mut parts: HashMap<(&KeyRange, i64), Events> = HashMap::new();
    for l in &lagging {
        let mine = parts.entry((&l.range, l.next_rev)).or_insert_with(|| {
            Arc::new(
                events
                    .iter()
                    .filter(|e| e.revision() >= l.next_rev && l.range.contains(e.key()))
                    .cloned()
                    .collect(),
            )
        });
        if !mine.is_empty() {
            l.queued.fetch_add(1, Ordering::AcqRel);
            l.sink.send(WatchMsg::Events {
                watcher: l.id,
                revision: hub_rev,
                events: mine.clone(),
                credit: Credit(l.queued.clone()),
            });
        }
    }
    let mut st = shared.lock();
    let mut behind = false;
    let now = st.rev;
    for l in &lagging {
        let Some(w) = st.watchers.get_mut(&l.id) else {
            continue; // canceled meanwhile
        };
        // A watcher already past this chunk got nothing from it and keeps its place:
        // moving it back would send it those revisions twice.
        w.next_rev = w.next_rev.max(chunk_end + 1);
        if w.next_rev > now {
            w.synced = true;
            st.unsynced.remove(&l.id);
            st.join_synced(l.id, &l.range);
        } else {
            behind = true;
        }
    }
    st.publish_counts();
    Ok(behind && chunk_end < st.rev)
}

/// Sends `Compacted` to, and removes, the lagging watchers whose next revision is gone.
fn drop_compacted(shared: &Shared, lagging: &[Lagging]) {
    let compact = shared.mvcc.compact_revision();
    let mut st = shared.lock();
    for l in lagging.iter().filter(|l| l.next_rev < compact) {
        if st.remove(l.id) {
            l.sink.send(WatchMsg::Compacted {
                watcher: l.id,
                compact_revision: compact,
            });
        }
    }
}

#[cfg(test)]
mod tests;

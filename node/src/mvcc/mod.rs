//! The MVCC revision store, with etcd v3.5's semantics: revisions, key versions and
//! generations, ranges (current and historic), txns with compares and nested txns, and
//! compaction. It takes and returns etcd's protobuf messages and knows nothing of raft or
//! gRPC: the caller applies committed entries one at a time and passes an opaque apply
//! marker that is stored atomically with each change.
//!
//! Nothing is indexed in RAM (etcd keeps its whole key index in memory; cairn must not):
//! every index lives in storage keyspaces, all integers big-endian so byte order is numeric
//! order.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `kv_latest` | user key | live record of the live version (no entry once deleted) |
//! | `kv_history` | esc(user key) ++ main(8) ++ sub(8) | record of that version, or `c` if it is the live one |
//! | `kv_revs` | main(8) ++ sub(8) | `P` or `D` (put / tombstone) ++ superseded(16) ++ user key |
//! | `mvcc_meta` | name (see `meta.rs`) | current and compact revision, compaction progress, live key count, apply marker and configuration record |
//! | `kv_lease` | lease(8) ++ user key | empty: the live keys attached to each lease (see `lease_index.rs`) |
//!
//! * record: `p` ++ create_revision(8) ++ mod_revision(8) ++ version(8) ++ lease(8) ++
//!   value, or the single byte `d` for a tombstone (history only).
//! * live record: `l` ++ the same four integers ++ sub(8) ++ value: the sub revision says
//!   where `kv_history` has the version's `c` entry.
//! * superseded: main(8) ++ sub(8) of the record this change supersedes in the key's
//!   history (all zero for none), so compaction removes it without looking it up.
//! * **Each value is stored once.** The live version's value is in `kv_latest` only; its
//!   `kv_history` entry is `c`, read through `kv_latest` in the same snapshot. The apply
//!   that supersedes it (a put or a delete) rewrites that entry as a full record in the
//!   same batch. Stores written before this (format `cairn-data-v2`) hold `p` live records
//!   with full history records and `p`/`d` ++ user key in `kv_revs`; they are read as they
//!   are and replaced as keys change.
//! * esc(k): each 0x00 byte of k becomes 0x00 0xFF, then 0x00 0x00 ends the key. Escaped
//!   keys sort like the user keys and none is a prefix of another, so one key's history is
//!   contiguous and ordered by revision.
//!
//! Reads at the current revision scan `kv_latest` only; historic reads scan `kv_history`
//! and keep, per key, the newest record at or below the requested revision. `kv_revs`
//! orders all changes by revision, for compaction and for watch history.
//!
//! **Invariant:** every apply commits its changes, the new current revision and the apply
//! marker in one storage batch (without fsync: the raft log is the durability point), and
//! every read takes one storage snapshot and reads the revisions from it, so a reader sees
//! all of a revision or none of it.
//!
//! It must not know about raft, gRPC, leases (the caller says which lease ids exist and
//! adds its own lease records to the apply batch; mvcc only indexes which keys carry which
//! lease id) or watchers (it returns each revision's events to the caller).

mod alarm;
mod codec;
mod compact;
pub mod etcd_format;
mod hash;
mod history;
mod lease_index;
mod meta;
mod published;
mod read;
pub mod snapshot;
mod txn;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use alarm::AlarmChange;
pub use codec::MAX_KEY_LEN;
pub use compact::CompactionDone;
pub use hash::KvHash;
pub use txn::is_read_only;

use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::storage::{Keyspace, Snapshot, StorageError, Store, WriteBatch};
use codec::{Rev, Supersedes};
use read::View;
use txn::TxnExec;

/// Why an MVCC operation failed. The first four are answers to the request (the API maps
/// them to etcd's status codes); `Storage` means the store itself is broken.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// An empty key or one longer than [`MAX_KEY_LEN`] in a put.
    #[error("mvcc: a key must be 1 to {MAX_KEY_LEN} bytes long, this one has {0}")]
    InvalidKey(usize),
    /// A put of the txn's chosen branch names a lease the caller says does not exist.
    #[error("lease not found")]
    LeaseNotFound,
    #[error("mvcc storage: {0}")]
    Storage(#[from] StorageFault),
}

/// What went wrong underneath the MVCC store. `Store` errors from the storage engine are
/// fatal (the store latches them and the node stops, see [`crate::storage`]).
#[derive(Debug, thiserror::Error)]
pub enum StorageFault {
    #[error(transparent)]
    Store(#[from] StorageError),
    #[error("data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot start the compaction thread: {0}")]
    Thread(std::io::Error),
}

impl From<StorageError> for MvccError {
    fn from(e: StorageError) -> MvccError {
        MvccError::Storage(StorageFault::Store(e))
    }
}

impl MvccError {
    /// True for an error that answers the request deterministically (every replica gets
    /// the same), as opposed to a storage failure, after which the node must stop applying.
    pub fn is_answer(&self) -> bool {
        !matches!(self, MvccError::Storage(_))
    }
}

/// The MVCC keyspaces (see the module header).
#[derive(Clone)]
struct Keyspaces {
    latest: Keyspace,
    history: Keyspace,
    revs: Keyspace,
    meta: Keyspace,
    lease: Keyspace,
    /// The lease table is owned by `lease/`; MVCC only copies it into snapshots, so a
    /// restored store keeps the leases its keys point at.
    leases: Keyspace,
    /// etcd's auth store, owned by `auth/`; copied into snapshots like the lease table.
    auth: Keyspace,
}

impl Keyspaces {
    fn open(store: &Store) -> Result<Keyspaces, MvccError> {
        Ok(Keyspaces {
            latest: store.lookup_keyspace("kv_latest")?,
            history: store.keyspace("kv_history")?,
            revs: store.keyspace("kv_revs")?,
            meta: store.small_keyspace("mvcc_meta")?,
            lease: store.keyspace("kv_lease")?,
            leases: store.keyspace("leases")?,
            auth: store.keyspace("auth")?,
        })
    }
}

/// The [`meta::Progress`] recorded in `snap`, or made from the names a store without the
/// record keeps: a fresh store is at revision 1 with no keys and has counted every
/// version added (none); an older one without [`meta::HISTORY_ADDED`] did not count them.
fn progress(snap: &Snapshot, ks: &Keyspaces) -> Result<meta::Progress, MvccError> {
    if let Some(progress) = meta::Progress::read(snap, &ks.meta)? {
        return Ok(progress);
    }
    let history_added = match meta::snapshot_i64(snap, &ks.meta, meta::HISTORY_ADDED)? {
        Some(added) => added,
        None if snap.iter(&ks.revs).next().is_none() => 0,
        None => -1,
    };
    Ok(meta::Progress {
        current: meta::snapshot_i64(snap, &ks.meta, meta::CURRENT_REV)?.unwrap_or(1),
        key_count: meta::snapshot_i64(snap, &ks.meta, meta::KEY_COUNT)?.unwrap_or(0),
        history_added,
    })
}

/// How long an estimate of [`Mvcc::size_in_use`] is reused: the quota check asks on
/// every write.
const IN_USE_TTL: Duration = Duration::from_secs(1);

/// Revisions as recorded in one snapshot, and the live keys at the current one.
#[derive(Clone, Copy)]
struct Revisions {
    current: i64,
    /// -1 if never compacted, as etcd's `compactMainRev`.
    compact: i64,
    live_keys: i64,
}

/// The revision store. Apply calls (`apply_txn`, `compact`, `record_applied`) must come
/// from one thread at a time; reads may come from anywhere, concurrently.
pub struct Mvcc {
    store: Arc<Store>,
    ks: Keyspaces,
    revs: published::Published,
    /// [`meta::HISTORY_ADDED`]; -1 in a store that did not count it from the start.
    history_added: AtomicI64,
    compactor: Mutex<Option<mpsc::Sender<compact::Waiter>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Taken shared to start a read (a storage snapshot) and exclusively by
    /// [`Mvcc::install`], so no reader sees the store half replaced.
    gate: RwLock<()>,
    /// Held by the compaction worker for each batch and by [`Mvcc::install`], so no batch
    /// of the old state lands in the new one.
    compacting: Arc<Mutex<()>>,
    /// etcd's alarm store (see `alarm.rs`).
    alarms: alarm::AlarmList,
    /// The last estimate of the live data and when it was made (see [`Mvcc::size_in_use`]).
    in_use: Mutex<Option<(Instant, u64)>>,
    /// Held by a defragmentation, so two run one after the other.
    defragmenting: Mutex<()>,
}

impl Mvcc {
    /// Opens the MVCC keyspaces and resumes any unfinished physical compaction.
    pub fn open(store: Arc<Store>) -> Result<Mvcc, MvccError> {
        let ks = Keyspaces::open(&store)?;
        let alarms = alarm::AlarmList::load(&ks.meta)?;
        let (revs, history_added) = {
            let snap = store.snapshot();
            let (revs, progress) = recorded(&snap, &ks)?;
            (revs, progress.history_added)
        };
        let (tx, rx) = mpsc::channel();
        let compacting = Arc::new(Mutex::new(()));
        let worker = {
            let (store, ks, lock) = (store.clone(), ks.clone(), compacting.clone());
            std::thread::Builder::new()
                .name("mvcc-compact".to_string())
                .spawn(move || compact::run(store, ks, lock, rx))
                .map_err(StorageFault::Thread)?
        };
        Ok(Mvcc {
            store,
            ks,
            revs: published::Published::new(revs),
            history_added: AtomicI64::new(history_added),
            compactor: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            gate: RwLock::new(()),
            compacting,
            alarms,
            in_use: Mutex::new(None),
            defragmenting: Mutex::new(()),
        })
    }

    /// A storage snapshot to read from; waits while [`Mvcc::install`] replaces the store.
    fn view(&self) -> Snapshot {
        let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        self.store.snapshot()
    }

    /// A storage snapshot to read from and the revisions it is at.
    fn view_at(&self) -> Result<(Snapshot, Revisions), MvccError> {
        match self.revs.read(|| self.view()) {
            (snap, Some(revs)) => Ok((snap, revs)),
            (snap, None) => {
                let revs = revisions(&snap, &self.ks)?;
                Ok((snap, revs))
            }
        }
    }

    /// Revision of the last write; a fresh store is at revision 1 (as etcd).
    pub fn current_revision(&self) -> i64 {
        self.revs.get().current
    }

    /// Last compacted revision, 0 if never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.revs.get().compact.max(0)
    }

    /// Number of live keys (etcd_debugging_mvcc_keys_total).
    pub fn key_count(&self) -> i64 {
        self.revs.get().live_keys
    }

    /// A range with every option of `RangeRequest`, as etcd's Range applier. The response
    /// header carries only the revision the read was served at.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.pin()?
            .range_chunks(req, usize::MAX, &mut |_| ControlFlow::Continue(()))?
            .ok_or_else(|| MvccError::Storage(StorageFault::Corrupt("range stopped".into())))
    }

    /// etcd's `count_only` serializable range of the current revision: the live keys in
    /// [key, range_end), or `None` if `go_on` (asked every thousand or so keys) said stop.
    pub fn count_while(
        &self,
        key: &[u8],
        range_end: &[u8],
        go_on: &mut dyn FnMut() -> bool,
    ) -> Result<Option<u64>, MvccError> {
        crate::metrics::get().mvcc_range.inc();
        let pinned = self.pin()?;
        read::count_while(&pinned.view(), read::KeyRange::new(key, range_end), go_on)
    }

    /// The store as it is now, to read later (e.g. on another thread) at this revision.
    pub fn pin(&self) -> Result<Pinned, MvccError> {
        let (snap, revs) = self.view_at()?;
        Ok(Pinned {
            ks: self.ks.clone(),
            snap,
            revs,
        })
    }

    /// Applies a txn as one revision (none if it writes nothing) and stores `applied` with
    /// it. Returns the response (top-level header: revision only) and the events of the
    /// revision, each with `prev_kv` set to the key's version before the txn, if any.
    /// An error that answers the request (not `Storage`) leaves the store unchanged except
    /// for the apply marker, which is recorded anyway.
    pub fn apply_txn(
        &self,
        req: &TxnRequest,
        applied: &[u8],
    ) -> Result<(TxnResponse, Vec<Event>), MvccError> {
        self.apply_txn_with(req, applied, &|_| true, |_| {})
    }

    /// [`Mvcc::apply_txn`], refusing with `LeaseNotFound` (and changing nothing) a txn whose
    /// chosen branch puts with a lease for which `lease_exists` is false, as etcd's
    /// `checkRequestPut`; `extra` adds the caller's own writes to the batch of a txn that
    /// was not refused, so they commit atomically with it.
    pub fn apply_txn_with(
        &self,
        req: &TxnRequest,
        applied: &[u8],
        lease_exists: &dyn Fn(i64) -> bool,
        extra: impl FnOnce(&mut WriteBatch),
    ) -> Result<(TxnResponse, Vec<Event>), MvccError> {
        // Apply alone changes revisions: the published ones are the snapshot's.
        let snap = self.view();
        let revs = self.revs.get();
        let mut exec =
            TxnExec::new(&self.ks, &snap, revs.current, revs.compact).with_leases(lease_exists);
        let result = exec.run(req);
        count_ops(&exec.counts);
        let resp = match result {
            Ok(resp) => resp,
            Err(e) if e.is_answer() => {
                self.record_applied(applied)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let mut batch = self.store.batch();
        let events = self.stage_changes(&mut batch, &mut exec);
        extra(&mut batch);
        batch.insert(&self.ks.meta, meta::APPLIED, applied);
        let mut to = revs;
        let mut history_added = None;
        if !events.is_empty() {
            to.current = exec.write_rev();
            to.live_keys += exec.key_delta;
            history_added = Some(self.stage_progress(&mut batch, to, events.len()));
        }
        self.revs.change(|| commit(batch).map(|()| ((), to)))?;
        if let Some(added) = history_added {
            self.history_added.store(added, Ordering::Release);
        }
        Ok((resp, events))
    }

    /// Stages the [`meta::Progress`] record of a write txn that leaves the store at `to`
    /// and added `versions` to `kv_history`; returns the new [`meta::HISTORY_ADDED`] (still
    /// -1 in a store that did not count it from the start).
    fn stage_progress(&self, batch: &mut WriteBatch, to: Revisions, versions: usize) -> i64 {
        let added = self.history_added.load(Ordering::Acquire);
        let history_added = if added >= 0 {
            added + versions as i64
        } else {
            added
        };
        let progress = meta::Progress {
            current: to.current,
            key_count: to.live_keys,
            history_added,
        };
        batch.insert(&self.ks.meta, meta::PROGRESS, progress.encode());
        history_added
    }

    /// Adds a txn's changes to `batch` and returns them as watch events.
    fn stage_changes(&self, batch: &mut WriteBatch, exec: &mut TxnExec<'_>) -> Vec<Event> {
        if exec.changes.is_empty() {
            return Vec::new();
        }
        let main = exec.write_rev();
        lease_index::stage(batch, &self.ks.lease, &exec.changes, exec.overlay());
        let changes = std::mem::take(&mut exec.changes);
        // The last change of each key is its live version (or its deletion) after the txn.
        let last: HashMap<&[u8], usize> = changes
            .iter()
            .enumerate()
            .map(|(sub, c)| (c.kv.key.as_slice(), sub))
            .collect();
        // Each key's record written so far in this txn, and whether it is a tombstone.
        let mut written: HashMap<&[u8], (Rev, bool)> = HashMap::new();
        for (sub, change) in changes.iter().enumerate() {
            let key = change.kv.key.as_slice();
            let rev = Rev::new(main, i64::try_from(sub).unwrap_or(i64::MAX));
            let earlier = written.insert(key, (rev, change.deleted));
            let is_last = last.get(key) == Some(&sub);
            self.stage_change(batch, change, rev, earlier, is_last);
        }
        let mut events = Vec::with_capacity(changes.len());
        for change in changes {
            let kind = if change.deleted {
                EventType::Delete
            } else {
                EventType::Put
            };
            events.push(Event {
                r#type: kind as i32,
                kv: Some(change.kv),
                prev_kv: change.prev,
            });
        }
        events
    }

    /// Stages one change at `rev`: its `kv_history` record and `kv_revs` entry, and its
    /// key's `kv_latest` record if it is the key's last change in the txn (`is_last`).
    /// `earlier` is the record of the same key this txn wrote before it, if any.
    fn stage_change(
        &self,
        batch: &mut WriteBatch,
        change: &txn::Change,
        rev: Rev,
        earlier: Option<(Rev, bool)>,
        is_last: bool,
    ) {
        let key = change.kv.key.as_slice();
        // A tombstone removes itself in compaction: what follows it names nothing.
        let supersedes = match (earlier, &change.prev, change.prev_at) {
            (Some((_, true)), _, _) | (None, None, _) => Supersedes::Nothing,
            (Some((earlier, false)), _, _) => Supersedes::At(earlier),
            (None, Some(prev), Some(at)) => {
                // The live version goes into history: its value moves there.
                let record = codec::encode_record(Some(prev));
                batch.insert(&self.ks.history, codec::history_key(key, at), record);
                Supersedes::At(at)
            }
            (None, Some(_), None) => Supersedes::Unknown,
        };
        let record = match (change.deleted, is_last) {
            (true, _) => codec::encode_record(None),
            (false, true) => codec::current_record().to_vec(),
            (false, false) => codec::encode_record(Some(&change.kv)),
        };
        batch.insert(&self.ks.history, codec::history_key(key, rev), record);
        let entry = codec::encode_rev_entry(key, change.deleted, supersedes);
        batch.insert(&self.ks.revs, rev.to_bytes(), entry);
        match (change.deleted, is_last) {
            (false, true) => {
                let latest = codec::encode_latest(&change.kv, rev.sub);
                batch.insert(&self.ks.latest, key, latest);
            }
            (true, true) => batch.remove(&self.ks.latest, key),
            (_, false) => {}
        }
    }

    /// Evaluates a read-only txn (see [`is_read_only`]) against the current state without
    /// writing. Writes in it, if the caller sends any, are evaluated and discarded.
    pub fn txn_read_only(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let (snap, revs) = self.view_at()?;
        let mut exec = TxnExec::new(&self.ks, &snap, revs.current, revs.compact);
        let result = exec.run(req);
        count_ops(&exec.counts);
        result
    }

    /// Compacts at `rev`: reads below it fail from now on. The physical removal of old
    /// versions runs in the background; the returned handle resolves when it is done.
    /// As etcd, compacting at or below the compact revision fails with `Compacted` and
    /// above the current one with `FutureRev` (a store never compacted accepts 0). The
    /// apply marker is recorded whatever the outcome.
    pub fn compact(&self, rev: i64, applied: &[u8]) -> Result<CompactionDone, MvccError> {
        let revs = self.revs.get();
        let refusal = if rev <= revs.compact {
            Some(MvccError::Compacted)
        } else if rev > revs.current {
            Some(MvccError::FutureRev)
        } else {
            None
        };
        if let Some(e) = refusal {
            self.record_applied(applied)?;
            return Err(e);
        }
        let mut batch = self.store.batch();
        batch.insert(&self.ks.meta, meta::COMPACT_REV, codec::encode_i64(rev));
        batch.insert(&self.ks.meta, meta::APPLIED, applied);
        let to = Revisions {
            compact: rev,
            ..revs
        };
        self.revs.change(|| commit(batch).map(|()| ((), to)))?;
        let (done, waiting) = oneshot::channel();
        if let Ok(guard) = self.compactor.lock() {
            if let Some(tx) = guard.as_ref() {
                // If the worker has stopped, `done` is dropped and the waiter sees it.
                let _ = tx.send(compact::Waiter { rev, done });
            }
        }
        Ok(waiting)
    }

    /// Stores only the apply marker, for entries that change no MVCC state.
    pub fn record_applied(&self, applied: &[u8]) -> Result<(), MvccError> {
        self.record_applied_with(applied, |_| {})
    }

    /// Stores the apply marker with a new configuration record (see [`meta::APPLIED_CONFIG`]).
    pub fn record_applied_config(&self, applied: &[u8], config: &[u8]) -> Result<(), MvccError> {
        self.record_applied_with(applied, |batch| {
            batch.insert(&self.ks.meta, meta::APPLIED_CONFIG, config)
        })
    }

    /// Stores the apply marker together with the caller's own writes, for entries that
    /// change state outside MVCC (e.g. granting a lease).
    pub fn record_applied_with(
        &self,
        applied: &[u8],
        extra: impl FnOnce(&mut WriteBatch),
    ) -> Result<(), MvccError> {
        let mut batch = self.store.batch();
        extra(&mut batch);
        batch.insert(&self.ks.meta, meta::APPLIED, applied);
        commit(batch)
    }

    /// The live keys attached to `lease`, in key order.
    pub fn lease_keys(&self, lease: i64) -> Result<Vec<Vec<u8>>, MvccError> {
        lease_index::keys(&self.view(), &self.ks.lease, lease)
    }

    /// etcd's `AlarmStore.Get`: the raised alarms of type `alarm` (every one for NONE).
    pub fn alarms(&self, alarm: i32) -> Vec<AlarmMember> {
        self.alarms.get(alarm)
    }

    /// Whether some member has raised `alarm`.
    pub fn alarm_raised(&self, alarm: AlarmType) -> bool {
        self.alarms.is_raised(alarm)
    }

    /// Applies an Alarm request (etcd's `applierV3backend.Alarm`): the changed list is
    /// stored with the apply marker.
    pub fn apply_alarm(
        &self,
        req: &AlarmRequest,
        applied: &[u8],
    ) -> Result<AlarmChange, MvccError> {
        let change = self.alarms.plan(req);
        self.record_applied_with(applied, |batch| {
            alarm::AlarmList::stage(&self.ks.meta, batch, &change)
        })?;
        Ok(self.alarms.commit(change))
    }

    /// An estimate of the bytes the state would occupy after a defragmentation: etcd's
    /// `db_size_in_use`. Per keyspace, the bytes in its tables and memtables scaled by the
    /// share of its entries that are live. Live entries are the live key count for
    /// `kv_latest` and the names of `mvcc_meta` ([`meta::ALL`]; both are overwritten in place);
    /// the versions kept (added less removed, see [`meta::HISTORY_ADDED`]) for `kv_history`
    /// and `kv_revs`; and for the others, whose keys are written once and removed once,
    /// entries less twice the tombstones in tables (each hides one entry). Made from the
    /// engine's statistics, at most once per [`IN_USE_TTL`].
    pub fn size_in_use(&self) -> Result<u64, MvccError> {
        let mut cached = self.in_use.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, bytes)) = *cached {
            if at.elapsed() < IN_USE_TTL {
                return Ok(bytes);
            }
        }
        let bytes = self.estimate_in_use()?;
        *cached = Some((Instant::now(), bytes));
        Ok(bytes)
    }

    fn estimate_in_use(&self) -> Result<u64, MvccError> {
        let meta_names = meta::ALL.len() as u64;
        let latest = u64::try_from(self.key_count()).unwrap_or(0);
        let added = self.history_added.load(Ordering::Acquire);
        let versions = if added >= 0 {
            let removed = meta::read_i64(&self.ks.meta, meta::HISTORY_REMOVED)?.unwrap_or(0);
            Some(u64::try_from(added - removed).unwrap_or(0))
        } else {
            None
        };
        // `tiny`: entries of about no bytes, left out of the share on both sides.
        let live = |ks: &Keyspace, exact: Option<u64>, tiny: u64| {
            let u = ks.usage();
            let all = u.entries.saturating_sub(tiny);
            if all == 0 {
                return 0;
            }
            let entries = exact.unwrap_or(u.entries.saturating_sub(2 * u.tombstones));
            let share = (entries.saturating_sub(tiny) as f64 / all as f64).min(1.0);
            ((u.disk_bytes + u.memtable_bytes) as f64 * share) as u64
        };
        let k = &self.ks;
        // Each live key's kv_history entry is a one-byte marker (its value is counted in
        // kv_latest): the bytes are in the superseded versions.
        Ok(live(&k.latest, Some(latest), 0)
            + live(&k.meta, Some(meta_names), 0)
            + live(&k.history, versions, latest)
            + live(&k.revs, versions, 0)
            + [&k.lease, &k.leases, &k.auth]
                .into_iter()
                .map(|ks| live(ks, None, 0))
                .sum::<u64>())
    }

    /// Rewrites every keyspace of the state (etcd's defragmentation): the versions a
    /// compaction removed and the tombstones go, and the files shrink. Reads and writes go
    /// on meanwhile; a second call waits for the first.
    pub fn defragment(&self) -> Result<(), MvccError> {
        let _one = self
            .defragmenting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let k = &self.ks;
        for ks in [
            &k.latest, &k.history, &k.revs, &k.meta, &k.lease, &k.leases, &k.auth,
        ] {
            ks.major_compact()?;
        }
        *self.in_use.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }

    /// The last stored apply marker.
    pub fn applied_marker(&self) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(self.ks.meta.get(meta::APPLIED)?.map(|v| v.to_vec()))
    }

    /// The last stored configuration record.
    pub fn applied_config(&self) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(self.ks.meta.get(meta::APPLIED_CONFIG)?.map(|v| v.to_vec()))
    }
}

/// A consistent state of the store, pinned by [`Mvcc::pin`]: it reads as of that moment
/// whatever is applied later.
pub struct Pinned {
    ks: Keyspaces,
    snap: Snapshot,
    revs: Revisions,
}

impl Pinned {
    /// [`Mvcc::range`] handing the kvs to `emit` in chunks of about `chunk_bytes`, all read
    /// from this snapshot; returns the final chunk, which alone carries the header's
    /// revision, `more` and `count`, or `None` if `emit` broke off.
    pub fn range_chunks(
        &self,
        req: &RangeRequest,
        chunk_bytes: usize,
        emit: &mut dyn FnMut(Vec<KeyValue>) -> ControlFlow<()>,
    ) -> Result<Option<RangeResponse>, MvccError> {
        crate::metrics::get().mvcc_range.inc();
        read::range_chunks(&self.view(), req, chunk_bytes, emit)
    }

    fn view(&self) -> View<'_> {
        View {
            ks: &self.ks,
            snap: &self.snap,
            overlay: None,
            snap_rev: self.revs.current,
            rev: self.revs.current,
            compact_rev: self.revs.compact,
            live_keys: Some(self.revs.live_keys),
        }
    }
}

impl Drop for Mvcc {
    /// Stops the compaction thread (it resumes from its cursor on the next open) and waits
    /// for it, so the store is released when the `Mvcc` is gone.
    fn drop(&mut self) {
        if let Ok(mut tx) = self.compactor.lock() {
            tx.take();
        }
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }
}

/// The revisions and live keys recorded in `snap`.
fn revisions(snap: &Snapshot, ks: &Keyspaces) -> Result<Revisions, MvccError> {
    Ok(recorded(snap, ks)?.0)
}

/// The revisions and live keys recorded in `snap`, with the progress record they come from.
fn recorded(snap: &Snapshot, ks: &Keyspaces) -> Result<(Revisions, meta::Progress), MvccError> {
    let progress = progress(snap, ks)?;
    let revs = Revisions {
        current: progress.current,
        compact: meta::snapshot_i64(snap, &ks.meta, meta::COMPACT_REV)?.unwrap_or(-1),
        live_keys: progress.key_count,
    };
    Ok((revs, progress))
}

/// Commits without fsync and records etcd's backend commit latency.
fn commit(batch: WriteBatch) -> Result<(), MvccError> {
    let start = Instant::now();
    batch.commit()?;
    crate::metrics::get()
        .backend_commit_duration
        .observe(start.elapsed().as_secs_f64());
    Ok(())
}

/// etcd's per-txn counters (metrics_txn.go): a txn counts when it ran more than one op.
fn count_ops(counts: &txn::OpCounts) {
    let m = crate::metrics::get();
    m.mvcc_range.inc_by(counts.ranges);
    m.mvcc_put.inc_by(counts.puts);
    m.mvcc_delete.inc_by(counts.deletes);
    if counts.ranges + counts.puts + counts.deletes > 1 {
        m.mvcc_txn.inc();
    }
}

#[cfg(test)]
mod tests;

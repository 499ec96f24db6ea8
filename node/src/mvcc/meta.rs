//! The `mvcc_meta` keyspace: named values, integers as 8-byte big-endian.

use super::{codec, MvccError};
use crate::storage::{Keyspace, Snapshot};

/// What every write txn changes, as one [`Progress`] record: one memtable insert per write
/// batch instead of three. Stores without it keep the three under names of their own
/// ([`CURRENT_REV`], [`KEY_COUNT`], [`HISTORY_ADDED`]), which are read instead.
pub(super) const PROGRESS: &str = "progress";
/// Revision of the last write txn (older stores); absent on a fresh store, at revision 1.
pub(super) const CURRENT_REV: &str = "current_rev";
/// Last compacted revision; absent if never compacted.
pub(super) const COMPACT_REV: &str = "compact_rev";
/// Compact revision whose physical removal is complete.
pub(super) const COMPACT_DONE: &str = "compact_done";
/// Next `kv_revs` entry (16-byte revision) the physical compaction visits.
pub(super) const COMPACT_CURSOR: &str = "compact_cursor";
/// Number of live keys (older stores).
pub(super) const KEY_COUNT: &str = "key_count";
/// Versions ever written to `kv_history` (by apply) and removed from it (by the physical
/// compaction): their difference is how many it keeps, one `kv_revs` entry each, for
/// [`super::Mvcc::size_in_use`]. Written by one thread each; the first in [`PROGRESS`] now.
/// Absent in stores made before they were counted, which fall back to the engine's
/// tombstone count.
pub(super) const HISTORY_ADDED: &str = "history_added";
pub(super) const HISTORY_REMOVED: &str = "history_removed";
/// etcd's alarm list (see `alarm.rs`).
pub(super) const ALARMS: &str = "alarms";
/// The caller's opaque apply marker (the raft log id of the last applied entry), written
/// with every applied entry.
pub(super) const APPLIED: &str = "applied";
/// The caller's opaque record of what its marker leaves out because it seldom changes (the
/// raft membership), written with the marker of the entries that change it.
pub(super) const APPLIED_CONFIG: &str = "applied_config";

/// Every name: the upper bound of those present that [`super::Mvcc::size_in_use`] takes as
/// their count. Counting the present ones walks every version of them the memtable holds
/// (each write batch adds two): tens of milliseconds under load, on the write path.
pub(super) const ALL: [&str; 11] = [
    PROGRESS,
    CURRENT_REV,
    COMPACT_REV,
    COMPACT_DONE,
    COMPACT_CURSOR,
    KEY_COUNT,
    HISTORY_ADDED,
    HISTORY_REMOVED,
    ALARMS,
    APPLIED,
    APPLIED_CONFIG,
];

/// The [`PROGRESS`] record: three big-endian i64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Progress {
    /// The revision of the last write txn.
    pub current: i64,
    /// Live keys.
    pub key_count: i64,
    /// [`HISTORY_ADDED`], -1 in a store that did not count it from the start.
    pub history_added: i64,
}

impl Progress {
    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0; 24];
        let fields = [self.current, self.key_count, self.history_added];
        for (slot, n) in out.chunks_exact_mut(8).zip(fields) {
            slot.copy_from_slice(&n.to_be_bytes());
        }
        out
    }

    /// The record in `snap`, if it has one.
    pub fn read(snap: &Snapshot, meta: &Keyspace) -> Result<Option<Progress>, MvccError> {
        let Some(raw) = snap.get(meta, PROGRESS)? else {
            return Ok(None);
        };
        if raw.len() != 24 {
            return Err(codec::corrupt(format!(
                "progress record of {} bytes",
                raw.len()
            )));
        }
        let field = |i: usize| codec::be_i64(&raw[i * 8..(i + 1) * 8]);
        Ok(Some(Progress {
            current: field(0)?,
            key_count: field(1)?,
            history_added: field(2)?,
        }))
    }
}

/// Whether `name` is one of the caller's apply records, which belong to each member rather
/// than to the state it replicates.
pub(super) fn is_apply_record(name: &[u8]) -> bool {
    name == APPLIED.as_bytes() || name == APPLIED_CONFIG.as_bytes()
}

/// Reads an integer from the latest committed state.
pub(super) fn read_i64(meta: &Keyspace, name: &str) -> Result<Option<i64>, MvccError> {
    meta.get(name)?.map(|raw| codec::be_i64(&raw)).transpose()
}

/// Reads an integer from a snapshot.
pub(super) fn snapshot_i64(
    snap: &Snapshot,
    meta: &Keyspace,
    name: &str,
) -> Result<Option<i64>, MvccError> {
    snap.get(meta, name)?
        .map(|raw| codec::be_i64(&raw))
        .transpose()
}

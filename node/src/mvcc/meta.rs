//! The `mvcc_meta` keyspace: named values, integers as 8-byte big-endian.

use super::{codec, MvccError};
use crate::storage::{Keyspace, Snapshot};

/// Revision of the last write txn; absent on a fresh store, which is at revision 1.
pub(super) const CURRENT_REV: &str = "current_rev";
/// Last compacted revision; absent if never compacted.
pub(super) const COMPACT_REV: &str = "compact_rev";
/// Compact revision whose physical removal is complete.
pub(super) const COMPACT_DONE: &str = "compact_done";
/// Next `kv_revs` entry (16-byte revision) the physical compaction visits.
pub(super) const COMPACT_CURSOR: &str = "compact_cursor";
/// Number of live keys.
pub(super) const KEY_COUNT: &str = "key_count";
/// Versions ever written to `kv_history` (by apply) and removed from it (by the physical
/// compaction): their difference is how many it keeps, one `kv_revs` entry each, for
/// [`super::Mvcc::size_in_use`]. Written by one thread each. Absent in stores made before
/// they were counted, which fall back to the engine's tombstone count.
pub(super) const HISTORY_ADDED: &str = "history_added";
pub(super) const HISTORY_REMOVED: &str = "history_removed";
/// etcd's alarm list (see `alarm.rs`).
pub(super) const ALARMS: &str = "alarms";
/// The caller's opaque apply marker (the raft log id of the last applied entry).
pub(super) const APPLIED: &str = "applied";

/// Every name: the upper bound of those present that [`super::Mvcc::size_in_use`] takes as
/// their count. Counting the present ones walks every version of them the memtable holds
/// (each write batch adds four): tens of milliseconds under load, on the write path.
pub(super) const ALL: [&str; 9] = [
    CURRENT_REV,
    COMPACT_REV,
    COMPACT_DONE,
    COMPACT_CURSOR,
    KEY_COUNT,
    HISTORY_ADDED,
    HISTORY_REMOVED,
    ALARMS,
    APPLIED,
];

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

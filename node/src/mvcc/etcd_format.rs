//! etcd 3.5's backend layout (`server/mvcc/buckets/bucket.go`), to and from cairn's
//! keyspaces: what `Maintenance.Snapshot` streams, what `cairn snapshot restore` loads
//! (from cairn or from etcd) and what `cairn snapshot status` reports.
//!
//! | bucket | key | value | cairn source |
//! |---|---|---|---|
//! | `key` | main(8, BE) `_` sub(8, BE), then `t` for a tombstone | `mvccpb.KeyValue` (a tombstone's holds only the key) | `kv_revs` in revision order, each record from `kv_history` |
//! | `meta` | `finishedCompactRev`, `scheduledCompactRev` | the revision as a key of the `key` bucket (no `t`) | `compact_done`, `compact_rev` |
//! | `lease` | lease id (8, BE) | `leasepb.Lease` | `leases` |
//! | `auth` | `authEnabled`, `authRevision` | 1 byte; u64 BE | `auth` |
//! | `authUsers`, `authRoles` | name | `authpb.User`, `authpb.Role` | `auth`'s `user/`, `role/` |
//! | `alarm` | `etcdserverpb.AlarmMember` | empty | `mvcc_meta`'s alarm list |
//! | `cluster`, `members`, `members_removed` | | | written empty |
//!
//! `key` holds what etcd's holds at the same state: every revision not compacted away,
//! tombstones included (cairn's physical compaction keeps exactly etcd's `keep` set). Left
//! out, as the README's compatibility table says: `consistent_index` and `term` (they name
//! an entry of the source's raft log; a restore, etcd's or cairn's, writes its own), the
//! members (a restore replaces them with `--initial-cluster`).
//!
//! Loading reads the same buckets back; other buckets are ignored, the alarms among them:
//! they name members of the source cluster. `kv_latest`, the
//! lease index and the key count are derived afterwards from the loaded history.

use std::io::Write;

use prost::Message;

use super::codec::{self, Rev, Supersedes};
use super::snapshot::{Restored, SnapshotError};
use super::{meta, read, Keyspaces};
use crate::bbolt::{self, Plan, Reader};
use crate::proto::mvccpb::KeyValue;
use crate::storage::{Snapshot, Store, WriteBatch};

const KEY: &[u8] = b"key";
const META: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const AUTH: &[u8] = b"auth";
const AUTH_USERS: &[u8] = b"authUsers";
const AUTH_ROLES: &[u8] = b"authRoles";
const ALARM: &[u8] = b"alarm";
const EMPTY_BUCKETS: [&[u8]; 3] = [b"cluster", b"members", b"members_removed"];
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
/// cairn's `auth` keyspace (see `auth/mod.rs`).
const CAIRN_AUTH_ENABLED: &[u8] = b"enabled";
const CAIRN_AUTH_REVISION: &[u8] = b"revision";
const CAIRN_USER: &[u8] = b"user/";
const CAIRN_ROLE: &[u8] = b"role/";
const TOMBSTONE_MARK: u8 = b't';
/// A load commits a batch once it holds this many bytes, to bound its memory.
const LOAD_BATCH_BYTES: usize = 16 << 20;

/// etcd's `leasepb.Lease` (`server/lease/leasepb/lease.proto`).
#[derive(Clone, PartialEq, Message)]
struct Lease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// A key of etcd's `key` bucket.
fn rev_key(rev: Rev, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&rev.main.to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&rev.sub.to_be_bytes());
    if tombstone {
        out.push(TOMBSTONE_MARK);
    }
    out
}

/// Parses a key of the `key` bucket (or a compact revision of `meta`).
fn parse_rev_key(raw: &[u8]) -> Result<(Rev, bool), SnapshotError> {
    let tombstone = match raw.len() {
        17 => false,
        18 if raw[17] == TOMBSTONE_MARK => true,
        _ => return Err(malformed(format!("revision key {raw:?}"))),
    };
    if raw[8] != b'_' {
        return Err(malformed(format!("revision key {raw:?}")));
    }
    let main = codec::be_i64(&raw[..8])?;
    let sub = codec::be_i64(&raw[9..17])?;
    Ok((Rev::new(main, sub), tombstone))
}

fn malformed(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed(what.into())
}

/// Writes the state in `snap` as a bbolt file to `out`; `plan` as in [`bbolt::Writer::new`].
pub(super) fn write<W: Write>(
    snap: &Snapshot,
    ks: &Keyspaces,
    out: W,
    plan: Option<Plan>,
) -> Result<(Plan, W), SnapshotError> {
    let mut w = bbolt::Writer::new(out, plan)?;
    for name in EMPTY_BUCKETS {
        w.bucket(name).finish()?;
    }
    write_alarms(snap, ks, &mut w)?;
    write_auth(snap, ks, &mut w)?;
    write_keys(snap, ks, &mut w)?;
    write_leases(snap, ks, &mut w)?;
    let mut b = w.bucket(META);
    for (name, cairn) in [
        (FINISHED_COMPACT, meta::COMPACT_DONE),
        (SCHEDULED_COMPACT, meta::COMPACT_REV),
    ] {
        if let Some(rev) = meta::snapshot_i64(snap, &ks.meta, cairn)? {
            b.put(name, &rev_key(Rev::new(rev, 0), false))?;
        }
    }
    b.finish()?;
    Ok(w.finish()?)
}

/// etcd's alarm store keeps each raised alarm as its marshalled `AlarmMember`, with an
/// empty value (`v3alarm/alarms.go`).
fn write_alarms<W: Write>(
    snap: &Snapshot,
    ks: &Keyspaces,
    w: &mut bbolt::Writer<W>,
) -> Result<(), SnapshotError> {
    let mut keys: Vec<Vec<u8>> = super::alarm::in_snapshot(snap, &ks.meta)?
        .iter()
        .map(Message::encode_to_vec)
        .collect();
    keys.sort();
    let mut b = w.bucket(ALARM);
    for key in keys {
        b.put(&key, &[])?;
    }
    Ok(b.finish()?)
}

fn write_keys<W: Write>(
    snap: &Snapshot,
    ks: &Keyspaces,
    w: &mut bbolt::Writer<W>,
) -> Result<(), SnapshotError> {
    let mut b = w.bucket(KEY);
    let mut value = Vec::new();
    for item in snap.iter(&ks.revs) {
        let (raw_rev, entry) = item?;
        let rev = Rev::from_bytes(&raw_rev)?;
        let codec::RevEntry { key, tombstone, .. } = codec::decode_rev_entry(&entry)?;
        let kv = if tombstone {
            KeyValue {
                key: key.to_vec(),
                ..Default::default()
            }
        } else {
            let record = snap
                .get(&ks.history, codec::history_key(key, rev))?
                .ok_or_else(|| malformed(format!("no history record for revision {rev:?}")))?;
            read::history_version(snap, ks, key, rev, &record)?
                .ok_or_else(|| malformed(format!("revision {rev:?} is a put and a tombstone")))?
        };
        value.clear();
        kv.encode(&mut value)
            .map_err(|e| malformed(e.to_string()))?;
        b.put(&rev_key(rev, tombstone), &value)?;
    }
    Ok(b.finish()?)
}

fn write_leases<W: Write>(
    snap: &Snapshot,
    ks: &Keyspaces,
    w: &mut bbolt::Writer<W>,
) -> Result<(), SnapshotError> {
    let mut b = w.bucket(LEASE);
    for item in snap.iter(&ks.leases) {
        let (id, raw) = item?;
        let lease = Lease {
            id: codec::be_i64(&id)?,
            ttl: codec::be_i64(raw.get(..8).unwrap_or_default())?,
            remaining_ttl: raw.get(8..16).map(codec::be_i64).transpose()?.unwrap_or(0),
        };
        b.put(&id, &lease.encode_to_vec())?;
    }
    Ok(b.finish()?)
}

fn write_auth<W: Write>(
    snap: &Snapshot,
    ks: &Keyspaces,
    w: &mut bbolt::Writer<W>,
) -> Result<(), SnapshotError> {
    let mut b = w.bucket(AUTH);
    for (etcd, cairn) in [
        (AUTH_ENABLED, CAIRN_AUTH_ENABLED),
        (AUTH_REVISION, CAIRN_AUTH_REVISION),
    ] {
        if let Some(v) = snap.get(&ks.auth, cairn)? {
            b.put(etcd, &v)?;
        }
    }
    b.finish()?;
    for (bucket, prefix) in [(AUTH_ROLES, CAIRN_ROLE), (AUTH_USERS, CAIRN_USER)] {
        let mut b = w.bucket(bucket);
        for item in snap.prefix(&ks.auth, prefix) {
            let (k, v) = item?;
            b.put(&k[prefix.len()..], &v)?;
        }
        b.finish()?;
    }
    Ok(())
}

/// What `etcdutl snapshot status` reports of a bbolt file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Reads every bucket of `reader` as etcdutl's `Status` does: a CRC-32C over each bucket's
/// name and then its keys and values, the main revision of the last `key` entry, the
/// number of entries of every bucket.
pub fn status(reader: &Reader) -> Result<Status, SnapshotError> {
    let mut crc = Crc32c::default();
    let mut status = Status {
        hash: 0,
        revision: 0,
        total_key: 0,
        total_size: reader.size(),
    };
    let mut last_key = Vec::new();
    reader.for_each(&mut |bucket, entry| {
        let Some((k, v)) = entry else {
            crc.update(bucket);
            return Ok(());
        };
        crc.update(k);
        crc.update(v);
        if bucket == KEY {
            last_key = k.to_vec();
        }
        status.total_key += 1;
        Ok(())
    })?;
    if !last_key.is_empty() {
        status.revision = parse_rev_key(&last_key)?.0.main;
    }
    status.hash = crc.finish();
    Ok(status)
}

/// CRC-32C (Castagnoli), as Go's `crc32.MakeTable(crc32.Castagnoli)`.
struct Crc32c {
    table: [u32; 256],
    crc: u32,
}

impl Default for Crc32c {
    fn default() -> Crc32c {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        Crc32c { table, crc: !0 }
    }
}

impl Crc32c {
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.crc = self.table[((self.crc ^ u32::from(b)) & 0xff) as usize] ^ (self.crc >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.crc
    }
}

/// Loads an etcd-layout bbolt file into the (empty) keyspaces: the history and revisions
/// from `key`, then the live keys, the lease index and the counters derived from them.
pub(super) fn load(
    reader: &Reader,
    store: &Store,
    ks: &Keyspaces,
) -> Result<Restored, SnapshotError> {
    let mut loader = Loader {
        store,
        ks,
        batch: store.batch(),
        batch_bytes: 0,
        current: 1,
        finished: None,
        scheduled: None,
        records: 0,
    };
    reader.for_each(&mut |bucket, entry| match entry {
        Some((k, v)) => loader
            .entry(bucket, k, v)
            .map_err(|e| bbolt::BboltError::Damaged(e.to_string())),
        None => Ok(()),
    })?;
    let compact = loader.scheduled.max(loader.finished).unwrap_or(-1);
    let current = loader.current.max(compact);
    let mut batch = std::mem::replace(&mut loader.batch, store.batch());
    if let Some(rev) = loader.scheduled.max(loader.finished) {
        batch.insert(&ks.meta, meta::COMPACT_REV, codec::encode_i64(rev));
    }
    if let Some(rev) = loader.finished {
        batch.insert(&ks.meta, meta::COMPACT_DONE, codec::encode_i64(rev));
    }
    batch.commit()?;
    let (key_count, history_added) = derive_live_keys(store, ks)?;
    let progress = meta::Progress {
        current,
        key_count,
        history_added,
    };
    ks.meta.insert(meta::PROGRESS, progress.encode())?;
    Ok(Restored {
        revision: current,
        compact_revision: compact,
        records: loader.records,
    })
}

struct Loader<'a> {
    store: &'a Store,
    ks: &'a Keyspaces,
    batch: WriteBatch,
    batch_bytes: usize,
    current: i64,
    finished: Option<i64>,
    scheduled: Option<i64>,
    records: u64,
}

impl Loader<'_> {
    fn entry(&mut self, bucket: &[u8], k: &[u8], v: &[u8]) -> Result<(), SnapshotError> {
        let ks = self.ks;
        match bucket {
            KEY => {
                let (rev, tombstone) = parse_rev_key(k)?;
                let kv = KeyValue::decode(v).map_err(|e| malformed(e.to_string()))?;
                // `derive_live_keys` writes the `kv_revs` entries and moves each live
                // version to `kv_latest`, once the whole history is in.
                let record = codec::encode_record(if tombstone { None } else { Some(&kv) });
                self.batch
                    .insert(&ks.history, codec::history_key(&kv.key, rev), record);
                self.current = self.current.max(rev.main);
            }
            META if k == FINISHED_COMPACT => self.finished = Some(parse_rev_key(v)?.0.main),
            META if k == SCHEDULED_COMPACT => self.scheduled = Some(parse_rev_key(v)?.0.main),
            LEASE => {
                let lease = Lease::decode(v).map_err(|e| malformed(e.to_string()))?;
                let mut value = lease.ttl.to_be_bytes().to_vec();
                if lease.remaining_ttl > 0 {
                    value.extend_from_slice(&lease.remaining_ttl.to_be_bytes());
                }
                self.batch.insert(&ks.leases, lease.id.to_be_bytes(), value);
            }
            AUTH if k == AUTH_ENABLED => self.batch.insert(&ks.auth, CAIRN_AUTH_ENABLED, v),
            AUTH if k == AUTH_REVISION => self.batch.insert(&ks.auth, CAIRN_AUTH_REVISION, v),
            AUTH_USERS | AUTH_ROLES => {
                let prefix = if bucket == AUTH_USERS {
                    CAIRN_USER
                } else {
                    CAIRN_ROLE
                };
                self.batch.insert(&ks.auth, [prefix, k].concat(), v);
            }
            _ => return Ok(()),
        }
        self.records += 1;
        self.batch_bytes += k.len() + v.len();
        if self.batch_bytes >= LOAD_BATCH_BYTES {
            std::mem::replace(&mut self.batch, self.store.batch()).commit()?;
            self.batch_bytes = 0;
        }
        Ok(())
    }
}

/// Fills `kv_revs`, `kv_latest` and the lease index from the loaded history,
/// one key at a time: each record's `kv_revs` entry names the record before it, and the
/// newest record, unless it is a tombstone, moves to `kv_latest` (a `current` record stays
/// in its place). Returns the live keys and the versions (`kv_revs` entries) written.
fn derive_live_keys(store: &Store, ks: &Keyspaces) -> Result<(i64, i64), SnapshotError> {
    let view = store.snapshot();
    let mut batch = store.batch();
    let mut batch_bytes = 0;
    let mut live = 0i64;
    let mut versions = 0i64;
    let mut walk: Option<Newest> = None;
    for item in view.iter(&ks.history) {
        let (raw, record) = item?;
        let (prefix, rev) = codec::split_history_key(&raw)?;
        let (key, supersedes) = match walk.take() {
            // A tombstone removes itself in compaction: what follows it names nothing.
            Some(w) if w.prefix == prefix && codec::is_tombstone(&w.record) => {
                (w.key, Supersedes::Nothing)
            }
            Some(w) if w.prefix == prefix => (w.key, Supersedes::At(w.at)),
            earlier => {
                if let Some(w) = earlier {
                    batch_bytes += make_live(ks, &mut batch, &w, &mut live)?;
                }
                (codec::unescape(prefix)?, Supersedes::Nothing)
            }
        };
        let entry = codec::encode_rev_entry(&key, codec::is_tombstone(&record), supersedes);
        batch_bytes += entry.len();
        batch.insert(&ks.revs, rev.to_bytes(), entry);
        versions += 1;
        walk = Some(Newest {
            prefix: prefix.to_vec(),
            key,
            at: rev,
            record: record.to_vec(),
        });
        if batch_bytes >= LOAD_BATCH_BYTES {
            std::mem::replace(&mut batch, store.batch()).commit()?;
            batch_bytes = 0;
        }
    }
    if let Some(w) = walk {
        make_live(ks, &mut batch, &w, &mut live)?;
    }
    batch.commit()?;
    Ok((live, versions))
}

/// The newest record seen so far of the key being walked.
struct Newest {
    /// The escaped key, as in `kv_history`.
    prefix: Vec<u8>,
    key: Vec<u8>,
    at: Rev,
    record: Vec<u8>,
}

/// Makes the newest record of a key its live version, unless it is a tombstone; returns
/// the bytes staged.
fn make_live(
    ks: &Keyspaces,
    batch: &mut WriteBatch,
    newest: &Newest,
    live: &mut i64,
) -> Result<usize, SnapshotError> {
    let Newest {
        key, at, record, ..
    } = newest;
    let Some(kv) = codec::decode_record(key, record)? else {
        return Ok(0);
    };
    *live += 1;
    if kv.lease != 0 {
        let mut index = kv.lease.to_be_bytes().to_vec();
        index.extend_from_slice(key);
        batch.insert(&ks.lease, index, b"");
    }
    let latest = codec::encode_latest(&kv, at.sub);
    let len = key.len() + latest.len();
    batch.insert(
        &ks.history,
        codec::history_key(key, *at),
        codec::current_record(),
    );
    batch.insert(&ks.latest, key.as_slice(), latest);
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut crc = Crc32c::default();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xE306_9283);
    }

    #[test]
    fn revision_keys_round_trip() {
        let k = rev_key(Rev::new(5, 2), true);
        assert_eq!(k.len(), 18);
        assert_eq!(parse_rev_key(&k).expect("parse"), (Rev::new(5, 2), true));
        assert!(parse_rev_key(b"short").is_err());
    }
}

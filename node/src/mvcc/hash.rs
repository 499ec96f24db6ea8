//! The key-value hash behind etcd's `HashKV` and `Hash` RPCs, used to detect replicas whose
//! data diverged (`etcdctl endpoint hashkv`, `--experimental-corrupt-check-time`).
//!
//! etcd's `HashByRev` (mvcc/kvstore.go, v3.5) feeds a CRC-32C over every backend revision
//! entry with a revision at or below the hashed revision `rev`, except that entries at or
//! below the compact revision count only if compaction at `rev` would keep them (the newest
//! version of a key at or below `rev`, unless it is a tombstone). That makes the hash
//! independent of how far the physical compaction has progressed. Cairn computes the same
//! set of versions from `kv_history`, read from one storage snapshot, and hashes their full
//! records (a live version's as if it were stored in `kv_history`), which every member
//! writes identically for the same history, so the hash is stable across restarts and equal
//! on members that applied the same log. The value differs from
//! etcd's (its backend encodes differently), which is fine: it is only compared between
//! members of the same cluster.
//!
//! Versions are visited in `kv_history` order (by key, then revision) rather than etcd's
//! revision order: one sequential scan then decides, from the next version of the same key,
//! whether a compacted-window version is kept, with no point lookups.
//!
//! One etcd quirk is not reproduced: when no key is live at `rev`, etcd hashes every entry
//! below the compact revision still on disk, so its hash then depends on compaction
//! progress.

use super::codec;
use super::read;
use super::{Keyspaces, Mvcc, MvccError};
use crate::storage::{Bytes, Snapshot};

/// Written first, as etcd writes the name of its `key` bucket, so the hash of an empty
/// store is not the CRC of nothing.
const DOMAIN: &[u8] = b"kv_history";

/// The result of a [`Mvcc::hash_kv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32C (Castagnoli) of the versions visible at `hash_revision`.
    pub hash: u32,
    /// The revision hashed.
    pub hash_revision: i64,
    /// The store's current revision when the hash was taken.
    pub current_revision: i64,
    /// The compact revision; -1 if the store was never compacted (as etcd).
    pub compact_revision: i64,
}

impl Mvcc {
    /// etcd's `HashByRev`: the hash of the key-value history up to `rev` (0 = current).
    /// Fails with `Compacted` if `rev` is at or below the compact revision and with
    /// `FutureRev` if it is above the current one. Reads the whole history: call it off
    /// the async runtime.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash, MvccError> {
        let (snap, revs) = self.view_at()?;
        if rev > 0 && rev <= revs.compact {
            return Err(MvccError::Compacted);
        }
        if rev > revs.current {
            return Err(MvccError::FutureRev);
        }
        let at = if rev == 0 { revs.current } else { rev };
        let entries = snap
            .iter(&self.ks.history)
            .map(|item| -> Result<_, MvccError> {
                let (raw, record) = item?;
                let record = canonical(&snap, &self.ks, &raw, record)?;
                Ok((raw, record))
            });
        let hash = hash_history(entries, at, revs.compact)?;
        Ok(KvHash {
            hash,
            hash_revision: at,
            current_revision: revs.current,
            compact_revision: revs.compact,
        })
    }
}

/// A `kv_history` record as hashed: a `current` record is hashed as the full record of the
/// live version it stands for, so the hash does not depend on which version is live, nor on
/// whether the store was written before the value was stored once.
enum Canonical {
    Stored(Bytes),
    Resolved(Vec<u8>),
}

impl AsRef<[u8]> for Canonical {
    fn as_ref(&self) -> &[u8] {
        match self {
            Canonical::Stored(b) => b,
            Canonical::Resolved(v) => v,
        }
    }
}

fn canonical(
    snap: &Snapshot,
    ks: &Keyspaces,
    raw_key: &[u8],
    record: Bytes,
) -> Result<Canonical, MvccError> {
    if !codec::is_current(&record) {
        return Ok(Canonical::Stored(record));
    }
    let (prefix, rev) = codec::split_history_key(raw_key)?;
    let key = codec::unescape(prefix)?;
    let kv = read::history_version(snap, ks, &key, rev, &record)?;
    Ok(Canonical::Resolved(codec::encode_record(kv.as_ref())))
}

/// Hashes the `kv_history` entries (`(raw key, raw record)` in key order) that etcd's
/// `HashByRev(at)` covers when the compact revision is `compact`.
fn hash_history<K, V>(
    entries: impl Iterator<Item = Result<(K, V), MvccError>>,
    at: i64,
    compact: i64,
) -> Result<u32, MvccError>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut crc = Crc32c::new();
    crc.update(DOMAIN);
    let mut entries = entries.peekable();
    while let Some(entry) = entries.next() {
        let (raw_key, record) = entry?;
        let (raw_key, record) = (raw_key.as_ref(), record.as_ref());
        let (prefix, rev) = codec::split_history_key(raw_key)?;
        if rev.main > at {
            continue;
        }
        let next_key = match entries.peek() {
            Some(Ok((next, _))) => Some(next.as_ref()),
            // The end of history, or an error met on the next step.
            _ => None,
        };
        if rev.main <= compact && !kept(prefix, record, next_key, at)? {
            continue;
        }
        for part in [raw_key, record] {
            crc.update(&len_prefix(part));
            crc.update(part);
        }
    }
    Ok(crc.finish())
}

/// Whether a version in the compacted window survives compaction at `at`: it is a put and
/// the next version in history (`next_key`) belongs to another key or is above `at`.
fn kept(prefix: &[u8], record: &[u8], next_key: Option<&[u8]>, at: i64) -> Result<bool, MvccError> {
    if codec::is_tombstone(record) {
        return Ok(false);
    }
    let Some(next_key) = next_key else {
        return Ok(true);
    };
    let (next_prefix, next_rev) = codec::split_history_key(next_key)?;
    Ok(next_prefix != prefix || next_rev.main > at)
}

/// A length as 4 bytes big-endian, so that concatenated fields cannot be confused.
fn len_prefix(part: &[u8]) -> [u8; 4] {
    u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes()
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as Go's
/// `crc32.MakeTable(crc32.Castagnoli)` that etcd uses.
struct Crc32c(u32);

const CASTAGNOLI: u32 = 0x82F6_3B78;

/// The byte-at-a-time lookup table, built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CASTAGNOLI
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

impl Crc32c {
    fn new() -> Crc32c {
        Crc32c(!0)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = TABLE[((self.0 ^ u32::from(b)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proto::etcdserverpb::{
        request_op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
    };
    use crate::storage::Store;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut crc = Crc32c::new();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xE306_9283);
    }

    fn put(mvcc: &Mvcc, key: &str, value: &str) {
        let op = request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        });
        write(mvcc, op);
    }

    fn delete(mvcc: &Mvcc, key: &str) {
        let op = request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        });
        write(mvcc, op);
    }

    fn write(mvcc: &Mvcc, op: request_op::Request) {
        let req = TxnRequest {
            success: vec![RequestOp { request: Some(op) }],
            ..Default::default()
        };
        mvcc.apply_txn(&req, b"marker").expect("apply");
    }

    fn open(dir: &std::path::Path) -> Mvcc {
        Mvcc::open(Arc::new(Store::open(dir).expect("store"))).expect("mvcc")
    }

    #[test]
    fn hash_is_stable_across_reopen_and_sensitive_to_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = {
            let mvcc = open(dir.path());
            let empty = mvcc.hash_kv(0).expect("hash");
            assert_eq!(empty.compact_revision, -1);
            put(&mvcc, "a", "1");
            put(&mvcc, "b", "2");
            let h = mvcc.hash_kv(0).expect("hash");
            assert_ne!(h.hash, empty.hash);
            assert_eq!(h, mvcc.hash_kv(3).expect("hash at 3"));
            assert_eq!(mvcc.hash_kv(1).expect("hash at 1").hash, empty.hash);
            h
        };
        let mvcc = open(dir.path());
        assert_eq!(mvcc.hash_kv(0).expect("hash"), before);
        put(&mvcc, "b", "2");
        assert_ne!(mvcc.hash_kv(0).expect("hash").hash, before.hash);
        assert_eq!(mvcc.hash_kv(3).expect("hash at 3").hash, before.hash);
        assert!(matches!(mvcc.hash_kv(5), Err(MvccError::FutureRev)));
    }

    #[test]
    fn same_history_same_hash_different_value_different_hash() {
        let (d1, d2, d3) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let (m1, m2, m3) = (open(d1.path()), open(d2.path()), open(d3.path()));
        for m in [&m1, &m2] {
            put(m, "k", "v");
            delete(m, "k");
        }
        put(&m3, "k", "w");
        delete(&m3, "k");
        let h = |m: &Mvcc| m.hash_kv(0).expect("hash").hash;
        assert_eq!(h(&m1), h(&m2));
        assert_ne!(h(&m1), h(&m3));
    }

    /// `kv_history` entries of `versions`, in key order.
    type Versions<'a> = [(&'a str, i64, Option<&'a str>)];

    /// The hash of `kv_history` holding `versions` (key, main revision, value or tombstone).
    fn hash_of(versions: &Versions<'_>, at: i64, compact: i64) -> u32 {
        hash_history(history(versions).into_iter().map(Ok), at, compact).expect("hash")
    }

    fn history(versions: &Versions<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = versions
            .iter()
            .map(|&(key, main, value)| {
                let kv = value.map(|v| crate::proto::mvccpb::KeyValue {
                    key: key.into(),
                    value: v.into(),
                    mod_revision: main,
                    ..Default::default()
                });
                (
                    codec::history_key(key.as_bytes(), codec::Rev::new(main, 0)),
                    codec::encode_record(kv.as_ref()),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn hash_does_not_depend_on_physical_compaction_progress() {
        let full = [
            ("a", 2, Some("1")),
            ("a", 3, Some("2")),
            ("b", 4, Some("1")),
            ("b", 5, None),
            ("c", 6, Some("1")),
            ("a", 7, Some("3")),
        ];
        // What physical compaction at 5 leaves: per key the newest version at or below 5,
        // unless it is a tombstone.
        let compacted = [
            ("a", 3, Some("2")),
            ("c", 6, Some("1")),
            ("a", 7, Some("3")),
        ];
        for at in [5, 6, 7] {
            assert_eq!(hash_of(&full, at, 5), hash_of(&compacted, at, 5), "at {at}");
        }
        // The compacted window is not hashed like the rest: compaction changes the hash.
        assert_ne!(hash_of(&full, 6, -1), hash_of(&full, 6, 5));
        // A version above `at` does not count, and a change below it does.
        let mut changed = full;
        changed[5].2 = Some("4");
        assert_eq!(hash_of(&full, 6, -1), hash_of(&changed, 6, -1));
        assert_ne!(hash_of(&full, 7, -1), hash_of(&changed, 7, -1));
    }

    #[tokio::test]
    async fn compacted_and_future_revisions_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mvcc = open(dir.path());
        put(&mvcc, "a", "1"); // 2
        put(&mvcc, "a", "2"); // 3
        put(&mvcc, "b", "1"); // 4
        let done = mvcc.compact(3, b"marker").expect("compact");
        done.await.expect("physical compaction");
        let h = mvcc.hash_kv(0).expect("hash");
        assert_eq!((h.compact_revision, h.current_revision), (3, 4));
        assert_eq!(h, mvcc.hash_kv(4).expect("hash at 4"));
        assert!(matches!(mvcc.hash_kv(3), Err(MvccError::Compacted)));
        assert!(matches!(mvcc.hash_kv(5), Err(MvccError::FutureRev)));
    }
}

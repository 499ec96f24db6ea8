//! Byte encodings of the MVCC keyspaces. The layout itself is documented in the module
//! header of `mvcc/mod.rs`; this file is the only place that builds or parses those bytes.

use crate::proto::mvccpb::KeyValue;

use super::MvccError;

/// Length of an encoded [`Rev`]: main and sub revision, 8 bytes each.
pub(super) const REV_LEN: usize = 16;

/// Longest user key cairn stores. Storage keys are limited to 64 KiB, and a history key is
/// the escaped user key (up to twice as long) plus a terminator and a revision.
pub const MAX_KEY_LEN: usize = 32 * 1024 - 32;

/// Length of the fixed part of an encoded record: tag plus four integers.
const RECORD_HEADER_LEN: usize = 1 + 4 * 8;
/// A version with its value: superseded versions in `kv_history`, and the live version in
/// `kv_latest` of a store written before the value was stored once.
const TAG_PUT: u8 = b'p';
const TAG_TOMBSTONE: u8 = b'd';
/// `kv_latest`: the live version with its value and its sub revision, so the `kv_history`
/// entry standing for it can be found when it is superseded.
const TAG_LIVE: u8 = b'l';
/// `kv_history`: the live version, whose record is in `kv_latest`.
const TAG_CURRENT: u8 = b'c';
/// `kv_revs`: a change that names the record it supersedes in its key's history.
const TAG_PUT_AFTER: u8 = b'P';
const TAG_TOMBSTONE_AFTER: u8 = b'D';

/// A revision: the main revision of a write txn and the position of the change inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rev {
    pub main: i64,
    pub sub: i64,
}

impl Rev {
    pub fn new(main: i64, sub: i64) -> Rev {
        Rev { main, sub }
    }

    /// Big-endian, so byte order is revision order (revisions are never negative).
    pub fn to_bytes(self) -> [u8; REV_LEN] {
        let mut out = [0u8; REV_LEN];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Rev, MvccError> {
        if bytes.len() != REV_LEN {
            return Err(corrupt(format!("revision of {} bytes", bytes.len())));
        }
        Ok(Rev {
            main: be_i64(&bytes[..8])?,
            sub: be_i64(&bytes[8..])?,
        })
    }

    /// The smallest revision after this one.
    pub fn next(self) -> Rev {
        Rev {
            main: self.main,
            sub: self.sub + 1,
        }
    }
}

/// Appends the order-preserving escape of `key`: 0x00 becomes 0x00 0xFF and the key ends
/// with 0x00 0x00, so no escaped key is a prefix of another and byte order of escaped keys
/// (followed by anything) is byte order of the user keys.
fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The prefix shared by every history record of `key`.
pub(super) fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + REV_LEN);
    escape_into(key, &mut out);
    out
}

/// The `kv_history` key of `key` at `rev`.
pub(super) fn history_key(key: &[u8], rev: Rev) -> Vec<u8> {
    let mut out = history_prefix(key);
    out.extend_from_slice(&rev.to_bytes());
    out
}

/// Splits a `kv_history` key into the escaped-key prefix and the revision.
pub(super) fn split_history_key(raw: &[u8]) -> Result<(&[u8], Rev), MvccError> {
    let Some(at) = raw.len().checked_sub(REV_LEN) else {
        return Err(corrupt(format!("history key of {} bytes", raw.len())));
    };
    Ok((&raw[..at], Rev::from_bytes(&raw[at..])?))
}

/// The user key of an escaped-key prefix made by [`history_prefix`].
pub(super) fn unescape(prefix: &[u8]) -> Result<Vec<u8>, MvccError> {
    let Some(body) = prefix.strip_suffix(&[0, 0]) else {
        return Err(corrupt("history key without terminator".to_string()));
    };
    let mut out = Vec::with_capacity(body.len());
    let mut bytes = body.iter();
    while let Some(&b) = bytes.next() {
        out.push(b);
        if b == 0 && bytes.next() != Some(&0xFF) {
            return Err(corrupt("badly escaped history key".to_string()));
        }
    }
    Ok(out)
}

/// Encodes a stored version of a key (`None` = tombstone). The key itself is not stored:
/// it is part of the keyspace key.
pub(super) fn encode_record(kv: Option<&KeyValue>) -> Vec<u8> {
    let Some(kv) = kv else {
        return vec![TAG_TOMBSTONE];
    };
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + kv.value.len());
    out.push(TAG_PUT);
    for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&kv.value);
    out
}

/// Encodes the live version of a key for `kv_latest`: the version written at `sub`
/// inside its revision.
pub(super) fn encode_latest(kv: &KeyValue, sub: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + 8 + kv.value.len());
    out.push(TAG_LIVE);
    for n in [
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease,
        sub,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes a `kv_latest` record: the version and, when the store knows it, its sub
/// revision. A record without one (`p`, written before the value was stored once) has
/// its full copy in `kv_history`.
pub(super) fn decode_latest(
    key: &[u8],
    record: &[u8],
) -> Result<(KeyValue, Option<i64>), MvccError> {
    match record.first() {
        Some(&TAG_LIVE) if record.len() >= RECORD_HEADER_LEN + 8 => {
            let sub = be_i64(&record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + 8])?;
            let kv = decode_version(key, record, RECORD_HEADER_LEN + 8)?;
            Ok((kv, Some(sub)))
        }
        Some(&TAG_PUT) if record.len() >= RECORD_HEADER_LEN => {
            Ok((decode_version(key, record, RECORD_HEADER_LEN)?, None))
        }
        _ => Err(corrupt(format!(
            "kv_latest record of {} bytes for key {key:?}",
            record.len()
        ))),
    }
}

/// The `kv_history` record of a live version: its content is in `kv_latest`.
pub(super) fn current_record() -> [u8; 1] {
    [TAG_CURRENT]
}

/// Whether a `kv_history` record stands for the live version in `kv_latest`.
pub(super) fn is_current(record: &[u8]) -> bool {
    record == [TAG_CURRENT]
}

/// Whether an encoded record is a tombstone, without decoding it.
pub(super) fn is_tombstone(record: &[u8]) -> bool {
    record.first() == Some(&TAG_TOMBSTONE)
}

/// Decodes a record written by [`encode_record`] for `key`.
pub(super) fn decode_record(key: &[u8], record: &[u8]) -> Result<Option<KeyValue>, MvccError> {
    match record.first() {
        Some(&TAG_TOMBSTONE) if record.len() == 1 => Ok(None),
        Some(&TAG_PUT) if record.len() >= RECORD_HEADER_LEN => {
            decode_version(key, record, RECORD_HEADER_LEN).map(Some)
        }
        _ => Err(corrupt(format!(
            "record of {} bytes for key {key:?}",
            record.len()
        ))),
    }
}

/// The four integers after the tag, and the value from `value_at` on.
fn decode_version(key: &[u8], record: &[u8], value_at: usize) -> Result<KeyValue, MvccError> {
    let int = |i: usize| be_i64(&record[1 + 8 * i..9 + 8 * i]);
    Ok(KeyValue {
        key: key.to_vec(),
        create_revision: int(0)?,
        mod_revision: int(1)?,
        version: int(2)?,
        lease: int(3)?,
        value: record[value_at..].to_vec(),
    })
}

/// The record a change supersedes in its key's history, as a `kv_revs` entry names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Supersedes {
    /// Not recorded (entries written before it was): look it up.
    Unknown,
    /// Nothing still there: the key had no live version before this change.
    Nothing,
    At(Rev),
}

/// A decoded `kv_revs` value.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RevEntry<'a> {
    pub key: &'a [u8],
    pub tombstone: bool,
    pub supersedes: Supersedes,
}

/// A `kv_revs` value: the change's kind, the record it supersedes (rev 0.0 for nothing)
/// and its user key; without the record (`Unknown`), the kind and the key only.
pub(super) fn encode_rev_entry(key: &[u8], tombstone: bool, supersedes: Supersedes) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + REV_LEN + key.len());
    let at = match supersedes {
        Supersedes::Unknown => {
            out.push(if tombstone { TAG_TOMBSTONE } else { TAG_PUT });
            out.extend_from_slice(key);
            return out;
        }
        Supersedes::Nothing => Rev::new(0, 0),
        Supersedes::At(rev) => rev,
    };
    out.push(if tombstone {
        TAG_TOMBSTONE_AFTER
    } else {
        TAG_PUT_AFTER
    });
    out.extend_from_slice(&at.to_bytes());
    out.extend_from_slice(key);
    out
}

/// Parses a `kv_revs` value, of either encoding.
pub(super) fn decode_rev_entry(raw: &[u8]) -> Result<RevEntry<'_>, MvccError> {
    let (tombstone, rest) = match raw.split_first() {
        Some((&(TAG_PUT | TAG_TOMBSTONE), key)) => {
            return Ok(RevEntry {
                key,
                tombstone: raw[0] == TAG_TOMBSTONE,
                supersedes: Supersedes::Unknown,
            })
        }
        Some((&TAG_PUT_AFTER, rest)) => (false, rest),
        Some((&TAG_TOMBSTONE_AFTER, rest)) => (true, rest),
        _ => return Err(corrupt("revision entry without a kind".to_string())),
    };
    if rest.len() < REV_LEN {
        return Err(corrupt(format!("revision entry of {} bytes", raw.len())));
    }
    let rev = Rev::from_bytes(&rest[..REV_LEN])?;
    Ok(RevEntry {
        key: &rest[REV_LEN..],
        tombstone,
        supersedes: if rev == Rev::new(0, 0) {
            Supersedes::Nothing
        } else {
            Supersedes::At(rev)
        },
    })
}

pub(super) fn encode_i64(n: i64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(super) fn be_i64(bytes: &[u8]) -> Result<i64, MvccError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("integer of {} bytes", bytes.len())))?;
    Ok(i64::from_be_bytes(arr))
}

pub(super) fn corrupt(what: String) -> MvccError {
    MvccError::Storage(super::StorageFault::Corrupt(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_keys_sort_like_user_keys() {
        let keys: [&[u8]; 8] = [b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"a\0b", b"ab"];
        for pair in keys.windows(2) {
            let a = history_key(pair[0], Rev::new(i64::MAX, i64::MAX));
            let b = history_key(pair[1], Rev::new(0, 0));
            assert!(a < b, "{:?} must sort before {:?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn history_key_round_trips() {
        for key in [&b""[..], b"\0", b"a\0\xff\0b", b"plain"] {
            let raw = history_key(key, Rev::new(7, 3));
            let (prefix, rev) = split_history_key(&raw).expect("split");
            assert_eq!(rev, Rev::new(7, 3));
            assert_eq!(unescape(prefix).expect("unescape"), key);
        }
    }

    #[test]
    fn records_round_trip() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 77,
            value: b"v".to_vec(),
        };
        assert_eq!(
            decode_record(b"k", &encode_record(Some(&kv))).expect("decode"),
            Some(kv.clone())
        );
        assert_eq!(
            decode_record(b"k", &encode_record(None)).expect("decode"),
            None
        );
        assert!(is_tombstone(&encode_record(None)));
        assert!(decode_record(b"k", b"p12").is_err());
        assert_eq!(
            decode_latest(b"k", &encode_latest(&kv, 4)).expect("decode"),
            (kv.clone(), Some(4))
        );
        assert_eq!(
            decode_latest(b"k", &encode_record(Some(&kv))).expect("decode"),
            (kv, None)
        );
        assert!(decode_latest(b"k", &encode_record(None)).is_err());
    }

    #[test]
    fn revision_entries_round_trip() {
        fn entry(raw: &[u8]) -> RevEntry<'_> {
            decode_rev_entry(raw).expect("decode")
        }
        let put = encode_rev_entry(b"k", false, Supersedes::At(Rev::new(3, 1)));
        assert_eq!(
            entry(&put),
            RevEntry {
                key: b"k",
                tombstone: false,
                supersedes: Supersedes::At(Rev::new(3, 1))
            }
        );
        let first = encode_rev_entry(b"k", true, Supersedes::Nothing);
        assert_eq!(entry(&first).supersedes, Supersedes::Nothing);
        assert!(entry(&first).tombstone);
        let old = encode_rev_entry(b"k", true, Supersedes::Unknown);
        assert_eq!(old, b"dk", "the encoding of stores that did not record it");
        let old = entry(&old);
        assert_eq!((old.key, old.tombstone), (&b"k"[..], true));
        assert_eq!(old.supersedes, Supersedes::Unknown);
        assert!(decode_rev_entry(b"P12").is_err());
    }
}

//! Reads: etcd's `rangeKeys` (kvstore_txn.go) and the Range applier (apply.go) over one
//! consistent view, which is a storage snapshot plus, inside a write txn, the txn's own
//! uncommitted changes.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use prost::Message;

use super::codec;
use super::{Keyspaces, MvccError};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;
use crate::storage::Snapshot;

/// Latest state of the keys a write txn changed so far (`None` = deleted in this txn).
pub(super) type Overlay = BTreeMap<Vec<u8>, Option<KeyValue>>;

/// The keys a request addresses, decoded from etcd's `key`/`range_end` convention.
#[derive(Clone, Copy, Debug)]
pub(super) enum KeyRange<'a> {
    /// Empty `range_end`: exactly `key`.
    Single(&'a [u8]),
    /// `[start, end)`; `end: None` is etcd's `range_end == "\0"`, all keys >= `start`.
    Span {
        start: &'a [u8],
        end: Option<&'a [u8]>,
    },
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::Span {
                start: key,
                end: None,
            },
            end => KeyRange::Span {
                start: key,
                end: Some(end),
            },
        }
    }

    /// True when every key matches: no end, and a start at or before the smallest key
    /// ("\0"; the empty key is never stored).
    fn is_everything(&self) -> bool {
        matches!(
            *self,
            KeyRange::Span {
                start: [] | [0],
                end: None
            }
        )
    }

    /// True when no key can match (an end at or before the start, or the empty key, which
    /// etcd's API never stores).
    fn is_empty(&self) -> bool {
        match *self {
            KeyRange::Single(key) => key.is_empty(),
            KeyRange::Span {
                start,
                end: Some(end),
            } => end <= start,
            KeyRange::Span { .. } => false,
        }
    }

    fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match *self {
            KeyRange::Single(key) => (Bound::Included(key), Bound::Included(key)),
            KeyRange::Span { start, end } => (
                Bound::Included(start),
                end.map_or(Bound::Unbounded, Bound::Excluded),
            ),
        }
    }

    /// The same bounds over `kv_history` keys.
    fn history_bounds(&self) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        match *self {
            KeyRange::Single(key) => {
                let prefix = codec::history_prefix(key);
                let mut end = prefix.clone();
                end.extend_from_slice(&[0xFF; codec::REV_LEN]);
                (Bound::Included(prefix), Bound::Included(end))
            }
            KeyRange::Span { start, end } => (
                Bound::Included(codec::history_prefix(start)),
                end.map_or(Bound::Unbounded, |e| {
                    Bound::Excluded(codec::history_prefix(e))
                }),
            ),
        }
    }
}

/// What a range returns before etcd's filtering, sorting and truncation.
pub(super) struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Every key in the range at the read revision, whatever the limit.
    pub count: i64,
    /// The view's revision (etcd's `curRev`), not the requested historic one.
    pub rev: i64,
}

/// What a scan hands each key it finds; `Break` ends the scan.
type Visit<'v> = dyn FnMut(Found<'_>) -> Result<ControlFlow<()>, MvccError> + 'v;

/// A consistent state to read from.
pub(super) struct View<'a> {
    pub ks: &'a Keyspaces,
    pub snap: &'a Snapshot,
    /// Uncommitted changes of the write txn being applied, if any.
    pub overlay: Option<&'a Overlay>,
    /// Revision of the committed state in `snap`.
    pub snap_rev: i64,
    /// Revision this view reports: `snap_rev`, or `snap_rev + 1` once a txn has written.
    pub rev: i64,
    /// Compacted revision; -1 if the store was never compacted (as etcd).
    pub compact_rev: i64,
    /// The live keys in `snap`, if known: a count of every key at `snap_rev` needs no scan.
    pub live_keys: Option<i64>,
}

impl View<'_> {
    /// The latest live version of one key.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        self.get_over(key, self.overlay)
    }

    /// The latest version of one key: `overlay`'s if it changed the key, else the
    /// snapshot's.
    fn get_over(
        &self,
        key: &[u8],
        overlay: Option<&Overlay>,
    ) -> Result<Option<KeyValue>, MvccError> {
        if let Some(pending) = overlay.and_then(|o| o.get(key)) {
            return Ok(pending.clone());
        }
        self.get_committed(key)
    }

    /// The latest version of one key in the snapshot, ignoring the txn's own changes.
    pub fn get_committed(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        Ok(self.get_live(key)?.map(|live| live.kv))
    }

    /// [`View::get_committed`] with where the version is recorded in `kv_history`.
    pub fn get_live(&self, key: &[u8]) -> Result<Option<Live>, MvccError> {
        get_live(self.snap, self.ks, key)
    }

    /// How many keys `range` holds at revision `at` (0: the view's), if that is known
    /// without a scan: every key at the committed revision of the snapshot.
    fn known_count(&self, range: &KeyRange<'_>, at: i64) -> Option<i64> {
        let at_snapshot = (at <= 0 || at == self.rev) && self.overlay.is_none();
        (at_snapshot && range.is_everything())
            .then_some(self.live_keys)
            .flatten()
    }

    /// etcd's `rangeKeys`: `limit` 0 means all; `count_only` returns no kvs.
    pub fn range_keys(
        &self,
        range: KeyRange<'_>,
        at: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult, MvccError> {
        let mut kvs = Vec::new();
        let mut count = 0i64;
        self.scan(range, at, &mut |found: Found<'_>| {
            count += 1;
            if !count_only && (limit == 0 || kvs.len() < limit) {
                kvs.push(found.into_kv(self)?);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(RangeResult {
            kvs,
            count,
            rev: self.rev,
        })
    }

    /// Visits, in key order, every live key of `range` at revision `at` (0: the view's).
    fn scan(&self, range: KeyRange<'_>, at: i64, visit: &mut Visit<'_>) -> Result<(), MvccError> {
        if at > self.rev {
            return Err(MvccError::FutureRev);
        }
        let at = if at <= 0 { self.rev } else { at };
        if at < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if range.is_empty() {
            Ok(())
        } else if at == self.rev {
            self.scan_latest(range, self.overlay, visit)
        } else if at == self.snap_rev {
            self.scan_latest(range, None, visit)
        } else {
            self.scan_history(range, at, visit)
        }
    }

    /// Visits, in key order, the latest version of every live key in `range`.
    fn scan_latest(
        &self,
        range: KeyRange<'_>,
        overlay: Option<&Overlay>,
        visit: &mut Visit<'_>,
    ) -> Result<(), MvccError> {
        if let KeyRange::Single(key) = range {
            return self.latest_one(key, overlay, visit);
        }
        let bounds = range.bounds();
        let mut committed = self
            .snap
            .range::<&[u8], _>(&self.ks.latest, bounds)
            .peekable();
        let empty = Overlay::new();
        let mut pending = overlay
            .unwrap_or(&empty)
            .range::<[u8], _>(bounds)
            .peekable();
        loop {
            let order = match (committed.peek(), pending.peek()) {
                (None, None) => return Ok(()),
                (Some(Err(_)), _) => Ordering::Less,
                (Some(Ok((ck, _))), Some((pk, _))) => (**ck).cmp(pk.as_slice()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
            };
            if order != Ordering::Greater {
                let (key, raw) = committed.next().transpose()?.ok_or_else(lost_item)?;
                if order == Ordering::Less {
                    let found = Found::Latest {
                        key: &key,
                        record: &raw,
                    };
                    if visit(found)?.is_break() {
                        return Ok(());
                    }
                    continue;
                }
            }
            // The txn's own change to this key replaces the committed version.
            let (_, kv) = pending.next().ok_or_else(lost_item)?;
            if let Some(kv) = kv {
                if visit(Found::Decoded(kv))?.is_break() {
                    return Ok(());
                }
            }
        }
    }

    /// [`View::scan_latest`] of one key: a point lookup, which the store answers from its
    /// filters, where a range opens an iterator over every table and memtable (a txn's
    /// compare and a get are one key; the iterator was most of their cost).
    fn latest_one(
        &self,
        key: &[u8],
        overlay: Option<&Overlay>,
        visit: &mut Visit<'_>,
    ) -> Result<(), MvccError> {
        // A single key has nothing after it, so whether the visit breaks does not matter.
        match self.get_over(key, overlay)? {
            Some(kv) => visit(Found::Decoded(&kv)).map(drop),
            None => Ok(()),
        }
    }

    /// Visits, in key order, every key whose newest record at or below `at` is a put.
    fn scan_history(
        &self,
        range: KeyRange<'_>,
        at: i64,
        visit: &mut Visit<'_>,
    ) -> Result<(), MvccError> {
        // The escaped key being walked, and its newest (history key, record) at or below `at`.
        let mut walking: Option<Vec<u8>> = None;
        let mut newest = None;
        for item in self.snap.range(&self.ks.history, range.history_bounds()) {
            let (raw_key, record) = item?;
            let (prefix, rev) = codec::split_history_key(&raw_key)?;
            if walking.as_deref() != Some(prefix) {
                walking = Some(prefix.to_vec());
                if emit_newest(newest.take(), visit)?.is_break() {
                    return Ok(());
                }
            }
            if rev.main <= at {
                newest = Some((raw_key, record));
            }
        }
        emit_newest(newest, visit).map(drop)
    }
}

/// The live version of a key as `kv_latest` records it.
pub(super) struct Live {
    pub kv: KeyValue,
    /// Where `kv_history` has its entry: a `current` record standing for this one. `None`
    /// for a record written before the value was stored once: `kv_history` then holds a
    /// full copy at an unrecorded sub revision.
    pub at: Option<codec::Rev>,
}

/// The live version of `key` in `snap`.
pub(super) fn get_live(
    snap: &Snapshot,
    ks: &Keyspaces,
    key: &[u8],
) -> Result<Option<Live>, MvccError> {
    if key.is_empty() {
        return Ok(None);
    }
    let Some(raw) = snap.get(&ks.latest, key)? else {
        return Ok(None);
    };
    let (kv, sub) = codec::decode_latest(key, &raw)?;
    let at = sub.map(|sub| codec::Rev::new(kv.mod_revision, sub));
    Ok(Some(Live { kv, at }))
}

/// Decodes the `kv_history` record of `key` at `rev` (`None`: a tombstone). A `current`
/// record is the live version, read from `kv_latest` in the same snapshot.
pub(super) fn history_version(
    snap: &Snapshot,
    ks: &Keyspaces,
    key: &[u8],
    rev: codec::Rev,
    record: &[u8],
) -> Result<Option<KeyValue>, MvccError> {
    if !codec::is_current(record) {
        return codec::decode_record(key, record);
    }
    match get_live(snap, ks, key)? {
        Some(live) if live.at == Some(rev) => Ok(Some(live.kv)),
        _ => Err(MvccError::Storage(super::StorageFault::Corrupt(format!(
            "kv_history marks {key:?} at {rev:?} as live, kv_latest disagrees"
        )))),
    }
}

/// Hands the newest record of a key to `visit` unless it is a tombstone.
fn emit_newest<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    newest: Option<(K, V)>,
    visit: &mut Visit<'_>,
) -> Result<ControlFlow<()>, MvccError> {
    match newest {
        Some((raw_key, record)) if !codec::is_tombstone(record.as_ref()) => {
            let (prefix, rev) = codec::split_history_key(raw_key.as_ref())?;
            let key = codec::unescape(prefix)?;
            visit(Found::History {
                key: &key,
                rev,
                record: record.as_ref(),
            })
        }
        _ => Ok(ControlFlow::Continue(())),
    }
}

fn lost_item() -> MvccError {
    corrupt("iterator lost a peeked item")
}

fn corrupt(what: &str) -> MvccError {
    MvccError::Storage(super::StorageFault::Corrupt(what.to_string()))
}

/// A key found by a scan, decoded only if the caller keeps it.
enum Found<'a> {
    /// A `kv_latest` record.
    Latest {
        key: &'a [u8],
        record: &'a [u8],
    },
    /// A `kv_history` record, not a tombstone.
    History {
        key: &'a [u8],
        rev: codec::Rev,
        record: &'a [u8],
    },
    Decoded(&'a KeyValue),
}

impl Found<'_> {
    fn into_kv(self, view: &View<'_>) -> Result<KeyValue, MvccError> {
        match self {
            Found::Latest { key, record } => Ok(codec::decode_latest(key, record)?.0),
            Found::History { key, rev, record } => {
                history_version(view.snap, view.ks, key, rev, record)?.ok_or_else(|| {
                    MvccError::Storage(super::StorageFault::Corrupt(format!(
                        "tombstone kept as the version of {key:?}"
                    )))
                })
            }
            Found::Decoded(kv) => Ok(kv.clone()),
        }
    }
}

/// etcd's Range applier: fetch, filter on mod/create revision, sort, truncate to `limit`.
pub(super) fn range(view: &View<'_>, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
    // With no chunk limit, `emit` is never called and the tail is the whole response.
    let whole = range_chunks(view, req, usize::MAX, &mut |_| ControlFlow::Continue(()))?;
    whole.ok_or_else(|| corrupt("a range without chunks was stopped"))
}

/// The Range applier, handing the kvs out in chunks of about `chunk_bytes` (encoded), in
/// the order the client gets them; returns the last chunk with the header's revision,
/// `more` and `count` (etcd's RangeStream sets those on its final message only), or `None`
/// if `emit` broke off. Memory stays bounded by a chunk unless the result must be sorted
/// on something other than the key, which needs all of it.
pub(super) fn range_chunks(
    view: &View<'_>,
    req: &RangeRequest,
    chunk_bytes: usize,
    emit: &mut dyn FnMut(Vec<KeyValue>) -> ControlFlow<()>,
) -> Result<Option<RangeResponse>, MvccError> {
    let range = KeyRange::new(&req.key, &req.range_end);
    if !in_key_order(req) {
        return sorted_range(view, req, range).map(|resp| split(resp, chunk_bytes, emit));
    }
    let limit = usize::try_from(req.limit).unwrap_or(0);
    let filtered = has_revision_filter(req);
    // The count of the whole keyspace is the live key count: such a range visits only the
    // keys it returns (none for `count_only`), not every key.
    let known = (!filtered)
        .then(|| view.known_count(&range, req.revision))
        .flatten();
    let (mut chunk, mut bytes, mut kept) = (Vec::new(), 0usize, 0usize);
    let (mut count, mut more, mut stopped) = (0i64, false, false);
    const GO_ON: ControlFlow<()> = ControlFlow::Continue(());
    if !(req.count_only && known.is_some()) {
        view.scan(range, req.revision, &mut |found: Found<'_>| {
            count += 1;
            if req.count_only || more {
                return Ok(GO_ON);
            }
            // Past the limit only whether another key would pass matters, and without filters
            // any key does: no need to decode it (nor to look, if the count is known).
            if limit > 0 && kept == limit && !filtered {
                if known.is_some() {
                    return Ok(ControlFlow::Break(()));
                }
                more = true;
                return Ok(GO_ON);
            }
            let mut kv = found.into_kv(view)?;
            if !keep_by_revision(req, &kv) {
                return Ok(GO_ON);
            }
            if limit > 0 && kept == limit {
                more = true;
                return Ok(GO_ON);
            }
            kept += 1;
            if req.keys_only {
                kv.value.clear();
            }
            bytes += kv.encoded_len();
            chunk.push(kv);
            if bytes >= chunk_bytes {
                bytes = 0;
                // The reader went away: the rest of the range is nobody's business.
                if emit(std::mem::take(&mut chunk)).is_break() {
                    stopped = true;
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok(GO_ON)
        })?;
    }
    if let Some(live) = known {
        count = live;
        more = !req.count_only && live > kept as i64;
    }
    Ok((!stopped).then(|| RangeResponse {
        header: Some(ResponseHeader {
            revision: view.rev,
            ..Default::default()
        }),
        kvs: chunk,
        more,
        count,
    }))
}

/// Keys a bounded count visits between two questions to its caller.
const COUNT_CHECK_EVERY: u64 = 1024;

/// etcd's `count_only` range of the view's revision, asking `go_on` every
/// [`COUNT_CHECK_EVERY`] keys whether to continue; `None` if it said stop. Decodes no
/// record, but still visits every key of the range: the cost is linear in its size.
pub(super) fn count_while(
    view: &View<'_>,
    range: KeyRange<'_>,
    go_on: &mut dyn FnMut() -> bool,
) -> Result<Option<u64>, MvccError> {
    if let Some(live) = view.known_count(&range, 0) {
        return Ok(Some(u64::try_from(live).unwrap_or(0)));
    }
    let (mut count, mut stopped) = (0u64, false);
    view.scan(range, 0, &mut |_: Found<'_>| {
        count += 1;
        if count % COUNT_CHECK_EVERY == 0 && !go_on() {
            stopped = true;
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok((!stopped).then_some(count))
}

/// A sorted (or filtered and sorted) range, collected whole.
fn sorted_range(
    view: &View<'_>,
    req: &RangeRequest,
    range: KeyRange<'_>,
) -> Result<RangeResponse, MvccError> {
    let mut rr = view.range_keys(range, req.revision, 0, req.count_only)?;
    rr.kvs.retain(|kv| keep_by_revision(req, kv));
    sort(req, &mut rr.kvs);
    let mut more = false;
    if let Ok(limit) = usize::try_from(req.limit) {
        if limit > 0 && rr.kvs.len() > limit {
            rr.kvs.truncate(limit);
            more = true;
        }
    }
    if req.keys_only {
        rr.kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: rr.rev,
            ..Default::default()
        }),
        kvs: rr.kvs,
        more,
        count: rr.count,
    })
}

/// Emits all but the last `chunk_bytes` of a collected response; returns the rest with the
/// response's header, `more` and `count`, or `None` if `emit` broke off.
fn split(
    mut resp: RangeResponse,
    chunk_bytes: usize,
    emit: &mut dyn FnMut(Vec<KeyValue>) -> ControlFlow<()>,
) -> Option<RangeResponse> {
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for kv in std::mem::take(&mut resp.kvs) {
        bytes += kv.encoded_len();
        chunk.push(kv);
        if bytes >= chunk_bytes {
            bytes = 0;
            if emit(std::mem::take(&mut chunk)).is_break() {
                return None;
            }
        }
    }
    resp.kvs = chunk;
    Some(resp)
}

/// Whether the result comes out in key order as scanned: etcd sorts ascending by the
/// target when the order is NONE but the target is not the key.
fn in_key_order(req: &RangeRequest) -> bool {
    let by_key =
        SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key) == SortTarget::Key;
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    by_key && order != SortOrder::Descend
}

fn has_revision_filter(req: &RangeRequest) -> bool {
    req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

fn keep_by_revision(req: &RangeRequest, kv: &KeyValue) -> bool {
    !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
        || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
        || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
        || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
}

/// Sorts as etcd does: order NONE keeps key order unless the target is not KEY, in which
/// case it sorts ascending. The sort is stable, so ties stay in key order (etcd's sort is
/// not stable, but for the small results it is insertion sort, which is).
fn sort(req: &RangeRequest, kvs: &mut [KeyValue]) {
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let order = match SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None) {
        SortOrder::None if target != SortTarget::Key => SortOrder::Ascend,
        order => order,
    };
    let by = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(by),
        SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
    }
}

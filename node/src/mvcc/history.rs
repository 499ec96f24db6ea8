//! Revision history reads for watchers catching up: the changes between two revisions, in
//! revision order, as watch events. `kv_revs` gives the order and the kind of each change;
//! `kv_history` holds the version written (and the one before it, for `prev_kv`).
//!
//! Reads are bounded: a call returns whole revisions, stopping at the first revision
//! boundary after `limit` events, so a watcher far behind is fed in chunks and never loads
//! the whole history.

use std::ops::Bound;

use super::codec::{self, Rev};
use super::read;
use super::{Mvcc, MvccError, StorageFault};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::storage::Snapshot;

impl Mvcc {
    /// The events of revisions `from_rev..=to_rev`, in revision order. Stops after the
    /// revision holding the `limit`-th event, so a revision is never split: when fewer than
    /// `limit` events come back, everything up to `to_rev` was read; otherwise the caller
    /// continues from the last event's revision + 1. With `prev_kv`, each event that
    /// replaced a live version carries it (unless compaction removed it).
    ///
    /// Fails with `Compacted` when `from_rev` is below the compact revision, as etcd's
    /// watchers (a watch may start exactly at it).
    pub fn events(
        &self,
        from_rev: i64,
        to_rev: i64,
        limit: usize,
        prev_kv: bool,
    ) -> Result<Vec<Event>, MvccError> {
        let (snap, revs) = self.view_at()?;
        if from_rev < revs.compact {
            return Err(MvccError::Compacted);
        }
        let to_rev = to_rev.min(revs.current);
        if from_rev > to_rev {
            return Ok(Vec::new());
        }
        let start = Rev::new(from_rev.max(0), 0).to_bytes();
        let end = Rev::new(to_rev, i64::MAX).to_bytes();
        let mut events = Vec::new();
        let mut last_main = None;
        for item in snap.range(&self.ks.revs, start..=end) {
            let (raw_rev, entry) = item?;
            let rev = Rev::from_bytes(&raw_rev)?;
            if events.len() >= limit.max(1) && last_main != Some(rev.main) {
                break;
            }
            last_main = Some(rev.main);
            let entry = codec::decode_rev_entry(&entry)?;
            events.push(self.event_at(&snap, entry.key, rev, entry.tombstone, prev_kv)?);
        }
        Ok(events)
    }

    /// The event of the change to `key` at `rev`.
    fn event_at(
        &self,
        snap: &Snapshot,
        key: &[u8],
        rev: Rev,
        tombstone: bool,
        prev_kv: bool,
    ) -> Result<Event, MvccError> {
        let (kind, kv) = if tombstone {
            // As the live delete events: only the key and the revision of the delete.
            let kv = KeyValue {
                key: key.to_vec(),
                mod_revision: rev.main,
                ..Default::default()
            };
            (EventType::Delete, kv)
        } else {
            let raw = snap
                .get(&self.ks.history, codec::history_key(key, rev))?
                .ok_or_else(|| missing(key, rev))?;
            let kv = read::history_version(snap, &self.ks, key, rev, &raw)?
                .ok_or_else(|| missing(key, rev))?;
            (EventType::Put, kv)
        };
        let prev_kv = if prev_kv {
            self.version_before(snap, key, rev.main)?
        } else {
            None
        };
        Ok(Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv,
        })
    }

    /// The live version of `key` just before revision `main` (what the txn at `main` saw),
    /// if it still exists.
    fn version_before(
        &self,
        snap: &Snapshot,
        key: &[u8],
        main: i64,
    ) -> Result<Option<KeyValue>, MvccError> {
        let lower = codec::history_prefix(key);
        let upper = codec::history_key(key, Rev::new(main, 0));
        let range = (Bound::Included(lower), Bound::Excluded(upper));
        match snap.range(&self.ks.history, range).next_back() {
            Some(item) => {
                let (raw, record) = item?;
                let (_, rev) = codec::split_history_key(&raw)?;
                read::history_version(snap, &self.ks, key, rev, &record)
            }
            None => Ok(None),
        }
    }
}

fn missing(key: &[u8], rev: Rev) -> MvccError {
    MvccError::Storage(StorageFault::Corrupt(format!(
        "kv_revs names {key:?} at {rev:?} but kv_history has no such version"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::tests::open;
    use crate::proto::etcdserverpb::{
        request_op::Request, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
    };

    fn txn(mvcc: &Mvcc, ops: Vec<Request>) -> Vec<Event> {
        let req = TxnRequest {
            success: ops
                .into_iter()
                .map(|r| RequestOp { request: Some(r) })
                .collect(),
            ..Default::default()
        };
        mvcc.apply_txn(&req, b"m").expect("apply").1
    }

    fn put(key: &str, value: &str) -> Request {
        Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    }

    fn delete(key: &str) -> Request {
        Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })
    }

    #[test]
    fn history_equals_the_live_events() {
        let fixture = open();
        let mvcc = &fixture.mvcc;
        let mut live = Vec::new();
        live.extend(txn(mvcc, vec![put("a", "1")]));
        live.extend(txn(mvcc, vec![put("b", "1"), put("a", "2")]));
        live.extend(txn(mvcc, vec![delete("a")]));
        live.extend(txn(mvcc, vec![put("a", "3"), put("\0x", "z")]));
        let read = mvcc.events(2, 100, 1000, true).expect("events");
        assert_eq!(read, live);
        let without_prev: Vec<Event> = live
            .iter()
            .cloned()
            .map(|e| Event { prev_kv: None, ..e })
            .collect();
        assert_eq!(
            mvcc.events(0, 100, 1000, false).expect("events"),
            without_prev
        );
    }

    #[test]
    fn chunks_end_on_revision_boundaries() {
        let fixture = open();
        let mvcc = &fixture.mvcc;
        txn(mvcc, vec![put("a", "1"), put("b", "1"), put("c", "1")]); // rev 2
        txn(mvcc, vec![put("a", "2")]); // rev 3
        txn(mvcc, vec![put("a", "3")]); // rev 4
        let first = mvcc.events(2, 4, 1, false).expect("events");
        assert_eq!(first.len(), 3, "all of revision 2 comes together");
        let second = mvcc.events(3, 4, 1, false).expect("events");
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].kv.as_ref().map(|kv| kv.mod_revision), Some(3));
        assert_eq!(mvcc.events(3, 3, 10, false).expect("events").len(), 1);
        assert!(mvcc.events(5, 4, 10, false).expect("events").is_empty());
    }

    #[test]
    fn below_the_compact_revision_is_compacted() {
        let fixture = open();
        let mvcc = &fixture.mvcc;
        for i in 0..5 {
            txn(mvcc, vec![put("a", &i.to_string())]);
        }
        drop(mvcc.compact(4, b"m").expect("compact"));
        assert!(matches!(
            mvcc.events(3, 6, 10, false),
            Err(MvccError::Compacted)
        ));
        let events = mvcc.events(4, 6, 10, true).expect("events");
        assert_eq!(events.len(), 3);
    }
}

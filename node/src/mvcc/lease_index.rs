//! The lease -> keys index: which live keys carry which lease, so revoking a lease (or
//! `LeaseTimeToLive` with `keys`) finds its keys without holding them in RAM. etcd keeps
//! them in each lease's in-memory item set and rebuilds that by scanning every key at
//! start; cairn keeps them in an LSM keyspace instead.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `kv_lease` | lease id(8, BE) ++ user key | empty |
//!
//! The index is changed in the same batch as the MVCC change that attaches or detaches a
//! key: a put with a lease attaches the key, a put with another lease (or none) moves or
//! detaches it, a delete detaches it. Only the lease a key has before and after a whole txn
//! matter, so a key changed twice in one txn is indexed once.

use std::collections::HashMap;

use super::read::Overlay;
use super::txn::Change;
use super::{codec, MvccError};
use crate::storage::{Keyspace, Snapshot, WriteBatch};

/// The lease of a key with no lease (etcd's `NoLease`).
const NO_LEASE: i64 = 0;

fn index_key(lease: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&codec::encode_i64(lease));
    out.extend_from_slice(key);
    out
}

/// Adds to `batch` the index changes of one txn: `changes` carry each key's version before
/// the txn (`prev`), `overlay` its state after it.
pub(super) fn stage(
    batch: &mut WriteBatch,
    index: &Keyspace,
    changes: &[Change],
    overlay: &Overlay,
) {
    let mut before: HashMap<&[u8], i64> = HashMap::with_capacity(changes.len());
    for change in changes {
        before
            .entry(change.kv.key.as_slice())
            .or_insert_with(|| change.prev.as_ref().map_or(NO_LEASE, |kv| kv.lease));
    }
    for (key, after) in overlay {
        let old = before.get(key.as_slice()).copied().unwrap_or(NO_LEASE);
        let new = after.as_ref().map_or(NO_LEASE, |kv| kv.lease);
        if old == new {
            continue;
        }
        if old != NO_LEASE {
            batch.remove(index, index_key(old, key));
        }
        if new != NO_LEASE {
            batch.insert(index, index_key(new, key), b"");
        }
    }
}

/// The keys attached to `lease` in `snap`, in key order.
pub(super) fn keys(
    snap: &Snapshot,
    index: &Keyspace,
    lease: i64,
) -> Result<Vec<Vec<u8>>, MvccError> {
    let prefix = codec::encode_i64(lease);
    let mut keys = Vec::new();
    for raw in snap.prefix(index, prefix).keys() {
        let raw = raw?;
        keys.push(raw[prefix.len()..].to_vec());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::super::Mvcc;
    use crate::mvcc::tests::open;
    use crate::proto::etcdserverpb::{
        request_op::Request, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
    };

    fn put(key: &str, lease: i64) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                lease,
                ..Default::default()
            })),
        }
    }

    fn keep_lease(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                ignore_lease: true,
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn apply(mvcc: &Mvcc, ops: Vec<RequestOp>) {
        let req = TxnRequest {
            success: ops,
            ..Default::default()
        };
        mvcc.apply_txn(&req, b"m").expect("txn");
    }

    fn keys(mvcc: &Mvcc, lease: i64) -> Vec<String> {
        mvcc.lease_keys(lease)
            .expect("lease keys")
            .into_iter()
            .map(|k| String::from_utf8(k).expect("utf8"))
            .collect()
    }

    #[test]
    fn puts_attach_move_and_detach_keys() {
        let fixture = open();
        let mvcc = &fixture.mvcc;
        apply(
            mvcc,
            vec![put("b", 7), put("a", 7), put("c", 8), put("d", 0)],
        );
        assert_eq!(keys(mvcc, 7), ["a", "b"]);
        assert_eq!(keys(mvcc, 8), ["c"]);
        // Keeping the lease leaves the index alone; another lease moves the key; none detaches.
        apply(mvcc, vec![keep_lease("a"), put("b", 8), put("c", 0)]);
        assert_eq!(keys(mvcc, 7), ["a"]);
        assert_eq!(keys(mvcc, 8), ["b"]);
        assert!(
            keys(mvcc, 0).is_empty(),
            "keys without a lease are not indexed"
        );
    }

    #[test]
    fn deletes_detach_keys_and_a_put_after_delete_in_one_txn_counts_once() {
        let fixture = open();
        let mvcc = &fixture.mvcc;
        apply(mvcc, vec![put("a", 7), put("b", 7), put("c", 7)]);
        apply(mvcc, vec![delete("a", "")]);
        assert_eq!(keys(mvcc, 7), ["b", "c"]);
        apply(mvcc, vec![delete("b", "\0")]);
        assert!(keys(mvcc, 7).is_empty());
        apply(mvcc, vec![put("x", 7)]);
        // Deleted then put again with another lease in one txn (mvcc does not refuse it;
        // the API does): only the lease before and after the txn count.
        let nested = RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success: vec![put("x", 9)],
                ..Default::default()
            })),
        };
        apply(mvcc, vec![delete("x", ""), nested]);
        assert!(keys(mvcc, 7).is_empty());
        assert_eq!(keys(mvcc, 9), ["x"]);
    }
}

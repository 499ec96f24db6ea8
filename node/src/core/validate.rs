//! The pipeline's validate step: checks made before anything is proposed, mirroring etcd's `api/v3rpc/key.go`:
//! a request refused here never reaches the log, so it cannot change any state.

use std::collections::HashSet;

use prost::Message;

use super::Error;
use crate::proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// Refuses a request whose encoding exceeds `--max-request-bytes`, as etcd does for the
/// raft entry it would become.
pub fn size(req: &impl Message, max: usize) -> Result<(), Error> {
    if req.encoded_len() > max {
        return Err(Error::RequestTooLarge);
    }
    Ok(())
}

pub fn range(r: &RangeRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    bounds(&r.key, &r.range_end)?;
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.key.len() > crate::mvcc::MAX_KEY_LEN {
        return Err(Error::KeyTooLong);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    // Whether the lease exists is checked against the lessor (`Node::check_put_lease`)
    // and again at apply.
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    bounds(&r.key, &r.range_end)?;
    Ok(())
}

/// etcd's `checkTxnRequest` followed by its `checkIntervals` on both branches.
pub fn txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), Error> {
    txn_ops(r, max_txn_ops)?;
    Intervals::of(&r.success)?;
    Intervals::of(&r.failure)?;
    Ok(())
}

fn txn_ops(r: &TxnRequest, max_txn_ops: usize) -> Result<(), Error> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_txn_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    r.compare
        .iter()
        .try_for_each(|c| bounds(&c.key, &c.range_end))?;
    r.success
        .iter()
        .chain(&r.failure)
        // etcd's `checkRequestOp(u, maxTxnOps-opc)`: a nested txn gets what this level left
        // of the budget, which bounds the nesting depth by `--max-txn-ops`.
        .try_for_each(|op| request_op(op, max_txn_ops - ops))
}

fn request_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), Error> {
    match &op.request {
        Some(Request::RequestRange(r)) => range(r),
        Some(Request::RequestPut(r)) => put(r),
        Some(Request::RequestDeleteRange(r)) => delete_range(r),
        Some(Request::RequestTxn(r)) => txn_ops(r, max_txn_ops),
        None => Err(Error::KeyNotFound),
    }
}

/// A range bound longer than any key the store can hold cannot be looked up (the storage
/// engine refuses it), so it is refused here; etcd, with no key limit, serves such a read.
fn bounds(key: &[u8], range_end: &[u8]) -> Result<(), Error> {
    if key.len() > crate::mvcc::MAX_KEY_LEN || range_end.len() > crate::mvcc::MAX_KEY_LEN {
        return Err(Error::KeyTooLong);
    }
    Ok(())
}

/// Whether any op in the txn, at any depth, writes.
pub fn txn_writes(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => true,
            Some(Request::RequestTxn(t)) => txn_writes(t),
            _ => false,
        })
}

/// etcd's `isTxnSerializable`: every op of both branches is a serializable range (a
/// nested txn is not), so the txn may be served from local state without a barrier.
pub fn txn_serializable(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(&op.request, Some(Request::RequestRange(r)) if r.serializable))
}

/// Keys put and ranges deleted by one branch of a txn, including nested txns. A key may be
/// written once per txn: etcd refuses a second put, or a put into a deleted range, as a
/// duplicate, except that the two branches of a nested txn exclude each other.
#[derive(Default)]
struct Intervals {
    puts: HashSet<Vec<u8>>,
    dels: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Intervals {
    fn of(ops: &[RequestOp]) -> Result<Intervals, Error> {
        let mut this = Intervals::default();
        for op in ops {
            if let Some(Request::RequestDeleteRange(d)) = &op.request {
                this.dels.push((d.key.clone(), d.range_end.clone()));
            }
        }
        for op in ops {
            let Some(Request::RequestTxn(t)) = &op.request else {
                continue;
            };
            let then = Intervals::of(&t.success)?;
            let otherwise = Intervals::of(&t.failure)?;
            for k in &then.puts {
                this.add_put(k.clone())?;
            }
            for k in otherwise.puts.iter().filter(|k| !then.puts.contains(*k)) {
                this.add_put(k.clone())?;
            }
            this.dels.extend(then.dels);
            this.dels.extend(otherwise.dels);
        }
        for op in ops {
            if let Some(Request::RequestPut(p)) = &op.request {
                this.add_put(p.key.clone())?;
            }
        }
        Ok(this)
    }

    fn add_put(&mut self, key: Vec<u8>) -> Result<(), Error> {
        if self
            .dels
            .iter()
            .any(|(start, end)| in_range(&key, start, end))
            || !self.puts.insert(key)
        {
            return Err(Error::DuplicateKey);
        }
        Ok(())
    }
}

/// etcd's key-range convention: empty end is the single key, `\0` is everything from start.
fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::Compare;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }
    fn check(success: Vec<RequestOp>) -> Result<(), Error> {
        txn(
            &TxnRequest {
                success,
                ..Default::default()
            },
            128,
        )
    }

    #[test]
    fn duplicate_keys() {
        assert!(check(vec![put_op("a"), put_op("b")]).is_ok());
        assert!(matches!(
            check(vec![put_op("a"), put_op("a")]),
            Err(Error::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![del_op("a", "c"), put_op("b")]),
            Err(Error::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![del_op("a", "\0"), put_op("z")]),
            Err(Error::DuplicateKey)
        ));
        assert!(check(vec![del_op("a", "c"), put_op("c")]).is_ok());
        // The branches of a nested txn exclude each other...
        assert!(check(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]).is_ok());
        // ...but neither may repeat a key of the outer level.
        assert!(matches!(
            check(vec![put_op("a"), txn_op(vec![], vec![put_op("a")])]),
            Err(Error::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![del_op("a", ""), txn_op(vec![put_op("a")], vec![])]),
            Err(Error::DuplicateKey)
        ));
    }

    #[test]
    fn op_limits_and_empty_keys() {
        let many = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert!(matches!(check(many), Err(Error::TooManyOps)));
        let cmp = TxnRequest {
            compare: vec![Compare::default()],
            ..Default::default()
        };
        assert!(matches!(txn(&cmp, 128), Err(Error::EmptyKey)));
        assert!(matches!(check(vec![put_op("")]), Err(Error::EmptyKey)));
    }

    /// `depth` txns, each holding the next as its only op.
    fn chain(depth: usize) -> TxnRequest {
        let mut txn = TxnRequest {
            success: vec![put_op("k")],
            ..Default::default()
        };
        for _ in 1..depth {
            txn = TxnRequest {
                success: vec![txn_op(txn.success, txn.failure)],
                ..Default::default()
            };
        }
        txn
    }

    #[test]
    fn nesting_spends_the_op_budget_as_etcd() {
        // Measured on etcd 3.5.1 with the default 128: 128 levels pass, 129 do not.
        assert!(txn(&chain(128), 128).is_ok());
        assert!(matches!(txn(&chain(129), 128), Err(Error::TooManyOps)));
        // Each level spends its longest list: 2 ops at the top leave 1 of 3 for the two
        // levels below, which need 2.
        let mut top = chain(3);
        top.success.push(put_op("other"));
        assert!(matches!(txn(&top, 3), Err(Error::TooManyOps)));
        assert!(txn(&top, 4).is_ok());
    }

    #[test]
    fn the_deepest_txn_validates_on_a_worker_stack() {
        let depth = crate::proto::nesting::MAX_TXN_DEPTH;
        let worker = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let deepest = chain(depth);
                assert!(txn(&deepest, depth).is_ok());
                assert!(txn_writes(&deepest));
            })
            .expect("spawn");
        assert!(worker.join().is_ok());
    }

    #[test]
    fn only_txns_of_serializable_ranges_skip_the_barrier() {
        let get = |serializable| RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: "a".into(),
                serializable,
                ..Default::default()
            })),
        };
        let txn = |success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
            success,
            failure,
            ..Default::default()
        };
        assert!(txn_serializable(&txn(vec![get(true)], vec![get(true)])));
        assert!(txn_serializable(&txn(vec![], vec![])));
        assert!(!txn_serializable(&txn(vec![get(true)], vec![get(false)])));
        // As etcd's isTxnSerializable, a nested txn is not looked into.
        let nested = txn_op(vec![get(true)], vec![]);
        assert!(!txn_serializable(&txn(vec![nested], vec![])));
    }

    #[test]
    fn writes_are_found_at_any_depth() {
        let read = RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: "a".into(),
                ..Default::default()
            })),
        };
        assert!(!txn_writes(&TxnRequest {
            success: vec![read.clone()],
            ..Default::default()
        }));
        assert!(txn_writes(&TxnRequest {
            success: vec![read, txn_op(vec![], vec![put_op("x")])],
            ..Default::default()
        }));
    }
}

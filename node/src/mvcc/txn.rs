//! Transactions, as etcd's `applierV3backend.Txn` (apply.go) and `storeTxnWrite`
//! (kvstore_txn.go): compares of every (nested) txn are evaluated first against the state
//! before the txn, then the requests are checked, then the chosen ops run against the
//! snapshot plus the txn's own changes. Nothing is written here: the caller commits
//! [`TxnExec::changes`] in one batch.

use super::read::{self, KeyRange, Overlay, View};
use super::{codec, Keyspaces, MvccError};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use crate::storage::Snapshot;

/// One change of a txn, in sub-revision order.
pub(super) struct Change {
    /// The new version; for a delete only `key` and `mod_revision` are set (as etcd's
    /// delete events).
    pub kv: KeyValue,
    pub deleted: bool,
    /// The key's version before the txn, for watch events.
    pub prev: Option<KeyValue>,
    /// Where `kv_history` has the entry of `prev`, if `kv_latest` recorded it (see
    /// [`read::Live`]).
    pub prev_at: Option<codec::Rev>,
}

/// Operation counts, for etcd's mvcc counters.
#[derive(Default)]
pub(super) struct OpCounts {
    pub ranges: u64,
    pub puts: u64,
    pub deletes: u64,
}

/// A txn with its compares decided: the ops of the chosen branch, nested txns planned too.
struct Plan<'r> {
    succeeded: bool,
    ops: Vec<PlannedOp<'r>>,
}

enum PlannedOp<'r> {
    Range(&'r RangeRequest),
    Put(&'r PutRequest),
    DeleteRange(&'r DeleteRangeRequest),
    Txn(Plan<'r>),
    /// A RequestOp without a request: answered with an empty ResponseOp, as etcd.
    Empty,
}

/// A txn being evaluated against one snapshot.
pub(super) struct TxnExec<'a> {
    ks: &'a Keyspaces,
    snap: &'a Snapshot,
    /// Whether a lease id exists, for puts that attach one (the caller knows leases).
    lease_exists: &'a dyn Fn(i64) -> bool,
    begin_rev: i64,
    compact_rev: i64,
    overlay: Overlay,
    pub changes: Vec<Change>,
    /// Net number of live keys added.
    pub key_delta: i64,
    pub counts: OpCounts,
}

impl<'a> TxnExec<'a> {
    pub fn new(ks: &'a Keyspaces, snap: &'a Snapshot, begin_rev: i64, compact_rev: i64) -> Self {
        TxnExec {
            ks,
            snap,
            lease_exists: &|_| true,
            begin_rev,
            compact_rev,
            overlay: Overlay::new(),
            changes: Vec::new(),
            key_delta: 0,
            counts: OpCounts::default(),
        }
    }

    /// Refuses puts that attach a lease for which `lease_exists` is false.
    pub fn with_leases(self, lease_exists: &'a dyn Fn(i64) -> bool) -> Self {
        TxnExec {
            lease_exists,
            ..self
        }
    }

    /// The revision this txn writes at.
    pub fn write_rev(&self) -> i64 {
        self.begin_rev + 1
    }

    /// The latest state of every key the txn changed (`None` = deleted).
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// The revision the store is at as seen from inside the txn.
    fn rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }

    /// The state before the txn.
    fn before(&self) -> View<'_> {
        View {
            ks: self.ks,
            snap: self.snap,
            overlay: None,
            snap_rev: self.begin_rev,
            rev: self.begin_rev,
            compact_rev: self.compact_rev,
            // Not needed inside a txn: its ranges count by scanning.
            live_keys: None,
        }
    }

    /// The state including the txn's changes so far.
    fn now(&self) -> View<'_> {
        View {
            overlay: Some(&self.overlay),
            rev: self.rev(),
            ..self.before()
        }
    }

    /// Runs the whole txn. On error nothing has been applied (the caller discards `self`).
    pub fn run(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let plan = self.plan(req)?;
        // etcd checks every put of the chosen path, then every range, before running any op.
        plan.check(&mut |op| check_put(&self.before(), self.lease_exists, op))?;
        plan.check(&mut |op| check_range(&self.before(), op))?;
        let mut resp = self.apply(&plan)?;
        resp.header = Some(ResponseHeader {
            revision: self.rev(),
            ..Default::default()
        });
        Ok(resp)
    }

    /// etcd's `compareToPath`: every compare, nested ones included, sees the state before
    /// the txn.
    fn plan<'r>(&mut self, req: &'r TxnRequest) -> Result<Plan<'r>, MvccError> {
        let mut succeeded = true;
        for cmp in &req.compare {
            self.counts.ranges += 1;
            if !compare(&self.before(), cmp)? {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut ops = Vec::with_capacity(branch.len());
        for op in branch {
            ops.push(match &op.request {
                Some(Request::RequestRange(r)) => PlannedOp::Range(r),
                Some(Request::RequestPut(p)) => PlannedOp::Put(p),
                Some(Request::RequestDeleteRange(d)) => PlannedOp::DeleteRange(d),
                Some(Request::RequestTxn(inner)) => PlannedOp::Txn(self.plan(inner)?),
                None => PlannedOp::Empty,
            });
        }
        Ok(Plan { succeeded, ops })
    }

    fn apply(&mut self, plan: &Plan<'_>) -> Result<TxnResponse, MvccError> {
        let mut responses = Vec::with_capacity(plan.ops.len());
        for op in &plan.ops {
            let response = match op {
                PlannedOp::Range(r) => {
                    self.counts.ranges += 1;
                    Some(Response::ResponseRange(read::range(&self.now(), r)?))
                }
                PlannedOp::Put(p) => Some(Response::ResponsePut(self.put(p)?)),
                PlannedOp::DeleteRange(d) => {
                    Some(Response::ResponseDeleteRange(self.delete_range(d)?))
                }
                PlannedOp::Txn(inner) => Some(Response::ResponseTxn(self.apply(inner)?)),
                PlannedOp::Empty => None,
            };
            responses.push(ResponseOp { response });
        }
        // Nested txn responses keep an empty header, as etcd's `newTxnResp`; `run` sets
        // the top-level one.
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: plan.succeeded,
            responses,
        })
    }

    /// etcd's `applierV3backend.Put` inside a txn.
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, MvccError> {
        self.counts.puts += 1;
        if p.key.is_empty() || p.key.len() > codec::MAX_KEY_LEN {
            return Err(MvccError::InvalidKey(p.key.len()));
        }
        let existing = if p.ignore_value || p.ignore_lease || p.prev_kv {
            self.now().get(&p.key)?
        } else {
            None
        };
        let mut value = &p.value;
        let mut lease = p.lease;
        if p.ignore_value || p.ignore_lease {
            let Some(old) = &existing else {
                return Err(MvccError::KeyNotFound);
            };
            if p.ignore_value {
                value = &old.value;
            }
            if p.ignore_lease {
                lease = old.lease;
            }
        }
        let value = value.clone();
        self.write_put(&p.key, value, lease)?;
        Ok(PutResponse {
            header: Some(ResponseHeader {
                revision: self.write_rev(),
                ..Default::default()
            }),
            prev_kv: existing.filter(|_| p.prev_kv),
        })
    }

    /// etcd's `storeTxnWrite.put`: a key that exists keeps its create revision and gets
    /// the next version; otherwise a new generation starts at version 1.
    fn write_put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<(), MvccError> {
        let rev = self.write_rev();
        // One read of the committed version serves both: the version the txn supersedes
        // (unless an earlier op of this txn changed the key) and the one `kv_history` keeps.
        let (prev, prev_at) = self.committed(key)?;
        let current = match self.overlay.get(key) {
            Some(pending) => pending.as_ref(),
            None => prev.as_ref(),
        };
        let (create_revision, version) =
            current.map_or((rev, 0), |c| (c.create_revision, c.version));
        if current.is_none() {
            self.key_delta += 1;
        }
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: rev,
            version: version + 1,
            value,
            lease,
        };
        self.overlay.insert(key.to_vec(), Some(kv.clone()));
        self.changes.push(Change {
            kv,
            deleted: false,
            prev,
            prev_at,
        });
        Ok(())
    }

    /// The key's version before the txn and where `kv_history` has its entry.
    fn committed(&self, key: &[u8]) -> Result<(Option<KeyValue>, Option<codec::Rev>), MvccError> {
        Ok(match self.before().get_live(key)? {
            Some(live) => (Some(live.kv), live.at),
            None => (None, None),
        })
    }

    /// etcd's `applierV3backend.DeleteRange` inside a txn.
    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        self.counts.deletes += 1;
        let range = KeyRange::new(&d.key, &d.range_end);
        let found = self.now().range_keys(range, 0, 0, false)?.kvs;
        let rev = self.write_rev();
        for kv in &found {
            let (prev, prev_at) = self.committed(&kv.key)?;
            self.overlay.insert(kv.key.clone(), None);
            let tombstone = KeyValue {
                key: kv.key.clone(),
                mod_revision: rev,
                ..Default::default()
            };
            self.changes.push(Change {
                kv: tombstone,
                deleted: true,
                prev,
                prev_at,
            });
            self.key_delta -= 1;
        }
        let deleted = i64::try_from(found.len()).unwrap_or(i64::MAX);
        Ok(DeleteRangeResponse {
            // etcd reports the new revision once the txn has written anything at all.
            header: Some(ResponseHeader {
                revision: self.rev(),
                ..Default::default()
            }),
            deleted,
            prev_kvs: if d.prev_kv { found } else { Vec::new() },
        })
    }
}

impl Plan<'_> {
    /// etcd's `checkRequests`: applies `f` to every op of the plan, nested ones included.
    fn check(
        &self,
        f: &mut dyn FnMut(&PlannedOp<'_>) -> Result<(), MvccError>,
    ) -> Result<(), MvccError> {
        for op in &self.ops {
            match op {
                PlannedOp::Txn(inner) => inner.check(f)?,
                other => f(other)?,
            }
        }
        Ok(())
    }
}

/// etcd's `checkRequestPut`: the key must exist to keep its value or lease, then the
/// lease a put attaches must exist.
fn check_put(
    view: &View<'_>,
    lease_exists: &dyn Fn(i64) -> bool,
    op: &PlannedOp<'_>,
) -> Result<(), MvccError> {
    let PlannedOp::Put(p) = op else {
        return Ok(());
    };
    if (p.ignore_value || p.ignore_lease) && view.get(&p.key)?.is_none() {
        return Err(MvccError::KeyNotFound);
    }
    if p.lease != 0 && !lease_exists(p.lease) {
        return Err(MvccError::LeaseNotFound);
    }
    Ok(())
}

/// etcd's `checkRequestRange`, against the revisions before the txn.
fn check_range(view: &View<'_>, op: &PlannedOp<'_>) -> Result<(), MvccError> {
    match op {
        PlannedOp::Range(r) if r.revision != 0 => {
            if r.revision > view.rev {
                Err(MvccError::FutureRev)
            } else if r.revision < view.compact_rev {
                Err(MvccError::Compacted)
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// etcd's `applyCompare`: every key in the range must satisfy the compare; no key at all
/// compares as a zero KeyValue, except that a VALUE compare on missing keys always fails.
fn compare(view: &View<'_>, cmp: &Compare) -> Result<bool, MvccError> {
    let range = KeyRange::new(&cmp.key, &cmp.range_end);
    let kvs = view.range_keys(range, 0, 0, false)?.kvs;
    if kvs.is_empty() {
        return Ok(
            cmp.target != CompareTarget::Value as i32 && compare_kv(cmp, &KeyValue::default())
        );
    }
    Ok(kvs.iter().all(|kv| compare_kv(cmp, kv)))
}

/// etcd's `compareKV`. A target union of the wrong kind compares against 0 or "".
fn compare_kv(cmp: &Compare, kv: &KeyValue) -> bool {
    let int = |pick: fn(&TargetUnion) -> Option<i64>| {
        cmp.target_union.as_ref().and_then(pick).unwrap_or(0)
    };
    let order = match CompareTarget::try_from(cmp.target) {
        Ok(CompareTarget::Value) => {
            let want = match &cmp.target_union {
                Some(TargetUnion::Value(v)) => v.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int(|t| match t {
            TargetUnion::CreateRevision(n) => Some(*n),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int(|t| match t {
            TargetUnion::ModRevision(n) => Some(*n),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int(|t| match t {
            TargetUnion::Version(n) => Some(*n),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int(|t| match t {
            TargetUnion::Lease(n) => Some(*n),
            _ => None,
        })),
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(cmp.result) {
        Ok(CompareResult::Equal) => order.is_eq(),
        Ok(CompareResult::NotEqual) => order.is_ne(),
        Ok(CompareResult::Greater) => order.is_gt(),
        Ok(CompareResult::Less) => order.is_lt(),
        Err(_) => true,
    }
}

/// etcd's `isTxnReadonly`: no Put or DeleteRange anywhere, nested txns included.
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
            Some(Request::RequestTxn(inner)) => is_read_only(inner),
            _ => true,
        })
}

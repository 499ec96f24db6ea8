//! The raft state machine: applies committed commands to the MVCC store.
//!
//! Apply writes through [`Mvcc`] with no fsync; each write carries the apply marker (the
//! entry's log id and the last membership, bincode), which MVCC stores atomically with its
//! changes. On restart `applied_state` is read back from that marker, so openraft replays only
//! the log after it, and nothing is applied twice. The raft log's fsync covers MVCC writes
//! too: fjall has one journal, and an entry is applied only after it was made durable.
//!
//! Errors: MVCC's and the lessor's deterministic refusals (compacted, future revision,
//! unknown lease, ...) are results handed back to the proposer, the same on every member;
//! any other error is a storage failure and stops raft.
//!
//! Leases: a grant or revoke writes the lease table in the same batch as the apply marker
//! (a revoke also deletes the lease's keys there, as one txn of one revision); puts are
//! checked against the lessor's table, which only apply changes, so the check is the same
//! on every member.
//!
//! Snapshots: a snapshot is the local MVCC state as of `last_applied`, made durable by
//! `Store::sync` before openraft may purge the log behind it; its data is empty. Installing a
//! snapshot sent by a leader is multi-node work and fails with a clear error for now.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use serde::{Deserialize, Serialize};

use super::{
    blocking, decode, encode, Applied, InUse, Outcome, Proposal, RaftError, SnapshotData,
    TypeConfig,
};
use crate::lease::Lessor;
use crate::metrics;
use crate::mvcc::{Mvcc, MvccError};
use crate::proto::cairnpb::command::Cmd;
use crate::proto::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, RequestOp, ResponseHeader, TxnRequest,
};
use crate::storage::Store;

/// An apply slower than this counts in `etcd_server_slow_apply_total` (etcd's threshold).
const SLOW_APPLY: Duration = Duration::from_millis(100);

type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

/// Where apply has got to: what the MVCC apply marker encodes.
#[derive(Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
}

/// openraft's state machine over [`Mvcc`].
pub(super) struct StateMachine {
    store: Arc<Store>,
    mvcc: Arc<Mvcc>,
    lessor: Arc<Lessor>,
    state: AppliedState,
    /// The last snapshot built, kept in memory only: after a restart with a purged log,
    /// openraft asks for a fresh one, which is as good.
    snapshot: Arc<Mutex<Option<SnapshotMeta>>>,
    in_use: InUse,
}

impl StateMachine {
    pub(super) fn open(
        store: Arc<Store>,
        mvcc: Arc<Mvcc>,
        lessor: Arc<Lessor>,
        in_use: InUse,
    ) -> io::Result<StateMachine> {
        let marker = mvcc.applied_marker().map_err(io::Error::other)?;
        let state = marker.map(|m| decode(&m)).transpose()?.unwrap_or_default();
        Ok(StateMachine {
            store,
            mvcc,
            lessor,
            state,
            snapshot: Arc::default(),
            in_use,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        // An error here stops raft, so the state taken out need not be put back.
        let (mvcc, lessor) = (self.mvcc.clone(), self.lessor.clone());
        let state = std::mem::take(&mut self.state);
        let (state, replies) = blocking(move || apply_all(&mvcc, &lessor, state, entries)).await?;
        self.state = state;
        for (responder, outcome) in replies {
            responder.send(outcome);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            state: self.state.clone(),
            current: self.snapshot.clone(),
            _in_use: self.in_use.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        _snapshot: SnapshotData,
    ) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("installing a snapshot from the leader ({meta}) is not supported yet: cairn runs a single voter"),
        ))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, SnapshotData>>> {
        let current = self
            .snapshot
            .lock()
            .map_err(|_| io::Error::other("snapshot lock poisoned"))?;
        Ok(current
            .clone()
            .map(|meta| SnapshotOf::<TypeConfig, SnapshotData> {
                meta,
                snapshot: Vec::new(),
            }))
    }
}

type Replies = Vec<(ApplyResponder<TypeConfig>, Outcome)>;

/// Applies a batch in log order on a blocking thread; returns the new state and the replies.
fn apply_all(
    mvcc: &Mvcc,
    lessor: &Lessor,
    mut state: AppliedState,
    entries: Vec<EntryResponder<TypeConfig>>,
) -> io::Result<(AppliedState, Replies)> {
    let mut replies = Vec::new();
    for (entry, responder) in entries {
        state.last_applied = Some(entry.log_id);
        if let EntryPayload::Membership(m) = &entry.payload {
            state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
        }
        let marker = encode(&state)?;
        let started = Instant::now();
        let outcome = match &entry.payload {
            EntryPayload::Normal(proposal) => apply_command(mvcc, lessor, proposal, &marker)?,
            EntryPayload::Blank | EntryPayload::Membership(_) => no_change(mvcc, &marker)?,
        };
        if started.elapsed() > SLOW_APPLY {
            metrics::get().slow_apply.inc();
        }
        if let Some(responder) = responder {
            replies.push((responder, outcome));
        }
    }
    Ok((state, replies))
}

/// A command's effect: `Ok(Err(_))` is a deterministic refusal, `Err(_)` a storage failure.
type Applying = io::Result<Result<Applied, RaftError>>;

/// The one place a command meets the MVCC store and the lessor.
fn apply_command(
    mvcc: &Mvcc,
    lessor: &Lessor,
    Proposal(command): &Proposal,
    marker: &[u8],
) -> io::Result<Outcome> {
    let result = match &command.cmd {
        Some(Cmd::Txn(req)) => answer(
            mvcc.apply_txn_with(req, marker, &|id| lessor.contains(id), |_| {})
                .map(|(resp, events)| Applied::Txn(resp, events)),
        ),
        Some(Cmd::Compaction(req)) => {
            answer(mvcc.compact(req.revision, marker).map(Applied::Compaction))
        }
        Some(Cmd::LeaseGrant(req)) => lease_grant(mvcc, lessor, req, marker),
        Some(Cmd::LeaseRevoke(req)) => lease_revoke(mvcc, lessor, req, marker),
        None => return no_change(mvcc, marker),
    }?;
    if result.is_err() {
        // The refused command changed nothing, but the entry is applied all the same.
        no_change(mvcc, marker)?;
    }
    Ok(Outcome(Some(result)))
}

/// Sorts an MVCC result into answer and storage failure.
fn answer(result: Result<Applied, MvccError>) -> Applying {
    match result {
        Ok(applied) => Ok(Ok(applied)),
        Err(e) if e.is_answer() => Ok(Err(RaftError::Apply(e))),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// etcd's `applierV3backend.LeaseGrant`. The proposer chose the id and raised the TTL to
/// the minimum, so nothing here depends on this member's configuration.
fn lease_grant(mvcc: &Mvcc, lessor: &Lessor, req: &LeaseGrantRequest, marker: &[u8]) -> Applying {
    if let Err(e) = lessor.check_grant(req.id, req.ttl) {
        return Ok(Err(RaftError::Lease(e)));
    }
    mvcc.record_applied_with(marker, |batch| lessor.stage_grant(batch, req.id, req.ttl))
        .map_err(io::Error::other)?;
    lessor.granted(req.id, req.ttl);
    Ok(Ok(Applied::LeaseGrant(LeaseGrantResponse {
        header: Some(ResponseHeader {
            revision: mvcc.current_revision(),
            ..Default::default()
        }),
        id: req.id,
        ttl: req.ttl,
        error: String::new(),
    })))
}

/// etcd's `lessor.Revoke`: the attached keys, in key order, are deleted by one txn (one
/// revision, one event each) whose batch also removes the lease.
fn lease_revoke(mvcc: &Mvcc, lessor: &Lessor, req: &LeaseRevokeRequest, marker: &[u8]) -> Applying {
    if let Err(e) = lessor.check_revoke(req.id) {
        return Ok(Err(RaftError::Lease(e)));
    }
    let keys = mvcc.lease_keys(req.id).map_err(io::Error::other)?;
    let deletes = TxnRequest {
        success: keys
            .into_iter()
            .map(|key| RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key,
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    };
    let applied = mvcc.apply_txn_with(&deletes, marker, &|_| true, |batch| {
        lessor.stage_revoke(batch, req.id)
    });
    let (resp, events) = match applied {
        Ok(done) => done,
        Err(e) => return answer(Err(e)),
    };
    lessor.revoked(req.id);
    Ok(Ok(Applied::LeaseRevoke(
        LeaseRevokeResponse {
            header: resp.header,
        },
        events,
    )))
}

fn no_change(mvcc: &Mvcc, marker: &[u8]) -> io::Result<Outcome> {
    mvcc.record_applied(marker).map_err(io::Error::other)?;
    Ok(Outcome(None))
}

/// Builds a snapshot of the state machine as it was when the builder was made.
pub(super) struct SnapshotBuilder {
    store: Arc<Store>,
    state: AppliedState,
    current: Arc<Mutex<Option<SnapshotMeta>>>,
    _in_use: InUse,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
        // Everything up to `state.last_applied` was written before this builder was made;
        // one fsync makes it durable, after which openraft may purge the log up to it.
        let store = self.store.clone();
        blocking(move || store.sync().map_err(io::Error::other)).await?;
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
        };
        let mut current = self
            .current
            .lock()
            .map_err(|_| io::Error::other("snapshot lock poisoned"))?;
        *current = Some(meta.clone());
        Ok(SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: Vec::new(),
        })
    }
}

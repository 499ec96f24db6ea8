//! The raft state machine: applies committed commands to the MVCC store.
//!
//! Apply writes through [`Mvcc`] with no fsync; each write carries the apply marker (the
//! entry's log id, bincode), which MVCC stores atomically with its changes; a membership
//! entry also stores the new membership as MVCC's configuration record (member names and
//! URLs: hundreds of bytes that every write carried while the marker held them). On restart
//! `applied_state` is read back from the two, so openraft replays only the log after the
//! marker, and nothing is applied twice. MVCC lives in the store's state database,
//! which is not fsynced on apply: after a crash the marker may be behind the log, never
//! ahead (only fsynced entries are applied), and replaying the log repairs it.
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
//! Auth: an `AuthCommand` goes through the auth store's `prepare` (etcd's checks, the same
//! on every member), its writes join the apply batch with the marker, and its `commit`
//! makes the new state (and an authentication's simple token) visible after the batch.
//!
//! Snapshots (see [`super::snapshot`]): building one makes the state database durable
//! (one fsync) up to the marker, after which openraft may purge the log behind it, less
//! the catch-up tail. The current snapshot handed out to be sent is always this member's
//! state as it is now, pinned as a storage snapshot on the state machine worker, between
//! two applies, so its data matches its meta exactly; it is made durable first too.
//! Installing one from the leader replaces the MVCC state and the lease table through
//! [`Mvcc::install`], with the snapshot's log id as the new marker and its membership as
//! the configuration record; a pending install a crash interrupted is reported as the
//! current snapshot at start, so openraft installs it again.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use serde::{Deserialize, Serialize};

use super::snapshot::{self, SnapshotData};
use super::{blocking, decode, encode, Applied, InUse, Outcome, Proposal, RaftError, TypeConfig};
use crate::auth::{AuthError, AuthStore};
use crate::lease::Lessor;
use crate::metrics;
use crate::mvcc::snapshot::SnapshotSource;
use crate::mvcc::{Mvcc, MvccError};
use crate::proto::cairnpb::command::Cmd;
use crate::proto::cairnpb::AuthCommand;
use crate::proto::etcdserverpb::{
    request_op::Request, AlarmRequest, AlarmResponse, AlarmType, DeleteRangeRequest,
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, RequestOp, ResponseHeader, TxnRequest,
};
use crate::proto::mvccpb::Event;
use crate::storage::Store;
use crate::watch::WatchHub;

/// An apply slower than this counts in `etcd_server_slow_apply_total` (etcd's threshold).
const SLOW_APPLY: Duration = Duration::from_millis(100);

type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

/// Where apply has got to: the MVCC apply marker holds `last_applied`, the configuration
/// record `membership`.
#[derive(Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
}

impl AppliedState {
    /// The apply marker, stored with every applied entry.
    fn marker(&self) -> io::Result<Vec<u8>> {
        encode(&self.last_applied)
    }

    /// The configuration record, stored with the entries that change the membership.
    fn config(&self) -> io::Result<Vec<u8>> {
        encode(&self.membership)
    }

    /// Reads the state back. A store without a configuration record is fresh or was
    /// written by a cairn whose markers were the whole state (bincode of this struct); it
    /// gets the record at once, with a marker of the current form, in one batch: a marker
    /// is read as the log id alone only beside a record.
    fn load(mvcc: &Mvcc) -> io::Result<AppliedState> {
        let marker = mvcc.applied_marker().map_err(io::Error::other)?;
        let config = mvcc.applied_config().map_err(io::Error::other)?;
        let state = match (marker, config) {
            (Some(marker), Some(config)) => {
                return Ok(AppliedState {
                    last_applied: decode(&marker)?,
                    membership: decode(&config)?,
                })
            }
            (Some(whole), None) => decode(&whole)?,
            (None, _) => AppliedState::default(),
        };
        mvcc.record_applied_config(&state.marker()?, &state.config()?)
            .map_err(io::Error::other)?;
        Ok(state)
    }
}

/// openraft's state machine over [`Mvcc`].
pub(super) struct StateMachine {
    store: Arc<Store>,
    mvcc: Arc<Mvcc>,
    lessor: Arc<Lessor>,
    /// etcd's auth store: auth commands change it, in the apply batch.
    auth: Option<Arc<AuthStore>>,
    /// Told about every applied revision's events, in apply order.
    watch: Option<Arc<WatchHub>>,
    state: AppliedState,
    /// `state`'s last applied index, for `Status`: set before apply answers its clients,
    /// where openraft's metrics catch up later.
    applied_index: Arc<AtomicU64>,
    /// A received snapshot whose install a crash interrupted, until it is installed.
    pending: Option<(SnapshotMeta, PathBuf)>,
    /// Where received snapshots are kept (see [`super::snapshot`]).
    snap_dir: PathBuf,
    in_use: InUse,
}

impl StateMachine {
    pub(super) fn open(
        store: Arc<Store>,
        mvcc: Arc<Mvcc>,
        lessor: Arc<Lessor>,
        in_use: InUse,
        watch: Option<Arc<WatchHub>>,
    ) -> io::Result<StateMachine> {
        let state = AppliedState::load(&mvcc)?;
        let snap_dir = store.snap_dir().map_err(io::Error::other)?;
        snapshot::remove_parts(&snap_dir)?;
        let pending = match snapshot::pending(&snap_dir)? {
            Some((meta, file)) => {
                let meta: SnapshotMeta = decode(&meta)?;
                if meta.last_log_id > state.last_applied {
                    tracing::warn!(snapshot = %meta, "a snapshot install was interrupted; installing it again");
                    Some((meta, file))
                } else {
                    snapshot::clear_pending(&snap_dir)?;
                    None
                }
            }
            None => None,
        };
        Ok(StateMachine {
            store,
            mvcc,
            lessor,
            auth: None,
            watch,
            applied_index: Arc::new(AtomicU64::new(index_of(&state))),
            state,
            pending,
            snap_dir,
            in_use,
        })
    }

    /// The last applied index, kept current by apply and snapshot installs.
    pub(super) fn applied_index(&self) -> Arc<AtomicU64> {
        self.applied_index.clone()
    }

    fn set_state(&mut self, state: AppliedState) {
        self.applied_index
            .store(index_of(&state), Ordering::Release);
        self.state = state;
    }

    /// Applies auth commands to `auth` (without one they are refused).
    pub(super) fn with_auth(mut self, auth: Option<Arc<AuthStore>>) -> StateMachine {
        self.auth = auth;
        self
    }

    /// This member's state now, pinned, durable, with its meta.
    async fn current(&self) -> io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
        let source = self.mvcc.snapshot_source().map_err(io::Error::other)?;
        let store = self.store.clone();
        blocking(move || store.sync().map_err(io::Error::other)).await?;
        Ok(SnapshotOf::<TypeConfig, SnapshotData> {
            meta: self.state.meta(),
            snapshot: SnapshotData::Local(Box::new(source)),
        })
    }
}

impl AppliedState {
    fn meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
        }
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
        let parts = Parts {
            mvcc: self.mvcc.clone(),
            lessor: self.lessor.clone(),
            auth: self.auth.clone(),
            watch: self.watch.clone(),
            applied_index: self.applied_index.clone(),
        };
        let state = std::mem::take(&mut self.state);
        let state = if is_cheap(&entries) {
            // A few small txns take microseconds: a hop to a blocking thread and back would
            // cost more than the work.
            apply_all(&parts, state, entries)?
        } else {
            blocking(move || apply_all(&parts, state, entries)).await?
        };
        self.set_state(state);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            // Pinned here, between two applies, so the data matches `state`.
            source: self.mvcc.snapshot_source().map_err(|e| e.to_string()),
            state: self.state.clone(),
            _in_use: self.in_use.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let SnapshotData::Received(file) = snapshot else {
            return Err(io::Error::other(
                "a member's own state cannot be installed as a snapshot",
            ));
        };
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let (encoded_meta, marker, config) = (encode(meta)?, state.marker()?, state.config()?);
        let (mvcc, lessor, dir) = (
            self.mvcc.clone(),
            self.lessor.clone(),
            self.snap_dir.clone(),
        );
        let auth = self.auth.clone();
        let started = Instant::now();
        let revision = blocking(move || {
            let pending = snapshot::commit(&dir, &encoded_meta, &file)?;
            let restored = mvcc
                .install(&pending, &marker, &config)
                .map_err(io::Error::other)?;
            lessor.reload().map_err(io::Error::other)?;
            if let Some(auth) = &auth {
                auth.reload().map_err(io::Error::other)?;
            }
            snapshot::clear_pending(&dir)?;
            Ok(restored.revision)
        })
        .await?;
        tracing::info!(snapshot = %meta, revision, elapsed = ?started.elapsed(), "installed a snapshot from the leader");
        if let Some(hub) = &self.watch {
            hub.restored(revision);
        }
        self.set_state(state);
        self.pending = None;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, SnapshotData>>> {
        if let Some((meta, file)) = &self.pending {
            return Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
                meta: meta.clone(),
                snapshot: SnapshotData::Received(file.clone()),
            }));
        }
        self.current().await.map(Some)
    }
}

type Replies = Vec<(ApplyResponder<TypeConfig>, Outcome)>;

/// Most operations a batch may hold and still be applied on the async runtime.
const CHEAP_OPS: usize = 256;

/// Whether applying `entries` is bounded small work: txns of point operations only. Range
/// deletes, compactions and lease revokes can touch any number of keys.
fn is_cheap(entries: &[EntryResponder<TypeConfig>]) -> bool {
    let mut ops = 0;
    entries.iter().all(|(entry, _)| match &entry.payload {
        EntryPayload::Normal(Proposal(command)) => match &command.cmd {
            Some(Cmd::Txn(txn)) => {
                ops += txn.success.len() + txn.failure.len() + txn.compare.len();
                ops <= CHEAP_OPS && txn.success.iter().chain(&txn.failure).all(is_point_op)
            }
            Some(Cmd::LeaseGrant(_)) | Some(Cmd::LeaseCheckpoint(_)) | None => true,
            // Auth state is small; only bcrypt is slow, and the proposer ran it.
            Some(Cmd::Auth(_)) | Some(Cmd::Alarm(_)) => true,
            Some(Cmd::Compaction(_)) | Some(Cmd::LeaseRevoke(_)) => false,
        },
        EntryPayload::Blank | EntryPayload::Membership(_) => true,
    })
}

fn is_point_op(op: &RequestOp) -> bool {
    match &op.request {
        Some(Request::RequestPut(_)) | None => true,
        Some(Request::RequestDeleteRange(d)) => d.range_end.is_empty(),
        // Reads inside a txn may scan a range; nested txns may hold anything.
        Some(Request::RequestRange(r)) => r.range_end.is_empty(),
        Some(Request::RequestTxn(_)) => false,
    }
}

/// What apply writes to and tells.
struct Parts {
    mvcc: Arc<Mvcc>,
    lessor: Arc<Lessor>,
    auth: Option<Arc<AuthStore>>,
    watch: Option<Arc<WatchHub>>,
    /// Set before replies leave, so a client that heard back sees its entry applied.
    applied_index: Arc<AtomicU64>,
}

fn index_of(state: &AppliedState) -> u64 {
    state.last_applied.as_ref().map_or(0, |l| l.index())
}

/// Replies leave after at most this many applied entries. openraft hands apply every entry
/// committed since the last call: under load a whole wave of clients, ~1 ms of work at 64
/// clients. Answered only at the end, every client waited for the last one, then all sent
/// their next request at once, and the fsync and apply stages took turns instead of
/// overlapping. Released in chunks, the first clients' next requests reach the log while
/// the rest is applied.
const RELEASE_EVERY: usize = 8;

/// Applies a batch in log order; returns the new state. Replies leave in chunks
/// ([`RELEASE_EVERY`]), each after its entries' watch events were handed to the hub.
fn apply_all(
    parts: &Parts,
    mut state: AppliedState,
    entries: Vec<EntryResponder<TypeConfig>>,
) -> io::Result<AppliedState> {
    let mut done = Unreleased::default();
    for (entry, responder) in entries {
        state.last_applied = Some(entry.log_id);
        let marker = state.marker()?;
        let started = Instant::now();
        let outcome = match &entry.payload {
            EntryPayload::Normal(proposal) => {
                apply_command(parts, proposal, entry.log_id.index(), &marker)?
            }
            EntryPayload::Blank => no_change(&parts.mvcc, &marker)?,
            EntryPayload::Membership(m) => {
                state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                (parts.mvcc)
                    .record_applied_config(&marker, &state.config()?)
                    .map_err(io::Error::other)?;
                Outcome(None)
            }
        };
        if started.elapsed() > SLOW_APPLY {
            metrics::get().slow_apply.inc();
        }
        if let Outcome(Some(Ok(applied))) = &outcome {
            if parts.watch.is_some() && !applied.events().is_empty() {
                done.revisions.push(applied.events().to_vec());
            }
        }
        if let Some(responder) = responder {
            done.replies.push((responder, outcome));
        }
        if done.replies.len() >= RELEASE_EVERY {
            done.release(parts, &state);
        }
    }
    done.release(parts, &state);
    Ok(state)
}

/// Applied entries whose watchers and proposers were not told yet.
#[derive(Default)]
struct Unreleased {
    /// Each revision's events, in apply order.
    revisions: Vec<Vec<Event>>,
    replies: Replies,
}

impl Unreleased {
    /// Committed: watchers may see them now, in apply order, before any client hears back.
    fn release(&mut self, parts: &Parts, state: &AppliedState) {
        parts
            .applied_index
            .store(index_of(state), Ordering::Release);
        if let Some(hub) = &parts.watch {
            hub.notify(std::mem::take(&mut self.revisions));
        }
        for (responder, outcome) in self.replies.drain(..) {
            responder.send(outcome);
        }
    }
}

/// A command's effect: `Ok(Err(_))` is a deterministic refusal, `Err(_)` a storage failure.
type Applying = io::Result<Result<Applied, RaftError>>;

/// The one place a command meets the MVCC store, the lessor and the auth store.
fn apply_command(
    parts: &Parts,
    Proposal(command): &Proposal,
    index: u64,
    marker: &[u8],
) -> io::Result<Outcome> {
    let (mvcc, lessor) = (&*parts.mvcc, &*parts.lessor);
    if let Some(refusal) = refused_by_alarm(mvcc, command.cmd.as_ref()) {
        no_change(mvcc, marker)?;
        return Ok(Outcome(Some(Err(refusal))));
    }
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
        Some(Cmd::LeaseCheckpoint(req)) => lease_checkpoint(mvcc, lessor, req, marker),
        Some(Cmd::Auth(req)) => auth(mvcc, parts.auth.as_deref(), req, index, marker),
        Some(Cmd::Alarm(req)) => alarm(mvcc, req, marker),
        None => return no_change(mvcc, marker),
    }?;
    if result.is_err() {
        // The refused command changed nothing, but the entry is applied all the same.
        no_change(mvcc, marker)?;
    }
    Ok(Outcome(Some(result)))
}

/// etcd's alarm appliers: with CORRUPT raised (`applierV3Corrupt`) every KV write,
/// compaction and lease grant or revoke is refused; with NOSPACE raised
/// (`applierV3Capped`) txns that put and lease grants are. Alarm and auth commands pass,
/// so `alarm disarm` works; deletes and compaction pass NOSPACE, which they relieve. The
/// list is the same on every member at a given log index, so is the refusal.
fn refused_by_alarm(mvcc: &Mvcc, cmd: Option<&Cmd>) -> Option<RaftError> {
    let writes = matches!(
        cmd,
        Some(Cmd::Txn(_) | Cmd::Compaction(_) | Cmd::LeaseGrant(_) | Cmd::LeaseRevoke(_))
    );
    if writes && mvcc.alarm_raised(AlarmType::Corrupt) {
        return Some(RaftError::Corrupt);
    }
    let grows = match cmd {
        Some(Cmd::Txn(txn)) => puts(txn),
        Some(Cmd::LeaseGrant(_)) => true,
        _ => false,
    };
    (grows && mvcc.alarm_raised(AlarmType::Nospace)).then_some(RaftError::NoSpace)
}

/// etcd's quota cost of a txn is above 0 exactly when either branch has a put at its top
/// level (`costTxn`).
fn puts(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| matches!(op.request, Some(Request::RequestPut(_))))
}

/// etcd's `applierV3backend.Alarm`, logging as etcd does when the first alarm of a type is
/// raised or the last cleared.
fn alarm(mvcc: &Mvcc, req: &AlarmRequest, marker: &[u8]) -> Applying {
    let change = mvcc.apply_alarm(req, marker).map_err(io::Error::other)?;
    let name = |a: i32| AlarmType::try_from(a).map_or("UNKNOWN", |a| a.as_str_name());
    if let Some(m) = &change.raised {
        tracing::warn!(alarm = name(m.alarm), from = %format_args!("{:x}", m.member_id), "alarm raised");
    }
    if let Some(m) = &change.disarmed {
        tracing::warn!(alarm = name(m.alarm), from = %format_args!("{:x}", m.member_id), "alarm disarmed");
    }
    Ok(Ok(Applied::Alarm(AlarmResponse {
        header: Some(ResponseHeader {
            revision: mvcc.current_revision(),
            ..Default::default()
        }),
        alarms: change.alarms,
    })))
}

/// Sorts an MVCC result into answer and storage failure.
fn answer(result: Result<Applied, MvccError>) -> Applying {
    match result {
        Ok(applied) => Ok(Ok(applied)),
        Err(e) if e.is_answer() => Ok(Err(RaftError::Apply(e))),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// etcd's auth store changes (and authentications): the new auth state joins the apply
/// batch; the in-memory state and the token table change once it committed.
fn auth(
    mvcc: &Mvcc,
    auth: Option<&AuthStore>,
    req: &AuthCommand,
    index: u64,
    marker: &[u8],
) -> Applying {
    let Some(auth) = auth else {
        return Ok(Err(RaftError::Auth(AuthError::AuthNotEnabled)));
    };
    let change = match auth.prepare(req) {
        Ok(change) => change,
        Err(e) => return Ok(Err(RaftError::Auth(e))),
    };
    mvcc.record_applied_with(marker, |batch| auth.stage(batch, &change))
        .map_err(io::Error::other)?;
    Ok(Ok(Applied::Auth(auth.commit(change, index))))
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

/// etcd's `applierV3backend.LeaseCheckpoint`: records the leader's remaining TTLs; leases
/// revoked meanwhile are skipped.
fn lease_checkpoint(
    mvcc: &Mvcc,
    lessor: &Lessor,
    req: &LeaseCheckpointRequest,
    marker: &[u8],
) -> Applying {
    let checkpoints: Vec<(i64, i64)> = req
        .checkpoints
        .iter()
        .map(|c| (c.id, c.remaining_ttl))
        .collect();
    mvcc.record_applied_with(marker, |batch| {
        lessor.stage_checkpoints(batch, &checkpoints)
    })
    .map_err(io::Error::other)?;
    lessor.checkpointed(&checkpoints);
    Ok(Ok(Applied::LeaseCheckpoint(LeaseCheckpointResponse {
        header: Some(ResponseHeader {
            revision: mvcc.current_revision(),
            ..Default::default()
        }),
    })))
}

fn no_change(mvcc: &Mvcc, marker: &[u8]) -> io::Result<Outcome> {
    mvcc.record_applied(marker).map_err(io::Error::other)?;
    Ok(Outcome(None))
}

/// Builds a snapshot of the state machine as it was when the builder was made.
pub(super) struct SnapshotBuilder {
    store: Arc<Store>,
    source: Result<SnapshotSource, String>,
    state: AppliedState,
    _in_use: InUse,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
        // Everything up to `state.last_applied` was written before this builder was made;
        // one fsync makes it durable, after which openraft may purge the log up to it.
        let source = std::mem::replace(&mut self.source, Err("already built".into()))
            .map_err(io::Error::other)?;
        let store = self.store.clone();
        let started = Instant::now();
        blocking(move || store.sync().map_err(io::Error::other)).await?;
        metrics::get()
            .snap_save_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(SnapshotOf::<TypeConfig, SnapshotData> {
            meta: self.state.meta(),
            snapshot: SnapshotData::Local(Box::new(source)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lease::{LeaseError, LessorConfig};
    use crate::proto::cairnpb::Command;
    use crate::proto::etcdserverpb::{PutRequest, RangeRequest};
    use crate::proto::mvccpb::event::EventType;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        mvcc: Arc<Mvcc>,
        lessor: Arc<Lessor>,
    }

    fn open() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let mvcc = Arc::new(Mvcc::open(store.clone()).expect("mvcc"));
        let lessor = Arc::new(Lessor::open(&store, config()).expect("lessor"));
        Fixture {
            _dir: dir,
            store,
            mvcc,
            lessor,
        }
    }

    fn parts(mvcc: &Arc<Mvcc>, lessor: &Arc<Lessor>) -> Parts {
        Parts {
            mvcc: mvcc.clone(),
            lessor: lessor.clone(),
            auth: None,
            watch: None,
            applied_index: Arc::default(),
        }
    }

    fn config() -> LessorConfig {
        LessorConfig::new(Duration::from_millis(100), Duration::from_millis(1000), 1)
    }

    fn apply(f: &Fixture, cmd: Cmd) -> Result<Applied, RaftError> {
        let proposal = Proposal(Command { cmd: Some(cmd) });
        let Outcome(result) =
            apply_command(&parts(&f.mvcc, &f.lessor), &proposal, 1, b"m").expect("apply");
        result.expect("a command has a result")
    }

    fn grant(id: i64, ttl: i64) -> Cmd {
        Cmd::LeaseGrant(LeaseGrantRequest { id, ttl })
    }

    fn revoke(id: i64) -> Cmd {
        Cmd::LeaseRevoke(LeaseRevokeRequest { id })
    }

    fn put(key: &str, lease: i64) -> Cmd {
        let put = PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        };
        Cmd::Txn(TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestPut(put)),
            }],
            ..Default::default()
        })
    }

    fn count(mvcc: &Mvcc, revision: i64) -> i64 {
        let req = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            count_only: true,
            ..Default::default()
        };
        mvcc.range(&req).expect("range").count
    }

    #[test]
    fn revoke_deletes_every_attached_key_in_one_revision() {
        let f = open();
        assert!(
            matches!(apply(&f, grant(7, 60)), Ok(Applied::LeaseGrant(r)) if r.id == 7 && r.ttl == 60)
        );
        for key in ["c", "a", "b"] {
            apply(&f, put(key, 7)).expect("put");
        }
        apply(&f, put("other", 0)).expect("put");
        let before = f.mvcc.current_revision();
        let Ok(Applied::LeaseRevoke(resp, events)) = apply(&f, revoke(7)) else {
            panic!("revoke failed");
        };
        let rev = resp.header.map_or(0, |h| h.revision);
        assert_eq!(rev, before + 1, "one revision for all the deletes");
        let keys: Vec<&[u8]> = events
            .iter()
            .filter_map(|e| e.kv.as_ref())
            .map(|kv| kv.key.as_slice())
            .collect();
        assert_eq!(keys, [&b"a"[..], b"b", b"c"]);
        assert!(events.iter().all(|e| e.r#type == EventType::Delete as i32
            && e.kv.as_ref().is_some_and(|kv| kv.mod_revision == rev)));
        assert_eq!((count(&f.mvcc, rev - 1), count(&f.mvcc, rev)), (4, 1));
        assert!(!f.lessor.contains(7));
        assert!(f.mvcc.lease_keys(7).expect("keys").is_empty());
        // A lease with no keys is revoked without a new revision.
        apply(&f, grant(8, 60)).expect("grant");
        let Ok(Applied::LeaseRevoke(resp, events)) = apply(&f, revoke(8)) else {
            panic!("revoke failed");
        };
        assert_eq!(
            (resp.header.map_or(0, |h| h.revision), events.len()),
            (rev, 0)
        );
    }

    #[test]
    fn lease_refusals_change_nothing() {
        let f = open();
        apply(&f, grant(7, 60)).expect("grant");
        let rev = f.mvcc.current_revision();
        let refused = [
            (grant(7, 60), "exists"),
            (grant(9, crate::lease::MAX_LEASE_TTL + 1), "too large"),
            (revoke(9), "not found"),
            (put("k", 9), "put with an unknown lease"),
        ];
        for (cmd, what) in refused {
            let result = apply(&f, cmd);
            assert!(
                matches!(
                    result,
                    Err(RaftError::Lease(_)) | Err(RaftError::Apply(MvccError::LeaseNotFound))
                ),
                "{what}: {:?}",
                result.err()
            );
        }
        assert!(matches!(
            apply(&f, revoke(9)),
            Err(RaftError::Lease(LeaseError::NotFound))
        ));
        assert_eq!(f.mvcc.current_revision(), rev);
        assert!(f.lessor.contains(7) && !f.lessor.contains(9));
    }

    #[test]
    fn leases_and_their_keys_survive_reopening() {
        let f = open();
        apply(&f, grant(7, 60)).expect("grant");
        apply(&f, put("k", 7)).expect("put");
        let Fixture {
            _dir,
            store,
            mvcc,
            lessor,
        } = f;
        drop((mvcc, lessor));
        let f = Fixture {
            mvcc: Arc::new(Mvcc::open(store.clone()).expect("reopen mvcc")),
            lessor: Arc::new(Lessor::open(&store, config()).expect("reopen lessor")),
            store,
            _dir,
        };
        assert!(f.lessor.contains(7));
        f.lessor.promote();
        let ttl = f.lessor.time_to_live(7).expect("primary").expect("exists");
        // The full TTL again, plus the election timeout (1 s), as etcd after a restart.
        assert!((60..=61).contains(&ttl.remaining), "{ttl:?}");
        assert_eq!(f.mvcc.lease_keys(7).expect("keys"), [b"k".to_vec()]);
        let Ok(Applied::LeaseRevoke(_, events)) = apply(&f, revoke(7)) else {
            panic!("revoke failed");
        };
        assert_eq!(events.len(), 1);
    }

    /// A member's state machine over its own store, with the apply marker at index 5.
    struct Member {
        _dir: tempfile::TempDir,
        mvcc: Arc<Mvcc>,
        lessor: Arc<Lessor>,
        sm: StateMachine,
    }

    fn log_id(index: u64) -> LogIdOf<TypeConfig> {
        openraft::testing::log_id::<TypeConfig>(1, 1, index)
    }

    /// Opens a member whose store holds `keys` (applied under the marker of index 5) and
    /// lease 7.
    fn member(keys: &[&str]) -> Member {
        let Fixture {
            _dir: dir,
            store,
            mvcc,
            lessor,
        } = open();
        let marker = AppliedState {
            last_applied: Some(log_id(5)),
            ..Default::default()
        }
        .marker()
        .expect("marker");
        // As opening a state machine does first.
        AppliedState::load(&mvcc).expect("load");
        let run = |cmd| {
            let proposal = Proposal(Command { cmd: Some(cmd) });
            apply_command(&parts(&mvcc, &lessor), &proposal, 5, &marker).expect("apply")
        };
        run(grant(7, 60));
        for key in keys {
            run(put(key, 7));
        }
        let sm = reopen(store, mvcc.clone(), lessor.clone());
        Member {
            _dir: dir,
            mvcc,
            lessor,
            sm,
        }
    }

    fn reopen(store: Arc<Store>, mvcc: Arc<Mvcc>, lessor: Arc<Lessor>) -> StateMachine {
        StateMachine::open(store, mvcc, lessor, InUse::new().0, None).expect("state machine")
    }

    /// The source's current snapshot, written out as a received file would be.
    async fn received(source: &mut Member, dir: &std::path::Path) -> (SnapshotMeta, PathBuf) {
        let snap = source
            .sm
            .get_current_snapshot()
            .await
            .expect("snapshot")
            .expect("there is one");
        let path = dir.join("incoming-test.part");
        let file = std::fs::File::create(&path).expect("file");
        match snap.snapshot {
            SnapshotData::Local(data) => data.write_to(file).expect("write"),
            SnapshotData::Received(_) => panic!("a member's own state is local"),
        };
        (snap.meta, path)
    }

    fn all(mvcc: &Mvcc) -> Vec<(Vec<u8>, i64, i64)> {
        let req = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        let resp = mvcc.range(&req).expect("range");
        resp.kvs
            .into_iter()
            .map(|kv| (kv.key, kv.mod_revision, kv.lease))
            .collect()
    }

    type Entry = openraft::alias::EntryOf<TypeConfig>;

    fn membership(at: u64, names: &[&str]) -> StoredMembershipOf<TypeConfig> {
        let nodes = (1..).zip(names).map(|(id, name)| {
            let info = super::super::MemberInfo {
                name: name.to_string(),
                peer_urls: vec![format!("http://{name}:2380")],
                client_urls: vec![format!("http://{name}:2379")],
            };
            (id, info)
        });
        let nodes: std::collections::BTreeMap<_, _> = nodes.collect();
        let voters = std::collections::BTreeSet::from_iter(nodes.keys().copied());
        let m = openraft::Membership::new(vec![voters], nodes).expect("membership");
        StoredMembership::new(Some(log_id(at)), m)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_membership_outlives_the_entries_after_it() {
        let mut target = member(&[]);
        let grown = membership(6, &["a", "b", "c"]);
        let entries = vec![
            Entry {
                log_id: log_id(6),
                payload: EntryPayload::Membership(grown.membership().clone()),
            },
            Entry {
                log_id: log_id(7),
                payload: EntryPayload::Normal(Proposal(Command {
                    cmd: Some(put("k", 0)),
                })),
            },
            Entry {
                log_id: log_id(8),
                payload: EntryPayload::Blank,
            },
        ];
        let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        target.sm.apply(stream).await.expect("apply");
        let store = target.sm.store.clone();
        drop(target.sm);
        let mut sm = reopen(store, target.mvcc.clone(), target.lessor.clone());
        let (applied, stored) = sm.applied_state().await.expect("applied");
        assert_eq!(applied, Some(log_id(8)));
        assert_eq!(stored, grown);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_marker_holding_the_whole_state_is_read_and_rewritten() {
        let Fixture {
            _dir,
            store,
            mvcc,
            lessor,
        } = open();
        let old = AppliedState {
            last_applied: Some(log_id(9)),
            membership: membership(3, &["a"]),
        };
        // As an older cairn left its store: the whole state in the marker, and no record.
        mvcc.record_applied(&encode(&old).expect("encode"))
            .expect("record");
        for _ in 0..2 {
            let mut sm = reopen(store.clone(), mvcc.clone(), lessor.clone());
            let (applied, stored) = sm.applied_state().await.expect("applied");
            assert_eq!(applied, old.last_applied);
            assert_eq!(stored, old.membership);
            let marker = mvcc.applied_marker().expect("marker").expect("stored");
            assert_eq!(marker, old.marker().expect("encode"), "the log id alone");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_replaces_another_members_state_whole() {
        let mut source = member(&["a", "b", "c"]);
        let mut target = member(&["stale"]);
        let (meta, file) = received(&mut source, &target.sm.snap_dir).await;
        assert_eq!(meta.last_log_id, Some(log_id(5)));
        target
            .sm
            .install_snapshot(&meta, SnapshotData::Received(file.clone()))
            .await
            .expect("install");
        assert_eq!(all(&target.mvcc), all(&source.mvcc));
        assert_eq!(
            target.mvcc.current_revision(),
            source.mvcc.current_revision()
        );
        assert_eq!(
            target.mvcc.hash_kv(0).expect("hash"),
            source.mvcc.hash_kv(0).expect("hash")
        );
        assert_eq!(target.lessor.leases(), vec![7]);
        let (applied, _) = target.sm.applied_state().await.expect("applied");
        assert_eq!(applied, meta.last_log_id);
        assert!(
            !file.exists(),
            "moved into place, then removed once installed"
        );
        assert!(snapshot::pending(&target.sm.snap_dir)
            .expect("read")
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_a_crash_cut_short_is_redone_at_start() {
        let mut source = member(&["a", "b"]);
        let target = member(&["stale"]);
        let dir = target.sm.snap_dir.clone();
        let (mut meta, file) = received(&mut source, &dir).await;
        // The leader's snapshot is ahead of this member's marker, as it is when one is sent.
        meta.last_log_id = Some(log_id(9));
        // Crash right after the commit point: the old state is still in place.
        snapshot::commit(&dir, &encode(&meta).expect("meta"), &file).expect("commit");
        let store = target.sm.store.clone();
        drop(target.sm);
        let mut sm = reopen(store, target.mvcc.clone(), target.lessor.clone());
        let pending = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("pending");
        assert_eq!(
            pending.meta, meta,
            "the pending snapshot is the current one"
        );
        // What openraft does at start with a current snapshot ahead of the marker.
        sm.install_snapshot(&pending.meta, pending.snapshot)
            .await
            .expect("install again");
        assert_eq!(all(&target.mvcc), all(&source.mvcc));
        assert!(snapshot::pending(&dir).expect("read").is_none());
        let again = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("current");
        assert_eq!(again.meta.last_log_id, Some(log_id(9)));
        assert!(matches!(again.snapshot, SnapshotData::Local(_)));
    }
}

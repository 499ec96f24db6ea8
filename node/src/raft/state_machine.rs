//! The raft state machine: applies committed commands to the MVCC store.
//!
//! Apply writes through [`Mvcc`] with no fsync; each write carries the apply marker (the
//! entry's log id and the last membership, bincode), which MVCC stores atomically with its
//! changes. On restart `applied_state` is read back from that marker, so openraft replays only
//! the log after it, and nothing is applied twice. The raft log's fsync covers MVCC writes
//! too: fjall has one journal, and an entry is applied only after it was made durable.
//!
//! Errors: MVCC's deterministic refusals (compacted, future revision) are results handed back
//! to the proposer, the same on every member; any other MVCC error is a storage failure and
//! stops raft.
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
    blocking, decode, encode, Applied, InUse, Outcome, Proposal, SnapshotData, TypeConfig,
};
use crate::metrics;
use crate::mvcc::Mvcc;
use crate::proto::cairnpb::command::Cmd;
use crate::storage::Store;
use crate::watch::WatchHub;

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
    state: AppliedState,
    /// The last snapshot built, kept in memory only: after a restart with a purged log,
    /// openraft asks for a fresh one, which is as good.
    snapshot: Arc<Mutex<Option<SnapshotMeta>>>,
    in_use: InUse,
    watch: Option<Arc<WatchHub>>,
}

impl StateMachine {
    pub(super) fn open(
        store: Arc<Store>,
        mvcc: Arc<Mvcc>,
        in_use: InUse,
        watch: Option<Arc<WatchHub>>,
    ) -> io::Result<StateMachine> {
        let marker = mvcc.applied_marker().map_err(io::Error::other)?;
        let state = marker.map(|m| decode(&m)).transpose()?.unwrap_or_default();
        Ok(StateMachine {
            store,
            mvcc,
            state,
            snapshot: Arc::default(),
            in_use,
            watch,
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
        let (mvcc, state) = (self.mvcc.clone(), std::mem::take(&mut self.state));
        let watch = self.watch.clone();
        let (state, replies) =
            blocking(move || apply_all(&mvcc, watch.as_deref(), state, entries)).await?;
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
    watch: Option<&WatchHub>,
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
            EntryPayload::Normal(proposal) => apply_command(mvcc, watch, proposal, &marker)?,
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

/// The one place a command meets the MVCC store.
fn apply_command(
    mvcc: &Mvcc,
    watch: Option<&WatchHub>,
    Proposal(command): &Proposal,
    marker: &[u8],
) -> io::Result<Outcome> {
    let result = match &command.cmd {
        Some(Cmd::Txn(req)) => mvcc.apply_txn(req, marker).map(|(resp, events)| {
            // Committed: watchers may see it now, in apply order.
            if let Some(hub) = watch {
                hub.notify(&events);
            }
            Applied::Txn(resp, events)
        }),
        Some(Cmd::Compaction(req)) => mvcc.compact(req.revision, marker).map(Applied::Compaction),
        None => return no_change(mvcc, marker),
    };
    match result {
        Ok(applied) => Ok(Outcome(Some(Ok(applied)))),
        Err(e) if e.is_answer() => {
            // The refused command changed nothing, but the entry is applied all the same.
            no_change(mvcc, marker)?;
            Ok(Outcome(Some(Err(e))))
        }
        Err(e) => Err(io::Error::other(e)),
    }
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

//! `--force-new-cluster`: before openraft starts, rewrite this member's raft log so that it
//! is the only voter of its cluster, keeping all of its data (etcd's
//! `restartAsStandaloneNode`).
//!
//! One membership entry holding this member alone is appended to the log. Unlike etcd,
//! the entries after the last commit this member recorded are kept, not discarded: they
//! came from a legitimate leader, and this member records commits lazily, so some of them
//! may have been acknowledged to clients (etcd's discard can drop such writes). They
//! commit with the new membership entry. openraft takes the last membership entry of the log as the effective one, so at
//! start this member is the sole voter, elects itself and commits that entry: the new
//! membership goes through raft and persists; the cluster ID stays. Members added later
//! replicate it like any other entry. A member with an empty log (never started) is left
//! alone: it bootstraps as the flags say, as etcd ignores the flag without a WAL.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use openraft::alias::{EntryOf, LogIdOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{Membership, RaftLogReader};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{MemberInfo, TypeConfig};

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;

/// How many entries are read at once while looking back for the last membership entry.
const SCAN_CHUNK: u64 = 256;

/// Makes member `me` the sole voter of the log in `log`. `configured` is the member as
/// its flags describe it: its name and client URLs replace the stored ones (etcd's
/// publish does the same after start); its peer URLs stay as the cluster knew them, as
/// in etcd (`etcdctl member update` changes them).
pub(super) async fn single_voter(
    log: &mut LogStore,
    state_machine: &mut StateMachine,
    me: u64,
    cluster_id: u64,
    configured: &MemberInfo,
) -> io::Result<()> {
    let state = log.get_log_state().await?;
    let Some(last) = state.last_log_id else {
        tracing::info!("--force-new-cluster: the raft log is empty, nothing to force");
        return Ok(());
    };
    let (_, applied_membership) = state_machine.applied_state().await?;
    let commit = log.read_committed().await?;
    let known = match last_membership(log, last.index()).await? {
        Some(m) => m,
        None => applied_membership.membership().clone(),
    };
    let stored = known.get_node(&me).cloned().unwrap_or_default();
    let info = MemberInfo {
        name: configured.name.clone(),
        client_urls: configured.client_urls.clone(),
        peer_urls: if stored.peer_urls.is_empty() {
            configured.peer_urls.clone()
        } else {
            stored.peer_urls
        },
    };
    let removed: Vec<String> = known
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| *id != me)
        .map(|id| format!("{id:x}"))
        .collect();
    tracing::warn!(
        "cluster-id" = %format!("{cluster_id:x}"),
        "local-member-id" = %format!("{me:x}"),
        "commit-index" = commit.map_or(0, |c| c.index()),
        "last-index" = last.index(),
        "removed-member-ids" = ?removed,
        "forcing restart member"
    );
    let membership = Membership::new(vec![BTreeSet::from([me])], BTreeMap::from([(me, info)]))
        .map_err(io::Error::other)?;
    let log_id = LogId::new(*last.committed_leader_id(), last.index() + 1);
    log.append(
        [Entry::new_membership(log_id, membership)],
        IOFlushed::noop(),
    )
    .await?;
    // Saving the vote waits for the fsync thread, which has then also made the entry
    // above durable: raft starts from the rewritten log.
    let mut reader = log.get_log_reader().await;
    if let Some(vote) = reader.read_vote().await? {
        log.save_vote(&vote).await?;
    }
    Ok(())
}

/// The membership of the last membership entry at or before `upto`, if the log still
/// holds one.
async fn last_membership(
    log: &mut LogStore,
    upto: u64,
) -> io::Result<Option<Membership<u64, MemberInfo>>> {
    let mut reader = log.get_log_reader().await;
    let mut end = upto + 1;
    while end > 0 {
        let start = end.saturating_sub(SCAN_CHUNK);
        let entries = reader.try_get_log_entries(start..end).await?;
        if entries.is_empty() {
            return Ok(None);
        }
        if let Some(m) = entries.iter().rev().find_map(|e| e.get_membership()) {
            return Ok(Some(m));
        }
        end = start;
    }
    Ok(None)
}

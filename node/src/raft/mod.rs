//! Raft: cairn's replicated log on openraft, kept in the store's WAL database, applied to the
//! MVCC store.
//!
//! Owns: the openraft type configuration (declared once, below), the node's lifecycle
//! ([`RaftNode::start`] / [`RaftNode::shutdown`]), proposals and read barriers, and the raft
//! metrics in [`crate::metrics`]. Storage lives in [`log_store`] (log, vote, committed index),
//! [`state_machine`] (apply into [`crate::mvcc`]) and [`network`] (peer transport).
//! openraft types stay inside this module: callers see only [`cairnpb::Command`] going in and
//! [`Applied`] coming out.
//!
//! Failing safe: a storage error in the log store, the fsync thread or apply, a corrupt log
//! entry, or a panic stops openraft's core; [`RaftNode::failed`] reports that (and any fatal
//! storage error latched elsewhere), and the caller must then stop the process: serving on
//! would answer from a state that may never become durable, and a restart replays the log.
//!
//! Clusters: the members of `--initial-cluster` are initialized as the voters on every
//! member's first start (openraft accepts the same membership initialized on each member);
//! a one-member cluster waits for its own leadership at start, a larger one starts serving
//! at once and answers "no leader" until an election is won, as etcd does. [`network`] is
//! the peer transport and the follower's calls to its leader (forwarded proposals, read
//! indexes); the `peer_*` methods are the receiving side.
//!
//! Snapshots ([`snapshot`]): every `--snapshot-count` applied entries openraft builds one
//! (the state database made durable) and purges the log behind it but for the last
//! `--experimental-snapshot-catchup-entries` entries, as etcd does; a member whose next
//! entry is gone gets the whole state streamed instead.

mod force;
mod log_store;
mod membership;
pub mod network;
mod read_rounds;
mod snapshot;
mod state_machine;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, Fatal, ForwardToLeader, LinearizableReadError};
use openraft::{Config, ReadPolicy, ServerState, SnapshotPolicy};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::mpsc;

use crate::auth::{AuthError, AuthStore};
use crate::lease::{LeaseError, Lessor};
use crate::metrics;
use crate::mvcc::{CompactionDone, Mvcc, MvccError};
use crate::proto::{cairnpb, etcdserverpb, mvccpb};
use crate::storage::Store;
use crate::watch::WatchHub;

pub use membership::{MemberChange, MemberError};

use log_store::{LogStore, SoleMember};
use network::{Network, PeerError, Peers};
use read_rounds::ReadRounds;
use state_machine::StateMachine;

openraft::declare_raft_types!(
    /// cairn's openraft types: prost commands in, in-memory apply results out.
    pub(crate) TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = u64,
        Node = MemberInfo,
);

type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// How long [`RaftNode::start`] waits for leadership, in election timeouts.
const ELECTIONS_TO_WAIT: u32 = 5;

/// Configuration of one raft member.
pub struct RaftSettings {
    pub node_id: u64,
    pub member: MemberInfo,
    /// The voters of `--initial-cluster` other than this member, by member id; used on the
    /// first start only (the membership is in the log afterwards).
    pub initial_peers: BTreeMap<u64, MemberInfo>,
    /// Started with `--initial-cluster-state existing`: the member was added by a
    /// membership change and waits for the leader instead of initializing a cluster.
    pub join_existing: bool,
    pub cluster_id: u64,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Entries applied between snapshots (etcd's `--snapshot-count`); 0 disables snapshots.
    pub snapshot_count: u64,
    /// Log entries kept behind a snapshot for followers to catch up from (etcd's
    /// `--experimental-snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    /// Told each applied revision's events, if watches are served.
    pub watch: Option<Arc<WatchHub>>,
    /// etcd's auth store, which applies auth commands; without one they are refused.
    pub auth: Option<Arc<AuthStore>>,
    /// `--strict-reconfig-check`: refuse membership changes that could lose quorum.
    pub strict_reconfig_check: bool,
    /// `--max-learners`: learners the membership may hold at once.
    pub max_learners: usize,
    /// `--force-new-cluster`: make this member's data a one-member cluster first.
    pub force_new_cluster: bool,
    /// How this member dials https peer URLs (`crate::tls::PeerClientTls`).
    pub peer_tls: Option<Arc<crate::tls::PeerClientTls>>,
}

/// A member as the cluster knows it: openraft's `Node` type, stored in membership entries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub struct MemberInfo {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// What applying a proposal produced, handed back to the proposer in memory.
pub enum Applied {
    Txn(etcdserverpb::TxnResponse, Vec<mvccpb::Event>),
    Compaction(CompactionDone),
    /// The header carries only the store revision.
    LeaseGrant(etcdserverpb::LeaseGrantResponse),
    /// The header carries the revision of the deletes (unchanged if no key was attached);
    /// the events are one DELETE per attached key, all at that revision.
    LeaseRevoke(etcdserverpb::LeaseRevokeResponse, Vec<mvccpb::Event>),
    LeaseCheckpoint(etcdserverpb::LeaseCheckpointResponse),
    /// An applied auth command: the auth revision after it, the simple token issued.
    Auth(cairnpb::AuthApplied),
    /// etcd's answer to an Alarm request.
    Alarm(etcdserverpb::AlarmResponse),
}

impl Applied {
    /// The events of the revision this result created, for watchers.
    pub fn events(&self) -> &[mvccpb::Event] {
        match self {
            Applied::Txn(_, events) | Applied::LeaseRevoke(_, events) => events,
            Applied::Compaction(_)
            | Applied::LeaseGrant(_)
            | Applied::LeaseCheckpoint(_)
            | Applied::Auth(_)
            | Applied::Alarm(_) => &[],
        }
    }
}

/// Why a proposal or read barrier did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("no leader")]
    NoLeader,
    /// Another member leads: forward to it.
    #[error("not the leader (member {0:x} is)")]
    NotLeader(u64),
    #[error("raft is stopped")]
    Stopped,
    /// The outcome is unknown: the entry may still commit.
    #[error("request timed out")]
    Timeout,
    /// A deterministic apply result (e.g. compacted revision), the same on every member.
    #[error(transparent)]
    Apply(MvccError),
    /// A deterministic lease refusal at apply (unknown lease, duplicate id, TTL too large).
    #[error(transparent)]
    Lease(LeaseError),
    #[error("raft failed: {0}")]
    Fatal(String),
    /// A deterministic refusal of etcd's auth store at apply.
    #[error(transparent)]
    Auth(AuthError),
    /// The leader could not be asked (unreachable, refused, timed out).
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("malformed peer message: {0}")]
    Malformed(String),
    /// A write refused at apply because a member raised NOSPACE (etcd's capped applier).
    #[error("database space exceeded")]
    NoSpace,
    /// A request refused at apply because a member raised CORRUPT (etcd's corrupt applier).
    #[error("corrupt cluster")]
    Corrupt,
    /// The leader refused a membership change.
    #[error(transparent)]
    Member(MemberError),
}

impl RaftError {
    /// Whether the request certainly did not take effect and may be made again (when a
    /// leader is known again): there was no leader, another member leads, or the leader
    /// could not be reached before the request got there.
    pub fn unsent(&self) -> bool {
        match self {
            RaftError::NoLeader | RaftError::NotLeader(_) => true,
            RaftError::Peer(e) => e.unsent(),
            _ => false,
        }
    }
}

/// A cheap view of this member's raft state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// A running raft member.
pub struct RaftNode {
    raft: Raft,
    /// The channels to the other members.
    peers: Arc<Peers>,
    /// Held to watch for a fatal storage failure ([`RaftNode::failed`]).
    store: Arc<Store>,
    /// The state machine's last applied index, current before apply answers a client.
    applied_index: Arc<std::sync::atomic::AtomicU64>,
    /// Bounds a proposal or read barrier, like etcd's request timeout (5 s + 2 elections).
    request_timeout: Duration,
    /// This member's linearizable reads: a read index (its own as the leader, else the
    /// leader's) and the wait for apply.
    barriers: ReadRounds<()>,
    /// The read indexes followers ask this member for, as the leader.
    read_indexes: ReadRounds<u64>,
    metrics_task: tokio::task::JoinHandle<()>,
    member_id: u64,
    strict_reconfig_check: bool,
    max_learners: usize,
    /// Yields `None` once every raft component holding the store has been dropped.
    released: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl RaftNode {
    /// Opens the raft storage in `store`, creates openraft, and on a first start initializes
    /// a single-voter cluster of this node (persisted; a restart must not re-initialize).
    /// Waits until this node is leader (bounded, error after a few election timeouts).
    pub async fn start(
        store: Arc<Store>,
        mvcc: Arc<Mvcc>,
        lessor: Arc<Lessor>,
        settings: RaftSettings,
    ) -> Result<Arc<RaftNode>, RaftError> {
        let config = openraft_config(&settings)?;
        let request_timeout = Duration::from_secs(5) + 2 * settings.election_timeout;
        let peers = Peers::new(
            settings.cluster_id,
            settings.node_id,
            request_timeout,
            settings.peer_tls.clone(),
        );
        let (in_use, released) = InUse::new();
        let mut log_store = LogStore::open(store.clone(), in_use.clone()).map_err(fatal)?;
        let mut state_machine =
            StateMachine::open(store.clone(), mvcc, lessor, in_use, settings.watch.clone())
                .map_err(fatal)?
                .with_auth(settings.auth.clone());
        if settings.force_new_cluster {
            force::single_voter(
                &mut log_store,
                &mut state_machine,
                settings.node_id,
                settings.cluster_id,
                &settings.member,
            )
            .await
            .map_err(fatal)?;
        }
        let sole_member = log_store.sole_member();
        let applied_index = state_machine.applied_index();
        let raft = Raft::new(
            settings.node_id,
            Arc::new(config),
            Network(peers.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(fatal)?;
        raft.set_metrics_recorder(Some(Arc::new(IndexGauges)))
            .await
            .map_err(fatal)?;
        let node = RaftNode {
            barriers: ReadRounds::spawn(barrier_round(
                raft.clone(),
                peers.clone(),
                settings.node_id,
                request_timeout,
            )),
            read_indexes: ReadRounds::spawn(read_index_round(raft.clone(), request_timeout)),
            metrics_task: tokio::spawn(record_metrics(
                raft.server_metrics(),
                settings.node_id,
                peers.clone(),
                sole_member,
            )),
            peers,
            request_timeout,
            member_id: settings.node_id,
            strict_reconfig_check: settings.strict_reconfig_check,
            max_learners: settings.max_learners,
            released: tokio::sync::Mutex::new(released),
            raft,
            store,
            applied_index,
        };
        let wait = settings.election_timeout * 2 * ELECTIONS_TO_WAIT;
        // A forced member is its cluster's only voter, whatever --initial-cluster says.
        if !settings.initial_peers.is_empty() && !settings.force_new_cluster {
            // A member of a larger cluster cannot win an election alone: it serves at once
            // and answers "no leader" until its peers are up, as etcd does.
            let mut members = settings.initial_peers;
            let me = settings.member.clone();
            members.insert(settings.node_id, settings.member);
            if !settings.join_existing {
                if let Err(e) = node.initialize(members).await {
                    node.shutdown().await;
                    return Err(e);
                }
            }
            let node = Arc::new(node);
            tokio::spawn(publish(Arc::downgrade(&node), settings.node_id, me));
            return Ok(node);
        }
        let ready = match node
            .become_leader(settings.node_id, settings.member, wait)
            .await
        {
            // The state database may be behind the durable log after a crash (see
            // `state_machine`); serve nothing, not even serializable reads, until the whole
            // log is applied again.
            Ok(()) => node.read_barrier().await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            node.shutdown().await;
            return Err(e);
        }
        Ok(Arc::new(node))
    }

    /// Proposes; returns after the entry is committed (fsynced) and applied, with apply's result.
    pub async fn propose(&self, cmd: cairnpb::Command) -> Result<Applied, RaftError> {
        let _pending = Pending::start();
        let result = self.write(cmd).await;
        if matches!(result, Err(ref e) if !matches!(e, RaftError::Apply(_))) {
            metrics::get().proposals_failed.inc();
        }
        result
    }

    /// Hands a proposal to the leader `leader` (see [`RaftError::NotLeader`]).
    pub async fn forward(&self, leader: u64, cmd: cairnpb::Command) -> Result<Applied, RaftError> {
        let _pending = Pending::start();
        let result = self.peers.propose(leader, cmd).await?;
        if matches!(result, Err(ref e) if !matches!(e, RaftError::Apply(_) | RaftError::Lease(_))) {
            metrics::get().proposals_failed.inc();
        }
        result
    }

    /// The peer channels, for the calls a follower hands to its leader as they are.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The leader's side of a follower's read: confirms leadership with a quorum and
    /// returns the index the follower must apply before reading.
    pub async fn peer_read_index(&self) -> Result<u64, RaftError> {
        self.bounded(self.read_indexes.join()).await
    }

    /// The leader's side of a forwarded proposal: `command` is a protobuf `Command`.
    pub async fn peer_propose(
        &self,
        command: &[u8],
    ) -> Result<cairnpb::ProposeResponse, RaftError> {
        let cmd = crate::proto::nesting::decode_command(command)
            .map_err(|e| RaftError::Malformed(e.to_string()))?;
        network::encode_outcome(self.propose(cmd).await)
    }

    /// Receives an append-entries (or heartbeat) from the leader, in openraft's encoding.
    pub async fn peer_append_entries(&self, data: &[u8]) -> Result<Vec<u8>, RaftError> {
        let rpc = decode(data).map_err(|e| RaftError::Malformed(e.to_string()))?;
        let resp = self.raft.append_entries(rpc).await.map_err(raft_error)?;
        encode(&resp).map_err(fatal)
    }

    /// The leader's side of a member publishing its attributes: records them in the
    /// membership (a membership entry with the same voters).
    pub async fn peer_publish(&self, data: &[u8]) -> Result<(), RaftError> {
        let (id, info): (u64, MemberInfo) =
            decode(data).map_err(|e| RaftError::Malformed(e.to_string()))?;
        self.set_member_info(id, info).await
    }

    async fn set_member_info(&self, id: u64, info: MemberInfo) -> Result<(), RaftError> {
        // SetNodes would add an unknown id: a removed member must not come back this way.
        if !self.members().iter().any(|(m, _)| *m == id) {
            return Err(MemberError::NotFound.into());
        }
        let change = openraft::ChangeMembers::SetNodes(BTreeMap::from([(id, info)]));
        Box::pin(self.apply_change(change)).await
    }

    /// Receives a snapshot streamed by the leader `from` (hex) and installs it once whole
    /// (see [`snapshot::receive`]); answers openraft's response, encoded.
    pub async fn peer_install_snapshot(
        &self,
        from: &str,
        chunks: impl futures::Stream<Item = Result<cairnpb::SnapshotChunk, String>> + Send,
    ) -> Result<Vec<u8>, RaftError> {
        let dir = self.store.snap_dir().map_err(fatal)?;
        snapshot::receive(&self.raft, &dir, from, chunks).await
    }

    /// Receives leadership from the leader (etcd's MoveLeader), in openraft's encoding.
    pub async fn peer_transfer_leader(&self, data: &[u8]) -> Result<Vec<u8>, RaftError> {
        let req = decode(data).map_err(|e| RaftError::Malformed(e.to_string()))?;
        let resp = self
            .raft
            .handle_transfer_leader(req)
            .await
            .map_err(stopped_or_fatal)?;
        encode(&resp).map_err(fatal)
    }

    /// etcd's MoveLeader, on the leader: hands leadership to the voter `to` and waits until
    /// it leads. `Ok(false)`: `to` is not a voter.
    pub async fn move_leader(&self, to: u64) -> Result<bool, RaftError> {
        let status = self.status();
        if !status.is_leader {
            return Err(status
                .leader
                .map_or(RaftError::NoLeader, RaftError::NotLeader));
        }
        let is_voter = self.raft.voter_ids().any(|id| id == to);
        if !is_voter {
            return Ok(false);
        }
        if status.leader == Some(to) {
            return Ok(true);
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(stopped_or_fatal)?;
        self.raft
            .wait(Some(self.request_timeout))
            .current_leader(to, "move leader")
            .await
            .map(|_| true)
            .map_err(|_| RaftError::Timeout)
    }

    /// etcd's `TransferLeadership` on stop: a leader of a cluster with other voters hands
    /// leadership to the most caught-up one first, so the cluster gets a new leader at once
    /// instead of after an election timeout. Logged with etcd's messages.
    pub async fn transfer_leadership(&self) -> Result<(), RaftError> {
        let local = format!("{:x}", self.member_id);
        if !self.status().is_leader {
            tracing::info!(local_member_id = %local, "skipped leadership transfer; local server is not leader");
            return Ok(());
        }
        let Some(transferee) = self.most_caught_up_voter() else {
            tracing::info!(local_member_id = %local, "skipped leadership transfer for single voting member cluster");
            return Ok(());
        };
        tracing::info!(
            local_member_id = %local,
            current_leader_member_id = %local,
            transferee_member_id = %format!("{transferee:x}"),
            "leadership transfer starting"
        );
        let started = std::time::Instant::now();
        self.move_leader(transferee).await?;
        tracing::info!(
            local_member_id = %local,
            old_leader_member_id = %local,
            new_leader_member_id = %format!("{transferee:x}"),
            took = %crate::logging::go_duration(started.elapsed()),
            "leadership transfer finished"
        );
        Ok(())
    }

    /// The other voter whose log matches the leader's furthest (`None`: there is none).
    fn most_caught_up_voter(&self) -> Option<u64> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let matched = |id: &u64| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |l| l.index())
        };
        self.raft
            .voter_ids()
            .filter(|id| *id != self.member_id)
            .max_by_key(|id| matched(id))
    }

    /// Receives a vote request from a candidate, in openraft's encoding.
    pub async fn peer_vote(&self, data: &[u8]) -> Result<Vec<u8>, RaftError> {
        let rpc = decode(data).map_err(|e| RaftError::Malformed(e.to_string()))?;
        let resp = self.raft.vote(rpc).await.map_err(raft_error)?;
        encode(&resp).map_err(fatal)
    }

    /// Linearizable read barrier (ReadIndex): returns once this node's state machine has
    /// applied everything committed before the call, on the leader or a follower. A leader
    /// that is its cluster's only member needs no round (see [`leads_alone`]).
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        if leads_alone(&self.raft.metrics().borrow_watched(), self.member_id) {
            return Ok(());
        }
        self.bounded(self.barriers.join()).await
    }

    /// `read` or a timeout after [`RaftNode::request_timeout`]: a reader may wait for the
    /// round in flight before its own.
    async fn bounded<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, RaftError>>,
    ) -> Result<T, RaftError> {
        tokio::time::timeout(self.request_timeout, read)
            .await
            .unwrap_or(Err(RaftError::Timeout))
    }

    /// This member's view of the cluster, from openraft's metrics (no round trip).
    pub fn status(&self) -> RaftStatus {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        // openraft publishes its metrics after apply has answered: a client that saw its
        // write acknowledged must not see an index before it (etcd's are set in apply).
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index()).max(
            self.applied_index
                .load(std::sync::atomic::Ordering::Acquire),
        );
        RaftStatus {
            leader: m.current_leader,
            is_leader: m.state == ServerState::Leader,
            term: m.current_term,
            commit_index: m
                .local_committed
                .as_ref()
                .map_or(0, |l| l.index())
                .max(applied),
            applied_index: applied,
        }
    }

    /// The members of the effective membership, by id.
    pub fn members(&self) -> Vec<(u64, MemberInfo)> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        m.membership_config
            .nodes()
            .map(|(id, info)| (*id, info.clone()))
            .collect()
    }

    /// Resolves when this node can no longer serve safely: openraft's core stopped on an
    /// error (a failed append or fsync, a corrupt log entry, a storage error in apply, a
    /// panic), or the store latched a fatal engine error anywhere (e.g. in MVCC's compaction
    /// thread). Never resolves while healthy or after [`RaftNode::shutdown`]. The error is
    /// logged here; the caller must stop the process without serving another request.
    pub async fn failed(&self) -> RaftError {
        let cause = tokio::select! {
            e = self.store.failure() => e.to_string(),
            cause = core_failure(&self.raft) => cause,
        };
        tracing::error!(error = %cause, "raft cannot go on; the node must stop (a restart replays the log)");
        RaftError::Fatal(cause)
    }

    /// Stops raft and returns once its storage handles are released, so the store can be
    /// closed (or reopened) right after.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft core ended abnormally: {e}");
        }
        self.metrics_task.abort();
        self.barriers.stop();
        self.read_indexes.stop();
        // The state machine worker and the fsync thread end on their own once the core is
        // gone; wait for them, bounded, so a stuck task cannot hang shutdown.
        let mut released = self.released.lock().await;
        if tokio::time::timeout(Duration::from_secs(10), released.recv())
            .await
            .is_err()
        {
            tracing::warn!("raft storage still in use 10s after shutdown");
        }
    }

    async fn write(&self, cmd: cairnpb::Command) -> Result<Applied, RaftError> {
        let write = self.raft.client_write(Proposal(cmd));
        let response = match tokio::time::timeout(self.request_timeout, write).await {
            Err(_) => return Err(RaftError::Timeout),
            Ok(Ok(response)) => response,
            Ok(Err(openraft::error::RaftError::Fatal(e))) => return Err(stopped_or_fatal(e)),
            Ok(Err(openraft::error::RaftError::APIError(e))) => return Err(write_error(e)),
        };
        match response.data.0 {
            Some(result) => result,
            None => Err(RaftError::Fatal(format!(
                "entry {} was applied without a result",
                response.log_id
            ))),
        }
    }

    /// Initializes a pristine member with the initial voters; nothing on a restart.
    async fn initialize(&self, members: BTreeMap<u64, MemberInfo>) -> Result<(), RaftError> {
        if !self.raft.is_initialized().await.map_err(stopped_or_fatal)? {
            self.raft
                .initialize(members)
                .await
                .map_err(|e| RaftError::Fatal(format!("initialize: {e}")))?;
        }
        Ok(())
    }

    /// Initializes a pristine member as the sole voter, then waits for leadership. A
    /// restarted member campaigns at once instead of after an election timeout: it does not
    /// resume its term (see `openraft_config`), and alone it wins at once.
    async fn become_leader(
        &self,
        id: u64,
        member: MemberInfo,
        wait: Duration,
    ) -> Result<(), RaftError> {
        if self.raft.is_initialized().await.map_err(stopped_or_fatal)? {
            self.raft
                .trigger()
                .elect(false)
                .await
                .map_err(stopped_or_fatal)?;
        } else {
            self.initialize(BTreeMap::from([(id, member)])).await?;
        }
        self.raft
            .wait(Some(wait))
            .state(ServerState::Leader, "start")
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::error!("not leader {wait:?} after start: {e}");
                RaftError::NoLeader
            })
    }
}

/// How often a member looks whether the membership holds its current attributes.
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// etcd's "publish": whenever the membership holds this member with other attributes than
/// its own (its client URLs are known only to itself at bootstrap, and a concurrent change
/// may replace a record), asks the leader to record them. A member not in the membership
/// (removed, or not added yet) publishes nothing. Ends when the node is gone.
async fn publish(node: std::sync::Weak<RaftNode>, id: u64, me: MemberInfo) {
    loop {
        tokio::time::sleep(PUBLISH_RETRY).await;
        let Some(node) = node.upgrade() else { return };
        let members = node.members();
        match members.iter().find(|(m, _)| *m == id) {
            Some((_, info)) if *info != me => {}
            _ => continue,
        }
        let result = match node.status().leader {
            None => continue,
            Some(leader) if leader == id => node.set_member_info(id, me.clone()).await,
            Some(leader) => node
                .peers
                .publish(leader, &(id, me.clone()))
                .await
                .map_err(RaftError::from),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "publishing this member's attributes failed, retrying");
        }
    }
}

fn openraft_config(settings: &RaftSettings) -> Result<Config, RaftError> {
    let election = millis(settings.election_timeout);
    let config = Config {
        cluster_name: "cairn".to_string(),
        heartbeat_interval: millis(settings.heartbeat),
        // openraft's followers refuse votes for a leader lease of `election_timeout_max`
        // after the last heartbeat. Drawn from [E, 2E) as etcd draws them, the first
        // candidate after a leader's death was refused by a lease of 2E and won only on its
        // second try (3.6 s median failover at E = 1 s, etcd 1.1 s). From [E/2, E] the lease
        // is E, as etcd's check-quorum lease, and the second try lands in [E, 2E), where
        // etcd's first does; pre-vote keeps the early first try from raising its term and
        // deposing a live leader.
        election_timeout_min: election / 2,
        election_timeout_max: election,
        enable_pre_vote: Some(true),
        snapshot_policy: match settings.snapshot_count {
            0 => SnapshotPolicy::Never,
            n => SnapshotPolicy::LogsSinceLast(n),
        },
        // etcd's catch-up tail: a follower a little behind gets entries, one further
        // behind the whole state (`snapshot`).
        max_in_snapshot_log_to_keep: settings.snapshot_catchup_entries,
        // openraft's 200 ms default bounds a whole transfer; the transport bounds it
        // itself (`network`).
        install_snapshot_timeout: millis(network::SNAPSHOT_TIMEOUT),
        // A restarted leader must win an election again, as in etcd, instead of resuming
        // its term (openraft's default, openraft#1511). Apply does not fsync and the commit
        // index is saved lazily, so after `kill -9` it comes back with a state machine behind
        // writes it had acknowledged; resumed, its read index would be the first entry of its
        // term or that stale commit index, and it would serve them stale until its followers
        // told it the commit index again. Elected, its read index is its new term's blank
        // entry, which a read waits to be applied, and with it the whole log.
        enable_leader_restore: Some(false),
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| RaftError::Fatal(format!("raft config: {e}")))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn write_error(e: ClientWriteError<TypeConfig>) -> RaftError {
    match e {
        ClientWriteError::ForwardToLeader(f) => not_leader(&f),
        // The entry was appended, then replaced by another leader's log: it may or may not
        // commit, which is what a timeout tells the client too.
        ClientWriteError::LogEntryDiscarded(_) => RaftError::Timeout,
        // Another membership change is still committing: etcd refuses overlapping changes
        // too; the client may try again.
        ClientWriteError::ChangeMembershipError(e) => {
            tracing::warn!(error = %e, "membership change refused");
            RaftError::Timeout
        }
        other => RaftError::Fatal(other.to_string()),
    }
}

/// Whether this member is the leader and the only member, and has applied an entry of its
/// own term. Then its applied state is a linearizable read without a ReadIndex round:
/// every write acknowledged to anyone was applied here before its answer (apply answers,
/// and no other member can lead: the quorum is this member alone), and applying its own
/// term's first entry applied everything committed before it. This is what etcd's raft
/// does for a singleton (`responseToReadIndexReq` with its committed index, no heartbeat
/// round), without the hop through raft's core. A member can join only through an entry
/// this leader appends; openraft publishes the new membership as it appends it, long
/// before the new member could be elected, and from then on every read takes its round.
fn leads_alone(m: &openraft::RaftMetrics<TypeConfig>, me: u64) -> bool {
    use openraft::vote::RaftLeaderId;
    let mut members = m.membership_config.nodes().map(|(id, _)| *id);
    let alone = members.next() == Some(me) && members.next().is_none();
    let own_term_applied = m
        .last_applied
        .as_ref()
        .is_some_and(|l| l.committed_leader_id().term() == m.current_term);
    alone && m.state == ServerState::Leader && m.current_leader == Some(me) && own_term_applied
}

/// One round of [`RaftNode::read_barrier`]: a read index, this member's if it leads (or
/// knows no leader: openraft then says who leads, or that none does), else the leader's
/// over the peer service; then the wait until this member applied up to it.
fn barrier_round(
    raft: Raft,
    peers: Arc<Peers>,
    me: u64,
    timeout: Duration,
) -> impl Fn() -> BoxFuture<'static, Result<(), RaftError>> {
    move || {
        let (raft, peers) = (raft.clone(), peers.clone());
        Box::pin(async move {
            let leader = raft.metrics().borrow_watched().current_leader;
            let Some(leader) = leader.filter(|l| *l != me) else {
                let read = raft.ensure_linearizable(ReadPolicy::ReadIndex);
                return read_outcome(tokio::time::timeout(timeout, read).await).map(drop);
            };
            let index = peers.read_index(leader).await?;
            raft.wait(Some(timeout))
                .applied_index_at_least(Some(index), "follower read")
                .await
                .map(drop)
                .map_err(|_| RaftError::Timeout)
        })
    }
}

/// One round of [`RaftNode::peer_read_index`]: a read index alone.
fn read_index_round(
    raft: Raft,
    timeout: Duration,
) -> impl Fn() -> BoxFuture<'static, Result<u64, RaftError>> {
    move || {
        let raft = raft.clone();
        Box::pin(async move {
            let read = raft.get_read_linearizer(ReadPolicy::ReadIndex);
            read_outcome(tokio::time::timeout(timeout, read).await)
                .map(|linearizer| linearizer.read_log_id().index())
        })
    }
}

/// A ReadIndex's outcome: its value, or the refusal as a [`RaftError`].
fn read_outcome<T>(
    result: Result<
        Result<T, openraft::error::RaftError<TypeConfig, LinearizableReadError<TypeConfig>>>,
        tokio::time::error::Elapsed,
    >,
) -> Result<T, RaftError> {
    match result {
        Err(_) => Err(RaftError::Timeout),
        Ok(Ok(value)) => Ok(value),
        Ok(Err(openraft::error::RaftError::Fatal(e))) => Err(stopped_or_fatal(e)),
        Ok(Err(openraft::error::RaftError::APIError(e))) => Err(match e {
            LinearizableReadError::ForwardToLeader(f) => not_leader(&f),
            LinearizableReadError::QuorumNotEnough(_) => RaftError::Timeout,
        }),
    }
}

fn not_leader(f: &ForwardToLeader<TypeConfig>) -> RaftError {
    match f.leader_id {
        Some(leader) => RaftError::NotLeader(leader),
        None => RaftError::NoLeader,
    }
}

/// An error of a raft RPC received from a peer.
fn raft_error(e: openraft::error::RaftError<TypeConfig>) -> RaftError {
    match e {
        openraft::error::RaftError::Fatal(e) => stopped_or_fatal(e),
        openraft::error::RaftError::APIError(e) => match e {},
    }
}

fn stopped_or_fatal(e: Fatal<TypeConfig>) -> RaftError {
    match e {
        Fatal::Stopped => RaftError::Stopped,
        other => RaftError::Fatal(other.to_string()),
    }
}

fn fatal(e: impl fmt::Display) -> RaftError {
    RaftError::Fatal(e.to_string())
}

/// Keeps `etcd_server_has_leader`, `is_leader`, `is_learner` and `leader_changes_seen_total`
/// in step with openraft's server metrics until raft stops. Those change with roles and
/// membership only; the full metrics change several times per write, and a task woken on
/// each was two thread wake-ups per put (see [`IndexGauges`] for the per-write gauges).
async fn record_metrics(
    mut rx: openraft::alias::WatchReceiverOf<
        TypeConfig,
        openraft::metrics::RaftServerMetrics<TypeConfig>,
    >,
    id: u64,
    peers: Arc<Peers>,
    sole_member: SoleMember,
) {
    let m = metrics::get();
    let mut last_leader = None;
    loop {
        {
            let r = rx.borrow_watched();
            let mut members = r.membership_config.nodes().map(|(member, _)| *member);
            sole_member.set(members.next() == Some(id) && members.next().is_none());
            peers.set_members(
                r.membership_config
                    .nodes()
                    .map(|(id, info)| (*id, info.clone())),
            );
            m.has_leader.set(i64::from(r.current_leader.is_some()));
            m.is_leader.set(i64::from(
                r.current_leader == Some(id) && r.state == ServerState::Leader,
            ));
            m.is_learner.set(i64::from(r.state == ServerState::Learner));
            if r.current_leader.is_some() && r.current_leader != last_leader {
                m.leader_changes.inc();
            }
            last_leader = r.current_leader;
        }
        if rx.changed().await.is_err() {
            m.has_leader.set(0);
            m.is_leader.set(0);
            return;
        }
    }
}

/// `etcd_server_proposals_committed_total` and `_applied_total`, set by openraft's core as it
/// reports its progress: no task or thread is woken for them on each write.
#[derive(Debug)]
struct IndexGauges;

impl openraft::metrics::MetricsRecorder for IndexGauges {
    fn set_committed_index(&self, index: u64) {
        metrics::get().proposals_committed.set(index_gauge(index));
    }
    fn set_applied_index(&self, index: u64) {
        metrics::get().proposals_applied.set(index_gauge(index));
    }
    // etcd exports none of the rest, or cairn counts it elsewhere.
    fn record_apply_batch(&self, _: u64) {}
    fn record_append_batch(&self, _: u64) {}
    fn record_write_batch(&self, _: u64) {}
    fn set_current_term(&self, _: u64) {}
    fn set_last_log_index(&self, _: u64) {}
    fn set_snapshot_index(&self, _: u64) {}
    fn set_purged_index(&self, _: u64) {}
    fn set_server_state(&self, _: u8) {}
    fn increment_vote(&self) {}
    fn increment_heartbeat(&self) {}
    fn increment_append(&self) {}
}

/// Resolves with the reason once openraft's core has stopped on an error or panicked; never
/// if it runs on or was stopped on request. Waits on the server metrics, which change
/// rarely, until their sender goes with the core; the core records why in the full metrics
/// before it ends.
async fn core_failure(raft: &Raft) -> String {
    let mut server = raft.server_metrics();
    while server.changed().await.is_ok() {}
    match raft.metrics().borrow_watched().running_state.clone() {
        Err(Fatal::Stopped) => std::future::pending().await,
        Err(e) => e.to_string(),
        Ok(()) => "raft core task ended unexpectedly".to_string(),
    }
}

fn index_gauge(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

/// Counts a proposal in `etcd_server_proposals_pending` for as long as it is alive, even if
/// the caller drops the future.
struct Pending;

impl Pending {
    fn start() -> Pending {
        metrics::get().proposals_pending.inc();
        Pending
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        metrics::get().proposals_pending.dec();
    }
}

/// Held by every raft component that holds the store; [`RaftNode::shutdown`] waits for the
/// last one to drop. Nothing is ever sent.
#[derive(Clone)]
struct InUse {
    _tx: mpsc::Sender<()>,
}

impl InUse {
    fn new() -> (InUse, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel(1);
        (InUse { _tx: tx }, rx)
    }
}

/// The log entry payload: a [`cairnpb::Command`], serialized as its protobuf bytes so the log
/// is readable by anyone who knows etcd's protocol.
#[derive(Clone, Debug)]
pub(crate) struct Proposal(pub(crate) cairnpb::Command);

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use cairnpb::command::Cmd;
        match &self.0.cmd {
            Some(Cmd::Txn(t)) => write!(
                f,
                "txn({} compares, {}+{} ops)",
                t.compare.len(),
                t.success.len(),
                t.failure.len()
            ),
            Some(Cmd::Compaction(c)) => write!(f, "compaction({})", c.revision),
            Some(Cmd::LeaseGrant(g)) => write!(f, "lease_grant({:x}, {}s)", g.id, g.ttl),
            Some(Cmd::LeaseRevoke(r)) => write!(f, "lease_revoke({:x})", r.id),
            Some(Cmd::LeaseCheckpoint(c)) => {
                write!(f, "lease_checkpoint({} leases)", c.checkpoints.len())
            }
            Some(Cmd::Auth(_)) => write!(f, "auth"),
            Some(Cmd::Alarm(a)) => write!(f, "alarm({} {:x} {})", a.action, a.member_id, a.alarm),
            None => write!(f, "empty"),
        }
    }
}

impl Serialize for Proposal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Proposal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Proposal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protobuf-encoded cairnpb.Command")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Proposal, E> {
                crate::proto::nesting::decode_command(v)
                    .map(Proposal)
                    .map_err(E::custom)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// openraft's response type: apply's result for a client proposal (`None` for blank and
/// membership entries); its errors are the deterministic refusals ([`RaftError::Apply`],
/// [`RaftError::Lease`]). It only travels in memory from the state machine to the proposer;
/// it serializes to nothing because openraft requires serde of it.
pub(crate) struct Outcome(Option<Result<Applied, RaftError>>);

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Outcome(None))
    }
}

/// The on-disk encoding of raft's own records (log entries, vote, log ids, apply marker).
fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(std::io::Error::other)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::io::Result<T> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Runs a blocking storage call off the async runtime. The engine holds its journal lock for
/// the whole of an fsync, so even a small write can wait for one.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use cairnpb::command::Cmd;

    use super::*;

    fn settings(snapshot_count: u64) -> RaftSettings {
        RaftSettings {
            node_id: 0x8e9e05c52164694d,
            member: MemberInfo {
                name: "default".into(),
                peer_urls: vec!["http://localhost:2380".into()],
                client_urls: vec![],
            },
            initial_peers: BTreeMap::new(),
            join_existing: false,
            cluster_id: 1,
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(300),
            snapshot_count,
            snapshot_catchup_entries: 5,
            watch: None,
            auth: None,
            strict_reconfig_check: true,
            max_learners: 1,
            force_new_cluster: false,
            peer_tls: None,
        }
    }

    fn lessor(store: &Store) -> Arc<Lessor> {
        let config = crate::lease::LessorConfig::new(
            Duration::from_millis(50),
            Duration::from_millis(300),
            1,
        );
        Arc::new(Lessor::open(store, config).expect("open lessor"))
    }

    async fn start(dir: &Path, snapshot_count: u64) -> (Arc<Mvcc>, Arc<RaftNode>) {
        let store = Arc::new(Store::open(dir).expect("open store"));
        let mvcc = Arc::new(Mvcc::open(store.clone()).expect("open mvcc"));
        let node = RaftNode::start(
            store.clone(),
            mvcc.clone(),
            lessor(&store),
            settings(snapshot_count),
        )
        .await
        .expect("start raft");
        (mvcc, node)
    }

    /// A one-put txn: every one of them creates exactly one new revision.
    fn txn() -> cairnpb::Command {
        let put = etcdserverpb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let op = etcdserverpb::RequestOp {
            request: Some(etcdserverpb::request_op::Request::RequestPut(put)),
        };
        cairnpb::Command {
            cmd: Some(Cmd::Txn(etcdserverpb::TxnRequest {
                success: vec![op],
                ..Default::default()
            })),
        }
    }

    fn compaction(revision: i64) -> cairnpb::Command {
        cairnpb::Command {
            cmd: Some(Cmd::Compaction(etcdserverpb::CompactionRequest {
                revision,
                physical: false,
            })),
        }
    }

    fn revision(applied: &Applied) -> i64 {
        match applied {
            Applied::Txn(resp, _) => resp.header.as_ref().map_or(0, |h| h.revision),
            _ => panic!("expected a txn result"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_proposals_apply_in_log_order_and_share_fsyncs() {
        // Closed-loop clients, like a loaded API: each proposes again as soon as its last
        // proposal is applied, so appends keep arriving while an fsync runs.
        const CLIENTS: usize = 32;
        const EACH: usize = 25;
        const N: usize = CLIENTS * EACH;
        let dir = tempfile::tempdir().expect("tempdir");
        let (mvcc, node) = start(dir.path(), 0).await;
        let fsyncs_before = metrics::get().wal_fsync_duration.get_sample_count();

        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let node = node.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for _ in 0..EACH {
                        let resp = node
                            .raft
                            .client_write(Proposal(txn()))
                            .await
                            .expect("client_write");
                        let applied = resp.data.0.expect("an apply result").expect("applied");
                        seen.push((resp.log_id.index(), revision(&applied)));
                    }
                    seen
                })
            })
            .collect();
        let mut results = Vec::new();
        for client in clients {
            results.extend(client.await.expect("join"));
        }

        let fsyncs = metrics::get().wal_fsync_duration.get_sample_count() - fsyncs_before;
        results.sort();
        let revisions: Vec<i64> = results.iter().map(|(_, rev)| *rev).collect();
        assert_eq!(
            revisions,
            (2..=N as i64 + 1).collect::<Vec<_>>(),
            "revisions follow log order"
        );
        assert!(
            results.windows(2).all(|w| w[0].0 < w[1].0),
            "one log index per proposal"
        );
        assert_eq!(mvcc.current_revision(), N as i64 + 1);
        // Without group commit this would be at least N. Alone it is ~7 proposals per fsync
        // (~14 when apply answered only at the end of a batch, which held every client
        // back until the last); other tests in this process fsync too (205 seen in a full
        // run), so the bound leaves room.
        assert!(fsyncs < N as u64 / 2, "{fsyncs} fsyncs for {N} proposals");
        node.shutdown().await;
    }

    /// Opens the store again once the stopped node's last tasks let go of it: openraft's
    /// workers drop their handles shortly after `shutdown` returns, later on a loaded machine.
    async fn reopen(dir: &Path) -> Store {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Err(crate::storage::StorageError::Locked(_))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                opened => return opened.expect("reopen store"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_keeps_the_cluster_and_does_not_apply_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, membership_log_id, applied_index) = {
            let (_mvcc, node) = start(dir.path(), 10).await;
            for expected in 2..=36 {
                let applied = node.propose(txn()).await.expect("propose");
                assert_eq!(revision(&applied), expected);
            }
            node.read_barrier().await.expect("read barrier");
            let status = node.status();
            let id = settings(10).node_id;
            assert_eq!((status.leader, status.is_leader), (Some(id), true));
            assert!(status.term >= 1 && status.applied_index >= 35, "{status:?}");
            assert_eq!(node.members(), vec![(id, settings(10).member)]);
            // With --snapshot-count 10 the log behind a snapshot gets purged.
            node.raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.purged.is_some(), "log purged after a snapshot")
                .await
                .expect("purge");
            let m = node.raft.metrics().borrow_watched().clone();
            node.shutdown().await;
            (id, *m.membership_config.log_id(), status.applied_index)
        };

        let store = Arc::new(reopen(dir.path()).await);
        let mvcc = Arc::new(Mvcc::open(store.clone()).expect("reopen mvcc"));
        assert_eq!(mvcc.current_revision(), 36);
        let node = RaftNode::start(store.clone(), mvcc.clone(), lessor(&store), settings(10))
            .await
            .expect("restart raft");
        assert_eq!(mvcc.current_revision(), 36, "nothing applied twice");
        let status = node.status();
        assert_eq!(status.leader, Some(id));
        assert!(
            status.is_leader && status.applied_index >= applied_index,
            "{status:?}"
        );
        let m = node.raft.metrics().borrow_watched().clone();
        assert_eq!(
            m.membership_config.log_id(),
            &membership_log_id,
            "not initialized again"
        );
        assert_eq!(revision(&node.propose(txn()).await.expect("propose")), 37);
        node.read_barrier().await.expect("read barrier");
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_sole_leader_that_applied_its_own_term_skips_the_read_round() {
        use openraft::{Membership, StoredMembership};
        let dir = tempfile::tempdir().expect("tempdir");
        let (_mvcc, node) = start(dir.path(), 0).await;
        let me = settings(0).node_id;
        node.read_barrier().await.expect("read barrier");
        let m = node.raft.metrics().borrow_watched().clone();
        node.shutdown().await;
        assert!(leads_alone(&m, me), "{m:?}");
        assert!(!leads_alone(&m, me + 1), "another member's view");

        let mut new_term = m.clone();
        new_term.current_term += 1;
        assert!(
            !leads_alone(&new_term, me),
            "its term's first entry unapplied"
        );
        let mut follower = m.clone();
        follower.state = ServerState::Follower;
        assert!(!leads_alone(&follower, me));
        let mut joining = m.clone();
        let nodes = BTreeMap::from([(me, settings(0).member), (7, MemberInfo::default())]);
        let membership = Membership::new(vec![[me].into()], nodes).expect("membership");
        joining.membership_config = Arc::new(StoredMembership::new(
            *m.membership_config.log_id(),
            membership,
        ));
        assert!(!leads_alone(&joining, me), "a learner is joining");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deterministic_mvcc_errors_reach_the_proposer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_mvcc, node) = start(dir.path(), 0).await;
        node.propose(txn()).await.expect("propose");
        let future = node
            .propose(compaction(100))
            .await
            .err()
            .expect("future revision");
        assert!(
            matches!(future, RaftError::Apply(MvccError::FutureRev)),
            "{future}"
        );
        assert!(matches!(
            node.propose(compaction(1)).await,
            Ok(Applied::Compaction(_))
        ));
        let compacted = node.propose(compaction(1)).await.err().expect("compacted");
        assert!(
            matches!(compacted, RaftError::Apply(MvccError::Compacted)),
            "{compacted}"
        );
        assert_eq!(
            revision(&node.propose(txn()).await.expect("still applying")),
            3
        );
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_log_fsync_stops_raft_and_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = crate::storage::StoreOptions {
            fault: Some("wal-fsync:20".parse().expect("plan")),
            ..Default::default()
        };
        let store = Arc::new(Store::open_with(dir.path(), &options).expect("open store"));
        let mvcc = Arc::new(Mvcc::open(store.clone()).expect("open mvcc"));
        let node = RaftNode::start(store.clone(), mvcc, lessor(&store), settings(0))
            .await
            .expect("start raft");
        let mut acked = 0;
        while node.propose(txn()).await.is_ok() {
            acked += 1;
            assert!(acked < 100, "the fault never stopped raft");
        }
        let failed = tokio::time::timeout(Duration::from_secs(10), node.failed())
            .await
            .expect("failed() resolves");
        assert!(
            failed.to_string().contains("injected fault wal-fsync:20"),
            "{failed}"
        );
        assert!(
            node.propose(txn()).await.is_err(),
            "nothing is acknowledged after the failure"
        );
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_log_entry_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (_mvcc, node) = start(dir.path(), 0).await;
            node.propose(txn()).await.expect("propose");
            node.shutdown().await;
        }
        {
            let store = Store::open(dir.path()).expect("open store");
            let log = store.wal_keyspace("raft_log").expect("log");
            let (last, _) = log.last().expect("read").expect("an entry");
            log.insert(last, b"\xff\xff not an entry")
                .expect("corrupt it");
            store.sync_wal().expect("sync");
        }
        let store = Arc::new(Store::open(dir.path()).expect("reopen store"));
        let mvcc = Arc::new(Mvcc::open(store.clone()).expect("open mvcc"));
        let started = tokio::time::timeout(
            Duration::from_secs(30),
            RaftNode::start(store.clone(), mvcc, lessor(&store), settings(0)),
        )
        .await
        .expect("start gives up");
        assert!(started.is_err(), "a node with a corrupt log must not serve");
    }

    #[test]
    fn log_entries_round_trip_with_the_command_as_protobuf() {
        let log_id = openraft::testing::log_id::<TypeConfig>(3, 1, 7);
        let entry: openraft::alias::EntryOf<TypeConfig> = openraft::Entry {
            log_id,
            payload: openraft::EntryPayload::Normal(Proposal(compaction(42))),
        };
        let bytes = encode(&entry).expect("encode");
        let back: openraft::alias::EntryOf<TypeConfig> = decode(&bytes).expect("decode");
        assert_eq!(back.log_id, entry.log_id);
        match back.payload {
            openraft::EntryPayload::Normal(Proposal(cmd)) => assert_eq!(cmd, compaction(42)),
            _ => panic!("payload changed"),
        }
    }
}

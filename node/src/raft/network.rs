//! The peer transport: openraft's network over cairn's gRPC peer service (`peer.proto`),
//! on the members' `--listen-peer-urls`.
//!
//! The client half is here: [`Peers`] keeps one lazily connected tonic channel per member
//! (tonic reconnects a broken channel on the next call; openraft backs off from a member
//! reported [`Unreachable`]), [`PeerClient`] is openraft's per-target network, and
//! [`Peers::propose`] / [`Peers::read_index`] are the calls a follower makes to its leader.
//! The server half decodes in `api::peer` and lands in [`super::RaftNode`]'s `peer_*`
//! methods. This is the one place besides `api/` that names tonic: the transport is the
//! raft network, as in openraft's own gRPC example.
//!
//! openraft's messages travel as their serde encoding (bincode, the same encoding as the log
//! on disk) inside `RaftMessage`; a proposal travels as its protobuf `Command` and comes
//! back as a `ProposeResponse`.
//!
//! Every call carries this member's cluster ID and member ID; a receiver of another cluster
//! answers "cluster ID mismatch", which is logged loudly and reported to openraft as an
//! unreachable peer, so nothing from another cluster ever joins.
//!
//! Snapshots: [`PeerClient::full_snapshot`] streams one (see [`super::snapshot`]) as a
//! client stream of `SnapshotChunk`s; the receiver answers once it has installed it.
//! The transfer is bounded by [`SNAPSHOT_TIMEOUT`] as a whole and ends early when openraft
//! cancels it (leadership lost); dropping the stream stops the reading thread.
//!
//! Metrics: `etcd_network_peer_round_trip_time_seconds{To}`,
//! `etcd_network_peer_sent_bytes_total{To}`, `etcd_network_peer_received_bytes_total{From}`
//! (counted by the receiver) and `etcd_network_peer_sent_failures_total{To}`, as etcd's
//! rafthttp counts them; `etcd_network_snapshot_send_{success,failures,inflights_total,
//! total_duration_seconds}{To}` per snapshot sent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::snapshot::{self, SnapshotData};
use super::{decode, encode, Applied, MemberInfo, RaftError, TypeConfig};
use crate::auth::AuthError;
use crate::lease::LeaseError;
use crate::metrics;
use crate::mvcc::MvccError;
use crate::proto::cairnpb::{
    self, propose_response::Result as Outcome, raft_peer_client::RaftPeerClient, ApplyError,
    ProposeRequest, ProposeResponse, RaftMessage, ReadIndexRequest, SnapshotChunk,
};
use crate::proto::etcdserverpb::{
    CompactionResponse, HashKvRequest, HashKvResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use crate::tls::PeerClientTls;

/// Metadata keys every peer call carries.
pub const CLUSTER_ID_HEADER: &str = "cairn-cluster-id";
pub const MEMBER_ID_HEADER: &str = "cairn-member-id";
/// The text a receiver of another cluster answers with (etcd's rafthttp wording).
pub const CLUSTER_ID_MISMATCH: &str = "cluster ID mismatch";

/// How long a connection attempt to a peer may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long sending and installing one snapshot may take.
pub(super) const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a call to a peer failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PeerError {
    #[error("member {0:x} has no usable peer URL")]
    NoAddress(u64),
    #[error("peer {0:x} refused us: {1}")]
    Refused(u64, String),
    #[error("peer {0:x}: {1}")]
    Status(u64, tonic::Status),
    #[error("peer {0:x} sent a malformed answer: {1}")]
    Malformed(u64, String),
}

impl PeerError {
    /// Whether the call certainly had no effect on the peer, so it may be made again: the
    /// peer had no address, no connection to it could be made (tonic's `ConnectError`
    /// under the status: nothing was sent), or the peer answered ABORTED, which the peer
    /// service uses for "not taken, ask the leader" (it is not the leader or has none).
    /// Any other transport failure (a connection reset or a keep-alive timeout after the
    /// request went out) may follow a request the leader received and will apply: the
    /// client gets an error, never a second copy.
    pub fn unsent(&self) -> bool {
        match self {
            PeerError::NoAddress(_) => true,
            PeerError::Refused(..) | PeerError::Malformed(..) => false,
            PeerError::Status(_, s) => s.code() == tonic::Code::Aborted || never_connected(s),
        }
    }
}

/// Whether `status` comes from a failure to connect (nothing of the call was sent).
fn never_connected(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Creates the per-peer series at zero when a member joins, so that a rate over them (e.g.
/// etcdMembersDown's over `etcd_network_peer_sent_failures_total`) has a series before the
/// first failure.
fn zero_peer_series(id: u64) {
    let m = metrics::get();
    let peer = [format!("{id:x}")];
    m.peer_sent_failures.with_label_values(&peer);
    m.peer_sent_bytes.with_label_values(&peer);
    m.peer_received_bytes.with_label_values(&peer);
}

/// The channels to the other members, shared by openraft's network and the follower's
/// forwarding calls.
pub struct Peers {
    cluster_id: u64,
    member_id: u64,
    /// The request timeout for forwarded calls (a proposal may wait for commit).
    forward_timeout: Duration,
    /// Per member: the URL and TLS generation the channel was made for, and the channel.
    channels: Mutex<HashMap<u64, (String, u64, Channel)>>,
    /// The members' peer URLs as the membership knows them, for the forwarding calls.
    addresses: Mutex<HashMap<u64, MemberInfo>>,
    /// Per member: since when every call to it has reached it (etcd's rafthttp
    /// `ActiveSince`); a call that does not reach it clears the entry.
    active_since: Mutex<HashMap<u64, Instant>>,
    /// How https peer URLs are dialled; `None` without a peer certificate.
    tls: Option<Arc<PeerClientTls>>,
}

impl Peers {
    pub fn new(
        cluster_id: u64,
        member_id: u64,
        forward_timeout: Duration,
        tls: Option<Arc<PeerClientTls>>,
    ) -> Arc<Peers> {
        Arc::new(Peers {
            cluster_id,
            member_id,
            forward_timeout,
            tls,
            channels: Mutex::default(),
            addresses: Mutex::default(),
            active_since: Mutex::default(),
        })
    }

    /// Records the members' addresses (from the effective membership).
    pub(super) fn set_members(&self, members: impl IntoIterator<Item = (u64, MemberInfo)>) {
        if let Ok(mut addresses) = self.addresses.lock() {
            let members: HashMap<u64, MemberInfo> = members.into_iter().collect();
            for id in members.keys() {
                if *id != self.member_id && !addresses.contains_key(id) {
                    zero_peer_series(*id);
                }
            }
            *addresses = members;
        }
    }

    /// Since when calls to member `id` have been getting through without a break; `None`
    /// if the last one did not, or none was made.
    pub(super) fn active_since(&self, id: u64) -> Option<Instant> {
        self.active_since.lock().ok()?.get(&id).copied()
    }

    fn member(&self, id: u64) -> Option<MemberInfo> {
        self.addresses.lock().ok()?.get(&id).cloned()
    }

    /// A client for member `id` at `member`'s first peer URL; the channel connects lazily
    /// and is replaced when the member's URL changes.
    fn client(&self, id: u64, member: &MemberInfo) -> Result<RaftPeerClient<Channel>, PeerError> {
        let url = member
            .peer_urls
            .first()
            .ok_or(PeerError::NoAddress(id))?
            .clone();
        let mut channels = self.channels.lock().map_err(|_| PeerError::NoAddress(id))?;
        // Rotated peer certificate files give a new generation: new connections use them.
        let tls = self.tls.as_ref().map(|t| t.connector());
        let generation = tls.as_ref().map_or(0, |t| t.0);
        let channel = match channels.get(&id) {
            Some((known, g, channel)) if *known == url && *g == generation => channel.clone(),
            _ => {
                let channel = channel(&url, tls.map(|t| t.1)).ok_or(PeerError::NoAddress(id))?;
                channels.insert(id, (url, generation, channel.clone()));
                channel
            }
        };
        Ok(RaftPeerClient::new(channel).max_decoding_message_size(usize::MAX))
    }

    /// A request to a peer, with this member's credentials and a deadline.
    fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        let meta = req.metadata_mut();
        if let Ok(v) = format!("{:x}", self.cluster_id).parse() {
            meta.insert(CLUSTER_ID_HEADER, v);
        }
        if let Ok(v) = format!("{:x}", self.member_id).parse() {
            meta.insert(MEMBER_ID_HEADER, v);
        }
        req
    }

    /// Hands a proposal to the leader `leader` and returns apply's result there.
    pub async fn propose(
        &self,
        leader: u64,
        cmd: cairnpb::Command,
    ) -> Result<Result<Applied, RaftError>, PeerError> {
        let member = self.member(leader).ok_or(PeerError::NoAddress(leader))?;
        let mut client = self.client(leader, &member)?;
        let msg = ProposeRequest {
            command: cmd.encode_to_vec(),
        };
        let sent = msg.encoded_len();
        let started = Instant::now();
        let resp = client
            .propose(self.request(msg, self.forward_timeout))
            .await
            .map_err(|s| self.failed(leader, s));
        let resp = resp?.into_inner();
        self.succeeded(leader, started, sent);
        decode_outcome(leader, resp)
    }

    /// Tells the leader `leader` this member's attributes (see [`super::RaftNode`]'s
    /// publishing).
    pub(super) async fn publish(
        &self,
        leader: u64,
        me: &(u64, MemberInfo),
    ) -> Result<(), PeerError> {
        let member = self.member(leader).ok_or(PeerError::NoAddress(leader))?;
        let mut client = self.client(leader, &member)?;
        let data = encode(me).map_err(|e| PeerError::Malformed(leader, e.to_string()))?;
        client
            .publish(self.request(RaftMessage { data }, self.forward_timeout))
            .await
            .map_err(|s| self.failed(leader, s))?;
        Ok(())
    }

    /// Hands an encoded membership change to the leader; returns its encoded answer.
    pub(super) async fn change_members(
        &self,
        leader: u64,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, PeerError> {
        let member = self.member(leader).ok_or(PeerError::NoAddress(leader))?;
        let mut client = self.client(leader, &member)?;
        let resp = client
            .change_members(self.request(RaftMessage { data }, self.forward_timeout))
            .await
            .map_err(|s| self.failed(leader, s))?;
        Ok(resp.into_inner().data)
    }

    /// A lease keep-alive answered by the leader's lessor.
    pub async fn lease_keep_alive(
        &self,
        leader: u64,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, PeerError> {
        let member = self.member(leader).ok_or(PeerError::NoAddress(leader))?;
        let mut client = self.client(leader, &member)?;
        let req = self.request(LeaseKeepAliveRequest { id }, self.forward_timeout);
        let resp = client.lease_keep_alive(req).await;
        Ok(resp.map_err(|s| self.failed(leader, s))?.into_inner())
    }

    /// A lease time-to-live answered by the leader's lessor.
    pub async fn lease_time_to_live(
        &self,
        leader: u64,
        msg: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, PeerError> {
        let member = self.member(leader).ok_or(PeerError::NoAddress(leader))?;
        let mut client = self.client(leader, &member)?;
        let req = self.request(msg, self.forward_timeout);
        let resp = client.lease_time_to_live(req).await;
        Ok(resp.map_err(|s| self.failed(leader, s))?.into_inner())
    }

    /// The lease list of the leader's lessor.
    pub async fn lease_leases(&self, leader: u64) -> Result<LeaseLeasesResponse, PeerError> {
        let member = self.member(leader).ok_or(PeerError::NoAddress(leader))?;
        let mut client = self.client(leader, &member)?;
        let req = self.request(LeaseLeasesRequest {}, self.forward_timeout);
        let resp = client.lease_leases(req).await;
        Ok(resp.map_err(|s| self.failed(leader, s))?.into_inner())
    }

    /// Member `to`'s HashKV at `revision`, for the leader's corruption check.
    pub async fn hash_kv(&self, to: u64, revision: i64) -> Result<HashKvResponse, PeerError> {
        let member = self.member(to).ok_or(PeerError::NoAddress(to))?;
        let mut client = self.client(to, &member)?;
        let req = self.request(HashKvRequest { revision }, self.forward_timeout);
        let resp = client.hash_kv(req).await;
        Ok(resp.map_err(|s| self.failed(to, s))?.into_inner())
    }

    /// Asks the leader `leader` for its read index: once this member has applied up to it,
    /// a local read is linearizable.
    pub async fn read_index(&self, leader: u64) -> Result<u64, PeerError> {
        let member = self.member(leader).ok_or(PeerError::NoAddress(leader))?;
        let mut client = self.client(leader, &member)?;
        let started = Instant::now();
        let resp = client
            .read_index(self.request(ReadIndexRequest {}, self.forward_timeout))
            .await
            .map_err(|s| self.failed(leader, s))?;
        self.succeeded(leader, started, 0);
        Ok(resp.into_inner().index)
    }

    /// Records a successful round trip to `to`.
    fn succeeded(&self, to: u64, started: Instant, sent: usize) {
        if let Ok(mut active) = self.active_since.lock() {
            active.entry(to).or_insert(started);
        }
        metrics::get()
            .peer_round_trip
            .with_label_values(&[&format!("{to:x}")])
            .observe(started.elapsed().as_secs_f64());
        self.count_sent(to, sent);
    }

    fn count_sent(&self, to: u64, sent: usize) {
        metrics::get()
            .peer_sent_bytes
            .with_label_values(&[&format!("{to:x}")])
            .inc_by(u64::try_from(sent).unwrap_or(u64::MAX));
    }

    /// Records a failed call to `to` and says why.
    fn failed(&self, to: u64, status: tonic::Status) -> PeerError {
        // Only a broken connection ends "active since", as a broken stream does in etcd's
        // rafthttp: a status the peer sent still proves the connection works, and a call
        // that timed out (a loaded machine, a large append) did not break it.
        let broken = status.code() == tonic::Code::Unavailable
            && std::error::Error::source(&status).is_some();
        if broken {
            if let Ok(mut active) = self.active_since.lock() {
                active.remove(&to);
            }
        }
        metrics::get()
            .peer_sent_failures
            .with_label_values(&[&format!("{to:x}")])
            .inc();
        if status.code() == tonic::Code::FailedPrecondition
            && status.message().starts_with(CLUSTER_ID_MISMATCH)
        {
            tracing::error!(
                peer = %format!("{to:x}"),
                local_cluster_id = %format!("{:x}", self.cluster_id),
                "peer refused this member: {}", status.message()
            );
            return PeerError::Refused(to, status.message().to_string());
        }
        PeerError::Status(to, status)
    }
}

/// A lazily connecting channel to a peer URL; https ones are dialled with the peer
/// certificate and CA (`crate::tls::PeerClientTls`). `None` for a malformed URL or an
/// https one without TLS.
fn channel(url: &str, tls: Option<TlsConnector>) -> Option<Channel> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Some(
            Endpoint::from_shared(url.to_string())
                .ok()?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy(),
        );
    };
    let tls = tls?;
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).ok()?;
    // tonic would refuse an https URI with a connector of its own: the TLS is done in the
    // connector, so the endpoint itself is plain http.
    let endpoint = Endpoint::from_shared(format!("http://{rest}")).ok()?;
    let connector = tower::service_fn(move |uri: http::Uri| {
        let (tls, name) = (tls.clone(), name.clone());
        async move {
            let authority = uri
                .authority()
                .ok_or_else(|| std::io::Error::other("peer URL without host"))?
                .to_string();
            let tcp = tokio::net::TcpStream::connect(authority).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Some(
        endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector_lazy(connector),
    )
}

/// Asks the members at `urls` (the other members of `--initial-cluster`), in turn, for the
/// cluster ID and member list: how a member started with `--initial-cluster-state existing`
/// learns who it is (etcd's `GetClusterFromRemotePeers`).
pub async fn fetch_cluster(
    urls: &[String],
    timeout: Duration,
    tls: Option<&Arc<PeerClientTls>>,
) -> Result<(u64, Vec<(u64, MemberInfo)>), PeerError> {
    let mut last = PeerError::NoAddress(0);
    for url in urls {
        let Some(channel) = channel(url, tls.map(|t| t.connector().1)) else {
            continue;
        };
        let mut client = RaftPeerClient::new(channel).max_decoding_message_size(usize::MAX);
        let mut req = tonic::Request::new(RaftMessage::default());
        req.set_timeout(timeout);
        match client.cluster(req).await {
            Ok(resp) => {
                return decode(&resp.into_inner().data)
                    .map_err(|e| PeerError::Malformed(0, e.to_string()))
            }
            Err(status) => {
                tracing::warn!(peer = %url, error = %status, "cannot fetch the cluster from this peer");
                last = PeerError::Status(0, status);
            }
        }
    }
    Err(last)
}

/// Encodes apply's result for the follower that forwarded the proposal.
pub fn encode_outcome(result: Result<Applied, RaftError>) -> Result<ProposeResponse, RaftError> {
    let refusal = |e: ApplyError, key_len: usize| ProposeResponse {
        result: Some(Outcome::Error(e as i32)),
        key_len: u64::try_from(key_len).unwrap_or(u64::MAX),
    };
    let ok = |r: Outcome| ProposeResponse {
        result: Some(r),
        key_len: 0,
    };
    Ok(match result {
        Ok(Applied::Txn(resp, _)) => ok(Outcome::Txn(resp)),
        Ok(Applied::Compaction(_)) => ok(Outcome::Compaction(CompactionResponse::default())),
        Ok(Applied::LeaseGrant(resp)) => ok(Outcome::LeaseGrant(resp)),
        Ok(Applied::LeaseRevoke(resp, _)) => ok(Outcome::LeaseRevoke(resp)),
        Ok(Applied::LeaseCheckpoint(resp)) => ok(Outcome::LeaseCheckpoint(resp)),
        Ok(Applied::Auth(applied)) => ok(Outcome::Auth(applied)),
        Ok(Applied::Alarm(resp)) => ok(Outcome::Alarm(resp)),
        Err(RaftError::NoSpace) => refusal(ApplyError::NoSpace, 0),
        Err(RaftError::Corrupt) => refusal(ApplyError::Corrupt, 0),
        Err(RaftError::Auth(e)) => refusal(auth_refusal(e), 0),
        Err(RaftError::Apply(e)) => match e {
            MvccError::Compacted => refusal(ApplyError::Compacted, 0),
            MvccError::FutureRev => refusal(ApplyError::FutureRev, 0),
            MvccError::KeyNotFound => refusal(ApplyError::KeyNotFound, 0),
            MvccError::InvalidKey(n) => refusal(ApplyError::InvalidKey, n),
            MvccError::LeaseNotFound => refusal(ApplyError::LeaseNotFound, 0),
            other => return Err(RaftError::Apply(other)),
        },
        Err(RaftError::Lease(e)) => match e {
            LeaseError::NotFound => refusal(ApplyError::LeaseNotFound, 0),
            LeaseError::Exists => refusal(ApplyError::LeaseExists, 0),
            LeaseError::TtlTooLarge => refusal(ApplyError::LeaseTtlTooLarge, 0),
            other => return Err(RaftError::Lease(other)),
        },
        Err(other) => return Err(other),
    })
}

/// The wire codes of the auth store's refusals, both ways.
const AUTH_REFUSALS: &[(ApplyError, AuthError)] = &[
    (ApplyError::AuthNotEnabled, AuthError::AuthNotEnabled),
    (ApplyError::AuthFailed, AuthError::AuthFailed),
    (ApplyError::RootUserNotExist, AuthError::RootUserNotExist),
    (ApplyError::RootRoleNotExist, AuthError::RootRoleNotExist),
    (ApplyError::UserAlreadyExist, AuthError::UserAlreadyExist),
    (ApplyError::UserEmpty, AuthError::UserEmpty),
    (ApplyError::UserNotFound, AuthError::UserNotFound),
    (ApplyError::RoleAlreadyExist, AuthError::RoleAlreadyExist),
    (ApplyError::RoleNotFound, AuthError::RoleNotFound),
    (ApplyError::RoleEmpty, AuthError::RoleEmpty),
    (
        ApplyError::PermissionNotGiven,
        AuthError::PermissionNotGiven,
    ),
    (ApplyError::RoleNotGranted, AuthError::RoleNotGranted),
    (
        ApplyError::PermissionNotGranted,
        AuthError::PermissionNotGranted,
    ),
    (ApplyError::InvalidAuthMgmt, AuthError::InvalidAuthMgmt),
    (ApplyError::NoPasswordUser, AuthError::NoPasswordUser),
    (
        ApplyError::AuthPermissionDenied,
        AuthError::PermissionDenied,
    ),
    (ApplyError::AuthOldRevision, AuthError::OldRevision),
];

/// The wire code of an auth refusal (every one has one in [`AUTH_REFUSALS`]).
fn auth_refusal(e: AuthError) -> ApplyError {
    AUTH_REFUSALS
        .iter()
        .find(|(_, known)| *known == e)
        .map_or(ApplyError::Unspecified, |(code, _)| *code)
}

fn decode_outcome(
    from: u64,
    resp: ProposeResponse,
) -> Result<Result<Applied, RaftError>, PeerError> {
    let malformed = |what: &str| PeerError::Malformed(from, what.to_string());
    Ok(match resp.result.ok_or_else(|| malformed("no result"))? {
        Outcome::Txn(r) => Ok(Applied::Txn(r, Vec::new())),
        // The leader has compacted; a forwarded `physical` compaction waits for the
        // leader's apply only.
        Outcome::Compaction(_) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(());
            Ok(Applied::Compaction(rx))
        }
        Outcome::LeaseGrant(r) => Ok(Applied::LeaseGrant(r)),
        Outcome::LeaseRevoke(r) => Ok(Applied::LeaseRevoke(r, Vec::new())),
        Outcome::LeaseCheckpoint(r) => Ok(Applied::LeaseCheckpoint(r)),
        Outcome::Auth(r) => Ok(Applied::Auth(r)),
        Outcome::Alarm(r) => Ok(Applied::Alarm(r)),
        Outcome::Error(code) => Err(
            match ApplyError::try_from(code).map_err(|_| malformed("unknown refusal"))? {
                ApplyError::Compacted => RaftError::Apply(MvccError::Compacted),
                ApplyError::FutureRev => RaftError::Apply(MvccError::FutureRev),
                ApplyError::KeyNotFound => RaftError::Apply(MvccError::KeyNotFound),
                ApplyError::InvalidKey => RaftError::Apply(MvccError::InvalidKey(
                    usize::try_from(resp.key_len).unwrap_or(usize::MAX),
                )),
                ApplyError::LeaseNotFound => RaftError::Apply(MvccError::LeaseNotFound),
                ApplyError::LeaseExists => RaftError::Lease(LeaseError::Exists),
                ApplyError::LeaseTtlTooLarge => RaftError::Lease(LeaseError::TtlTooLarge),
                ApplyError::NoSpace => RaftError::NoSpace,
                ApplyError::Corrupt => RaftError::Corrupt,
                ApplyError::Unspecified => return Err(malformed("unspecified refusal")),
                auth => RaftError::Auth(
                    AUTH_REFUSALS
                        .iter()
                        .find(|(code, _)| *code == auth)
                        .map(|(_, e)| *e)
                        .ok_or_else(|| malformed("unknown refusal"))?,
                ),
            },
        ),
    })
}

/// openraft's network factory: a [`PeerClient`] per target.
pub(super) struct Network(pub(super) Arc<Peers>);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, member: &MemberInfo) -> PeerClient {
        PeerClient {
            peers: self.0.clone(),
            target,
            member: member.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub(super) struct PeerClient {
    peers: Arc<Peers>,
    target: u64,
    member: MemberInfo,
}

impl PeerClient {
    /// One raft RPC: encode, send with `deadline`, decode; a failure to reach the peer is
    /// `Unreachable` (openraft backs off), a bad answer a network error.
    async fn call<Req, Resp, Fut>(
        &mut self,
        rpc: &Req,
        deadline: Duration,
        send: impl FnOnce(RaftPeerClient<Channel>, tonic::Request<RaftMessage>) -> Fut,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let data = encode(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let sent = data.len();
        // The membership's current address first: openraft keeps a replication stream
        // (and this client) when only a member's URLs change (`member update`).
        let member = self.peers.member(self.target);
        let client = self
            .peers
            .client(self.target, member.as_ref().unwrap_or(&self.member))
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let started = Instant::now();
        let req = self.peers.request(RaftMessage { data }, deadline);
        let resp = send(client, req).await.map_err(|status| {
            let e = self.peers.failed(self.target, status);
            RPCError::Unreachable(Unreachable::new(&e))
        })?;
        self.peers.succeeded(self.target, started, sent);
        decode(&resp.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft's heartbeats are append-entries without entries.
        let is_heartbeat = rpc.entries.is_empty();
        // openraft's deadline here is the heartbeat interval, shorter than a follower's
        // fsync on a loaded machine or a slow link's round trip: then no entry would ever
        // commit. etcd gives raft messages seconds; the request timeout bounds the proposal
        // waiting for this anyway. (openraft times its heartbeats out itself.)
        let deadline = option.hard_ttl().max(self.peers.forward_timeout);
        let sent = self
            .call(&rpc, deadline, |mut c, req| async move {
                c.append_entries(req).await
            })
            .await;
        if is_heartbeat && sent.is_err() {
            metrics::get().heartbeat_send_failures.inc();
        }
        sent
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.hard_ttl(), |mut c, req| async move {
            c.vote(req).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, option.hard_ttl(), |mut c, req| async move {
            c.transfer_leader(req).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let to = format!("{:x}", self.target);
        let m = metrics::get();
        let inflight = m.snapshot_send_inflights.with_label_values(&[&to]);
        inflight.inc();
        let started = Instant::now();
        tracing::info!(to = %to, snapshot = %snapshot.meta, "sending a snapshot");
        let sent = tokio::select! {
            sent = tokio::time::timeout(SNAPSHOT_TIMEOUT, self.send_snapshot(vote, snapshot)) => {
                sent.unwrap_or_else(|_| Err(StreamingError::Unreachable(Unreachable::from_string(
                    format!("sending a snapshot took longer than {SNAPSHOT_TIMEOUT:?}"),
                ))))
            }
            closed = cancel => Err(StreamingError::Closed(closed)),
        };
        inflight.dec();
        match &sent {
            Ok(_) => {
                m.snapshot_send_success.with_label_values(&[&to]).inc();
                m.snapshot_send_duration
                    .with_label_values(&[&to])
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(to = %to, elapsed = ?started.elapsed(), "snapshot sent and installed");
            }
            Err(e) => {
                m.snapshot_send_failures.with_label_values(&[&to]).inc();
                tracing::warn!(to = %to, error = %e, "sending a snapshot failed");
            }
        }
        sent
    }
}

impl PeerClient {
    /// Streams the header and the snapshot's chunks; returns the receiver's answer.
    async fn send_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        use futures::StreamExt;
        let header = encode(&(vote, snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .peers
            .client(self.target, &self.member)
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let (peers, target) = (self.peers.clone(), self.target);
        let chunks = snapshot::stream(snapshot.snapshot);
        let chunks = tokio_stream::StreamExt::map_while(
            tokio_stream::wrappers::ReceiverStream::new(chunks),
            move |chunk| match chunk {
                Ok(data) => {
                    peers.count_sent(target, data.len());
                    Some(SnapshotChunk {
                        header: Vec::new(),
                        data,
                    })
                }
                // The stream ends short; the receiver refuses it by its digest.
                Err(e) => {
                    tracing::error!(error = %e, "reading the snapshot to send failed");
                    None
                }
            },
        );
        let body = futures::stream::iter([SnapshotChunk {
            header,
            data: Vec::new(),
        }])
        .chain(chunks);
        let req = self.peers.request(body, SNAPSHOT_TIMEOUT);
        let resp = client.install_snapshot(req).await.map_err(|status| {
            let e = self.peers.failed(self.target, status);
            StreamingError::Unreachable(Unreachable::new(&e))
        })?;
        decode(&resp.into_inner().data).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{ResponseHeader, TxnResponse};

    /// A forwarded proposal answers the follower's client exactly as the leader's apply
    /// answered: results and deterministic refusals survive the trip.
    #[test]
    fn apply_results_survive_forwarding() {
        let trip = |r: Result<Applied, RaftError>| {
            let wire = encode_outcome(r).expect("encodable");
            decode_outcome(
                1,
                ProposeResponse::decode(wire.encode_to_vec().as_slice()).expect("decode"),
            )
            .expect("well formed")
        };
        let txn = TxnResponse {
            header: Some(ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            succeeded: true,
            ..Default::default()
        };
        match trip(Ok(Applied::Txn(txn.clone(), Vec::new()))) {
            Ok(Applied::Txn(back, _)) => assert_eq!(back, txn),
            _ => panic!("txn result changed"),
        }
        assert!(matches!(
            trip(Err(RaftError::Apply(MvccError::Compacted))),
            Err(RaftError::Apply(MvccError::Compacted))
        ));
        assert!(matches!(
            trip(Err(RaftError::Apply(MvccError::InvalidKey(40_000)))),
            Err(RaftError::Apply(MvccError::InvalidKey(40_000)))
        ));
        assert!(matches!(
            trip(Err(RaftError::Lease(LeaseError::Exists))),
            Err(RaftError::Lease(LeaseError::Exists))
        ));
        // Anything else is not an apply result: it travels as the call's status.
        assert!(encode_outcome(Err(RaftError::Timeout)).is_err());
    }

    #[test]
    fn only_calls_that_never_arrived_are_retried() {
        let status = |code, msg: &str| PeerError::Status(1, tonic::Status::new(code, msg));
        assert!(status(tonic::Code::Aborted, "etcdserver: not leader").unsent());
        assert!(PeerError::NoAddress(1).unsent());
        // A status the leader sent (no local transport error) may follow a proposal.
        assert!(!status(tonic::Code::Unavailable, "etcdserver: request timed out").unsent());
        assert!(!status(tonic::Code::DeadlineExceeded, "timeout").unsent());
        assert!(!PeerError::Refused(1, CLUSTER_ID_MISMATCH.into()).unsent());
        // Transport failures tonic reports as UNAVAILABLE: only a failed connect is unsent.
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        assert!(PeerError::Status(1, connect).unsent());
        let mut reset = tonic::Status::unavailable("connection reset after the request was sent");
        reset.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(!PeerError::Status(1, reset).unsent());
    }
}

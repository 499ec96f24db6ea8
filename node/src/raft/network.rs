//! The peer transport: how this member's raft talks to other members.
//!
//! Not there yet: cairn runs a single voter, which never sends a raft RPC. Every call fails
//! with "peer transport not supported yet", reported to openraft as an unreachable peer, so a
//! misconfigured multi-member start backs off instead of spinning. The multi-node transport
//! replaces [`PeerClient`] (a gRPC client per peer, with its server side calling
//! `Raft::append_entries` / `vote` / `install_full_snapshot`).

use std::future::Future;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};

use super::{MemberInfo, SnapshotData, TypeConfig};

/// Creates a [`PeerClient`] per peer.
pub(super) struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, _member: &MemberInfo) -> PeerClient {
        PeerClient { target }
    }
}

/// The connection to one peer.
pub(super) struct PeerClient {
    target: u64,
}

impl PeerClient {
    fn unsupported(&self) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!(
            "peer transport not supported yet (to member {:x})",
            self.target
        ))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unsupported()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unsupported()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<TypeConfig>,
        _snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.unsupported()))
    }
}

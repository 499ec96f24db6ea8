//! Requests on any member: the one place where the core decides between doing a step
//! locally and handing it to the leader, and the receiving side of those hand-overs.
//!
//! - Proposals (writes, compactions, lease grants and revokes) are proposed locally on the
//!   leader and forwarded to it from a follower; the leader answers with apply's result.
//! - Linearizable reads wait for a ReadIndex: the leader's own, or on a follower the
//!   leader's read index fetched over the peer service, then until the local state machine
//!   has applied up to it (the read is then served locally).
//! - While there is no leader, or the leader cannot be reached before the call got through,
//!   both retry until the request timeout and then answer etcd's "no leader" / "request
//!   timed out"; a request that may have reached the leader is never retried, so a write is
//!   never applied twice by the server.
//!
//! Peer calls are checked here first: a caller from another cluster is refused with
//! "cluster ID mismatch" and nothing of its request is looked at.

use std::time::Duration;

use tokio::time::Instant;

use super::{Core, Error};
use crate::proto::cairnpb::{Command, ProposeResponse, SnapshotChunk};
use crate::proto::etcdserverpb::{
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    Member,
};
use crate::raft::{Applied, MemberChange, RaftError};

/// How long a step waits before trying again when there is no usable leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a request may spend waiting for a leader in total (etcd's request timeout is
/// 5 s plus two elections; the raft calls themselves have that bound too).
const LEADER_WAIT: Duration = Duration::from_secs(7);

impl Core {
    /// Proposes `cmd` on the leader, wherever it is, and returns apply's result.
    pub(super) async fn propose_anywhere(&self, cmd: Command) -> Result<Applied, Error> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let result = match self.raft.status().leader {
                Some(leader) if leader != self.member_id => {
                    self.raft.forward(leader, cmd.clone()).await
                }
                _ => self.raft.propose(cmd.clone()).await,
            };
            match result {
                Err(e) if e.unsent() && Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::debug!(error = %e, "proposal not taken, retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Makes a membership change on the leader, wherever it is; returns the members after.
    pub(super) async fn member_change_anywhere(
        &self,
        change: MemberChange,
    ) -> Result<Vec<Member>, Error> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let result = match self.raft.status().leader {
                Some(leader) if leader != self.member_id => {
                    self.raft
                        .forward_member_change(leader, change.clone())
                        .await
                }
                _ => self.raft.change_members(change.clone()).await,
            };
            match result {
                Err(e) if e.unsent() && Instant::now() + RETRY_PAUSE < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Waits until a read from the local store is linearizable.
    pub(super) async fn linearizable_barrier(&self) -> Result<(), Error> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            // A read barrier has no effect, so any failure to get one may be retried.
            match self.raft.read_barrier().await {
                Err(e) if e.unsent() && Instant::now() + RETRY_PAUSE < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// The leader, if another member is it: lease calls the leader's lessor alone answers
    /// (keep-alive, time-to-live, the lease list) go there as they are, once.
    pub(super) fn leader_elsewhere(&self) -> Option<u64> {
        self.raft.status().leader.filter(|l| *l != self.member_id)
    }

    pub(super) async fn forward_keep_alive(
        &self,
        leader: u64,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, Error> {
        let resp = self.raft.peers().lease_keep_alive(leader, id).await;
        let resp = resp.map_err(RaftError::from)?;
        Ok(LeaseKeepAliveResponse {
            header: self.current_header(),
            ..resp
        })
    }

    pub(super) async fn forward_time_to_live(
        &self,
        leader: u64,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Error> {
        let resp = self.raft.peers().lease_time_to_live(leader, req).await;
        let resp = resp.map_err(RaftError::from)?;
        Ok(LeaseTimeToLiveResponse {
            header: self.current_header(),
            ..resp
        })
    }

    pub(super) async fn forward_leases(&self, leader: u64) -> Result<LeaseLeasesResponse, Error> {
        let resp = self.raft.peers().lease_leases(leader).await;
        let resp = resp.map_err(RaftError::from)?;
        Ok(LeaseLeasesResponse {
            header: self.current_header(),
            ..resp
        })
    }

    /// Refuses a peer call from another cluster. `cluster_id` is what the caller sent.
    pub fn check_peer(&self, cluster_id: Option<u64>) -> Result<(), Error> {
        match cluster_id {
            Some(id) if id == self.cluster_id => Ok(()),
            remote => {
                tracing::warn!(
                    local = %format!("{:x}", self.cluster_id),
                    remote = %remote.map_or("none".to_string(), |id| format!("{id:x}")),
                    "refused a peer request: cluster ID mismatch"
                );
                Err(Error::ClusterIdMismatch)
            }
        }
    }

    /// The leader's side of a forwarded proposal.
    pub async fn peer_propose(&self, command: &[u8]) -> Result<ProposeResponse, Error> {
        Ok(self.raft.peer_propose(command).await?)
    }

    /// The leader's side of a follower's linearizable read.
    pub async fn peer_read_index(&self) -> Result<u64, Error> {
        Ok(self.raft.peer_read_index().await?)
    }

    /// A raft append-entries from the leader (openraft's encoding in and out).
    pub async fn peer_append_entries(&self, data: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(self.raft.peer_append_entries(data).await?)
    }

    /// A member's attributes for the membership (etcd's publish).
    pub async fn peer_publish(&self, data: &[u8]) -> Result<(), Error> {
        Ok(self.raft.peer_publish(data).await?)
    }

    /// A membership change forwarded by a follower (openraft's encoding in and out).
    pub async fn peer_member_change(&self, data: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(self.raft.peer_member_change(data).await?)
    }

    /// The cluster ID and members for a joining member; asked without a cluster ID.
    pub fn peer_cluster(&self) -> Result<Vec<u8>, Error> {
        Ok(self.raft.peer_cluster(self.cluster_id)?)
    }

    /// Leadership handed over by the leader (openraft's encoding in and out).
    pub async fn peer_transfer_leader(&self, data: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(self.raft.peer_transfer_leader(data).await?)
    }

    /// A snapshot streamed by the leader (`from`, hex), installed once whole.
    pub async fn peer_install_snapshot(
        &self,
        from: &str,
        chunks: impl futures::Stream<Item = Result<SnapshotChunk, String>> + Send,
    ) -> Result<Vec<u8>, Error> {
        Ok(self.raft.peer_install_snapshot(from, chunks).await?)
    }

    /// A raft vote request (openraft's encoding in and out).
    pub async fn peer_vote(&self, data: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(self.raft.peer_vote(data).await?)
    }
}

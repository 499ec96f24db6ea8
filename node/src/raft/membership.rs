//! Membership changes (etcd's MemberAdd, MemberRemove, MemberUpdate, MemberPromote), run on
//! the leader as openraft membership changes; a follower forwards them there
//! ([`RaftNode::forward_member_change`]). The checks against the current membership
//! (unknown member, URLs already in use, promoting a voter or a learner that lags) are made
//! on the leader, which holds the membership the change applies to.
//!
//! A voter is added in two steps, as openraft requires: first as a learner (replication
//! starts, not waiting for it to catch up), then promoted, so the leader never waits for
//! a member that has not started yet, as `etcdctl member add` does not. A member added by
//! a change has no name or client URLs until it starts and publishes them (see
//! `publish` in the parent module); etcdctl lists it as "unstarted" meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ChangeMembershipError, ClientWriteError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use super::{decode, encode, stopped_or_fatal, MemberInfo, RaftError, RaftNode};
use crate::proto::etcdserverpb::Member;

/// etcd's `readyPercent`: a learner may be promoted once it has this share of the leader's
/// log.
const LEARNER_READY_PERCENT: f64 = 0.9;

/// How long a change waits before trying again while another one commits.
const CHANGE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// One membership change, as the core asks for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MemberChange {
    Add {
        id: u64,
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove(u64),
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote(u64),
}

/// Why the leader refused a membership change (etcd's membership errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MemberError {
    #[error("member not found")]
    NotFound,
    #[error("member ID already exist")]
    IdExists,
    #[error("peer URLs already exists")]
    PeerUrlsExist,
    #[error("can only promote a learner member")]
    NotLearner,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
}

/// The member list as it travels between members: (id, attributes, is learner).
type Members = Vec<(u64, MemberInfo, bool)>;

impl RaftNode {
    /// The members of the effective membership, voters and learners, in etcd's form.
    pub fn member_list(&self) -> Vec<Member> {
        to_etcd(self.members_with_roles())
    }

    fn members_with_roles(&self) -> Members {
        let rx = self.raft.metrics();
        let m = openraft::async_runtime::WatchReceiver::borrow_watched(&rx);
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        m.membership_config
            .nodes()
            .map(|(id, info)| (*id, info.clone(), !voters.contains(id)))
            .collect()
    }

    /// Makes `change` on this member, which must be the leader, and returns the members
    /// after it.
    pub async fn change_members(&self, change: MemberChange) -> Result<Vec<Member>, RaftError> {
        // Boxed: openraft's membership futures are deep enough to overflow the compiler's
        // layout recursion limit in the callers' async blocks.
        Box::pin(self.change_here(change)).await.map(to_etcd)
    }

    /// Hands `change` to the leader `leader` and returns the members after it.
    pub async fn forward_member_change(
        &self,
        leader: u64,
        change: MemberChange,
    ) -> Result<Vec<Member>, RaftError> {
        let data = encode(&change).map_err(|e| RaftError::Malformed(e.to_string()))?;
        let answer = self.peers.change_members(leader, data).await?;
        let result: Result<Members, MemberError> =
            decode(&answer).map_err(|e| RaftError::Malformed(e.to_string()))?;
        result.map(to_etcd).map_err(RaftError::Member)
    }

    /// The leader's side of a forwarded change: the answer is the member list or the
    /// refusal, in openraft's encoding; other errors travel as the call's status.
    pub async fn peer_member_change(&self, data: &[u8]) -> Result<Vec<u8>, RaftError> {
        let change: MemberChange = decode(data).map_err(|e| RaftError::Malformed(e.to_string()))?;
        let result = match Box::pin(self.change_here(change)).await {
            Ok(members) => Ok(members),
            Err(RaftError::Member(e)) => Err(e),
            Err(other) => return Err(other),
        };
        encode(&result).map_err(|e| RaftError::Malformed(e.to_string()))
    }

    /// The leader's side of a joining member's start-up: the cluster ID and the members.
    pub fn peer_cluster(&self, cluster_id: u64) -> Result<Vec<u8>, RaftError> {
        let members: Vec<(u64, MemberInfo)> = self
            .members_with_roles()
            .into_iter()
            .map(|(id, info, _)| (id, info))
            .collect();
        encode(&(cluster_id, members)).map_err(|e| RaftError::Malformed(e.to_string()))
    }

    async fn change_here(&self, change: MemberChange) -> Result<Members, RaftError> {
        let members = self.members_with_roles();
        let find = |id: u64| members.iter().find(|(m, _, _)| *m == id);
        let urls_taken = |id: u64, urls: &[String]| {
            members
                .iter()
                .filter(|(m, _, _)| *m != id)
                .any(|(_, info, _)| info.peer_urls.iter().any(|u| urls.contains(u)))
        };
        match change {
            MemberChange::Add {
                id,
                peer_urls,
                learner,
            } => {
                if find(id).is_some() {
                    return Err(MemberError::IdExists.into());
                }
                if urls_taken(id, &peer_urls) {
                    return Err(MemberError::PeerUrlsExist.into());
                }
                let info = MemberInfo {
                    name: String::new(),
                    peer_urls,
                    client_urls: Vec::new(),
                };
                self.apply_change(ChangeMembers::AddNodes(BTreeMap::from([(id, info)])))
                    .await?;
                if !learner {
                    self.apply_change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                        .await?;
                }
            }
            MemberChange::Remove(id) => {
                let (_, _, is_learner) = find(id).ok_or(MemberError::NotFound)?;
                let ids = BTreeSet::from([id]);
                let change = if *is_learner {
                    ChangeMembers::RemoveNodes(ids)
                } else {
                    ChangeMembers::RemoveVoters(ids)
                };
                // `retain: false`: a removed voter leaves the member list too.
                self.apply_change_retaining(change, false).await?;
            }
            MemberChange::Update { id, peer_urls } => {
                let (_, info, _) = find(id).ok_or(MemberError::NotFound)?;
                if urls_taken(id, &peer_urls) {
                    return Err(MemberError::PeerUrlsExist.into());
                }
                let info = MemberInfo {
                    peer_urls,
                    ..info.clone()
                };
                self.apply_change(ChangeMembers::SetNodes(BTreeMap::from([(id, info)])))
                    .await?;
            }
            MemberChange::Promote(id) => {
                let (_, _, is_learner) = find(id).ok_or(MemberError::NotFound)?;
                if !is_learner {
                    return Err(MemberError::NotLearner.into());
                }
                if !self.learner_ready(id) {
                    return Err(MemberError::LearnerNotReady.into());
                }
                self.apply_change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                    .await?;
            }
        }
        Ok(self.members_with_roles())
    }

    /// etcd's `isLearnerReady`: the learner has replicated at least 90 % of the leader's log.
    fn learner_ready(&self, id: u64) -> bool {
        let rx = self.raft.metrics();
        let m = openraft::async_runtime::WatchReceiver::borrow_watched(&rx);
        let leader_last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map_or(0, |l| l.index());
        // Exact integers below 2^53 are all a log index needs here.
        matched as f64 >= leader_last as f64 * LEARNER_READY_PERCENT
    }

    pub(super) async fn apply_change(
        &self,
        change: ChangeMembers<u64, MemberInfo>,
    ) -> Result<(), RaftError> {
        self.apply_change_retaining(change, true).await
    }

    async fn apply_change_retaining(
        &self,
        change: ChangeMembers<u64, MemberInfo>,
        retain: bool,
    ) -> Result<(), RaftError> {
        // One change at a time: a change arriving while another (e.g. a member publishing
        // its client URLs) is still committing waits for it, bounded.
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let write = self.raft.change_membership(change.clone(), retain);
            match tokio::time::timeout_at(deadline, write).await {
                Err(_) => return Err(RaftError::Timeout),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(openraft::error::RaftError::Fatal(e))) => return Err(stopped_or_fatal(e)),
                Ok(Err(openraft::error::RaftError::APIError(
                    ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_)),
                ))) if tokio::time::Instant::now() + CHANGE_RETRY < deadline => {
                    tokio::time::sleep(CHANGE_RETRY).await;
                }
                Ok(Err(openraft::error::RaftError::APIError(e))) => {
                    return Err(super::write_error(e))
                }
            }
        }
    }
}

impl From<MemberError> for RaftError {
    fn from(e: MemberError) -> RaftError {
        RaftError::Member(e)
    }
}

fn to_etcd(members: Members) -> Vec<Member> {
    members
        .into_iter()
        .map(|(id, info, is_learner)| Member {
            id,
            name: info.name,
            peer_ur_ls: info.peer_urls,
            client_ur_ls: info.client_urls,
            is_learner,
        })
        .collect()
}

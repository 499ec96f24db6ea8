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

use super::{decode, encode, stopped_or_fatal, MemberInfo, RaftError, RaftNode, TypeConfig};
use crate::proto::etcdserverpb::Member;

/// etcd's `readyPercent`: a learner may be promoted once it has this share of the leader's
/// log.
const LEARNER_READY_PERCENT: f64 = 0.9;

/// How long a change waits before trying again while another one commits.
const CHANGE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// etcd's `HealthInterval`: with the strict reconfiguration check, a voter is added only
/// once the leader has reached every voter without a break for this long.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

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
    #[error("re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("unhealthy cluster")]
    Unhealthy,
    #[error("too many learner members in cluster")]
    TooManyLearners,
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
        members_of(&m)
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
        let members = result.map_err(RaftError::Member)?;
        self.until_seen_here(&members).await;
        Ok(to_etcd(members))
    }

    /// etcd answers a member call once the member that took it has applied the change, so
    /// a member list asked of that member next shows it. A change made on the leader reaches
    /// this member's list when it applies the entry: wait for that, bounded (a later change
    /// that makes the lists differ only costs the wait).
    async fn until_seen_here(&self, members: &Members) {
        let seen = self
            .raft
            .wait(Some(self.request_timeout))
            .metrics(|m| members_of(m) == *members, "member change seen here")
            .await;
        if seen.is_err() {
            tracing::debug!("the leader's member change is not in this member's list yet");
        }
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
                self.may_add(&members, learner)?;
                let info = MemberInfo {
                    name: String::new(),
                    peer_urls,
                    client_urls: Vec::new(),
                };
                self.apply_change(ChangeMembers::AddNodes(BTreeMap::from([(id, info)])))
                    .await?;
                if !learner {
                    self.add_voter(id).await?;
                }
            }
            MemberChange::Remove(id) => {
                let (_, _, is_learner) = find(id).ok_or(MemberError::NotFound)?;
                if !is_learner {
                    self.may_remove_voter(&members, id)?;
                }
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
                if self.strict_reconfig_check && !quorum_started(&members, 1, 1, None) {
                    return Err(MemberError::NotEnoughStarted.into());
                }
                self.apply_change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                    .await?;
            }
        }
        Ok(self.members_with_roles())
    }

    /// etcd's `mayAddMember`, then its learner limit: a voter is added only if the started
    /// voters keep a quorum of the cluster it makes; any member only once every voter has
    /// been reachable for [`HEALTH_INTERVAL`] (a change made while one is down could lose
    /// quorum); a learner only while there are fewer than `--max-learners`.
    fn may_add(&self, members: &Members, learner: bool) -> Result<(), MemberError> {
        if self.strict_reconfig_check {
            // A one-member cluster may always add its second member: etcd's recovery
            // recipe (restore or --force-new-cluster, then add members one at a time).
            let voters = members.iter().filter(|(_, _, l)| !l).count();
            let second = voters == 1 && members.iter().any(|(_, info, l)| !l && started(info));
            if !learner && !second && !quorum_started(members, 1, 0, None) {
                return Err(MemberError::NotEnoughStarted);
            }
            let since = std::time::Instant::now().checked_sub(HEALTH_INTERVAL);
            let healthy = voters_except(members, self.member_id).all(
                |id| matches!((self.peers.active_since(id), since), (Some(t), Some(s)) if t <= s),
            );
            if !healthy {
                return Err(MemberError::Unhealthy);
            }
        }
        let learners = members.iter().filter(|(_, _, l)| *l).count();
        if learner && learners >= self.max_learners {
            return Err(MemberError::TooManyLearners);
        }
        Ok(())
    }

    /// etcd's `mayRemoveMember` for a voter: the started voters left must keep a quorum,
    /// and unless `id` is down already (removing it loses nothing), the voters this leader
    /// reaches, less `id`, must too.
    fn may_remove_voter(&self, members: &Members, id: u64) -> Result<(), MemberError> {
        if !self.strict_reconfig_check {
            return Ok(());
        }
        if !quorum_started(members, 0, 0, Some(id)) {
            return Err(MemberError::NotEnoughStarted);
        }
        if id != self.member_id && self.peers.active_since(id).is_none() {
            return Ok(());
        }
        let voters = members.iter().filter(|(_, _, l)| !l).count();
        let reached = 1 + voters_except(members, self.member_id)
            .filter(|m| self.peers.active_since(*m).is_some())
            .count();
        // etcd: (active - 1) < 1 + (len(m) - 1) / 2 refuses.
        match reached > 1 + (voters - 1) / 2 {
            true => Ok(()),
            false => Err(MemberError::Unhealthy),
        }
    }

    /// Makes the learner `id` a voter and returns once the membership lists it as one,
    /// without waiting for the change to commit. openraft changes voters through a joint
    /// configuration that must commit in the new configuration too, which needs the new
    /// member when the cluster had one or two voters; etcd's `member add` returns before the
    /// member starts (its single-step change commits in the old configuration), and the
    /// seeds' recipes start the member only after that. The change commits once the member
    /// has started and caught up; until then the cluster has the quorum etcd would have
    /// (for one voter, none: writes wait, as in etcd).
    async fn add_voter(&self, id: u64) -> Result<(), RaftError> {
        let raft = self.raft.clone();
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        let mut commit = tokio::spawn(async move { raft.change_membership(change, true).await });
        let wait = self.raft.wait(Some(self.request_timeout));
        let listed = wait.metrics(
            |m| {
                m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id)
            },
            "new voter listed",
        );
        tokio::select! {
            done = &mut commit => match done {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(openraft::error::RaftError::Fatal(e))) => Err(stopped_or_fatal(e)),
                Ok(Err(openraft::error::RaftError::APIError(e))) => Err(super::write_error(e)),
                Err(e) => Err(RaftError::Fatal(format!("membership change task: {e}"))),
            },
            seen = listed => match seen {
                Ok(_) => Ok(()),
                Err(_) => Err(RaftError::Timeout),
            },
        }
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
                Ok(Ok(done)) => return self.until_listed(done.log_id, deadline).await,
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
    /// Waits until the membership this member lists (openraft's metrics, which follow the
    /// change's commit asynchronously) includes the change at `log_id`, so the answer to a
    /// member call and any member list after it show the change, as etcd's do.
    async fn until_listed(
        &self,
        log_id: openraft::alias::LogIdOf<TypeConfig>,
        deadline: tokio::time::Instant,
    ) -> Result<(), RaftError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(left))
            .metrics(
                |m| m.membership_config.log_id().as_ref() >= Some(&log_id),
                "membership change listed",
            )
            .await
            .map(|_| ())
            .map_err(|_| RaftError::Timeout)
    }
}

impl From<MemberError> for RaftError {
    fn from(e: MemberError) -> RaftError {
        RaftError::Member(e)
    }
}

/// Whether a member has started: it has published its name, as etcd's `IsStarted`.
fn started(info: &MemberInfo) -> bool {
    !info.name.is_empty()
}

fn voters_except(members: &Members, me: u64) -> impl Iterator<Item = u64> + '_ {
    members
        .iter()
        .filter(move |(id, _, learner)| !learner && *id != me)
        .map(|(id, _, _)| *id)
}

/// etcd's `IsReadyTo{Add,Promote,Remove}VotingMember`: counting the voters (without
/// `leaving`) plus `joining` more, of which `joining_started` have started, do the started
/// ones make a quorum?
fn quorum_started(
    members: &Members,
    joining: usize,
    joining_started: usize,
    leaving: Option<u64>,
) -> bool {
    let voters = members
        .iter()
        .filter(|(id, _, learner)| !learner && Some(*id) != leaving);
    let (all, up) = voters.fold((joining, joining_started), |(all, up), (_, info, _)| {
        (all + 1, up + usize::from(started(info)))
    });
    up > all / 2
}

/// The members of the membership in `m`, voters and learners.
fn members_of(m: &openraft::RaftMetrics<TypeConfig>) -> Members {
    let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
    m.membership_config
        .nodes()
        .map(|(id, info)| (*id, info.clone(), !voters.contains(id)))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, started: bool, learner: bool) -> (u64, MemberInfo, bool) {
        let name = if started {
            format!("m{id}")
        } else {
            String::new()
        };
        let info = MemberInfo {
            name,
            ..MemberInfo::default()
        };
        (id, info, learner)
    }

    /// etcd's `IsReadyTo{Add,Remove,Promote}VotingMember` on a few memberships.
    #[test]
    fn started_voters_must_keep_a_quorum() {
        let three = vec![
            member(1, true, false),
            member(2, true, false),
            member(3, true, false),
        ];
        assert!(
            quorum_started(&three, 1, 0, None),
            "add a 4th: 3 of 4 started"
        );
        assert!(quorum_started(&three, 0, 0, Some(3)), "remove one: 2 of 2");
        let two_unstarted = vec![
            member(1, true, false),
            member(2, true, false),
            member(3, true, false),
            member(4, false, false),
            member(5, false, false),
        ];
        assert!(
            !quorum_started(&two_unstarted, 0, 0, Some(1)),
            "2 of 4 started"
        );
        assert!(
            !quorum_started(&two_unstarted, 1, 0, None),
            "3 of 6 started"
        );
        assert!(
            quorum_started(&two_unstarted, 1, 1, None),
            "promote: 4 of 6 started"
        );
        // Learners do not count.
        let with_learner = vec![member(1, true, false), member(2, false, true)];
        assert!(quorum_started(&with_learner, 0, 0, None));
    }
}

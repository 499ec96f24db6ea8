//! etcd's Cluster requests. Membership lives in the Raft configuration: the changes are
//! checked here for what needs no cluster state (URL syntax), then made by the leader
//! (see [`crate::raft::MemberChange`]), reached through [`Core::member_change_anywhere`].

use std::time::{SystemTime, UNIX_EPOCH};

use super::context::RequestContext;
use super::{until_deadline, Core, Error, Operation};
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse,
};
use crate::raft::MemberChange;

impl Core {
    pub async fn member_list(
        &self,
        ctx: &RequestContext,
        req: MemberListRequest,
    ) -> Result<MemberListResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("MemberList")).await?;
            self.read_barrier(!req.linearizable).await?;
            Ok(MemberListResponse {
                header: self.current_header(),
                members: self.raft.member_list(),
            })
        })
        .await
    }

    /// etcd's MemberAdd: the new member's ID is derived from its peer URLs and the time,
    /// as etcd's `NewMember` does for a member added at runtime.
    pub async fn member_add(
        &self,
        ctx: &RequestContext,
        req: MemberAddRequest,
    ) -> Result<MemberAddResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("MemberAdd")).await?;
            let peer_urls = peer_urls(&req.peer_ur_ls)?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let id = crate::identity::member_id(&peer_urls, &now.to_string());
            let change = MemberChange::Add {
                id,
                peer_urls: peer_urls.clone(),
                learner: req.is_learner,
            };
            let members = self.member_change_anywhere(change).await?;
            Ok(MemberAddResponse {
                header: self.current_header(),
                member: Some(Member {
                    id,
                    peer_ur_ls: peer_urls,
                    is_learner: req.is_learner,
                    ..Default::default()
                }),
                members,
            })
        })
        .await
    }

    pub async fn member_remove(
        &self,
        ctx: &RequestContext,
        req: MemberRemoveRequest,
    ) -> Result<MemberRemoveResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("MemberRemove"))
                .await?;
            let members = self
                .member_change_anywhere(MemberChange::Remove(req.id))
                .await?;
            Ok(MemberRemoveResponse {
                header: self.current_header(),
                members,
            })
        })
        .await
    }

    pub async fn member_update(
        &self,
        ctx: &RequestContext,
        req: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("MemberUpdate"))
                .await?;
            let change = MemberChange::Update {
                id: req.id,
                peer_urls: peer_urls(&req.peer_ur_ls)?,
            };
            let members = self.member_change_anywhere(change).await?;
            Ok(MemberUpdateResponse {
                header: self.current_header(),
                members,
            })
        })
        .await
    }

    pub async fn member_promote(
        &self,
        ctx: &RequestContext,
        req: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("MemberPromote"))
                .await?;
            let members = self
                .member_change_anywhere(MemberChange::Promote(req.id))
                .await?;
            Ok(MemberPromoteResponse {
                header: self.current_header(),
                members,
            })
        })
        .await
    }
}

impl Core {
    /// Whether this member leads now (the leader-only background tasks ask).
    pub fn is_leader(&self) -> bool {
        self.raft.status().is_leader
    }

    /// etcd's MoveLeader: only the leader moves leadership, to a voter.
    pub async fn move_leader(
        &self,
        ctx: &RequestContext,
        req: MoveLeaderRequest,
    ) -> Result<MoveLeaderResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("MoveLeader")).await?;
            if !self.raft.move_leader(req.target_id).await? {
                return Err(Error::BadLeaderTransferee);
            }
            Ok(MoveLeaderResponse {
                header: self.current_header(),
            })
        })
        .await
    }
}

/// etcd's `types.NewURLs`: at least one URL, each `http(s)://host:port` without a path;
/// anything else is "given member URLs are invalid". Returned sorted, as etcd keeps them.
fn peer_urls(urls: &[String]) -> Result<Vec<String>, Error> {
    if urls.is_empty() {
        return Err(Error::BadMemberUrls);
    }
    let mut out = Vec::with_capacity(urls.len());
    for text in urls {
        let url = url::Url::parse(text).map_err(|_| Error::BadMemberUrls)?;
        let has_port = url.port().is_some();
        let bare_path = url.path().is_empty() || url.path() == "/";
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || !has_port
            || !bare_path
            || url.query().is_some()
        {
            return Err(Error::BadMemberUrls);
        }
        out.push(text.trim_end_matches('/').to_string());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_checked_like_etcd() {
        let ok = |u: &[&str]| peer_urls(&u.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ok(&["http://10.0.0.2:2380", "http://10.0.0.1:2380"]).unwrap_or_default(),
            ["http://10.0.0.1:2380", "http://10.0.0.2:2380"]
        );
        for bad in [
            &[][..],
            &["10.0.0.1:2380"][..],
            &["http://10.0.0.1"][..],
            &["http://10.0.0.1:2380/path"][..],
            &["ftp://10.0.0.1:2380"][..],
            &["not a url"][..],
        ] {
            assert!(matches!(ok(bad), Err(Error::BadMemberUrls)), "{bad:?}");
        }
    }
}

//! etcd's Cluster requests. Membership lives in the Raft configuration; changing it arrives
//! with multi-node support.

use super::context::RequestContext;
use super::{until_deadline, Core, Error, Operation};
use crate::proto::etcdserverpb::{Member, MemberListRequest, MemberListResponse};

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
                members: self.members(),
            })
        })
        .await
    }

    /// MemberAdd, MemberRemove, MemberUpdate and MemberPromote, by RPC name: refused until
    /// multi-node support lands.
    pub async fn member_change<T>(
        &self,
        ctx: &RequestContext,
        rpc: &'static str,
    ) -> Result<T, Error> {
        self.authorize(ctx, Operation::Admin(rpc)).await?;
        Err(Error::NotSupported("member reconfiguration"))
    }

    fn members(&self) -> Vec<Member> {
        self.raft
            .members()
            .into_iter()
            .map(|(id, m)| Member {
                id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: false,
            })
            .collect()
    }
}

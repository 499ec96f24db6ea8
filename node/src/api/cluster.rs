//! etcd's Cluster service. Membership lives in the Raft configuration; changing it arrives
//! with multi-node support.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::{metered, Node};
use crate::proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};

const SERVICE: &str = "etcdserverpb.Cluster";

pub struct ClusterService(pub Arc<Node>);

impl Node {
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

    async fn member_list(&self, req: MemberListRequest) -> Result<MemberListResponse, ApiError> {
        if req.linearizable {
            self.raft.read_barrier().await?;
        }
        Ok(MemberListResponse {
            header: self.header(self.mvcc.current_revision()),
            members: self.members(),
        })
    }
}

const RECONFIG: ApiError = ApiError::NotSupported("member reconfiguration");

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        metered(SERVICE, "MemberAdd", async { Err(RECONFIG) }).await
    }

    async fn member_remove(
        &self,
        _req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        metered(SERVICE, "MemberRemove", async { Err(RECONFIG) }).await
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        metered(SERVICE, "MemberUpdate", async { Err(RECONFIG) }).await
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        metered(SERVICE, "MemberList", self.0.member_list(req.into_inner())).await
    }

    async fn member_promote(
        &self,
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        metered(SERVICE, "MemberPromote", async { Err(RECONFIG) }).await
    }
}

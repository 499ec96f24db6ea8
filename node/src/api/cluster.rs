//! etcd's Cluster service over [`Core`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{unary, Method};
use crate::core::Core;
use crate::proto::etcdserverpb::{
    cluster_server::Cluster, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};

const fn method(name: &'static str) -> Method {
    Method {
        service: "etcdserverpb.Cluster",
        name,
    }
}

pub struct ClusterService(pub Arc<Core>);

/// A reconfiguration RPC, which the core refuses for now.
async fn member_change<Req, Resp>(
    core: &Core,
    name: &'static str,
    req: Request<Req>,
) -> Result<Response<Resp>, Status> {
    unary(method(name), req, |ctx, _| async move {
        core.member_change(&ctx, name).await
    })
    .await
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        member_change(&self.0, "MemberAdd", req).await
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        member_change(&self.0, "MemberRemove", req).await
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        member_change(&self.0, "MemberUpdate", req).await
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        unary(method("MemberList"), req, |ctx, r| async move {
            self.0.member_list(&ctx, r).await
        })
        .await
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        member_change(&self.0, "MemberPromote", req).await
    }
}

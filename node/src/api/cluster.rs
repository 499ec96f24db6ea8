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

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        unary(method("MemberAdd"), req, |ctx, r| async move {
            self.0.member_add(&ctx, r).await
        })
        .await
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        unary(method("MemberRemove"), req, |ctx, r| async move {
            self.0.member_remove(&ctx, r).await
        })
        .await
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        unary(method("MemberUpdate"), req, |ctx, r| async move {
            self.0.member_update(&ctx, r).await
        })
        .await
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
        unary(method("MemberPromote"), req, |ctx, r| async move {
            self.0.member_promote(&ctx, r).await
        })
        .await
    }
}

//! etcd's v3election service over [`Core`].

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{context, unary, Method};
use crate::core::Core;
use crate::proto::v3electionpb::{
    election_server::Election, CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse,
    ProclaimRequest, ProclaimResponse, ResignRequest, ResignResponse,
};

const fn method(name: &'static str) -> Method {
    Method {
        service: "v3electionpb.Election",
        name,
    }
}

pub struct ElectionService(pub Arc<Core>);

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        unary(method("Campaign"), req, |ctx, r| async move {
            self.0.campaign(&ctx, r).await
        })
        .await
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        unary(method("Proclaim"), req, |ctx, r| async move {
            self.0.proclaim(&ctx, r).await
        })
        .await
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        unary(method("Leader"), req, |ctx, r| async move {
            self.0.leader(&ctx, r).await
        })
        .await
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let ctx = context(&req);
        let leaders = self.0.observe(ctx, req.into_inner());
        let stream = ReceiverStream::new(leaders).map(|r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        unary(method("Resign"), req, |ctx, r| async move {
            self.0.resign(&ctx, r).await
        })
        .await
    }
}

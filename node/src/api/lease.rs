//! etcd's Lease service over [`Core`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{context, record_end, record_start, unary, Method};
use crate::core::Core;
use crate::proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};

const fn method(name: &'static str) -> Method {
    Method {
        service: "etcdserverpb.Lease",
        name,
    }
}

/// Keep-alive answers buffered for a slow client.
const KEEP_ALIVE_QUEUE: usize = 16;

pub struct LeaseService(pub Arc<Core>);

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        unary(method("LeaseGrant"), req, |ctx, r| async move {
            self.0.lease_grant(&ctx, r).await
        })
        .await
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        unary(method("LeaseRevoke"), req, |ctx, r| async move {
            self.0.lease_revoke(&ctx, r).await
        })
        .await
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Answers each request in order; an error ends the stream, as etcd.
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let ctx = context(&req);
        let mut inbound = req.into_inner();
        let core = self.0.clone();
        let (tx, rx) = mpsc::channel(KEEP_ALIVE_QUEUE);
        let m = method("LeaseKeepAlive");
        let started = record_start(m, "bidi_stream");
        tokio::spawn(async move {
            let mut code = tonic::Code::Ok;
            // A transport error from the client ends the stream like a close.
            while let Ok(Some(req)) = inbound.message().await {
                let reply = core
                    .lease_keep_alive(&ctx, req.id)
                    .await
                    .map_err(Status::from);
                if let Err(status) = &reply {
                    code = status.code();
                }
                if tx.send(reply).await.is_err() || code != tonic::Code::Ok {
                    break;
                }
            }
            record_end(m, "bidi_stream", started, code);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        unary(method("LeaseTimeToLive"), req, |ctx, r| async move {
            self.0.lease_time_to_live(&ctx, r).await
        })
        .await
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        unary(method("LeaseLeases"), req, |ctx, _| async move {
            self.0.lease_leases(&ctx).await
        })
        .await
    }
}

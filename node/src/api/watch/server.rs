//! The Watch service's tonic server, written by hand because the generated one can only
//! send `WatchResponse` messages, which tonic re-encodes whole for every watcher; this one
//! sends [`WatchReply`]s, whose events were encoded once. The rest is as generated: one
//! bidirectional method, other paths answered `Unimplemented`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::{ReplyStream, WatchReply, WatchService};
use crate::api::codec::EtcdCodec;
use crate::core::Core;
use crate::proto::etcdserverpb::WatchRequest;

const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";

#[derive(Clone)]
pub struct WatchServer {
    service: Arc<WatchService>,
    max_decoding_message_size: usize,
}

impl WatchServer {
    pub fn new(core: Arc<Core>, max_decoding_message_size: usize) -> WatchServer {
        WatchServer {
            service: Arc::new(WatchService(core)),
            max_decoding_message_size,
        }
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

impl<B> Service<http::Request<B>> for WatchServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != WATCH_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let call = WatchCall(self.service.clone());
        let mut grpc = Grpc::new(EtcdCodec::<WatchReply, WatchRequest>::default())
            .apply_max_message_size_config(Some(self.max_decoding_message_size), None);
        Box::pin(async move { Ok(grpc.streaming(call, req).await) })
    }
}

/// One call of the Watch method.
struct WatchCall(Arc<WatchService>);

impl StreamingService<WatchRequest> for WatchCall {
    type Response = WatchReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { Ok(service.watch(request)) })
    }
}

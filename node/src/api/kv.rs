//! etcd's KV service over [`Core`].

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{context, record_end, record_start, unary, Method};
use crate::core::Core;
use crate::proto::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, TxnRequest,
    TxnResponse,
};

const fn method(name: &'static str) -> Method {
    Method {
        service: "etcdserverpb.KV",
        name,
    }
}

pub struct KvService(pub Arc<Core>);

type RangeStream = Pin<Box<dyn Stream<Item = Result<RangeStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        unary(method("Range"), req, |ctx, r| async move {
            self.0.range(&ctx, r).await
        })
        .await
    }

    type RangeStreamStream = RangeStream;

    /// The stream's metrics are recorded when its last message is sent.
    async fn range_stream(
        &self,
        req: Request<RangeRequest>,
    ) -> Result<Response<RangeStream>, Status> {
        let m = method("RangeStream");
        let ctx = context(&req);
        let started = record_start(m, "server_stream");
        let chunks = match self.0.range_stream(&ctx, req.into_inner()).await {
            Ok(chunks) => chunks,
            Err(e) => {
                let status = Status::from(e);
                record_end(m, "server_stream", started, status.code());
                return Err(status);
            }
        };
        let mut ended = false;
        let stream = ReceiverStream::new(chunks).map(move |chunk| {
            let chunk = chunk
                .map(|r| RangeStreamResponse {
                    range_response: Some(r),
                })
                .map_err(Status::from);
            let last = match &chunk {
                Ok(c) => c
                    .range_response
                    .as_ref()
                    .is_some_and(|r| r.header.is_some()),
                Err(_) => true,
            };
            if last && !ended {
                ended = true;
                let code = chunk
                    .as_ref()
                    .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
                record_end(m, "server_stream", started, code);
            }
            chunk
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        unary(method("Put"), req, |ctx, r| async move {
            self.0.put(&ctx, r).await
        })
        .await
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        unary(method("DeleteRange"), req, |ctx, r| async move {
            self.0.delete_range(&ctx, r).await
        })
        .await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        unary(method("Txn"), req, |ctx, r| async move {
            self.0.txn(&ctx, r).await
        })
        .await
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        unary(method("Compact"), req, |ctx, r| async move {
            self.0.compact(&ctx, r).await
        })
        .await
    }
}

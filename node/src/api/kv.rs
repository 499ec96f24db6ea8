//! etcd's KV service. Reads are served from the local MVCC store (after a ReadIndex barrier
//! unless `serializable`); every write becomes one `Command::Txn` through Raft, so Put and
//! DeleteRange are single-op txns and share the txn's revision rules.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::{metered, validate, Node};
use crate::proto::cairnpb::{command::Cmd, Command};
use crate::proto::etcdserverpb::{
    kv_server::Kv, request_op, response_op, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RangeStreamResponse, RequestOp, TxnRequest, TxnResponse,
};
use crate::raft::Applied;

const SERVICE: &str = "etcdserverpb.KV";

pub struct KvService(pub Arc<Node>);

impl Node {
    pub(super) async fn range(&self, req: RangeRequest) -> Result<RangeResponse, ApiError> {
        validate::range(&req)?;
        if !req.serializable {
            self.raft.read_barrier().await?;
        }
        let mut resp = self.mvcc.range(&req)?;
        resp.header = self.header(resp.header.map_or(0, |h| h.revision));
        Ok(resp)
    }

    async fn put(&self, req: PutRequest) -> Result<PutResponse, ApiError> {
        validate::size(&req, self.limits.max_request_bytes)?;
        validate::put(&req)?;
        self.check_put_lease(req.lease, req.ignore_value)?;
        let resp = self
            .write(single_op(request_op::Request::RequestPut(req)))
            .await?;
        match first_response(resp) {
            Some((header, response_op::Response::ResponsePut(mut r))) => {
                r.header = header;
                Ok(r)
            }
            _ => Err(ApiError::Internal(
                "apply answered a put with another response".into(),
            )),
        }
    }

    pub(super) async fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ApiError> {
        validate::size(&req, self.limits.max_request_bytes)?;
        validate::delete_range(&req)?;
        let resp = self
            .write(single_op(request_op::Request::RequestDeleteRange(req)))
            .await?;
        match first_response(resp) {
            Some((header, response_op::Response::ResponseDeleteRange(mut r))) => {
                r.header = header;
                Ok(r)
            }
            _ => Err(ApiError::Internal(
                "apply answered a delete with another response".into(),
            )),
        }
    }

    pub(super) async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, ApiError> {
        validate::txn(&req, self.limits.max_txn_ops)?;
        if validate::txn_writes(&req) {
            // As etcd, only what goes through the log is held to --max-request-bytes.
            validate::size(&req, self.limits.max_request_bytes)?;
            return self.write(req).await;
        }
        // A txn that only reads needs no log entry: a ReadIndex barrier makes it linearizable.
        self.raft.read_barrier().await?;
        let mut resp = self.mvcc.txn_read_only(&req)?;
        resp.header = self.header(resp.header.map_or(0, |h| h.revision));
        Ok(resp)
    }

    /// Compacts history up to `revision` (used by the auto-compactor).
    pub async fn compact_to(&self, revision: i64) -> Result<CompactionResponse, ApiError> {
        self.compact(CompactionRequest {
            revision,
            physical: false,
        })
        .await
    }

    async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, ApiError> {
        let physical = req.physical;
        let done = match self.raft.propose(command(Cmd::Compaction(req))).await? {
            Applied::Compaction(done) => done,
            _ => {
                return Err(ApiError::Internal(
                    "apply answered a compaction with another result".into(),
                ))
            }
        };
        if physical {
            // The sender is dropped only if the node stops before finishing.
            done.await.map_err(|_| ApiError::Stopped)?;
        }
        Ok(CompactionResponse {
            header: self.header(self.mvcc.current_revision()),
        })
    }

    /// Proposes a write txn and answers with the revision it was applied at.
    async fn write(&self, txn: TxnRequest) -> Result<TxnResponse, ApiError> {
        if self.over_quota() {
            return Err(ApiError::NoSpace);
        }
        match self.raft.propose(command(Cmd::Txn(txn))).await? {
            Applied::Txn(mut resp, _events) => {
                resp.header = self.header(resp.header.map_or(0, |h| h.revision));
                Ok(resp)
            }
            _ => Err(ApiError::Internal(
                "apply answered a txn with another result".into(),
            )),
        }
    }
}

fn command(cmd: Cmd) -> Command {
    Command { cmd: Some(cmd) }
}

fn single_op(request: request_op::Request) -> TxnRequest {
    TxnRequest {
        success: vec![RequestOp {
            request: Some(request),
        }],
        ..Default::default()
    }
}

/// The top-level header of a txn and its first op's response.
fn first_response(
    resp: TxnResponse,
) -> Option<(
    Option<crate::proto::etcdserverpb::ResponseHeader>,
    response_op::Response,
)> {
    let header = resp.header;
    resp.responses
        .into_iter()
        .next()?
        .response
        .map(|r| (header, r))
}

type RangeStream = Pin<Box<dyn Stream<Item = Result<RangeStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        metered(SERVICE, "Range", self.0.range(req.into_inner())).await
    }

    type RangeStreamStream = RangeStream;

    async fn range_stream(
        &self,
        _req: Request<RangeRequest>,
    ) -> Result<Response<RangeStream>, Status> {
        Err(ApiError::NotSupported("RangeStream").into())
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        metered(SERVICE, "Put", self.0.put(req.into_inner())).await
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        metered(
            SERVICE,
            "DeleteRange",
            self.0.delete_range(req.into_inner()),
        )
        .await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        metered(SERVICE, "Txn", self.0.txn(req.into_inner())).await
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        metered(SERVICE, "Compact", self.0.compact(req.into_inner())).await
    }
}

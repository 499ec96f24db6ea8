//! etcd's KV requests. Writes become one `Command::Txn` through Raft (Put and DeleteRange
//! are single-op txns and share the txn's revision rules); reads are served from the local
//! MVCC store after a ReadIndex barrier unless `serializable`.

use std::ops::ControlFlow;

use tokio::sync::mpsc;

use super::context::{RequestContext, Transport};
use super::{until_deadline, validate, Core, Error, HasHeader, Operation};
use crate::proto::cairnpb::command::Cmd;
use crate::proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
};
use crate::raft::Applied;

/// Encoded kvs per RangeStream message: large enough to amortize the per-message cost,
/// small enough that a huge range never sits in memory whole.
const RANGE_STREAM_CHUNK_BYTES: usize = 1 << 20;
/// RangeStream messages buffered for a slow client; the scan pauses beyond that.
const RANGE_STREAM_QUEUE: usize = 2;

/// The messages of a RangeStream: every chunk read at one revision; only the last carries
/// the header, `more` and `count`, as etcd 3.7 sends them.
pub type RangeChunks = mpsc::Receiver<Result<RangeResponse, Error>>;

impl Core {
    pub async fn range(
        &self,
        ctx: &RequestContext,
        req: RangeRequest,
    ) -> Result<RangeResponse, Error> {
        until_deadline(ctx, async {
            validate::range(&req)?;
            self.authorize(ctx, Operation::Range(&req)).await?;
            self.read_barrier(req.serializable).await?;
            // One key is cheap; anything wider is as large as the client makes it.
            let resp = if req.range_end.is_empty() {
                self.mvcc.range(&req)?
            } else {
                let mvcc = self.mvcc.clone();
                self.reads.run(move || Ok(mvcc.range(&req)?)).await?
            };
            Ok(self.stamp(resp))
        })
        .await
    }

    /// etcd 3.7's RangeStream: the Range's result in chunks of about
    /// [`RANGE_STREAM_CHUNK_BYTES`], read from one snapshot, with memory bounded by a few
    /// chunks however large the result.
    pub async fn range_stream(
        &self,
        ctx: &RequestContext,
        req: RangeRequest,
    ) -> Result<RangeChunks, Error> {
        until_deadline(ctx, async {
            validate::range(&req)?;
            self.authorize(ctx, Operation::Range(&req)).await?;
            self.read_barrier(req.serializable).await?;
            let (tx, rx) = mpsc::channel(RANGE_STREAM_QUEUE);
            // Pinned now, so the stream answers as of the request, however late its thread
            // starts or slowly its client reads.
            let pinned = self.mvcc.pin()?;
            let header = self.header(0);
            self.reads
                .spawn_stream(move || {
                    let mut emit = |kvs| {
                        let chunk = RangeResponse {
                            kvs,
                            ..Default::default()
                        };
                        match tx.blocking_send(Ok(chunk)) {
                            Ok(()) => ControlFlow::Continue(()),
                            Err(_) => ControlFlow::Break(()), // the client went away
                        }
                    };
                    let last = match pinned.range_chunks(&req, RANGE_STREAM_CHUNK_BYTES, &mut emit)
                    {
                        Ok(Some(mut last)) => {
                            let revision = last.header.map_or(0, |h| h.revision);
                            last.header = header.map(|h| super::ResponseHeader { revision, ..h });
                            Ok(last)
                        }
                        Ok(None) => return,
                        Err(e) => Err(Error::from(e)),
                    };
                    let _ = tx.blocking_send(last);
                })
                .await?;
            Ok(rx)
        })
        .await
    }

    pub async fn put(&self, ctx: &RequestContext, req: PutRequest) -> Result<PutResponse, Error> {
        until_deadline(ctx, async {
            validate::size(&req, self.limits.max_request_bytes)?;
            validate::put(&req)?;
            self.check_put_lease(req.lease, req.ignore_value)?;
            let resp = self
                .write(ctx, single_op(request_op::Request::RequestPut(req)))
                .await?;
            only_response(resp, |r| match r {
                response_op::Response::ResponsePut(r) => Some(r),
                _ => None,
            })
        })
        .await
    }

    pub async fn delete_range(
        &self,
        ctx: &RequestContext,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Error> {
        until_deadline(ctx, async {
            validate::size(&req, self.limits.max_request_bytes)?;
            validate::delete_range(&req)?;
            // Deleting frees space: it costs no quota, as in etcd.
            let resp = self
                .write(ctx, single_op(request_op::Request::RequestDeleteRange(req)))
                .await?;
            only_response(resp, |r| match r {
                response_op::Response::ResponseDeleteRange(r) => Some(r),
                _ => None,
            })
        })
        .await
    }

    pub async fn txn(&self, ctx: &RequestContext, req: TxnRequest) -> Result<TxnResponse, Error> {
        until_deadline(ctx, async {
            validate::txn(&req, self.limits.max_txn_ops)?;
            if validate::txn_writes(&req) {
                // As etcd, only what goes through the log is held to --max-request-bytes.
                validate::size(&req, self.limits.max_request_bytes)?;
                return self.write(ctx, req).await;
            }
            self.authorize(ctx, Operation::Txn(&req)).await?;
            // A txn that only reads needs no log entry: a ReadIndex barrier makes it
            // linearizable, and a txn of serializable ranges needs none (etcd's
            // `isTxnSerializable`).
            self.read_barrier(validate::txn_serializable(&req)).await?;
            let mvcc = self.mvcc.clone();
            let resp = self
                .reads
                .run(move || Ok(mvcc.txn_read_only(&req)?))
                .await?;
            Ok(self.stamp(resp))
        })
        .await
    }

    pub async fn compact(
        &self,
        ctx: &RequestContext,
        req: CompactionRequest,
    ) -> Result<CompactionResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Compact).await?;
            let physical = req.physical;
            let done = self
                .propose(Cmd::Compaction(req), |a| match a {
                    Applied::Compaction(done) => Some(done),
                    _ => None,
                })
                .await?;
            if physical {
                // The sender is dropped only if the node stops before finishing.
                done.await.map_err(|_| Error::Stopped)?;
            }
            Ok(CompactionResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    /// The store's current revision.
    pub fn current_revision(&self) -> i64 {
        self.mvcc.current_revision()
    }

    /// The revision history was last compacted at, 0 if never.
    pub fn compact_revision(&self) -> i64 {
        self.mvcc.compact_revision()
    }

    /// The write half of the pipeline, after validation: authorize, admission, quota (for
    /// writes that put), propose, wait for apply, header.
    pub(super) async fn write(
        &self,
        ctx: &RequestContext,
        txn: TxnRequest,
    ) -> Result<TxnResponse, Error> {
        self.authorize(ctx, Operation::Txn(&txn)).await?;
        let txn = match &self.hooks.admission {
            Some(admission) if ctx.transport != Transport::Internal => {
                admission.admit(ctx, txn).await?
            }
            _ => txn,
        };
        self.check_quota(super::alarms::txn_cost(&txn)).await?;
        let resp = self
            .propose(Cmd::Txn(txn), |a| match a {
                Applied::Txn(resp, _events) => Some(resp),
                _ => None,
            })
            .await?;
        Ok(self.stamp(resp))
    }

    /// Waits for a ReadIndex barrier, unless the read may be served from local state.
    pub(super) async fn read_barrier(&self, serializable: bool) -> Result<(), Error> {
        if !serializable {
            self.linearizable_barrier().await?;
        }
        Ok(())
    }

    /// The check of a put's lease before proposing (apply checks again). A put that keeps
    /// the old value is left to apply, which first answers "key not found" if the key is
    /// missing, as etcd's `checkRequestPut`.
    fn check_put_lease(&self, lease: i64, ignore_value: bool) -> Result<(), Error> {
        // Only where the leader's lessor is: a follower may not yet have applied a grant the
        // leader already acknowledged, and apply checks every put's lease anyway.
        let here = self.leader_elsewhere().is_none();
        if lease != 0 && !ignore_value && here && !self.lessor.contains(lease) {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }
}

pub(super) fn single_op(request: request_op::Request) -> TxnRequest {
    TxnRequest {
        success: vec![RequestOp {
            request: Some(request),
        }],
        ..Default::default()
    }
}

/// The response of a single-op txn's op, with the txn's header.
fn only_response<R: HasHeader>(
    resp: TxnResponse,
    pick: fn(response_op::Response) -> Option<R>,
) -> Result<R, Error> {
    let header = resp.header;
    let mut r = resp
        .responses
        .into_iter()
        .next()
        .and_then(|r| r.response)
        .and_then(pick)
        .ok_or_else(|| Error::internal("apply answered a single-op txn with another response"))?;
    *r.header_mut() = header;
    Ok(r)
}

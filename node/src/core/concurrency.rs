//! etcd's client-side concurrency recipes (`clientv3/concurrency`: Mutex and Election), run
//! inside the server for the v3lock and v3election services exactly as etcd's own servers
//! run them: a key `<name>/<lease in hex>` per contender, ownership by lowest
//! create_revision, waiting by watching the next-older contender's key until it is deleted.

use std::sync::Arc;

use super::context::RequestContext;
use super::Core;
use super::Error;
use crate::proto::etcdserverpb::{
    compare,
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use crate::proto::prefix_end;
use crate::watch::{self, KeyRange, WatchMsg, WatcherId};

/// The TTL etcd's concurrency session grants when a Lock or Campaign names no lease.
const SESSION_TTL: i64 = 60;

/// A contender's key, as `clientv3/concurrency` names it.
pub(super) fn contender_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// `name` + "/", the prefix under which contenders queue.
pub(super) fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: compare::CompareTarget::Create as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// A range over the contenders under `prefix`, oldest or newest first, one key.
fn contenders(prefix: &[u8], order: SortOrder, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

fn range_kvs(resp: &TxnResponse, index: usize) -> Vec<KeyValue> {
    match resp.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.kvs.clone(),
        _ => Vec::new(),
    }
}

/// A contender's place in a queue.
pub(super) struct Contender {
    pub key: Vec<u8>,
    pub create_revision: i64,
    /// The header of the txn that created (or found) the key.
    pub header: Option<ResponseHeader>,
    /// The oldest contender when the key was created.
    pub owner: Option<KeyValue>,
    /// The value stored under the key, if it already existed.
    pub existing_value: Option<Vec<u8>>,
}

impl Core {
    /// The lease a concurrency session runs on: the given one, or a new 60 s lease.
    pub(super) async fn session_lease(
        &self,
        ctx: &RequestContext,
        lease: i64,
    ) -> Result<i64, Error> {
        if lease != 0 {
            return Ok(lease);
        }
        let resp = self
            .lease_grant(
                ctx,
                LeaseGrantRequest {
                    ttl: SESSION_TTL,
                    id: 0,
                },
            )
            .await?;
        Ok(resp.id)
    }

    /// Creates `prefix/<lease>` with `value` unless it exists (etcd's `tryAcquire` and the
    /// first step of `Campaign`), and reads the oldest contender in the same txn.
    pub(super) async fn enqueue(
        &self,
        ctx: &RequestContext,
        prefix: &[u8],
        lease: i64,
        value: Vec<u8>,
    ) -> Result<Contender, Error> {
        let key = contender_key(prefix, lease);
        let owner = op(Request::RequestRange(contenders(
            prefix,
            SortOrder::Ascend,
            0,
        )));
        let txn = TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![
                op(Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value,
                    lease,
                    ..Default::default()
                })),
                owner.clone(),
            ],
            failure: vec![
                op(Request::RequestRange(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })),
                owner,
            ],
        };
        let resp = self.txn(ctx, txn).await?;
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        let (create_revision, existing_value) = if resp.succeeded {
            (revision, None)
        } else {
            let mine = range_kvs(&resp, 0)
                .into_iter()
                .next()
                .ok_or_else(|| Error::internal("a contender key vanished inside its own txn"))?;
            (mine.create_revision, Some(mine.value))
        };
        Ok(Contender {
            owner: range_kvs(&resp, 1).into_iter().next(),
            header: resp.header,
            key,
            create_revision,
            existing_value,
        })
    }

    /// Waits until no key under `prefix` has a create revision at or below
    /// `max_create_revision` (etcd's `waitDeletes`), returning the final range's header.
    pub(super) async fn wait_deletes(
        &self,
        ctx: &RequestContext,
        prefix: &[u8],
        max_create_revision: i64,
    ) -> Result<Option<ResponseHeader>, Error> {
        loop {
            let resp = self
                .range(
                    ctx,
                    contenders(prefix, SortOrder::Descend, max_create_revision),
                )
                .await?;
            let Some(last) = resp.kvs.first() else {
                return Ok(resp.header);
            };
            let from = resp.header.as_ref().map_or(0, |h| h.revision);
            let mut events = self.watch_events(KeyRange::new(last.key.clone(), &[]), from);
            while let Some(batch) = events.next().await {
                if batch.iter().any(|e| !e.is_put()) {
                    break;
                }
            }
        }
    }

    /// Deletes `key` if it still has `create_revision` (etcd's Unlock/Resign guard).
    pub(super) async fn delete_if_created_at(
        &self,
        ctx: &RequestContext,
        key: &[u8],
        create_revision: i64,
    ) -> Result<TxnResponse, Error> {
        let delete = DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        self.txn(
            ctx,
            TxnRequest {
                compare: vec![create_revision_is(key, create_revision)],
                success: vec![op(Request::RequestDeleteRange(delete))],
                failure: Vec::new(),
            },
        )
        .await
    }

    /// Puts `value` on `key` if it still has `create_revision` (etcd's Proclaim).
    pub(super) async fn put_if_created_at(
        &self,
        ctx: &RequestContext,
        key: &[u8],
        create_revision: i64,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<TxnResponse, Error> {
        let put = PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..Default::default()
        };
        self.txn(
            ctx,
            TxnRequest {
                compare: vec![create_revision_is(key, create_revision)],
                success: vec![op(Request::RequestPut(put))],
                failure: Vec::new(),
            },
        )
        .await
    }

    /// The oldest contender under `prefix` and the read's header.
    pub(super) async fn oldest(
        &self,
        ctx: &RequestContext,
        prefix: &[u8],
    ) -> Result<(Option<KeyValue>, Option<ResponseHeader>), Error> {
        let resp = self
            .range(ctx, contenders(prefix, SortOrder::Ascend, 0))
            .await?;
        Ok((resp.kvs.into_iter().next(), resp.header))
    }

    /// Events on `range` from `start_revision`, one applied revision per item; the watch is
    /// canceled when the returned stream is dropped.
    pub(super) fn watch_events(&self, range: KeyRange, start_revision: i64) -> EventStream {
        let (sink, rx) = watch::channel();
        let (id, _) = self.watch.watch(range, start_revision, false, &sink);
        EventStream {
            hub: self.watch.clone(),
            id,
            rx,
        }
    }
}

/// The events of one internal watch; see [`Core::watch_events`].
pub(super) struct EventStream {
    hub: Arc<watch::WatchHub>,
    id: WatcherId,
    rx: tokio::sync::mpsc::UnboundedReceiver<WatchMsg>,
}

impl EventStream {
    /// The next revision's events; `None` once the watch ended (compacted or hub stopped),
    /// after which callers re-read the state and watch again.
    pub(super) async fn next(&mut self) -> Option<watch::Events> {
        loop {
            match self.rx.recv().await? {
                WatchMsg::Events { events, .. } => return Some(events),
                WatchMsg::Compacted { .. } => return None,
                WatchMsg::Progress { .. } => continue,
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.hub.cancel(self.id);
    }
}

/// Removes a contender's key if the caller stops waiting (its RPC was canceled), as etcd's
/// Mutex unlocks and its Election resigns when a wait fails.
pub(super) struct Abandoned {
    core: Option<(Arc<Core>, RequestContext)>,
    key: Vec<u8>,
    create_revision: i64,
}

impl Abandoned {
    pub(super) fn new(
        core: Arc<Core>,
        ctx: &RequestContext,
        key: Vec<u8>,
        create_revision: i64,
    ) -> Abandoned {
        Abandoned {
            core: Some((core, ctx.clone())),
            key,
            create_revision,
        }
    }

    /// The wait finished: keep the key.
    pub(super) fn disarm(mut self) {
        self.core = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some((core, ctx)) = self.core.take() {
            let (key, rev) = (std::mem::take(&mut self.key), self.create_revision);
            // The caller's deadline has likely passed: the cleanup runs without it.
            let mut ctx = ctx;
            ctx.deadline = None;
            tokio::spawn(async move {
                if let Err(e) = core.delete_if_created_at(&ctx, &key, rev).await {
                    tracing::warn!(error = %e, "could not remove an abandoned lock or campaign key");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes_as_etcd_names_them() {
        assert_eq!(contender_key(b"mylock/", 0x694d), b"mylock/694d".to_vec());
        assert_eq!(prefix_of(b"e"), b"e/".to_vec());
    }
}

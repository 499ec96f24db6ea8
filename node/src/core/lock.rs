//! etcd's v3lock requests (`Lock`, `Unlock`), on the Mutex recipe in `concurrency.rs`.

use std::sync::Arc;

use super::concurrency::{prefix_of, Abandoned};
use super::context::RequestContext;
use super::{Core, Error};
use crate::proto::etcdserverpb::{DeleteRangeRequest, RangeRequest};
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

impl Core {
    /// etcd's `Mutex.Lock`: queue under `name/`, then wait until every older contender is
    /// gone.
    pub async fn lock(
        self: &Arc<Self>,
        ctx: &RequestContext,
        req: LockRequest,
    ) -> Result<LockResponse, Error> {
        let lease = self.session_lease(ctx, req.lease).await?;
        let prefix = prefix_of(&req.name);
        let me = self.enqueue(ctx, &prefix, lease, Vec::new()).await?;
        if me
            .owner
            .as_ref()
            .is_none_or(|o| o.create_revision == me.create_revision)
        {
            return Ok(LockResponse {
                header: me.header,
                key: me.key,
            });
        }
        // A caller that gives up while waiting leaves the queue, as etcd's Mutex does.
        let abandoned = Abandoned::new(self.clone(), ctx, me.key.clone(), me.create_revision);
        self.wait_deletes(ctx, &prefix, me.create_revision - 1)
            .await?;
        abandoned.disarm();
        let mine = self
            .range(
                ctx,
                RangeRequest {
                    key: me.key.clone(),
                    ..Default::default()
                },
            )
            .await?;
        if mine.kvs.is_empty() {
            return Err(Error::Concurrency("session expired"));
        }
        Ok(LockResponse {
            header: mine.header,
            key: me.key,
        })
    }

    pub async fn unlock(
        &self,
        ctx: &RequestContext,
        req: UnlockRequest,
    ) -> Result<UnlockResponse, Error> {
        let delete = DeleteRangeRequest {
            key: req.key,
            ..Default::default()
        };
        let resp = self.delete_range(ctx, delete).await?;
        Ok(UnlockResponse {
            header: resp.header,
        })
    }
}

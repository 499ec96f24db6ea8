//! etcd's v3lock service (`Lock`, `Unlock`), on the Mutex recipe in `concurrency.rs`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::concurrency::{prefix_of, Abandoned};
use super::error::ApiError;
use super::{metered, Node};
use crate::proto::etcdserverpb::{DeleteRangeRequest, RangeRequest};
use crate::proto::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};

const SERVICE: &str = "v3lockpb.Lock";

pub struct LockService(pub Arc<Node>);

/// etcd's `Mutex.Lock`: queue under `name/`, then wait until every older contender is gone.
async fn lock(node: &Arc<Node>, req: LockRequest) -> Result<LockResponse, ApiError> {
    let lease = node.session_lease(req.lease).await?;
    let prefix = prefix_of(&req.name);
    let me = node.enqueue(&prefix, lease, Vec::new()).await?;
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
    let abandoned = Abandoned::new(node.clone(), me.key.clone(), me.create_revision);
    node.wait_deletes(&prefix, me.create_revision - 1).await?;
    abandoned.disarm();
    let mine = node
        .range(RangeRequest {
            key: me.key.clone(),
            ..Default::default()
        })
        .await?;
    if mine.kvs.is_empty() {
        return Err(ApiError::Concurrency("session expired"));
    }
    Ok(LockResponse {
        header: mine.header,
        key: me.key,
    })
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        metered(SERVICE, "Lock", lock(&self.0, req.into_inner())).await
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let delete = DeleteRangeRequest {
            key: req.into_inner().key,
            ..Default::default()
        };
        metered(SERVICE, "Unlock", async {
            let resp = self.0.delete_range(delete).await?;
            Ok(UnlockResponse {
                header: resp.header,
            })
        })
        .await
    }
}

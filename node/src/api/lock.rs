//! etcd's v3lock service over [`Core`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{unary, Method};
use crate::core::Core;
use crate::proto::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};

const fn method(name: &'static str) -> Method {
    Method {
        service: "v3lockpb.Lock",
        name,
    }
}

pub struct LockService(pub Arc<Core>);

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        unary(method("Lock"), req, |ctx, r| async move {
            self.0.lock(&ctx, r).await
        })
        .await
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        unary(method("Unlock"), req, |ctx, r| async move {
            self.0.unlock(&ctx, r).await
        })
        .await
    }
}

//! The accept loop of the client and metrics listeners: axum's `serve`, with hyper's HTTP/2
//! header-list limit raised from its 16 KiB default to grpc-go's 16 MiB, so gRPC metadata
//! (a `token`, custom headers) that etcd accepts is not refused with HTTP 431.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// grpc-go's default `MaxHeaderListSize` for servers.
const MAX_HEADER_LIST_SIZE: u32 = 16 << 20;

/// Serves `router` on every connection `listener` accepts, until the task is dropped.
pub async fn serve(listener: TcpListener, router: axum::Router) -> std::io::Result<()> {
    loop {
        let (tcp, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off as axum does, keep serving.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Small request/response RPCs must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http2()
                .max_header_list_size(MAX_HEADER_LIST_SIZE)
                .enable_connect_protocol();
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

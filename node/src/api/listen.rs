//! The accept loop of the client and metrics listeners: HTTP/1 and HTTP/2 (gRPC) on one
//! port, as etcd serves them, with what `axum::serve` cannot set:
//! - hyper's HTTP/2 header-list limit raised from its 16 KiB default to grpc-go's 16 MiB,
//!   so gRPC metadata etcd accepts (a `token`, custom headers) is not refused with 431;
//! - `--grpc-keepalive-interval/-timeout` and `--max-concurrent-streams`;
//! - each request carries its connection's addresses, so the core knows its peer.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt as _;

use crate::config::ListenerOptions;

/// grpc-go's default `MaxHeaderListSize` for servers.
const MAX_HEADER_LIST_SIZE: u32 = 16 << 20;

/// Serves `router` on every connection `listener` accepts, until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    options: ListenerOptions,
) -> std::io::Result<()> {
    let builder = builder(options);
    let local_addr = listener.local_addr().ok();
    loop {
        let (tcp, peer) = match listener.accept().await {
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
        let info = TcpConnectInfo {
            local_addr,
            remote_addr: Some(peer),
        };
        let router = router
            .clone()
            .map_request(move |mut req: http::Request<_>| {
                req.extensions_mut().insert(info.clone());
                req
            });
        let service = TowerToHyperService::new(router);
        let builder = builder.clone();
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

fn builder(options: ListenerOptions) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_concurrent_streams(options.max_concurrent_streams)
        .enable_connect_protocol();
    if let Some((interval, timeout)) = options.keepalive {
        builder
            .http2()
            .keep_alive_interval(interval)
            .keep_alive_timeout(timeout);
    }
    builder
}

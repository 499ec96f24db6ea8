//! The accept loop of the client and metrics listeners: HTTP/1 and HTTP/2 (gRPC) on one
//! port, as etcd serves them, with what `axum::serve` cannot set:
//! - hyper's HTTP/2 header-list limit raised from its 16 KiB default to grpc-go's 16 MiB,
//!   so gRPC metadata etcd accepts (a `token`, custom headers) is not refused with 431;
//! - `--grpc-keepalive-interval/-timeout` and `--max-concurrent-streams`;
//! - each request carries its connection's addresses, so the core knows its peer;
//! - on an https listener, each connection is a TLS handshake first (`crate::tls` builds
//!   the acceptor); a failed or stalled handshake ends only that connection.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt as _;

use crate::config::ListenerOptions;
use crate::tls::ServerTls;

/// The subject common name of the client's verified certificate, on every request of a
/// TLS connection that presented one (the user with `--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct ClientCertName(pub String);

/// grpc-go's default `MaxHeaderListSize` for servers.
const MAX_HEADER_LIST_SIZE: u32 = 16 << 20;

/// How long a client may take over its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on every connection `listener` accepts, over TLS when `tls` is set,
/// until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    options: ListenerOptions,
    tls: Option<Arc<ServerTls>>,
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
        let router = router.clone();
        let service = move |cert_name: Option<ClientCertName>| {
            TowerToHyperService::new(router.map_request(move |mut req: http::Request<_>| {
                req.extensions_mut().insert(info.clone());
                if let Some(name) = &cert_name {
                    req.extensions_mut().insert(name.clone());
                }
                req
            }))
        };
        let builder = builder.clone();
        // Taken per connection, so rotated certificate files reach new handshakes.
        let tls = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service(None))
                        .await
                }
                Some(tls) => match handshake(&tls, tcp).await {
                    Some(stream) => {
                        let name = cert_name(&stream);
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service(name))
                            .await
                    }
                    None => return,
                },
            };
            if let Err(e) = served {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// The TLS stream of an accepted connection, or `None` (logged) when the handshake fails
/// or times out: a client without an accepted certificate is refused here.
async fn handshake(
    tls: &TlsAcceptor,
    tcp: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let peer = tcp.peer_addr().ok();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::warn!(?peer, "rejected connection: TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(?peer, "rejected connection: TLS handshake timed out");
            None
        }
    }
}

/// The common name of the certificate the client presented (verified by the handshake).
fn cert_name(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<ClientCertName> {
    let certs = stream.get_ref().1.peer_certificates()?;
    crate::auth::cert::common_name(certs.first()?).map(ClientCertName)
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

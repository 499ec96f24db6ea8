//! The accept loop of the client and metrics listeners: HTTP/1 and HTTP/2 (gRPC) on one
//! port, as etcd serves them, with what `axum::serve` cannot set:
//! - hyper's HTTP/2 header-list limit raised from its 16 KiB default to grpc-go's 16 MiB,
//!   so gRPC metadata etcd accepts (a `token`, custom headers) is not refused with 431;
//! - `--grpc-keepalive-interval/-timeout` and `--max-concurrent-streams`;
//! - each request carries its connection's addresses, so the core knows its peer;
//! - on an https listener, each connection is a TLS handshake first (`crate::tls` builds
//!   the acceptor); a failed or stalled handshake ends only that connection;
//! - a graceful stop: no new connections, open ones told to finish (bounded);
//! - replies of concurrent requests leave in shared socket writes (`super::coalesce`).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt as _;

use super::coalesce::{Coalesce, Streams};
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

/// How long a stopping listener waits for its connections' requests to finish before it
/// closes them. Unary requests take far less; a watch or keep-alive stream never ends by
/// itself and is cut at this bound (etcd bounds its gRPC `GracefulStop` the same way).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves `router` on every connection `listener` accepts, over TLS when `tls` is set,
/// until `stop` turns true: then it stops accepting, asks every connection to finish
/// (HTTP/2 GOAWAY; HTTP/1 closes after its current request) and returns once they have,
/// or after [`DRAIN_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    options: ListenerOptions,
    tls: Option<Arc<ServerTls>>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let local_addr = listener.local_addr().ok();
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(stop.clone()) => break,
        };
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
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
        let connection = Connection {
            options,
            router: router.clone(),
            info,
            stop: stop.clone(),
        };
        // Taken per connection, so rotated certificate files reach new handshakes.
        let tls = tls.as_ref().map(|t| t.acceptor());
        connections.spawn(async move {
            match tls {
                None => connection.serve(tcp, None).await,
                Some(tls) => {
                    if let Some(stream) = handshake(&tls, tcp).await {
                        let name = cert_name(&stream);
                        connection.serve(stream, name).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
        tracing::info!(
            address = ?local_addr,
            open = connections.len(),
            "closing connections still open after the drain timeout"
        );
    }
    Ok(())
}

/// Resolves once `stop` is true; never if its sender is gone without saying so.
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    options: ListenerOptions,
    router: axum::Router,
    info: TcpConnectInfo,
    stop: watch::Receiver<bool>,
}

impl Connection {
    /// Serves requests on `io` until the client closes it or the listener stops.
    async fn serve<I>(self, io: I, cert_name: Option<ClientCertName>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let info = self.info;
        let service =
            TowerToHyperService::new(self.router.map_request(move |mut req: http::Request<_>| {
                req.extensions_mut().insert(info.clone());
                if let Some(name) = &cert_name {
                    req.extensions_mut().insert(name.clone());
                }
                req
            }));
        let streams = Streams::default();
        let builder = builder(self.options, streams.clone());
        let io = TokioIo::new(Coalesce::new(io, streams));
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let served = tokio::select! {
            served = conn.as_mut() => served,
            () = stopped(self.stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = served {
            tracing::debug!("connection ended: {e}");
        }
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

/// One connection's settings; its HTTP/2 streams are spawned through `streams`.
fn builder(options: ListenerOptions, streams: Streams) -> Builder<Streams> {
    let mut builder = Builder::new(streams);
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

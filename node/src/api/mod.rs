//! The transports: etcd's v3 gRPC services and the HTTP endpoints that share their port.
//! Each gRPC method is a thin adapter: it builds the [`RequestContext`] from the call
//! (peer, `token` metadata, `grpc-timeout`), calls one [`Core`] operation and encodes the
//! answer; errors become statuses only in `error.rs`, and every RPC is recorded in etcd's
//! gRPC metrics by [`metered`]. The HTTP/JSON gateway (`gateway/`) makes gRPC calls to
//! the same router, so it adds no path to the core of its own.
//!
//! Must not decide behaviour (that is `core/`) nor touch fjall, openraft, MVCC or Raft.

mod auth;
mod cluster;
mod coalesce;
pub mod codec;
mod election;
pub mod error;
mod gateway;
mod grpc_layer;
mod health;
pub mod http;
mod kv;
mod lease;
pub mod listen;
mod lock;
mod maintenance;
pub mod peer;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::core::{Core, Error, RequestContext, Transport};
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;

/// gRPC adds framing and metadata around the request itself; etcd allows this much on top
/// of `--max-request-bytes` before the transport refuses a message.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The router serving gRPC, the HTTP/JSON gateway and the HTTP endpoints on one port, as
/// etcd does, and cairn's plugin endpoints (`/cairn/v1/plugins`). A path nothing serves
/// is 404 (gRPC calls to an unknown service: `Unimplemented`, as tonic answers).
pub fn router(
    core: Arc<Core>,
    plugins: Arc<crate::plugins::Plugins>,
    enable_gateway: bool,
) -> axum::Router {
    // grpc-go's receive limit is server-wide: every service gets it.
    let max_msg = core.limits().max_request_bytes + GRPC_OVERHEAD_BYTES;
    codec::set_max_txn_ops(core.limits().max_txn_ops);
    let grpc = tonic::service::Routes::new(
        KvServer::new(kv::KvService(core.clone())).max_decoding_message_size(max_msg),
    )
    .add_service(
        ClusterServer::new(cluster::ClusterService(core.clone()))
            .max_decoding_message_size(max_msg),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService(core.clone())).max_decoding_message_size(max_msg),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService(core.clone()))
            .max_decoding_message_size(max_msg),
    )
    .add_service(
        LockServer::new(lock::LockService(core.clone())).max_decoding_message_size(max_msg),
    )
    .add_service(
        ElectionServer::new(election::ElectionService(core.clone()))
            .max_decoding_message_size(max_msg),
    )
    .add_service(watch::WatchServer::new(core.clone(), max_msg))
    .add_service(
        AuthServer::new(auth::AuthService(core.clone())).max_decoding_message_size(max_msg),
    )
    .into_axum_router()
    .layer(axum::middleware::from_fn(grpc_layer::layer));
    let mut router = grpc.clone();
    if enable_gateway {
        router = router.merge(gateway::router(grpc, core.limits().max_request_bytes));
    }
    router
        .merge(http_endpoints(core))
        .merge(http::plugin_router(plugins))
        .fallback(not_found)
}

/// The router for `--listen-metrics-urls`: the HTTP endpoints only.
pub fn metrics_router(core: Arc<Core>) -> axum::Router {
    http_endpoints(core).fallback(not_found)
}

fn http_endpoints(core: Arc<Core>) -> axum::Router {
    http::router(core.clone()).merge(health::router(core))
}

/// What nothing else serves: tonic's answer to a gRPC call, etcd's 404 to the rest.
async fn not_found(req: axum::extract::Request) -> axum::response::Response {
    let is_grpc = req
        .headers()
        .get(::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    }
    gateway::not_found(req.uri().path())
}

/// The core's view of a gRPC call: who sent it and until when they wait.
fn context<T>(req: &tonic::Request<T>) -> RequestContext {
    let transport = match req.extensions().get::<gateway::GatewayCall>() {
        Some(_) => Transport::Http,
        None => Transport::Grpc,
    };
    let mut ctx = RequestContext::new(transport, req.remote_addr());
    let meta = req.metadata();
    let authorization = meta.get("authorization").and_then(|a| a.to_str().ok());
    ctx.credentials.user_password = authorization.and_then(basic_auth);
    // etcd takes the token from `token`, else from `authorization` (where the gateway
    // puts the `Authorization` header).
    ctx.credentials.token = meta
        .get("token")
        .and_then(|t| t.to_str().ok())
        .or(authorization.filter(|a| !a.starts_with("Basic ")))
        .map(str::to_string);
    ctx.credentials.client_cert_cn = req
        .extensions()
        .get::<listen::ClientCertName>()
        .map(|cn| cn.0.clone());
    ctx.deadline = meta
        .get("grpc-timeout")
        .and_then(|t| t.to_str().ok())
        .and_then(grpc_timeout)
        .map(|timeout| Instant::now() + timeout);
    ctx
}

/// `Basic base64(user:password)` (RFC 7617), for auth plugins that take passwords.
fn basic_auth(value: &str) -> Option<(String, String)> {
    use base64::Engine;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Parses gRPC's `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A gRPC method, as etcd's metrics label it.
#[derive(Clone, Copy)]
struct Method {
    service: &'static str,
    name: &'static str,
}

/// The adapter of a unary RPC: the call's context and message to `op`, its answer back,
/// recorded in etcd's gRPC metrics. Combinators, not `async fn`s, for the reason given at
/// `core::until_deadline`: each `async fn` layer would double the request's future.
fn unary<Req, Resp, Fut>(
    method: Method,
    req: tonic::Request<Req>,
    op: impl FnOnce(RequestContext, Req) -> Fut,
) -> impl Future<Output = Result<tonic::Response<Resp>, tonic::Status>>
where
    Fut: Future<Output = Result<Resp, Error>>,
{
    let ctx = context(&req);
    metered(method, "unary", op(ctx, req.into_inner()))
}

/// Runs one call, recording etcd's gRPC metrics and mapping its error.
fn metered<T>(
    method: Method,
    grpc_type: &'static str,
    call: impl Future<Output = Result<T, Error>>,
) -> impl Future<Output = Result<tonic::Response<T>, tonic::Status>> {
    let started = record_start(method, grpc_type);
    call.map(move |result| {
        let result = result
            .map(tonic::Response::new)
            .map_err(tonic::Status::from);
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        record_end(method, grpc_type, started, code);
        result
    })
}

/// Counts a started call (`grpc_server_started_total`); returns when it started.
fn record_start(method: Method, grpc_type: &'static str) -> Instant {
    crate::metrics::get()
        .grpc_started
        .with_label_values(&[grpc_type, method.service, method.name])
        .inc();
    Instant::now()
}

/// Records a finished call: its duration and code.
fn record_end(method: Method, grpc_type: &'static str, started: Instant, code: tonic::Code) {
    let m = crate::metrics::get();
    m.grpc_handling_seconds
        .with_label_values(&[grpc_type, method.service, method.name])
        .observe(started.elapsed().as_secs_f64());
    m.grpc_handled
        .with_label_values(&[grpc_type, method.service, method.name, code_name(code)])
        .inc();
}

/// gRPC code names as go-grpc-prometheus writes them (`OK`, `InvalidArgument`, ...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_grpc_defines_them() {
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(grpc_timeout("123456789S"), None);
        assert_eq!(grpc_timeout("S"), None);
        assert_eq!(grpc_timeout("5x"), None);
    }
}

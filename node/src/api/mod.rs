//! The client-facing surface: etcd's v3 gRPC services and the HTTP endpoints that share
//! their port. Each service is a thin layer that validates a request, hands writes to
//! `raft` and reads to `mvcc`, and fills etcd's response header. Errors become gRPC statuses
//! only in `error.rs`; metrics for every RPC are recorded in [`metered`].
//!
//! Must not touch fjall or openraft types directly: it talks to `RaftNode`, `Mvcc` and `Store`.

mod cluster;
pub mod codec;
mod concurrency;
mod election;
pub mod error;
mod grpc_layer;
mod http;
mod kv;
mod lease;
pub mod listen;
mod lock;
mod maintenance;
mod validate;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::lease::Lessor;
use crate::mvcc::Mvcc;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer, ResponseHeader,
};
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::raft::RaftNode;
use crate::storage::Store;
use crate::watch::WatchHub;
use error::ApiError;
pub use lease::spawn_expiry as spawn_lease_expiry;

/// The etcd server version cairn reports to clients. Kubernetes and other clients gate
/// features on it, so it must look like an etcd release; cairn's own version is reported
/// separately (`/version`'s `cairn` field).
pub const ETCD_SERVER_VERSION: &str = "3.5.0";
/// The etcd cluster (API) version.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// gRPC adds framing and metadata around the request itself; etcd allows this much on top
/// of `--max-request-bytes` before the transport refuses a message.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Limits from the configuration that the API enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_backend_bytes: u64,
}

/// Everything a request handler needs.
pub struct Node {
    pub raft: Arc<RaftNode>,
    pub mvcc: Arc<Mvcc>,
    pub lessor: Arc<Lessor>,
    pub store: Arc<Store>,
    pub watch: Arc<WatchHub>,
    pub cluster_id: u64,
    pub member_id: u64,
    pub limits: Limits,
}

impl Node {
    /// etcd's response header at store revision `revision`.
    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.status().term,
        })
    }

    /// Whether the database has grown past `--quota-backend-bytes`; writes are refused then.
    fn over_quota(&self) -> bool {
        self.store.disk_space() > self.limits.quota_backend_bytes
    }
}

/// The router serving gRPC and HTTP on one port, as etcd does.
pub fn router(node: Arc<Node>) -> axum::Router {
    // grpc-go's receive limit is server-wide: every service gets it.
    let max_msg = node.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    codec::set_max_txn_ops(node.limits.max_txn_ops);
    let grpc = tonic::service::Routes::new(
        KvServer::new(kv::KvService(node.clone())).max_decoding_message_size(max_msg),
    )
    .add_service(
        ClusterServer::new(cluster::ClusterService(node.clone()))
            .max_decoding_message_size(max_msg),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService(node.clone())).max_decoding_message_size(max_msg),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService(node.clone()))
            .max_decoding_message_size(max_msg),
    )
    .add_service(
        LockServer::new(lock::LockService(node.clone())).max_decoding_message_size(max_msg),
    )
    .add_service(
        ElectionServer::new(election::ElectionService(node.clone()))
            .max_decoding_message_size(max_msg),
    )
    .add_service(
        WatchServer::new(watch::WatchService(node.clone())).max_decoding_message_size(max_msg),
    )
    .into_axum_router();
    grpc.merge(http::router(node))
        .layer(axum::middleware::from_fn(grpc_layer::layer))
}

/// The router for `--listen-metrics-urls`: the HTTP endpoints only.
pub fn metrics_router(node: Arc<Node>) -> axum::Router {
    http::router(node)
}

/// Runs one unary RPC, recording etcd's gRPC metrics and mapping its error.
async fn metered<T>(
    service: &'static str,
    method: &'static str,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let m = crate::metrics::get();
    let labels = ["unary", service, method];
    m.grpc_started.with_label_values(&labels).inc();
    let start = Instant::now();
    let result = call
        .await
        .map(tonic::Response::new)
        .map_err(tonic::Status::from);
    m.grpc_handling_seconds
        .with_label_values(&labels)
        .observe(start.elapsed().as_secs_f64());
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    m.grpc_handled
        .with_label_values(&["unary", service, method, code_name(code)])
        .inc();
    result
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

//! Plain HTTP endpoints served beside gRPC on the client port (and on
//! `--listen-metrics-urls`): `/health`, `/livez`, `/readyz`, `/version`, `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;

use super::{Node, ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION};

/// How long `/health` waits for a linearizable read before calling the node unhealthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// etcd's `/health`: healthy when there is a leader, no alarm, and a linearizable read
/// completes in time.
async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let reason = if node.raft.status().leader.is_none() {
        Some("RAFT NO LEADER")
    } else if !node.alarms().is_empty() {
        Some("ALARM NOSPACE")
    } else {
        match tokio::time::timeout(HEALTH_TIMEOUT, node.raft.read_barrier()).await {
            Ok(Ok(())) => None,
            _ => Some("timeout"),
        }
    };
    let m = crate::metrics::get();
    match reason {
        None => {
            m.health_success.inc();
            (
                StatusCode::OK,
                Json(json!({"health": "true", "reason": ""})),
            )
        }
        Some(reason) => {
            m.health_failures.inc();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"health": "false", "reason": reason})),
            )
        }
    }
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "etcdserver": ETCD_SERVER_VERSION,
        "etcdcluster": ETCD_CLUSTER_VERSION,
        "cairn": env!("CARGO_PKG_VERSION"),
    }))
}

async fn metrics(State(node): State<Arc<Node>>) -> String {
    let m = crate::metrics::get();
    let size = i64::try_from(node.store.disk_space()).unwrap_or(i64::MAX);
    m.db_total_size.set(size);
    m.db_total_size_in_use.set(size);
    m.render()
}

//! Plain HTTP endpoints served beside gRPC on the client port (and on
//! `--listen-metrics-urls`): `/version`, `/metrics` (the probes are `health.rs`); on the
//! client port only, cairn's plugin endpoints `GET /cairn/v1/plugins` and
//! `POST /cairn/v1/plugins/reload`; `POST /cairn/v1/backup` on the client and metrics ports.

use std::sync::Arc;

use axum::{
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use serde_json::json;

use crate::core::{Core, ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION};
use crate::plugins::{PluginError, Plugins};

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        // etcd 3.5 answers POST with 405; gateway clients that POST get the version.
        .route("/version", get(version).post(version))
        .route("/metrics", get(metrics))
        .with_state(core)
}

/// Go's `http.Error`: a text body ending in a newline, with which etcd and grpc-gateway
/// refuse what they do not route (404, 405) and failed probes.
pub(super) fn go_http_error(status: StatusCode, text: &str) -> axum::response::Response {
    (
        status,
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{text}\n"),
    )
        .into_response()
}

/// `POST /cairn/v1/backup`: writes a backup into `--backup-dir` and answers what was
/// written (200), why it failed (500), or that backups are off (409).
pub fn backup_router(backups: Option<Arc<crate::backup::Backups>>) -> Router {
    Router::new()
        .route("/cairn/v1/backup", post(backup))
        .with_state(backups)
}

async fn backup(
    State(backups): State<Option<Arc<crate::backup::Backups>>>,
) -> (StatusCode, Json<serde_json::Value>) {
    let Some(backups) = backups else {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "backups are not configured: start cairn with --backup-dir"})),
        );
    };
    match backups.take().await {
        Ok(written) => (StatusCode::OK, Json(json!(written))),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "etcdserver": ETCD_SERVER_VERSION,
        "etcdcluster": ETCD_CLUSTER_VERSION,
        "cairn": env!("CARGO_PKG_VERSION"),
    }))
}

async fn metrics(State(core): State<Arc<Core>>) -> String {
    core.publish_metrics();
    crate::metrics::get().render()
}

/// cairn's plugin endpoints (`cairn plugin list`, `cairn plugin reload`).
pub fn plugin_router(plugins: Arc<Plugins>) -> Router {
    Router::new()
        .route("/cairn/v1/plugins", get(plugin_list))
        .route("/cairn/v1/plugins/reload", post(plugin_reload))
        .with_state(plugins)
}

async fn plugin_list(State(plugins): State<Arc<Plugins>>) -> impl IntoResponse {
    Json(json!({ "plugins": plugins.current().describe() }))
}

/// 200 with the report when the list was read (plugins that failed are in `failed`), an
/// error status and message when nothing could be reloaded.
async fn plugin_reload(State(plugins): State<Arc<Plugins>>) -> axum::response::Response {
    match plugins.reload().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            let status = match e {
                PluginError::NoConfigFile => StatusCode::CONFLICT,
                PluginError::Config(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, Json(json!({ "error": e.to_string() }))).into_response()
        }
    }
}

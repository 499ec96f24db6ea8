//! cairn's integration tests: one binary, one module per area. Every test spawns its own
//! server (cairn by default, real etcd 3.5 with `CAIRN_TEST_SERVER=etcd`) on its own ports
//! and data directory, so tests run in parallel. Expectations were taken from etcd 3.5.1.

// Test code: a failed unwrap is a failed assertion with its value printed, which is what we want.
#![allow(clippy::unwrap_used)]

mod alarms;
mod auth;
mod auto_compaction;
mod bad_input;
mod big_reads;
mod cluster_faults;
mod cluster_ops;
mod config;
mod crash;
mod dashboards;
mod data_format;
mod edge_cases;
mod etcd_snapshots;
mod etcdctl;
mod fail_safe;
mod gateway;
mod http;
mod kv;
mod lease_api;
mod lease_checkpoint;
mod lease_ctl;
mod lifecycle;
mod lock_api;
mod lock_elect;
mod maintenance;
mod metrics;
mod multi_node;
mod plugin_hooks;
mod plugins;
mod scheduled_backups;
mod snapshots;
mod tls;
mod tls_fuzz;
mod tls_ops;
mod watch_ctl;
mod watch_guarantees;

use cairn_tests::Server;
use etcd_client::{Error, GetOptions};
pub use tonic::Code;

/// Runs etcdctl and returns its stdout, failing the test if it fails.
pub async fn ok(server: &Server, args: &[&str]) -> String {
    let out = server.ctl(args).await.expect("etcdctl runs");
    out.success().expect("etcdctl succeeds").to_string()
}

/// Runs etcdctl with `-w json` and parses its output.
pub async fn json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.extend(["-w", "json"]);
    let text = ok(server, &args).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
}

/// The gRPC code and message of an etcd-client error, or a panic naming what came instead.
pub fn grpc_error<T: std::fmt::Debug>(result: Result<T, Error>) -> (Code, String) {
    match result {
        Err(Error::GRpcStatus(status)) => (status.code(), status.message().to_string()),
        other => panic!("expected a gRPC error status, got {other:?}"),
    }
}

/// Asserts that `result` is the gRPC error `code` with exactly `message`.
#[track_caller]
pub fn assert_grpc_error<T: std::fmt::Debug>(result: Result<T, Error>, code: Code, message: &str) {
    let (got_code, got_message) = grpc_error(result);
    assert_eq!(
        (got_code, got_message.as_str()),
        (code, message),
        "unexpected gRPC error"
    );
}

/// Revision in the header of any etcd-client response.
#[macro_export]
macro_rules! rev {
    ($resp:expr) => {
        $resp.header().expect("response has a header").revision()
    };
}

/// The store revision as seen by a plain Range.
pub async fn current_revision(client: &mut etcd_client::Client) -> i64 {
    let resp = client
        .get("\0", Some(GetOptions::new().with_count_only()))
        .await
        .expect("range for the current revision");
    rev!(resp)
}

/// A prefix watch from now, returned once the server answered `created`: the watch is
/// registered, so every write made after this returns is the watch's to see (the stream
/// itself opens before the server has read the create request).
pub async fn watch_prefix(
    client: &mut etcd_client::Client,
    prefix: &str,
) -> etcd_client::WatchStream {
    let opts = etcd_client::WatchOptions::new().with_prefix();
    let mut stream = client.watch(prefix, Some(opts)).await.expect("watch");
    let created = stream
        .message()
        .await
        .expect("watch stream")
        .expect("a created response");
    assert!(created.created(), "first watch response: {created:?}");
    stream
}

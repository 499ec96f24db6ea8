//! HTTP endpoints on the client port: `/health`, `/version` and `/metrics`, as monitoring
//! and gateway clients of etcd read them.

use cairn_tests::{parse_metrics, Sample, Server};
use serde_json::Value;

async fn get_json(server: &Server, path: &str) -> Value {
    let (status, body) = server.http_get(path).await.expect("HTTP GET");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON ({e}): {body}"))
}

#[tokio::test]
async fn health_is_true() {
    let server = Server::start().await.unwrap();
    let v = get_json(&server, "/health").await;
    assert_eq!(v["health"], "true");
    assert_eq!(v["reason"], "");
}

#[tokio::test]
async fn version_looks_like_etcd_3_5() {
    let server = Server::start().await.unwrap();
    let v = get_json(&server, "/version").await;
    let server_version = v["etcdserver"].as_str().expect("etcdserver is a string");
    assert!(server_version.starts_with("3.5."), "{v}");
    // Gateway clients parse this as plain numbers: no suffix allowed.
    assert!(
        server_version
            .split('.')
            .all(|part| part.parse::<u32>().is_ok()),
        "{v}"
    );
    assert_eq!(v["etcdcluster"], "3.5.0");
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

#[tokio::test]
async fn metrics_use_etcd_names() {
    let server = Server::start().await.unwrap();
    let mut client = server.client().await.unwrap();
    client.put("k", "v", None).await.unwrap();
    client.get("k", None).await.unwrap();

    let (status, body) = server.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let samples = parse_metrics(&body);

    let value = |name: &str| {
        find(&samples, name, &[])
            .unwrap_or_else(|| panic!("metric {name} missing"))
            .value
    };
    assert_eq!(value("etcd_server_has_leader"), 1.0);
    assert_eq!(value("etcd_server_is_leader"), 1.0);
    // The WAL fsync histogram saw the put's fsync.
    assert!(value("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(
        find(
            &samples,
            "etcd_disk_wal_fsync_duration_seconds_bucket",
            &[("le", "+Inf")]
        )
        .is_some(),
        "fsync histogram has buckets"
    );

    // gRPC handled counters carry the standard labels.
    let handled = |method: &str| {
        find(
            &samples,
            "grpc_server_handled_total",
            &[
                ("grpc_type", "unary"),
                ("grpc_service", "etcdserverpb.KV"),
                ("grpc_method", method),
                ("grpc_code", "OK"),
            ],
        )
        .unwrap_or_else(|| panic!("grpc_server_handled_total for KV.{method} missing"))
        .value
    };
    assert!(handled("Put") >= 1.0);
    assert!(handled("Range") >= 2.0, "the readiness probe and the get");
}

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
    // The raft indexes move with each write: the next put is one more entry, applied (raft
    // records it just after the client hears back, so this polls briefly).
    let applied = value("etcd_server_proposals_applied_total");
    client.put("k", "w", None).await.unwrap();
    let now = |name| crate::plugins::metric(&server, name, &[]);
    let mut indexes = (0.0, 0.0);
    for _ in 0..50 {
        indexes = (
            now("etcd_server_proposals_applied_total").await,
            now("etcd_server_proposals_committed_total").await,
        );
        if indexes.0 > applied {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(indexes.0 > applied, "applied {applied} -> {}", indexes.0);
    assert!(indexes.1 >= indexes.0, "committed {} < applied", indexes.1);
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

/// The value of an unlabelled counter, 0 if the server does not export it yet.
async fn counter(server: &Server, name: &str) -> f64 {
    let (status, body) = server.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    find(&parse_metrics(&body), name, &[]).map_or(0.0, |s| s.value)
}

async fn counters(server: &Server, names: &[&str]) -> Vec<f64> {
    let mut values = Vec::new();
    for name in names {
        values.push(counter(server, name).await);
    }
    values
}

#[tokio::test]
async fn lease_metrics_count_grants_renewals_revokes_and_expiries() {
    let server = Server::start().await.unwrap();
    let mut client = server.client().await.unwrap();
    let names = [
        "etcd_debugging_lease_granted_total",
        "etcd_debugging_lease_renewed_total",
        "etcd_debugging_lease_revoked_total",
        // etcd 3.5 names it etcd_debugging_server_lease_expired_total; only one exists.
        "etcd_server_lease_expired_total",
        "etcd_debugging_server_lease_expired_total",
        "etcd_debugging_lease_ttl_total_count",
        "etcd_debugging_lease_ttl_total_sum",
    ];
    let before = counters(&server, &names).await;

    let kept = client.lease_grant(60, None).await.unwrap().id();
    let (mut keeper, mut responses) = client.lease_keep_alive(kept).await.unwrap();
    keeper.keep_alive().await.unwrap();
    responses
        .message()
        .await
        .unwrap()
        .expect("a keep-alive answer");
    client.lease_revoke(kept).await.unwrap();
    // The minimum TTL: it expires (and is revoked by the leader) within a few seconds.
    let short = client.lease_grant(2, None).await.unwrap().id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ttl = client.lease_time_to_live(short, None).await.unwrap();
        if ttl.ttl() == -1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lease did not expire");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The expiry's revoke is applied before the lease disappears; give /metrics a moment.
    let mut after = counters(&server, &names).await;
    for _ in 0..20 {
        if after[3] + after[4] - before[3] - before[4] >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = counters(&server, &names).await;
    }
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let expired = delta[3] + delta[4];
    assert_eq!(
        [delta[0], delta[1], delta[2], expired, delta[5], delta[6]],
        [2.0, 2.0, 2.0, 1.0, 2.0, 62.0],
        "granted, renewed (etcd-client's keep-alive stream sends one on opening, then ours), \
         revoked (by hand and by expiry), expired, TTLs observed and their sum"
    );
}

#[tokio::test]
async fn grpc_byte_counters_count_request_and_response_bytes() {
    let server = Server::start().await.unwrap();
    let mut client = server.client().await.unwrap();
    let names = [
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
    ];
    client.put("warm-up", "x", None).await.unwrap();
    let before = counters(&server, &names).await;
    // A 100 kB value travels in the request, then back in the response of a get.
    client.put("k", vec![b'x'; 100_000], None).await.unwrap();
    let resp = client.get("k", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value().len(), 100_000);
    let after = counters(&server, &names).await;
    let received = after[0] - before[0];
    let sent = after[1] - before[1];
    // etcd counts the protobuf sizes of messages; cairn counts their gRPC frames. Both are a
    // little over the value plus the small messages around it.
    assert!(
        (100_000.0..110_000.0).contains(&received),
        "received {received} bytes"
    );
    assert!((100_000.0..110_000.0).contains(&sent), "sent {sent} bytes");
}

//! `/metrics` beyond the names (see `http.rs`): values fed from real events, process
//! metrics, help text on every family, and cairn's storage-engine and peer series.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_tests::cluster::Cluster;
use cairn_tests::{parse_metrics, Server};
use etcd_client::{CompactionOptions, GetOptions};

/// Every unlabelled sample of `/metrics`, by name.
async fn values(server: &Server) -> BTreeMap<String, f64> {
    let (status, body) = server.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    parse_metrics(&body)
        .into_iter()
        .filter(|s| s.labels.is_empty())
        .map(|s| (s.name, s.value))
        .collect()
}

fn value(values: &BTreeMap<String, f64>, name: &str) -> f64 {
    *values
        .get(name)
        .unwrap_or_else(|| panic!("{name} not exported"))
}

#[tokio::test]
async fn key_count_and_revisions_follow_writes_and_compaction() {
    let server = Server::start().await.unwrap();
    let mut client = server.client().await.unwrap();
    let before = values(&server).await;
    for key in ["a", "b", "c"] {
        client.put(key, "v", None).await.unwrap();
    }
    client.put("a", "again", None).await.unwrap();
    client.delete("b", None).await.unwrap();
    let rev = client
        .get("a", Some(GetOptions::new().with_count_only()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(rev - 1, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let after = values(&server).await;
    let delta = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(delta("etcd_debugging_mvcc_keys_total"), 2.0, "a and c live");
    assert_eq!(delta("etcd_debugging_mvcc_current_revision"), 5.0);
    assert_eq!(
        value(&after, "etcd_debugging_mvcc_current_revision"),
        rev as f64
    );
    assert_eq!(
        value(&after, "etcd_debugging_mvcc_compact_revision"),
        (rev - 1) as f64
    );
    assert_eq!(delta("etcd_mvcc_put_total"), 4.0);
    assert_eq!(delta("etcd_mvcc_delete_total"), 1.0);
    assert!(delta("etcd_disk_wal_write_bytes_total") > 0.0);
}

#[tokio::test]
async fn process_metrics_describe_the_server_process() {
    let server = Server::start().await.unwrap();
    let v = values(&server).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value(&v, "process_start_time_seconds");
    assert!(
        (now - 120.0..=now).contains(&started),
        "started at {started}, now {now}"
    );
    let pid = server.pid().expect("server runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let rss = value(&v, "process_resident_memory_bytes");
    // The same process, measured a moment apart.
    assert!(
        (rss / 1024.0 - rss_kib).abs() < rss_kib * 0.5,
        "RSS {rss} B vs /proc {rss_kib} KiB"
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    let open = value(&v, "process_open_fds");
    assert!((open - fds).abs() <= 10.0, "open fds {open} vs /proc {fds}");
    assert!(value(&v, "process_max_fds") >= open);
    assert!(v.contains_key("process_cpu_seconds_total"));
}

#[tokio::test]
async fn every_metric_has_help_text() {
    let server = Server::start().await.unwrap();
    server
        .client()
        .await
        .unwrap()
        .put("k", "v", None)
        .await
        .unwrap();
    let (_, body) = server.http_get("/metrics").await.unwrap();
    let mut helped = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            helped.insert(name.to_string(), help.trim().to_string());
        }
    }
    for sample in parse_metrics(&body) {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| sample.name.strip_suffix(s))
            .filter(|f| helped.contains_key(*f))
            .unwrap_or(&sample.name);
        let help = helped.get(family).map(String::as_str).unwrap_or_default();
        assert!(!help.is_empty(), "{} has no help text", sample.name);
    }
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: fjall's statistics")]
async fn storage_engine_metrics_cover_both_databases() {
    let server = Server::start().await.unwrap();
    let mut client = server.client().await.unwrap();
    for i in 0..50 {
        client
            .put(format!("k{i}"), vec![b'v'; 1000], None)
            .await
            .unwrap();
    }
    let (_, body) = server.http_get("/metrics").await.unwrap();
    let samples = parse_metrics(&body);
    for name in [
        "cairn_storage_write_buffer_bytes",
        "cairn_storage_pending_flushes",
        "cairn_storage_active_compactions",
        "cairn_storage_compactions_total",
        "cairn_storage_compaction_seconds_total",
        "cairn_storage_block_cache_bytes",
    ] {
        for database in ["db", "wal"] {
            assert!(
                samples.iter().any(|s| s.name == name
                    && s.labels.get("database").map(String::as_str) == Some(database)),
                "{name}{{database={database}}} missing"
            );
        }
    }
    // 50 KB of values sit in the memtables of both (the log and the state).
    for database in ["db", "wal"] {
        let buffered = samples
            .iter()
            .find(|s| {
                s.name == "cairn_storage_write_buffer_bytes" && s.labels["database"] == database
            })
            .unwrap()
            .value;
        assert!(
            buffered >= 50_000.0,
            "{database}: {buffered} bytes buffered"
        );
    }
}

#[tokio::test]
#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: etcd counts heartbeat failures only when its send queue is full"
)]
async fn leader_counts_heartbeats_a_dead_follower_misses() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    let failures =
        |v: &BTreeMap<String, f64>| value(v, "etcd_server_heartbeat_send_failures_total");
    let before = failures(&values(cluster.member(leader)).await);
    cluster.kill9(follower).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = values(cluster.member(leader)).await;
        if failures(&v) > before {
            assert_eq!(value(&v, "etcd_server_is_leader"), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "no heartbeat failure counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

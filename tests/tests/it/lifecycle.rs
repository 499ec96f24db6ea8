//! The process's life under a service manager: systemd's `READY=1` (sd_notify) once the
//! member serves, a graceful stop on SIGTERM (requests in flight finish, a leader hands
//! its leadership over first, nothing acknowledged is lost), and zap-shaped JSON logs
//! with `--log-level` filtering.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::{server_args, testing_cairn, Server, READY_TIMEOUT};
use etcd_client::{Client, ConnectOptions, GetOptions};
use tokio::net::UnixDatagram;

/// A socket standing in for systemd's notify socket, and the variable pointing at it.
fn notify_socket(dir: &Path) -> (UnixDatagram, (String, String)) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let var = ("NOTIFY_SOCKET".to_string(), path.display().to_string());
    (socket, var)
}

/// The next datagram on `socket` within `within`, as text.
async fn next_notification(socket: &UnixDatagram, within: Duration) -> Option<String> {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(within, socket.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A client of `url` whose requests give up after `timeout`.
async fn quick_client(url: String, timeout: Duration) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    Client::connect([url], Some(opts)).await.unwrap()
}

#[tokio::test]
async fn ready_is_notified_once_a_request_can_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, var) = notify_socket(dir.path());
    let server = Server::spawn_with_env("node1", vec![var], |layout| {
        Ok(server_args(
            &layout.name,
            &layout.data_dir,
            layout.client_port,
            layout.peer_port,
        ))
    })
    .unwrap();
    let ready = next_notification(&socket, READY_TIMEOUT).await;
    assert!(
        ready
            .as_deref()
            .is_some_and(|m| m.lines().any(|l| l == "READY=1")),
        "no READY=1 (got {ready:?}); log:\n{}",
        server.log_tail(3000)
    );
    // The moment READY=1 arrives a write succeeds, without retrying.
    let mut client = quick_client(server.client_url(), Duration::from_secs(2)).await;
    client.put("after-ready", "v", None).await.unwrap();
}

#[tokio::test]
async fn a_member_without_quorum_is_not_ready_until_its_peers_return() {
    let mut cluster = Cluster::start(3).await.unwrap();
    for i in 0..3 {
        cluster.kill9(i).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (socket, var) = notify_socket(dir.path());
    cluster.member_env_mut(0).push(var);
    cluster.relaunch(0).unwrap();
    // Alone it cannot reach a quorum: no READY=1, and reads fail.
    assert_eq!(
        next_notification(&socket, Duration::from_secs(3)).await,
        None
    );
    let url = cluster.member(0).client_url();
    let mut client = quick_client(url.clone(), Duration::from_secs(1)).await;
    assert!(client.get("k", None).await.is_err());
    cluster.relaunch(1).unwrap();
    cluster.relaunch(2).unwrap();
    let ready = next_notification(&socket, READY_TIMEOUT).await;
    assert_eq!(ready.as_deref().map(str::trim), Some("READY=1"));
    let mut client = quick_client(url, Duration::from_secs(2)).await;
    client.put("after-ready", "v", None).await.unwrap();
}

/// Puts `/acked/<n>` through `url` until `stop`, each bounded, counting acknowledgements in
/// `count`; returns the acknowledged keys.
fn put_loop(
    url: String,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<BTreeSet<String>> {
    tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        let mut client = quick_client(url, Duration::from_secs(2)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let key = format!("/acked/{n:06}");
            n += 1;
            if client.put(key.as_str(), "v", None).await.is_ok() {
                acked.insert(key);
                count.fetch_add(1, Ordering::Relaxed);
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        acked
    })
}

/// Waits (up to 20 s) until the put loops have `n` acknowledgements, so a signal lands while
/// puts go through, however slow the machine.
async fn wait_for_acks(count: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "only {} puts acknowledged in 20 s",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every key under `/acked/` that `url` serves.
async fn stored_keys(url: String) -> BTreeSet<String> {
    let mut client = quick_client(url, Duration::from_secs(10)).await;
    let resp = client
        .get(
            "/acked/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn sigterm_on_the_leader_hands_leadership_over_and_loses_nothing() {
    // A long election timeout: without a hand-over, a new leader would take at least this.
    let election_timeout = Duration::from_secs(4);
    let options = ClusterOptions {
        heartbeat: Duration::from_millis(100),
        election_timeout,
        ..ClusterOptions::new(3)
    };
    let mut cluster = Cluster::start_with(options).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let old_id = cluster.member_id(leader);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let loops: Vec<_> = followers
        .iter()
        .map(|&i| put_loop(cluster.member(i).client_url(), stop.clone(), count.clone()))
        .collect();
    wait_for_acks(&count, 10).await;

    let signalled = Instant::now();
    let watcher = {
        let urls: Vec<String> = followers
            .iter()
            .map(|&i| cluster.member(i).client_url())
            .collect();
        tokio::spawn(async move {
            // The first moment a follower names another leader.
            loop {
                for url in &urls {
                    let mut client = quick_client(url.clone(), Duration::from_millis(500)).await;
                    if let Ok(status) = client.status().await {
                        let id = status.leader();
                        if id != 0 && id != old_id {
                            return signalled.elapsed();
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let status = cluster.terminate(leader).await.unwrap();
    let new_leader_after = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .expect("a new leader within 20 s")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    for l in loops {
        acked.extend(l.await.unwrap());
    }

    eprintln!("new leader {new_leader_after:?} after SIGTERM to the leader");
    let log = cluster.member(leader).log();
    assert!(
        log.contains("\"msg\":\"leadership transfer finished\""),
        "the old leader did not log the hand-over; log tail:\n{}",
        cluster.member(leader).log_tail(3000)
    );
    assert!(
        new_leader_after < election_timeout,
        "a new leader came after {new_leader_after:?}, as late as an election"
    );
    if testing_cairn() {
        // etcd re-raises the signal and dies of it; cairn exits 0 (README's table).
        assert!(status.success(), "{status}");
    }
    let stored = stored_keys(cluster.member(followers[0]).client_url()).await;
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged puts lost: {lost:?}");
}

#[tokio::test]
async fn sigterm_during_puts_exits_cleanly_and_keeps_every_acknowledged_put() {
    let mut server = Server::start().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let puts = put_loop(server.client_url(), stop.clone(), count.clone());
    wait_for_acks(&count, 10).await;
    let status = server.terminate().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let acked = puts.await.unwrap();
    if testing_cairn() {
        assert!(
            status.success(),
            "{status}; log:\n{}",
            server.log_tail(3000)
        );
    }
    server.restart().await.unwrap();
    let stored = stored_keys(server.client_url()).await;
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged puts lost: {lost:?}");
}

/// The server's log lines that are JSON objects (the harness's own lines are not).
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn logs_are_zap_json_lines() {
    let server = Server::start().await.unwrap();
    let lines = json_lines(&server.log());
    assert!(!lines.is_empty(), "{}", server.log());
    for line in &lines {
        let level = line["level"].as_str().unwrap_or_default();
        assert!(
            ["debug", "info", "warn", "error"].contains(&level),
            "{line}"
        );
        // zap's ISO 8601 encoder: `2006-01-02T15:04:05.000Z` (the machine's zone is UTC).
        let ts = line["ts"].as_str().unwrap_or_default();
        let shape: String = ts
            .chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect();
        assert_eq!(shape, "0000-00-00T00:00:00.000Z", "{line}");
        let caller = line["caller"].as_str().unwrap_or_default();
        assert!(caller.contains(".go:") || caller.contains(".rs:"), "{line}");
        assert!(
            !line["msg"].as_str().unwrap_or_default().is_empty(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["msg"] == "ready to serve client requests"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn log_level_warn_leaves_out_info_lines() {
    let server = Server::start_with(&["--log-level=warn"]).await.unwrap();
    let mut client = server.client().await.unwrap();
    client.put("k", "v", None).await.unwrap();
    let levels: BTreeSet<String> = json_lines(&server.log())
        .iter()
        .map(|l| l["level"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        levels.is_subset(&BTreeSet::from(["warn".to_string(), "error".to_string()])),
        "{levels:?}"
    );
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: --log-format is etcd 3.6's flag")]
async fn log_format_console_writes_tab_separated_text() {
    let server = Server::start_with(&["--log-format=console"]).await.unwrap();
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("ready to serve client requests"))
        .unwrap_or_else(|| panic!("{log}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert!(fields.len() >= 4, "{line}");
    assert_eq!(fields[1], "info", "{line}");
    assert!(
        fields[0].ends_with('Z') && fields[0].contains('T'),
        "{line}"
    );
    assert!(fields[2].contains(".rs:"), "{line}");
    assert_eq!(fields[3], "ready to serve client requests");
    let extra: serde_json::Value = serde_json::from_str(fields[4]).unwrap();
    assert!(extra["member-id"].is_string(), "{line}");
}

//! `etcdctl watch` against the server: key and prefix watches, history replay with `--rev`
//! (deletes included), `--prev-kv`, a watch below the compact revision, and `-w json`, with
//! the exact lines etcdctl 3.5.1 prints for etcd 3.5.1.
//!
//! etcdctl prints nothing when its watch is created, so tests that write after starting a
//! live watch first wait for the server's `etcd_debugging_mvcc_watcher_total` gauge; tests of
//! history use `--rev` and need no such wait.

use std::time::{Duration, Instant};

use cairn_tests::{parse_metrics, CtlProcess, Server};
use serde_json::Value;

/// Bound for every line a watch is expected to print.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watch must stay silent when no event is due.
const QUIET: Duration = Duration::from_millis(500);

const COMPACTED_STDERR: &str = "watch was canceled (etcdserver: mvcc: required revision has \
     been compacted)\nError: watch is canceled by the server\n";

async fn start() -> Server {
    Server::start().await.expect("server starts")
}

async fn ok(server: &Server, args: &[&str]) -> String {
    let out = server.ctl(args).await.expect("etcdctl runs");
    out.success().expect("etcdctl succeeds").to_string()
}

/// Waits until the server counts at least `n` watchers, i.e. the watches etcdctl opened are
/// registered and will see every later write.
async fn wait_for_watchers(server: &Server, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok((200, body)) = server.http_get("/metrics").await {
            last = parse_metrics(&body)
                .into_iter()
                .find(|s| s.name == "etcd_debugging_mvcc_watcher_total")
                .map(|s| s.value);
            if last.is_some_and(|v| v >= n) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("etcd_debugging_mvcc_watcher_total never reached {n} (last: {last:?})");
}

/// Starts `etcdctl watch <args>` and waits until the server has registered `watchers`
/// watchers in total.
async fn live_watch(server: &Server, args: &[&str], watchers: f64) -> CtlProcess {
    let mut full = vec!["watch"];
    full.extend(args);
    let watch = server.ctl_spawn(&full).expect("etcdctl watch starts");
    wait_for_watchers(server, watchers).await;
    watch
}

async fn expect_lines(watch: &mut CtlProcess, expected: &[&str]) {
    let got = watch
        .lines(expected.len(), LINE_TIMEOUT)
        .await
        .expect("watch prints the expected lines");
    assert_eq!(got, expected);
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON ({e}): {line}"))
}

#[tokio::test]
async fn watch_key_prints_puts_and_deletes_of_that_key_only() {
    let server = start().await;
    let mut watch = live_watch(&server, &["w1"], 1.0).await;
    ok(&server, &["put", "w1", "a"]).await;
    ok(&server, &["put", "w2", "b"]).await;
    ok(&server, &["put", "w1", "c"]).await;
    assert_eq!(ok(&server, &["del", "w1"]).await, "1\n");
    // A put of an empty value prints an empty value line, like a delete.
    ok(&server, &["put", "w1", ""]).await;
    // Event type, key, value; a delete has an empty value line.
    expect_lines(
        &mut watch,
        &[
            "PUT", "w1", "a", "PUT", "w1", "c", "DELETE", "w1", "", "PUT", "w1", "",
        ],
    )
    .await;
    watch.quiet_for(QUIET).await.expect("nothing for w2");
    watch.kill9().await.unwrap();
}

#[tokio::test]
async fn watch_prefix_sees_every_key_under_it_and_whole_txns() {
    let server = start().await;
    let mut watch = live_watch(&server, &["--prefix", "w"], 1.0).await;
    ok(&server, &["put", "w1", "a"]).await;
    ok(&server, &["put", "x", "ignored"]).await;
    ok(&server, &["put", "w2", "b"]).await;
    let out = server
        .ctl_stdin(&["txn"], "\nput w3 t3\nput w1 t1\nput y no\n\n\n")
        .await
        .unwrap();
    out.success().unwrap();
    ok(&server, &["del", "--prefix", "w"]).await;
    expect_lines(
        &mut watch,
        &[
            "PUT", "w1", "a", "PUT", "w2", "b", // single puts
            "PUT", "w3", "t3", "PUT", "w1", "t1", // the txn, in request order
            "DELETE", "w1", "", "DELETE", "w2", "", "DELETE", "w3", "", // key order
        ],
    )
    .await;
    watch.quiet_for(QUIET).await.unwrap();
    watch.kill9().await.unwrap();
}

/// Writes revisions 2..=7: k put a@2, other@3, k put b@4, k deleted@5, k put c@6, other@7.
async fn write_history(server: &Server) {
    ok(server, &["put", "k", "a"]).await;
    ok(server, &["put", "other", "1"]).await;
    ok(server, &["put", "k", "b"]).await;
    ok(server, &["del", "k"]).await;
    ok(server, &["put", "k", "c"]).await;
    ok(server, &["put", "other", "2"]).await;
}

#[tokio::test]
async fn watch_rev_replays_history_including_deletes_then_follows_live() {
    let server = start().await;
    write_history(&server).await;

    let mut from_start = server.ctl_spawn(&["watch", "--rev", "1", "k"]).unwrap();
    expect_lines(
        &mut from_start,
        &[
            "PUT", "k", "a", "PUT", "k", "b", "DELETE", "k", "", "PUT", "k", "c",
        ],
    )
    .await;
    // Starting at the delete's revision replays from the delete on.
    let mut from_delete = server.ctl_spawn(&["watch", "--rev", "5", "k"]).unwrap();
    expect_lines(&mut from_delete, &["DELETE", "k", "", "PUT", "k", "c"]).await;
    // A prefix watch from revision 3 sees the other key too, in revision order.
    let mut prefix = server
        .ctl_spawn(&["watch", "--prefix", "--rev", "3", ""])
        .unwrap();
    expect_lines(
        &mut prefix,
        &[
            "PUT", "other", "1", "PUT", "k", "b", "DELETE", "k", "", "PUT", "k", "c", "PUT",
            "other", "2",
        ],
    )
    .await;

    // A revision beyond the store is not an error: the watch waits for it.
    let mut future = server.ctl_spawn(&["watch", "--rev", "9", "k"]).unwrap();
    ok(&server, &["put", "k", "d"]).await; // revision 8: below the future watch's start
    ok(&server, &["put", "k", "e"]).await; // revision 9
    expect_lines(&mut from_start, &["PUT", "k", "d", "PUT", "k", "e"]).await;
    expect_lines(&mut from_delete, &["PUT", "k", "d", "PUT", "k", "e"]).await;
    expect_lines(&mut prefix, &["PUT", "k", "d", "PUT", "k", "e"]).await;
    expect_lines(&mut future, &["PUT", "k", "e"]).await;
    for watch in [&mut from_start, &mut from_delete, &mut prefix, &mut future] {
        watch.quiet_for(Duration::from_millis(200)).await.unwrap();
        watch.kill9().await.unwrap();
    }
}

#[tokio::test]
async fn watch_prev_kv_prints_the_previous_pair_before_the_new_one() {
    let server = start().await;
    write_history(&server).await;
    let mut watch = server
        .ctl_spawn(&["watch", "--prev-kv", "--rev", "2", "k"])
        .unwrap();
    // With a previous pair etcdctl prints: type, previous key, previous value, key, value.
    // A put that creates the key (revisions 2 and 6) has no previous pair; a delete's
    // previous pair is the deleted value.
    expect_lines(
        &mut watch,
        &[
            "PUT", "k", "a", // @2, created
            "PUT", "k", "a", "k", "b", // @4
            "DELETE", "k", "b", "k", "", // @5
            "PUT", "k", "c", // @6, created again
        ],
    )
    .await;
    ok(&server, &["put", "k", "d"]).await;
    expect_lines(&mut watch, &["PUT", "k", "c", "k", "d"]).await;
    watch.kill9().await.unwrap();
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_canceled_with_exit_5() {
    let server = start().await;
    write_history(&server).await;
    assert_eq!(
        ok(&server, &["compact", "5"]).await,
        "compacted revision 5\n"
    );

    let watch = server.ctl_spawn(&["watch", "--rev", "4", "k"]).unwrap();
    let exit = watch.wait(LINE_TIMEOUT).await.unwrap();
    assert_eq!(exit.code, Some(5), "{exit:?}");
    assert!(exit.rest.is_empty(), "{exit:?}");
    assert_eq!(exit.stderr, COMPACTED_STDERR);

    // In JSON the one response names the compact revision; its header has no revision
    // (zero, omitted) because etcd sends it before reading the store.
    let watch = server
        .ctl_spawn(&["watch", "--rev", "2", "--prefix", "", "-w", "json"])
        .unwrap();
    let exit = watch.wait(LINE_TIMEOUT).await.unwrap();
    assert_eq!(exit.code, Some(5), "{exit:?}");
    assert_eq!(exit.stderr, COMPACTED_STDERR);
    assert_eq!(exit.rest.len(), 1, "{exit:?}");
    let v = parse(&exit.rest[0]);
    assert_eq!(v["CompactRevision"], 5, "{v}");
    assert_eq!(v["Canceled"], true, "{v}");
    assert_eq!(v["Created"], false, "{v}");
    assert_eq!(v["Events"], Value::Array(vec![]), "{v}");
    assert!(v["Header"].get("revision").is_none(), "{v}");
    assert!(v["Header"]["cluster_id"].as_u64().unwrap() > 0, "{v}");

    // The compact revision itself is still watchable, but compaction dropped the tombstone
    // written at exactly that revision, so the delete at 5 is not replayed.
    let mut watch = server.ctl_spawn(&["watch", "--rev", "5", "k"]).unwrap();
    expect_lines(&mut watch, &["PUT", "k", "c"]).await;
    watch.quiet_for(QUIET).await.unwrap();
    watch.kill9().await.unwrap();
}

#[tokio::test]
async fn watch_json_reports_header_revision_and_events() {
    let server = start().await;
    let mut watch = live_watch(&server, &["--prefix", "w", "-w", "json"], 1.0).await;
    ok(&server, &["put", "w1", "a"]).await; // revision 2
    let out = server
        .ctl_stdin(&["txn"], "\nput w2 b\nput w1 c\n\n\n")
        .await
        .unwrap(); // revision 3: both events in one response
    out.success().unwrap();
    ok(&server, &["del", "w1"]).await; // revision 4

    let lines = watch.lines(3, LINE_TIMEOUT).await.unwrap();
    let responses: Vec<Value> = lines.iter().map(|l| parse(l)).collect();
    // etcdctl prints clientv3's WatchResponse: Go field names, base64 keys and values, and
    // the zero-valued fields of events (type PUT = 0, lease, ...) omitted.
    for (v, rev) in responses.iter().zip([2, 3, 4]) {
        assert_eq!(v["Header"]["revision"], rev, "{v}");
        assert!(v["Header"]["cluster_id"].as_u64().unwrap() > 0, "{v}");
        assert!(v["Header"]["member_id"].as_u64().unwrap() > 0, "{v}");
        assert!(v["Header"]["raft_term"].as_u64().unwrap() >= 1, "{v}");
        assert_eq!(v["CompactRevision"], 0, "{v}");
        assert_eq!(v["Canceled"], false, "{v}");
        assert_eq!(v["Created"], false, "{v}");
    }
    let put = &responses[0]["Events"];
    assert_eq!(put.as_array().unwrap().len(), 1);
    assert!(put[0].get("type").is_none(), "{put}");
    assert_eq!(
        put[0]["kv"],
        serde_json::json!({"key": "dzE=", "create_revision": 2, "mod_revision": 2,
                           "version": 1, "value": "YQ=="})
    );

    let txn = &responses[1]["Events"];
    assert_eq!(txn.as_array().unwrap().len(), 2, "{txn}");
    assert_eq!(
        txn[0]["kv"],
        serde_json::json!({"key": "dzI=", "create_revision": 3, "mod_revision": 3,
                           "version": 1, "value": "Yg=="})
    );
    assert_eq!(
        txn[1]["kv"],
        serde_json::json!({"key": "dzE=", "create_revision": 2, "mod_revision": 3,
                           "version": 2, "value": "Yw=="})
    );

    // A delete: type 1, and a kv holding only the key and the delete's revision.
    let del = &responses[2]["Events"];
    assert_eq!(
        del,
        &serde_json::json!([{"type": 1, "kv": {"key": "dzE=", "mod_revision": 4}}])
    );

    // With --prev-kv the previous pair comes as prev_kv. etcd replays history in as few
    // responses as it can (here one, with the current revision in its header); the API only
    // promises that a revision is never split, so collect the events across responses.
    let mut watch_prev = server
        .ctl_spawn(&["watch", "--prev-kv", "--rev", "3", "w1", "-w", "json"])
        .unwrap();
    let mut events = Vec::new();
    let mut last_header = 0;
    while events.len() < 2 {
        let v = parse(&watch_prev.next_line(LINE_TIMEOUT).await.unwrap());
        let batch = v["Events"].as_array().unwrap().clone();
        last_header = v["Header"]["revision"].as_i64().unwrap();
        for ev in &batch {
            assert!(
                ev["kv"]["mod_revision"].as_i64().unwrap() <= last_header,
                "{v}"
            );
        }
        events.extend(batch);
    }
    assert_eq!(last_header, 4);
    assert_eq!(
        events,
        vec![
            serde_json::json!({
                "kv": {"key": "dzE=", "create_revision": 2, "mod_revision": 3, "version": 2,
                       "value": "Yw=="},
                "prev_kv": {"key": "dzE=", "create_revision": 2, "mod_revision": 2,
                            "version": 1, "value": "YQ=="}}),
            serde_json::json!({
                "type": 1,
                "kv": {"key": "dzE=", "mod_revision": 4},
                "prev_kv": {"key": "dzE=", "create_revision": 2, "mod_revision": 3,
                            "version": 2, "value": "Yw=="}}),
        ]
    );
    watch.kill9().await.unwrap();
    watch_prev.kill9().await.unwrap();
}

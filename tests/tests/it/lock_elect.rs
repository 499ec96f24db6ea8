//! `etcdctl lock` and `etcdctl elect` against the server, with the lines and exit codes
//! etcdctl 3.5.1 prints for etcd 3.5.1.
//!
//! etcdctl implements both with clientv3's `concurrency` package (a session lease, a key
//! `<name>/<lease ID in hex>` created in a txn, a watch for the previous key's deletion),
//! not with the v3lock / v3election gRPC services: these tests exercise KV, Lease and Watch
//! working together.

use std::time::{Duration, Instant};

use crate::{json, ok};
use cairn_tests::{CtlProcess, Server};
use nix::sys::signal::Signal;

const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a blocked `lock` or a losing candidate must stay silent.
const BLOCKED: Duration = Duration::from_secs(1);

async fn start() -> Server {
    Server::start().await.expect("server starts")
}

/// The lease ID a `<name>/<hex>` key ends with (hex without padding, as `%x` prints it).
fn lease_of(key: &str) -> i64 {
    let (_, hex) = key
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("key {key:?}"));
    assert!(!hex.starts_with('0'), "not %x: {key:?}");
    i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("key {key:?}: {e}"))
}

/// Reads the two lines `lock` prints once it holds the lock (the key and its empty value)
/// and checks the key names the session lease that the server has on it.
async fn acquired(server: &Server, lock: &mut CtlProcess, name: &str) -> String {
    let lines = lock.lines(2, LINE_TIMEOUT).await.expect("lock acquired");
    let key = lines[0].clone();
    assert_eq!(lines[1], "", "{lines:?}");
    assert!(key.starts_with(&format!("{name}/")), "{lines:?}");
    let v = json(server, &["get", &key]).await;
    assert_eq!(v["kvs"][0]["lease"], lease_of(&key), "{v}");
    key
}

#[tokio::test]
async fn lock_holds_until_interrupted_and_a_second_locker_waits() {
    let server = start().await;
    let mut first = server.ctl_spawn(&["lock", "mylock"]).unwrap();
    let first_key = acquired(&server, &mut first, "mylock").await;

    let mut second = server.ctl_spawn(&["lock", "mylock"]).unwrap();
    second.quiet_for(BLOCKED).await.expect("second lock blocks");
    // The waiter has its own key queued behind the holder's (once its etcdctl got that far).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = ok(&server, &["get", "--prefix", "--keys-only", "mylock/"]).await;
        let count = keys.lines().filter(|l| !l.is_empty()).count();
        if count == 2 {
            break;
        }
        assert!(count < 2 && Instant::now() < deadline, "{keys}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGINT makes etcdctl unlock (delete its key) and exit 0.
    first.signal(Signal::SIGINT).unwrap();
    let exit = first.wait(LINE_TIMEOUT).await.unwrap();
    assert_eq!((exit.code, exit.stderr.as_str()), (Some(0), ""), "{exit:?}");
    let second_key = acquired(&server, &mut second, "mylock").await;
    assert_ne!(first_key, second_key);
    assert_eq!(ok(&server, &["get", &first_key]).await, "");
    second.signal(Signal::SIGINT).unwrap();
    second.wait(LINE_TIMEOUT).await.unwrap();
    assert_eq!(ok(&server, &["get", "--prefix", "mylock/"]).await, "");
}

#[tokio::test]
async fn a_killed_holder_releases_the_lock_when_its_session_lease_expires() {
    let server = start().await;
    let mut first = server.ctl_spawn(&["lock", "--ttl", "2", "mylock"]).unwrap();
    let first_key = acquired(&server, &mut first, "mylock").await;
    let v = json(
        &server,
        &[
            "lease",
            "timetolive",
            &format!("{:x}", lease_of(&first_key)),
        ],
    )
    .await;
    assert_eq!(v["granted-ttl"], 2, "{v}");

    let mut second = server.ctl_spawn(&["lock", "mylock"]).unwrap();
    second.quiet_for(BLOCKED).await.expect("second lock blocks");
    // kill -9: no unlock; the key goes when the 2 s lease does (expiry is checked every
    // 0.5 s; the bound leaves a loaded machine room for the waiter's watch and get).
    first.kill9().await.unwrap();
    let lines = second.lines(2, Duration::from_secs(6)).await.unwrap();
    assert_ne!(lines[0], first_key);
    assert_eq!(ok(&server, &["get", &first_key]).await, "");
    second.kill9().await.unwrap();
}

#[tokio::test]
async fn lock_runs_a_command_while_holding_the_lock() {
    let server = start().await;
    // The command sees the lock key and its revision; the key exists while it runs.
    let out = server
        .ctl(&[
            "lock",
            "mylock",
            "--",
            "sh",
            "-c",
            "echo \"$ETCD_LOCK_KEY $ETCD_LOCK_REV\"",
        ])
        .await
        .unwrap();
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out:?}");
    let (key, rev) = out.stdout.trim_end().split_once(' ').unwrap();
    assert!(key.starts_with("mylock/"), "{out:?}");
    // A fresh store is at revision 1: the lock key is revision 2.
    assert_eq!(rev, "2", "{out:?}");
    // The lock was released after the command (its key deleted at revision 3), while the
    // session lease is left to expire.
    assert_eq!(ok(&server, &["get", "--prefix", "mylock/"]).await, "");
    let v = json(&server, &["get", "mylock"]).await;
    assert_eq!(v["header"]["revision"], 3, "{v}");
    let leases = ok(&server, &["lease", "list"]).await;
    assert_eq!(
        leases,
        format!("found 1 leases\n{:016x}\n", lease_of(key)),
        "{leases}"
    );

    // The command's exit code becomes etcdctl's.
    let out = server
        .ctl(&["lock", "mylock", "--", "sh", "-c", "echo held; exit 3"])
        .await
        .unwrap();
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "held\n", "Error: exit status 3\n")
    );
    assert_eq!(ok(&server, &["get", "--prefix", "mylock/"]).await, "");
}

#[tokio::test]
async fn elect_campaigns_listeners_follow_and_a_resign_hands_over() {
    let server = start().await;
    // With no leader yet a listener prints nothing.
    let mut listener = server.ctl_spawn(&["elect", "-l", "myelection"]).unwrap();
    listener
        .quiet_for(Duration::from_millis(500))
        .await
        .unwrap();

    let mut p1 = server.ctl_spawn(&["elect", "myelection", "p1"]).unwrap();
    let lines = p1.lines(2, LINE_TIMEOUT).await.unwrap();
    let (key1, proposal) = (&lines[0], &lines[1]);
    assert!(key1.starts_with("myelection/"), "{lines:?}");
    assert_eq!(proposal, "p1");
    let v = json(&server, &["get", key1]).await;
    assert_eq!(v["kvs"][0]["lease"], lease_of(key1), "{v}");
    assert_eq!(listener.lines(2, LINE_TIMEOUT).await.unwrap(), lines);

    let mut p2 = server.ctl_spawn(&["elect", "myelection", "p2"]).unwrap();
    p2.quiet_for(BLOCKED)
        .await
        .expect("p2 waits while p1 leads");
    // A listener started now prints the current leader at once.
    let mut late = server.ctl_spawn(&["elect", "-l", "myelection"]).unwrap();
    assert_eq!(late.lines(2, LINE_TIMEOUT).await.unwrap(), lines);

    // SIGINT makes the leader resign (delete its key) and exit 0; p2 takes over.
    p1.signal(Signal::SIGINT).unwrap();
    let exit = p1.wait(LINE_TIMEOUT).await.unwrap();
    assert_eq!((exit.code, exit.stderr.as_str()), (Some(0), ""), "{exit:?}");
    let lines2 = p2.lines(2, LINE_TIMEOUT).await.unwrap();
    assert!(lines2[0].starts_with("myelection/"), "{lines2:?}");
    assert_ne!(&lines2[0], key1);
    assert_eq!(lines2[1], "p2");
    assert_eq!(listener.lines(2, LINE_TIMEOUT).await.unwrap(), lines2);
    assert_eq!(late.lines(2, LINE_TIMEOUT).await.unwrap(), lines2);
    assert_eq!(ok(&server, &["get", key1]).await, "");

    for process in [&mut p2, &mut listener, &mut late] {
        process.kill9().await.unwrap();
    }
}

#[tokio::test]
async fn a_killed_leader_is_replaced_once_its_lease_is_gone() {
    let server = start().await;
    let mut listener = server.ctl_spawn(&["elect", "-l", "myelection"]).unwrap();
    let mut p1 = server.ctl_spawn(&["elect", "myelection", "p1"]).unwrap();
    let lines = p1.lines(2, LINE_TIMEOUT).await.unwrap();
    assert_eq!(listener.lines(2, LINE_TIMEOUT).await.unwrap(), lines);
    let mut p2 = server.ctl_spawn(&["elect", "myelection", "p2"]).unwrap();

    // kill -9: no resign. etcdctl elect has no --ttl and its session lease lasts 60 s, so
    // the leadership stays until that lease ends; revoking it stands in for the expiry.
    p1.kill9().await.unwrap();
    p2.quiet_for(BLOCKED).await.expect("p1's key still leads");
    let lease = format!("{:x}", lease_of(&lines[0]));
    let v = json(&server, &["lease", "timetolive", &lease]).await;
    assert_eq!(v["granted-ttl"], 60, "{v}");
    ok(&server, &["lease", "revoke", &lease]).await;

    let lines2 = p2.lines(2, LINE_TIMEOUT).await.unwrap();
    assert_eq!(lines2[1], "p2");
    assert_eq!(listener.lines(2, LINE_TIMEOUT).await.unwrap(), lines2);
    p2.kill9().await.unwrap();
    listener.kill9().await.unwrap();
}

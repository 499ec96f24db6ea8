//! `etcdctl lease` and `put --lease` against the server: grant, timetolive (with `--keys`),
//! list, keep-alive (stream and `--once`), revoke, the errors for unknown leases, the minimum
//! TTL, expiry after the last keep-alive, and leases surviving `kill -9`, with the exact
//! lines and exit codes etcdctl 3.5.1 prints for etcd 3.5.1.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::{json, ok};
use cairn_tests::{CtlOutput, Server};
use serde_json::Value;

const LINE_TIMEOUT: Duration = Duration::from_secs(10);
const NOT_FOUND: &str = "etcdserver: requested lease not found";
/// An ID no test grants: etcdctl reads IDs as hex and prints them as 16 hex digits.
const UNKNOWN: &str = "1234";
const UNKNOWN_PRINTED: &str = "0000000000001234";

async fn start() -> Server {
    Server::start().await.expect("server starts")
}

/// `lease grant <ttl>`: checks the whole line and returns the ID as etcdctl prints it.
async fn grant(server: &Server, ttl: u32, granted: u32) -> String {
    let out = ok(server, &["lease", "grant", &ttl.to_string()]).await;
    let id = out
        .strip_prefix("lease ")
        .and_then(|rest| rest.split_once(' '))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("unexpected grant output: {out:?}"));
    assert_eq!(out, format!("lease {id} granted with TTL({granted}s)\n"));
    assert_eq!(id.len(), 16, "IDs are printed as 16 hex digits: {out:?}");
    assert_ne!(lease_id(&id), 0);
    id
}

fn lease_id(hex: &str) -> i64 {
    i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("lease ID {hex:?}: {e}"))
}

/// The remaining TTL in `lease <id> granted with TTL(<t>s), remaining(<r>s)...`.
fn remaining(line: &str) -> i64 {
    let start = line.find("remaining(").map(|i| i + "remaining(".len());
    start
        .and_then(|s| line[s..].split_once("s)").map(|(r, _)| r))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no remaining TTL in {line:?}"))
}

/// The last line of stderr: the client library may log a JSON warning line before it.
fn last_stderr_line(out: &CtlOutput) -> &str {
    out.stderr.lines().last().unwrap_or("")
}

async fn key_exists(server: &Server, key: &str) -> bool {
    !ok(server, &["get", key]).await.is_empty()
}

async fn lease_list(server: &Server) -> (String, BTreeSet<String>) {
    let out = ok(server, &["lease", "list"]).await;
    let mut lines = out.lines();
    let header = lines.next().unwrap_or("").to_string();
    // etcd lists leases in no particular order.
    (header, lines.map(str::to_string).collect())
}

/// Polls until `key` is gone; returns when that was seen, or panics at `deadline`.
async fn wait_gone(server: &Server, key: &str, deadline: Instant) -> Instant {
    loop {
        if !key_exists(server, key).await {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{key} still exists past its deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn grant_attach_timetolive_list_keep_alive_once_and_revoke() {
    let server = start().await;
    assert_eq!(ok(&server, &["lease", "list"]).await, "found 0 leases\n");
    let id = grant(&server, 60, 60).await;
    let other = grant(&server, 120, 120).await;
    assert_eq!(
        ok(&server, &["put", "--lease", &id, "k1", "v1"]).await,
        "OK\n"
    );
    assert_eq!(
        ok(&server, &["put", "--lease", &id, "k2", "v2"]).await,
        "OK\n"
    );
    ok(&server, &["put", "plain", "x"]).await; // revision 4

    // The remaining TTL is truncated to whole seconds, so just below the granted TTL (by
    // more on a loaded machine: the lease was granted several etcdctl runs ago).
    let line = ok(&server, &["lease", "timetolive", &id]).await;
    let left = remaining(&line);
    assert!((45..=59).contains(&left), "{line:?}");
    assert_eq!(
        line,
        format!("lease {id} granted with TTL(60s), remaining({left}s)\n")
    );
    // etcd keeps a lease's keys in a Go map: they come in any order.
    let line = ok(&server, &["lease", "timetolive", &id, "--keys"]).await;
    let left = remaining(&line);
    assert!(
        [
            format!(
                "lease {id} granted with TTL(60s), remaining({left}s), attached keys([k1 k2])\n"
            ),
            format!(
                "lease {id} granted with TTL(60s), remaining({left}s), attached keys([k2 k1])\n"
            ),
        ]
        .contains(&line),
        "{line:?}"
    );
    let line = ok(&server, &["lease", "timetolive", &other, "--keys"]).await;
    let left = remaining(&line);
    assert_eq!(
        line,
        format!("lease {other} granted with TTL(120s), remaining({left}s), attached keys([])\n")
    );

    let v = json(&server, &["lease", "timetolive", &id, "--keys"]).await;
    assert_eq!(v["id"], lease_id(&id), "{v}");
    assert_eq!(v["granted-ttl"], 60, "{v}");
    assert!((45..=59).contains(&v["ttl"].as_i64().unwrap()), "{v}");
    let mut keys: Vec<&str> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["azE=", "azI="], "{v}");
    assert_eq!(v["revision"], 4, "{v}");
    assert!(v["cluster_id"].as_u64().unwrap() > 0, "{v}");
    // Without --keys the field is null, not an empty list.
    let v = json(&server, &["lease", "timetolive", &id]).await;
    assert_eq!(v["keys"], Value::Null, "{v}");

    // The key carries the lease ID.
    let v = json(&server, &["get", "k1"]).await;
    assert_eq!(v["kvs"][0]["lease"], lease_id(&id), "{v}");

    let (header, ids) = lease_list(&server).await;
    assert_eq!(header, "found 2 leases");
    assert_eq!(ids, BTreeSet::from([id.clone(), other.clone()]));

    assert_eq!(
        ok(&server, &["lease", "keep-alive", "--once", &id]).await,
        format!("lease {id} keepalived with TTL(60)\n")
    );
    let v = json(&server, &["lease", "keep-alive", "--once", &id]).await;
    // etcdctl prints the Go struct here: capitalised ID and TTL.
    assert_eq!(v["ID"], lease_id(&id), "{v}");
    assert_eq!(v["TTL"], 60, "{v}");
    assert_eq!(v["revision"], 4, "{v}");

    // Revoking deletes every attached key in one revision.
    assert_eq!(
        ok(&server, &["lease", "revoke", &id]).await,
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(&server, &["get", "--prefix", "k"]).await, "");
    assert_eq!(ok(&server, &["get", "plain"]).await, "plain\nx\n");
    let v = json(&server, &["get", "plain"]).await;
    assert_eq!(v["header"]["revision"], 5, "{v}");
    assert_eq!(
        ok(&server, &["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
    let (header, ids) = lease_list(&server).await;
    assert_eq!(header, "found 1 leases");
    assert_eq!(ids, BTreeSet::from([other]));
}

#[tokio::test]
async fn unknown_leases_give_etcds_errors_and_exit_codes() {
    let server = start().await;

    let out = server.ctl(&["lease", "revoke", UNKNOWN]).await.unwrap();
    assert_eq!((out.code, out.stdout.as_str()), (1, ""), "{out:?}");
    assert_eq!(
        last_stderr_line(&out),
        format!("Error: failed to revoke lease ({NOT_FOUND})")
    );

    let out = server
        .ctl(&["put", "--lease", UNKNOWN, "k", "v"])
        .await
        .unwrap();
    assert_eq!((out.code, out.stdout.as_str()), (1, ""), "{out:?}");
    assert_eq!(last_stderr_line(&out), format!("Error: {NOT_FOUND}"));
    assert_eq!(ok(&server, &["get", "k"]).await, "");

    // --once exits 2 (etcdctl's "bad connection" code) with only the error line.
    let out = server
        .ctl(&["lease", "keep-alive", "--once", UNKNOWN])
        .await
        .unwrap();
    assert_eq!((out.code, out.stdout.as_str()), (2, ""), "{out:?}");
    assert_eq!(out.stderr, format!("Error: {NOT_FOUND}\n"));

    // The streaming keep-alive reports the lease gone on stdout and exits 0.
    let out = server.ctl(&["lease", "keep-alive", UNKNOWN]).await.unwrap();
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "lease 0000000000001234 expired or revoked.\n", ""),
        "{out:?}"
    );

    // TimeToLive of an unknown lease is not an error: TTL -1.
    assert_eq!(
        ok(&server, &["lease", "timetolive", UNKNOWN]).await,
        format!("lease {UNKNOWN_PRINTED} already expired\n")
    );
    assert_eq!(
        ok(&server, &["lease", "timetolive", "--keys", UNKNOWN]).await,
        format!("lease {UNKNOWN_PRINTED} already expired\n")
    );
    let v = json(&server, &["lease", "timetolive", UNKNOWN]).await;
    assert_eq!(v["id"], 0x1234, "{v}");
    assert_eq!(v["ttl"], -1, "{v}");
    assert_eq!(v["granted-ttl"], 0, "{v}");
    assert_eq!(v["keys"], Value::Null, "{v}");
    assert_eq!(v["revision"], 1, "{v}");
}

#[tokio::test]
async fn ttls_below_the_minimum_are_raised_to_two_seconds() {
    // etcd's minimum TTL is 1.5 election timeouts (1 s by default) rounded up: 2 s.
    let server = start().await;
    for ttl in [0, 1] {
        let id = grant(&server, ttl, 2).await;
        let v = json(&server, &["lease", "timetolive", &id]).await;
        assert_eq!(v["granted-ttl"], 2, "{v}");
        assert!((0..=1).contains(&v["ttl"].as_i64().unwrap()), "{v}");
    }
    grant(&server, 2, 2).await;
    grant(&server, 3, 3).await;
}

#[tokio::test]
async fn keep_alive_refreshes_until_killed_then_keys_expire_in_one_revision() {
    let server = start().await;
    let id = grant(&server, 3, 3).await;
    ok(&server, &["put", "--lease", &id, "e/a", "1"]).await; // revision 2
    ok(&server, &["put", "--lease", &id, "e/b", "2"]).await; // revision 3
    let mut watch = server
        .ctl_spawn(&["watch", "--prefix", "e/", "--rev", "4", "-w", "json"])
        .unwrap();

    // etcdctl sends a keep-alive every TTL/3 and prints each answer.
    let mut keep_alive = server.ctl_spawn(&["lease", "keep-alive", &id]).unwrap();
    let lines = keep_alive.lines(3, LINE_TIMEOUT).await.unwrap();
    let expected = format!("lease {id} keepalived with TTL(3)");
    assert_eq!(lines, vec![expected.clone(), expected.clone(), expected]);
    // Three refreshes span more than the TTL, so the keys were kept alive by them.
    assert!(key_exists(&server, "e/a").await);
    keep_alive.kill9().await.unwrap();
    let killed = Instant::now();

    // The last keep-alive was at most TTL/3 before the kill: the keys outlive the kill by
    // at least 2 s and are gone soon after the TTL (bounded with room for a loaded machine).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(key_exists(&server, "e/a").await, "expired too early");
    let gone = wait_gone(&server, "e/a", killed + Duration::from_secs(7)).await;
    assert!(gone > killed + Duration::from_secs(1));
    assert_eq!(ok(&server, &["get", "--prefix", "e/"]).await, "");

    // Expiry is one revision deleting both keys: one watch response, two DELETE events.
    let v: Value = serde_json::from_str(&watch.next_line(LINE_TIMEOUT).await.unwrap()).unwrap();
    assert_eq!(v["Header"]["revision"], 4, "{v}");
    assert_eq!(
        v["Events"],
        serde_json::json!([
            {"type": 1, "kv": {"key": "ZS9h", "mod_revision": 4}},
            {"type": 1, "kv": {"key": "ZS9i", "mod_revision": 4}},
        ])
    );
    watch.kill9().await.unwrap();
    assert_eq!(
        ok(&server, &["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
    assert_eq!(ok(&server, &["lease", "list"]).await, "found 0 leases\n");
}

#[tokio::test]
async fn keep_alive_stream_ends_when_the_lease_is_revoked() {
    let server = start().await;
    let id = grant(&server, 3, 3).await;
    let mut keep_alive = server.ctl_spawn(&["lease", "keep-alive", &id]).unwrap();
    assert_eq!(
        keep_alive.next_line(LINE_TIMEOUT).await.unwrap(),
        format!("lease {id} keepalived with TTL(3)")
    );
    ok(&server, &["lease", "revoke", &id]).await;
    // The next keep-alive (within TTL/3) gets TTL 0: etcdctl says so and exits 0.
    let exit = keep_alive.wait(LINE_TIMEOUT).await.unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert_eq!(exit.rest, vec![format!("lease {id} expired or revoked.")]);
    assert_eq!(exit.stderr, "");
}

#[tokio::test]
async fn leases_survive_kill_9_and_expire_after_restart() {
    let mut server = start().await;
    let id = grant(&server, 6, 6).await;
    ok(&server, &["put", "--lease", &id, "durable", "v"]).await;
    // Let part of the TTL pass: after restart etcd refreshes every lease to its full TTL
    // (plus one election timeout) rather than keeping the remaining time.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill9().unwrap();
    server.restart().await.unwrap();
    let ready = Instant::now();

    let line = ok(&server, &["lease", "timetolive", &id, "--keys"]).await;
    let left = remaining(&line);
    assert_eq!(
        line,
        format!("lease {id} granted with TTL(6s), remaining({left}s), attached keys([durable])\n")
    );
    assert!(
        (4..=6).contains(&left),
        "lease not refreshed on restart: {line:?}"
    );
    let (header, ids) = lease_list(&server).await;
    assert_eq!(header, "found 1 leases");
    assert_eq!(ids, BTreeSet::from([id.clone()]));
    let v = json(&server, &["get", "durable"]).await;
    assert_eq!(v["kvs"][0]["lease"], lease_id(&id), "{v}");

    // Nobody keeps it alive: it expires a full TTL after restart, not the 3.5 s it had left.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        key_exists(&server, "durable").await,
        "expired with the old deadline"
    );
    // TTL + election timeout after ready, with room for a loaded machine.
    wait_gone(&server, "durable", ready + Duration::from_secs(6 + 6)).await;
    assert_eq!(
        ok(&server, &["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
}

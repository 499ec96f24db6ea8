//! etcdctl (API v3) against the server: the commands the seed documents use, with the exact
//! text, JSON and table output etcdctl 3.5.1 prints for etcd 3.5.1.

use crate::{json, ok};
use cairn_tests::{CtlOutput, Server};
use serde_json::Value;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

async fn start() -> Server {
    Server::start().await.expect("server starts")
}

/// Fails unless etcdctl exited non-zero with `message` in its `Error:` line.
#[track_caller]
fn assert_ctl_error(out: &CtlOutput, message: &str) {
    assert_ne!(out.code, 0, "etcdctl should fail: {out:?}");
    assert!(
        out.stderr.contains(&format!("Error: {message}")),
        "expected `Error: {message}` in stderr: {out:?}"
    );
}

/// Cells of an etcdctl `-w table` output: the header row, then the data rows.
fn table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rows = text.lines().filter(|l| l.starts_with('|')).map(|l| {
        l.trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_string())
            .collect::<Vec<_>>()
    });
    let header = rows.next().unwrap_or_else(|| panic!("no table in: {text}"));
    (header, rows.collect())
}

fn b64(s: &str) -> String {
    // etcdctl's JSON encodes keys and values as standard base64; a tiny encoder keeps the
    // suite free of another dependency.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The member ID as the gRPC API reports it.
async fn grpc_member_id(server: &Server) -> u64 {
    let mut client = server.client().await.unwrap();
    let resp = client.member_list().await.unwrap();
    resp.header().unwrap().member_id()
}

/// etcdctl prints IDs in hex without leading zeros (and pads with spaces in some commands),
/// so compare numerically.
fn parse_hex_id(field: &str) -> u64 {
    u64::from_str_radix(field.trim(), 16).unwrap_or_else(|e| panic!("ID {field:?}: {e}"))
}

#[tokio::test]
async fn put_get_and_prefix_reads() {
    let server = start().await;
    assert_eq!(ok(&server, &["put", "foo", "bar"]).await, "OK\n");
    assert_eq!(ok(&server, &["put", "foo2", "baz"]).await, "OK\n");
    assert_eq!(ok(&server, &["put", "other", "x"]).await, "OK\n");

    assert_eq!(ok(&server, &["get", "foo"]).await, "foo\nbar\n");
    // A missing key prints nothing and still succeeds.
    assert_eq!(ok(&server, &["get", "missing"]).await, "");
    assert_eq!(
        ok(&server, &["get", "--prefix", "foo"]).await,
        "foo\nbar\nfoo2\nbaz\n"
    );
    assert_eq!(
        ok(&server, &["get", "--prefix", "--print-value-only", "foo"]).await,
        "bar\nbaz\n"
    );
    assert_eq!(
        ok(&server, &["get", "--prefix", "--limit", "1", "foo"]).await,
        "foo\nbar\n"
    );
    assert_eq!(
        ok(&server, &["get", "--prefix", "--keys-only", "foo"]).await,
        "foo\n\nfoo2\n\n"
    );
    assert_eq!(
        ok(&server, &["get", "foo", "--from-key"]).await,
        "foo\nbar\nfoo2\nbaz\nother\nx\n"
    );
    // A range [foo2, other).
    assert_eq!(ok(&server, &["get", "foo2", "other"]).await, "foo2\nbaz\n");
    // put --prev-kv prints OK then the previous pair.
    assert_eq!(
        ok(&server, &["put", "foo", "new", "--prev-kv"]).await,
        "OK\nfoo\nbar\n"
    );
    assert_eq!(
        ok(&server, &["get", "foo", "--rev", "2"]).await,
        "foo\nbar\n"
    );
}

#[tokio::test]
async fn get_json_reports_header_revisions_and_base64_keys() {
    let server = start().await;
    ok(&server, &["put", "foo", "bar"]).await; // revision 2
    ok(&server, &["put", "foo", "bar2"]).await; // revision 3
    ok(&server, &["put", "foo2", "baz"]).await; // revision 4

    let v = json(&server, &["get", "foo"]).await;
    assert_eq!(v["header"]["revision"], 4);
    assert!(v["header"]["cluster_id"].as_u64().unwrap() > 0);
    assert!(v["header"]["member_id"].as_u64().unwrap() > 0);
    assert!(v["header"]["raft_term"].as_u64().unwrap() >= 1);
    assert_eq!(v["count"], 1);
    assert_eq!(v["kvs"].as_array().unwrap().len(), 1);
    let kv = &v["kvs"][0];
    assert_eq!(kv["key"], b64("foo"));
    assert_eq!(kv["key"], "Zm9v");
    assert_eq!(kv["value"], b64("bar2"));
    assert_eq!(kv["create_revision"], 2);
    assert_eq!(kv["mod_revision"], 3);
    assert_eq!(kv["version"], 2);
    // Zero-valued fields are omitted, as in etcd's JSON.
    assert!(kv.get("lease").is_none(), "{v}");
    assert!(v.get("more").is_none(), "{v}");

    let v = json(&server, &["get", "--prefix", "--limit", "1", "foo"]).await;
    assert_eq!(v["more"], true);
    assert_eq!(v["count"], 2);
    assert_eq!(v["kvs"][0]["key"], "Zm9v");

    // A missing key: only the header.
    let v = json(&server, &["get", "missing"]).await;
    assert_eq!(v["header"]["revision"], 4);
    assert!(v.get("kvs").is_none() && v.get("count").is_none(), "{v}");
}

#[tokio::test]
async fn del_prints_the_number_deleted() {
    let server = start().await;
    for (k, v) in [("a/1", "x"), ("a/2", "y"), ("b", "z"), ("c", "w")] {
        ok(&server, &["put", k, v]).await;
    }
    assert_eq!(ok(&server, &["del", "b"]).await, "1\n");
    assert_eq!(ok(&server, &["del", "b"]).await, "0\n");
    assert_eq!(ok(&server, &["del", "--prefix", "a/"]).await, "2\n");
    assert_eq!(ok(&server, &["del", "--prev-kv", "c"]).await, "1\nc\nw\n");
    assert_eq!(ok(&server, &["get", "--prefix", ""]).await, "");
    let v = json(&server, &["get", "x"]).await;
    // Three deleting requests, the second deleted nothing: 5 puts + 3 = revision 8.
    assert_eq!(v["header"]["revision"], 8);
}

#[tokio::test]
async fn interactive_txn_runs_success_and_failure_branches() {
    let server = start().await;
    ok(&server, &["put", "k1", "v1"]).await;

    // etcdctl's txn reads three blocks, each ended by an empty line: compares, success ops,
    // failure ops. With no compares the first line is already the empty one.
    let script = |expected: &str| {
        format!("value(\"k1\") = \"{expected}\"\n\nput k2 yes\nget k1\n\nput k2 no\n\n")
    };
    let out = server.ctl_stdin(&["txn"], &script("v1")).await.unwrap();
    assert_eq!(out.success().unwrap(), "SUCCESS\n\nOK\n\nk1\nv1\n");
    assert_eq!(ok(&server, &["get", "k2"]).await, "k2\nyes\n");

    let out = server.ctl_stdin(&["txn"], &script("nope")).await.unwrap();
    assert_eq!(out.success().unwrap(), "FAILURE\n\nOK\n");
    assert_eq!(ok(&server, &["get", "k2"]).await, "k2\nno\n");

    // Several compares, an empty success branch, and revision compares.
    let out = server
        .ctl_stdin(
            &["txn"],
            "version(\"k1\") = \"1\"\ncreate(\"k1\") > \"0\"\nmod(\"k2\") > \"2\"\n\n\nput k3 no\n\n",
        )
        .await
        .unwrap();
    assert_eq!(out.success().unwrap(), "SUCCESS\n");

    // With --interactive the prompts go to stdout before the result.
    let out = server
        .ctl_stdin(&["txn", "-i"], "mod(\"k1\") > \"0\"\n\ndel k2\n\n\n")
        .await
        .unwrap();
    assert_eq!(
        out.success().unwrap(),
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nSUCCESS\n\n1\n"
    );

    // The whole txn is one revision: k1@2, k2@3, k2@4, delete@5.
    let v = json(&server, &["get", "k1"]).await;
    assert_eq!(v["header"]["revision"], 5);
    let out = server
        .ctl_stdin(&["txn", "-w", "json"], "\nput a 1\nput b 2\n\n\n")
        .await
        .unwrap();
    let v: Value = serde_json::from_str(out.success().unwrap()).unwrap();
    assert_eq!(v["succeeded"], true);
    assert_eq!(v["header"]["revision"], 6);
    assert_eq!(
        v["responses"][0]["Response"]["response_put"]["header"]["revision"],
        6
    );
    assert_eq!(
        v["responses"][1]["Response"]["response_put"]["header"]["revision"],
        6
    );
}

#[tokio::test]
async fn compaction_makes_older_revisions_unreadable() {
    let server = start().await;
    for v in ["v1", "v2", "v3", "v4"] {
        ok(&server, &["put", "k", v]).await; // revisions 2..=5
    }
    assert_eq!(
        ok(&server, &["compaction", "4"]).await,
        "compacted revision 4\n"
    );
    let out = server.ctl(&["get", "k", "--rev", "3"]).await.unwrap();
    assert_ctl_error(&out, COMPACTED);
    assert_eq!(ok(&server, &["get", "k", "--rev", "4"]).await, "k\nv3\n");
    assert_eq!(ok(&server, &["get", "k"]).await, "k\nv4\n");

    let out = server.ctl(&["get", "k", "--rev", "99"]).await.unwrap();
    assert_ctl_error(&out, FUTURE);
    let out = server.ctl(&["compaction", "3"]).await.unwrap();
    assert_ctl_error(&out, COMPACTED);
    let out = server.ctl(&["compaction", "99"]).await.unwrap();
    assert_ctl_error(&out, FUTURE);
    assert_eq!(
        ok(&server, &["compaction", "--physical", "5"]).await,
        "compacted revision 5\n"
    );
}

#[tokio::test]
async fn member_list_shows_the_single_started_member() {
    let server = start().await;
    let member_id = grpc_member_id(&server).await;
    let plain = ok(&server, &["member", "list"]).await;
    let fields: Vec<&str> = plain.trim_end().split(", ").collect();
    assert_eq!(fields.len(), 6, "{plain}");
    assert_eq!(parse_hex_id(fields[0]), member_id, "{plain}");
    let client_url = server.client_url();
    let peer_url = server.peer_url();
    assert_eq!(
        &fields[1..],
        ["started", server.name(), &peer_url, &client_url, "false"]
    );

    let (header, rows) = table(&ok(&server, &["member", "list", "-w", "table"]).await);
    assert_eq!(
        header,
        [
            "ID",
            "STATUS",
            "NAME",
            "PEER ADDRS",
            "CLIENT ADDRS",
            "IS LEARNER"
        ]
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(parse_hex_id(&rows[0][0]), member_id);
    assert_eq!(
        rows[0][1..],
        ["started", server.name(), &peer_url, &client_url, "false"]
    );
}

#[tokio::test]
async fn endpoint_status_table_reports_version_size_leader_and_raft_position() {
    let server = start().await;
    ok(&server, &["put", "k", "v"]).await;
    let member_id = grpc_member_id(&server).await;

    let (header, rows) = table(&ok(&server, &["endpoint", "status", "-w", "table"]).await);
    assert_eq!(
        header,
        [
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS"
        ]
    );
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row[0], server.client_url());
    assert_eq!(parse_hex_id(&row[1]), member_id);
    assert!(row[2].starts_with("3.5."), "version {}", row[2]);
    // Humanized size such as "20 kB".
    let (size, unit) = row[3].split_once(' ').expect("DB SIZE has a unit");
    assert!(size.parse::<f64>().unwrap() > 0.0, "DB SIZE {}", row[3]);
    assert!(
        ["B", "kB", "MB", "GB"].contains(&unit),
        "DB SIZE {}",
        row[3]
    );
    assert_eq!((row[4].as_str(), row[5].as_str()), ("true", "false"));
    let term: u64 = row[6].parse().expect("RAFT TERM is a number");
    let index: u64 = row[7].parse().expect("RAFT INDEX is a number");
    let applied: u64 = row[8].parse().expect("RAFT APPLIED INDEX is a number");
    assert!(term >= 1);
    assert!(index >= 2, "a put was committed: raft index {index}");
    assert!(applied <= index && applied >= 1);
    assert_eq!(row[9], "");

    // The JSON form carries the same numbers with etcd's field names.
    let v = json(&server, &["endpoint", "status"]).await;
    let status = &v[0]["Status"];
    assert_eq!(v[0]["Endpoint"], server.client_url());
    assert_eq!(status["header"]["revision"], 2);
    assert!(status["version"].as_str().unwrap().starts_with("3.5."));
    assert!(status["dbSize"].as_i64().unwrap() > 0);
    assert_eq!(status["leader"], status["header"]["member_id"]);
    assert!(status["raftTerm"].as_u64().unwrap() >= 1);
    assert!(status["raftIndex"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn endpoint_health_table_reports_healthy() {
    let server = start().await;
    let (header, rows) = table(&ok(&server, &["endpoint", "health", "-w", "table"]).await);
    assert_eq!(header, ["ENDPOINT", "HEALTH", "TOOK", "ERROR"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], server.client_url());
    assert_eq!(rows[0][1], "true");
    assert!(
        rows[0][2].ends_with('s'),
        "TOOK is a Go duration: {}",
        rows[0][2]
    );
    assert_eq!(rows[0][3], "");

    let out = server.ctl(&["endpoint", "health"]).await.unwrap();
    // etcdctl prints the health line on stderr.
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        text.contains(&format!(
            "{} is healthy: successfully committed proposal: took = ",
            server.client_url()
        )),
        "{out:?}"
    );
}

//! The HTTP/JSON gateway on the client port (`POST /v3/kv/put` ...), as curl users,
//! Patroni and etcd3gw drive etcd's grpc-gateway: proto field names, int64 as strings,
//! bytes as base64, default fields left out, etcd's error bodies and HTTP statuses, watch
//! as one open chunked stream. Expectations were taken from etcd 3.5.1 and every test
//! not marked cairn-only passes against it too.

use std::time::Duration;

use base64::prelude::{Engine, BASE64_STANDARD};
use cairn_tests::Server;
use serde_json::{json, Value};

fn b64(s: &str) -> String {
    BASE64_STANDARD.encode(s)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// POSTs `body` as it is; the answer's status and body.
async fn post_raw(server: &Server, path: &str, body: &str) -> (u16, String) {
    let resp = http()
        .post(format!("{}{path}", server.client_url()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// POSTs `body`, expects 200 and JSON.
async fn post(server: &Server, path: &str, body: Value) -> Value {
    let (status, text) = post_raw(server, path, &body.to_string()).await;
    assert_eq!(status, 200, "POST {path} {body}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: bad JSON ({e}): {text}"))
}

fn revision(resp: &Value) -> i64 {
    resp["header"]["revision"]
        .as_str()
        .unwrap_or_else(|| panic!("revision is a string: {resp}"))
        .parse()
        .unwrap()
}

/// A watch or keep-alive answer read line by line as it streams.
struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Lines {
    async fn open(server: &Server, path: &str, body: Value) -> Lines {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", server.client_url()))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        Lines {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next line as JSON; `None` when the answer ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("a line within 10 s")
                .unwrap();
            match chunk {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None if self.buf.is_empty() => return None,
                None => panic!(
                    "unterminated line: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }
}

#[tokio::test]
async fn kv_endpoints_speak_etcds_json() {
    let server = Server::start().await.unwrap();
    let put = post(
        &server,
        "/v3/kv/put",
        json!({"key": b64("foo"), "value": b64("bar")}),
    )
    .await;
    let header = put["header"].as_object().unwrap();
    for field in ["cluster_id", "member_id", "revision", "raft_term"] {
        let value = header[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {put}"));
        assert!(
            value.parse::<u64>().is_ok(),
            "{field} is a decimal string: {put}"
        );
    }
    // A put without prev_kv answers the header alone.
    assert_eq!(put.as_object().unwrap().len(), 1, "{put}");
    let rev = revision(&put);

    let range = post(&server, "/v3/kv/range", json!({"key": b64("foo")})).await;
    assert_eq!(
        range["kvs"],
        json!([{"key": b64("foo"), "create_revision": rev.to_string(),
                "mod_revision": rev.to_string(), "version": "1", "value": b64("bar")}])
    );
    assert_eq!(range["count"], "1");
    assert!(range.get("more").is_none(), "false is left out: {range}");

    let deleted = post(
        &server,
        "/v3/kv/deleterange",
        json!({"key": b64("foo"), "prev_kv": true}),
    )
    .await;
    assert_eq!(deleted["deleted"], "1");
    assert_eq!(deleted["prev_kvs"][0]["value"], b64("bar"));
    assert_eq!(revision(&deleted), rev + 1);

    let compacted = post(&server, "/v3/kv/compaction", json!({"revision": rev})).await;
    assert_eq!(revision(&compacted), rev + 1);
    let (status, body) = post_raw(
        &server,
        "/v3/kv/range",
        &json!({"key": b64("foo"), "revision": rev - 1}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let msg = "etcdserver: mvcc: required revision has been compacted";
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": msg, "code": 11, "message": msg})
    );
}

#[tokio::test]
async fn int64_fields_are_accepted_as_strings_or_numbers() {
    let server = Server::start().await.unwrap();
    for key in ["a", "b", "c"] {
        post(
            &server,
            "/v3/kv/put",
            json!({"key": b64(key), "value": b64("v")}),
        )
        .await;
    }
    let all_from_a = |limit: Value| json!({"key": b64("a"), "range_end": b64("d"), "limit": limit});
    for limit in [json!(2), json!("2")] {
        let range = post(&server, "/v3/kv/range", all_from_a(limit)).await;
        assert_eq!(range["kvs"].as_array().unwrap().len(), 2, "{range}");
        assert_eq!(range["more"], true);
        assert_eq!(range["count"], "3");
    }
    let grant = post(&server, "/v3/lease/grant", json!({"TTL": "60"})).await;
    assert_eq!(grant["TTL"], "60");
    let id = grant["ID"].as_str().unwrap().to_string();
    // The same lease by its ID as a number.
    let ttl = post(
        &server,
        "/v3/lease/timetolive",
        json!({"ID": id.parse::<i64>().unwrap()}),
    )
    .await;
    assert_eq!(ttl["ID"], id);
    assert_eq!(ttl["grantedTTL"], "60");
}

#[tokio::test]
async fn a_failed_txn_has_no_succeeded_field() {
    let server = Server::start().await.unwrap();
    post(
        &server,
        "/v3/kv/put",
        json!({"key": b64("k"), "value": b64("1")}),
    )
    .await;
    let txn = |expected: &str, result: Value, target: Value| {
        json!({
            "compare": [{"key": b64("k"), "result": result, "target": target, "value": b64(expected)}],
            "success": [{"request_put": {"key": b64("k"), "value": b64("2")}}],
            "failure": [{"request_range": {"key": b64("k")}}],
        })
    };
    // Enums by name...
    let failed = post(
        &server,
        "/v3/kv/txn",
        txn("0", json!("EQUAL"), json!("VALUE")),
    )
    .await;
    assert!(failed.get("succeeded").is_none(), "{failed}");
    let range = &failed["responses"][0]["response_range"];
    assert_eq!(range["kvs"][0]["value"], b64("1"), "{failed}");
    // ... or by number (EQUAL = 0, VALUE = 3).
    let done = post(&server, "/v3/kv/txn", txn("1", json!(0), json!(3))).await;
    assert_eq!(done["succeeded"], true, "{done}");
    assert!(
        done["responses"][0]["response_put"].is_object(),
        "an empty put response is still there: {done}"
    );
    let now = post(&server, "/v3/kv/range", json!({"key": b64("k")})).await;
    assert_eq!(now["kvs"][0]["value"], b64("2"));
}

#[tokio::test]
async fn errors_are_grpc_gateway_bodies_with_their_http_status() {
    let server = Server::start().await.unwrap();
    let (status, body) = post_raw(
        &server,
        "/v3/kv/put",
        &json!({"key": b64("k"), "value": b64("v"), "lease": "123"}).to_string(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        r#"{"error":"etcdserver: requested lease not found","code":5,"message":"etcdserver: requested lease not found"}"#
    );
    // An empty body is an empty request: etcd's validation answers it.
    let (status, body) = post_raw(&server, "/v3/kv/put", "").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        r#"{"error":"etcdserver: key is not provided","code":3,"message":"etcdserver: key is not provided"}"#
    );
    // FailedPrecondition is 400 in grpc-gateway, not 412.
    let (status, body) = post_raw(
        &server,
        "/v3/kv/put",
        &json!({"key": b64("missing"), "ignore_value": true}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], 3);
}

#[tokio::test]
async fn malformed_json_is_refused_and_changes_nothing() {
    let server = Server::start().await.unwrap();
    let before = revision(&post(&server, "/v3/kv/range", json!({"key": b64("k")})).await);
    for body in [
        r#"{"key":"#,
        "xyz",
        r#"{"key":"!!not base64"}"#,
        r#"{"key":"a2V5","value":"dg==","lease":1.5}"#,
        r#"{"key":"a2V5","prev_kv":"yes"}"#,
        "[1]",
    ] {
        let (status, text) = post_raw(&server, "/v3/kv/put", body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let err: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(err["code"], 3, "{body}: {text}");
        assert!(!err["error"].as_str().unwrap().is_empty(), "{text}");
        assert_eq!(err["error"], err["message"]);
    }
    let after = post(&server, "/v3/kv/range", json!({"key": b64("k")})).await;
    assert_eq!(revision(&after), before);
    assert!(after.get("kvs").is_none(), "{after}");
    // Unknown fields are ignored, and so is anything after the first JSON value.
    let (status, text) = post_raw(
        &server,
        "/v3/kv/put",
        r#"{"key":"a2V5","value":"dg==","bogus":1} trailing"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let server = Server::start().await.unwrap();
    let (status, body) = post_raw(&server, "/v3/kv/nope", "{}").await;
    assert_eq!((status, body.as_str()), (404, "Not Found\n"));
    let (status, body) = post_raw(&server, "/nope", "{}").await;
    assert_eq!((status, body.as_str()), (404, "404 page not found\n"));
    let (status, _) = server.http_get("/nope").await.unwrap();
    assert_eq!(status, 404);
    // etcd 3.5 serves /v3beta/ still, /v3alpha/ no more.
    let (status, _) = post_raw(&server, "/v3alpha/kv/range", r#"{"key":"YQ=="}"#).await;
    assert_eq!(status, 404);
    let beta = post(&server, "/v3beta/kv/range", json!({"key": b64("a")})).await;
    assert!(beta["header"]["revision"].is_string());
    let (status, body) = server.http_get("/v3/kv/put").await.unwrap();
    assert_eq!((status, body.as_str()), (405, "Method Not Allowed\n"));
    // A gateway GET writes nothing.
    let range = post(&server, "/v3/kv/range", json!({"key": b64("a")})).await;
    assert_eq!(revision(&range), 1);
}

#[tokio::test]
async fn watch_is_one_open_stream_of_results() {
    let server = Server::start().await.unwrap();
    let mut watch = Lines::open(
        &server,
        "/v3/watch",
        json!({"create_request": {"key": b64("w"), "prev_kv": true}}),
    )
    .await;
    let created = watch.next().await.unwrap();
    assert_eq!(created["result"]["created"], true, "{created}");
    assert!(
        created["result"].get("watch_id").is_none(),
        "id 0 is left out"
    );

    let put = post(
        &server,
        "/v3/kv/put",
        json!({"key": b64("w"), "value": b64("1")}),
    )
    .await;
    let event = watch.next().await.unwrap();
    assert_eq!(
        event["result"]["events"],
        json!([{"kv": {"key": b64("w"), "create_revision": revision(&put).to_string(),
                       "mod_revision": revision(&put).to_string(), "version": "1",
                       "value": b64("1")}}]),
        "{event}"
    );
    // The stream stays open: the next change arrives on it too.
    let deleted = post(&server, "/v3/kv/deleterange", json!({"key": b64("w")})).await;
    let event = watch.next().await.unwrap();
    let events = &event["result"]["events"];
    assert_eq!(events[0]["type"], "DELETE", "{event}");
    assert_eq!(
        events[0]["kv"]["mod_revision"],
        revision(&deleted).to_string()
    );
    assert_eq!(events[0]["prev_kv"]["value"], b64("1"));
}

#[tokio::test]
async fn watch_body_may_carry_several_requests_and_replays_history() {
    let server = Server::start().await.unwrap();
    post(
        &server,
        "/v3/kv/put",
        json!({"key": b64("h"), "value": b64("1")}),
    )
    .await;
    let body = format!(
        "{}\n{}",
        json!({"create_request": {"key": b64("h"), "start_revision": 1}}),
        json!({"progress_request": {}}),
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/v3/watch", server.client_url()))
        .body(body)
        .send()
        .await
        .unwrap();
    let mut lines = Lines {
        resp,
        buf: Vec::new(),
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(lines.next().await.unwrap());
    }
    assert_eq!(seen[0]["result"]["created"], true, "{seen:?}");
    // The replayed put, and the progress notification (watch id -1), which etcd 3.5.1
    // sends at once and cairn once the watch caught up: either order.
    assert!(
        seen.iter()
            .any(|r| r["result"]["events"][0]["kv"]["value"] == b64("1")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|r| r["result"]["watch_id"] == "-1"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn lease_endpoints_and_their_old_paths() {
    let server = Server::start().await.unwrap();
    let grant = post(&server, "/v3/lease/grant", json!({"TTL": 60})).await;
    let id = grant["ID"].as_str().unwrap().to_string();
    assert_eq!(grant["TTL"], "60");
    post(
        &server,
        "/v3/kv/put",
        json!({"key": b64("l"), "value": b64("v"), "lease": id}),
    )
    .await;

    let mut alive = Lines::open(&server, "/v3/lease/keepalive", json!({"ID": id})).await;
    let renewed = alive.next().await.unwrap();
    assert_eq!(renewed["result"]["ID"], id);
    assert_eq!(renewed["result"]["TTL"], "60");
    assert!(
        alive.next().await.is_none(),
        "the answer ends with the body"
    );
    // An unknown lease: 200, and no TTL.
    let mut unknown = Lines::open(&server, "/v3/lease/keepalive", json!({"ID": "999"})).await;
    let answer = unknown.next().await.unwrap();
    assert_eq!(answer["result"]["ID"], "999");
    assert!(answer["result"].get("TTL").is_none(), "{answer}");

    for path in ["/v3/lease/timetolive", "/v3/kv/lease/timetolive"] {
        let ttl = post(&server, path, json!({"ID": id, "keys": true})).await;
        assert_eq!(ttl["grantedTTL"], "60");
        assert_eq!(ttl["keys"], json!([b64("l")]));
    }
    for path in ["/v3/lease/leases", "/v3/kv/lease/leases"] {
        let leases = post(&server, path, json!({})).await;
        assert_eq!(leases["leases"], json!([{"ID": id}]));
    }
    post(&server, "/v3/kv/lease/revoke", json!({"ID": id})).await;
    let (status, body) =
        post_raw(&server, "/v3/lease/revoke", &json!({"ID": id}).to_string()).await;
    assert_eq!(status, 404, "{body}");
    let gone = post(&server, "/v3/kv/range", json!({"key": b64("l")})).await;
    assert!(
        gone.get("kvs").is_none(),
        "revoking deleted the key: {gone}"
    );
}

#[tokio::test]
async fn maintenance_endpoints() {
    let server = Server::start().await.unwrap();
    let status = post(&server, "/v3/maintenance/status", json!({})).await;
    assert!(status["version"].as_str().unwrap().starts_with("3.5."));
    assert!(status["dbSize"].as_str().unwrap().parse::<i64>().unwrap() > 0);
    assert_eq!(status["leader"], status["header"]["member_id"]);
    let alarms = post(&server, "/v3/maintenance/alarm", json!({})).await;
    assert!(alarms.get("alarms").is_none(), "{alarms}");
    let hash = post(&server, "/v3/maintenance/hash", json!({})).await;
    assert!(hash["hash"].is_u64(), "uint32 is a number: {hash}");
    post(&server, "/v3/maintenance/defragment", json!({})).await;
    let mut snapshot = Lines::open(&server, "/v3/maintenance/snapshot", json!({})).await;
    let first = snapshot.next().await.unwrap();
    let blob = first["result"]["blob"].as_str().unwrap();
    assert!(!BASE64_STANDARD.decode(blob).unwrap().is_empty());
}

/// The seed documents manage members with etcd's v2 API over curl (`/v2/members`), which
/// etcd 3.5 no longer serves; their v3 form is the gateway's `/v3/cluster/member/*`.
#[tokio::test]
async fn seed_member_recipes_with_curl() {
    let server = Server::start().await.unwrap();
    let url = server.client_url();
    let curl = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(&args)
            .output()
            .await
            .expect("curl runs");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), body.to_string())
    };
    let s = |v: &str| v.to_string();
    // The seeds' v2 commands.
    let (code, _) = curl(vec![format!("{url}/v2/members")]).await;
    assert_eq!(code, 404);
    let (code, _) = curl(vec![
        format!("{url}/v2/members"),
        s("-XPOST"),
        s("-H"),
        s("Content-Type: application/json"),
        s("-d"),
        s(r#"{"peerURLs": ["http://127.0.0.1:1"]}"#),
    ])
    .await;
    assert_eq!(code, 404);

    // Their v3 form: list, add (a learner, so a one-member cluster keeps its quorum),
    // update, promote (refused: the learner never started), remove.
    let (code, body) = curl(vec![format!("{url}/v3/cluster/member/list"), s("-XPOST")]).await;
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["members"][0]["peerURLs"], json!([server.peer_url()]));
    let port = cairn_tests::free_port().unwrap();
    let (code, body) = curl(vec![
        format!("{url}/v3/cluster/member/add"),
        s("-H"),
        s("Content-Type: application/json"),
        s("-d"),
        json!({"peerURLs": [format!("http://127.0.0.1:{port}")], "isLearner": true}).to_string(),
    ])
    .await;
    assert_eq!(code, 200, "{body}");
    let added: Value = serde_json::from_str(&body).unwrap();
    let id = added["member"]["ID"].as_str().unwrap().to_string();
    assert_eq!(added["member"]["isLearner"], true);
    assert_eq!(added["members"].as_array().unwrap().len(), 2);

    let moved = format!("http://127.0.0.1:{}", cairn_tests::free_port().unwrap());
    let (code, body) = curl(vec![
        format!("{url}/v3/cluster/member/update"),
        s("-d"),
        json!({"ID": id, "peerURLs": [moved]}).to_string(),
    ])
    .await;
    assert_eq!(code, 200, "{body}");
    let updated: Value = serde_json::from_str(&body).unwrap();
    let member = updated["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["ID"] == id.as_str())
        .unwrap();
    assert_eq!(member["peerURLs"], json!([moved]));

    let (code, body) = curl(vec![
        format!("{url}/v3/cluster/member/promote"),
        s("-d"),
        json!({"ID": id}).to_string(),
    ])
    .await;
    let msg = "etcdserver: can only promote a learner member which is in sync with leader";
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": msg, "code": 9, "message": msg})
    );

    let (code, body) = curl(vec![
        format!("{url}/v3/cluster/member/remove"),
        s("-d"),
        json!({"ID": id}).to_string(),
    ])
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(vec![
        format!("{url}/v3/cluster/member/remove"),
        s("-d"),
        json!({"ID": id}).to_string(),
    ])
    .await;
    assert_eq!(code, 404, "{body}");
}

/// The gateway hands `/v3/auth/*` to the Auth gRPC service.
#[tokio::test]
async fn auth_endpoints_reach_the_auth_service() {
    let server = Server::start().await.unwrap();
    let status = post(&server, "/v3/auth/status", json!({})).await;
    assert!(status.get("enabled").is_none(), "auth is off: {status}");
    let (code, body) = post_raw(
        &server,
        "/v3/auth/authenticate",
        &json!({"name": "root", "password": "x"}).to_string(),
    )
    .await;
    let msg = "etcdserver: authentication is not enabled";
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": msg, "code": 9, "message": msg})
    );
}

#[tokio::test]
async fn health_is_get_only_json() {
    let server = Server::start().await.unwrap();
    let (status, body) = server.http_get("/health").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (status, body) = server
        .http_get("/health?serializable=true&exclude=NOSPACE")
        .await
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (status, body) = post_raw(&server, "/health", "").await;
    assert_eq!((status, body.as_str()), (405, "Method Not Allowed\n"));
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: etcd 3.6's /livez and /readyz")]
async fn livez_and_readyz_answer_as_etcd_3_6() {
    let server = Server::start().await.unwrap();
    for path in [
        "/livez",
        "/readyz",
        "/readyz/linearizable_read",
        "/livez/serializable_read",
    ] {
        let (status, body) = server.http_get(path).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{path}");
    }
    let (status, body) = server.http_get("/readyz?verbose").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n"
    );
    let (_, body) = server
        .http_get("/readyz?verbose&exclude=linearizable_read&exclude=non_learner")
        .await
        .unwrap();
    assert_eq!(body, "[+]data_corruption ok\n[+]serializable_read ok\nok\n");
    let (_, body) = server.http_get("/livez?verbose").await.unwrap();
    assert_eq!(body, "[+]serializable_read ok\nok\n");
    let (status, _) = post_raw(&server, "/readyz", "").await;
    assert_eq!(status, 405);
    let (status, _) = server.http_get("/readyz/nope").await.unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: etcd 3.5.1 answers POST /version with 405"
)]
async fn version_ignores_a_post_body() {
    let server = Server::start().await.unwrap();
    let (status, body) = post_raw(&server, "/version", "garbage").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["etcdcluster"], "3.5.0");
}

/// etcd3gw, OpenStack's etcd3 client, talks to the gateway unchanged: version discovery,
/// put/get with metadata, create and replace (txns), prefixes, leases, watch_once, locks,
/// members and status (`tests/fixtures/etcd3gw_client.py`).
#[tokio::test]
async fn etcd3gw_works_unchanged() {
    let server = Server::start().await.unwrap();
    let port = server.client_url().rsplit(':').next().unwrap().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/etcd3gw_client.py");
    let run = tokio::process::Command::new("python3")
        .args([script, "127.0.0.1", &port])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("etcd3gw script finishes in 60 s")
        .unwrap();
    assert!(
        out.status.success(),
        "etcd3gw: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "etcd3gw ok\n");
}

//! The auth and backup hooks (cairn-only): token-auth admits valid tokens and refuses
//! expired, forged and unknown ones with etcd's `invalid auth token`, and a denied request
//! changes nothing; a backup sealed by backup-seal restores to the same data; auth plugins
//! that trap or loop follow their failure policy while the node keeps serving.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use cairn::proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use cairn_tests::Server;
use hmac::{Hmac, Mac};
use tonic::transport::Channel;

use crate::plugins::{metric, plugin, start_with_plugins, start_with_plugins_and};
use crate::{current_revision, Code};

const SECRET: &str = "integration-test-secret";

/// A token-auth token, made here from the format its README documents.
fn token(secret: &str, sub: &str, roles: &[&str], exp: u64) -> String {
    let claims = serde_json::json!({"sub": sub, "roles": roles, "exp": exp});
    let signed = format!("cairn.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Plain gRPC with etcd's `token` metadata, as etcd clients send it after Authenticate.
struct Kv(KvClient<Channel>);

impl Kv {
    async fn connect(server: &Server) -> Kv {
        Kv(KvClient::connect(server.client_url()).await.unwrap())
    }

    fn request<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(token) = token {
            req.metadata_mut().insert("token", token.parse().unwrap());
        }
        req
    }

    async fn put(
        &mut self,
        token: Option<&str>,
        key: &str,
        value: &str,
    ) -> Result<i64, tonic::Status> {
        let put = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        let resp = self.0.put(Kv::request(put, token)).await?;
        Ok(resp.into_inner().header.unwrap().revision)
    }

    async fn get(&mut self, token: Option<&str>, key: &str) -> Result<Vec<Vec<u8>>, tonic::Status> {
        let range = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let resp = self.0.range(Kv::request(range, token)).await?;
        Ok(resp
            .into_inner()
            .kvs
            .into_iter()
            .map(|kv| kv.value)
            .collect())
    }
}

/// The store's revision, read with `token` (one that may read every key).
async fn revision_as(server: &Server, token: &str) -> i64 {
    let mut kv = Kv::connect(server).await;
    let range = RangeRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        count_only: true,
        ..Default::default()
    };
    let resp = kv.0.range(Kv::request(range, Some(token))).await.unwrap();
    resp.into_inner().header.unwrap().revision
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err("the request was refused");
    assert_eq!((status.code(), status.message()), (code, message));
}

fn token_auth_entry() -> String {
    let path = plugin("token-auth").display().to_string();
    // Deadlines of 2 s: a debug build on a loaded 2-core machine can exceed 5 ms, and these
    // tests are about answers, not time.
    format!(
        "  - name: token-auth
    path: {path}
    hooks: [auth]
    deadline: 2s
    config:
      secret: {SECRET}
      roles:
        app: {{read: [/app/], write: [/app/]}}
        root: {{read: [''], write: ['']}}
"
    )
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn token_auth_admits_valid_tokens_and_refuses_expired_forged_or_unknown_ones() {
    let server = start_with_plugins(&token_auth_entry()).await;
    let mut kv = Kv::connect(&server).await;
    let alice = token(SECRET, "alice", &["app"], now() + 600);
    let root = token(SECRET, "root", &["root"], now() + 600);
    let revision = || revision_as(&server, &root);

    let before = revision().await;
    let rev = kv.put(Some(&alice), "/app/a", "1").await.unwrap();
    assert_eq!(rev, before + 1);
    assert_eq!(
        kv.get(Some(&alice), "/app/a").await.unwrap(),
        [b"1".to_vec()]
    );

    let invalid = "etcdserver: invalid auth token";
    let expired = token(SECRET, "alice", &["app"], now() - 1);
    let other_secret = token("not-the-secret", "alice", &["root"], now() + 600);
    // alice's signature on claims that say root.
    let (_, signature) = alice.rsplit_once('.').unwrap();
    let (forged_claims, _) = root.rsplit_once('.').unwrap();
    let forged = format!("{forged_claims}.{signature}");
    for bad in [
        &expired,
        &other_secret,
        &forged,
        "not-a-token-anyone-issued",
    ] {
        assert_status(
            kv.put(Some(bad), "/app/a", "evil").await,
            Code::Unauthenticated,
            invalid,
        );
        assert_status(
            kv.get(Some(bad), "/app/a").await,
            Code::Unauthenticated,
            invalid,
        );
    }

    // Denied: outside alice's prefix, and callers without a token (no anonymous grants).
    let denied = "etcdserver: permission denied";
    assert_status(
        kv.put(Some(&alice), "/other", "x").await,
        Code::PermissionDenied,
        denied,
    );
    assert_status(
        kv.put(None, "/app/a", "x").await,
        Code::PermissionDenied,
        denied,
    );
    assert_status(
        kv.get(Some(&alice), "/other").await,
        Code::PermissionDenied,
        denied,
    );
    // etcdctl (no credentials) is refused too, with etcd's words.
    let out = server.ctl(&["put", "/app/b", "x"]).await.unwrap();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains(denied), "{}", out.stderr);

    // Nothing refused reached the store.
    assert_eq!(revision().await, before + 1);
    assert_eq!(
        kv.get(Some(&root), "/app/a").await.unwrap(),
        [b"1".to_vec()]
    );
    assert!(kv.get(Some(&root), "/other").await.unwrap().is_empty());
    kv.put(Some(&root), "/other", "by root").await.unwrap();

    let calls = |hook, result| [("plugin", "token-auth"), ("hook", hook), ("result", result)];
    assert_eq!(
        metric(
            &server,
            "cairn_plugin_calls_total",
            &calls("authenticate", "deny")
        )
        .await,
        6.0,
        "expired, other secret and forged, each for a put and a get"
    );
    assert!(
        metric(
            &server,
            "cairn_plugin_calls_total",
            &calls("authorize", "deny")
        )
        .await
            >= 4.0
    );
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn failing_auth_plugins_follow_their_policy_and_the_node_keeps_serving() {
    let hostile = plugin("hostile").display().to_string();
    let entry = |mode: &str, policy: &str, deadline: &str| {
        format!(
            "  - {{name: bad-auth, path: {hostile}, hooks: [auth], failure-policy: {policy}, \
             memory: 4MiB, deadline: {deadline}, config: {{mode: {mode}}}}}\n"
        )
    };

    // Fail-closed: a trapping authorizer refuses every request, naming the plugin.
    let server = start_with_plugins(&entry("trap", "fail-closed", "2s")).await;
    let mut kv = Kv::connect(&server).await;
    let traps = [("plugin", "bad-auth"), ("hook", "authorize")];
    // The readiness probe was refused the same way already.
    let traps_before = metric(&server, "cairn_plugin_traps_total", &traps).await;
    for _ in 0..3 {
        let status = kv.put(None, "/k", "v").await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().starts_with("plugin bad-auth: trapped"),
            "{}",
            status.message()
        );
    }
    // A token goes to authenticate first, which traps too: Unauthenticated, not "invalid".
    let status = kv.put(Some("some-token"), "/k", "v").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("(request refused: fail-closed)"),
        "{}",
        status.message()
    );
    assert_eq!(
        metric(&server, "cairn_plugin_traps_total", &traps).await - traps_before,
        3.0
    );
    // The node is up and healthy: /health goes through no plugin.
    assert_eq!(server.http_get("/health").await.unwrap().0, 200);
    drop(server);

    // Fail-open: a looping authorizer is stopped at its deadline and the request goes on.
    let server = start_with_plugins(&entry("loop", "fail-open", "20ms")).await;
    let mut client = server.client().await.unwrap();
    let before = current_revision(&mut client).await;
    for i in 0..3 {
        let started = Instant::now();
        client.put("/k", format!("{i}"), None).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a loop held the write"
        );
    }
    assert_eq!(current_revision(&mut client).await, before + 3);
    let timeouts = [("plugin", "bad-auth"), ("hook", "authorize")];
    assert!(metric(&server, "cairn_plugin_timeouts_total", &timeouts).await >= 5.0);
}

/// A key as a restore must bring it back: key, value, create and mod revision, version.
type Stored = (Vec<u8>, Vec<u8>, i64, i64, i64);

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins, backups")]
async fn a_sealed_backup_restores_to_the_same_data() {
    let seal = plugin("backup-seal");
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let key = "7c".repeat(32);
    let key_file = dir.path().join("key.json");
    std::fs::write(&key_file, format!(r#"{{"key": "{key}"}}"#)).unwrap();
    let yaml = format!(
        "  - {{name: seal, path: {}, hooks: [backup], config: {{key: \"{key}\"}}}}\n",
        seal.display()
    );
    let mut server =
        start_with_plugins_and(&yaml, &[format!("--backup-dir={}", backups.display())]).await;
    let mut client = server.client().await.unwrap();
    // Enough data to span many 64 KiB chunks, with history, a delete and a compaction.
    let secret_value = "plaintext-that-must-not-appear-".repeat(8);
    for i in 0..400 {
        client
            .put(format!("/data/{i:04}"), format!("{secret_value}{i}"), None)
            .await
            .unwrap();
    }
    for i in 0..50 {
        client
            .put(format!("/data/{i:04}"), "updated", None)
            .await
            .unwrap();
    }
    client.delete("/data/0399", None).await.unwrap();
    client.compact(100, None).await.unwrap();
    let revision = current_revision(&mut client).await;
    let hash = client.hash_kv(0).await.unwrap().hash();
    let all = |resp: etcd_client::GetResponse| -> Vec<Stored> {
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect()
    };
    let everything = Some(etcd_client::GetOptions::new().with_all_keys());
    let before = all(client.get("", everything.clone()).await.unwrap());

    // `cairn backup` asks the node; it prints what the node wrote.
    let cairn = server.kind().binary().unwrap();
    let out = std::process::Command::new(&cairn)
        .args(["backup", &format!("--endpoint={}", server.client_url())])
        .output()
        .unwrap();
    assert!(out.status.success(), "cairn backup: {out:?}");
    let written: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = std::path::PathBuf::from(written["path"].as_str().unwrap());
    assert!(path.starts_with(&backups), "{}", path.display());
    assert!(
        path.to_string_lossy().ends_with(".snap.zst.sealed"),
        "{}",
        path.display()
    );
    assert_eq!(written["revision"].as_i64(), Some(revision));
    let sealed = std::fs::read(&path).unwrap();
    assert_eq!(written["bytes"].as_u64(), Some(sealed.len() as u64));
    assert!(sealed.starts_with(b"CAIRNSL1"));
    let plain = secret_value.as_bytes();
    assert!(
        !sealed.windows(plain.len()).any(|w| w == plain),
        "values in the clear"
    );
    assert!(
        sealed.len() as u64 * 2 < written["snapshot_bytes"].as_u64().unwrap(),
        "not compressed: {written}"
    );
    // Only the backup in the directory: the temp file was renamed away.
    assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 1);
    assert_eq!(
        metric(&server, "cairn_backup_bytes", &[]).await,
        sealed.len() as f64
    );
    assert!(metric(&server, "cairn_backup_last_success_timestamp_seconds", &[]).await > 0.0);
    assert_eq!(
        metric(&server, "cairn_backup_failures_total", &[]).await,
        0.0
    );

    server.terminate().await.unwrap();
    drop(client);
    let data_dir = server.data_dir().to_path_buf();
    std::fs::remove_dir_all(&data_dir).unwrap();
    let restore = |key_file: &std::path::Path| {
        std::process::Command::new(&cairn)
            .args(["snapshot", "restore"])
            .arg(&path)
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--unseal={}", seal.display()))
            .arg(format!("--unseal-config={}", key_file.display()))
            .output()
            .unwrap()
    };
    // The wrong key restores nothing.
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, format!(r#"{{"key": "{}"}}"#, "00".repeat(32))).unwrap();
    let out = restore(&wrong);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not decrypt"), "{stderr}");
    assert!(!data_dir.exists() || std::fs::read_dir(&data_dir).unwrap().next().is_none());

    let out = restore(&key_file);
    assert!(out.status.success(), "restore: {out:?}");
    server.restart().await.unwrap();
    let mut client = server.client().await.unwrap();
    assert_eq!(all(client.get("", everything).await.unwrap()), before);
    assert_eq!(current_revision(&mut client).await, revision);
    assert_eq!(client.hash_kv(0).await.unwrap().hash(), hash);
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: backups")]
async fn backups_need_a_directory_and_a_failed_one_is_counted() {
    // No --backup-dir: the endpoint says how to turn backups on.
    let server = Server::start().await.unwrap();
    let cairn = server.kind().binary().unwrap();
    let out = std::process::Command::new(&cairn)
        .args(["backup", &format!("--endpoint={}", server.client_url())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--backup-dir"),
        "{out:?}"
    );
    drop(server);

    // A backup plugin with a bad key fails the backup, leaves no file, and is counted.
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let yaml = format!(
        "  - {{name: seal, path: {}, hooks: [backup], config: {{key: short}}}}\n",
        plugin("backup-seal").display()
    );
    let server =
        start_with_plugins_and(&yaml, &[format!("--backup-dir={}", backups.display())]).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/cairn/v1/backup", server.client_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 500);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"],
        "backup plugin seal: key must be 64 hex digits (256 bits)"
    );
    assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 0);
    assert_eq!(
        metric(&server, "cairn_backup_failures_total", &[]).await,
        1.0
    );
}

/// A gateway call is authenticated and judged as a gRPC call is: etcd's gateway puts the
/// `Authorization` header into the `authorization` metadata, where etcd reads a token.
#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn gateway_calls_pass_auth_and_admission_like_grpc_calls() {
    let guard = plugin("schema-guard").display().to_string();
    let plugins = format!(
        "{}  - name: schema-guard
    path: {guard}
    hooks: [admission]
    prefixes: [/app/json/]
    deadline: 2s
",
        token_auth_entry()
    );
    let server = start_with_plugins(&plugins).await;
    let alice = token(SECRET, "alice", &["app"], now() + 600);
    let put = |key: &str, value: &str| {
        serde_json::json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)})
            .to_string()
    };
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let url = format!("{}/v3/kv/put", server.client_url());
        async move {
            let mut req = reqwest::Client::new().post(url).body(body);
            for (name, value) in headers {
                req = req.header(name, value);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            (status, body)
        }
    };
    let refused =
        |msg: &str, code: u16| serde_json::json!({"error": msg, "code": code, "message": msg});

    let (status, body) = post(vec![], put("/app/a", "1")).await;
    assert_eq!(status, 403, "anonymous: {body}");
    assert_eq!(body, refused("etcdserver: permission denied", 7));
    let forged = token("another-secret", "alice", &["app"], now() + 600);
    let (status, body) = post(vec![("authorization", forged)], put("/app/a", "1")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body, refused("etcdserver: invalid auth token", 16));
    let (status, body) = post(vec![("authorization", alice.clone())], put("/other", "1")).await;
    assert_eq!(status, 403, "outside alice's prefix: {body}");

    let (status, body) = post(vec![("authorization", alice.clone())], put("/app/a", "1")).await;
    assert_eq!(status, 200, "{body}");
    // grpc-gateway's other way to send metadata.
    let (status, body) = post(
        vec![("grpc-metadata-token", alice.clone())],
        put("/app/b", "2"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rev = body["header"]["revision"].clone();

    // The admission plugin judges gateway writes too, and a refused one changes nothing.
    let (status, body) = post(
        vec![("authorization", alice.clone())],
        put("/app/json/x", "nope"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("plugin schema-guard: /app/json/x: value is not JSON"),
        "{body}"
    );
    let root = token(SECRET, "root", &["root"], now() + 600);
    assert_eq!(
        revision_as(&server, &root).await.to_string(),
        rev.as_str().unwrap()
    );
}

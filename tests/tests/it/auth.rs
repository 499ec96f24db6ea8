//! etcd's auth with RBAC: the etcdctl admin flow, each permission boundary through
//! etcd-client, every Auth RPC's refusals, token invalidation, persistence across kill -9
//! and a user made on one member logging in on another. Expectations are etcd 3.5.1's (the
//! same tests pass against it); `--bcrypt-cost=4` (bcrypt's minimum, which etcd accepts)
//! keeps password hashing fast. JWT tokens (`--auth-token jwt,...`): their claims, staleness
//! and expiry, use across members, verify-only members and bad key files.

use std::time::Duration;

use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::Server;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Permission, PutOptions,
    RoleRevokePermissionOptions, Txn, TxnOp, WatchOptions,
};

use crate::{assert_grpc_error, ok, Code};

const DENIED: &str = "etcdserver: permission denied";
/// How etcd words a refused watch's cancel reason: the gRPC status as text.
const WATCH_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
const USER_EMPTY: &str = "etcdserver: user name is empty";
const FAST_BCRYPT: &str = "--bcrypt-cost=4";

/// An etcd-client connection to `url` that logs in as `user`.
async fn login(url: &str, user: &str, password: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_user(user, password)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10));
    Client::connect([url], Some(opts)).await
}

/// The seed documents' set-up with etcdctl: root, and alice with role `app` (read-write
/// on the prefix `app/`, read on the key `cfg`); then auth enabled.
async fn set_up_with_etcdctl(server: &Server) {
    for args in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice", "--new-user-password=alicepw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
        &["role", "grant-permission", "app", "read", "cfg"],
        &["user", "grant-role", "alice", "app"],
    ] {
        ok(server, args).await;
    }
    assert_eq!(
        ok(server, &["auth", "enable"]).await.trim(),
        "Authentication Enabled"
    );
}

#[tokio::test]
async fn etcdctl_admin_flow_then_each_permission_boundary() {
    let server = Server::start_with(&[FAST_BCRYPT]).await.unwrap();
    set_up_with_etcdctl(&server).await;
    let url = server.client_url();

    let as_root = ["--user", "root:rootpw"];
    ok(&server, &[&as_root[..], &["put", "cfg", "v1"]].concat()).await;
    ok(&server, &[&as_root[..], &["put", "other", "x"]].concat()).await;
    let status = ok(&server, &[&as_root[..], &["auth", "status"]].concat()).await;
    assert!(status.contains("Authentication Status: true"), "{status}");
    let roles = ok(&server, &[&as_root[..], &["role", "get", "app"]].concat()).await;
    assert!(roles.contains("[app/, app0) (prefix app/)"), "{roles}");
    let bad = server
        .ctl(&["--user", "alice:wrong", "get", "cfg"])
        .await
        .unwrap();
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("etcdserver: authentication failed, invalid user ID or password"),
        "{}",
        bad.stderr
    );

    let mut alice = login(&url, "alice", "alicepw").await.unwrap();
    // Reads inside the role's ranges are allowed, writes only where it may write.
    let got = alice.get("cfg", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v1");
    assert_grpc_error(
        alice.put("cfg", "v2", None).await,
        Code::PermissionDenied,
        DENIED,
    );
    alice.put("app/a", "1", None).await.unwrap();
    let listed = alice
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(listed.count(), 1);
    assert_grpc_error(
        alice.get("other", None).await,
        Code::PermissionDenied,
        DENIED,
    );
    // A range wider than the grant is refused, though each key in it might be allowed.
    assert_grpc_error(
        alice
            .get("app", Some(GetOptions::new().with_prefix()))
            .await,
        Code::PermissionDenied,
        DENIED,
    );
    assert_grpc_error(
        alice.delete("cfg", None).await,
        Code::PermissionDenied,
        DENIED,
    );

    // A txn is judged by its compares too, not only its ops.
    let peek = Txn::new()
        .when([Compare::value("other", CompareOp::Equal, "x")])
        .and_then([TxnOp::put("app/b", "2", None)]);
    assert_grpc_error(alice.txn(peek).await, Code::PermissionDenied, DENIED);
    let inside = Txn::new()
        .when([Compare::value("cfg", CompareOp::Equal, "v1")])
        .and_then([TxnOp::put("app/b", "2", None)]);
    assert!(alice.txn(inside).await.unwrap().succeeded());

    // Watching outside the grant: created and canceled at once with etcd's reason.
    let mut denied = alice.watch("other", None).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), denied.message())
        .await
        .expect("an answer to the watch")
        .unwrap()
        .expect("a watch response");
    assert!(resp.canceled(), "{resp:?}");
    assert_eq!(resp.cancel_reason(), WATCH_DENIED);
    let mut allowed = alice
        .watch("app/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), allowed.message())
        .await
        .expect("an answer to the watch")
        .unwrap()
        .expect("a watch response");
    assert!(resp.created() && !resp.canceled(), "{resp:?}");

    // Revoking a lease deletes its keys: it needs write access to every one of them.
    let mut root = login(&url, "root", "rootpw").await.unwrap();
    let lease = alice.lease_grant(60, None).await.unwrap().id();
    alice
        .put("app/leased", "l", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    root.put("other", "y", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert_grpc_error(
        alice.lease_revoke(lease).await,
        Code::PermissionDenied,
        DENIED,
    );
    root.lease_revoke(lease).await.unwrap();

    // Maintenance: etcd 3.5 lets any user compact, but hashing, defragmenting and
    // snapshots need root, and are refused with the auth store's own text.
    let rev = crate::current_revision(&mut root).await;
    alice.compact(rev, None).await.unwrap();
    let maintenance_denied = "auth: permission denied";
    assert_grpc_error(
        alice.maintenance_client().hash_kv(0).await,
        Code::Unknown,
        maintenance_denied,
    );
    assert_grpc_error(alice.defragment().await, Code::Unknown, maintenance_denied);
    root.defragment().await.unwrap();

    // Auth management: a user may read itself and its roles, nothing else.
    assert_eq!(alice.user_get("alice").await.unwrap().roles(), ["app"]);
    assert_grpc_error(alice.user_get("root").await, Code::PermissionDenied, DENIED);
    assert_grpc_error(alice.user_list().await, Code::PermissionDenied, DENIED);
    assert_eq!(alice.role_get("app").await.unwrap().permissions().len(), 2);
    assert_grpc_error(alice.role_get("root").await, Code::PermissionDenied, DENIED);
    assert_grpc_error(alice.role_add("mine").await, Code::PermissionDenied, DENIED);

    // Without credentials, every key and admin call is refused.
    let mut anonymous = server.client().await.unwrap();
    assert_grpc_error(
        anonymous.get("cfg", None).await,
        Code::InvalidArgument,
        USER_EMPTY,
    );
    assert_grpc_error(
        anonymous.put("app/x", "1", None).await,
        Code::InvalidArgument,
        USER_EMPTY,
    );
    assert_grpc_error(
        anonymous.user_list().await,
        Code::InvalidArgument,
        USER_EMPTY,
    );
}

#[tokio::test]
async fn every_auth_rpc_answers_etcds_error_for_bad_input() {
    let server = Server::start_with(&[FAST_BCRYPT]).await.unwrap();
    let url = server.client_url();
    let mut c = server.client().await.unwrap();
    let failed = |code, msg: &'static str| (code, msg);
    let precondition = |msg| failed(Code::FailedPrecondition, msg);

    let (code, msg) = crate::grpc_error(login(&url, "root", "pw").await.map(drop));
    assert_eq!(
        (code, msg.as_str()),
        precondition("etcdserver: authentication is not enabled")
    );
    assert_grpc_error(
        c.user_add("", "pw", None).await,
        Code::InvalidArgument,
        USER_EMPTY,
    );
    assert_grpc_error(
        c.role_add("").await,
        Code::InvalidArgument,
        "etcdserver: role name is empty",
    );
    c.user_add("alice", "pw", None).await.unwrap();
    c.role_add("app").await.unwrap();
    type Check = (Result<(), etcd_client::Error>, (Code, &'static str));
    let checks: Vec<Check> = vec![
        (
            c.user_add("alice", "pw", None).await.map(drop),
            precondition("etcdserver: user name already exists"),
        ),
        (
            c.role_add("app").await.map(drop),
            precondition("etcdserver: role name already exists"),
        ),
        (
            c.user_get("bob").await.map(drop),
            precondition("etcdserver: user name not found"),
        ),
        (
            c.user_delete("bob").await.map(drop),
            precondition("etcdserver: user name not found"),
        ),
        (
            c.user_change_password("bob", "x").await.map(drop),
            precondition("etcdserver: user name not found"),
        ),
        (
            c.role_get("nope").await.map(drop),
            precondition("etcdserver: role name not found"),
        ),
        (
            c.role_delete("nope").await.map(drop),
            precondition("etcdserver: role name not found"),
        ),
        (
            c.user_grant_role("alice", "nope").await.map(drop),
            precondition("etcdserver: role name not found"),
        ),
        (
            c.user_grant_role("bob", "app").await.map(drop),
            precondition("etcdserver: user name not found"),
        ),
        (
            c.user_revoke_role("alice", "app").await.map(drop),
            precondition("etcdserver: role is not granted to the user"),
        ),
        (
            c.role_revoke_permission("app", "k", None).await.map(drop),
            precondition("etcdserver: permission is not granted to the role"),
        ),
        (
            c.role_grant_permission("nope", Permission::read("k"))
                .await
                .map(drop),
            precondition("etcdserver: role name not found"),
        ),
        (
            c.auth_enable().await.map(drop),
            precondition("etcdserver: root user does not exist"),
        ),
    ];
    for (result, (code, msg)) in checks {
        assert_grpc_error(result, code, msg);
    }
    c.user_add("root", "rootpw", None).await.unwrap();
    assert_grpc_error(
        c.auth_enable().await,
        Code::FailedPrecondition,
        "etcdserver: root user does not have root role",
    );
    // The root role need not exist as a role to be granted.
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();

    let (code, msg) = crate::grpc_error(login(&url, "root", "wrong").await.map(drop));
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password"
        )
    );
    let (code, msg) = crate::grpc_error(login(&url, "nobody", "pw").await.map(drop));
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password"
        )
    );
    let mut root = login(&url, "root", "rootpw").await.unwrap();
    let mgmt = "etcdserver: invalid auth management";
    assert_grpc_error(root.user_delete("root").await, Code::InvalidArgument, mgmt);
    assert_grpc_error(
        root.user_revoke_role("root", "root").await,
        Code::InvalidArgument,
        mgmt,
    );
    root.role_add("root").await.unwrap();
    assert_grpc_error(root.role_delete("root").await, Code::InvalidArgument, mgmt);
    // Nothing above changed the users or roles it refused.
    assert_eq!(root.user_list().await.unwrap().users(), ["alice", "root"]);
    assert_eq!(root.role_list().await.unwrap().roles(), ["app", "root"]);
    root.auth_disable().await.unwrap();
    c.user_delete("root").await.unwrap();
}

#[tokio::test]
async fn permission_changes_and_password_changes_invalidate_access_at_once() {
    let server = Server::start_with(&[FAST_BCRYPT]).await.unwrap();
    set_up_with_etcdctl(&server).await;
    let url = server.client_url();
    let mut root = login(&url, "root", "rootpw").await.unwrap();
    let mut alice = login(&url, "alice", "alicepw").await.unwrap();
    alice.put("app/a", "1", None).await.unwrap();

    root.role_revoke_permission(
        "app",
        "app/",
        Some(RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    assert_grpc_error(
        alice.put("app/a", "2", None).await,
        Code::PermissionDenied,
        DENIED,
    );
    root.role_grant_permission("app", Permission::write("app/").with_prefix())
        .await
        .unwrap();
    alice.put("app/a", "3", None).await.unwrap();
    root.user_revoke_role("alice", "app").await.unwrap();
    assert_grpc_error(alice.get("cfg", None).await, Code::PermissionDenied, DENIED);

    // A new password ends the sessions of the old one.
    root.user_grant_role("alice", "app").await.unwrap();
    alice.get("cfg", None).await.unwrap();
    root.user_change_password("alice", "newpw").await.unwrap();
    assert_grpc_error(
        alice.get("cfg", None).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    assert!(login(&url, "alice", "alicepw").await.is_err());
    let mut alice = login(&url, "alice", "newpw").await.unwrap();
    alice.get("cfg", None).await.unwrap();
    root.user_delete("alice").await.unwrap();
    assert_grpc_error(
        alice.get("cfg", None).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
}

#[tokio::test]
async fn simple_tokens_expire_after_the_token_ttl() {
    let server = Server::start_with(&[FAST_BCRYPT, "--auth-token-ttl=1"])
        .await
        .unwrap();
    set_up_with_etcdctl(&server).await;
    let mut alice = login(&server.client_url(), "alice", "alicepw")
        .await
        .unwrap();
    alice.get("cfg", None).await.unwrap();
    // etcd's keeper drops tokens once a second; allow it two rounds past the TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_grpc_error(
        alice.get("cfg", None).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
}

#[tokio::test]
async fn auth_state_survives_kill9_and_restart() {
    let mut server = Server::start_with(&[FAST_BCRYPT]).await.unwrap();
    set_up_with_etcdctl(&server).await;
    let as_root = ["--user", "root:rootpw"];
    ok(&server, &[&as_root[..], &["put", "cfg", "v1"]].concat()).await;
    let before = ok(&server, &[&as_root[..], &["auth", "status"]].concat()).await;

    server.kill9().unwrap();
    server.restart().await.unwrap();

    let after = ok(&server, &[&as_root[..], &["auth", "status"]].concat()).await;
    assert_eq!(before, after, "auth enabled and the auth revision are kept");
    let mut alice = login(&server.client_url(), "alice", "alicepw")
        .await
        .unwrap();
    assert_eq!(
        alice.get("cfg", None).await.unwrap().kvs()[0].value(),
        b"v1"
    );
    assert_grpc_error(
        alice.put("cfg", "v2", None).await,
        Code::PermissionDenied,
        DENIED,
    );
    let mut anonymous = server.client().await.unwrap();
    assert_grpc_error(
        anonymous.get("cfg", None).await,
        Code::InvalidArgument,
        USER_EMPTY,
    );
    let users = ok(&server, &[&as_root[..], &["user", "list"]].concat()).await;
    assert_eq!(
        users.split_whitespace().collect::<Vec<_>>(),
        ["alice", "root"]
    );
}

#[tokio::test]
async fn a_user_added_on_one_member_logs_in_on_every_other() {
    let cluster = Cluster::start(3).await.unwrap();
    set_up_with_etcdctl(cluster.member(0)).await;
    for i in 1..3 {
        let url = cluster.member(i).client_url();
        let mut alice = login(&url, "alice", "alicepw").await.unwrap();
        alice.put(format!("app/from-{i}"), "v", None).await.unwrap();
        assert_grpc_error(
            alice.put("cfg", "v", None).await,
            Code::PermissionDenied,
            DENIED,
        );
        let got = alice
            .get("app/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(got.count(), i64::try_from(i).unwrap());
    }
}

#[tokio::test]
async fn with_client_cert_auth_the_certificate_common_name_is_the_user() {
    // The harness's etcdctl shows the test CA's certificate with common name "client".
    let certs = crate::tls::certs();
    let server = crate::tls::https_server(&certs, true).await;
    for args in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "client", "--no-password"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "tls/",
            "--prefix",
        ],
        &["user", "grant-role", "client", "reader"],
        &["auth", "enable"],
    ] {
        ok(&server, args).await;
    }
    ok(&server, &["--user", "root:rootpw", "put", "tls/a", "v"]).await;
    // No token: the certificate names the caller, with the reader role's rights.
    assert_eq!(ok(&server, &["get", "tls/a"]).await, "tls/a\nv\n");
    let put = server.ctl(&["put", "tls/a", "w"]).await.unwrap();
    assert_ne!(put.code, 0);
    assert!(put.stderr.contains(DENIED), "{}", put.stderr);
    // A user without a password cannot log in with one.
    let login = server
        .ctl(&["--user", "client:any", "get", "tls/a"])
        .await
        .unwrap();
    assert_ne!(login.code, 0);
}

#[tokio::test]
#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: etcd does not limit failed authentications"
)]
async fn failed_logins_from_one_address_are_slowed_down() {
    let server = Server::start_with(&[FAST_BCRYPT]).await.unwrap();
    set_up_with_etcdctl(&server).await;
    let url = server.client_url();
    let failed = "etcdserver: authentication failed, invalid user ID or password";
    // Wrong passwords until the limiter refuses one (the answer is the same either way,
    // the log tells): the burst is 10, so it takes more than 10 tries, a few more if the
    // bucket refilled meanwhile on a slow machine.
    let mut tries = 0;
    while !server.log().contains("too many failed authentications") {
        assert!(tries < 40, "no limit after {tries} failed logins");
        let (code, msg) = crate::grpc_error(login(&url, "alice", "guess").await.map(drop));
        assert_eq!((code, msg.as_str()), (Code::InvalidArgument, failed));
        tries += 1;
    }
    assert!(
        tries > 10,
        "limited after {tries} failed logins, within the burst"
    );
    // The burst is spent: even the right password is refused until the bucket refills.
    let (code, msg) = crate::grpc_error(login(&url, "alice", "alicepw").await.map(drop));
    assert_eq!((code, msg.as_str()), (Code::InvalidArgument, failed));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    login(&url, "alice", "alicepw").await.unwrap();
}

#[tokio::test]
async fn an_unknown_token_is_refused_even_with_auth_disabled() {
    use cairn::proto::etcdserverpb::{kv_client::KvClient, RangeRequest};

    let server = Server::start_with(&[FAST_BCRYPT]).await.unwrap();
    let mut kv = KvClient::connect(server.client_url()).await.unwrap();
    let mut req = tonic::Request::new(RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("token", "abcdefghijklmnop.1".parse().unwrap());
    let status = kv.range(req).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );
}

/// A JWT key pair for `--auth-token jwt`: the committed RSA pair (ring, which rcgen uses,
/// cannot generate RSA keys), or an ECDSA P-256 pair made here.
struct JwtKeys {
    _dir: tempfile::TempDir,
    public: String,
    private: String,
}

impl JwtKeys {
    fn rsa() -> JwtKeys {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt");
        JwtKeys {
            _dir: tempfile::tempdir().unwrap(),
            public: format!("{fixtures}/rsa.pub"),
            private: format!("{fixtures}/rsa.key"),
        }
    }

    fn ec_p256() -> JwtKeys {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = dir.path().join("ec.pub");
        let private = dir.path().join("ec.key");
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        JwtKeys {
            public: public.display().to_string(),
            private: private.display().to_string(),
            _dir: dir,
        }
    }

    /// `--auth-token` signing and verifying with `method`; `extra` is appended as is.
    fn flag(&self, method: &str, extra: &str) -> String {
        format!(
            "--auth-token=jwt,pub-key={},priv-key={},sign-method={method}{extra}",
            self.public, self.private
        )
    }

    /// `--auth-token` of a member that only verifies.
    fn verify_only_flag(&self, method: &str) -> String {
        format!(
            "--auth-token=jwt,pub-key={},sign-method={method}",
            self.public
        )
    }
}

/// A JWT's header and claims, decoded without checking the signature.
fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token}");
    let decode = |part: &str| {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
    };
    (decode(parts[0]), decode(parts[1]))
}

/// A Range of `key` on `url` presenting `token` as is, as etcd's clients send it.
async fn get_with_token(url: &str, token: &str, key: &str) -> Result<(), tonic::Status> {
    use cairn::proto::etcdserverpb::{kv_client::KvClient, RangeRequest};

    let mut kv = KvClient::connect(url.to_string()).await.unwrap();
    let mut req = tonic::Request::new(RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    });
    req.metadata_mut().insert("token", token.parse().unwrap());
    kv.range(req).await.map(drop)
}

fn assert_status(result: Result<(), tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err("the request is refused");
    assert_eq!((status.code(), status.message()), (code, message));
}

async fn authenticate(url: &str, user: &str, password: &str) -> String {
    let client = Client::connect([url], None).await.unwrap();
    let resp = client
        .auth_client()
        .authenticate(user.into(), password.into())
        .await
        .unwrap();
    resp.token().to_string()
}

#[tokio::test]
async fn jwt_tokens_carry_etcds_claims_and_work_with_etcdctl() {
    for (keys, method) in [(JwtKeys::rsa(), "RS256"), (JwtKeys::ec_p256(), "ES256")] {
        let server = Server::start_with(&[FAST_BCRYPT, &keys.flag(method, "")])
            .await
            .unwrap();
        set_up_with_etcdctl(&server).await;
        let as_alice = ["--user", "alice:alicepw"];
        ok(&server, &[&as_alice[..], &["put", "app/x", "1"]].concat()).await;
        assert_eq!(
            ok(&server, &[&as_alice[..], &["get", "app/x"]].concat()).await,
            "app/x\n1\n"
        );
        let denied = server
            .ctl(&[&as_alice[..], &["put", "cfg", "v"]].concat())
            .await
            .unwrap();
        assert_ne!(denied.code, 0);
        assert!(denied.stderr.contains(DENIED), "{}", denied.stderr);

        let url = server.client_url();
        let status = ok(&server, &["--user", "root:rootpw", "auth", "status"]).await;
        let revision: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("AuthRevision:"))
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("{status}"));
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = authenticate(&url, "alice", "alicepw").await;
        let (header, claims) = jwt_parts(&token);
        assert_eq!(header["alg"], method, "{header}");
        assert_eq!(claims["username"], "alice", "{claims}");
        assert_eq!(claims["revision"], revision, "{claims}");
        // etcd's default ttl, 5 minutes, from the moment of signing.
        let exp = claims["exp"].as_u64().unwrap();
        assert!(
            (before + 299..=before + 302).contains(&exp),
            "{exp} {before}"
        );
        get_with_token(&url, &token, "cfg").await.unwrap();
    }
}

#[tokio::test]
async fn a_jwt_goes_stale_when_permissions_change_and_dies_at_its_expiry() {
    let keys = JwtKeys::ec_p256();
    let server = Server::start_with(&[FAST_BCRYPT, &keys.flag("ES256", ",ttl=3s")])
        .await
        .unwrap();
    set_up_with_etcdctl(&server).await;
    let url = server.client_url();
    let mut root = login(&url, "root", "rootpw").await.unwrap();
    let token = authenticate(&url, "alice", "alicepw").await;
    get_with_token(&url, &token, "cfg").await.unwrap();

    // A signature that does not match the claims is refused.
    let (head, signature) = token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let forged = format!("{head}.{flipped}{}", &signature[1..]);
    assert_status(
        get_with_token(&url, &forged, "cfg").await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );

    // Any auth change moves the store past the token's revision claim.
    root.role_grant_permission("app", Permission::read("more"))
        .await
        .unwrap();
    assert_status(
        get_with_token(&url, &token, "cfg").await,
        Code::Unknown,
        "auth: revision in header is old",
    );
    let fresh = authenticate(&url, "alice", "alicepw").await;
    get_with_token(&url, &fresh, "cfg").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_status(
        get_with_token(&url, &fresh, "cfg").await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
}

#[tokio::test]
async fn a_jwt_from_one_member_works_on_every_other_and_verify_only_members_cannot_sign() {
    let keys = JwtKeys::rsa();
    let mut options = ClusterOptions::new(3);
    options.extra_args = vec![FAST_BCRYPT.to_string(), keys.flag("PS256", "")];
    let mut cluster = Cluster::start_with(options).await.unwrap();
    set_up_with_etcdctl(cluster.member(0)).await;
    let token = authenticate(&cluster.member(0).client_url(), "alice", "alicepw").await;
    for i in 0..3 {
        get_with_token(&cluster.member(i).client_url(), &token, "cfg")
            .await
            .unwrap();
    }

    // With only the public key, member 2 still accepts tokens but cannot issue them.
    let flag = keys.verify_only_flag("PS256");
    let args = cluster.member_args_mut(2);
    args.retain(|a| !a.starts_with("--auth-token="));
    args.push(flag);
    cluster.restart(2).await.unwrap();
    let url = cluster.member(2).client_url();
    get_with_token(&url, &token, "cfg").await.unwrap();
    let client = Client::connect([url.as_str()], None).await.unwrap();
    let (code, msg) = crate::grpc_error(
        client
            .auth_client()
            .authenticate("alice".into(), "alicepw".into())
            .await,
    );
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::Unknown,
            "auth: token signing attempted with verify-only key"
        )
    );
}

#[tokio::test]
async fn a_missing_jwt_key_file_or_unknown_sign_method_stops_start_up() {
    use cairn_tests::{free_port, run_until_exit, server_args, ServerKind};

    let keys = JwtKeys::ec_p256();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    for (flag, cairn_says) in [
        (
            format!(
                "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256",
                keys.public,
                missing.display()
            ),
            format!("--auth-token: priv-key={}: No such file", missing.display()),
        ),
        (
            // An RSA method with EC keys.
            keys.flag("RS256", ""),
            format!(
                "--auth-token: priv-key={}: not a usable key for RS256",
                keys.private
            ),
        ),
        (
            keys.flag("XS256", ""),
            "invalid auth signature method \"XS256\"".to_string(),
        ),
    ] {
        let kind = ServerKind::from_env();
        let mut args = server_args(
            "jwt",
            &dir.path().join("data"),
            free_port().unwrap(),
            free_port().unwrap(),
        );
        args.push(flag.clone());
        let exited = run_until_exit(kind, &args, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(!exited.status.success(), "{flag}: {}", exited.output);
        // etcd logs the cause and exits with `auth: invalid auth options`.
        if cairn_tests::testing_cairn() {
            assert!(
                exited.output.contains(&cairn_says),
                "{flag}: {}",
                exited.output
            );
        }
    }
}

//! etcd's auth with RBAC: the etcdctl admin flow, each permission boundary through
//! etcd-client, every Auth RPC's refusals, token invalidation, persistence across kill -9
//! and a user made on one member logging in on another. Expectations are etcd 3.5.1's (the
//! same tests pass against it); `--bcrypt-cost=4` (bcrypt's minimum, which etcd accepts)
//! keeps password hashing fast.

use std::time::Duration;

use cairn_tests::cluster::Cluster;
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
    for _ in 0..10 {
        let (code, msg) = crate::grpc_error(login(&url, "alice", "guess").await.map(drop));
        assert_eq!((code, msg.as_str()), (Code::InvalidArgument, failed));
    }
    // The burst is spent: even the right password is refused until the bucket refills.
    let (code, msg) = crate::grpc_error(login(&url, "alice", "alicepw").await.map(drop));
    assert_eq!((code, msg.as_str()), (Code::InvalidArgument, failed));
    assert!(server.log().contains("too many failed authentications"));
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

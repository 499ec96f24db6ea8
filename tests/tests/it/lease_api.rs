//! Lease service through etcd-client: Grant, Revoke, KeepAlive, TimeToLive and Leases, with
//! etcd 3.5.1's error strings, expiry carried out as one revision of deletes, and leases
//! surviving `kill -9`. (etcdctl's lease commands are tested in `lease.rs`.)

use std::time::{Duration, Instant};

use cairn_tests::Server;
use etcd_client::{Client, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};

use crate::{assert_grpc_error, current_revision, rev, Code};

const NOT_FOUND: &str = "etcdserver: requested lease not found";

async fn start() -> (Server, Client) {
    let server = Server::start().await.expect("server starts");
    let client = server.client().await.expect("client connects");
    (server, client)
}

/// Puts `keys` attached to `lease`; returns the revision of the last put.
async fn put_with_lease(client: &mut Client, keys: &[&str], lease: i64) -> i64 {
    let mut last = 0;
    for key in keys {
        let opts = PutOptions::new().with_lease(lease);
        last = rev!(client
            .put(*key, "v", Some(opts))
            .await
            .expect("put with lease"));
    }
    last
}

/// Live keys under `prefix` at `revision` (0: current).
async fn keys_at(client: &mut Client, prefix: &str, revision: i64) -> Vec<String> {
    let opts = GetOptions::new().with_prefix().with_revision(revision);
    let resp = client.get(prefix, Some(opts)).await.expect("range");
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

async fn time_to_live_keys(client: &mut Client, id: i64) -> (i64, i64, Vec<String>) {
    let opts = LeaseTimeToLiveOptions::new().with_keys();
    let resp = client
        .lease_time_to_live(id, Some(opts))
        .await
        .expect("time to live");
    let mut keys: Vec<String> = resp
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort();
    (resp.ttl(), resp.granted_ttl(), keys)
}

#[tokio::test]
async fn grant_time_to_live_leases_and_revoke() {
    let (_server, mut client) = start().await;
    let granted = client.lease_grant(60, None).await.unwrap();
    let id = granted.id();
    assert!(id > 0, "a server-chosen id is positive");
    assert_eq!(granted.ttl(), 60);
    // A TTL below the minimum (1.5 election timeouts, rounded up: 2 s) is raised.
    let short = client
        .lease_grant(1, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    assert_eq!((short.id(), short.ttl()), (0x1234, 2));
    // A lease with no keys is revoked without a new revision (at once: it lives 2 s).
    let now = current_revision(&mut client).await;
    assert_eq!(rev!(client.lease_revoke(0x1234).await.unwrap()), now);
    let idle = client
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1235)))
        .await
        .unwrap()
        .id();

    put_with_lease(&mut client, &["lease/b", "lease/a"], id).await;
    client.put("lease/c", "v", None).await.unwrap();
    let (ttl, granted_ttl, keys) = time_to_live_keys(&mut client, id).await;
    assert!((55..=60).contains(&ttl), "remaining {ttl}");
    assert_eq!(
        (granted_ttl, keys),
        (60, vec!["lease/a".into(), "lease/b".into()])
    );
    let without_keys = client.lease_time_to_live(id, None).await.unwrap();
    assert!(without_keys.keys().is_empty());

    let mut listed: Vec<i64> = client
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    listed.sort_unstable();
    let mut expected = vec![id, idle];
    expected.sort_unstable();
    assert_eq!(listed, expected);

    let before = current_revision(&mut client).await;
    let revoked = client.lease_revoke(id).await.unwrap();
    assert_eq!(
        rev!(revoked),
        before + 1,
        "both keys deleted in one revision"
    );
    assert_eq!(
        keys_at(&mut client, "lease/", before).await,
        ["lease/a", "lease/b", "lease/c"]
    );
    assert_eq!(
        keys_at(&mut client, "lease/", before + 1).await,
        ["lease/c"]
    );

    // Gone: TimeToLive answers TTL -1, revoke and keep-alive "not found" / TTL 0.
    let gone = client.lease_time_to_live(id, None).await.unwrap();
    assert_eq!((gone.id(), gone.ttl(), gone.granted_ttl()), (id, -1, 0));
    assert_grpc_error(client.lease_revoke(id).await, Code::NotFound, NOT_FOUND);
    // etcd-client reads the first keep-alive reply itself and turns TTL 0 into this error.
    match client.lease_keep_alive(id).await {
        Err(etcd_client::Error::LeaseKeepAliveError(msg)) => assert_eq!(msg, "lease not found"),
        other => panic!("keep-alive of a revoked lease: {other:?}"),
    }

    let now = current_revision(&mut client).await;
    assert_eq!(rev!(client.lease_revoke(idle).await.unwrap()), now);
    assert!(client.leases().await.unwrap().leases().is_empty());
}

#[tokio::test]
async fn lease_errors_have_etcds_codes_and_messages() {
    let (_server, mut client) = start().await;
    let with_id = |id| Some(LeaseGrantOptions::new().with_id(id));
    client.lease_grant(30, with_id(42)).await.unwrap();
    assert_grpc_error(
        client.lease_grant(30, with_id(42)).await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_grpc_error(
        client.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    assert_grpc_error(client.lease_revoke(43).await, Code::NotFound, NOT_FOUND);
    assert_grpc_error(
        client
            .put("k", "v", Some(PutOptions::new().with_lease(43)))
            .await,
        Code::NotFound,
        NOT_FOUND,
    );
    // The refusals changed nothing.
    assert_eq!(current_revision(&mut client).await, 1);
    let listed: Vec<i64> = client
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(listed, [42]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_vanish_after_the_last_keep_alive_in_one_revision() {
    let (_server, mut client) = start().await;
    let id = client.lease_grant(2, None).await.unwrap().id();
    let last_put = put_with_lease(&mut client, &["exp/a", "exp/b", "exp/c"], id).await;

    // Kept alive for longer than its TTL, it stays. (etcd-client reads the first reply.)
    let (mut keeper, mut stream) = client.lease_keep_alive(id).await.unwrap();
    let mut last_renew = Instant::now();
    let kept_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < kept_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        keeper.keep_alive().await.unwrap();
        let reply = stream.message().await.unwrap().expect("reply");
        last_renew = Instant::now();
        assert_eq!((reply.id(), reply.ttl()), (id, 2));
    }
    assert_eq!(keys_at(&mut client, "exp/", 0).await.len(), 3, "kept alive");
    drop((keeper, stream));

    // Then it expires: the keys go soon after the TTL from the last keep-alive (expiry is
    // checked every 0.5 s; the bound leaves room for a loaded machine).
    while !keys_at(&mut client, "exp/", 0).await.is_empty() {
        assert!(
            last_renew.elapsed() < Duration::from_secs(5),
            "keys still there {:?} after the last keep-alive",
            last_renew.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // All three deleted by one revision, the first after the puts.
    let deleted_at = current_revision(&mut client).await;
    assert_eq!(deleted_at, last_put + 1);
    assert_eq!(keys_at(&mut client, "exp/", deleted_at - 1).await.len(), 3);
    let gone = client.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_their_keys_survive_kill_9() {
    let (mut server, mut client) = start().await;
    let id = client.lease_grant(30, None).await.unwrap().id();
    put_with_lease(&mut client, &["keep/a"], id).await;
    server.restart().await.unwrap();
    let mut client = server.client().await.unwrap();
    // etcd does not persist the remaining TTL: it starts over at the full TTL.
    let (ttl, granted, keys) = time_to_live_keys(&mut client, id).await;
    assert!((25..=31).contains(&ttl), "remaining {ttl} after restart");
    assert_eq!((granted, keys), (30, vec!["keep/a".to_string()]));
    let (mut keeper, mut stream) = client.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(stream.message().await.unwrap().expect("reply").ttl(), 30);
    let revoked = client.lease_revoke(id).await.unwrap();
    assert_eq!(keys_at(&mut client, "keep/", rev!(revoked)).await.len(), 0);
}

#[tokio::test]
async fn txn_checks_the_lease_of_the_chosen_branch_only() {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let (_server, mut client) = start().await;
    let unknown = || TxnOp::put("t", "v", Some(PutOptions::new().with_lease(77)));
    // The put naming an unknown lease is in the branch not taken: the txn succeeds.
    let missing = Compare::version("nothing", CompareOp::Greater, 0);
    let resp = client
        .txn(
            Txn::new()
                .when([missing.clone()])
                .and_then([unknown()])
                .or_else([TxnOp::put("t", "v", None)]),
        )
        .await
        .unwrap();
    assert!(!resp.succeeded());
    // In the branch taken it is refused, and nothing of the txn is applied.
    let before = current_revision(&mut client).await;
    assert_grpc_error(
        client
            .txn(
                Txn::new()
                    .when([missing])
                    .or_else([TxnOp::put("u", "v", None), unknown()]),
            )
            .await,
        Code::NotFound,
        NOT_FOUND,
    );
    assert_eq!(current_revision(&mut client).await, before);
}

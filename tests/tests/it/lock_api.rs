//! The v3lock and v3election gRPC services through etcd-client. (`etcdctl lock` and `elect`
//! use the client-side recipes instead; they are tested in `lock_elect.rs`.)

use std::time::Duration;

use cairn_tests::Server;
use etcd_client::{Client, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};

use crate::{assert_grpc_error, rev, Code};

async fn start() -> (Server, Client) {
    let server = Server::start().await.expect("server starts");
    let client = server.client().await.expect("client connects");
    (server, client)
}

async fn lease(client: &mut Client, ttl: i64) -> i64 {
    client
        .lease_grant(ttl, None)
        .await
        .expect("lease grant")
        .id()
}

#[tokio::test]
async fn a_second_lock_waits_for_unlock() {
    let (_server, mut client) = start().await;
    let (a, b) = (lease(&mut client, 30).await, lease(&mut client, 30).await);
    let first = client
        .lock("mylock", Some(LockOptions::new().with_lease(a)))
        .await
        .expect("first lock");
    assert_eq!(first.key(), format!("mylock/{a:x}").as_bytes());

    let mut second_client = client.clone();
    let second = tokio::spawn(async move {
        second_client
            .lock("mylock", Some(LockOptions::new().with_lease(b)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!second.is_finished(), "the second lock must wait");

    let unlocked = client.unlock(first.key()).await.expect("unlock");
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("second lock acquired after unlock")
        .expect("join")
        .expect("second lock");
    assert_eq!(second.key(), format!("mylock/{b:x}").as_bytes());
    // The waiter's answer comes after the unlock's revision.
    assert!(
        rev!(second) >= rev!(unlocked),
        "{} < {}",
        rev!(second),
        rev!(unlocked)
    );
}

#[tokio::test]
async fn a_lock_is_released_when_its_lease_is_revoked() {
    let (_server, mut client) = start().await;
    let (a, b) = (lease(&mut client, 30).await, lease(&mut client, 30).await);
    client
        .lock("l", Some(LockOptions::new().with_lease(a)))
        .await
        .expect("first lock");
    let mut other = client.clone();
    let waiter = tokio::spawn(async move {
        other
            .lock("l", Some(LockOptions::new().with_lease(b)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.lease_revoke(a).await.expect("revoke");
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("lock acquired after revoke")
        .expect("join")
        .expect("lock");
    assert_eq!(got.key(), format!("l/{b:x}").as_bytes());
}

#[tokio::test]
async fn a_lock_without_a_lease_gets_a_session_lease() {
    let (_server, mut client) = start().await;
    let resp = client.lock("nolease", None).await.expect("lock");
    let key = String::from_utf8(resp.key().to_vec()).expect("utf8 key");
    let hex = key
        .strip_prefix("nolease/")
        .expect("key under the lock name");
    let id = i64::from_str_radix(hex, 16).expect("hex lease id");
    let ttl = client.lease_time_to_live(id, None).await.expect("ttl");
    assert_eq!(ttl.granted_ttl(), 60);
    let kv = client.get(key.as_str(), None).await.expect("get");
    assert_eq!(kv.kvs()[0].lease(), id);
}

#[tokio::test]
async fn campaign_proclaim_observe_and_resign() {
    let (_server, mut client) = start().await;
    let (a, b) = (lease(&mut client, 30).await, lease(&mut client, 30).await);
    let won = client
        .campaign("myelection", "v1", a)
        .await
        .expect("campaign");
    let leader: LeaderKey = won.leader().expect("leader key").clone();
    assert_eq!(leader.name(), b"myelection");
    assert_eq!(leader.key(), format!("myelection/{a:x}").as_bytes());
    assert_eq!(leader.lease(), a);
    assert_eq!(leader.rev(), rev!(won));

    let now = client.leader("myelection").await.expect("leader");
    assert_eq!(now.kv().expect("kv").value(), b"v1");

    let mut observe = client.observe("myelection").await.expect("observe");
    let first = tokio::time::timeout(Duration::from_secs(5), observe.message())
        .await
        .expect("observe answers")
        .expect("stream")
        .expect("a message");
    assert_eq!(first.kv().expect("kv").value(), b"v1");

    client
        .proclaim(
            "v2",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .expect("proclaim");
    let second = tokio::time::timeout(Duration::from_secs(5), observe.message())
        .await
        .expect("observe reports the proclamation")
        .expect("stream")
        .expect("a message");
    assert_eq!(second.kv().expect("kv").value(), b"v2");

    let mut challenger = client.clone();
    let campaign = tokio::spawn(async move { challenger.campaign("myelection", "b1", b).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !campaign.is_finished(),
        "the challenger waits for the leader to go"
    );

    client
        .resign(Some(ResignOptions::new().with_leader(leader.clone())))
        .await
        .expect("resign");
    let b_won = tokio::time::timeout(Duration::from_secs(5), campaign)
        .await
        .expect("challenger elected")
        .expect("join")
        .expect("campaign");
    assert_eq!(
        b_won.leader().expect("leader").key(),
        format!("myelection/{b:x}").as_bytes()
    );
    let third = tokio::time::timeout(Duration::from_secs(5), observe.message())
        .await
        .expect("observe reports the new leader")
        .expect("stream")
        .expect("a message");
    assert_eq!(third.kv().expect("kv").value(), b"b1");

    // The old leader key no longer leads.
    assert_grpc_error(
        client
            .proclaim("stale", Some(ProclaimOptions::new().with_leader(leader)))
            .await,
        Code::Unknown,
        "election: not leader",
    );
}

#[tokio::test]
async fn leader_of_an_empty_election_is_an_error() {
    let (_server, mut client) = start().await;
    assert_grpc_error(
        client.leader("nobody").await,
        Code::Unknown,
        "election: no leader",
    );
}

//! Lease checkpoints (etcd's `--experimental-enable-lease-checkpoint`, on by default in
//! cairn): a lease keeps its remaining TTL when the leader is killed, instead of getting its
//! full TTL again from the new leader, and still expires on time.

use std::time::Duration;

use cairn_tests::cluster::{Cluster, ClusterOptions, LEADER_TIMEOUT};
use etcd_client::{GetOptions, PutOptions};
use tokio::time::{sleep, Instant};

/// The granted TTL: long enough to tell "remaining" from "reset" after a failover.
const TTL: i64 = 30;
/// How long the lease runs before the leader is killed: several checkpoint intervals.
const BEFORE_KILL: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: etcd 3.5.1 has no flag to shorten its 5 min lease checkpoint interval"
)]
async fn a_lease_keeps_its_remaining_ttl_when_the_leader_is_killed() {
    let mut options = ClusterOptions::new(3);
    options.extra_args = vec![
        "--experimental-enable-lease-checkpoint=true".into(),
        "--experimental-lease-checkpoint-interval=1s".into(),
    ];
    let mut cluster = Cluster::start_with(options).await.expect("cluster starts");
    let leader = cluster.leader().await.expect("leader");
    let mut client = cluster.client(leader).await.expect("client");
    let granted_at = Instant::now();
    let lease = client.lease_grant(TTL, None).await.expect("grant").id();
    let put = PutOptions::new().with_lease(lease);
    client.put("leased", "v", Some(put)).await.expect("put");
    sleep(BEFORE_KILL).await;

    cluster.kill9(leader).expect("kill -9 the leader");
    // The survivors name the killed leader until they elect another.
    let deadline = Instant::now() + LEADER_TIMEOUT;
    let next = loop {
        match cluster.current_leader().await {
            Some(next) if next != leader => break next,
            _ if Instant::now() < deadline => sleep(Duration::from_millis(100)).await,
            other => panic!("no new leader within {LEADER_TIMEOUT:?}: {other:?}"),
        }
    };
    let mut client = cluster.client(next).await.expect("client");
    // A new leader answers "not leader" to lease calls until its lessor is promoted, on
    // its next expiry tick (500 ms).
    let ttl = loop {
        match client.lease_time_to_live(lease, None).await {
            Err(etcd_client::Error::GRpcStatus(s))
                if s.message() == "etcdserver: not leader" && Instant::now() < deadline =>
            {
                sleep(Duration::from_millis(100)).await
            }
            other => break other.expect("time to live"),
        }
    };
    let left = TTL - i64::try_from(granted_at.elapsed().as_secs()).unwrap();
    assert_eq!(ttl.granted_ttl(), TTL);
    // Without checkpoints the new leader reports the full TTL again (plus the election
    // timeout). With them: what is left, give or take the failover and one interval.
    assert!(
        ttl.ttl() < TTL - 2 && (left - 1..=left + 4).contains(&ttl.ttl()),
        "remaining {} s with about {left} s left of {TTL} s",
        ttl.ttl()
    );

    // The lease expires on time on the new leader, deleting its key.
    let limit = granted_at + Duration::from_secs(u64::try_from(TTL).unwrap() + 5);
    loop {
        let got = client
            .get("leased", Some(GetOptions::new().with_count_only()))
            .await
            .expect("get");
        if got.count() == 0 {
            break;
        }
        assert!(
            Instant::now() < limit,
            "the lease's key outlived its TTL by 5 s"
        );
        sleep(Duration::from_millis(200)).await;
    }
    let expired_after = granted_at.elapsed();
    assert!(
        expired_after >= Duration::from_secs(u64::try_from(TTL).unwrap() - 1),
        "expired early, after {expired_after:?}"
    );
    let ttl = client.lease_time_to_live(lease, None).await.expect("ttl");
    assert_eq!(ttl.ttl(), -1, "the lease is gone");
}

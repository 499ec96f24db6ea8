//! Lease checkpoints (etcd's `--experimental-enable-lease-checkpoint`, on by default in
//! cairn): a lease keeps its remaining TTL when the leader is killed, instead of getting its
//! full TTL again from the new leader, and still expires on time.

use std::time::Duration;

use cairn_tests::cluster::{Cluster, ClusterOptions, LEADER_TIMEOUT};
use etcd_client::{GetOptions, PutOptions};
use tokio::time::{sleep, Instant};

use crate::Code;

/// The granted TTL: long enough to tell "remaining" from "reset" after a failover.
const TTL: i64 = 30;
/// How long the lease runs before the leader is killed: several checkpoint intervals.
const BEFORE_KILL: Duration = Duration::from_secs(6);
/// The checkpoint interval.
const INTERVAL: Duration = Duration::from_secs(1);
/// How old the survivors' last checkpoint may be at the kill: the next one is proposed one
/// interval after the previous one applied (on the lessor's 500 ms tick, as in etcd), and
/// followers learn that it committed with the leader's next message.
const STALENESS: Duration = Duration::from_secs(2 * INTERVAL.as_secs());
/// etcd's default election timeout (heartbeat 100 ms): fewer spurious elections on a loaded
/// machine than the harness's short default.
const ELECTION: Duration = Duration::from_millis(1000);
/// What a promotion gives every lease beyond its checkpointed TTL: the election timeout
/// (etcd's `extend`), plus the lessor's expiry tick and one second of whole-second rounding.
const SLACK: Duration = Duration::from_millis(ELECTION.as_millis() as u64 + 500 + 1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: etcd 3.5.1 has no flag to shorten its 5 min lease checkpoint interval"
)]
async fn a_lease_keeps_its_remaining_ttl_when_the_leader_is_killed() {
    let mut options = ClusterOptions::new(3);
    options.heartbeat = ELECTION / 10;
    options.election_timeout = ELECTION;
    options.extra_args = vec![
        "--experimental-enable-lease-checkpoint=true".into(),
        format!(
            "--experimental-lease-checkpoint-interval={}s",
            INTERVAL.as_secs()
        ),
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
    let killed_at = Instant::now();
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
    // A leader elected a moment ago answers, not "not leader": a request that arrives
    // before its lessor is promoted (by the expiry loop, within 500 ms) waits for that, as
    // etcd's waits for a leader.
    let ttl = client
        .lease_time_to_live(lease, None)
        .await
        .expect("time to live from a new leader");
    // Its leases restart from their last checkpoint, so they get the failover time back (as
    // in etcd): that bounds how late they may expire.
    let failover = killed_at.elapsed();
    let late = failover + STALENESS + SLACK;
    let promoted_term = ttl.header().expect("header").raft_term();
    let left = TTL - i64::try_from(granted_at.elapsed().as_secs()).unwrap();
    assert_eq!(ttl.granted_ttl(), TTL);
    // Without checkpoints the new leader reports the full TTL again (plus the election
    // timeout). With them: what is left, give or take the failover and the staleness.
    let most = left + i64::try_from(late.as_secs()).unwrap() + 1;
    assert!(
        ttl.ttl() < TTL - 2 && (left - 1..=most).contains(&ttl.ttl()),
        "remaining {} s with about {left} s left of {TTL} s (failover took {failover:?})",
        ttl.ttl()
    );

    // The lease expires on the new leader no later than the failover allows, deleting its
    // key. A spurious election on a loaded machine promotes a leader again, which gives the
    // lease back up to one interval, the slack and the election's own time.
    let expected = granted_at + Duration::from_secs(u64::try_from(TTL).unwrap()) + late;
    let per_election = STALENESS + SLACK + 2 * ELECTION;
    loop {
        let read = client
            .get("leased", Some(GetOptions::new().with_count_only()))
            .await;
        let got = match read {
            Ok(got) => got,
            // A leader that cannot reach a quorum for a while (the survivors starved on a
            // loaded machine) answers reads "request timed out" (Unavailable), which etcd's
            // clients retry; how late the key may go is still bounded below.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == Code::Unavailable
                    && Instant::now() < expected + per_election * 3 =>
            {
                eprintln!("get refused, retrying: {}", status.message());
                sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => panic!("get: {e:?}"),
        };
        if got.count() == 0 {
            break;
        }
        let elections = got.header().expect("header").raft_term() - promoted_term;
        let limit = expected + per_election * u32::try_from(elections).unwrap();
        assert!(
            Instant::now() < limit,
            "the lease's key outlived its TTL by more than {late:?} (failover took {failover:?}, \
             {elections} election(s) since)"
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

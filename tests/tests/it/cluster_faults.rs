//! Cluster fault tests: concurrent clients put, get and compare-and-swap on a few keys of a
//! 3-member (and a 5-member) cluster while members are killed with `kill -9` and restarted,
//! frozen with SIGSTOP, or partitioned from each other by the peer proxies. Afterwards the
//! recorded history must be linearizable, every member must hold the same revision history,
//! and every acknowledged write must be in it at its acknowledged revision.
//!
//! Each scenario runs its faults for [`FAULT_TIME`] plus a short healed tail, about 25 s in
//! all with start-up and checks.

use std::time::Duration;

use cairn_tests::cluster::{Cluster, LEADER_TIMEOUT};
use cairn_tests::history::{Call, History, Nanos, Outcome, Output, Recorder};
use cairn_tests::linearizability::{check, Limits};
use cairn_tests::proxy::{LinkFault, NodeId};
use cairn_tests::workload::{check_durability, execute, read_back, Workload};
use etcd_client::{Client, ConnectOptions, GetOptions};
use tokio::time::{sleep, Instant};

/// How long faults are injected in each scenario.
const FAULT_TIME: Duration = Duration::from_secs(16);
/// Load on the healed cluster before the clients stop: the cluster must serve again.
const HEALED_TIME: Duration = Duration::from_secs(2);

/// Starts a cluster of `members`, runs the workload while `inject` runs rounds of faults
/// until the deadline (it must leave every member running and the network healed), then
/// checks the history and the members' stores.
async fn scenario(members: usize, inject: impl AsyncFnMut(&mut Cluster) -> anyhow::Result<()>) {
    scenario_for(members, FAULT_TIME, inject).await;
}

/// [`scenario`] with faults for `fault_time`.
async fn scenario_for(
    members: usize,
    fault_time: Duration,
    inject: impl AsyncFnMut(&mut Cluster) -> anyhow::Result<()>,
) {
    let mut inject = inject;
    let mut cluster = Cluster::start(members).await.expect("cluster starts");
    let recorder = Recorder::new();
    let workload = Workload::default();
    let clients = workload.start(cluster.client_urls(), &recorder);
    let deadline = Instant::now() + fault_time;
    let mut rounds = 0;
    while Instant::now() < deadline {
        inject(&mut cluster).await.expect("fault round");
        rounds += 1;
    }
    cluster.heal();
    cluster.leader().await.expect("a leader after healing");
    let healed_at = recorder.now();
    sleep(HEALED_TIME).await;
    // On a slow machine the first write after healing may come later (a client's request
    // to a member it lost first runs into its timeout): wait for one, up to 20 s.
    let waited_until = Instant::now() + Duration::from_secs(20);
    while acked_after(&recorder.history(), healed_at) == 0 && Instant::now() < waited_until {
        sleep(Duration::from_millis(100)).await;
    }
    clients.stop().await.expect("clients stop");
    read_back(&cluster, &workload.keys(), &recorder)
        .await
        .expect("every member serves every key");

    let history = recorder.history();
    let tally = history.tally();
    let report = check(&history, Limits::default());
    eprintln!("{rounds} fault rounds; {tally}\n{report}");
    assert!(report.is_linearizable(), "{report}");
    let durability = check_durability(&cluster, &history)
        .await
        .expect("no acknowledged write lost");
    eprintln!("{durability:?}");
    assert!(
        tally.acknowledged_writes >= 20,
        "too little progress under faults: {tally}"
    );
    assert!(
        acked_after(&history, healed_at) > 0,
        "no write acknowledged after healing"
    );
}

/// Writes invoked after `at` and acknowledged.
fn acked_after(history: &History, at: Nanos) -> usize {
    history
        .acknowledged_writes()
        .filter(|op| op.invoked > at)
        .count()
}

/// A member that is not `leader`.
fn follower(cluster: &Cluster, leader: NodeId) -> NodeId {
    (leader + 1) % cluster.size()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_while_members_are_killed_and_restarted() {
    let mut kill_leader = true;
    scenario(3, async |cluster: &mut Cluster| {
        let leader = cluster.leader().await?;
        // Alternately the leader and a follower, so both recoveries are exercised.
        let victim = if kill_leader {
            leader
        } else {
            follower(cluster, leader)
        };
        kill_leader = !kill_leader;
        cluster.kill9(victim)?;
        sleep(Duration::from_secs(1)).await;
        cluster.restart(victim).await?;
        sleep(Duration::from_secs(2)).await;
        Ok(())
    })
    .await;
}

/// Kill-and-restart rounds of [`a_restarted_leader_reads_what_it_acknowledged`]: each
/// restarted leader has about a one-in-three chance to answer before it learns the commit
/// index from its followers, which is when a stale answer shows.
const RESTART_ROUNDS: usize = 10;

/// A leader killed right after acknowledging writes and restarted at once (before the
/// others elect another, which takes them about a second) serves, on its first linearizable
/// read, the last write it acknowledged. Its state database is not fsynced on apply and
/// its commit index is saved lazily, so it restarts behind writes it acknowledged; a leader
/// that resumed its term without an election answered from there (the last put's
/// predecessor, one revision back), which the fault tests saw as a non-linearizable history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_reads_what_it_acknowledged() {
    let mut cluster = Cluster::start(3).await.expect("cluster starts");
    for round in 0..RESTART_ROUNDS {
        let leader = cluster.leader().await.expect("a leader");
        let mut client = cluster.client(leader).await.expect("client");
        // What a read must answer afterwards: the last put's value and revision.
        let mut acknowledged = (Output::Get(None), 0);
        for i in 0..30 {
            let value = format!("round{round}-{i}");
            let put = Call::Put {
                value: value.clone(),
            };
            let (_, revision) = execute(&mut client, "key", &put).await.expect("put");
            acknowledged = (Output::Get(Some(value)), revision);
        }
        cluster.kill9(leader).expect("kill -9 the leader");
        cluster.relaunch(leader).expect("restart it");
        let url = cluster.member(leader).client_url();
        let read = first_read(&url, "key")
            .await
            .expect("the restarted leader answers");
        assert_eq!(
            read, acknowledged,
            "round {round}: the first read of the restarted leader"
        );
        cluster.wait_ready(leader).await.expect("it serves again");
    }
}

/// The first answer `url` gives to a linearizable get of `key`, asked as soon as it accepts
/// connections and again after every error (refused, no leader yet).
async fn first_read(url: &str, key: &str) -> anyhow::Result<(Output, i64)> {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(10));
        let answer = match Client::connect([url], Some(options)).await {
            Ok(mut client) => execute(&mut client, key, &Call::Get).await,
            Err(e) => Err(e.into()),
        };
        match answer {
            Ok(read) => return Ok(read),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Peer links slower than the heartbeat interval (50 ms here; 40 ms each way plus a
/// follower's fsync) still carry the log, as etcd's do: a loaded machine's fsyncs take that
/// long too. Each replication RPC once had the heartbeat interval as its deadline, so no
/// entry committed and every write timed out ("request timed out"); under load that turned
/// lease revokes and the fault tests' writes into timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_over_links_slower_than_the_heartbeat() {
    let cluster = Cluster::start(3).await.expect("cluster starts");
    for from in 0..cluster.size() {
        for to in (0..cluster.size()).filter(|&to| to != from) {
            let delay = LinkFault::Delay(Duration::from_millis(40));
            cluster.network().set(from, to, delay);
        }
    }
    let leader = cluster.leader().await.expect("a leader");
    let mut client = cluster.client(leader).await.expect("client");
    let mut revisions = Vec::new();
    for i in 0..5 {
        let put = Call::Put {
            value: format!("v{i}"),
        };
        let (_, revision) = execute(&mut client, "key", &put)
            .await
            .expect("a put commits over slow links");
        revisions.push(revision);
    }
    // One revision each, in order. (Linearizable reads are left out: they need heartbeats,
    // which openraft itself times out after the heartbeat interval.)
    let first = revisions[0];
    assert_eq!(revisions, (first..first + 5).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_while_the_leader_is_frozen() {
    scenario(3, async |cluster: &mut Cluster| {
        let leader = cluster.leader().await?;
        cluster.pause(leader)?;
        // Several election timeouts: the others elect a new leader meanwhile, and the old
        // one wakes up believing it still leads.
        sleep(Duration::from_secs(2)).await;
        cluster.resume(leader)?;
        sleep(Duration::from_secs(2)).await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_with_a_follower_partitioned_away() {
    scenario(3, async |cluster: &mut Cluster| {
        let leader = cluster.leader().await?;
        let minority = follower(cluster, leader);
        let majority: Vec<NodeId> = (0..cluster.size()).filter(|&m| m != minority).collect();
        // Cut (connections reset) rather than black-holed: the other way links fail.
        cluster
            .network()
            .split(&[minority], &majority, LinkFault::Cut);
        sleep(Duration::from_secs(3)).await;
        cluster.heal();
        sleep(Duration::from_secs(2)).await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_with_the_leader_partitioned_away() {
    scenario(3, async |cluster: &mut Cluster| {
        let old = cluster.leader().await?;
        cluster.isolate(old);
        // The majority must elect a leader of its own while the old one is cut off.
        let deadline = Instant::now() + Duration::from_secs(10);
        let new = loop {
            match cluster.current_leader().await {
                Some(new) if new != old => break new,
                _ if Instant::now() > deadline => anyhow::bail!("majority elected no new leader"),
                _ => sleep(Duration::from_millis(100)).await,
            }
        };
        assert_ne!(new, old);
        sleep(Duration::from_secs(2)).await;
        cluster.heal();
        sleep(Duration::from_secs(2)).await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_survive_a_partition_and_a_kill() {
    scenario(5, async |cluster: &mut Cluster| {
        let leader = cluster.leader().await?;
        let minority = [leader, follower(cluster, leader)];
        let majority: Vec<NodeId> = (0..5).filter(|m| !minority.contains(m)).collect();
        cluster.partition(&minority, &majority);
        sleep(Duration::from_secs(3)).await;
        cluster.heal();
        let victim = majority[0];
        cluster.kill9(victim)?;
        sleep(Duration::from_secs(1)).await;
        cluster.restart(victim).await?;
        sleep(Duration::from_secs(1)).await;
        Ok(())
    })
    .await;
}

/// The harness must see what it exists to see: a member cut off from the others still
/// answers serializable reads from its own stale store, and the checker rejects the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_rejects_stale_reads_from_an_isolated_member() {
    let cluster = Cluster::start(3).await.expect("cluster starts");
    let leader = cluster.leader().await.unwrap();
    let isolated = follower(&cluster, leader);
    let mut writer = cluster.client(leader).await.unwrap();
    let mut stale = cluster.client(isolated).await.unwrap();
    let recorder = Recorder::new();
    let put = async |client: &mut Client, value: &str| {
        let call = Call::Put {
            value: value.to_string(),
        };
        let invocation = recorder.invoke(0, "key0", call.clone());
        let (output, revision) = execute(client, "key0", &call).await.unwrap();
        invocation.finish(Outcome::Ok(output), Some(revision));
    };
    put(&mut writer, "old").await;
    // Wait until the member to be isolated has applied "old".
    let serializable = || Some(GetOptions::new().with_serializable());
    let deadline = Instant::now() + Duration::from_secs(10);
    while stale
        .get("key0", serializable())
        .await
        .unwrap()
        .kvs()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "member {isolated} never applied the put"
        );
        sleep(Duration::from_millis(50)).await;
    }

    cluster.isolate(isolated);
    put(&mut writer, "new").await;
    let read = recorder.invoke(1, "key0", Call::Get);
    let resp = stale.get("key0", serializable()).await.unwrap();
    let seen = resp
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    assert_eq!(seen.as_deref(), Some("old"), "the isolated member is stale");
    read.finish(Outcome::Ok(Output::Get(seen)), None);

    let report = check(&recorder.history(), Limits::default());
    eprintln!("{report}");
    let (key, violation) = report
        .violations()
        .next()
        .expect("the stale read is caught");
    assert_eq!(key, "key0");
    assert_eq!(violation.stuck[0].client, 1, "{report}");
    assert_eq!(violation.value.as_deref(), Some("new"), "{report}");
}

/// The same harness on a single member, which cairn runs today: `kill -9` and restart under
/// load, then the history must be linearizable and every acknowledged write kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_member_is_linearizable_across_kill_9() {
    scenario_for(1, Duration::from_secs(8), async |cluster: &mut Cluster| {
        sleep(Duration::from_secs(1)).await;
        cluster.kill9(0)?;
        sleep(Duration::from_millis(500)).await;
        cluster.restart(0).await?;
        sleep(Duration::from_secs(1)).await;
        Ok(())
    })
    .await;
}

//! Three-member clusters started with the seed documents' flags (`--initial-cluster`,
//! `--initial-cluster-token`, `--initial-cluster-state new`, `--initial-advertise-peer-urls`,
//! `--listen-peer-urls`), all on 127.0.0.1, driven by etcdctl and etcd-client, each bounded
//! in time. The expectations hold for etcd 3.5.1 too (`CAIRN_TEST_SERVER=etcd`).
//!
//! The cluster helper here is private to this module (the shared harness lives in
//! `cairn_tests::cluster`).

use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_tests::{free_port, server_command, Server, ServerKind};
use etcd_client::GetOptions;

use crate::{assert_grpc_error, ok, Code};

pub(crate) const TOKEN: &str = "etcd-cluster-1";
/// How long a cluster may take to elect a leader again, generously (etcd: about 1-2 s).
const FAILOVER_LIMIT: Duration = Duration::from_secs(20);

/// The peer ports and the `--initial-cluster` value of a cluster of `n` members.
pub(crate) struct Plan {
    pub(crate) peer_ports: Vec<u16>,
    pub(crate) initial_cluster: String,
}

impl Plan {
    pub(crate) fn new(n: usize) -> Result<Plan> {
        let peer_ports = (0..n).map(|_| free_port()).collect::<Result<Vec<_>>>()?;
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("infra{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Plan {
            peer_ports,
            initial_cluster,
        })
    }

    /// Member `i`'s command line, as the seeds write it.
    pub(crate) fn args(
        &self,
        i: usize,
        token: &str,
        client_port: u16,
        data_dir: &std::path::Path,
    ) -> Vec<String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_ports[i]);
        let client = format!("http://127.0.0.1:{client_port}");
        vec![
            format!("--name=infra{i}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}", self.initial_cluster),
            format!("--initial-cluster-token={token}"),
            "--initial-cluster-state=new".to_string(),
            // Fast elections keep the tests short (etcd's ratio: 5 heartbeats per election).
            "--heartbeat-interval=50".to_string(),
            "--election-timeout=500".to_string(),
        ]
    }
}

/// Starts all members at once (none is ready before a quorum runs).
pub(crate) async fn start_cluster(plan: &Plan) -> Result<Vec<Server>> {
    let start = |i: usize| {
        Server::start_custom(move |layout| {
            Ok(plan.args(i, TOKEN, layout.client_port, &layout.data_dir))
        })
    };
    let (a, b, c) = tokio::try_join!(start(0), start(1), start(2))?;
    Ok(vec![a, b, c])
}

/// `endpoint status` of one member as JSON: (member id, leader id, raft term).
pub(crate) async fn status(member: &Server) -> Result<(u64, u64, u64)> {
    let out = member.ctl(&["endpoint", "status", "-w", "json"]).await?;
    let v: serde_json::Value = serde_json::from_str(out.success()?)?;
    let s = &v[0]["Status"];
    let header = &s["header"];
    Ok((
        header["member_id"].as_u64().unwrap_or(0),
        s["leader"].as_u64().unwrap_or(0),
        s["raft_term"].as_u64().unwrap_or(0),
    ))
}

/// The index in `members` of the leader, once all running members agree on one.
pub(crate) async fn leader(members: &[Server]) -> usize {
    let deadline = Instant::now() + FAILOVER_LIMIT;
    loop {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for m in members {
            match status(m).await {
                Ok((id, leader, _)) => {
                    ids.push(id);
                    leaders.push(leader);
                }
                Err(_) => ids.push(0),
            }
        }
        leaders.dedup();
        if let [l] = leaders[..] {
            if let Some(i) = ids.iter().position(|id| *id == l && l != 0) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:x?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn three_members_serve_a_put_on_one_and_gets_on_the_others() {
    let plan = Plan::new(3).unwrap();
    let members = start_cluster(&plan).await.unwrap();
    let leader = leader(&members).await;
    let follower = (leader + 1) % 3;

    // A write on a follower is forwarded to the leader; linearizable reads on every member
    // see it.
    assert_eq!(
        ok(&members[follower], &["put", "greeting", "hello"])
            .await
            .trim(),
        "OK"
    );
    for m in &members {
        assert_eq!(
            ok(m, &["get", "greeting", "--print-value-only"])
                .await
                .trim(),
            "hello"
        );
    }
    // A serializable read on a member is local; it catches up shortly.
    let mut client = members[(leader + 2) % 3].client().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = client
            .get("greeting", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        if resp.kvs().len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serializable read never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A watch on a follower sees every revision written through the leader, in order.
    let mut watcher = members[follower].client().await.unwrap();
    let mut stream = crate::watch_prefix(&mut watcher, "w/").await;
    let mut writer = members[leader].client().await.unwrap();
    let mut written = Vec::new();
    for i in 0..20 {
        written.push(crate::rev!(writer
            .put(format!("w/{i}"), "x", None)
            .await
            .unwrap()));
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < written.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let resp = tokio::time::timeout(left, stream.message())
            .await
            .expect("watch events on the follower in time")
            .unwrap()
            .unwrap();
        seen.extend(
            resp.events()
                .iter()
                .filter_map(|e| e.kv())
                .map(|kv| kv.mod_revision()),
        );
    }
    assert_eq!(seen, written);

    // The raft and peer metrics are etcd's, on a follower too.
    let (_, text) = members[follower].http_get("/metrics").await.unwrap();
    let samples = cairn_tests::parse_metrics(&text);
    let value = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
    assert_eq!(value("etcd_server_has_leader"), Some(1.0));
    assert_eq!(value("etcd_server_is_leader"), Some(0.0));
    // (etcd measures the round-trip time with a prober every 30 s, so it is not asked here.)
    for name in [
        "etcd_network_peer_sent_bytes_total",
        "etcd_network_peer_received_bytes_total",
    ] {
        assert!(
            samples
                .iter()
                .any(|s| s.name == name && s.labels.len() == 1),
            "{name} missing"
        );
    }

    // Lease calls on a follower reach the leader's lessor, as etcd forwards them.
    let f = &members[follower];
    let granted = ok(f, &["lease", "grant", "60"]).await;
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    ok(f, &["put", "leased", "v", &format!("--lease={id}")]).await;
    let alive = ok(f, &["lease", "keep-alive", "--once", &id]).await;
    assert!(alive.contains("keepalived with TTL(60)"), "{alive}");
    let ttl = ok(f, &["lease", "timetolive", &id, "--keys"]).await;
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"),
        "{ttl}"
    );
    let list = ok(f, &["lease", "list"]).await;
    assert!(list.contains(&id), "{list}");
    ok(f, &["lease", "revoke", &id]).await;
    assert_eq!(ok(&members[leader], &["get", "leased"]).await.trim(), "");

    // Every member lists the three members with their names, peer and client URLs, and
    // every member reports the same leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = crate::json(&members[follower], &["member", "list"]).await;
        let list = v["members"].as_array().cloned().unwrap_or_default();
        let published = list
            .iter()
            .filter(|m| m["clientURLs"].as_array().is_some_and(|u| !u.is_empty()))
            .count();
        if list.len() == 3 && published == 3 {
            for (i, port) in plan.peer_ports.iter().enumerate() {
                let url = format!("http://127.0.0.1:{port}");
                let m = list
                    .iter()
                    .find(|m| m["name"] == format!("infra{i}"))
                    .unwrap_or_else(|| panic!("infra{i} missing: {v}"));
                assert_eq!(m["peerURLs"][0], url, "{v}");
                assert_eq!(m["clientURLs"][0], members[i].client_url(), "{v}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "member list incomplete: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let table = ok(&members[0], &["member", "list", "-w", "table"]).await;
    assert!(
        table.contains("| started |") && table.contains("infra2"),
        "{table}"
    );
    // `--cluster` finds the endpoints through the member list's client URLs.
    let v = crate::json(&members[0], &["endpoint", "status", "--cluster"]).await;
    let statuses = v.as_array().cloned().unwrap_or_default();
    assert_eq!(statuses.len(), 3, "{v}");
    let leaders: std::collections::BTreeSet<u64> = statuses
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(leaders.len(), 1, "one leader for all: {v}");
    let is_leader = statuses
        .iter()
        .filter(|s| {
            Some(s["Status"]["header"]["member_id"].as_u64()) == Some(leaders.first().copied())
        })
        .count();
    assert_eq!(is_leader, 1, "{v}");
    let table = ok(
        &members[0],
        &["endpoint", "status", "--cluster", "-w", "table"],
    )
    .await;
    assert!(table.contains(&members[2].client_url()), "{table}");

    // MoveLeader: etcdctl finds the leader among the endpoints and hands leadership over.
    let mut on_leader = members[leader].client().await.unwrap();
    assert_grpc_error(
        on_leader.move_leader(0x1234).await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
    let target = status(&members[follower]).await.unwrap().0;
    let endpoints = members
        .iter()
        .map(|m| m.client_url())
        .collect::<Vec<_>>()
        .join(",");
    let out = ok(
        &members[0],
        &[
            "--endpoints",
            &endpoints,
            "move-leader",
            &format!("{target:x}"),
        ],
    )
    .await;
    assert!(out.contains("Leadership transferred from"), "{out}");
    assert_eq!(self::leader(&members).await, follower);
}

#[tokio::test]
async fn killing_the_leader_elects_another_and_the_killed_member_catches_up() {
    let plan = Plan::new(3).unwrap();
    let mut members = start_cluster(&plan).await.unwrap();
    let first = leader(&members).await;
    ok(&members[first], &["put", "before", "1"]).await;

    members[first].kill9().unwrap();
    let killed_at = Instant::now();
    let survivor = (first + 1) % 3;
    let mut client = members[survivor].client().await.unwrap();
    loop {
        match client.put("after", "2", None).await {
            Ok(_) => break,
            Err(e) => assert!(
                killed_at.elapsed() < FAILOVER_LIMIT,
                "no write accepted {FAILOVER_LIMIT:?} after the leader died: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a put succeeded {:?} after kill -9 of the leader",
        killed_at.elapsed()
    );
    let others = (first + 2) % 3;
    assert_eq!(
        ok(&members[others], &["get", "after", "--print-value-only"])
            .await
            .trim(),
        "2"
    );

    // The killed member comes back on its data dir and catches up from the leader.
    members[first].restart().await.unwrap();
    let mut back = members[first].client().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = back
            .get("after", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        if resp.kvs().first().map(|kv| kv.value()) == Some(&b"2"[..]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ok(&members[first], &["get", "before", "--print-value-only"])
            .await
            .trim(),
        "1"
    );
}

#[tokio::test]
async fn a_member_started_with_another_token_is_refused() {
    let plan = Plan::new(3).unwrap();
    // Two members of the cluster (a quorum) and the third with a wrong token.
    let start = |i: usize| {
        let plan = &plan;
        Server::start_custom(move |layout| {
            Ok(plan.args(i, TOKEN, layout.client_port, &layout.data_dir))
        })
    };
    let (a, b) = tokio::try_join!(start(0), start(1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stray_client = free_port().unwrap();
    let args = plan.args(2, "another-token", stray_client, &dir.path().join("data"));
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut stray =
        tokio::process::Command::from(server_command(ServerKind::from_env(), &args).unwrap());
    stray
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true);
    let mut stray = stray.spawn().unwrap();

    // The good members refuse the stray member's messages and log why; it never joins.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(a.log() + &b.log()).contains("cluster ID mismatch") {
        assert!(
            Instant::now() < deadline,
            "no cluster ID mismatch logged:\n{}",
            a.log_tail(3000)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v = crate::json(&a, &["member", "list"]).await;
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(
        !v.to_string().contains(&format!("127.0.0.1:{stray_client}")),
        "{v}"
    );
    // The stray member has no leader: a linearizable read fails there.
    let stray_url = format!("http://127.0.0.1:{stray_client}");
    let out = cairn_tests::etcdctl(&stray_url, &["get", "x", "--command-timeout=3s"], None)
        .await
        .unwrap();
    assert!(
        out.success().is_err(),
        "the stray member served a linearizable read"
    );
    stray.kill().await.unwrap();
}

/// Retries `op` while etcd's strict reconfiguration check refuses it ("unhealthy
/// cluster": a member connected less than 5 s ago), bounded.
pub(crate) async fn reconfigure<T: std::fmt::Debug, F, Fut>(
    mut op: F,
) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match op().await {
            Err(e) if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

fn learner_opts() -> etcd_client::MemberAddOptions {
    etcd_client::MemberAddOptions::new().with_is_learner()
}

#[tokio::test]
async fn members_are_added_updated_promoted_and_removed_with_etcds_messages() {
    let plan = Plan::new(3).unwrap();
    let members = start_cluster(&plan).await.unwrap();
    let mut client = members[0].client().await.unwrap();
    let list = client.member_list().await.unwrap();
    let ids: Vec<u64> = list.members().iter().map(|m| m.id()).collect();
    assert_eq!(ids.len(), 3);

    // etcd's refusals.
    assert_grpc_error(
        client.member_add(["http://127.0.0.1:1/path"], None).await,
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );
    let taken = format!("http://127.0.0.1:{}", plan.peer_ports[1]);
    assert_grpc_error(
        reconfigure(|| {
            let (mut c, url) = (client.clone(), taken.clone());
            async move { c.member_add([url], Some(learner_opts())).await }
        })
        .await,
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    assert_grpc_error(
        client.member_remove(0x1234).await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_grpc_error(
        client.member_update(0x1234, vec![taken.clone()]).await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_grpc_error(
        client.member_promote(ids[0]).await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );

    // A learner that never started cannot be promoted; it can be removed.
    let idle = format!("http://127.0.0.1:{}", free_port().unwrap());
    let added = reconfigure(|| {
        let (mut c, url) = (client.clone(), idle.clone());
        async move { c.member_add([url], Some(learner_opts())).await }
    })
    .await
    .unwrap();
    let learner = added.member().unwrap().clone();
    assert!(
        learner.is_learner() && learner.name().is_empty(),
        "{learner:?}"
    );
    assert_eq!(client.member_list().await.unwrap().members().len(), 4);
    let table = ok(&members[1], &["member", "list", "-w", "table"]).await;
    assert!(
        table.contains("unstarted") && table.contains(&idle),
        "{table}"
    );
    assert_grpc_error(
        client.member_promote(learner.id()).await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    );
    let removed = reconfigure(|| {
        let (mut c, id) = (client.clone(), learner.id());
        async move { c.member_remove(id).await }
    })
    .await
    .unwrap();
    assert_eq!(removed.members().len(), 3);

    // An update to the same URL is accepted; etcdctl prints etcd's line.
    let own = format!("http://127.0.0.1:{}", plan.peer_ports[2]);
    let id2 = list
        .members()
        .iter()
        .find(|m| m.peer_urls() == [own.clone()])
        .unwrap()
        .id();
    let out = ok(
        &members[0],
        &[
            "member",
            "update",
            &format!("{id2:x}"),
            &format!("--peer-urls={own}"),
        ],
    )
    .await;
    assert!(
        out.contains(&format!("Member {id2:16x} updated in cluster")),
        "{out}"
    );

    // A voter added with etcdctl starts with the lines it printed and serves.
    let peer_port = free_port().unwrap();
    let peer = format!("http://127.0.0.1:{peer_port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let out = loop {
        let out = members[1]
            .ctl(&["member", "add", "infra3", &format!("--peer-urls={peer}")])
            .await
            .unwrap();
        match out.success() {
            Ok(text) => break text.to_string(),
            Err(e) if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("member add: {e:#}"),
        }
    };
    assert!(out.contains("added to cluster"), "{out}");
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    let initial_cluster = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert!(initial_cluster.contains(&format!("infra3={peer}")), "{out}");
    let joined = Server::start_custom(|layout| {
        let client = format!("http://127.0.0.1:{}", layout.client_port);
        Ok(vec![
            "--name=infra3".to_string(),
            format!("--data-dir={}", layout.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={initial_cluster}"),
            "--initial-cluster-state=existing".to_string(),
            "--heartbeat-interval=50".to_string(),
            "--election-timeout=500".to_string(),
        ])
    })
    .await
    .unwrap();
    ok(&members[0], &["put", "joined", "yes"]).await;
    assert_eq!(
        ok(&joined, &["get", "joined", "--print-value-only"])
            .await
            .trim(),
        "yes"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let table = ok(&joined, &["member", "list", "-w", "table"]).await;
        if table.matches("| started |").count() == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "infra3 never listed as started: {table}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let infra3 = client
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .find(|m| m.name() == "infra3")
        .unwrap()
        .id();
    let out = members[0]
        .ctl(&["member", "remove", &format!("{infra3:x}")])
        .await
        .unwrap();
    let out = out.success().unwrap();
    assert!(
        out.contains(&format!("Member {infra3:16x} removed from cluster")),
        "{out}"
    );
    assert_eq!(client.member_list().await.unwrap().members().len(), 3);
}

//! The seed documents' operations recipes, replayed with etcdctl and the seeds' flags and
//! environment variables: `--wal-dir`, `--force-new-cluster` recovery from a surviving
//! member's data dir and growing the cluster again, moving a member's data dir to a new
//! address with `member update`, and etcd's strict reconfiguration check. The
//! expectations hold for etcd 3.5.1 too (`CAIRN_TEST_SERVER=etcd`) unless marked.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_tests::{free_port, server_args, testing_cairn, Server};

use crate::multi_node::{leader, reconfigure, start_cluster, status, Plan, TOKEN};
use crate::{assert_grpc_error, json, ok, Code};

/// Whether `dir` holds anything (a raft log was written there).
fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Whether a directory named `wal` exists anywhere under `dir`.
fn has_wal_dir(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let path = e.path();
        path.is_dir() && (e.file_name() == "wal" || has_wal_dir(&path))
    })
}

/// Seed 000/003: `--wal-dir` keeps the WAL apart from the data dir.
#[tokio::test]
async fn the_raft_log_lives_in_wal_dir() {
    let wal = tempfile::tempdir().unwrap();
    let wal_dir = wal.path().join("wal-disk");
    let mut server = Server::start_custom(|l| {
        let mut args = server_args(&l.name, &l.data_dir, l.client_port, l.peer_port);
        args.push(format!("--wal-dir={}", wal_dir.display()));
        Ok(args)
    })
    .await
    .unwrap();
    ok(&server, &["put", "k", "v"]).await;
    assert!(has_files(&wal_dir), "nothing in --wal-dir");
    assert!(!has_wal_dir(server.data_dir()), "a WAL in the data dir too");
    server.restart().await.unwrap();
    let got = ok(&server, &["get", "k", "--print-value-only"]).await;
    assert_eq!(got.trim(), "v");

    if testing_cairn() {
        // Started without --wal-dir the log would not be found: cairn refuses (etcd would
        // start an empty WAL beside the old data).
        server.kill9().unwrap();
        server.args_mut().retain(|a| !a.starts_with("--wal-dir"));
        let err = server.restart().await.unwrap_err().to_string();
        assert!(err.contains("start it with the same --wal-dir"), "{err}");
    }
}

/// Seed 003 "服务故障恢复" / "数据迁移": two of three members are lost; the survivor's data
/// dir is restarted with `--force-new-cluster`, checked, and the cluster grown again with
/// `member add` and the `ETCD_*` lines it prints.
#[tokio::test]
async fn force_new_cluster_recovers_a_survivor_and_the_cluster_grows_again() {
    let plan = Plan::new(3).unwrap();
    let mut members = start_cluster(&plan).await.unwrap();
    leader(&members).await;
    ok(&members[1], &["put", "before", "disaster"]).await;
    // The survivor has it (a member that had not received it yet could not recover it),
    // and has recorded its commit: etcd discards the entries after the last commit index
    // it persisted (its HardState, written with the next heartbeat), cairn keeps them.
    wait_serializable(&members[0], "before", "disaster").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Two members are lost for good, the third stops.
    for m in &mut members {
        m.kill9().unwrap();
    }
    let survivor = &mut members[0];
    survivor.args_mut().push("--force-new-cluster".into());
    survivor.restart().await.unwrap();
    assert!(
        survivor.log().contains("forcing restart member"),
        "{}",
        survivor.log_tail(3000)
    );
    let list = json(survivor, &["member", "list"]).await;
    let listed = list["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["name"], "infra0", "{list}");
    let got = ok(survivor, &["get", "before", "--print-value-only"]).await;
    assert_eq!(got.trim(), "disaster");
    ok(survivor, &["put", "after", "recovery"]).await;

    // The one-member membership went through raft: it holds without the flag.
    survivor.args_mut().retain(|a| a != "--force-new-cluster");
    survivor.restart().await.unwrap();
    let list = json(survivor, &["member", "list"]).await;
    assert_eq!(list["members"].as_array().map(Vec::len), Some(1), "{list}");

    // Grow again: etcdctl member add, then start the new member with what it printed.
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let out = reconfigure_ctl(
        survivor,
        &["member", "add", "infra9", &format!("--peer-urls={peer}")],
    )
    .await;
    let env: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("ETCD_"))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    // ETCD_NAME, ETCD_INITIAL_CLUSTER, ETCD_INITIAL_ADVERTISE_PEER_URLS and
    // ETCD_INITIAL_CLUSTER_STATE, as etcdctl 3.5 prints them.
    assert_eq!(env.len(), 4, "{out}");
    assert!(
        env.contains(&("ETCD_INITIAL_CLUSTER_STATE".into(), "existing".into())),
        "{out}"
    );
    let peer_for_args = peer.clone();
    let mut joined = Server::spawn_with_env("infra9", env, |l| {
        let client = l.client_url();
        Ok(vec![
            format!("--data-dir={}", l.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer_for_args}"),
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ])
    })
    .unwrap();
    joined.wait_ready().await.unwrap();
    let got = ok(&joined, &["get", "after", "--print-value-only"]).await;
    assert_eq!(got.trim(), "recovery");
    if testing_cairn() {
        // etcd 3.5.1 fails this one: its forced member serves "before" from its backend,
        // but the entry was cut from its WAL (past the commit index it had persisted), so
        // a member replicating the log never gets it. cairn keeps the entry.
        let got = ok(&joined, &["get", "before", "--print-value-only"]).await;
        assert_eq!(got.trim(), "disaster");
    }
    wait_started(survivor, 2).await;
}

/// Seed 003 "节点迁移": stop a member, copy its data dir to the new host, point the
/// member's peer URL there with `member update`, start it there with the same name.
#[tokio::test]
async fn a_member_moves_to_a_new_address_with_its_data_dir() {
    let plan = Plan::new(3).unwrap();
    let mut members = start_cluster(&plan).await.unwrap();
    let l = leader(&members).await;
    let moving = (l + 1) % 3;
    let stays = (l + 2) % 3;
    ok(&members[l], &["put", "moved", "intact"]).await;
    let id = status(&members[moving]).await.unwrap().0;
    members[moving].kill9().unwrap();
    let old_dir = members[moving].data_dir().to_path_buf();

    let new_peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let out = ok(
        &members[stays],
        &[
            "member",
            "update",
            &format!("{id:x}"),
            &format!("--peer-urls={new_peer}"),
        ],
    )
    .await;
    assert!(
        out.contains(&format!("Member {id:16x} updated in cluster")),
        "{out}"
    );

    let initial_cluster = plan
        .initial_cluster
        .split(',')
        .map(|kv| match kv.split_once('=') {
            Some((name, _)) if name == format!("infra{moving}") => format!("{name}={new_peer}"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let moved = Server::start_custom(|layout| {
        copy_dir(&old_dir, &layout.data_dir)?;
        let client = layout.client_url();
        Ok(vec![
            format!("--name=infra{moving}"),
            format!("--data-dir={}", layout.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={new_peer}"),
            format!("--initial-advertise-peer-urls={new_peer}"),
            format!("--initial-cluster={initial_cluster}"),
            format!("--initial-cluster-token={TOKEN}"),
            "--initial-cluster-state=new".into(),
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ])
    })
    .await
    .unwrap();
    let got = ok(&moved, &["get", "moved", "--print-value-only"]).await;
    assert_eq!(got.trim(), "intact");
    assert_eq!(status(&moved).await.unwrap().0, id, "same member ID");
    ok(&moved, &["put", "from", "new-home"]).await;
    let got = ok(&members[stays], &["get", "from", "--print-value-only"]).await;
    assert_eq!(got.trim(), "new-home");

    // The member list has its new peer URL and client URL; every member is healthy.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = json(&members[stays], &["member", "list"]).await;
        let me = v["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["ID"].as_u64() == Some(id)).cloned())
            .unwrap_or_default();
        if me["peerURLs"][0] == new_peer.as_str()
            && me["clientURLs"][0] == moved.client_url().as_str()
        {
            break;
        }
        assert!(Instant::now() < deadline, "member list not updated: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health = moved
        .ctl(&["endpoint", "health", "--cluster"])
        .await
        .unwrap();
    // etcdctl prints one line per endpoint, on stderr.
    let text = format!("{}{}", health.stdout, health.stderr);
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");
}

/// etcd's strict reconfiguration check: with a member down, adding or removing a live
/// voter is refused ("unhealthy cluster"); removing the dead one is allowed. At most one
/// learner.
#[tokio::test]
async fn reconfiguration_that_could_lose_quorum_is_refused() {
    let plan = Plan::new(3).unwrap();
    let mut members = start_cluster(&plan).await.unwrap();
    let l = leader(&members).await;
    let mut client = members[l].client().await.unwrap();

    // One learner at a time.
    let first = format!("http://127.0.0.1:{}", free_port().unwrap());
    let learner = reconfigure(|| {
        let (mut c, url) = (client.clone(), first.clone());
        async move {
            c.member_add(
                [url],
                Some(etcd_client::MemberAddOptions::new().with_is_learner()),
            )
            .await
        }
    })
    .await
    .unwrap();
    let learner = learner.member().unwrap().id();
    let second = format!("http://127.0.0.1:{}", free_port().unwrap());
    assert_grpc_error(
        reconfigure(|| {
            let (mut c, url) = (client.clone(), second.clone());
            async move {
                c.member_add(
                    [url],
                    Some(etcd_client::MemberAddOptions::new().with_is_learner()),
                )
                .await
            }
        })
        .await,
        Code::FailedPrecondition,
        "etcdserver: too many learner members in cluster",
    );
    client.member_remove(learner).await.unwrap();

    // A follower goes down.
    let down = (l + 1) % 3;
    let alive = (l + 2) % 3;
    let down_id = status(&members[down]).await.unwrap().0;
    let alive_id = status(&members[alive]).await.unwrap().0;
    members[down].kill9().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let url = format!("http://127.0.0.1:{}", free_port().unwrap());
    assert_grpc_error(
        client.member_add([url], None).await,
        Code::Unavailable,
        "etcdserver: unhealthy cluster",
    );
    assert_grpc_error(
        client.member_remove(alive_id).await,
        Code::Unavailable,
        "etcdserver: unhealthy cluster",
    );
    // Nothing changed, and the cluster still writes.
    assert_eq!(client.member_list().await.unwrap().members().len(), 3);
    ok(&members[alive], &["put", "still", "writable"]).await;
    // The member that is down may go: the two left are a quorum of two.
    let left = client.member_remove(down_id).await.unwrap();
    assert_eq!(left.members().len(), 2);
    ok(&members[alive], &["put", "after", "removal"]).await;
}

/// A member removed while it was down, restarted on its old data dir, does not get back
/// in: the others keep serving and it never serves a linearizable read.
#[tokio::test]
async fn a_removed_members_stale_data_dir_does_not_harm_the_cluster() {
    let plan = Plan::new(3).unwrap();
    let mut members = start_cluster(&plan).await.unwrap();
    let l = leader(&members).await;
    let gone = (l + 1) % 3;
    let gone_id = status(&members[gone]).await.unwrap().0;
    members[gone].kill9().unwrap();
    let mut client = members[l].client().await.unwrap();
    client.member_remove(gone_id).await.unwrap();

    members[gone].relaunch().unwrap();
    // Writes go on through several of its election timeouts.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        ok(&members[(gone + 1) % 3], &["put", "k", &i.to_string()]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = json(&members[(gone + 1) % 3], &["member", "list"]).await;
    assert_eq!(list["members"].as_array().map(Vec::len), Some(2), "{list}");
    let out = members[gone]
        .ctl(&["get", "k", "--command-timeout=3s"])
        .await
        .unwrap();
    assert!(
        out.success().is_err(),
        "the removed member served a linearizable read"
    );
}

/// Runs an etcdctl membership command, retrying while the strict check says "unhealthy
/// cluster" (a member connected less than 5 s ago), and returns its output.
async fn reconfigure_ctl(server: &Server, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = server.ctl(args).await.unwrap();
        match out.success() {
            Ok(text) => return text.to_string(),
            Err(e) if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("{args:?}: {e:#}"),
        }
    }
}

/// Waits until a serializable (local) read on `server` returns `value` for `key`.
async fn wait_serializable(server: &Server, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = ok(
            server,
            &["get", key, "--consistency=s", "--print-value-only"],
        )
        .await;
        if got.trim() == value {
            return;
        }
        assert!(Instant::now() < deadline, "{key} never reached the member");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `server`'s member list shows `n` started members.
async fn wait_started(server: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let table = ok(server, &["member", "list", "-w", "table"]).await;
        if table.matches("| started |").count() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {n} started members: {table}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `cp -a` of a stopped member's data dir.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

//! Maintenance and Cluster services through etcd-client: Status, MemberList, Alarm, HashKV,
//! Defragment and Snapshot on a single-member server.

use cairn_tests::Server;
use etcd_client::{AlarmAction, AlarmType, Client};

use crate::rev;

async fn start() -> (Server, Client) {
    let server = Server::start().await.expect("server starts");
    let client = server.client().await.expect("client connects");
    (server, client)
}

#[tokio::test]
async fn status_reports_an_etcd_version_and_this_member_as_leader() {
    let (_server, mut client) = start().await;
    client.put("k", "v", None).await.unwrap();
    let status = client.status().await.unwrap();
    let header = status.header().unwrap();
    assert_eq!(header.revision(), 2);
    // Clients gate features on this: it must look like etcd 3.5 (digits and dots only).
    let version = status.version();
    assert!(version.starts_with("3.5."), "version {version}");
    assert!(
        version.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "version {version}"
    );
    assert_eq!(status.leader(), header.member_id());
    assert!(status.raft_term() >= 1);
    assert_eq!(status.raft_term(), header.raft_term());
    assert!(
        status.raft_index() >= 2,
        "raft index {}",
        status.raft_index()
    );
    assert!(status.raft_applied_index() >= 1);
    assert!(status.raft_applied_index() <= status.raft_index());
    assert!(status.db_size() > 0);
    assert!(status.raft_used_db_size() > 0);
    assert!(status.raft_used_db_size() <= status.db_size());
    assert!(!status.is_learner());
    assert!(status.errors().is_empty());

    // Each committed write advances the raft index.
    client.put("k", "v2", None).await.unwrap();
    let later = client.status().await.unwrap();
    assert!(later.raft_index() > status.raft_index());
}

#[tokio::test]
async fn member_list_has_one_voting_member() {
    let (server, mut client) = start().await;
    let resp = client.member_list().await.unwrap();
    let header = resp.header().unwrap();
    let members = resp.members();
    assert_eq!(members.len(), 1);
    let member = &members[0];
    assert_eq!(member.id(), header.member_id());
    assert_eq!(member.name(), server.name());
    assert_eq!(member.peer_urls(), [server.peer_url()]);
    assert_eq!(member.client_urls(), [server.client_url()]);
    assert!(!member.is_learner());
    assert_ne!(header.cluster_id(), 0);
}

#[tokio::test]
async fn no_alarms_on_a_healthy_server() {
    let (_server, mut client) = start().await;
    let resp = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(resp.alarms().is_empty());
}

#[tokio::test]
async fn hash_kv_is_stable_and_changes_with_writes() {
    let (_server, mut client) = start().await;
    client.put("a", "1", None).await.unwrap();
    client.put("b", "2", None).await.unwrap(); // revision 3
                                               // hash_revision is an etcd 3.6 field (0 from 3.5), so it is not checked here.
    let first = client.hash_kv(0).await.unwrap();
    assert_eq!(rev!(first), 3);
    // etcd reports -1 (its initial compactMainRev) while nothing has been compacted.
    assert_eq!(first.compact_version(), -1);
    let again = client.hash_kv(0).await.unwrap();
    assert_eq!(first.hash(), again.hash());
    // Hashing an explicit revision equals hashing the same state later.
    client.put("c", "3", None).await.unwrap(); // revision 4
    let at_3 = client.hash_kv(3).await.unwrap();
    assert_eq!(at_3.hash(), first.hash());
    let latest = client.hash_kv(0).await.unwrap();
    assert_eq!(rev!(latest), 4);
    assert_ne!(latest.hash(), first.hash());

    client.compact(3, None).await.unwrap();
    let after = client.hash_kv(0).await.unwrap();
    assert_eq!(after.compact_version(), 3);
}

#[tokio::test]
async fn defragment_keeps_the_data() {
    let (server, mut client) = start().await;
    client.put("k", "v", None).await.unwrap();
    client.put("gone", "x", None).await.unwrap();
    client.delete("gone", None).await.unwrap(); // revision 4
    client.compact(3, None).await.unwrap();
    let hash_before = client.hash_kv(0).await.unwrap();
    let status_before = client.status().await.unwrap();

    client.defragment().await.unwrap();
    // What an operator runs, and what it prints on success.
    let out = server.ctl(&["defrag"]).await.unwrap();
    let stdout = out.success().unwrap();
    assert!(
        stdout.contains(&format!(
            "Finished defragmenting etcd member[{}]",
            server.client_url()
        )),
        "{out:?}"
    );

    // Same data, same history, same revision: the key-value hash covers all of it.
    let resp = client.get("k", None).await.unwrap();
    assert_eq!((resp.kvs()[0].value(), rev!(resp)), (&b"v"[..], 4));
    assert_eq!(client.get("gone", None).await.unwrap().kvs().len(), 0);
    let hash_after = client.hash_kv(0).await.unwrap();
    assert_eq!(
        (
            hash_after.hash(),
            hash_after.compact_version(),
            rev!(hash_after)
        ),
        (hash_before.hash(), 3, 4)
    );
    // The compacted revision stays compacted, the one above it stays readable.
    assert!(client
        .get("k", Some(etcd_client::GetOptions::new().with_revision(2)))
        .await
        .is_err());
    let old = client
        .get("k", Some(etcd_client::GetOptions::new().with_revision(3)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"v");
    let status_after = client.status().await.unwrap();
    assert_eq!(
        status_after.header().unwrap().revision(),
        status_before.header().unwrap().revision()
    );
    assert!(status_after.db_size() > 0);
    assert!(status_after.raft_used_db_size() <= status_after.db_size());
    // The endpoint keeps serving writes, which continue the revision sequence.
    assert_eq!(rev!(client.put("k", "v2", None).await.unwrap()), 5);
    let health = server.ctl(&["endpoint", "health"]).await.unwrap();
    assert!(
        health.stdout.contains("is healthy") || health.stderr.contains("is healthy"),
        "{health:?}"
    );
}

#[tokio::test]
async fn snapshot_streams_the_whole_database() {
    let (_server, mut client) = start().await;
    client.put("k", "v", None).await.unwrap();
    // Large enough that the stream spans several chunks.
    client.put("big", vec![b'x'; 100_000], None).await.unwrap();
    let mut stream = client.snapshot().await.unwrap();
    let mut total = 0u64;
    let mut announced = None;
    let mut remaining = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        let len = chunk.blob().len() as u64;
        // The first message announces the whole size: its own blob plus what remains.
        announced.get_or_insert(len + chunk.remaining_bytes());
        total += len;
        remaining.push(chunk.remaining_bytes());
    }
    assert!(
        total > 100_000,
        "snapshot of {total} bytes holds the big value"
    );
    // etcd 3.5.1 announces the database alone, then sends its 32-byte SHA-256 (which
    // etcdctl checks) in one more chunk with remaining_bytes 0; cairn counts the digest in
    // the announced size.
    let digest_outside = if cairn_tests::testing_cairn() { 0 } else { 32 };
    assert_eq!(
        Some(total),
        announced.map(|a| a + digest_outside),
        "received what the first message announced"
    );
    assert!(remaining.len() > 1, "several chunks: {remaining:?}");
    assert_eq!(
        remaining.last(),
        Some(&0),
        "the last chunk has nothing remaining"
    );
    assert!(
        remaining.windows(2).all(|w| w[0] > w[1] || w == [0, 0]),
        "remaining_bytes falls with every chunk: {remaining:?}"
    );
}

#[tokio::test]
async fn etcdctl_snapshot_save_writes_a_file() {
    let (server, mut client) = start().await;
    client.put("k", "v", None).await.unwrap();
    // Large enough that the stream spans several 32 KiB chunks.
    client.put("big", vec![b'x'; 100_000], None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.db");
    let path_arg = path.to_str().unwrap();
    let out = server.ctl(&["snapshot", "save", path_arg]).await.unwrap();
    let stdout = out.success().unwrap();
    assert!(
        stdout.contains(&format!("Snapshot saved at {path_arg}")),
        "{out:?}"
    );
    // etcdctl itself checks that the stream ends with a 32-byte digest after a multiple of
    // 512 bytes; the file holds the whole stream.
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 0);
    assert_eq!(len % 512, 32, "snapshot of {len} bytes");
}

#[tokio::test]
async fn a_saved_snapshot_restores_into_a_new_data_dir() {
    let (mut server, mut client) = start().await;
    client.put("a", "1", None).await.unwrap();
    client.put("a", "2", None).await.unwrap();
    client.put("b", "1", None).await.unwrap(); // revision 4
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let file_arg = file.to_str().unwrap();
    server
        .ctl(&["snapshot", "save", file_arg])
        .await
        .unwrap()
        .success()
        .unwrap();
    client.put("late", "x", None).await.unwrap();
    server.terminate().await.unwrap();
    drop(client);

    // The operator's recipe: restore into a fresh data dir, start the server on it.
    let data_dir = server.data_dir().to_path_buf();
    std::fs::remove_dir_all(&data_dir).unwrap();
    let data_arg = format!("--data-dir={}", data_dir.display());
    let mut restore = if cairn_tests::testing_cairn() {
        let mut cmd = std::process::Command::new(server.kind().binary().unwrap());
        cmd.args(["snapshot", "restore", file_arg, &data_arg]);
        cmd
    } else {
        let mut cmd = std::process::Command::new(cairn_tests::etcdutl().unwrap());
        cmd.args(["snapshot", "restore", file_arg, &data_arg]);
        for name in ["name", "initial-cluster", "initial-advertise-peer-urls"] {
            cmd.arg(format!("--{name}={}", server.flag(name).unwrap()));
        }
        cmd
    };
    let out = restore.output().unwrap();
    assert!(out.status.success(), "restore failed: {out:?}");
    server.restart().await.unwrap();

    let mut client = server.client().await.unwrap();
    let resp = client
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let kvs: Vec<_> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap(),
                kv.value_str().unwrap(),
                kv.mod_revision(),
            )
        })
        .collect();
    assert_eq!(kvs, [("a", "2", 3), ("b", "1", 4)]);
    assert_eq!(rev!(resp), 4);
    // History before the snapshot survives too, and writes continue from its revision.
    let old = client
        .get("a", Some(etcd_client::GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");
    let put = client.put("c", "1", None).await.unwrap();
    assert_eq!(rev!(put), 5);
}

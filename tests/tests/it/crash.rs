//! Durability: acknowledged writes survive `kill -9` and restart on the same data directory,
//! with their revisions, and the revision sequence continues past them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_tests::Server;
use etcd_client::{CompactionOptions, GetOptions};

use crate::{assert_grpc_error, current_revision, rev, Code};

const WRITERS: usize = 8;
const LOAD_TIME: Duration = Duration::from_secs(2);

/// One acknowledged put.
#[derive(Debug, Clone)]
struct Ack {
    seq: u64,
    value: String,
    revision: i64,
}

fn key(writer: usize, seq: u64) -> String {
    format!("w{writer}/{seq:08}")
}

/// Puts `w<writer>/<seq>` until a put fails (the server was killed); returns every put the
/// server acknowledged, in order. Counts itself in `acked_once` at its first ack.
async fn writer(server_url: String, writer: usize, acked_once: Arc<AtomicUsize>) -> Vec<Ack> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let Ok(mut client) = etcd_client::Client::connect([server_url], Some(opts)).await else {
        return Vec::new();
    };
    let mut acks = Vec::new();
    for seq in 0.. {
        let value = format!("value-{writer}-{seq}");
        match client.put(key(writer, seq), value.clone(), None).await {
            Ok(resp) => {
                if acks.is_empty() {
                    acked_once.fetch_add(1, Ordering::Relaxed);
                }
                acks.push(Ack {
                    seq,
                    value,
                    revision: rev!(resp),
                })
            }
            Err(_) => break,
        }
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start().await.expect("server starts");
    let url = server.client_url();
    let acked_once = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(url.clone(), w, acked_once.clone())))
        .collect();
    // The load runs for LOAD_TIME, and on a slow machine until every writer has an ack.
    tokio::time::sleep(LOAD_TIME).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked_once.load(Ordering::Relaxed) < WRITERS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill9().unwrap();

    let mut acked: Vec<Vec<Ack>> = Vec::new();
    for task in tasks {
        let acks = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("writer stops once the server is gone")
            .unwrap();
        acked.push(acks);
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(
        acked.iter().all(|a| !a.is_empty()),
        "every writer got at least one put acknowledged: {:?}",
        acked.iter().map(Vec::len).collect::<Vec<_>>()
    );

    // Revisions were strictly increasing per writer and unique across writers.
    for acks in &acked {
        assert!(acks.windows(2).all(|p| p[0].revision < p[1].revision));
    }
    let mut all_revs: Vec<i64> = acked.iter().flatten().map(|a| a.revision).collect();
    all_revs.sort_unstable();
    all_revs.dedup();
    assert_eq!(all_revs.len(), total, "each put got its own revision");
    let max_acked = *all_revs.last().unwrap();

    server
        .restart()
        .await
        .expect("server restarts on the same data dir");
    let mut client = server.client().await.unwrap();
    assert!(current_revision(&mut client).await >= max_acked);

    for (w, acks) in acked.iter().enumerate() {
        let resp = client
            .get(format!("w{w}/"), Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let stored: BTreeMap<String, (String, i64, i64, i64)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    (
                        kv.value_str().unwrap().to_string(),
                        kv.create_revision(),
                        kv.mod_revision(),
                        kv.version(),
                    ),
                )
            })
            .collect();
        for ack in acks {
            let k = key(w, ack.seq);
            assert_eq!(
                stored.get(&k),
                Some(&(ack.value.clone(), ack.revision, ack.revision, 1)),
                "acknowledged put of {k} at revision {} lost or changed",
                ack.revision
            );
        }
        // At most the one in-flight, unacknowledged put may also have landed.
        let extra: Vec<&String> = stored
            .keys()
            .filter(|k| !acks.iter().any(|a| &key(w, a.seq) == *k))
            .collect();
        let next = key(w, acks.len() as u64);
        assert!(
            extra.is_empty() || extra == [&next],
            "writer {w}: unexpected keys {extra:?}"
        );
    }

    let resp = client.put("after-restart", "x", None).await.unwrap();
    assert!(
        rev!(resp) > max_acked,
        "revision {} after restart must exceed acknowledged {max_acked}",
        rev!(resp)
    );
    eprintln!("{total} acknowledged puts survived kill -9 (max revision {max_acked})");
}

#[tokio::test]
async fn compaction_and_revision_survive_kill_9() {
    let mut server = Server::start().await.expect("server starts");
    let mut client = server.client().await.unwrap();
    for v in ["v1", "v2", "v3", "v4"] {
        client.put("k", v, None).await.unwrap(); // revisions 2..=5
    }
    client.delete("k", None).await.unwrap(); // 6
    client.put("k", "v5", None).await.unwrap(); // 7
    client
        .compact(4, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();

    server.kill9().unwrap();
    server.restart().await.unwrap();
    let mut client = server.client().await.unwrap();

    assert_eq!(current_revision(&mut client).await, 7);
    assert_grpc_error(
        client
            .get("k", Some(GetOptions::new().with_revision(3)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let resp = client
        .get("k", Some(GetOptions::new().with_revision(5)))
        .await
        .unwrap();
    assert_eq!(resp.kvs()[0].value(), b"v4");
    let resp = client.get("k", None).await.unwrap();
    let kv = &resp.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        (&b"v5"[..], 7, 7, 1)
    );
    assert_eq!(rev!(client.put("k", "v6", None).await.unwrap()), 8);
}

#[tokio::test]
async fn graceful_stop_and_restart_keeps_data() {
    let mut server = Server::start().await.expect("server starts");
    let mut client = server.client().await.unwrap();
    client.put("k", "v", None).await.unwrap();
    server.terminate().await.expect("server stops on SIGTERM");
    assert!(!server.is_running());
    server.restart().await.unwrap();
    let mut client = server.client().await.unwrap();
    let resp = client.get("k", None).await.unwrap();
    assert_eq!((resp.kvs()[0].value(), rev!(resp)), (&b"v"[..], 2));
}

//! Quota, alarms, defragmentation and corruption checks: seed 001's recipe (fill past a
//! small quota, NOSPACE, compact, defrag, disarm), the Alarm RPC, alarms on every member of
//! a cluster, the NOSPACE auto-disarm, defrag under load, and a hash mismatch raising
//! CORRUPT.

use std::time::{Duration, Instant};

use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::Server;
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, GetOptions, PutOptions};
use sha2::{Digest, Sha256};

use crate::{assert_grpc_error, json, ok, Code};

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// Seed 001's quota.
const QUOTA: u64 = 16 << 20;
/// How long filling the quota may take before the test gives up.
const FILL_LIMIT: Duration = Duration::from_secs(120);
/// Keys the fill overwrites in turn, so a compaction leaves little.
const FILL_KEYS: usize = 16;

/// `len` bytes that do not compress (the engines compress their blocks).
fn noise(seed: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = 0u64;
    while out.len() < len {
        out.extend(Sha256::digest(format!("{seed}/{block}")));
        block += 1;
    }
    out.truncate(len);
    out
}

/// Overwrites [`FILL_KEYS`] keys with 64 KiB values until a put is refused for space;
/// returns how many puts went through.
async fn fill_until_no_space(client: &mut Client) -> usize {
    let started = Instant::now();
    for i in 0.. {
        assert!(
            started.elapsed() < FILL_LIMIT,
            "quota not reached after {i} puts"
        );
        let key = format!("fill/{}", i % FILL_KEYS);
        match client.put(key, noise(i, 64 << 10), None).await {
            Ok(_) => {}
            Err(e) => {
                assert_grpc_error::<()>(Err(e), Code::ResourceExhausted, NO_SPACE);
                return i;
            }
        }
    }
    unreachable!()
}

fn quota_flag() -> String {
    format!("--quota-backend-bytes={QUOTA}")
}

/// The member id as `etcdctl alarm list` prints it.
async fn member_id(client: &mut Client) -> u64 {
    client.status().await.unwrap().header().unwrap().member_id()
}

#[tokio::test]
async fn seed_001_fill_past_the_quota_then_compact_defrag_and_disarm() {
    let server = Server::start_with(&[&quota_flag()]).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = member_id(&mut client).await;
    let puts = fill_until_no_space(&mut client).await;
    assert!(puts > 16, "the quota was reached after only {puts} puts");

    let alarms = ok(&server, &["alarm", "list"]).await;
    assert_eq!(alarms.trim_end(), format!("memberID:{id} alarm:NOSPACE"));
    // Writes fail, with etcd's message, even small ones and lease grants.
    let put = server.ctl(&["put", "small", "v"]).await.unwrap();
    assert!(put.code != 0 && put.stderr.contains(NO_SPACE), "{put:?}");
    assert_grpc_error(
        client.lease_grant(60, None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    // Reads and deletes work.
    let got = client.get("fill/0", None).await.unwrap();
    assert_eq!(got.kvs().len(), 1);
    assert_eq!(ok(&server, &["del", "fill/0"]).await, "1\n");

    let rev = client
        .get("fill/1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let compacted = ok(&server, &["compaction", "--physical", &rev.to_string()]).await;
    assert_eq!(compacted, format!("compacted revision {rev}\n"));
    let defrag = ok(&server, &["defrag"]).await;
    assert!(
        defrag.contains("Finished defragmenting etcd member"),
        "{defrag}"
    );
    // The alarm stays up until it is disarmed.
    let put = server.ctl(&["put", "small", "v"]).await.unwrap();
    assert!(put.code != 0 && put.stderr.contains(NO_SPACE), "{put:?}");

    let disarmed = ok(&server, &["alarm", "disarm"]).await;
    assert_eq!(disarmed.trim_end(), format!("memberID:{id} alarm:NOSPACE"));
    assert_eq!(ok(&server, &["alarm", "list"]).await.trim(), "");
    assert_eq!(ok(&server, &["put", "small", "v"]).await, "OK\n");

    let status = json(&server, &["endpoint", "status"]).await;
    let s = &status[0]["Status"];
    let (size, in_use) = (
        s["dbSize"].as_i64().unwrap(),
        s["dbSizeInUse"].as_i64().unwrap(),
    );
    assert!(in_use > 0 && in_use <= size, "{s}");
    // What is left (15 keys of 64 KiB) is well under the quota.
    assert!((in_use as u64) < QUOTA / 2, "{s}");
    let metric = |name| crate::plugins::metric(&server, name, &[]);
    assert_eq!(
        metric("etcd_server_quota_backend_bytes").await,
        QUOTA as f64
    );
    assert!(metric("etcd_mvcc_db_total_size_in_bytes").await > 0.0);
    assert!(metric("etcd_mvcc_db_total_size_in_use_in_bytes").await < (QUOTA / 2) as f64);
}

#[tokio::test]
async fn alarm_rpc_activates_and_deactivates_as_etcd() {
    let server = Server::start().await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = member_id(&mut client).await;
    let member = |member_id| {
        let mut options = AlarmOptions::new();
        options.with_member(member_id);
        options
    };
    let nospace = |member_id| (member_id, AlarmType::Nospace as i32);
    let listed = |resp: etcd_client::AlarmResponse| -> Vec<(u64, i32)> {
        let mut list: Vec<_> = resp
            .alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm() as i32))
            .collect();
        list.sort();
        list
    };

    let resp = client
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(member(id)))
        .await
        .unwrap();
    assert_eq!(listed(resp), vec![nospace(id)]);
    // Raising it again answers the alarm again; NONE activates nothing.
    let resp = client
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(member(id)))
        .await
        .unwrap();
    assert_eq!(listed(resp), vec![nospace(id)]);
    let resp = client
        .alarm(AlarmAction::Activate, AlarmType::None, Some(member(id)))
        .await
        .unwrap();
    assert!(resp.alarms().is_empty());
    let resp = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(listed(resp), vec![nospace(id)]);

    assert_grpc_error(
        client.put("k", "v", None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    // A txn that only deletes passes the capped applier.
    client.delete("k", None).await.unwrap();

    // Deactivating an alarm nobody raised answers nothing.
    let resp = client
        .alarm(
            AlarmAction::Deactivate,
            AlarmType::Nospace,
            Some(member(42)),
        )
        .await
        .unwrap();
    assert!(resp.alarms().is_empty());
    let resp = client
        .alarm(
            AlarmAction::Deactivate,
            AlarmType::Nospace,
            Some(member(id)),
        )
        .await
        .unwrap();
    assert_eq!(listed(resp), vec![nospace(id)]);
    let resp = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(resp.alarms().is_empty());
    client.put("k", "v", None).await.unwrap();

    // CORRUPT refuses writes with etcd's corrupt-cluster error, reads still work.
    client
        .alarm(AlarmAction::Activate, AlarmType::Corrupt, Some(member(id)))
        .await
        .unwrap();
    assert_grpc_error(
        client.put("k", "v2", None).await,
        Code::DataLoss,
        "etcdserver: corrupt cluster",
    );
    assert_eq!(client.get("k", None).await.unwrap().kvs()[0].value(), b"v");
    let resp = client
        .alarm(AlarmAction::Get, AlarmType::Corrupt, None)
        .await
        .unwrap();
    assert_eq!(listed(resp), vec![(id, AlarmType::Corrupt as i32)]);
    client
        .alarm(
            AlarmAction::Deactivate,
            AlarmType::Corrupt,
            Some(member(id)),
        )
        .await
        .unwrap();
    client.put("k", "v2", None).await.unwrap();
}

#[tokio::test]
async fn nospace_raised_on_one_member_refuses_writes_on_every_member() {
    let cluster = Cluster::start(3).await.unwrap();
    let raiser = cluster.member_id(1);
    let mut client = cluster.client(1).await.unwrap();
    let mut options = AlarmOptions::new();
    options.with_member(raiser);
    client
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(options))
        .await
        .unwrap();
    for i in 0..3 {
        let member = cluster.member(i);
        let listed = ok(member, &["alarm", "list"]).await;
        assert_eq!(
            listed.trim_end(),
            format!("memberID:{raiser} alarm:NOSPACE"),
            "member {i}"
        );
        let mut client = cluster.client(i).await.unwrap();
        assert_grpc_error(
            client.put("k", "v", None).await,
            Code::ResourceExhausted,
            NO_SPACE,
        );
        // Serializable reads answer from every member.
        client
            .get("k", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
    }
    let disarmed = ok(cluster.member(2), &["alarm", "disarm"]).await;
    assert_eq!(
        disarmed.trim_end(),
        format!("memberID:{raiser} alarm:NOSPACE")
    );
    cluster.put_and_read_everywhere("k", "v").await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: --auto-disarm-nospace (etcd-io/etcd#14267)"
)]
async fn auto_disarm_clears_nospace_once_the_data_fits_again() {
    let server = Server::start_with(&[&quota_flag(), "--auto-disarm-nospace"])
        .await
        .unwrap();
    let mut client = server.client().await.unwrap();
    fill_until_no_space(&mut client).await;
    assert!(ok(&server, &["alarm", "list"])
        .await
        .contains("alarm:NOSPACE"));
    // Still over the quota: the alarm stays.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ok(&server, &["alarm", "list"])
        .await
        .contains("alarm:NOSPACE"));

    let resp = client
        .delete(
            "fill/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    client
        .compact(
            resp.header().unwrap().revision(),
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    client.defragment().await.unwrap();
    let started = Instant::now();
    while !ok(&server, &["alarm", "list"]).await.trim().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "NOSPACE was not disarmed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.put("k", "v", None).await.unwrap();
    assert!(server.log().contains("disarmed the NOSPACE alarm"));
}

/// Overwrites `keys` keys `rounds` times with 4 KiB values and compacts the history away.
async fn churn_and_compact(client: &mut Client, keys: usize, rounds: usize, value_len: usize) {
    for round in 0..rounds {
        for k in 0..keys {
            client
                .put(
                    format!("churn/{k}"),
                    noise(round * keys + k, value_len),
                    None,
                )
                .await
                .unwrap();
        }
    }
    let rev = client
        .get("churn/0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn defrag_shrinks_the_store_while_puts_and_reads_go_on() {
    let server = Server::start().await.unwrap();
    let mut client = server.client().await.unwrap();
    // 128 MiB of overwritten values: far more than the new journal a defragmentation
    // starts (cairn flushes the memtables first), so the drop is not lost in it.
    // Its physical compaction can take longer than the harness client's 10 s.
    let mut patient = server
        .client_with_timeout(Duration::from_secs(120))
        .await
        .unwrap();
    churn_and_compact(&mut patient, 100, 40, 32 << 10).await;
    let before = client.status().await.unwrap();

    // A writer and a reader run for the whole defragmentation.
    let defragging = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (mut c, going) = (server.client().await.unwrap(), defragging.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while going.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let key = format!("load/{}", acked.len());
                c.put(key.clone(), key.clone(), Some(PutOptions::new()))
                    .await
                    .unwrap();
                acked.push(key);
                // Paced, so what it adds stays small beside what the defrag reclaims.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    let reader = {
        let (mut c, going) = (server.client().await.unwrap(), defragging.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while going.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let got = c.get("churn/7", None).await.unwrap();
                assert_eq!(got.kvs().len(), 1);
                reads += 1;
            }
            reads
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.defragment().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    defragging.store(false, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.unwrap();
    let reads = reader.await.unwrap();
    assert!(
        !acked.is_empty() && reads > 0,
        "{} puts, {reads} reads",
        acked.len()
    );

    let all = client
        .get(
            "load/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let mut stored: Vec<String> = all
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    let mut expected = acked.clone();
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected);
    // The engine may remove the replaced files a little after the defragmentation
    // returns (once nothing reads them), and etcd's size is immediate: wait a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = client.status().await.unwrap();
    while after.db_size() >= before.db_size() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = client.status().await.unwrap();
    }
    assert!(
        after.db_size() < before.db_size(),
        "db size {} before the defragmentation, {} after",
        before.db_size(),
        after.db_size()
    );
    assert!(after.raft_used_db_size() <= after.db_size());
}

#[tokio::test]
#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: rewrites a stopped member's data through cairn's storage"
)]
async fn a_member_whose_data_differs_raises_corrupt() {
    let mut options = ClusterOptions::new(3);
    // Snapshots make the state durable past the key the test damages, so the restarted
    // member does not rewrite it by replaying its log.
    options.extra_args = vec![
        "--experimental-corrupt-check-time=1s".into(),
        "--snapshot-count=10".into(),
    ];
    let mut cluster = Cluster::start_with(options).await.unwrap();
    cluster.put_and_read_everywhere("k", "v").await.unwrap();
    for i in 0..40 {
        cluster
            .put_and_read_everywhere(&format!("more/{i}"), "x")
            .await
            .unwrap();
    }
    let victim = (cluster.leader().await.unwrap() + 1) % 3;
    let victim_id = cluster.member_id(victim);
    // Nothing is raised while the members agree.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ok(cluster.member(victim), &["alarm", "list"]).await.trim(),
        ""
    );

    cluster.kill9(victim).unwrap();
    damage_history(cluster.member(victim).data_dir());
    cluster.restart(victim).await.unwrap();

    // Every member lists the alarm; any of them answers.
    let other = cluster.member((victim + 1) % 3);
    let started = Instant::now();
    let listed = loop {
        let listed = ok(other, &["alarm", "list"]).await;
        if listed.contains("alarm:CORRUPT") {
            break listed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "alarms: {listed:?}\n{}",
            cluster.log_tails(4000)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // As in etcd 3.5, the leader blames the first member whose hash differs from its own:
    // the damaged member, unless it leads by now.
    if cluster.leader().await.unwrap() != victim {
        assert_eq!(
            listed.trim_end(),
            format!("memberID:{victim_id} alarm:CORRUPT")
        );
    }
    let (status, body) = other.http_get("/readyz?verbose").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("[-]data_corruption failed: alarm activated: CORRUPT"),
        "{body}"
    );
    let mut client = cluster.client((victim + 1) % 3).await.unwrap();
    assert_grpc_error(
        client.put("k", "v2", None).await,
        Code::DataLoss,
        "etcdserver: corrupt cluster",
    );
    // Logged by the leader that ran the check, which may have handed over leadership since.
    assert!(
        (0..3).any(|i| cluster
            .member(i)
            .log()
            .contains("same compact revision then hashes must match")),
        "{}",
        cluster.log_tails(4000)
    );
}

/// Flips a byte of every stored version of key `k`, as a bad disk would.
fn damage_history(data_dir: &std::path::Path) {
    let store = cairn::storage::Store::open(data_dir).unwrap();
    let history = store.keyspace("kv_history").unwrap();
    // esc("k"): the key, then 0x00 0x00.
    let prefix = b"k\0\0".to_vec();
    let damaged: Vec<(Vec<u8>, Vec<u8>)> = history
        .range(prefix.clone()..)
        .map(|item| item.unwrap())
        .take_while(|(key, _)| key.starts_with(&prefix))
        .map(|(key, value)| {
            let mut value = value.to_vec();
            *value.last_mut().unwrap() ^= 0xff;
            (key.to_vec(), value)
        })
        .collect();
    assert!(!damaged.is_empty(), "no stored version of k to damage");
    for (key, value) in damaged {
        history.insert(key, value).unwrap();
    }
    store.sync().unwrap();
}

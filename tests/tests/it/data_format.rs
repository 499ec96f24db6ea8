//! Data dirs written by an older cairn: `fixtures/cairn-data-vN.tar.gz` is a data dir made
//! by a cairn of format `cairn-data-vN` with etcdctl: rev 2 `put a 1`, rev 3 `put a 2`,
//! rev 4 a txn putting b=1 and c=1, rev 5 `del b`, rev 6 `put a 3`, rev 7 `put d` with
//! 3000 x's; both cairns reported `endpoint hashkv` 2357723215 at revision 7. v2 stored
//! each value twice; v3 kept its write counters under three names and the membership in
//! every apply marker (v3's was killed with -9 after the last put, so its state is
//! recovered from the journal).

use std::path::Path;
use std::time::Duration;

use cairn_tests::{server_args, Server};
use etcd_client::{EventType, GetOptions, WatchOptions};

/// What the cairns that wrote the fixtures answered to `etcdctl endpoint hashkv` at rev 7.
const HASH_AT_7: u32 = 2_357_723_215;

/// A server started on a copy of the data dir of format `format`'s fixture.
async fn start_on_fixture(format: &str) -> Server {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{format}.tar.gz"));
    Server::start_custom(|layout| {
        // The archive holds the directory `data`, which is where the harness puts the
        // data dir.
        assert_eq!(layout.data_dir, layout.dir.join("data"));
        let status = std::process::Command::new("tar")
            .arg("xzf")
            .arg(&fixture)
            .arg("-C")
            .arg(&layout.dir)
            .status()?;
        assert!(status.success(), "tar: {status}");
        Ok(server_args(
            &layout.name,
            &layout.data_dir,
            layout.client_port,
            layout.peer_port,
        ))
    })
    .await
    .unwrap()
}

/// (key, value, create, mod, version) of `key` at `rev` (0: now), if it exists.
async fn version_of(server: &Server, key: &str, rev: i64) -> Option<(String, i64, i64, i64)> {
    let mut client = server.client().await.unwrap();
    let resp = client
        .get(key, Some(GetOptions::new().with_revision(rev)))
        .await
        .unwrap();
    resp.kvs().first().map(|kv| {
        (
            kv.value_str().unwrap().to_string(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
        )
    })
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: a cairn data dir")]
async fn a_data_dir_that_stored_values_twice_is_upgraded_and_serves_its_history() {
    upgraded_serves_its_history("cairn-data-v2").await;
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: a cairn data dir")]
async fn a_data_dir_with_counters_under_three_names_is_upgraded_and_serves_its_history() {
    upgraded_serves_its_history("cairn-data-v3").await;
}

/// Starts on `format`'s fixture and checks the upgrade, the fixture's history, new writes
/// and a compaction on top of it, and a restart.
async fn upgraded_serves_its_history(format: &str) {
    let mut server = start_on_fixture(format).await;
    let upgraded = format!("data dir format {format} upgraded to cairn-data-v4");
    assert!(server.log().contains(&upgraded), "{}", server.log_tail(20));
    let marker = std::fs::read_to_string(server.data_dir().join("CAIRN_FORMAT")).unwrap();
    assert_eq!(marker.trim(), "cairn-data-v4");
    let mut client = server.client().await.unwrap();
    assert_eq!(
        client.maintenance_client().hash_kv(7).await.unwrap().hash(),
        HASH_AT_7,
        "the same history hashes the same"
    );

    let v = |value: &str, create, modified, version| {
        Some((value.to_string(), create, modified, version))
    };
    assert_eq!(version_of(&server, "a", 0).await, v("3", 2, 6, 3));
    assert_eq!(version_of(&server, "a", 3).await, v("2", 2, 3, 2));
    assert_eq!(version_of(&server, "b", 4).await, v("1", 4, 4, 1));
    assert_eq!(version_of(&server, "b", 0).await, None);
    assert_eq!(
        version_of(&server, "d", 0).await,
        v(&"x".repeat(3000), 7, 7, 1)
    );

    // Every change since rev 2, each with the version it replaced.
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(2)
        .with_prev_key();
    let mut stream = client.watch("", Some(opts)).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 7 {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events within 10 s")
            .unwrap()
            .expect("stream open");
        for e in msg.events() {
            let kv = e.kv().unwrap();
            let value = match e.event_type() {
                EventType::Put => kv.value_str().unwrap().to_string(),
                EventType::Delete => "deleted".to_string(),
            };
            let prev = e.prev_kv().map(|p| p.value_str().unwrap().to_string());
            events.push((
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
                value,
                prev,
            ));
        }
    }
    let ev = |key: &str, rev, value: &str, prev: Option<&str>| {
        (
            key.to_string(),
            rev,
            value.to_string(),
            prev.map(str::to_string),
        )
    };
    assert_eq!(
        events,
        vec![
            ev("a", 2, "1", None),
            ev("a", 3, "2", Some("1")),
            ev("b", 4, "1", None),
            ev("c", 4, "1", None),
            ev("b", 5, "deleted", Some("1")),
            ev("a", 6, "3", Some("2")),
            ev("d", 7, &"x".repeat(3000), None),
        ]
    );

    // New writes on top of the old records, then a physical compaction through both.
    client.put("a", "4", None).await.unwrap();
    client.put("c", "2", None).await.unwrap();
    client.delete("d", None).await.unwrap();
    let at = client
        .get("a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(at, 10);
    let opts = etcd_client::CompactionOptions::new().with_physical();
    client.compact(9, Some(opts)).await.unwrap();
    assert_eq!(version_of(&server, "a", 9).await, v("4", 2, 8, 4));
    assert_eq!(version_of(&server, "c", 0).await, v("2", 4, 9, 2));
    assert_eq!(version_of(&server, "d", 0).await, None);
    let old = client
        .get("a", Some(GetOptions::new().with_revision(7)))
        .await
        .unwrap_err();
    assert!(
        old.to_string()
            .contains("required revision has been compacted"),
        "{old}"
    );
    let hash = client
        .maintenance_client()
        .hash_kv(10)
        .await
        .unwrap()
        .hash();

    // kill -9: the upgraded records are recovered from the journal.
    server.restart().await.unwrap();
    let mut client = server.client().await.unwrap();
    assert_eq!(version_of(&server, "a", 0).await, v("4", 2, 8, 4));
    assert_eq!(version_of(&server, "c", 9).await, v("2", 4, 9, 2));
    let again = client
        .maintenance_client()
        .hash_kv(10)
        .await
        .unwrap()
        .hash();
    assert_eq!(hash, again, "stable across a restart");
    let put = client.put("e", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 11, "the next revision");
    let members = client.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1, "{members:?}");
}

//! KV service through etcd-client: Range options, Put, DeleteRange, Txn and Compact, with
//! exact revisions, versions and error strings as etcd 3.5.1 produces them.

use cairn_tests::Server;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

use crate::{assert_grpc_error, current_revision, rev, Code};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

async fn start() -> (Server, Client) {
    let server = Server::start().await.expect("server starts");
    let client = server.client().await.expect("client connects");
    (server, client)
}

fn keys(resp: &GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

fn values(resp: &GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .collect()
}

/// Puts `pairs` in order, one revision each, and returns the revision of the last put.
async fn put_all(client: &mut Client, pairs: &[(&str, &str)]) -> i64 {
    let mut last = 0;
    for (k, v) in pairs {
        last = rev!(client.put(*k, *v, None).await.expect("put"));
    }
    last
}

#[tokio::test]
async fn fresh_server_is_at_revision_1() {
    let (_server, mut client) = start().await;
    let resp = client.get("missing", None).await.unwrap();
    assert_eq!(rev!(resp), 1);
    assert!(resp.kvs().is_empty());
    assert_eq!(resp.count(), 0);
    assert!(!resp.more());
    let header = resp.header().unwrap();
    assert_ne!(header.cluster_id(), 0);
    assert_ne!(header.member_id(), 0);
    assert!(header.raft_term() >= 1);
}

#[tokio::test]
async fn put_bumps_revision_and_version_and_delete_ends_the_generation() {
    let (_server, mut client) = start().await;
    assert_eq!(rev!(client.put("k", "v1", None).await.unwrap()), 2);
    assert_eq!(rev!(client.put("k", "v2", None).await.unwrap()), 3);
    let resp = client.get("k", None).await.unwrap();
    assert_eq!(rev!(resp), 3);
    let kv = &resp.kvs()[0];
    assert_eq!(
        (
            kv.key(),
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ),
        (&b"k"[..], &b"v2"[..], 2, 3, 2, 0)
    );

    let del = client.delete("k", None).await.unwrap();
    assert_eq!((rev!(del), del.deleted()), (4, 1));
    assert_eq!(client.get("k", None).await.unwrap().count(), 0);

    // A new generation starts from version 1 with a new create revision.
    assert_eq!(rev!(client.put("k", "v3", None).await.unwrap()), 5);
    let resp = client.get("k", None).await.unwrap();
    let kv = &resp.kvs()[0];
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (5, 5, 1)
    );
}

#[tokio::test]
async fn put_prev_kv_returns_the_previous_pair() {
    let (_server, mut client) = start().await;
    let first = client
        .put("k", "v1", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(first.prev_key().is_none());
    let second = client
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(rev!(second), 3);
    let prev = second.prev_key().expect("prev_kv");
    assert_eq!(
        (
            prev.key(),
            prev.value(),
            prev.create_revision(),
            prev.mod_revision(),
            prev.version()
        ),
        (&b"k"[..], &b"v1"[..], 2, 2, 1)
    );
    // Without the option no previous pair is returned.
    let third = client.put("k", "v3", None).await.unwrap();
    assert!(third.prev_key().is_none());
}

#[tokio::test]
async fn put_ignore_value_keeps_the_value_and_bumps_the_version() {
    let (_server, mut client) = start().await;
    client.put("k", "keep", None).await.unwrap();
    let resp = client
        .put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    assert_eq!(rev!(resp), 3);
    let got = client.get("k", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(
        (kv.value(), kv.version(), kv.mod_revision()),
        (&b"keep"[..], 2, 3)
    );

    // ignore_value with a value, and ignore_value on a missing key, are refused.
    assert_grpc_error(
        client
            .put("k", "x", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_grpc_error(
        client
            .put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_eq!(current_revision(&mut client).await, 3);
}

#[tokio::test]
async fn put_ignore_lease_on_missing_key_is_an_error() {
    let (_server, mut client) = start().await;
    assert_grpc_error(
        client
            .put("missing", "v", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_eq!(current_revision(&mut client).await, 1);

    // On an existing key it keeps the key's lease (none here) and updates the value.
    client.put("k", "v1", None).await.unwrap();
    client
        .put("k", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    let got = client.get("k", None).await.unwrap();
    assert_eq!(
        (got.kvs()[0].value(), got.kvs()[0].lease()),
        (&b"v2"[..], 0)
    );
}

#[tokio::test]
async fn put_with_lease_attaches_it_and_ignore_lease_keeps_it() {
    let (_server, mut client) = start().await;
    let lease = client.lease_grant(60, None).await.unwrap().id();
    client
        .put("k", "v1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    client
        .put("k", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    let got = client.get("k", None).await.unwrap();
    assert_eq!(
        (got.kvs()[0].value(), got.kvs()[0].lease()),
        (&b"v2"[..], lease)
    );
    // A plain put detaches the lease.
    client.put("k", "v3", None).await.unwrap();
    assert_eq!(client.get("k", None).await.unwrap().kvs()[0].lease(), 0);
    // A put naming an unknown lease is refused.
    assert_grpc_error(
        client
            .put("k", "v4", Some(PutOptions::new().with_lease(0x1234)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
}

async fn populate(client: &mut Client) {
    // Revisions 2..=7.
    put_all(
        client,
        &[
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("d/1", "4"),
            ("d/2", "5"),
            ("e", "6"),
        ],
    )
    .await;
}

#[tokio::test]
async fn range_end_selects_half_open_intervals_prefixes_and_from_key() {
    let (_server, mut client) = start().await;
    populate(&mut client).await;

    let resp = client
        .get("b", Some(GetOptions::new().with_range("d/1")))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["b", "c"]);
    assert_eq!((resp.count(), resp.more(), rev!(resp)), (2, false, 7));

    // range_end "\0" means every key >= key.
    let resp = client
        .get("c", Some(GetOptions::new().with_range("\0")))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["c", "d/1", "d/2", "e"]);
    let resp = client
        .get("c", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["c", "d/1", "d/2", "e"]);

    // Prefix: range_end is the key with its last byte incremented.
    let resp = client
        .get("d/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["d/1", "d/2"]);
    assert_eq!(values(&resp), ["4", "5"]);
    let resp = client
        .get("d/", Some(GetOptions::new().with_range("d0")))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["d/1", "d/2"]);

    // key "\0" with range_end "\0" is the whole keyspace.
    let resp = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["a", "b", "c", "d/1", "d/2", "e"]);

    // A range_end at or before key selects nothing.
    let resp = client
        .get("c", Some(GetOptions::new().with_range("b")))
        .await
        .unwrap();
    assert_eq!((resp.count(), resp.kvs().len()), (0, 0));

    // A single key that does not exist.
    let resp = client.get("bb", None).await.unwrap();
    assert_eq!((resp.count(), resp.kvs().len(), resp.more()), (0, 0, false));
}

#[tokio::test]
async fn range_limit_sets_more_and_count_is_the_total() {
    let (_server, mut client) = start().await;
    populate(&mut client).await;
    let resp = client
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["a", "b"]);
    assert_eq!((resp.count(), resp.more()), (6, true));

    let resp = client
        .get("", Some(GetOptions::new().with_all_keys().with_limit(6)))
        .await
        .unwrap();
    assert_eq!((resp.kvs().len(), resp.count(), resp.more()), (6, 6, false));

    // limit 0 means no limit.
    let resp = client
        .get("", Some(GetOptions::new().with_all_keys().with_limit(0)))
        .await
        .unwrap();
    assert_eq!((resp.kvs().len(), resp.more()), (6, false));
}

#[tokio::test]
async fn range_keys_only_and_count_only() {
    let (_server, mut client) = start().await;
    populate(&mut client).await;
    let resp = client
        .get("d/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["d/1", "d/2"]);
    assert_eq!(values(&resp), ["", ""]);
    // keys_only still reports revisions and versions.
    assert_eq!(
        (
            resp.kvs()[0].create_revision(),
            resp.kvs()[0].mod_revision(),
            resp.kvs()[0].version()
        ),
        (5, 5, 1)
    );

    let resp = client
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((resp.kvs().len(), resp.count(), resp.more()), (0, 6, false));
    let resp = client
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_count_only()
                    .with_limit(2),
            ),
        )
        .await
        .unwrap();
    assert_eq!((resp.kvs().len(), resp.count()), (0, 6));
}

#[tokio::test]
async fn range_sorts_by_each_target() {
    let (_server, mut client) = start().await;
    // Values descend while keys ascend; z is modified last, b twice.
    put_all(
        &mut client,
        &[("a", "9"), ("b", "5"), ("c", "7"), ("z", "1"), ("b", "8")],
    )
    .await;
    let sorted = |target, order| GetOptions::new().with_all_keys().with_sort(target, order);

    let resp = client
        .get("", Some(sorted(SortTarget::Key, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["z", "c", "b", "a"]);
    let resp = client
        .get("", Some(sorted(SortTarget::Value, SortOrder::Ascend)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["z", "c", "b", "a"]);
    let resp = client
        .get("", Some(sorted(SortTarget::Value, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["a", "b", "c", "z"]);
    let resp = client
        .get("", Some(sorted(SortTarget::Create, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["z", "c", "b", "a"]);
    let resp = client
        .get("", Some(sorted(SortTarget::Mod, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["b", "z", "c", "a"]);
    let resp = client
        .get("", Some(sorted(SortTarget::Mod, SortOrder::Ascend)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["a", "c", "z", "b"]);
    let resp = client
        .get("", Some(sorted(SortTarget::Version, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(keys(&resp)[0], "b");

    // Sort applies before limit: the two greatest mod revisions.
    let resp = client
        .get(
            "",
            Some(sorted(SortTarget::Mod, SortOrder::Descend).with_limit(2)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["b", "z"]);
    assert_eq!((resp.count(), resp.more()), (4, true));
}

#[tokio::test]
async fn range_reads_history_at_a_revision() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("k", "v1"), ("k", "v2"), ("other", "x")]).await;
    client.delete("k", None).await.unwrap(); // revision 5

    let at = |rev| GetOptions::new().with_revision(rev);
    assert_eq!(client.get("k", Some(at(1))).await.unwrap().count(), 0);
    let resp = client.get("k", Some(at(2))).await.unwrap();
    assert_eq!(values(&resp), ["v1"]);
    // The header reports the current store revision, not the requested one.
    assert_eq!(rev!(resp), 5);
    let resp = client.get("k", Some(at(4))).await.unwrap();
    assert_eq!(values(&resp), ["v2"]);
    assert_eq!(
        (
            resp.kvs()[0].create_revision(),
            resp.kvs()[0].mod_revision(),
            resp.kvs()[0].version()
        ),
        (2, 3, 2)
    );
    assert_eq!(client.get("k", Some(at(5))).await.unwrap().count(), 0);
    let resp = client.get("", Some(at(3).with_all_keys())).await.unwrap();
    assert_eq!(keys(&resp), ["k"]);

    assert_grpc_error(client.get("k", Some(at(6))).await, Code::OutOfRange, FUTURE);
    assert_grpc_error(
        client.get("k", Some(at(1000))).await,
        Code::OutOfRange,
        FUTURE,
    );
}

#[tokio::test]
async fn range_serializable_reads_the_local_store() {
    let (_server, mut client) = start().await;
    client.put("k", "v", None).await.unwrap();
    let resp = client
        .get("k", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(values(&resp), ["v"]);
    assert_eq!(rev!(resp), 2);
}

#[tokio::test]
async fn range_filters_by_mod_and_create_revision() {
    let (_server, mut client) = start().await;
    // a@2, b@3, c@4, then a modified @5: a(create 2, mod 5), b(3,3), c(4,4).
    put_all(
        &mut client,
        &[("a", "1"), ("b", "2"), ("c", "3"), ("a", "4")],
    )
    .await;
    let all = || GetOptions::new().with_all_keys();

    let resp = client
        .get("", Some(all().with_min_mod_revision(4)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["a", "c"]);
    let resp = client
        .get("", Some(all().with_max_mod_revision(3)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["b"]);
    let resp = client
        .get("", Some(all().with_min_create_revision(3)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["b", "c"]);
    let resp = client
        .get("", Some(all().with_max_create_revision(3)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["a", "b"]);
    let resp = client
        .get(
            "",
            Some(all().with_min_mod_revision(3).with_max_mod_revision(4)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["b", "c"]);
    // etcd counts the keys in the range before applying these filters.
    assert_eq!(resp.count(), 3);
}

#[tokio::test]
async fn delete_range_prefix_range_and_prev_kv() {
    let (_server, mut client) = start().await;
    populate(&mut client).await; // revisions 2..=7

    // Deleting a missing key deletes nothing and does not bump the revision.
    let resp = client.delete("nope", None).await.unwrap();
    assert_eq!((resp.deleted(), rev!(resp)), (0, 7));

    let resp = client
        .delete(
            "d/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!((resp.deleted(), rev!(resp)), (2, 8));
    let prev: Vec<_> = resp
        .prev_kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            )
        })
        .collect();
    assert_eq!(
        prev,
        [
            ("d/1".to_string(), "4".to_string(), 5),
            ("d/2".to_string(), "5".to_string(), 6)
        ]
    );

    // [a, c) deletes a and b in one revision; without prev_kv none are returned.
    let resp = client
        .delete("a", Some(DeleteOptions::new().with_range("c")))
        .await
        .unwrap();
    assert_eq!(
        (resp.deleted(), rev!(resp), resp.prev_kvs().len()),
        (2, 9, 0)
    );

    let resp = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["c", "e"]);

    // The deletions are visible in history at their revision.
    let resp = client
        .get("", Some(GetOptions::new().with_all_keys().with_revision(8)))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["a", "b", "c", "e"]);

    let resp = client
        .delete("", Some(DeleteOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!((resp.deleted(), rev!(resp)), (2, 10));
}

#[tokio::test]
async fn txn_compares_each_target() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("k", "v1"), ("k", "v2"), ("other", "o")]).await; // k: create 2, mod 3, version 2

    let cases = [
        (Compare::version("k", CompareOp::Equal, 2), true),
        (Compare::version("k", CompareOp::Greater, 2), false),
        (Compare::version("k", CompareOp::Less, 3), true),
        (Compare::version("k", CompareOp::NotEqual, 2), false),
        (Compare::version("missing", CompareOp::Equal, 0), true),
        (Compare::create_revision("k", CompareOp::Equal, 2), true),
        (
            Compare::create_revision("missing", CompareOp::Equal, 0),
            true,
        ),
        (Compare::create_revision("k", CompareOp::Less, 2), false),
        (Compare::mod_revision("k", CompareOp::Equal, 3), true),
        (Compare::mod_revision("k", CompareOp::Greater, 3), false),
        // Other targets compare a missing key as zero.
        (Compare::mod_revision("missing", CompareOp::Less, 1), true),
        (Compare::value("k", CompareOp::Equal, "v2"), true),
        (Compare::value("k", CompareOp::Greater, "v1"), true),
        (Compare::value("k", CompareOp::Less, "v1"), false),
        (Compare::value("k", CompareOp::NotEqual, "v2"), false),
        // A value compare on a missing key is false whatever the operator.
        (Compare::value("missing", CompareOp::Equal, ""), false),
        (Compare::value("missing", CompareOp::NotEqual, "x"), false),
        (Compare::lease("k", CompareOp::Equal, 0), true),
        (Compare::lease("k", CompareOp::Greater, 0), false),
        // Range compares: every key in the range must satisfy it.
        (
            Compare::version("\0", CompareOp::Greater, 0).with_range("\0"),
            true,
        ),
        (
            Compare::mod_revision("a", CompareOp::Less, 4).with_range("z"),
            false,
        ),
        (
            Compare::mod_revision("k", CompareOp::Less, 4).with_range("l"),
            true,
        ),
    ];
    for (i, (cmp, expected)) in cases.into_iter().enumerate() {
        let resp = client.txn(Txn::new().when([cmp])).await.unwrap();
        assert_eq!(resp.succeeded(), expected, "compare case {i}");
        // A txn without write ops never bumps the revision.
        assert_eq!(rev!(resp), 4, "compare case {i}");
    }

    // Several compares are ANDed.
    let resp = client
        .txn(Txn::new().when([
            Compare::value("k", CompareOp::Equal, "v2"),
            Compare::value("other", CompareOp::Equal, "nope"),
        ]))
        .await
        .unwrap();
    assert!(!resp.succeeded());
}

#[tokio::test]
async fn txn_lease_compare_sees_the_attached_lease() {
    let (_server, mut client) = start().await;
    let lease = client.lease_grant(60, None).await.unwrap().id();
    client
        .put("k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let resp = client
        .txn(Txn::new().when([Compare::lease("k", CompareOp::Equal, lease)]))
        .await
        .unwrap();
    assert!(resp.succeeded());
    let resp = client
        .txn(Txn::new().when([Compare::lease("k", CompareOp::Equal, 0)]))
        .await
        .unwrap();
    assert!(!resp.succeeded());
}

#[tokio::test]
async fn txn_runs_the_branch_chosen_by_the_compares_at_one_revision() {
    let (_server, mut client) = start().await;
    client.put("k", "v1", None).await.unwrap(); // revision 2

    let txn = |expected: &str| {
        Txn::new()
            .when([Compare::value("k", CompareOp::Equal, expected)])
            .and_then([
                TxnOp::put("s1", "yes", None),
                TxnOp::put("s2", "yes", None),
                TxnOp::get("k", None),
                TxnOp::delete("k", None),
            ])
            .or_else([TxnOp::put("f1", "no", None), TxnOp::get("k", None)])
    };

    // Failure branch: one put, one revision.
    let resp = client.txn(txn("other")).await.unwrap();
    assert!(!resp.succeeded());
    assert_eq!(rev!(resp), 3);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 2);
    match (&ops[0], &ops[1]) {
        (TxnOpResponse::Put(put), TxnOpResponse::Get(get)) => {
            assert_leaf_header(put.header(), 3);
            assert_leaf_header(get.header(), 3);
            assert_eq!(values(get), ["v1"]);
        }
        other => panic!("unexpected responses {other:?}"),
    }

    // Success branch: two puts, a read and a delete, all at revision 4.
    let resp = client.txn(txn("v1")).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(rev!(resp), 4);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 4);
    match (&ops[0], &ops[1], &ops[2], &ops[3]) {
        (
            TxnOpResponse::Put(p1),
            TxnOpResponse::Put(p2),
            TxnOpResponse::Get(get),
            TxnOpResponse::Delete(del),
        ) => {
            for header in [p1.header(), p2.header(), get.header(), del.header()] {
                assert_leaf_header(header, 4);
            }
            // The read inside the txn sees the txn's earlier writes' store, before the delete.
            assert_eq!(values(get), ["v1"]);
            assert_eq!(del.deleted(), 1);
        }
        other => panic!("unexpected responses {other:?}"),
    }
    for key in ["s1", "s2"] {
        let got = client.get(key, None).await.unwrap();
        assert_eq!(
            (got.kvs()[0].create_revision(), got.kvs()[0].mod_revision()),
            (4, 4)
        );
    }
    assert_eq!(client.get("k", None).await.unwrap().count(), 0);
    assert_eq!(current_revision(&mut client).await, 4);
}

#[tokio::test]
async fn txn_reads_see_earlier_writes_of_the_same_txn() {
    let (_server, mut client) = start().await;
    let resp = client
        .txn(Txn::new().and_then([
            TxnOp::put("a", "1", None),
            TxnOp::get("a", None),
            TxnOp::put("b", "2", None),
            TxnOp::get("", Some(GetOptions::new().with_all_keys())),
        ]))
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(rev!(resp), 2);
    let ops = resp.op_responses();
    let TxnOpResponse::Get(first) = &ops[1] else {
        panic!("expected a range response, got {:?}", ops[1]);
    };
    assert_eq!(values(first), ["1"]);
    assert_eq!(first.kvs()[0].mod_revision(), 2);
    let TxnOpResponse::Get(all) = &ops[3] else {
        panic!("expected a range response, got {:?}", ops[3]);
    };
    assert_eq!(keys(all), ["a", "b"]);
}

#[tokio::test]
async fn read_only_and_no_op_txns_do_not_bump_the_revision() {
    let (_server, mut client) = start().await;
    client.put("k", "v", None).await.unwrap(); // revision 2

    let resp = client
        .txn(Txn::new().and_then([TxnOp::get("k", None), TxnOp::get("x", None)]))
        .await
        .unwrap();
    assert_eq!(rev!(resp), 2);

    // An empty txn.
    let resp = client.txn(Txn::new()).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(rev!(resp), 2);

    // A txn whose only write is a delete of a missing key changes nothing.
    let resp = client
        .txn(Txn::new().and_then([TxnOp::delete("missing", None)]))
        .await
        .unwrap();
    assert_eq!(rev!(resp), 2);
    assert_eq!(current_revision(&mut client).await, 2);
}

/// The header etcd puts on an op response inside a txn: the txn's revision and nothing else.
#[track_caller]
fn assert_leaf_header(header: Option<&etcd_client::ResponseHeader>, revision: i64) {
    let header = header.expect("op response header");
    assert_eq!(
        (
            header.cluster_id(),
            header.member_id(),
            header.revision(),
            header.raft_term()
        ),
        (0, 0, revision, 0)
    );
}

#[tokio::test]
async fn nested_txn_applies_inner_branches_at_the_outer_revision() {
    let (_server, mut client) = start().await;
    client.put("k", "v1", None).await.unwrap(); // revision 2

    let inner_ok = Txn::new()
        .when([Compare::version("k", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("inner", "then", None), TxnOp::get("k", None)])
        .or_else([TxnOp::put("inner", "else", None)]);
    let inner_fail = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "nope")])
        .and_then([TxnOp::put("inner2", "then", None)])
        .or_else([TxnOp::get("k", None)]);
    let resp = client
        .txn(Txn::new().and_then([
            TxnOp::put("outer", "x", None),
            TxnOp::txn(inner_ok),
            TxnOp::txn(inner_fail),
        ]))
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(rev!(resp), 3);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 3);
    // etcd 3.5 quirk: a nested txn's own header is present but all zero (revision 0), while
    // the leaf responses inside it carry only the txn's revision (no cluster, member or term).
    let TxnOpResponse::Put(outer_put) = &ops[0] else {
        panic!("expected a put response, got {:?}", ops[0]);
    };
    assert_leaf_header(outer_put.header(), 3);
    let TxnOpResponse::Txn(first) = &ops[1] else {
        panic!("expected a txn response, got {:?}", ops[1]);
    };
    assert!(first.succeeded());
    let header = first.header().expect("nested txn header");
    assert_eq!(
        (
            header.cluster_id(),
            header.member_id(),
            header.revision(),
            header.raft_term()
        ),
        (0, 0, 0, 0)
    );
    let inner_ops = first.op_responses();
    assert_eq!(inner_ops.len(), 2);
    match (&inner_ops[0], &inner_ops[1]) {
        (TxnOpResponse::Put(put), TxnOpResponse::Get(get)) => {
            assert_leaf_header(put.header(), 3);
            assert_leaf_header(get.header(), 3);
            assert_eq!(values(get), ["v1"]);
        }
        other => panic!("unexpected inner responses {other:?}"),
    }
    let TxnOpResponse::Txn(second) = &ops[2] else {
        panic!("expected a txn response, got {:?}", ops[2]);
    };
    assert!(!second.succeeded());
    assert_eq!(second.header().map(|h| h.revision()), Some(0));
    let inner_ops = second.op_responses();
    let [TxnOpResponse::Get(get)] = inner_ops.as_slice() else {
        panic!("unexpected inner responses {inner_ops:?}");
    };
    assert_leaf_header(get.header(), 3);

    for (key, value) in [("outer", "x"), ("inner", "then")] {
        let got = client.get(key, None).await.unwrap();
        assert_eq!(values(&got), [value]);
        assert_eq!(got.kvs()[0].mod_revision(), 3);
    }
    assert_eq!(client.get("inner2", None).await.unwrap().count(), 0);
    assert_eq!(current_revision(&mut client).await, 3);
}

#[tokio::test]
async fn compact_removes_history_below_the_revision() {
    let (_server, mut client) = start().await;
    put_all(
        &mut client,
        &[("k", "v1"), ("k", "v2"), ("k", "v3"), ("k", "v4")],
    )
    .await; // 2..=5

    let resp = client
        .compact(4, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    assert_eq!(rev!(resp), 5);

    let at = |rev| Some(GetOptions::new().with_revision(rev));
    assert_grpc_error(client.get("k", at(3)).await, Code::OutOfRange, COMPACTED);
    assert_grpc_error(client.get("k", at(1)).await, Code::OutOfRange, COMPACTED);
    // The compact revision itself stays readable.
    let resp = client.get("k", at(4)).await.unwrap();
    assert_eq!(values(&resp), ["v3"]);
    assert_eq!(
        (resp.kvs()[0].create_revision(), resp.kvs()[0].version()),
        (2, 3)
    );
    assert_eq!(values(&client.get("k", None).await.unwrap()), ["v4"]);

    // Compacting again at or below the compacted revision, or beyond the store, fails.
    assert_grpc_error(client.compact(4, None).await, Code::OutOfRange, COMPACTED);
    assert_grpc_error(client.compact(2, None).await, Code::OutOfRange, COMPACTED);
    assert_grpc_error(client.compact(6, None).await, Code::OutOfRange, FUTURE);
    // Compaction does not bump the revision; compacting at the current revision works.
    assert_eq!(current_revision(&mut client).await, 5);
    client.compact(5, None).await.unwrap();
    assert_grpc_error(client.get("k", at(4)).await, Code::OutOfRange, COMPACTED);
    assert_eq!(values(&client.get("k", at(5)).await.unwrap()), ["v4"]);
}

#[tokio::test]
async fn compact_keeps_deleted_keys_out_and_live_keys_in() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("gone", "1"), ("live", "2")]).await; // 2, 3
    client.delete("gone", None).await.unwrap(); // 4
    client.put("live", "3", None).await.unwrap(); // 5
    client
        .compact(5, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let resp = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["live"]);
    assert_eq!(
        (
            resp.kvs()[0].create_revision(),
            resp.kvs()[0].mod_revision(),
            resp.kvs()[0].version()
        ),
        (3, 5, 2)
    );
    // Writes after compaction continue the revision sequence.
    assert_eq!(rev!(client.put("new", "x", None).await.unwrap()), 6);
}

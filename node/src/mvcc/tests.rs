//! Unit tests of the MVCC store against a real store in a temp dir. Expected values
//! follow etcd 3.5 (apply.go, kvstore_txn.go, key_index.go).

use super::*;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RequestOp, ResponseHeader, ResponseOp,
};
use crate::proto::mvccpb::KeyValue;

/// A fresh store in a temporary directory; the other MVCC test modules use it too.
pub(super) struct Fixture {
    dir: tempfile::TempDir,
    pub(super) mvcc: Mvcc,
}

pub(super) fn open() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mvcc = open_in(dir.path());
    Fixture { dir, mvcc }
}

fn open_in(path: &std::path::Path) -> Mvcc {
    let store = Arc::new(Store::open(path).expect("store"));
    Mvcc::open(store).expect("mvcc")
}

impl Fixture {
    /// Closes and reopens the store, as a restart.
    fn reopen(self) -> Fixture {
        let Fixture { dir, mvcc } = self;
        drop(mvcc);
        let mvcc = open_in(dir.path());
        Fixture { dir, mvcc }
    }

    fn txn(&self, req: TxnRequest) -> Result<(TxnResponse, Vec<Event>), MvccError> {
        self.mvcc.apply_txn(&req, b"marker")
    }

    fn ok(&self, ops: Vec<RequestOp>) -> (TxnResponse, Vec<Event>) {
        self.txn(TxnRequest {
            success: ops,
            ..Default::default()
        })
        .expect("txn")
    }

    fn put(&self, key: &str, value: &str) -> i64 {
        revision_of(&self.ok(vec![put(key, value)]).0)
    }

    fn delete(&self, key: &str, end: &str) -> i64 {
        revision_of(&self.ok(vec![delete(key, end)]).0)
    }

    fn range(&self, req: RangeRequest) -> Result<RangeResponse, MvccError> {
        self.mvcc.range(&req)
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        self.range(range(key, ""))
            .expect("range")
            .kvs
            .into_iter()
            .next()
    }

    fn history_len(&self) -> usize {
        self.mvcc
            .store
            .snapshot()
            .iter(&self.mvcc.ks.history)
            .count()
    }

    fn revs_len(&self) -> usize {
        self.mvcc.store.snapshot().iter(&self.mvcc.ks.revs).count()
    }
}

fn revision_of(resp: &TxnResponse) -> i64 {
    resp.header.as_ref().expect("header").revision
}

fn put(key: &str, value: &str) -> RequestOp {
    put_req(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
}

fn put_req(p: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(p)),
    }
}

fn delete(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: true,
        })),
    }
}

fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn range_op(req: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(req)),
    }
}

fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: 0,
    }
}

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

#[test]
fn fresh_store_is_at_revision_one() {
    let f = open();
    assert_eq!(f.mvcc.current_revision(), 1);
    assert_eq!(f.mvcc.compact_revision(), 0);
    let resp = f.range(range("a", "\0")).expect("range");
    assert_eq!(resp.header, header(1));
    assert_eq!((resp.kvs.len(), resp.count, resp.more), (0, 0, false));
    assert_eq!(f.mvcc.applied_marker().expect("marker"), None);
}

#[test]
fn put_overwrite_delete_recreate() {
    let f = open();
    let (resp, events) = f.ok(vec![put("a", "1")]);
    assert_eq!(resp.header, header(2));
    assert!(resp.succeeded);
    assert_eq!(
        events,
        vec![Event {
            r#type: EventType::Put as i32,
            kv: Some(kv("a", "1", 2, 2, 1)),
            prev_kv: None
        }]
    );
    assert_eq!(f.get("a"), Some(kv("a", "1", 2, 2, 1)));

    let (_, events) = f.ok(vec![put("a", "2")]);
    assert_eq!(f.get("a"), Some(kv("a", "2", 2, 3, 2)));
    assert_eq!(events[0].prev_kv, Some(kv("a", "1", 2, 2, 1)));

    let (resp, events) = f.ok(vec![delete("a", "")]);
    assert_eq!(resp.header, header(4));
    let Some(Response::ResponseDeleteRange(d)) = &resp.responses[0].response else {
        panic!("{resp:?}")
    };
    assert_eq!((d.deleted, &d.prev_kvs), (1, &vec![kv("a", "2", 2, 3, 2)]));
    assert_eq!(d.header, header(4));
    let tombstone = KeyValue {
        key: b"a".to_vec(),
        mod_revision: 4,
        ..Default::default()
    };
    assert_eq!(
        events,
        vec![Event {
            r#type: EventType::Delete as i32,
            kv: Some(tombstone),
            prev_kv: Some(kv("a", "2", 2, 3, 2))
        }]
    );
    assert_eq!(f.get("a"), None);

    // A delete ends the generation: the key comes back with a new create revision.
    assert_eq!(f.put("a", "3"), 5);
    assert_eq!(f.get("a"), Some(kv("a", "3", 5, 5, 1)));
    assert_eq!(f.mvcc.current_revision(), 5);
    assert_eq!(f.mvcc.key_count(), 1);
    assert_eq!(
        f.mvcc.applied_marker().expect("marker"),
        Some(b"marker".to_vec())
    );
}

#[test]
fn writes_that_change_nothing_keep_the_revision() {
    let f = open();
    f.put("a", "1");
    let (resp, events) = f.ok(vec![delete("zzz", "")]);
    assert_eq!(resp.header, header(2));
    let Some(Response::ResponseDeleteRange(d)) = &resp.responses[0].response else {
        panic!("{resp:?}")
    };
    assert_eq!((d.deleted, d.header), (0, header(2)));
    assert!(events.is_empty());
    let (resp, events) = f.ok(vec![range_op(range("a", ""))]);
    assert_eq!(resp.header, header(2));
    assert!(events.is_empty());
    assert_eq!(f.mvcc.current_revision(), 2);
    assert_eq!(f.put("b", "1"), 3);
}

#[test]
fn put_options() {
    let f = open();
    let leased = PutRequest {
        key: "k".into(),
        value: "v".into(),
        lease: 42,
        ..Default::default()
    };
    f.ok(vec![put_req(leased)]);

    // ignore_value keeps the value, takes the new lease, and prev_kv returns the old version.
    let p = PutRequest {
        key: "k".into(),
        lease: 7,
        ignore_value: true,
        prev_kv: true,
        ..Default::default()
    };
    let (resp, _) = f.ok(vec![put_req(p)]);
    let Some(Response::ResponsePut(pr)) = &resp.responses[0].response else {
        panic!("{resp:?}")
    };
    assert_eq!(pr.header, header(3));
    assert_eq!(
        pr.prev_kv,
        Some(KeyValue {
            lease: 42,
            ..kv("k", "v", 2, 2, 1)
        })
    );
    assert_eq!(
        f.get("k"),
        Some(KeyValue {
            lease: 7,
            ..kv("k", "v", 2, 3, 2)
        })
    );

    // ignore_lease keeps the lease.
    let p = PutRequest {
        key: "k".into(),
        value: "w".into(),
        ignore_lease: true,
        ..Default::default()
    };
    let (resp, _) = f.ok(vec![put_req(p)]);
    let Some(Response::ResponsePut(pr)) = &resp.responses[0].response else {
        panic!("{resp:?}")
    };
    assert_eq!(pr.prev_kv, None, "prev_kv only when asked");
    assert_eq!(
        f.get("k"),
        Some(KeyValue {
            lease: 7,
            ..kv("k", "w", 2, 4, 3)
        })
    );

    // On a missing key both fail with etcd's error, change nothing, and still record the marker.
    for p in [
        PutRequest {
            key: "nope".into(),
            ignore_value: true,
            ..Default::default()
        },
        PutRequest {
            key: "nope".into(),
            ignore_lease: true,
            ..Default::default()
        },
    ] {
        let err = f.mvcc.apply_txn(
            &TxnRequest {
                success: vec![put_req(p)],
                ..Default::default()
            },
            b"m2",
        );
        let err = err.expect_err("missing key");
        assert!(matches!(err, MvccError::KeyNotFound));
        assert_eq!(err.to_string(), "etcdserver: key not found");
        assert_eq!(f.mvcc.current_revision(), 4);
        assert_eq!(
            f.mvcc.applied_marker().expect("marker"),
            Some(b"m2".to_vec())
        );
    }
    assert!(matches!(
        f.txn(TxnRequest {
            success: vec![put("", "x")],
            ..Default::default()
        }),
        Err(MvccError::InvalidKey(0))
    ));
}

/// Keys a..e; b is written twice, d three times, so versions, create and mod revisions differ.
fn range_fixture() -> Fixture {
    let f = open();
    f.put("c", "3"); // 2
    f.put("a", "5"); // 3
    f.put("b", "1"); // 4
    f.put("d", "2"); // 5
    f.put("b", "4"); // 6
    f.put("e", "0"); // 7
    f.put("d", "2"); // 8
    f.put("d", "9"); // 9
    f
}

#[test]
fn range_options() {
    let f = range_fixture();
    struct Case {
        name: &'static str,
        req: RangeRequest,
        keys: &'static [&'static str],
        count: i64,
        more: bool,
    }
    let all = || range("a", "\0");
    let cases = [
        Case {
            name: "single key",
            req: range("b", ""),
            keys: &["b"],
            count: 1,
            more: false,
        },
        Case {
            name: "missing key",
            req: range("bb", ""),
            keys: &[],
            count: 0,
            more: false,
        },
        Case {
            name: "half-open range",
            req: range("b", "d"),
            keys: &["b", "c"],
            count: 2,
            more: false,
        },
        Case {
            name: "from key",
            req: range("c", "\0"),
            keys: &["c", "d", "e"],
            count: 3,
            more: false,
        },
        Case {
            name: "all",
            req: range("\0", "\0"),
            keys: &["a", "b", "c", "d", "e"],
            count: 5,
            more: false,
        },
        Case {
            name: "end before start",
            req: range("d", "b"),
            keys: &[],
            count: 0,
            more: false,
        },
        Case {
            name: "limit",
            req: RangeRequest { limit: 2, ..all() },
            keys: &["a", "b"],
            count: 5,
            more: true,
        },
        Case {
            name: "limit equal to count",
            req: RangeRequest { limit: 5, ..all() },
            keys: &["a", "b", "c", "d", "e"],
            count: 5,
            more: false,
        },
        Case {
            name: "count only",
            req: RangeRequest {
                count_only: true,
                ..all()
            },
            keys: &[],
            count: 5,
            more: false,
        },
        Case {
            name: "descend by key",
            req: RangeRequest {
                sort_order: SortOrder::Descend as i32,
                limit: 2,
                ..all()
            },
            keys: &["e", "d"],
            count: 5,
            more: true,
        },
        Case {
            name: "none order with a non-key target sorts ascending",
            req: RangeRequest {
                sort_target: SortTarget::Value as i32,
                ..all()
            },
            keys: &["e", "c", "b", "a", "d"],
            count: 5,
            more: false,
        },
        Case {
            name: "ascend by version, ties in key order",
            req: RangeRequest {
                sort_order: SortOrder::Ascend as i32,
                sort_target: SortTarget::Version as i32,
                ..all()
            },
            keys: &["a", "c", "e", "b", "d"],
            count: 5,
            more: false,
        },
        Case {
            name: "descend by create",
            req: RangeRequest {
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                ..all()
            },
            keys: &["e", "d", "b", "a", "c"],
            count: 5,
            more: false,
        },
        Case {
            name: "descend by mod with limit",
            req: RangeRequest {
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Mod as i32,
                limit: 3,
                ..all()
            },
            keys: &["d", "e", "b"],
            count: 5,
            more: true,
        },
        Case {
            name: "mod revision window; count is before filtering",
            req: RangeRequest {
                min_mod_revision: 4,
                max_mod_revision: 7,
                ..all()
            },
            keys: &["b", "e"],
            count: 5,
            more: false,
        },
        Case {
            name: "create revision window with limit",
            req: RangeRequest {
                min_create_revision: 3,
                max_create_revision: 5,
                limit: 2,
                ..all()
            },
            keys: &["a", "b"],
            count: 5,
            more: true,
        },
        Case {
            name: "filter leaves fewer than the limit",
            req: RangeRequest {
                min_create_revision: 5,
                limit: 2,
                ..all()
            },
            keys: &["d", "e"],
            count: 5,
            more: false,
        },
    ];
    for case in cases {
        let resp = f
            .range(case.req)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(keys(&resp), case.keys, "{}", case.name);
        assert_eq!(
            (resp.count, resp.more),
            (case.count, case.more),
            "{}",
            case.name
        );
        assert_eq!(resp.header, header(9), "{}", case.name);
    }

    let resp = f
        .range(RangeRequest {
            keys_only: true,
            ..range("d", "")
        })
        .expect("keys only");
    assert_eq!(
        resp.kvs,
        vec![KeyValue {
            value: Vec::new(),
            ..kv("d", "", 5, 9, 3)
        }]
    );
    assert_eq!(f.get("d"), Some(kv("d", "9", 5, 9, 3)));
}

#[test]
fn historic_reads() {
    let f = range_fixture();
    f.delete("c", ""); // 10
    f.put("c", "new"); // 11
    let at = |rev: i64, key: &str, end: &str| {
        f.range(RangeRequest {
            revision: rev,
            ..range(key, end)
        })
        .expect("historic range")
    };
    assert_eq!(at(2, "a", "\0").kvs, vec![kv("c", "3", 2, 2, 1)]);
    assert_eq!(keys(&at(5, "a", "\0")), ["a", "b", "c", "d"]);
    assert_eq!(at(5, "b", "").kvs, vec![kv("b", "1", 4, 4, 1)]);
    assert_eq!(at(8, "d", "").kvs, vec![kv("d", "2", 5, 8, 2)]);
    assert_eq!(at(10, "c", "").kvs, vec![]);
    assert_eq!(at(9, "c", "").kvs, vec![kv("c", "3", 2, 2, 1)]);
    assert_eq!(at(11, "c", "").kvs, vec![kv("c", "new", 11, 11, 1)]);
    let resp = at(10, "a", "\0");
    assert_eq!(
        (keys(&resp), resp.count),
        (vec!["a".into(), "b".into(), "d".into(), "e".into()], 4)
    );
    // The header carries the store's revision, not the historic one (as etcd).
    assert_eq!(resp.header, header(11));
    let resp = f
        .range(RangeRequest {
            revision: 6,
            limit: 1,
            ..range("a", "\0")
        })
        .expect("limit");
    assert_eq!(
        (keys(&resp), resp.count, resp.more),
        (vec!["a".to_string()], 4, true)
    );
    let resp = f
        .range(RangeRequest {
            revision: 6,
            count_only: true,
            ..range("a", "\0")
        })
        .expect("count");
    assert_eq!(resp.count, 4);
    assert!(matches!(
        f.range(RangeRequest {
            revision: 12,
            ..range("a", "")
        }),
        Err(MvccError::FutureRev)
    ));
    assert_eq!(at(1, "a", "\0").count, 0);
}

#[test]
fn keys_with_zero_bytes_keep_their_order_in_history() {
    let f = open();
    for key in ["a\0b", "a", "a\0", "a\x01"] {
        f.put(key, key);
    }
    f.put("a", "again");
    let resp = f
        .range(RangeRequest {
            revision: 5,
            ..range("a", "b")
        })
        .expect("range");
    assert_eq!(keys(&resp), ["a", "a\0", "a\0b", "a\x01"]);
    let resp = f
        .range(RangeRequest {
            revision: 5,
            ..range("a\0", "")
        })
        .expect("range");
    assert_eq!(resp.kvs, vec![kv("a\0", "a\0", 4, 4, 1)]);
}

#[tokio::test]
async fn compaction() {
    let f = open();
    f.put("a", "1"); // 2
    f.put("a", "2"); // 3
    f.put("gone", "x"); // 4
    f.delete("gone", ""); // 5
    f.put("b", "1"); // 6
    f.put("a", "3"); // 7
    assert_eq!(f.history_len(), 6);

    assert!(matches!(
        f.mvcc.compact(8, b"c1"),
        Err(MvccError::FutureRev)
    ));
    assert_eq!(
        f.mvcc.applied_marker().expect("marker"),
        Some(b"c1".to_vec())
    );
    let done = f.mvcc.compact(6, b"c2").expect("compact");
    assert_eq!(f.mvcc.compact_revision(), 6);
    assert_eq!(
        f.mvcc.applied_marker().expect("marker"),
        Some(b"c2".to_vec())
    );
    for rev in [6, 5, 1] {
        assert!(
            matches!(f.mvcc.compact(rev, b"c3"), Err(MvccError::Compacted)),
            "compact {rev}"
        );
    }
    let err = f
        .range(RangeRequest {
            revision: 5,
            ..range("a", "")
        })
        .expect_err("below compact");
    assert_eq!(
        err.to_string(),
        "mvcc: required revision has been compacted"
    );
    done.await.expect("physical compaction");

    // Kept: a@3 (newest <= 6), b@6, a@7. Gone: a@2, the whole life of "gone".
    assert_eq!(f.history_len(), 3);
    assert_eq!(f.revs_len(), 3);
    let resp = f
        .range(RangeRequest {
            revision: 6,
            ..range("a", "\0")
        })
        .expect("at compact rev");
    assert_eq!(resp.kvs, vec![kv("a", "2", 2, 3, 2), kv("b", "1", 6, 6, 1)]);
    let resp = f
        .range(RangeRequest {
            revision: 7,
            ..range("a", "\0")
        })
        .expect("above");
    assert_eq!(resp.kvs, vec![kv("a", "3", 2, 7, 3), kv("b", "1", 6, 6, 1)]);

    // A second compaction removes what the first kept once it is superseded.
    f.put("b", "2"); // 8
    let done = f.mvcc.compact(8, b"c4").expect("compact again");
    done.await.expect("physical compaction");
    assert_eq!(f.history_len(), 2);
    let resp = f
        .range(RangeRequest {
            revision: 8,
            ..range("a", "\0")
        })
        .expect("at 8");
    assert_eq!(resp.kvs, vec![kv("a", "3", 2, 7, 3), kv("b", "2", 6, 8, 2)]);
    let f = f.reopen();
    assert_eq!(f.mvcc.compact_revision(), 8);
    assert!(matches!(
        f.range(RangeRequest {
            revision: 7,
            ..range("a", "")
        }),
        Err(MvccError::Compacted)
    ));
}

#[tokio::test]
async fn compaction_in_many_batches_keeps_the_newest_versions() {
    let f = open();
    for i in 0..2500 {
        f.put(&format!("k{}", i % 7), &i.to_string());
    }
    f.delete("k3", "");
    let current = f.mvcc.current_revision();
    assert_eq!(current, 2502);
    f.mvcc
        .compact(current, b"c")
        .expect("compact")
        .await
        .expect("done");
    assert_eq!(f.history_len(), 6);
    let resp = f
        .range(RangeRequest {
            revision: current,
            ..range("k", "l")
        })
        .expect("range");
    assert_eq!(keys(&resp), ["k0", "k1", "k2", "k4", "k5", "k6"]);
    assert_eq!(resp.kvs[0], kv("k0", "2499", 2, 2501, 358));
}

#[test]
fn never_compacted_store_accepts_compaction_at_zero_like_etcd() {
    let f = open();
    let _done = f.mvcc.compact(0, b"c").expect("compact 0");
    assert!(matches!(f.mvcc.compact(0, b"c"), Err(MvccError::Compacted)));
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, value: TargetUnion) -> Compare {
    Compare {
        key: key.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(value),
        ..Default::default()
    }
}

#[test]
fn txn_compares() {
    let f = open();
    f.put("k", "v1"); // 2
    f.ok(vec![put_req(PutRequest {
        key: "k".into(),
        value: "v2".into(),
        lease: 5,
        ..Default::default()
    })]); // 3
    f.put("k2", "v2"); // 4
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget as T;
    use TargetUnion as U;
    let cases: Vec<(Compare, bool)> = vec![
        (cmp("k", T::Version, Equal, U::Version(2)), true),
        (cmp("k", T::Version, Greater, U::Version(1)), true),
        (cmp("k", T::Version, Less, U::Version(2)), false),
        (cmp("k", T::Version, NotEqual, U::Version(2)), false),
        (cmp("k", T::Create, Equal, U::CreateRevision(2)), true),
        (cmp("k", T::Create, Less, U::CreateRevision(3)), true),
        (cmp("k", T::Mod, Equal, U::ModRevision(3)), true),
        (cmp("k", T::Mod, Greater, U::ModRevision(3)), false),
        (cmp("k", T::Value, Equal, U::Value("v2".into())), true),
        (cmp("k", T::Value, Greater, U::Value("v1".into())), true),
        (cmp("k", T::Value, Less, U::Value("v1".into())), false),
        (cmp("k", T::Value, NotEqual, U::Value("v1".into())), true),
        (cmp("k", T::Lease, Equal, U::Lease(5)), true),
        (cmp("k", T::Lease, NotEqual, U::Lease(5)), false),
        // A missing key compares as zero, except VALUE which always fails.
        (cmp("missing", T::Version, Equal, U::Version(0)), true),
        (cmp("missing", T::Create, Equal, U::CreateRevision(0)), true),
        (cmp("missing", T::Mod, Less, U::ModRevision(1)), true),
        (cmp("missing", T::Value, Equal, U::Value(Vec::new())), false),
        (
            cmp("missing", T::Value, NotEqual, U::Value("x".into())),
            false,
        ),
        // A target union of the wrong kind compares against zero.
        (cmp("k", T::Version, Greater, U::ModRevision(100)), true),
        // Ranges: every key must satisfy the compare.
        (
            Compare {
                range_end: "l".into(),
                ..cmp("k", T::Value, Equal, U::Value("v2".into()))
            },
            true,
        ),
        (
            Compare {
                range_end: "l".into(),
                ..cmp("k", T::Mod, Greater, U::ModRevision(3))
            },
            false,
        ),
        (
            Compare {
                range_end: "\0".into(),
                ..cmp("k", T::Create, Greater, U::CreateRevision(1))
            },
            true,
        ),
        (
            Compare {
                range_end: "z".into(),
                ..cmp("x", T::Version, Equal, U::Version(0))
            },
            true,
        ),
        (
            Compare {
                range_end: "z".into(),
                ..cmp("x", T::Value, Equal, U::Value(Vec::new()))
            },
            false,
        ),
    ];
    for (i, (compare, want)) in cases.into_iter().enumerate() {
        let req = TxnRequest {
            compare: vec![compare.clone()],
            success: vec![range_op(range("k", ""))],
            failure: vec![],
        };
        let resp = f.mvcc.txn_read_only(&req).expect("txn");
        assert_eq!(resp.succeeded, want, "case {i}: {compare:?}");
        assert_eq!(resp.responses.len(), usize::from(want), "case {i}");
    }
    // All compares must hold.
    let req = TxnRequest {
        compare: vec![
            cmp("k", T::Version, Equal, U::Version(2)),
            cmp("k2", T::Version, Equal, U::Version(2)),
        ],
        ..Default::default()
    };
    assert!(!f.mvcc.txn_read_only(&req).expect("txn").succeeded);
}

#[test]
fn txn_is_one_revision_and_sees_its_own_writes() {
    let f = open();
    f.put("a", "0"); // 2
    let req = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value("0".into()),
        )],
        success: vec![
            range_op(range("a", "")),
            put("a", "1"),
            put("b", "1"),
            range_op(range("a", "\0")),
            delete("b", ""),
            range_op(RangeRequest {
                revision: 2,
                ..range("a", "\0")
            }),
            // One key (a point lookup): the txn's own put and delete.
            range_op(range("a", "")),
            range_op(range("b", "")),
        ],
        failure: vec![put("never", "x")],
    };
    let (resp, events) = f.txn(req).expect("txn");
    assert!(resp.succeeded);
    assert_eq!(resp.header, header(3));
    let r = |i: usize| match &resp.responses[i].response {
        Some(Response::ResponseRange(r)) => r.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (r(0).header, r(0).kvs.clone()),
        (header(2), vec![kv("a", "0", 2, 2, 1)])
    );
    assert_eq!(
        (r(3).header, r(3).kvs.clone()),
        (
            header(3),
            vec![kv("a", "1", 2, 3, 2), kv("b", "1", 3, 3, 1)]
        )
    );
    assert_eq!(
        r(5).kvs,
        vec![kv("a", "0", 2, 2, 1)],
        "historic read inside a txn"
    );
    assert_eq!(
        (r(6).kvs, r(6).count),
        (vec![kv("a", "1", 2, 3, 2)], 1),
        "one key put earlier in the txn"
    );
    assert_eq!(
        (r(7).kvs, r(7).count),
        (vec![], 0),
        "one key deleted earlier in the txn"
    );
    let Some(Response::ResponsePut(p)) = &resp.responses[1].response else {
        panic!()
    };
    assert_eq!(p.header, header(3));
    let Some(Response::ResponseDeleteRange(d)) = &resp.responses[4].response else {
        panic!()
    };
    assert_eq!(
        (d.deleted, d.prev_kvs.clone()),
        (1, vec![kv("b", "1", 3, 3, 1)])
    );
    let kinds: Vec<(i32, String)> = events
        .iter()
        .map(|e| {
            (
                e.r#type,
                String::from_utf8_lossy(&e.kv.as_ref().expect("kv").key).into_owned(),
            )
        })
        .collect();
    assert_eq!(kinds, [(0, "a".into()), (0, "b".into()), (1, "b".into())]);
    assert_eq!(events[2].prev_kv, None, "b did not exist before the txn");
    assert_eq!(f.get("a"), Some(kv("a", "1", 2, 3, 2)));
    assert_eq!(f.get("b"), None);
    assert_eq!(f.mvcc.current_revision(), 3);
    // Both changes are at revision 3 with increasing sub revisions.
    let revs: Vec<Rev> = f
        .mvcc
        .store
        .snapshot()
        .iter(&f.mvcc.ks.revs)
        .keys()
        .map(|k| Rev::from_bytes(&k.expect("key")).expect("rev"))
        .collect();
    assert_eq!(
        revs,
        [
            Rev::new(2, 0),
            Rev::new(3, 0),
            Rev::new(3, 1),
            Rev::new(3, 2)
        ]
    );
    assert_eq!(f.mvcc.key_count(), 1);
}

/// The API refuses a txn that writes one key twice (`core::validate`), but the store's
/// own answer must still follow etcd's: each write builds on the one before it in the txn.
#[test]
fn a_key_written_twice_in_one_txn_builds_on_its_own_earlier_write() {
    let f = open();
    f.put("a", "0"); // 2
    let twice = TxnRequest {
        success: vec![put("a", "1"), put("a", "2")],
        ..Default::default()
    };
    assert_eq!(revision_of(&f.txn(twice).expect("txn").0), 3);
    assert_eq!(f.get("a"), Some(kv("a", "2", 2, 3, 3)));
    let recreated = TxnRequest {
        success: vec![delete("a", ""), put("a", "new")],
        ..Default::default()
    };
    assert_eq!(revision_of(&f.txn(recreated).expect("txn").0), 4);
    assert_eq!(
        f.get("a"),
        Some(kv("a", "new", 4, 4, 1)),
        "a new generation"
    );
    let old = f
        .range(RangeRequest {
            revision: 2,
            ..range("a", "")
        })
        .expect("range at 2");
    assert_eq!(
        old.kvs,
        vec![kv("a", "0", 2, 2, 1)],
        "history keeps revision 2"
    );
}

#[test]
fn nested_txns() {
    let f = open();
    f.put("a", "0"); // 2
    let inner = TxnRequest {
        // Compares see the state before the outer txn, even after the outer put.
        compare: vec![cmp(
            "a",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value("0".into()),
        )],
        success: vec![put("b", "inner"), range_op(range("a", ""))],
        failure: vec![put("c", "wrong")],
    };
    let outer = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(5),
        )],
        success: vec![],
        failure: vec![
            put("a", "1"),
            RequestOp {
                request: Some(Request::RequestTxn(inner)),
            },
            RequestOp::default(),
        ],
    };
    let (resp, events) = f.txn(outer).expect("txn");
    assert!(!resp.succeeded);
    assert_eq!(resp.header, header(3));
    assert_eq!(resp.responses[2], ResponseOp { response: None });
    let Some(Response::ResponseTxn(nested)) = &resp.responses[1].response else {
        panic!("{resp:?}")
    };
    assert!(nested.succeeded);
    assert_eq!(
        nested.header,
        Some(ResponseHeader::default()),
        "etcd leaves nested txn headers empty"
    );
    let Some(Response::ResponseRange(r)) = &nested.responses[1].response else {
        panic!()
    };
    assert_eq!(r.kvs, vec![kv("a", "1", 2, 3, 2)]);
    assert_eq!(events.len(), 2);
    assert_eq!(f.get("b"), Some(kv("b", "inner", 3, 3, 1)));
    assert_eq!(f.get("c"), None);
}

#[test]
fn txn_requests_are_checked_before_anything_runs() {
    let f = open();
    f.put("a", "0"); // 2
    let bad_put = TxnRequest {
        success: vec![
            put("x", "1"),
            RequestOp {
                request: Some(Request::RequestTxn(TxnRequest {
                    success: vec![put_req(PutRequest {
                        key: "missing".into(),
                        ignore_value: true,
                        ..Default::default()
                    })],
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(f.txn(bad_put), Err(MvccError::KeyNotFound)));
    let future = TxnRequest {
        success: vec![
            put("x", "1"),
            range_op(RangeRequest {
                revision: 3,
                ..range("a", "")
            }),
        ],
        ..Default::default()
    };
    assert!(matches!(f.txn(future), Err(MvccError::FutureRev)));
    assert_eq!(f.get("x"), None);
    assert_eq!(f.mvcc.current_revision(), 2);
    // Checks follow the chosen branch only.
    let other_branch = TxnRequest {
        success: vec![put("x", "1")],
        failure: vec![range_op(RangeRequest {
            revision: 99,
            ..range("a", "")
        })],
        ..Default::default()
    };
    assert_eq!(revision_of(&f.txn(other_branch).expect("txn").0), 3);
}

#[test]
fn read_only_txns_are_recognised() {
    let write_inside = TxnRequest {
        failure: vec![RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success: vec![delete("a", "")],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    assert!(!is_read_only(&write_inside));
    let reads = TxnRequest {
        success: vec![range_op(range("a", ""))],
        ..Default::default()
    };
    assert!(is_read_only(&reads));
    let f = open();
    f.put("a", "1");
    let resp = f.mvcc.txn_read_only(&reads).expect("txn");
    assert_eq!(resp.header, header(2));
    assert_eq!(f.mvcc.current_revision(), 2);
}

#[test]
fn state_and_marker_survive_a_restart() {
    let f = open();
    f.put("a", "1");
    f.put("b", "1");
    f.delete("a", "");
    f.mvcc.record_applied(b"entry-9").expect("marker");
    let f = f.reopen();
    assert_eq!(f.mvcc.current_revision(), 4);
    assert_eq!(f.mvcc.key_count(), 1);
    assert_eq!(
        f.mvcc.applied_marker().expect("marker"),
        Some(b"entry-9".to_vec())
    );
    assert_eq!(f.get("b"), Some(kv("b", "1", 3, 3, 1)));
    assert_eq!(f.get("a"), None);
    let resp = f
        .range(RangeRequest {
            revision: 3,
            ..range("a", "")
        })
        .expect("history");
    assert_eq!(resp.kvs, vec![kv("a", "1", 2, 2, 1)]);
    assert_eq!(f.put("a", "2"), 5);
}

/// Runs `read` 300 times while another thread applies the txns of `ops(0..300)`.
fn read_while_writing(ops: fn(usize) -> Vec<RequestOp>, read: impl Fn(&Mvcc)) {
    let f = open();
    let mvcc = Arc::new(f.mvcc);
    let writer = {
        let mvcc = mvcc.clone();
        std::thread::spawn(move || {
            for i in 0..300 {
                let req = TxnRequest {
                    success: ops(i),
                    ..Default::default()
                };
                mvcc.apply_txn(&req, b"m").expect("txn");
            }
        })
    };
    for _ in 0..300 {
        read(&mvcc);
    }
    writer.join().expect("writer");
}

#[test]
fn readers_see_whole_revisions() {
    let both = |i: usize| vec![put("x", &i.to_string()), put("y", &i.to_string())];
    read_while_writing(both, |mvcc| {
        let resp = mvcc.range(&range("x", "z")).expect("range");
        let rev = resp.header.as_ref().expect("header").revision;
        if rev == 1 {
            assert!(resp.kvs.is_empty());
            return;
        }
        assert_eq!(resp.kvs.len(), 2, "both keys of revision {rev}");
        assert_eq!(resp.kvs[0].value, resp.kvs[1].value);
        assert_eq!(resp.kvs[0].mod_revision, rev);
    });
}

#[test]
fn a_count_of_every_key_is_the_snapshots_own() {
    // A new key, and every other time the previous one deleted.
    let churn = |i: usize| {
        let mut ops = vec![put(&format!("k{i:03}"), "v")];
        if i % 2 == 1 {
            ops.push(delete(&format!("k{:03}", i - 1), ""));
        }
        ops
    };
    read_while_writing(churn, |mvcc| {
        let resp = mvcc.range(&range("\0", "\0")).expect("range");
        assert_eq!(resp.count, resp.kvs.len() as i64, "{:?}", resp.header);
    });
}

#[test]
fn a_count_of_every_key_is_exact_at_every_revision() {
    let f = open();
    f.put("a", "1"); // 2
    f.put("b", "1"); // 3
    f.put("c", "1"); // 4
    f.delete("b", ""); // 5
    f.ok(vec![put("d", "1"), delete("a", ""), put("e", "1")]); // 6
    f.put("c", "2"); // 7: c, d, e live
    let count = |f: &Fixture, key: &str, revision, limit| {
        let req = RangeRequest {
            revision,
            limit,
            ..range(key, "\0")
        };
        let resp = f.range(req).expect("range");
        (resp.count, resp.more, resp.kvs.len())
    };
    let count_only = |f: &Fixture, key: &str, revision| {
        let req = RangeRequest {
            revision,
            count_only: true,
            ..range(key, "\0")
        };
        f.range(req).expect("count").count
    };
    for key in ["", "\0"] {
        assert_eq!(count_only(&f, key, 0), 3);
        assert_eq!(count_only(&f, key, 7), 3);
        assert_eq!(count_only(&f, key, 4), 3, "a, b, c");
        assert_eq!(count_only(&f, key, 5), 2, "a, c");
        assert_eq!(count(&f, key, 0, 2), (3, true, 2));
        assert_eq!(count(&f, key, 0, 3), (3, false, 3));
        assert_eq!(count(&f, key, 5, 1), (2, true, 1));
    }
    let f = f.reopen();
    assert_eq!(count_only(&f, "\0", 0), 3);
    let counted = f.mvcc.count_while(b"\0", b"\0", &mut || true);
    assert_eq!(counted.expect("count"), Some(3));
}

#[tokio::test]
async fn compaction_resumes_after_a_restart_and_chains() {
    let f = open();
    for i in 0..3000 {
        f.put(&format!("k{}", i % 5), &i.to_string()); // revisions 2..=3001
    }
    // Closing right away stops the worker between batches; the next open resumes it.
    let _never_awaited = f.mvcc.compact(2000, b"c").expect("compact");
    let f = f.reopen();
    assert_eq!(f.mvcc.compact_revision(), 2000);
    f.put("k0", "last"); // 3002
    let first = f.mvcc.compact(2500, b"c").expect("compact");
    let second = f.mvcc.compact(3002, b"c").expect("compact");
    for done in [first, second] {
        tokio::time::timeout(std::time::Duration::from_secs(30), done)
            .await
            .expect("compaction finishes")
            .expect("worker alive");
    }
    assert_eq!(f.history_len(), 5);
    assert_eq!(f.revs_len(), 5);
    let resp = f
        .range(RangeRequest {
            revision: 3002,
            ..range("k", "l")
        })
        .expect("range");
    assert_eq!(keys(&resp), ["k0", "k1", "k2", "k3", "k4"]);
    assert_eq!(resp.kvs[0], kv("k0", "last", 2, 3002, 601));
    assert_eq!(resp.kvs[4], kv("k4", "2999", 6, 3001, 600));
}

/// Every chunk a RangeStream-style read emits, and its final message.
fn chunked(
    f: &Fixture,
    req: &RangeRequest,
    chunk_bytes: usize,
) -> (Vec<Vec<KeyValue>>, RangeResponse) {
    let mut chunks = Vec::new();
    let last = f
        .mvcc
        .pin()
        .expect("pin")
        .range_chunks(req, chunk_bytes, &mut |kvs| {
            chunks.push(kvs);
            ControlFlow::Continue(())
        })
        .expect("range_chunks")
        .expect("not stopped");
    (chunks, last)
}

#[test]
fn chunked_ranges_add_up_to_the_whole_range() {
    let f = open();
    for i in 0..50 {
        f.put(&format!("k{i:02}"), &"v".repeat(100));
    }
    f.put("k07", "changed");
    let sorted_by_value = RangeRequest {
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Value as i32,
        ..range("k", "l")
    };
    let cases = [
        range("k", "l"),
        range("k", "\0"),
        RangeRequest {
            limit: 7,
            ..range("k", "l")
        },
        RangeRequest {
            min_mod_revision: 10,
            limit: 5,
            ..range("k", "l")
        },
        RangeRequest {
            keys_only: true,
            ..range("k", "l")
        },
        RangeRequest {
            count_only: true,
            ..range("k", "l")
        },
        RangeRequest {
            revision: 20,
            ..range("k", "l")
        },
        sorted_by_value,
    ];
    for req in cases {
        let whole = f.range(req.clone()).expect("range");
        let (chunks, last) = chunked(&f, &req, 1000);
        let mut joined: Vec<KeyValue> = chunks.iter().flatten().cloned().collect();
        assert!(chunks.iter().all(|c| !c.is_empty()), "{req:?}");
        joined.extend(last.kvs.clone());
        assert_eq!(joined, whole.kvs, "{req:?}");
        assert_eq!(
            (last.header, last.more, last.count),
            (whole.header, whole.more, whole.count),
            "{req:?}"
        );
    }
    // 50 keys of ~110 bytes in chunks of 1000 bytes: several chunks.
    assert!(chunked(&f, &range("k", "l"), 1000).0.len() >= 4);
}

#[test]
fn a_chunked_range_stops_when_told() {
    let f = open();
    for i in 0..20 {
        f.put(&format!("k{i:02}"), "value");
    }
    let mut emitted = 0;
    let stopped = f
        .mvcc
        .pin()
        .expect("pin")
        .range_chunks(&range("k", "l"), 1, &mut |_| {
            emitted += 1;
            ControlFlow::Break(())
        })
        .expect("range_chunks");
    assert!(stopped.is_none());
    assert_eq!(emitted, 1);
}

/// `db_size_in_use` follows the live data: overwriting every key grows it (the history is
/// live until compacted), a compaction drops it although nothing has shrunk yet, and a
/// defragmentation shrinks what the engine holds to about the estimate.
#[tokio::test]
async fn size_in_use_drops_after_a_compaction_and_defrag_shrinks_the_files() {
    let f = open();
    let value = "x".repeat(2000);
    let keys = 500;
    let fill = |round: usize| {
        for k in 0..keys {
            f.put(&format!("key/{k:04}"), &format!("{round}{value}"));
        }
    };
    let measure = |f: &Fixture| {
        *f.mvcc.in_use.lock().unwrap_or_else(PoisonError::into_inner) = None;
        f.mvcc.size_in_use().expect("in use")
    };
    fill(0);
    let one_round = measure(&f);
    fill(1);
    fill(2);
    let three_rounds = measure(&f);
    assert!(
        three_rounds > 2 * one_round,
        "{one_round} then {three_rounds}"
    );
    let rev = f.mvcc.current_revision();
    f.mvcc
        .compact(rev, b"c")
        .expect("compact")
        .await
        .expect("compaction done");
    let compacted = measure(&f);
    assert!(
        compacted < three_rounds / 2,
        "{three_rounds} before compacting, {compacted} after"
    );
    let held = |f: &Fixture| {
        let u = f.mvcc.ks.history.usage();
        u.disk_bytes + u.memtable_bytes
    };
    let before = held(&f);
    f.mvcc.defragment().expect("defragment");
    let defragmented = measure(&f);
    let after = held(&f);
    assert!(
        after < before / 2,
        "history holds {before} bytes, then {after}"
    );
    // What the defragmentation left is at most the estimate (memtables hold the values
    // uncompressed, tables compressed: these values compress well).
    assert!(
        defragmented > 0 && defragmented <= compacted,
        "{compacted} estimated, {defragmented} left"
    );
}

#[test]
fn the_live_value_is_stored_once_and_moves_to_history_when_superseded() {
    let f = open();
    let first = "x".repeat(4096);
    let rev1 = f.put("a", &first);
    let history_bytes = |f: &Fixture| -> usize {
        let snap = f.mvcc.store.snapshot();
        snap.iter(&f.mvcc.ks.history)
            .map(|item| item.expect("history").1.len())
            .sum()
    };
    assert!(
        history_bytes(&f) < 64,
        "the live value is in kv_latest only"
    );
    let rev2 = f.put("a", "y");
    assert!(
        history_bytes(&f) > 4096,
        "the superseded value went into history"
    );
    let at = |rev| {
        f.range(RangeRequest {
            revision: rev,
            ..range("a", "")
        })
        .expect("range")
        .kvs
    };
    assert_eq!(at(rev1), vec![kv("a", &first, rev1, rev1, 1)]);
    assert_eq!(at(rev2), vec![kv("a", "y", rev1, rev2, 2)]);
    let rev3 = f.delete("a", "");
    assert_eq!(
        at(rev2),
        vec![kv("a", "y", rev1, rev2, 2)],
        "deleted, still readable"
    );
    assert!(at(rev3).is_empty());
}

/// What a cairn that stored values twice (format cairn-data-v2) wrote for: rev 2 put a=1;
/// rev 3 put a=2 and b=1; rev 4 delete b. Its `kv_revs` entries name no superseded record.
fn write_v2_layout(f: &Fixture) {
    let ks = &f.mvcc.ks;
    let mut batch = f.mvcc.store.batch();
    let a2 = kv("a", "2", 2, 3, 2);
    let puts = [
        (Rev::new(2, 0), kv("a", "1", 2, 2, 1)),
        (Rev::new(3, 0), a2.clone()),
        (Rev::new(3, 1), kv("b", "1", 3, 3, 1)),
    ];
    for (rev, kv) in &puts {
        let record = codec::encode_record(Some(kv));
        batch.insert(&ks.history, codec::history_key(&kv.key, *rev), record);
        let entry = codec::encode_rev_entry(&kv.key, false, Supersedes::Unknown);
        batch.insert(&ks.revs, rev.to_bytes(), entry);
    }
    let gone = Rev::new(4, 0);
    let tombstone = codec::encode_record(None);
    batch.insert(&ks.history, codec::history_key(b"b", gone), tombstone);
    let entry = codec::encode_rev_entry(b"b", true, Supersedes::Unknown);
    batch.insert(&ks.revs, gone.to_bytes(), entry);
    batch.insert(&ks.latest, b"a", codec::encode_record(Some(&a2)));
    batch.insert(&ks.meta, meta::CURRENT_REV, codec::encode_i64(4));
    batch.insert(&ks.meta, meta::KEY_COUNT, codec::encode_i64(1));
    batch.commit().expect("commit");
}

/// Everything a client can read of two stores, which must agree.
fn assert_same_reads(old: &Fixture, new: &Fixture, revs: std::ops::RangeInclusive<i64>) {
    let all = |f: &Fixture, rev| {
        f.range(RangeRequest {
            revision: rev,
            ..range("\0", "\0")
        })
        .expect("range")
        .kvs
    };
    let compacted = old.mvcc.compact_revision();
    for rev in revs.clone().filter(|rev| *rev >= compacted) {
        assert_eq!(all(old, rev), all(new, rev), "range at {rev}");
    }
    let (from, to) = (compacted.max(*revs.start()), *revs.end());
    let events = |f: &Fixture| f.mvcc.events(from, to, 100, true).expect("events");
    assert_eq!(events(old), events(new), "events {from}..={to}");
    assert_eq!(
        old.mvcc.hash_kv(0).expect("hash"),
        new.mvcc.hash_kv(0).expect("hash")
    );
    assert_eq!(old.mvcc.key_count(), new.mvcc.key_count());
}

#[test]
fn a_store_that_stored_values_twice_reads_changes_compacts_and_hashes_the_same() {
    let old = open();
    write_v2_layout(&old);
    let old = old.reopen();
    let new = open();
    new.put("a", "1");
    new.ok(vec![put("a", "2"), put("b", "1")]);
    new.delete("b", "");
    assert_same_reads(&old, &new, 2..=4);
    for f in [&old, &new] {
        f.put("a", "3");
        f.put("b", "2");
        f.ok(vec![put("c", "1"), delete("a", "")]);
    }
    assert_same_reads(&old, &new, 2..=7);
    // Its counters now in the newer record, beside the names it wrote them under.
    let old = old.reopen();
    assert_same_reads(&old, &new, 2..=7);
    for f in [&old, &new] {
        let done = f.mvcc.compact(6, b"marker").expect("compact");
        done.blocking_recv().expect("physical compaction");
    }
    assert_same_reads(&old, &new, 6..=7);
    // What compaction at 6 keeps: a=3 (5), b=2 (6) and the txn at 7 (c put, a tombstone).
    assert_eq!((old.history_len(), new.history_len()), (4, 4));
    assert_eq!((old.revs_len(), new.revs_len()), (4, 4));
}

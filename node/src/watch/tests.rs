use std::time::Instant;

use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::proto::etcdserverpb::{request_op::Request, PutRequest, RequestOp, TxnRequest};
use crate::storage::Store;

fn open() -> (tempfile::TempDir, Arc<Mvcc>, WatchHub) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let mvcc = Arc::new(Mvcc::open(store).expect("mvcc"));
    let hub = WatchHub::start(mvcc.clone(), DEFAULT_PROGRESS_INTERVAL).expect("hub");
    (dir, mvcc, hub)
}

/// Applies one txn of puts and notifies the hub, as the state machine does.
fn put_all(mvcc: &Mvcc, hub: &WatchHub, keys: &[&str], value: &str) -> i64 {
    let req = TxnRequest {
        success: keys
            .iter()
            .map(|k| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    };
    let (resp, events) = mvcc.apply_txn(&req, b"m").expect("apply");
    hub.notify(vec![events]);
    resp.header.map_or(0, |h| h.revision)
}

fn prefix(p: &str) -> KeyRange {
    let mut end = p.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    KeyRange::new(p.as_bytes().to_vec(), &end)
}

/// Receives until a message at or beyond `last` revision arrived; returns the event
/// revisions per message.
fn collect_until(rx: &mut UnboundedReceiver<WatchMsg>, last: i64) -> Vec<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got: Vec<Vec<i64>> = Vec::new();
    while got.last().and_then(|m| m.last()).copied().unwrap_or(0) < last {
        assert!(Instant::now() < deadline, "timed out; got {got:?}");
        match rx.try_recv() {
            Ok(WatchMsg::Events { events, .. }) => {
                got.push(events.iter().map(|e| e.revision()).collect())
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
    got
}

/// Waits until the hub has dispatched `rev` (a watch from "now" then starts after it).
fn wait_dispatched(hub: &WatchHub, rev: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.revision() < rev {
        assert!(Instant::now() < deadline, "revision {rev} never dispatched");
        thread::sleep(Duration::from_millis(2));
    }
}

fn flat(got: &[Vec<i64>]) -> Vec<i64> {
    got.iter().flatten().copied().collect()
}

#[test]
fn a_slow_watcher_catches_up_from_history() {
    let (_dir, mvcc, hub) = open();
    let (sink, mut rx) = channel();
    let (id, rev) = hub.watch(prefix("k"), 0, false, &sink);
    let n = WATCHER_BUFFER as i64 * 3;
    for i in 0..n {
        put_all(&mvcc, &hub, &["k"], &i.to_string());
    }
    // Nobody read: the watcher must have left the synced set instead of blocking.
    wait_dispatched(&hub, rev + n);
    assert!(hub.shared.lock().unsynced.contains(&id));
    let got = collect_until(&mut rx, rev + n);
    assert_eq!(flat(&got), ((rev + 1)..=(rev + n)).collect::<Vec<_>>());
    // Caught up: back in the synced set, and live events flow again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hub.shared.lock().watchers[&id].synced {
        assert!(Instant::now() < deadline, "never synced again");
        thread::sleep(Duration::from_millis(5));
    }
    let last = put_all(&mvcc, &hub, &["k"], "x");
    assert_eq!(flat(&collect_until(&mut rx, last)), vec![last]);
}

#[test]
fn all_events_of_a_revision_come_in_one_message() {
    let (_dir, mvcc, hub) = open();
    let (sink, mut rx) = channel();
    hub.watch(prefix("p/"), 0, false, &sink);
    let first = put_all(&mvcc, &hub, &["p/a", "p/b", "q", "p/c"], "1");
    let got = collect_until(&mut rx, first);
    assert_eq!(got, vec![vec![first; 3]]);
    // The same from history.
    let (sink, mut rx) = channel();
    hub.watch(prefix("p/"), first, false, &sink);
    assert_eq!(collect_until(&mut rx, first), vec![vec![first; 3]]);
}

#[test]
fn no_event_is_lost_or_doubled_when_watchers_join_during_writes() {
    let (_dir, mvcc, hub) = open();
    let hub = Arc::new(hub);
    let writes = 400;
    let writer = {
        let (mvcc, hub) = (mvcc.clone(), hub.clone());
        thread::spawn(move || {
            for i in 0..writes {
                put_all(&mvcc, &hub, &["w/a", "w/b"], &i.to_string());
                thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let mut watchers = Vec::new();
    for i in 0..60i64 {
        let (sink, rx) = channel();
        // Half from now, half from a recent past revision.
        let current = mvcc.current_revision();
        let start = if i % 2 == 0 { 0 } else { (current - i).max(1) };
        let (_, rev) = hub.watch(prefix("w/"), start, false, &sink);
        let first = if start == 0 { rev + 1 } else { start.max(2) };
        watchers.push((first, sink, rx));
        thread::sleep(Duration::from_millis(2));
    }
    writer.join().expect("writer");
    let last = mvcc.current_revision();
    for (first, _sink, mut rx) in watchers {
        if first > last {
            continue; // joined after the last write
        }
        let got = collect_until(&mut rx, last);
        for message in &got {
            assert_eq!(message.len() % 2, 0, "a revision was split: {got:?}");
        }
        let want: Vec<i64> = (first..=last).flat_map(|r| [r, r]).collect();
        assert_eq!(flat(&got), want, "watcher from {first}");
    }
}

#[test]
fn a_watcher_behind_the_compaction_is_told_and_dropped() {
    let (_dir, mvcc, hub) = open();
    for i in 0..5 {
        put_all(&mvcc, &hub, &["c"], &i.to_string());
    }
    drop(mvcc.compact(4, b"m").expect("compact"));
    wait_dispatched(&hub, mvcc.current_revision());
    let (sink, mut rx) = channel();
    let (id, _) = hub.watch(KeyRange::new(b"c".to_vec(), &[]), 2, false, &sink);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline);
        match rx.try_recv() {
            Ok(WatchMsg::Compacted {
                watcher,
                compact_revision,
            }) => {
                assert_eq!((watcher, compact_revision), (id, 4));
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
    assert!(!hub.cancel(id), "already removed");
}

#[test]
fn progress_all_waits_for_synced_watchers() {
    let (_dir, mvcc, hub) = open();
    let rev = put_all(&mvcc, &hub, &["a"], "1");
    wait_dispatched(&hub, rev);
    let (sink, mut rx) = channel();
    let (id, _) = hub.watch(KeyRange::new(b"a".to_vec(), &[]), 0, false, &sink);
    assert!(hub.progress_all(&[id], &sink));
    match rx.try_recv() {
        Ok(WatchMsg::Progress { watcher, revision }) => {
            assert_eq!((watcher, revision), (None, rev))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn watchers_far_apart_in_history_each_get_every_revision_once() {
    // Regression: a catch-up pass read from the lowest lagging revision and then moved every
    // lagging watcher to the end of that chunk, sending a watcher that was already further
    // ahead the same revisions again (seen as duplicates under 10k-watcher fan-out).
    let (_dir, mvcc, hub) = open();
    let writes = SYNC_CHUNK_EVENTS as i64 * 3;
    let mut last = 0;
    for i in 0..writes {
        last = put_all(&mvcc, &hub, &[&format!("k/{i}")], "v");
    }
    wait_dispatched(&hub, last);
    let (sink, mut rx) = channel();
    let (far, _) = hub.watch(prefix("k/"), 2, false, &sink);
    let (near, _) = hub.watch(prefix("k/"), last - 10, false, &sink);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: HashMap<WatcherId, Vec<i64>> = HashMap::new();
    while seen.get(&far).and_then(|r| r.last()).copied() != Some(last) {
        assert!(Instant::now() < deadline, "timed out");
        match rx.try_recv() {
            Ok(WatchMsg::Events {
                watcher, events, ..
            }) => seen
                .entry(watcher)
                .or_default()
                .extend(events.iter().map(|e| e.revision())),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
    assert_eq!(seen[&far], (2..=last).collect::<Vec<_>>());
    assert_eq!(seen[&near], (last - 10..=last).collect::<Vec<_>>());
}

#[test]
fn revisions_nobody_watched_move_the_hub_on_and_stay_in_history() {
    let (_dir, mvcc, hub) = open();
    let first = put_all(&mvcc, &hub, &["u/a"], "1");
    let second = put_all(&mvcc, &hub, &["u/b"], "2");
    wait_dispatched(&hub, second);
    // From "now": only what comes after the unwatched revisions.
    let (sink, mut rx) = channel();
    hub.watch(prefix("u/"), 0, false, &sink);
    let third = put_all(&mvcc, &hub, &["u/c"], "3");
    assert_eq!(flat(&collect_until(&mut rx, third)), vec![third]);
    // From an old revision: the unwatched ones are read from history, in order.
    let (sink, mut rx) = channel();
    hub.watch(prefix("u/"), first, false, &sink);
    assert_eq!(
        flat(&collect_until(&mut rx, third)),
        vec![first, second, third]
    );
}

//! The watch-guarantee checker: several writers for a bounded time and many watchers
//! (from now, from past revisions, reconnecting mid-stream, slow), then every watcher must
//! have seen exactly the committed history from its start revision: ordered by revision,
//! no gap, no duplicate, and all events of one revision in one response.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_tests::Server;
use etcd_client::{Client, EventType, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;

use crate::current_revision;

const PREFIX: &str = "g/";
const WRITE_FOR: Duration = Duration::from_secs(3);
const WRITERS: usize = 3;
const KEYS: usize = 10;
/// Long enough that slow watchers' unread responses fill the transport windows.
const VALUE_LEN: usize = 1500;

/// One event as the checker compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ev {
    rev: i64,
    put: bool,
    key: String,
    value: String,
}

type History = BTreeMap<i64, Vec<Ev>>;

/// What one watcher received: per response, its events.
type Received = Vec<Vec<Ev>>;

fn value(writer: usize, n: usize) -> String {
    let head = format!("w{writer}-{n}-");
    format!("{head}{}", "x".repeat(VALUE_LEN - head.len()))
}

/// One writer: puts, deletes and multi-key txns on the prefix until `until`; returns the
/// events of every revision it created.
async fn writer(mut client: Client, id: usize, until: Instant) -> History {
    let mut made = History::new();
    let mut n = 0usize;
    while Instant::now() < until {
        n += 1;
        let key = |i: usize| format!("{PREFIX}{}", (i + id * 3) % KEYS);
        match n % 5 {
            0 => {
                let k = key(n);
                let resp = client.delete(k.clone(), None).await.expect("delete");
                if resp.deleted() == 1 {
                    let rev = resp.header().expect("header").revision();
                    made.insert(rev, vec![ev(rev, false, &k, "")]);
                }
            }
            1 => {
                let keys = [key(n), key(n + 1), key(n + 2)];
                let v = value(id, n);
                let ops: Vec<TxnOp> = keys
                    .iter()
                    .map(|k| TxnOp::put(k.clone(), v.clone(), None))
                    .collect();
                let resp = client.txn(Txn::new().and_then(ops)).await.expect("txn");
                let rev = resp.header().expect("header").revision();
                made.insert(rev, keys.iter().map(|k| ev(rev, true, k, &v)).collect());
            }
            _ => {
                let (k, v) = (key(n), value(id, n));
                let resp = client.put(k.clone(), v.clone(), None).await.expect("put");
                let rev = resp.header().expect("header").revision();
                made.insert(rev, vec![ev(rev, true, &k, &v)]);
            }
        }
    }
    made
}

fn ev(rev: i64, put: bool, key: &str, value: &str) -> Ev {
    Ev {
        rev,
        put,
        key: key.to_string(),
        value: value.to_string(),
    }
}

/// How a watcher reads.
#[derive(Clone, Copy, Debug)]
enum Style {
    Steady,
    /// Sleeps this long after every response.
    Slow(Duration),
    /// Drops the stream after this many responses and resumes from the last revision + 1.
    Reconnecting(usize),
}

/// Watches the prefix from `start` (0 = now) until it has seen revision `last` (known once
/// the writers are done). Returns the first revision it is owed and what it received.
async fn watcher(
    mut client: Client,
    start: i64,
    style: Style,
    mut last: watch::Receiver<Option<i64>>,
) -> (i64, Received) {
    let mut received = Received::new();
    let mut from = start;
    let mut owed = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = client.watch(PREFIX, Some(opts)).await.expect("watch");
        let mut on_this_stream = 0;
        loop {
            // Done once it has seen the last revision, or when it was created after it
            // (a watcher from now that registered as the writes ended is owed nothing).
            let done = last
                .borrow()
                .is_some_and(|l| seen_up_to(&received) >= l || owed.is_some_and(|o| o > l));
            if done {
                return (owed.unwrap_or(i64::MAX), received);
            }
            assert!(
                Instant::now() < deadline,
                "watcher from {start} ({style:?}) timed out: owed from {owed:?}, last revision \
                 {:?}, seen up to {} in {} responses",
                *last.borrow(),
                seen_up_to(&received),
                received.len()
            );
            let msg = tokio::select! {
                msg = stream.message() => msg.expect("watch stream").expect("stream open"),
                _ = last.changed() => continue,
                // A stream that goes quiet while events are still owed fails here instead
                // of hanging the suite.
                _ = tokio::time::sleep_until(deadline.into()) => continue,
            };
            if msg.created() {
                let header_rev = msg.header().expect("header").revision();
                owed.get_or_insert(if from == 0 { header_rev + 1 } else { from });
                continue;
            }
            assert!(!msg.canceled(), "watch canceled: {msg:?}");
            let events: Vec<Ev> = msg
                .events()
                .iter()
                .map(|e| {
                    let kv = e.kv().expect("event kv");
                    Ev {
                        rev: kv.mod_revision(),
                        put: e.event_type() == EventType::Put,
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                    }
                })
                .collect();
            if events.is_empty() {
                continue; // a progress notification
            }
            received.push(events);
            on_this_stream += 1;
            match style {
                Style::Steady => {}
                Style::Slow(pause) => tokio::time::sleep(pause).await,
                Style::Reconnecting(every) if on_this_stream >= every => {
                    from = seen_up_to(&received) + 1;
                    break;
                }
                Style::Reconnecting(_) => {}
            }
        }
    }
}

fn seen_up_to(received: &Received) -> i64 {
    received.last().and_then(|r| r.last()).map_or(0, |e| e.rev)
}

/// Asserts that `received` is exactly `truth` from revision `owed` on, each revision in
/// one response.
fn check(name: &str, owed: i64, received: &Received, truth: &History) {
    // Across responses revisions strictly increase: none is split, none comes twice.
    for pair in received.windows(2) {
        let (a, b) = (pair[0].last(), pair[1].first());
        assert!(
            a.map(|e| e.rev) < b.map(|e| e.rev),
            "{name}: a revision split across responses, repeated or out of order: {a:?} then {b:?}"
        );
    }
    let mut got = History::new();
    for e in received.iter().flatten() {
        got.entry(e.rev).or_default().push(e.clone());
    }
    let want: History = truth
        .range(owed..)
        .map(|(rev, evs)| (*rev, evs.clone()))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{name}: revisions seen (owed from {owed})"
    );
    assert_eq!(got, want, "{name}: events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_watcher_sees_exactly_the_committed_history() {
    let server = Server::start().await.expect("server starts");
    let mut client = server.client().await.expect("client");
    let (set_last, last) = watch::channel(None);

    let mut watchers = Vec::new();
    let spawn_watcher = |client: Client, start: i64, style: Style, name: String| {
        let last = last.clone();
        tokio::spawn(async move { (name, watcher(client, start, style, last).await) })
    };
    // From now, before any write: a few steady, a few slow, a few reconnecting.
    let styles = [
        Style::Steady,
        Style::Steady,
        Style::Steady,
        Style::Slow(Duration::from_millis(5)),
        Style::Slow(Duration::from_millis(2)),
        Style::Reconnecting(7),
        Style::Reconnecting(50),
    ];
    for (i, style) in styles.iter().enumerate() {
        let c = server.client().await.expect("client");
        watchers.push(spawn_watcher(c, 0, *style, format!("now-{i}-{style:?}")));
    }

    let until = Instant::now() + WRITE_FOR;
    let mut writers = Vec::new();
    for id in 0..WRITERS {
        let c = server.client().await.expect("client");
        writers.push(tokio::spawn(writer(c, id, until)));
    }
    // While writing: watchers from past revisions and from now.
    for i in 0..8 {
        tokio::time::sleep(WRITE_FOR / 10).await;
        let current = current_revision(&mut client).await;
        let start = match i % 3 {
            0 => 0,
            1 => (current - 25).max(2),
            _ => 2, // the whole history
        };
        let style = match i % 4 {
            0 => Style::Slow(Duration::from_millis(3)),
            1 => Style::Reconnecting(5),
            _ => Style::Steady,
        };
        let c = server.client().await.expect("client");
        watchers.push(spawn_watcher(
            c,
            start,
            style,
            format!("during-{i}-from-{start}-{style:?}"),
        ));
    }

    let mut truth = History::new();
    for w in writers {
        for (rev, evs) in w.await.expect("writer") {
            assert!(
                truth.insert(rev, evs).is_none(),
                "two writes at revision {rev}"
            );
        }
    }
    let first = *truth.keys().next().expect("some writes");
    let last_rev = *truth.keys().last().expect("some writes");
    assert_eq!(
        truth.keys().copied().collect::<Vec<_>>(),
        (first..=last_rev).collect::<Vec<_>>(),
        "every revision was made by a recorded write"
    );
    // Two more after the writes: from the past, and from now (owed only what the hub had
    // not dispatched yet when it registered).
    for (start, name) in [(first + 10, "after-from-past"), (0, "after-from-now")] {
        let c = server.client().await.expect("client");
        watchers.push(spawn_watcher(c, start, Style::Steady, name.to_string()));
    }
    set_last.send_replace(Some(last_rev));

    for w in watchers {
        let (name, (owed, received)) = match w.await {
            Ok(done) => done,
            Err(e) => panic!("watcher: {e}\nserver log:\n{}", server.log_tail(6000)),
        };
        check(&name, owed, &received, &truth);
    }
}

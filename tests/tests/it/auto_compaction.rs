//! `--auto-compaction-mode periodic` timing, compared with etcd 3.5: with a retention of
//! 2 s the first compaction comes 2 s after start, then one every 2 s, each to the
//! revision the store had 2 s before; history younger than the retention stays readable.

use std::time::{Duration, Instant};

use cairn_tests::Server;
use etcd_client::{Client, GetOptions};

/// The oldest revision a read can still ask for: the compact revision (1 if none).
async fn oldest_readable(client: &mut Client) -> i64 {
    let current = crate::current_revision(client).await;
    let (mut lo, mut hi) = (1, current);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let read = client
            .get("probe", Some(GetOptions::new().with_revision(mid)))
            .await;
        match read {
            Ok(_) => hi = mid,
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("required revision has been compacted"),
                    "{text}"
                );
                lo = mid + 1;
            }
        }
    }
    lo
}

#[tokio::test]
async fn periodic_compaction_keeps_one_retention_and_compacts_every_retention() {
    let retention = Duration::from_secs(2);
    let server = Server::start_with(&[
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=2s",
    ])
    .await
    .unwrap();
    let mut writer = server.client().await.unwrap();
    let mut reader = server.client().await.unwrap();
    let started = Instant::now();
    // (when, revision after the put) and (when seen, oldest readable revision).
    let mut written: Vec<(Instant, i64)> = Vec::new();
    let mut compactions: Vec<(Instant, i64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(9) {
        let put = writer.put("k", "v", None).await.unwrap();
        written.push((Instant::now(), put.header().unwrap().revision()));
        let oldest = oldest_readable(&mut reader).await;
        if compactions
            .last()
            .map_or(oldest > 1, |(_, last)| oldest != *last)
        {
            compactions.push((Instant::now(), oldest));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Slack for a loaded machine: sampling granularity (retention / 10) and scheduling.
    let slack = Duration::from_millis(700);
    let revision_at = |t: Instant| {
        written
            .iter()
            .take_while(|(when, _)| *when <= t)
            .last()
            .map_or(1, |(_, rev)| *rev)
    };
    assert!(
        (3..=6).contains(&compactions.len()),
        "expected a compaction every {retention:?} over 9 s, saw {}: {compactions:?}",
        compactions.len()
    );
    for (seen, compacted) in &compactions {
        // Nothing younger than one retention was compacted away.
        let bound = revision_at(*seen - retention + slack);
        assert!(
            *compacted <= bound + 1,
            "compacted to {compacted} when the store had {bound} one retention before"
        );
    }
    // And history older than one retention plus one compact interval is gone.
    let (end, last) = (written.last().unwrap().0, compactions.last().unwrap().1);
    let required = revision_at(end - 2 * retention - Duration::from_secs(1));
    assert!(
        last >= required,
        "last compaction at {last}, but revision {required} is older than 2 retentions"
    );
}

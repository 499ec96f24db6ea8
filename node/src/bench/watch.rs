//! `cairn bench watch`: watch fan-out. N watchers on one prefix, spread over S watch
//! streams on C connections, and one writer putting at a fixed rate for a bounded time.
//! Each value starts with the put's send time (µs since the Unix epoch), so a watcher
//! measures event latency as receipt time minus send time. Reports latency percentiles,
//! events received against expected, and the server's RSS when given its pid.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::{connect, new_histogram, parse_duration, HIST_MAX_MICROS, RESULT_PREFIX};
use crate::proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};

/// Options of `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Watchers, all on --prefix.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Puts per second of the writer.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// The prefix watched and written.
    #[arg(long, default_value = "/bench-watch/")]
    pub prefix: String,
    /// Print this process's resident memory (the server's) at the end.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A watch stream that received nothing for this long is done (after the last put).
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub drain: Duration,
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct WatchSummary {
    mode: &'static str,
    watchers: usize,
    streams: usize,
    conns: usize,
    rate: u64,
    puts: u64,
    put_errors: u64,
    events_expected: u64,
    events_received: u64,
    seconds: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    server_rss_kib: Option<u64>,
    server_peak_rss_kib: Option<u64>,
}

/// Runs the fan-out benchmark. `endpoints`, `conns`, `duration` and `val_size` come from
/// the shared load options.
pub async fn run(
    args: &WatchArgs,
    endpoints: &[String],
    conns: usize,
    duration: Duration,
    val_size: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.watchers > 0 && args.streams > 0,
        "--watchers and --streams must be > 0"
    );
    anyhow::ensure!(args.rate > 0, "--rate must be > 0");
    let channels = connect(endpoints, conns.max(1)).await?;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Histogram<u64>>();
    let mut readers = JoinSet::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(args.streams);
    for s in 0..args.streams {
        let count = args.watchers / args.streams + usize::from(s < args.watchers % args.streams);
        let channel = channels[s % channels.len()].clone();
        let (prefix, done, ready) = (args.prefix.clone(), events_tx.clone(), ready_tx.clone());
        readers.spawn(read_stream(channel, prefix, count, args.drain, ready, done));
    }
    drop((events_tx, ready_tx));
    for _ in 0..args.streams {
        ready_rx
            .recv()
            .await
            .context("a watch stream failed before its watches were created")?;
    }
    let writer = KvClient::new(channels[0].clone());
    let started = Instant::now();
    let (puts, put_errors) = write(writer, args, duration, val_size).await;
    let seconds = started.elapsed().as_secs_f64();
    let expected = puts * args.watchers as u64;
    // Each reader ends once its stream has been quiet for --drain.
    while let Some(reader) = readers.join_next().await {
        reader.context("watch reader panicked")??;
    }
    let mut hist = new_histogram()?;
    while let Ok(h) = events_rx.try_recv() {
        hist.add(&h).context("merging histograms")?;
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let rss = args.server_pid.map(|pid| rss_kib(pid, "VmRSS:"));
    let summary = WatchSummary {
        mode: "watch",
        watchers: args.watchers,
        streams: args.streams,
        conns: channels.len(),
        rate: args.rate,
        puts,
        put_errors,
        events_expected: expected,
        events_received: hist.len(),
        seconds,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        server_rss_kib: rss.flatten(),
        server_peak_rss_kib: args.server_pid.and_then(|pid| rss_kib(pid, "VmHWM:")),
    };
    println!(
        "watch: {} watchers / {} streams / {} conns, {} puts at {}/s over {:.1}s ({} put errors): \
         {} of {} events, latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}{}",
        summary.watchers,
        summary.streams,
        summary.conns,
        summary.puts,
        summary.rate,
        summary.seconds,
        summary.put_errors,
        summary.events_received,
        summary.events_expected,
        summary.p50_ms,
        summary.p90_ms,
        summary.p99_ms,
        summary.p999_ms,
        summary.max_ms,
        summary
            .server_rss_kib
            .map_or(String::new(), |k| format!(", server RSS {} MiB", k / 1024)),
    );
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&summary)?);
    anyhow::ensure!(summary.events_received > 0, "no watch event arrived");
    Ok(())
}

/// Puts at `args.rate` per second for `duration`, each put in its own task so a slow
/// answer does not lower the rate. Returns (puts acknowledged, puts failed).
async fn write(
    kv: KvClient<Channel>,
    args: &WatchArgs,
    duration: Duration,
    val_size: usize,
) -> (u64, u64) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let mut puts = JoinSet::new();
    let mut n = 0u64;
    while Instant::now() < end {
        ticker.tick().await;
        n += 1;
        let mut kv = kv.clone();
        let key = format!("{}{}", args.prefix, n % 1000).into_bytes();
        puts.spawn(async move {
            let mut value = now_micros().to_be_bytes().to_vec();
            value.resize(val_size.max(8), b'v');
            kv.put(PutRequest {
                key,
                value,
                ..Default::default()
            })
            .await
            .is_ok()
        });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(done) = puts.join_next().await {
        if matches!(done, Ok(true)) {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed)
}

/// One watch stream with `count` watches on `prefix`; records the latency of every event
/// until no event came for a while after the writer is done, then hands in its histogram.
async fn read_stream(
    channel: Channel,
    prefix: String,
    count: usize,
    quiet: Duration,
    ready: mpsc::Sender<()>,
    done: mpsc::UnboundedSender<Histogram<u64>>,
) -> anyhow::Result<()> {
    let (requests, mut stream) = open_watches(channel, &prefix, count).await?;
    let _ = ready.send(()).await;
    let mut hist = new_histogram()?;
    // Ends when the stream has been quiet for `quiet` after its first event (the writer is
    // done and everything drained), or when no event came at all for a minute.
    let mut wait = Duration::from_secs(60);
    while let Ok(Ok(Some(resp))) = tokio::time::timeout(wait, stream.message()).await {
        wait = quiet;
        let now = now_micros();
        for event in &resp.events {
            let Some(sent) = event
                .kv
                .as_ref()
                .and_then(|kv| kv.value.get(..8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
            else {
                continue;
            };
            let latency = now.saturating_sub(u64::from_be_bytes(sent)).max(1);
            let _ = hist.record(latency.min(HIST_MAX_MICROS));
        }
    }
    drop(requests);
    let _ = done.send(hist);
    Ok(())
}

/// Opens a watch stream and creates `count` watches on `prefix` in it, waiting until the
/// server has confirmed each. The stream lives while the returned sender does.
pub(super) async fn open_watches(
    channel: Channel,
    prefix: &str,
    count: usize,
) -> anyhow::Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>)> {
    let (requests, rx) = mpsc::channel(count.max(1));
    let range_end = crate::proto::prefix_end(prefix.as_bytes());
    for _ in 0..count {
        let create = WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: range_end.clone(),
            ..Default::default()
        };
        requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await
            .context("sending a watch create request")?;
    }
    // Only now: etcd (grpc-go) answers the call's headers with its first message, so the
    // creates must already be on their way.
    let mut client = WatchClient::new(channel);
    let mut stream = client
        .watch(ReceiverStream::new(rx))
        .await
        .context("opening a watch stream")?
        .into_inner();
    let mut created = 0;
    while created < count {
        let resp = stream
            .message()
            .await?
            .context("stream closed during creation")?;
        created += usize::from(resp.created);
    }
    Ok((requests, stream))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A `/proc/<pid>/status` memory line in KiB (Linux only).
fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

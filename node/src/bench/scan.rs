//! `cairn bench scan`: do huge reads starve small writes? Loads --key-space keys, then
//! --scanners clients loop full-keyspace linearizable ranges while one writer puts at a
//! fixed rate for a bounded time. Each put's latency counts from when it was due, not when
//! it was sent, so a server that stalls its writers cannot hide the stall.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::{connect, new_histogram, preload_keys, Values, RESULT_PREFIX};
use crate::proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};

/// Options of `scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Clients looping full-keyspace ranges.
    #[arg(long, default_value_t = 4)]
    pub scanners: usize,
    /// Puts per second of the writer.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Skip loading the key space (it is already there).
    #[arg(long)]
    pub no_preload: bool,
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct ScanSummary {
    mode: &'static str,
    keys: u64,
    scanners: usize,
    rate: u64,
    puts: u64,
    put_errors: u64,
    scans: u64,
    scan_errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The shared load options the scan mode uses.
pub struct Load<'a> {
    pub endpoints: &'a [String],
    pub security: &'a super::Security,
    pub key_space: u64,
    pub key_size: usize,
    pub val_size: usize,
    pub duration: Duration,
    pub request_timeout: Duration,
}

pub async fn run(args: &ScanArgs, load: Load<'_>) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be > 0");
    // One connection per scanner and one for the writer, so the writer's requests never
    // queue behind a scan's response on the same connection.
    let channels = connect(load.endpoints, load.security, args.scanners + 1).await?;
    // A full range is as large as the key space: no client-side message limit.
    let clients: Vec<KvClient<Channel>> = channels
        .iter()
        .map(|c| KvClient::new(c.clone()).max_decoding_message_size(usize::MAX))
        .collect();
    if !args.no_preload {
        let values = Values::new(load.val_size, false, false);
        preload_keys(&clients, load.key_space, load.key_size, &values, None).await?;
    }
    let end = Instant::now() + load.duration;
    let mut scanners = JoinSet::new();
    for kv in clients.iter().skip(1).cloned() {
        scanners.spawn(scan_until(kv, end));
    }
    let started = Instant::now();
    let latencies = put_at_rate(clients[0].clone(), args.rate, end, &load).await;
    let seconds = started.elapsed().as_secs_f64();
    let (mut scans, mut scan_errors) = (0, 0);
    while let Some(done) = scanners.join_next().await {
        let (ok, failed) = done.context("scanner panicked")?;
        scans += ok;
        scan_errors += failed;
    }
    let mut hist = new_histogram()?;
    let mut put_errors = 0;
    for latency in &latencies {
        match latency {
            Some(d) => hist.record(d.as_micros() as u64).context("recording")?,
            None => put_errors += 1,
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let summary = ScanSummary {
        mode: "scan",
        keys: load.key_space,
        scanners: args.scanners,
        rate: args.rate,
        puts: hist.len(),
        put_errors,
        scans,
        scan_errors,
        seconds,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
    };
    println!(
        "scan: {} scanners over {} keys, {} puts at {}/s in {:.1}s ({} failed), {} scans \
         ({} failed): put latency from due time ms p50 {:.3} p99 {:.3} max {:.3}",
        summary.scanners,
        summary.keys,
        summary.puts,
        summary.rate,
        summary.seconds,
        summary.put_errors,
        summary.scans,
        summary.scan_errors,
        summary.p50_ms,
        summary.p99_ms,
        summary.max_ms,
    );
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Ranges over every key until `end`; returns (scans completed, scans failed).
async fn scan_until(mut kv: KvClient<Channel>, end: Instant) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    while Instant::now() < end {
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        match kv.range(all).await {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}

/// Puts at `rate` per second until `end`, each in its own task; returns each put's latency
/// counted from when it was due, `None` for a put that failed or timed out.
async fn put_at_rate(
    kv: KvClient<Channel>,
    rate: u64,
    end: Instant,
    load: &Load<'_>,
) -> Vec<Option<Duration>> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let first = Instant::now();
    let mut puts = JoinSet::new();
    for n in 0u64.. {
        let due = first + interval * u32::try_from(n).unwrap_or(u32::MAX);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let mut kv = kv.clone();
        let mut req = tonic::Request::new(PutRequest {
            key: format!("/bench-scan/{}", n % 1000).into_bytes(),
            value: vec![b'v'; load.val_size],
            ..Default::default()
        });
        req.set_timeout(load.request_timeout);
        puts.spawn(async move { kv.put(req).await.ok().map(|_| due.elapsed()) });
    }
    let mut latencies = Vec::new();
    while let Some(done) = puts.join_next().await {
        latencies.push(done.ok().flatten());
    }
    latencies
}

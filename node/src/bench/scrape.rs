//! `cairn bench scrape`: what a Prometheus scrape of `/metrics` costs on a loaded member.
//! Grants --leases leases and opens --watchers watchers (spread over --streams watch
//! streams), keeps them alive, then GETs `/metrics` --scrapes times, one after another, each
//! on a fresh HTTP/1.1 connection, and reports the latency percentiles, the body size and
//! the number of samples. Works against etcd too (its `/metrics` is on the client port).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures::{stream, StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::watch::open_watches;
use super::{connect, new_histogram, RESULT_PREFIX};
use crate::proto::etcdserverpb::{lease_client::LeaseClient, LeaseGrantRequest};

/// Lease grants in flight while loading.
const GRANTS_IN_FLIGHT: usize = 64;
/// A scrape that takes longer than this is reported as an error.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `scrape`.
#[derive(Debug, Args)]
pub struct ScrapeArgs {
    /// Leases granted (TTL one hour) and kept for the scrapes.
    #[arg(long, default_value_t = 10_000)]
    pub leases: usize,
    /// Watchers open during the scrapes, all on one prefix.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Scrapes measured (after one unmeasured warm-up scrape).
    #[arg(long, default_value_t = 100)]
    pub scrapes: usize,
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct ScrapeSummary {
    mode: &'static str,
    leases: usize,
    watchers: usize,
    scrapes: usize,
    body_bytes: usize,
    samples: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Runs the scrape benchmark against the first of `endpoints` (plain http only).
pub async fn run(args: &ScrapeArgs, endpoints: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.scrapes > 0 && args.streams > 0,
        "--scrapes and --streams must be > 0"
    );
    let endpoint = endpoints.first().context("no endpoint")?;
    let address = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/')
        .to_string();
    anyhow::ensure!(
        !address.contains("://"),
        "scrape measures plain http endpoints only, not {endpoint}"
    );
    let channels = connect(std::slice::from_ref(endpoint), args.streams).await?;
    grant_leases(LeaseClient::new(channels[0].clone()), args.leases).await?;
    // Held until the scrapes are done: dropping a sender ends its watch stream.
    let mut held = Vec::with_capacity(args.streams);
    for (s, channel) in channels.iter().enumerate() {
        let count = args.watchers / args.streams + usize::from(s < args.watchers % args.streams);
        held.push(open_watches(channel.clone(), "/bench-scrape/", count).await?);
    }
    let (body, _) = scrape(&address).await?;
    let mut hist = new_histogram()?;
    for _ in 0..args.scrapes {
        let (_, took) = scrape(&address).await?;
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        hist.record(micros).context("recording a scrape time")?;
    }
    drop(held);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let summary = ScrapeSummary {
        mode: "scrape",
        leases: args.leases,
        watchers: args.watchers,
        scrapes: args.scrapes,
        body_bytes: body.len(),
        samples: body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count(),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
    };
    println!(
        "scrape: {} leases, {} watchers: {} scrapes of {} bytes ({} samples), ms p50 {:.3} \
         p90 {:.3} p99 {:.3} max {:.3}",
        summary.leases,
        summary.watchers,
        summary.scrapes,
        summary.body_bytes,
        summary.samples,
        summary.p50_ms,
        summary.p90_ms,
        summary.p99_ms,
        summary.max_ms,
    );
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&summary)?);
    Ok(())
}

async fn grant_leases(
    client: LeaseClient<tonic::transport::Channel>,
    n: usize,
) -> anyhow::Result<()> {
    stream::iter(0..n)
        .map(|_| {
            let mut client = client.clone();
            async move {
                client
                    .lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 })
                    .await
                    .context("granting a lease")
            }
        })
        .buffer_unordered(GRANTS_IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// One `GET /metrics` on a new connection: the body and the time from connecting to the
/// last byte.
async fn scrape(address: &str) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let get = async {
        let mut conn = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, get)
        .await
        .context("scrape timed out")??;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 200"),
        "GET /metrics answered {}",
        text.lines().next().unwrap_or("nothing")
    );
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((body, took))
}

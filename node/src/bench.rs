//! `cairn bench`: a load generator for etcd's v3 KV API, modelled on etcd's own
//! `tools/benchmark` (`put`, `range`, `txn-put`, `txn-mixed`, `lease-keepalive`, N in-flight
//! clients spread over M HTTP/2 connections), so
//! that one binary measures real etcd and cairn on the same machine the same way; with
//! `--gateway` the same requests go as JSON through the HTTP/JSON gateway instead.
//!
//! It owns only the client side: it talks to a server through the generated
//! `etcdserverpb::kv_client::KvClient` and never touches storage, raft or the API layer.
//! Latencies go into an HDR histogram in microseconds; a warm-up period is run first and left
//! out of the statistics. The result is printed twice: a human line and a one-line
//! `BENCH_RESULT {json}` that `scripts/bench.sh` parses.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::prelude::Engine as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::{stream, StreamExt as _, TryStreamExt as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use security::{Security, SecurityArgs};

mod gateway;
mod lease;
mod plugin;
mod scan;
mod scrape;
mod security;
mod watch;

use crate::proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, Compare, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

/// The longest run `--duration` accepts, so a typo cannot tie a shared machine up for hours.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// etcd's default `--max-txn-ops`: the largest Txn both servers accept without tuning.
const PRELOAD_TXN_OPS: u64 = 128;
/// Histogram range: 1 µs to 60 s at 3 significant digits (0.1 % resolution).
const HIST_MAX_MICROS: u64 = 60_000_000;
/// The metadata key etcd's clients send their auth token in.
const TOKEN: &str = "token";
/// Prefix of the machine-readable summary line.
pub const RESULT_PREFIX: &str = "BENCH_RESULT ";
/// How often a run prints its progress to stderr; shorter runs print none.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Errors in the benchmark's own arguments; transport and server errors are reported through
/// `anyhow` with the endpoint named.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the watch, scan, plugin and scrape modes have their own runners")]
    NotKv,
    #[error("--gateway sends only put and range")]
    GatewayOp,
    #[error("invalid duration {0:?}: expected a number with unit ms, s or m, e.g. 10s")]
    Duration(String),
    #[error("invalid --{flag} {value}: {reason}")]
    Flag {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// `cairn bench [OPTIONS] <put|range>`: the raw command line, before validation.
#[derive(Debug, Parser)]
#[command(
    name = "cairn bench",
    about = "Load generator for etcd's v3 KV API (works against etcd and cairn)"
)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Mode,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// What each request does.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Put random keys of the key space, each with a value of --val-size bytes.
    Put,
    /// Range (get) one random key of the key space per request.
    Range(RangeArgs),
    /// A Txn of --txn-ops puts per request (etcd's `txn-put`), with --cas a compare on the
    /// first key's mod revision first, as a compare-and-swap does.
    TxnPut(TxnPutArgs),
    /// A Txn of one operation per request, a range or a put chosen at random by --rw-ratio
    /// (etcd's `txn-mixed`).
    TxnMixed(TxnMixedArgs),
    /// Keep-alives of one lease per client over its own LeaseKeepAlive stream, one in
    /// flight at a time (etcd's `lease-keepalive`).
    LeaseKeepalive,
    /// Watch fan-out: many watchers on one prefix, one writer at a fixed rate (see
    /// `bench/watch.rs`; uses --endpoints, --conns, --duration and --val-size).
    Watch(watch::WatchArgs),
    /// Full-keyspace ranges against a steady writer: the writer's latency from due time
    /// (see `bench/scan.rs`; uses --endpoints, --key-space, --key-size, --val-size,
    /// --duration and --request-timeout).
    Scan(scan::ScanArgs),
    /// The per-call overhead of an admission plugin, in process (see `bench/plugin.rs`;
    /// uses --val-size).
    Plugin(plugin::PluginArgs),
    /// `/metrics` scrape latency with many leases and watchers alive (see
    /// `bench/scrape.rs`; uses the first of --endpoints).
    Scrape(scrape::ScrapeArgs),
}

/// Options of `range`.
#[derive(Debug, Args)]
pub struct RangeArgs {
    /// l: linearizable (goes through consensus), s: serializable (local read).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Write every key of the key space once (Txns of 128 puts) before the warm-up, so that
    /// reads hit existing keys. Not measured.
    #[arg(long)]
    pub preload: bool,
}

/// Options of `txn-put`.
#[derive(Debug, Args)]
pub struct TxnPutArgs {
    /// Puts per Txn, on consecutive keys from a random one.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: u32,
    /// Compare the first key's mod revision (`< 2^62`, always true) before the puts.
    #[arg(long)]
    pub cas: bool,
}

/// Options of `txn-mixed`.
#[derive(Debug, Args)]
pub struct TxnMixedArgs {
    /// Reads per write: 1 is half ranges, half puts (etcd's default).
    #[arg(long, default_value_t = 1.0)]
    pub rw_ratio: f64,
    /// Consistency of the ranges.
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Write every key once before the warm-up (see `range --preload`).
    #[arg(long)]
    pub preload: bool,
}

/// The read consistency of `range`, named as etcd's benchmark tool names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    #[value(name = "l")]
    Linearizable,
    #[value(name = "s")]
    Serializable,
}

/// Options shared by every mode; `global` so they may come before or after the mode.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Comma-separated gRPC endpoints (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Concurrent in-flight requests (one task each).
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// HTTP/2 connections the clients are spread over [default: min(clients, 8)].
    #[arg(long, global = true)]
    pub conns: Option<usize>,
    /// How long to measure, after the warm-up (e.g. 500ms, 10s, 1m) [default: 10s].
    #[arg(long, global = true, value_parser = parse_duration, conflicts_with = "total")]
    pub duration: Option<Duration>,
    /// Measure exactly this many requests instead of a duration.
    #[arg(long, global = true)]
    pub total: Option<u64>,
    /// Key length in bytes; keys are zero-padded decimal indexes of the key space.
    #[arg(long, global = true, default_value_t = 8)]
    pub key_size: usize,
    /// Value length in bytes (put and preload).
    #[arg(long, global = true, default_value_t = 256)]
    pub val_size: usize,
    /// Put values that are JSON objects (`{"v":"vvv..."}`, --val-size bytes), e.g. for a
    /// node whose schema-guard plugin requires them.
    #[arg(long, global = true)]
    pub json_values: bool,
    /// Put values of fresh random bytes, different on every put and preloaded key, so that
    /// data-dir sizes are not flattered by compression (gRPC only).
    #[arg(long, global = true, conflicts_with_all = ["json_values", "gateway"])]
    pub random_values: bool,
    /// Number of distinct keys requests pick from, uniformly at random.
    #[arg(long, global = true, default_value_t = 100_000)]
    pub key_space: u64,
    /// Load run before measuring and left out of the statistics.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Per-request deadline; a request that exceeds it counts as an error.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s")]
    pub request_timeout: Duration,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Send put and range as JSON through the HTTP/JSON gateway (`POST /v3/kv/put`), one
    /// HTTP/1.1 connection per client (--conns is then --clients).
    #[arg(long, global = true)]
    pub gateway: bool,
}

/// When the measured phase ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    After(Duration),
    Total(u64),
}

/// The validated run: every value typed and checked.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    op: Op,
    preload: bool,
    gateway: bool,
    endpoints: Vec<String>,
    clients: usize,
    conns: usize,
    stop: Stop,
    key_size: usize,
    val_size: usize,
    json_values: bool,
    random_values: bool,
    key_space: u64,
    warmup: Duration,
    request_timeout: Duration,
    security: SecurityArgs,
}

/// One request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Range(Consistency),
    TxnPut {
        ops: u32,
        cas: bool,
    },
    /// `reads_per_mille` of the requests are ranges, the rest puts.
    TxnMixed {
        reads_per_mille: u64,
        consistency: Consistency,
    },
    LeaseKeepAlive,
}

impl Op {
    fn name(self, gateway: bool) -> &'static str {
        match (self, gateway) {
            (Op::Put, false) => "put",
            (Op::Range(Consistency::Linearizable), false) => "range-l",
            (Op::Range(Consistency::Serializable), false) => "range-s",
            (Op::Put, true) => "gateway-put",
            (Op::Range(Consistency::Linearizable), true) => "gateway-range-l",
            (Op::Range(Consistency::Serializable), true) => "gateway-range-s",
            (Op::TxnPut { cas: false, .. }, _) => "txn-put",
            (Op::TxnPut { cas: true, .. }, _) => "txn-cas",
            (Op::TxnMixed { .. }, _) => "txn-mixed",
            (Op::LeaseKeepAlive, _) => "lease-keepalive",
        }
    }
}

impl BenchArgs {
    /// Checks the raw flags and turns them into a [`Plan`], naming the flag that is wrong.
    fn validate(self) -> Result<Plan, BenchError> {
        let load = self.load;
        let bad = |flag, value: String, reason| BenchError::Flag {
            flag,
            value,
            reason,
        };
        let (op, preload) = match self.mode {
            Mode::Put => (Op::Put, false),
            Mode::Range(r) => (Op::Range(r.consistency), r.preload),
            Mode::TxnPut(t) if t.txn_ops == 0 || u64::from(t.txn_ops) > PRELOAD_TXN_OPS => {
                return Err(bad("txn-ops", t.txn_ops.to_string(), "must be 1..=128"))
            }
            Mode::TxnPut(t) => (
                Op::TxnPut {
                    ops: t.txn_ops,
                    cas: t.cas,
                },
                false,
            ),
            Mode::TxnMixed(t) if !(t.rw_ratio >= 0.0 && t.rw_ratio.is_finite()) => {
                return Err(bad("rw-ratio", t.rw_ratio.to_string(), "must be >= 0"))
            }
            Mode::TxnMixed(t) => (
                Op::TxnMixed {
                    reads_per_mille: (1000.0 * t.rw_ratio / (t.rw_ratio + 1.0)).round() as u64,
                    consistency: t.consistency,
                },
                t.preload,
            ),
            Mode::LeaseKeepalive => (Op::LeaseKeepAlive, false),
            Mode::Watch(_) | Mode::Scan(_) | Mode::Plugin(_) | Mode::Scrape(_) => {
                return Err(BenchError::NotKv)
            }
        };
        if load.gateway && !matches!(op, Op::Put | Op::Range(_)) {
            return Err(BenchError::GatewayOp);
        }
        if load.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(bad("endpoints", String::new(), "at least one endpoint"));
        }
        if load.clients == 0 {
            return Err(bad("clients", "0".into(), "must be at least 1"));
        }
        let conns = match load.gateway {
            true => load.clients,
            false => load.conns.unwrap_or(load.clients.min(8)),
        };
        if conns == 0 || conns > load.clients {
            return Err(bad("conns", conns.to_string(), "must be 1..=clients"));
        }
        if load.key_space == 0 {
            return Err(bad("key-space", "0".into(), "must be at least 1"));
        }
        if decimal_digits(load.key_space - 1) > load.key_size {
            return Err(bad(
                "key-size",
                load.key_size.to_string(),
                "too short to hold every index of --key-space in decimal",
            ));
        }
        let stop = match (load.total, load.duration) {
            (Some(0), _) => return Err(bad("total", "0".into(), "must be at least 1")),
            (Some(n), _) => Stop::Total(n),
            (None, Some(d)) if d.is_zero() || d > MAX_DURATION => {
                return Err(bad("duration", format!("{d:?}"), "must be in (0, 1h]"))
            }
            (None, Some(d)) => Stop::After(d),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        if load.warmup > MAX_DURATION {
            return Err(bad("warmup", format!("{:?}", load.warmup), "at most 1h"));
        }
        Ok(Plan {
            op,
            preload,
            gateway: load.gateway,
            endpoints: load
                .endpoints
                .into_iter()
                .filter(|e| !e.trim().is_empty())
                .collect(),
            clients: load.clients,
            conns,
            stop,
            key_size: load.key_size,
            val_size: load.val_size,
            json_values: load.json_values,
            random_values: load.random_values,
            key_space: load.key_space,
            warmup: load.warmup,
            request_timeout: load.request_timeout,
            security: load.security,
        })
    }
}

/// Parses `10s`, `500ms`, `1.5m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, BenchError> {
    let err = || BenchError::Duration(s.to_owned());
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| err())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" | "" => number,
        "m" => number * 60.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| err())
}

fn decimal_digits(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// Key `index` of the key space: its decimal form zero-padded to `size` bytes, printable so
/// `etcdctl get` can inspect what a run wrote.
fn key(index: u64, size: usize) -> Vec<u8> {
    format!("{index:0size$}").into_bytes()
}

/// A put's value: `size` bytes of `v`, or a JSON object of (at least) `size` bytes.
fn put_value(size: usize, json: bool) -> Vec<u8> {
    match json {
        false => vec![b'v'; size],
        true => format!(r#"{{"v":"{}"}}"#, "v".repeat(size.saturating_sub(8))).into_bytes(),
    }
}

/// What puts write: one fixed value, or (`--random-values`) fresh random bytes each time.
#[derive(Clone)]
struct Values {
    fixed: Arc<Vec<u8>>,
    random: bool,
}

impl Values {
    fn new(size: usize, json: bool, random: bool) -> Values {
        Values {
            fixed: Arc::new(put_value(size, json)),
            random,
        }
    }

    fn of(plan: &Plan) -> Values {
        Values::new(plan.val_size, plan.json_values, plan.random_values)
    }

    /// The value of one put; `seed` picks the random bytes.
    fn make(&self, seed: u64) -> Vec<u8> {
        if !self.random {
            return self.fixed.as_ref().clone();
        }
        let mut bytes = KeyPicker(seed);
        let mut value = Vec::with_capacity(self.fixed.len() + 8);
        while value.len() < self.fixed.len() {
            value.extend_from_slice(&bytes.next_u64().to_le_bytes());
        }
        value.truncate(self.fixed.len());
        value
    }
}

/// splitmix64: enough randomness to pick keys uniformly, without a `rand` dependency.
struct KeyPicker(u64);

impl KeyPicker {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next(&mut self, key_space: u64) -> u64 {
        self.next_u64() % key_space
    }
}

/// The outcome of a run, also the JSON of the `BENCH_RESULT` line.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub clients: usize,
    pub conns: usize,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    fn human(&self) -> String {
        format!(
            "{}: {} clients / {} conns: {:.0} ops/s over {:.1}s ({} ops), latency ms p50 {:.3} \
             p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}, {} errors",
            self.mode,
            self.clients,
            self.conns,
            self.ops_per_sec,
            self.seconds,
            self.ops,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.errors
        )
    }
}

/// Entry point of `cairn bench`: `args` are the arguments after `bench`.
pub async fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from("cairn bench")).chain(args);
    // clap prints --help / usage errors itself and exits with its conventional codes.
    let args = BenchArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    if let Mode::Watch(w) = &args.mode {
        let load = &args.load;
        let duration = load.duration.unwrap_or(Duration::from_secs(10));
        let conns = load.conns.unwrap_or(4);
        let security = load.security.load()?;
        return watch::run(
            w,
            &load.endpoints,
            &security,
            conns,
            duration,
            load.val_size,
        )
        .await;
    }
    if let Mode::Scan(s) = &args.mode {
        let load = &args.load;
        let security = load.security.load()?;
        let scan_load = scan::Load {
            endpoints: &load.endpoints,
            security: &security,
            key_space: load.key_space,
            key_size: load.key_size,
            val_size: load.val_size,
            duration: load.duration.unwrap_or(Duration::from_secs(10)),
            request_timeout: load.request_timeout,
        };
        return scan::run(s, scan_load).await;
    }
    if let Mode::Plugin(p) = &args.mode {
        return plugin::run(p, args.load.val_size).await;
    }
    if let Mode::Scrape(s) = &args.mode {
        return scrape::run(s, &args.load.endpoints).await;
    }
    let plan = args.validate()?;
    let summary = execute(&plan).await?;
    println!("{}", summary.human());
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&summary)?);
    if summary.ops == 0 {
        anyhow::bail!("no request succeeded ({} errors)", summary.errors);
    }
    Ok(())
}

/// State every client reads to decide whether to issue its next request.
struct Schedule {
    measure_from: Instant,
    stop: Stop,
    /// Requests of a `--total` run not yet claimed by a client.
    remaining: AtomicU64,
    /// Measured requests completed so far, for the progress line.
    done: AtomicU64,
}

impl Schedule {
    /// Whether a request issued now is measured; `None` when the run is over.
    fn claim(&self, now: Instant) -> Option<bool> {
        if now < self.measure_from {
            return Some(false);
        }
        let more = match self.stop {
            Stop::After(d) => now < self.measure_from + d,
            Stop::Total(_) => self
                .remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        };
        more.then_some(true)
    }
}

/// What one client measured.
struct ClientStats {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<tonic::Status>,
    last_end: Instant,
}

async fn execute(plan: &Plan) -> anyhow::Result<Summary> {
    let security = plan.security.load()?;
    let channels = connect(&plan.endpoints, &security, plan.conns.min(8)).await?;
    let token = security.token(&channels[0]).await?;
    let grpc: Vec<KvClient<Channel>> = (0..plan.clients)
        .map(|i| KvClient::new(channels[i % channels.len()].clone()))
        .collect();
    if plan.preload {
        preload_keys(
            &grpc,
            plan.key_space,
            plan.key_size,
            &Values::of(plan),
            token.as_ref(),
        )
        .await?;
    }
    let mut clients = Vec::with_capacity(plan.clients);
    for (i, kv) in grpc.into_iter().enumerate() {
        let channel = &channels[i % channels.len()];
        clients.push(match (plan.gateway, plan.op) {
            (_, Op::LeaseKeepAlive) => Conn::Lease(
                lease::KeepAliveConn::open(channel.clone(), token.as_ref(), plan.request_timeout)
                    .await?,
            ),
            (false, _) => Conn::Grpc(kv),
            (true, _) => {
                let endpoint = &plan.endpoints[i % plan.endpoints.len()];
                Conn::Gateway(gateway::GatewayConn::connect(endpoint).await?)
            }
        });
    }
    let schedule = Arc::new(Schedule {
        measure_from: Instant::now() + plan.warmup,
        stop: plan.stop,
        remaining: AtomicU64::new(match plan.stop {
            Stop::Total(n) => n,
            Stop::After(_) => 0,
        }),
        done: AtomicU64::new(0),
    });
    let progress = tokio::spawn(report_progress(Arc::clone(&schedule)));
    let values = Values::of(plan);
    let value_b64 = Arc::new(base64::prelude::BASE64_STANDARD.encode(values.fixed.as_ref()));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut tasks = JoinSet::new();
    for (i, conn) in clients.into_iter().enumerate() {
        let request = Request {
            op: plan.op,
            key_size: plan.key_size,
            key_space: plan.key_space,
            values: values.clone(),
            value_b64: Arc::clone(&value_b64),
            timeout: plan.request_timeout,
            token: token.clone(),
        };
        let picker = KeyPicker(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        tasks.spawn(client_loop(conn, request, Arc::clone(&schedule), picker));
    }
    let mut merged = new_histogram()?;
    let (mut errors, mut first_error) = (0, None);
    let mut last_end = schedule.measure_from;
    while let Some(stats) = tasks.join_next().await {
        let stats = stats.context("benchmark client task panicked")??;
        merged.add(&stats.hist).context("merging histograms")?;
        errors += stats.errors;
        first_error = first_error.or(stats.first_error);
        last_end = last_end.max(stats.last_end);
    }
    progress.abort();
    if let Some(status) = first_error {
        eprintln!("first error of {errors}: {status}");
    }
    Ok(summarize(
        plan,
        &merged,
        errors,
        last_end - schedule.measure_from,
    ))
}

/// Prints the measured requests so far every [`PROGRESS_EVERY`] to stderr, so a long run
/// shows it is alive (stdout keeps only the result lines).
async fn report_progress(schedule: Arc<Schedule>) {
    tokio::time::sleep_until((schedule.measure_from + PROGRESS_EVERY).into()).await;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tick.tick().await;
        let elapsed = schedule.measure_from.elapsed().as_secs_f64();
        let done = schedule.done.load(Ordering::Relaxed);
        let total = match schedule.stop {
            Stop::After(d) => format!("{elapsed:.0}s of {:.0}s", d.as_secs_f64()),
            Stop::Total(n) => format!("{elapsed:.0}s, {done} of {n} requests"),
        };
        eprintln!(
            "progress: {total}: {done} requests, {:.0}/s",
            done as f64 / elapsed
        );
    }
}

/// Opens `conns` HTTP/2 connections, round-robin over `endpoints`, failing fast when a
/// server is not there.
async fn connect(
    endpoints: &[String],
    security: &Security,
    conns: usize,
) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &endpoints[i % endpoints.len()];
        let channel = security
            .endpoint(endpoint)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Writes every key of the key space once, in Txns of [`PRELOAD_TXN_OPS`] puts, one in
/// flight per client.
async fn preload_keys(
    clients: &[KvClient<Channel>],
    key_space: u64,
    key_size: usize,
    values: &Values,
    token: Option<&MetadataValue<Ascii>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let batches = key_space.div_ceil(PRELOAD_TXN_OPS);
    stream::iter(0..batches)
        .map(|batch| {
            let mut kv = clients[batch as usize % clients.len()].clone();
            let first = batch * PRELOAD_TXN_OPS;
            let last = (first + PRELOAD_TXN_OPS).min(key_space);
            let success = (first..last)
                .map(|i| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key(i, key_size),
                        value: values.make(i),
                        ..Default::default()
                    })),
                })
                .collect();
            let mut txn = tonic::Request::new(TxnRequest {
                success,
                ..Default::default()
            });
            if let Some(token) = token {
                txn.metadata_mut().insert(TOKEN, token.clone());
            }
            async move { kv.txn(txn).await }
        })
        .buffer_unordered(clients.len())
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("preloading the key space")?;
    eprintln!(
        "preloaded {key_space} keys in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How a client sends its requests.
enum Conn {
    Grpc(KvClient<Channel>),
    Gateway(gateway::GatewayConn),
    Lease(lease::KeepAliveConn),
}

/// Everything a client needs to build its requests.
struct Request {
    op: Op,
    key_size: usize,
    key_space: u64,
    values: Values,
    /// The value as the gateway's JSON carries it.
    value_b64: Arc<String>,
    timeout: Duration,
    /// `--user`'s auth token.
    token: Option<MetadataValue<Ascii>>,
}

impl Request {
    /// Sends one request on `conn`; `draw` is a random number in `0..1000`, `seed` one for
    /// random values.
    async fn send(
        &self,
        conn: &mut Conn,
        index: u64,
        draw: u64,
        seed: u64,
    ) -> Result<(), tonic::Status> {
        let first = key(index, self.key_size);
        let kv = match conn {
            Conn::Grpc(kv) => kv,
            Conn::Lease(lease) => return lease.keep_alive().await,
            Conn::Gateway(gw) => {
                let sent = async {
                    match self.op {
                        Op::Range(c) => gw.range(&first, c == Consistency::Serializable).await,
                        _ => gw.put(&first, &self.value_b64).await,
                    }
                };
                return tokio::time::timeout(self.timeout, sent)
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("timed out")));
            }
        };
        match self.op {
            Op::Put => {
                let put = PutRequest {
                    key: first,
                    value: self.values.make(seed),
                    ..Default::default()
                };
                kv.put(self.deadline(put)).await.map(drop)
            }
            Op::Range(consistency) => {
                let range = RangeRequest {
                    key: first,
                    serializable: consistency == Consistency::Serializable,
                    ..Default::default()
                };
                kv.range(self.deadline(range)).await.map(drop)
            }
            Op::TxnPut { ops, cas } => {
                let success = (0..u64::from(ops))
                    .map(|j| {
                        let key = key((index + j) % self.key_space, self.key_size);
                        self.put_op(key, seed.wrapping_add(j))
                    })
                    .collect();
                let compare = match cas {
                    false => Vec::new(),
                    true => vec![Compare {
                        result: compare::CompareResult::Less as i32,
                        target: compare::CompareTarget::Mod as i32,
                        key: first,
                        target_union: Some(compare::TargetUnion::ModRevision(1 << 62)),
                        ..Default::default()
                    }],
                };
                let txn = TxnRequest {
                    compare,
                    success,
                    ..Default::default()
                };
                kv.txn(self.deadline(txn)).await.map(drop)
            }
            Op::TxnMixed {
                reads_per_mille,
                consistency,
            } => {
                let op = match draw < reads_per_mille {
                    true => RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: first,
                            serializable: consistency == Consistency::Serializable,
                            ..Default::default()
                        })),
                    },
                    false => self.put_op(first, seed),
                };
                let txn = TxnRequest {
                    success: vec![op],
                    ..Default::default()
                };
                kv.txn(self.deadline(txn)).await.map(drop)
            }
            // Sent on its own stream above.
            Op::LeaseKeepAlive => Ok(()),
        }
    }

    fn put_op(&self, key: Vec<u8>, seed: u64) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key,
                value: self.values.make(seed),
                ..Default::default()
            })),
        }
    }

    fn deadline<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(token) = &self.token {
            request.metadata_mut().insert(TOKEN, token.clone());
        }
        request
    }
}

/// One client: a request in flight at a time, back to back, until the schedule ends.
async fn client_loop(
    mut conn: Conn,
    request: Request,
    schedule: Arc<Schedule>,
    mut picker: KeyPicker,
) -> anyhow::Result<ClientStats> {
    let mut stats = ClientStats {
        hist: new_histogram()?,
        errors: 0,
        first_error: None,
        last_end: schedule.measure_from,
    };
    while let Some(measured) = schedule.claim(Instant::now()) {
        let (index, draw, seed) = (
            picker.next(request.key_space),
            picker.next(1000),
            picker.next_u64(),
        );
        let started = Instant::now();
        let result = request.send(&mut conn, index, draw, seed).await;
        let ended = Instant::now();
        if !measured {
            continue;
        }
        stats.last_end = ended;
        schedule.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                let micros = u64::try_from((ended - started).as_micros()).unwrap_or(u64::MAX);
                stats.hist.saturating_record(micros.max(1));
            }
            Err(status) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(status);
            }
        }
    }
    Ok(stats)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_MICROS, 3).context("histogram bounds")
}

fn summarize(plan: &Plan, hist: &Histogram<u64>, errors: u64, elapsed: Duration) -> Summary {
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let seconds = elapsed.as_secs_f64();
    Summary {
        mode: plan.op.name(plan.gateway),
        clients: plan.clients,
        conns: plan.conns,
        key_size: plan.key_size,
        val_size: plan.val_size,
        key_space: plan.key_space,
        ops: hist.len(),
        errors,
        seconds,
        ops_per_sec: if seconds > 0.0 {
            hist.len() as f64 / seconds
        } else {
            0.0
        },
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let argv = std::iter::once("cairn bench").chain(args.iter().copied());
        let parsed = BenchArgs::try_parse_from(argv).map_err(|e| e.to_string())?;
        parsed.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_etcd_benchmark_conventions() {
        let p = plan(&["put", "--clients", "64"]).expect("valid");
        assert_eq!(p.op, Op::Put);
        assert_eq!(p.endpoints, vec!["127.0.0.1:2379".to_string()]);
        assert_eq!((p.clients, p.conns), (64, 8));
        assert_eq!(p.stop, Stop::After(Duration::from_secs(10)));
        assert_eq!((p.key_size, p.val_size, p.key_space), (8, 256, 100_000));
        assert_eq!(p.warmup, Duration::from_secs(1));
    }

    #[test]
    fn random_values_differ_per_put_and_keep_the_size() {
        let p = plan(&["put", "--val-size", "100", "--random-values"]).expect("valid");
        let values = Values::of(&p);
        let (a, b) = (values.make(1), values.make(2));
        assert_eq!((a.len(), b.len()), (100, 100));
        assert_ne!(a, b);
        // Random bytes, not a repeated pattern: far more than a handful of distinct bytes.
        let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 50, "{distinct:?}");
        let fixed = Values::of(&plan(&["put", "--val-size", "100"]).expect("valid"));
        assert_eq!(fixed.make(1), vec![b'v'; 100]);
        let err = plan(&["put", "--random-values", "--json-values"]).expect_err("conflict");
        assert!(err.contains("cannot be used with"), "{err}");
    }

    #[test]
    fn options_are_accepted_before_and_after_the_mode() {
        let p = plan(&[
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2",
            "range",
            "--consistency",
            "s",
            "--total",
            "500",
            "--conns",
            "2",
            "--clients",
            "4",
            "--preload",
        ])
        .expect("valid");
        assert_eq!(p.op, Op::Range(Consistency::Serializable));
        assert!(p.preload);
        assert_eq!(p.endpoints.len(), 2);
        assert_eq!((p.clients, p.conns), (4, 2));
        assert_eq!(p.stop, Stop::Total(500));
    }

    #[test]
    fn bad_flags_are_refused_with_their_name() {
        let cases: &[(&[&str], &str)] = &[
            (&["put", "--clients", "0"], "--clients"),
            (&["put", "--clients", "2", "--conns", "3"], "--conns"),
            (
                &["put", "--key-space", "1000", "--key-size", "2"],
                "--key-size",
            ),
            (&["put", "--duration", "2h"], "--duration"),
            (&["put", "--duration", "5x"], "5x"),
            (&["put", "--duration", "1s", "--total", "5"], "--total"),
            (&["range", "--consistency", "x"], "--consistency"),
            (&["txn-put", "--txn-ops", "0"], "--txn-ops"),
            (&["txn-put", "--txn-ops", "129"], "--txn-ops"),
            (&["txn-mixed", "--rw-ratio=-1"], "--rw-ratio"),
            (&["txn-put", "--gateway"], "--gateway"),
        ];
        for (args, needle) in cases {
            let err = plan(args).expect_err("must be refused");
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn txn_modes_carry_their_options() {
        let p = plan(&["txn-put", "--txn-ops", "4", "--cas"]).expect("valid");
        assert_eq!(p.op, Op::TxnPut { ops: 4, cas: true });
        assert_eq!(p.op.name(false), "txn-cas");
        let p = plan(&["txn-mixed", "--rw-ratio", "3", "--consistency", "s"]).expect("valid");
        let want = Op::TxnMixed {
            reads_per_mille: 750,
            consistency: Consistency::Serializable,
        };
        assert_eq!(p.op, want);
        assert_eq!(
            plan(&["lease-keepalive"]).expect("valid").op,
            Op::LeaseKeepAlive
        );
    }

    #[test]
    fn durations_parse_with_units() {
        let cases = [
            ("10s", 10_000),
            ("500ms", 500),
            ("1.5m", 90_000),
            ("2", 2000),
        ];
        for (text, millis) in cases {
            let parsed = parse_duration(text).expect(text);
            assert_eq!(parsed, Duration::from_millis(millis), "{text}");
        }
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn keys_are_padded_indexes_inside_the_key_space() {
        assert_eq!(key(42, 8), b"00000042".to_vec());
        let mut picker = KeyPicker(7);
        assert!((0..1000).all(|_| picker.next(10) < 10));
    }

    #[test]
    fn total_schedule_hands_out_exactly_total_requests() {
        let now = Instant::now();
        let schedule = Schedule {
            measure_from: now,
            stop: Stop::Total(3),
            remaining: AtomicU64::new(3),
            done: AtomicU64::new(0),
        };
        let claimed: Vec<_> = (0..5).map(|_| schedule.claim(now)).collect();
        assert_eq!(claimed, [Some(true), Some(true), Some(true), None, None]);
    }
}

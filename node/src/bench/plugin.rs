//! `cairn bench plugin FILE`: the per-call overhead of an admission plugin, in process.
//!
//! Loads FILE as the node would (one admission plugin covering every key) and runs the
//! core's admission hook over a one-put txn `--calls` times in a row, timing each call:
//! what a write pays for the plugin, instance hand-out and WIT conversion included, without
//! the network or raft. With a trivial plugin (the `hostile` example in `allow` mode) the
//! figure is the runtime's own overhead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::RESULT_PREFIX;
use crate::config::{DenyCode, FailurePolicy, Hook, PluginConfig};
use crate::core::hooks::Admission;
use crate::core::{RequestContext, Transport};
use crate::plugins::{self, PluginAdmission};
use crate::proto::etcdserverpb::{request_op::Request, PutRequest, RequestOp, TxnRequest};

/// Options of `bench plugin`.
#[derive(Debug, Args)]
pub struct PluginArgs {
    /// The plugin component (.wasm).
    pub file: PathBuf,
    /// The plugin's `config` value, as JSON.
    #[arg(long, default_value = r#"{"mode":"allow"}"#)]
    pub config: String,
    /// Measured calls, after 1,000 unmeasured ones.
    #[arg(long, default_value_t = 100_000)]
    pub calls: u64,
}

/// The machine-readable result.
#[derive(Debug, Serialize)]
struct Summary {
    mode: &'static str,
    calls: u64,
    denials: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
}

const WARMUP_CALLS: u64 = 1_000;

pub async fn run(args: &PluginArgs, val_size: usize) -> anyhow::Result<()> {
    let config_json: serde_json::Value =
        serde_json::from_str(&args.config).context("--config is not JSON")?;
    let config = PluginConfig {
        name: "bench".into(),
        path: args.file.clone(),
        hooks: vec![Hook::Admission],
        prefixes: Vec::new(),
        order: 0,
        fuel: crate::config::DEFAULT_PLUGIN_FUEL,
        deadline: crate::config::DEFAULT_PLUGIN_DEADLINE,
        memory_bytes: crate::config::DEFAULT_PLUGIN_MEMORY_BYTES,
        failure_policy: FailurePolicy::FailClosed,
        deny_code: DenyCode::PermissionDenied,
        values: true,
        allow_rewrite: false,
        config_json: config_json.to_string(),
    };
    let set = plugins::Plugins::start(
        None,
        std::slice::from_ref(&config),
        Arc::new(plugins::runtime::EmptyState),
    )
    .await?;
    let admission = PluginAdmission::new(set);
    let ctx = RequestContext::new(Transport::Grpc, None);
    let txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"/bench/key".to_vec(),
                value: vec![b'x'; val_size],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut denials = 0u64;
    for i in 0..WARMUP_CALLS + args.calls {
        let started = Instant::now();
        let allowed = admission.admit(&ctx, txn.clone()).await.is_ok();
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if i >= WARMUP_CALLS {
            hist.saturating_record(nanos.max(1));
            denials += u64::from(!allowed);
        }
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let summary = Summary {
        mode: "plugin",
        calls: args.calls,
        denials,
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        max_us: hist.max() as f64 / 1000.0,
        mean_us: hist.mean() / 1000.0,
    };
    println!(
        "plugin {}: {} calls, per call µs p50 {:.2} p90 {:.2} p99 {:.2} max {:.1} mean {:.2}, {} denied",
        args.file.display(),
        summary.calls,
        summary.p50_us,
        summary.p90_us,
        summary.p99_us,
        summary.max_us,
        summary.mean_us,
        summary.denials
    );
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&summary)?);
    Ok(())
}

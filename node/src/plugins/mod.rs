//! WebAssembly plugins: loading, hot reload, limits, hook dispatch and metrics.
//!
//! Plugins are components of the `cairn:plugin` world (`sdk/wit/plugin.wit`). They are
//! loaded at start-up from the config file's `plugins:` list, each compiled once and
//! instantiated once as a self-check ([`loader`]); `cairn plugin reload` or SIGHUP loads the
//! list again and swaps the whole set, keeping a plugin's old version when its new one
//! fails. Calls run on reused instances with a memory limit, a fuel budget and a
//! wall-clock backstop ([`runtime`]). Admission plugins implement the core's [`Admission`]
//! hook ([`admission`]) and auth plugins its authenticator and authorizer ([`auth`]), so
//! every transport is covered; they run before a proposal, never in raft apply. Backup
//! plugins transform the snapshot stream of a backup ([`backup`]).
//!
//! Owns: the wasmtime engine and everything that names wasmtime (only [`runtime`] does).
//! Must not touch: raft, storage; it reads state only through the [`MvccState`] the
//! server hands it (`host.range` and `host.count`).
//!
//! [`Admission`]: crate::core::hooks::Admission

pub mod admission;
pub mod auth;
pub mod backup;
pub mod check;
pub mod cli;
pub mod loader;
pub mod runtime;
pub mod scaffold;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::config::{FailurePolicy, Hook, PluginConfig};
use crate::proto::etcdserverpb::RangeRequest;
pub use admission::PluginAdmission;
pub use auth::PluginAuth;
pub use loader::{Plugins, ReloadReport};
use runtime::{CallFailure, CallLimits, Instances, KeyValue, NodeState, Usage};

/// Why plugins could not be loaded or a plugin command failed. Every message names the
/// plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("starting the plugin engine: {0}")]
    Engine(String),
    #[error("plugin {name:?}: cannot read {path}: {source}")]
    Read {
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(&'static str),
    #[error("{0} file(s) are not valid cairn plugins")]
    Check(usize),
    #[error("plugin {name:?}: {path} is not a valid cairn plugin component: {reason}")]
    Invalid {
        name: String,
        path: String,
        reason: String,
    },
    #[error("plugin {name:?}: {path} failed its self-check: {reason}")]
    SelfCheck {
        name: String,
        path: String,
        reason: String,
    },
    #[error("no plugins reloaded: the node was started without --config-file")]
    NoConfigFile,
    #[error("no plugins reloaded: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Cli(String),
    #[error("{0}")]
    Scaffold(String),
}

/// One loaded plugin: its settings, its component's version and its pool of ready
/// instances.
pub struct LoadedPlugin {
    pub config: PluginConfig,
    pub instances: Instances,
    /// The first 12 hex digits of the file's SHA-256, the `version` label.
    pub version: String,
    digest: [u8; 32],
}

impl LoadedPlugin {
    /// The budget of each of this plugin's calls.
    pub fn limits(&self) -> CallLimits {
        CallLimits {
            fuel: self.config.fuel,
            deadline: self.config.deadline,
        }
    }

    /// Records one call in the metrics: its latency and fuel, its result label (`failure`
    /// for an `Err`), and a failure's kind. `hook` is the metrics' `hook` label.
    pub fn record(
        &self,
        hook: &str,
        started: Instant,
        usage: Usage,
        result: Result<&str, &CallFailure>,
    ) {
        let name = self.config.name.as_str();
        let m = crate::metrics::get();
        m.plugin_call_seconds
            .with_label_values(&[name, hook])
            .observe(started.elapsed().as_secs_f64());
        m.plugin_call_fuel
            .with_label_values(&[name, hook])
            .observe(usage.fuel as f64);
        m.plugin_calls
            .with_label_values(&[name, hook, result.unwrap_or("failure")])
            .inc();
        match result {
            Ok(_) => {}
            Err(f) if f.is_timeout() => m.plugin_timeouts.with_label_values(&[name, hook]).inc(),
            Err(_) => m.plugin_traps.with_label_values(&[name, hook]).inc(),
        }
    }
}

/// The loaded plugins, in call order. A reload builds a new set and swaps it in whole;
/// calls in flight finish on the set they started with.
#[derive(Default)]
pub struct PluginSet {
    plugins: Vec<Arc<LoadedPlugin>>,
}

impl PluginSet {
    /// The plugins serving `hook`, in call order.
    pub fn serving(&self, hook: Hook) -> impl Iterator<Item = &LoadedPlugin> {
        self.plugins
            .iter()
            .map(|p| p.as_ref())
            .filter(move |p| p.config.hooks.contains(&hook))
    }

    /// Whether any plugin serves `hook`.
    pub fn serves(&self, hook: Hook) -> bool {
        self.serving(hook).next().is_some()
    }

    /// What `cairn plugin list` shows.
    pub fn describe(&self) -> Vec<PluginInfo> {
        self.plugins.iter().map(|p| PluginInfo::of(p)).collect()
    }
}

/// A loaded plugin as `GET /cairn/v1/plugins` reports it. Calls and denials are counted
/// per plugin name since the node started, across reloads.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub path: String,
    pub hooks: Vec<String>,
    pub prefixes: Vec<String>,
    pub failure_policy: String,
    pub calls: u64,
    pub denials: u64,
    pub failures: u64,
}

impl PluginInfo {
    fn of(p: &LoadedPlugin) -> PluginInfo {
        let c = &p.config;
        let calls = |result: &str| -> u64 {
            c.hooks
                .iter()
                .flat_map(|h| h.labels())
                .map(|hook| {
                    crate::metrics::get()
                        .plugin_calls
                        .with_label_values(&[c.name.as_str(), hook, result])
                        .get()
                })
                .sum()
        };
        // Every result label a hook records: admission's allow/deny/rewrite, auth's pass
        // (credentials left to the next authenticator), backup's ok/refused.
        let denied = calls("deny") + calls("refused");
        let failed = calls("failure");
        let answered: u64 = ["allow", "rewrite", "pass", "ok"]
            .into_iter()
            .map(calls)
            .sum();
        PluginInfo {
            name: c.name.clone(),
            version: p.version.clone(),
            path: c.path.display().to_string(),
            hooks: c.hooks.iter().map(|h| h.name().to_string()).collect(),
            prefixes: c
                .prefixes
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
            failure_policy: match c.failure_policy {
                FailurePolicy::FailClosed => "fail-closed",
                FailurePolicy::FailOpen => "fail-open",
            }
            .to_string(),
            calls: answered + denied + failed,
            denials: denied,
            failures: failed,
        }
    }
}

/// The node's MVCC store as plugins read it: local (serializable) reads of the current
/// revision, on the calling plugin's thread, as a serializable Range request runs.
pub struct MvccState(pub Arc<crate::mvcc::Mvcc>);

impl NodeState for MvccState {
    fn range(&self, key: &[u8], range_end: &[u8], limit: u32) -> Result<Vec<KeyValue>, String> {
        let req = RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            limit: i64::from(limit),
            serializable: true,
            ..Default::default()
        };
        let resp = self.0.range(&req).map_err(|e| e.to_string())?;
        Ok(resp
            .kvs
            .into_iter()
            .map(|kv| KeyValue {
                key: kv.key,
                value: kv.value,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
            })
            .collect())
    }

    /// Linear in the range's size (every key is visited, none decoded), so it stops at the
    /// call's deadline rather than hold the plugin's worker thread.
    fn count(&self, key: &[u8], range_end: &[u8], until: Instant) -> Result<Option<u64>, String> {
        self.0
            .count_while(key, range_end, &mut || Instant::now() < until)
            .map_err(|e| e.to_string())
    }
}

/// The first 12 hex digits of a file's SHA-256: a plugin's `version`.
pub fn version_of(digest: &[u8; 32]) -> String {
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

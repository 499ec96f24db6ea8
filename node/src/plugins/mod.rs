//! WebAssembly plugins: loading, limits, hook dispatch and metrics.
//!
//! Plugins are components of the `cairn:plugin` world (`sdk/wit/plugin.wit`). They are
//! loaded at start-up from the config file's `plugins:` list, each compiled once; every call
//! runs on a fresh pooled instance with a memory limit and an epoch deadline
//! ([`runtime`]). Admission plugins implement the core's [`Admission`] hook
//! ([`admission`]), so every transport is covered; they run before a proposal, never in
//! raft apply.
//!
//! Owns: the wasmtime engine and everything that names wasmtime (only [`runtime`] does).
//! Must not touch: raft, storage; it reads state only through the range function the
//! server hands it.
//!
//! [`Admission`]: crate::core::hooks::Admission

pub mod admission;
pub mod auth;
pub mod backup;
pub mod check;
pub mod runtime;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::config::{Hook, PluginConfig};
use crate::proto::etcdserverpb::RangeRequest;
pub use admission::PluginAdmission;
pub use auth::PluginAuth;
use runtime::{CallEnv, CallFailure, CallLimits, KeyValue, Loaded, RangeFn, Runtime};

/// Why plugins could not be loaded. Every message names the plugin.
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
}

/// One loaded plugin: its compiled component, its settings and what its calls see.
pub struct LoadedPlugin {
    pub config: PluginConfig,
    pub loaded: Loaded,
    pub env: Arc<CallEnv>,
    /// The first 12 hex digits of the file's SHA-256, the `version` label.
    pub version: String,
}

/// Loads every configured plugin, or fails naming the first that cannot be loaded.
/// `range` serves the plugins' `host.range` reads. Returns `None` when no plugin is
/// configured, so a node without plugins never starts the engine.
pub fn load(
    configs: &[PluginConfig],
    range: Arc<RangeFn>,
) -> Result<Option<Arc<PluginSet>>, PluginError> {
    if configs.is_empty() {
        return Ok(None);
    }
    let runtime = Runtime::new()?;
    let mut plugins = Vec::new();
    // One component configured several times (say, on different prefixes) is compiled once.
    let mut compiled: HashMap<[u8; 32], Loaded> = HashMap::new();
    for config in configs {
        let path = config.path.display().to_string();
        let bytes = std::fs::read(&config.path).map_err(|source| PluginError::Read {
            name: config.name.clone(),
            path: path.clone(),
            source,
        })?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let loaded = match compiled.get(&digest) {
            Some(loaded) => loaded.clone(),
            None => {
                let loaded = runtime
                    .load(&bytes)
                    .map_err(|reason| PluginError::Invalid {
                        name: config.name.clone(),
                        path: path.clone(),
                        reason,
                    })?;
                compiled.insert(digest, loaded.clone());
                loaded
            }
        };
        let version: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        crate::metrics::get()
            .plugin_loaded
            .with_label_values(&[config.name.as_str(), version.as_str()])
            .set(1);
        tracing::info!(plugin = %config.name, %path, %version, hooks = ?config.hooks, "plugin loaded");
        plugins.push(LoadedPlugin {
            env: Arc::new(CallEnv {
                name: config.name.clone(),
                config_json: config.config_json.clone(),
                range: Some(range.clone()),
            }),
            config: config.clone(),
            loaded,
            version,
        });
    }
    Ok(Some(Arc::new(PluginSet {
        _runtime: runtime,
        plugins,
    })))
}

impl LoadedPlugin {
    pub fn limits(&self) -> CallLimits {
        CallLimits {
            deadline: self.config.deadline,
            memory_bytes: self.config.memory_bytes,
        }
    }

    /// Records one call in the metrics: its latency, its result label (`failure` for an
    /// `Err`), and a failure's kind. `hook` is the metrics' `hook` label.
    pub fn record(&self, hook: &str, started: Instant, result: Result<&str, &CallFailure>) {
        let name = self.config.name.as_str();
        let m = crate::metrics::get();
        m.plugin_call_seconds
            .with_label_values(&[name, hook])
            .observe(started.elapsed().as_secs_f64());
        m.plugin_calls
            .with_label_values(&[name, hook, result.unwrap_or("failure")])
            .inc();
        match result {
            Ok(_) => {}
            Err(CallFailure::Timeout) => m.plugin_timeouts.with_label_values(&[name, hook]).inc(),
            Err(_) => m.plugin_traps.with_label_values(&[name, hook]).inc(),
        }
    }
}

/// The loaded plugins, in call order.
pub struct PluginSet {
    // Kept for its epoch thread, which stops when the set is dropped.
    _runtime: Runtime,
    plugins: Vec<LoadedPlugin>,
}

impl PluginSet {
    /// The plugins serving `hook`, in call order.
    pub fn serving(&self, hook: Hook) -> impl Iterator<Item = &LoadedPlugin> {
        self.plugins
            .iter()
            .filter(move |p| p.config.hooks.contains(&hook))
    }

    /// Whether any plugin serves `hook`.
    pub fn serves(&self, hook: Hook) -> bool {
        self.serving(hook).next().is_some()
    }
}

/// `host.range` over the node's MVCC store: a local (serializable) read of the current
/// revision, at most `limit` pairs.
pub fn mvcc_range(mvcc: Arc<crate::mvcc::Mvcc>) -> Arc<RangeFn> {
    Arc::new(move |key: &[u8], range_end: &[u8], limit: u32| {
        let req = RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            limit: i64::from(limit),
            serializable: true,
            ..Default::default()
        };
        let resp = mvcc.range(&req).map_err(|e| e.to_string())?;
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
    })
}

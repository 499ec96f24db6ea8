//! Loading the configured plugins at start-up, and hot reload (`cairn plugin reload`,
//! SIGHUP): the config file's `plugins:` list is read again, changed plugins are compiled
//! and self-checked, and the new set replaces the old one in one swap. Calls in flight
//! finish on the set they started with, and no connection is touched.
//!
//! A plugin's self-check is one instantiation under its configured limits: the component
//! compiles, links against the host's world, runs its start-up code within its fuel and
//! memory, and the instance becomes the first one of its pool. At start-up a plugin that
//! fails fails the start; on reload it keeps its old version (or stays unloaded if it is
//! new), and the failure is logged, counted and reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::runtime::{CallEnv, Loaded, NodeState, Runtime};
use super::{version_of, LoadedPlugin, PluginError, PluginSet};
use crate::config::PluginConfig;

/// The node's plugins: the set in use, and what a reload needs.
pub struct Plugins {
    config_file: Option<PathBuf>,
    /// What the host functions read.
    state: Arc<dyn NodeState>,
    current: RwLock<Arc<PluginSet>>,
    /// The engine, made when the first plugin is loaded, so a node without plugins never
    /// starts one. Holding the lock for a whole reload keeps two reloads from interleaving.
    runtime: tokio::sync::Mutex<Option<Runtime>>,
}

/// What a reload did, as `POST /cairn/v1/plugins/reload` answers it.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    /// Plugins loaded from a new or changed file or configuration.
    pub loaded: Vec<Change>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
    /// Plugins whose new version failed; each keeps its old version when it had one.
    pub failed: Vec<Failure>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Change {
    pub name: String,
    pub version: String,
    /// The version it replaced; none for a plugin new to the node.
    pub previous: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub name: String,
    pub error: String,
    /// The version still serving; none when the plugin was not loaded before.
    pub kept: Option<String>,
}

impl Plugins {
    /// Loads `configs`; any plugin that fails to load or fails its self-check fails
    /// start-up, naming it. `config_file` is where reloads read the list again.
    pub async fn start(
        config_file: Option<PathBuf>,
        configs: &[PluginConfig],
        state: Arc<dyn NodeState>,
    ) -> Result<Arc<Plugins>, PluginError> {
        let plugins = Plugins {
            config_file,
            state,
            current: RwLock::default(),
            runtime: tokio::sync::Mutex::new(None),
        };
        let mut runtime = plugins.runtime.lock().await;
        let (set, _, mut failures) = plugins
            .build(&mut runtime, configs, &PluginSet::default())
            .await?;
        if !failures.is_empty() {
            return Err(failures.swap_remove(0).1);
        }
        publish(&PluginSet::default(), &set);
        drop(runtime);
        *plugins.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(Arc::new(plugins))
    }

    /// The set in use.
    pub fn current(&self) -> Arc<PluginSet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the config file's `plugins:` list again and swaps in the new set. Fails
    /// (changing nothing) only when the file cannot be read or is invalid; a plugin that
    /// fails keeps its old version and is reported in [`ReloadReport::failed`].
    pub async fn reload(&self) -> Result<ReloadReport, PluginError> {
        let path = self
            .config_file
            .as_deref()
            .ok_or(PluginError::NoConfigFile)?;
        let mut runtime = self.runtime.lock().await;
        let configs = read_list(path)?;
        let old = self.current();
        let (set, mut report, failures) = self.build(&mut runtime, &configs, &old).await?;
        let m = crate::metrics::get();
        for (name, error) in failures {
            let kept = old.by_name(&name).map(|p| p.version.clone());
            tracing::warn!(plugin = %name, error = %error, kept_version = ?kept, "plugin reload failed; the old version stays");
            m.plugin_load_failures
                .with_label_values(&[name.as_str()])
                .inc();
            report.failed.push(Failure {
                name,
                error: error.to_string(),
                kept,
            });
        }
        report.removed = old
            .plugins
            .iter()
            .filter(|p| set.by_name(&p.config.name).is_none())
            .map(|p| p.config.name.clone())
            .collect();
        publish(&old, &set);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        tracing::info!(
            loaded = report.loaded.len(),
            unchanged = report.unchanged.len(),
            removed = report.removed.len(),
            failed = report.failed.len(),
            "plugins reloaded"
        );
        Ok(report)
    }

    /// The set for `configs`, reusing what `old` already has: an unchanged plugin keeps its
    /// instances, an unchanged file is not compiled again. A plugin that fails is left out
    /// of the set, unless `old` has it, and returned with its error.
    async fn build(
        &self,
        runtime: &mut Option<Runtime>,
        configs: &[PluginConfig],
        old: &PluginSet,
    ) -> Result<(PluginSet, ReloadReport, Vec<(String, PluginError)>), PluginError> {
        let mut set = PluginSet::default();
        let mut report = ReloadReport::default();
        let mut failures = Vec::new();
        if configs.is_empty() {
            return Ok((set, report, failures));
        }
        let runtime = match runtime {
            Some(runtime) => runtime,
            None => runtime.insert(Runtime::new()?),
        };
        let mut compiled: HashMap<[u8; 32], Loaded> = old
            .plugins
            .iter()
            .map(|p| (p.digest, p.instances.loaded().clone()))
            .collect();
        for config in configs {
            let previous = old.by_name(&config.name);
            match self
                .load_one(runtime, config, previous, &mut compiled)
                .await
            {
                Ok(plugin) if previous.is_some_and(|p| Arc::ptr_eq(p, &plugin)) => {
                    report.unchanged.push(config.name.clone());
                    set.plugins.push(plugin);
                }
                Ok(plugin) => {
                    tracing::info!(plugin = %config.name, path = %config.path.display(), version = %plugin.version, hooks = ?config.hooks, "plugin loaded");
                    report.loaded.push(Change {
                        name: config.name.clone(),
                        version: plugin.version.clone(),
                        previous: previous.map(|p| p.version.clone()),
                    });
                    set.plugins.push(plugin);
                }
                Err(e) => {
                    set.plugins.extend(previous.cloned());
                    failures.push((config.name.clone(), e));
                }
            }
        }
        Ok((set, report, failures))
    }

    async fn load_one(
        &self,
        runtime: &Runtime,
        config: &PluginConfig,
        previous: Option<&Arc<LoadedPlugin>>,
        compiled: &mut HashMap<[u8; 32], Loaded>,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let path = config.path.display().to_string();
        let bytes = tokio::fs::read(&config.path)
            .await
            .map_err(|source| PluginError::Read {
                name: config.name.clone(),
                path: path.clone(),
                source,
            })?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(previous) = previous.filter(|p| p.digest == digest && p.config == *config) {
            return Ok(previous.clone());
        }
        let loaded = match compiled.get(&digest) {
            Some(loaded) => loaded.clone(),
            None => {
                // Compiling takes milliseconds to seconds of CPU: off the async workers.
                let rt = runtime.clone();
                let loaded = tokio::task::spawn_blocking(move || rt.load(&bytes))
                    .await
                    .map_err(|e| PluginError::Engine(e.to_string()))?
                    .map_err(|reason| PluginError::Invalid {
                        name: config.name.clone(),
                        path: path.clone(),
                        reason,
                    })?;
                compiled.insert(digest, loaded.clone());
                loaded
            }
        };
        let env = Arc::new(CallEnv {
            name: config.name.clone(),
            config_json: config.config_json.clone(),
            state: self.state.clone(),
        });
        let instances = loaded.instances(env, config.memory_bytes);
        instances
            .warm(config.fuel, config.deadline)
            .await
            .map_err(|e| PluginError::SelfCheck {
                name: config.name.clone(),
                path,
                reason: e.to_string(),
            })?;
        Ok(Arc::new(LoadedPlugin {
            config: config.clone(),
            instances,
            version: version_of(&digest),
            digest,
        }))
    }
}

impl PluginSet {
    fn by_name(&self, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.iter().find(|p| p.config.name == name)
    }
}

/// Sets `cairn_plugin_loaded{plugin,version}` to the new set: 1 for each plugin's
/// version, and the series of versions no longer loaded removed.
fn publish(old: &PluginSet, new: &PluginSet) {
    let gauge = &crate::metrics::get().plugin_loaded;
    for p in &old.plugins {
        let still = new
            .by_name(&p.config.name)
            .is_some_and(|n| n.version == p.version);
        if !still {
            let _ = gauge.remove_label_values(&[p.config.name.as_str(), p.version.as_str()]);
        }
    }
    for p in &new.plugins {
        gauge
            .with_label_values(&[p.config.name.as_str(), p.version.as_str()])
            .set(1);
        zero_series(p);
    }
}

/// Creates a loaded plugin's failure and latency series at zero (as go-grpc-prometheus does
/// for gRPC methods), so dashboards and alert rates see a plugin that has not failed yet.
fn zero_series(p: &LoadedPlugin) {
    let m = crate::metrics::get();
    let name = p.config.name.as_str();
    m.plugin_load_failures.with_label_values(&[name]);
    for hook in p.config.hooks.iter().flat_map(|h| h.labels()) {
        let labels = [name, hook];
        m.plugin_calls.with_label_values(&[name, hook, "failure"]);
        m.plugin_traps.with_label_values(&labels);
        m.plugin_timeouts.with_label_values(&labels);
        m.plugin_call_seconds.with_label_values(&labels);
        m.plugin_call_fuel.with_label_values(&labels);
    }
}

/// The `plugins:` list of the config file, validated as at start-up.
fn read_list(path: &Path) -> Result<Vec<PluginConfig>, PluginError> {
    Ok(crate::config::plugins_in_file(path)?)
}

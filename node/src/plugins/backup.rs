//! The backup hook: a byte stream through the backup plugins, chunk by chunk. Sealing runs
//! them in configuration order, each one's output the next one's input; opening (restore)
//! runs them in reverse, so `[compress, encrypt]` is undone as decrypt, then decompress.
//! Each plugin serves the whole stream on one instance (its stream state lives there),
//! with the plugin's deadline per call.
//!
//! A backup has no failure policy: a failing or refusing plugin fails the backup, because
//! skipping, say, an encryption plugin would write the data in the clear.

use std::sync::Arc;
use std::time::Instant;

use super::runtime::{BackupStream, CallFailure, Direction, Usage};
use super::{LoadedPlugin, PluginSet};
use crate::config::Hook;

const HOOK: &str = Hook::Backup.name();

/// Why a backup stream stopped, naming the plugin.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("backup plugin {plugin}: {failure}")]
    Failed {
        plugin: String,
        failure: CallFailure,
    },
    #[error("backup plugin {plugin}: {reason}")]
    Refused { plugin: String, reason: String },
    /// `--backup-plugins` names a plugin that is not loaded with the backup hook (a reload
    /// removed it): the backup fails rather than skip it.
    #[error("backup plugin {0}: not loaded with the backup hook")]
    Missing(String),
}

/// One stream through every backup plugin. With no backup plugin it passes bytes through.
/// It holds the plugins it began with, so a reload meanwhile does not change the stream.
pub struct BackupChain {
    /// Each plugin and its side of the stream, in stream order.
    stages: Vec<(Arc<LoadedPlugin>, BackupStream)>,
}

impl BackupChain {
    /// Starts a stream named `name` through the backup plugins of `set`; returns it and
    /// the output's name, as the plugins renamed it (each sees the previous one's name).
    pub async fn begin(
        set: Option<Arc<PluginSet>>,
        direction: Direction,
        name: &str,
    ) -> Result<(BackupChain, String), ChainError> {
        BackupChain::begin_only(set, direction, name, &[]).await
    }

    /// [`BackupChain::begin`] through only the backup plugins named in `only` (all of them
    /// when it is empty), in the set's order.
    pub async fn begin_only(
        set: Option<Arc<PluginSet>>,
        direction: Direction,
        name: &str,
        only: &[String],
    ) -> Result<(BackupChain, String), ChainError> {
        let mut chain = BackupChain { stages: Vec::new() };
        let mut name = name.to_string();
        let plugins = set.as_ref().map_or(&[][..], |set| &set.plugins[..]);
        let mut order: Vec<Arc<LoadedPlugin>> = plugins
            .iter()
            .filter(|p| p.config.hooks.contains(&Hook::Backup))
            .filter(|p| only.is_empty() || only.contains(&p.config.name))
            .cloned()
            .collect();
        if let Some(missing) = only
            .iter()
            .find(|wanted| !order.iter().any(|p| p.config.name == **wanted))
        {
            return Err(ChainError::Missing(missing.clone()));
        }
        if direction == Direction::Open {
            order.reverse();
        }
        for plugin in order {
            let started = Instant::now();
            let mut stream = match plugin.instances.backup_stream(plugin.limits()).await {
                Ok(stream) => stream,
                Err(failure) => return Err(failed(&plugin, started, Usage::default(), failure)),
            };
            let outcome = stream.begin(direction, &name).await;
            name = answer(&plugin, started, stream.usage(), outcome)?;
            chain.stages.push((plugin, stream));
        }
        Ok((chain, name))
    }

    /// Passes one chunk through every stage.
    pub async fn push(&mut self, chunk: Vec<u8>) -> Result<Vec<u8>, ChainError> {
        let mut bytes = chunk;
        for (plugin, stream) in &mut self.stages {
            let started = Instant::now();
            let outcome = stream.transform(&bytes).await;
            bytes = answer(plugin, started, stream.usage(), outcome)?;
        }
        Ok(bytes)
    }

    /// Ends the stream: what each stage flushes goes through the stages after it.
    pub async fn finish(mut self) -> Result<Vec<u8>, ChainError> {
        let mut out = Vec::new();
        for (plugin, stream) in &mut self.stages {
            if !out.is_empty() {
                let started = Instant::now();
                let outcome = stream.transform(&out).await;
                out = answer(plugin, started, stream.usage(), outcome)?;
            }
            let started = Instant::now();
            let outcome = stream.finish().await;
            out.extend(answer(plugin, started, stream.usage(), outcome)?);
        }
        Ok(out)
    }
}

/// Records a call and turns its outcome into the stream's.
fn answer<T>(
    plugin: &LoadedPlugin,
    started: Instant,
    usage: Usage,
    outcome: Result<Result<T, String>, CallFailure>,
) -> Result<T, ChainError> {
    match outcome {
        Ok(Ok(value)) => {
            plugin.record(HOOK, started, usage, Ok("ok"));
            Ok(value)
        }
        Ok(Err(reason)) => {
            plugin.record(HOOK, started, usage, Ok("refused"));
            Err(ChainError::Refused {
                plugin: plugin.config.name.clone(),
                reason,
            })
        }
        Err(failure) => Err(failed(plugin, started, usage, failure)),
    }
}

fn failed(
    plugin: &LoadedPlugin,
    started: Instant,
    usage: Usage,
    failure: CallFailure,
) -> ChainError {
    plugin.record(HOOK, started, usage, Err(&failure));
    ChainError::Failed {
        plugin: plugin.config.name.clone(),
        failure,
    }
}

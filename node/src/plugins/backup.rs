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

use super::runtime::{BackupStream, CallFailure, Direction};
use super::{LoadedPlugin, PluginSet};
use crate::config::Hook;

const HOOK: &str = "backup";

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
}

/// One stream through every backup plugin. With no backup plugin it passes bytes through.
pub struct BackupChain {
    plugins: Option<Arc<PluginSet>>,
    /// Index into the set's plugins, and that plugin's side of the stream, in stream order.
    stages: Vec<(usize, BackupStream)>,
}

impl BackupChain {
    /// Starts a stream named `name`; returns it and the output's name, as the plugins
    /// renamed it (each sees the name the previous one chose).
    pub async fn begin(
        plugins: Option<Arc<PluginSet>>,
        direction: Direction,
        name: &str,
    ) -> Result<(BackupChain, String), ChainError> {
        let mut chain = BackupChain {
            plugins: plugins.clone(),
            stages: Vec::new(),
        };
        let mut name = name.to_string();
        let Some(set) = plugins else {
            return Ok((chain, name));
        };
        let mut order: Vec<usize> = (0..set.plugins.len())
            .filter(|&i| set.plugins[i].config.hooks.contains(&Hook::Backup))
            .collect();
        if direction == Direction::Open {
            order.reverse();
        }
        for index in order {
            let plugin = &set.plugins[index];
            let started = Instant::now();
            let mut stream = plugin
                .loaded
                .backup_stream(&plugin.env, plugin.limits())
                .await
                .map_err(|failure| failed(plugin, started, failure))?;
            name = answer(plugin, started, stream.begin(direction, &name).await)?;
            chain.stages.push((index, stream));
        }
        Ok((chain, name))
    }

    /// Passes one chunk through every stage.
    pub async fn push(&mut self, chunk: Vec<u8>) -> Result<Vec<u8>, ChainError> {
        let Some(set) = self.plugins.clone() else {
            return Ok(chunk);
        };
        let mut bytes = chunk;
        for (index, stream) in &mut self.stages {
            let plugin = &set.plugins[*index];
            let started = Instant::now();
            bytes = answer(plugin, started, stream.transform(&bytes).await)?;
        }
        Ok(bytes)
    }

    /// Ends the stream: each stage's remaining bytes go through the stages after it.
    pub async fn finish(mut self) -> Result<Vec<u8>, ChainError> {
        let Some(set) = self.plugins.clone() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for i in 0..self.stages.len() {
            // What the earlier stages flushed goes through this one, then it flushes too.
            let (index, stream) = &mut self.stages[i];
            let plugin = &set.plugins[*index];
            let mut started = Instant::now();
            if !out.is_empty() {
                out = answer(plugin, started, stream.transform(&out).await)?;
                started = Instant::now();
            }
            out.extend(answer(plugin, started, stream.finish().await)?);
        }
        Ok(out)
    }
}

/// Records a call and turns its outcome into the stream's.
fn answer<T>(
    plugin: &LoadedPlugin,
    started: Instant,
    outcome: Result<Result<T, String>, CallFailure>,
) -> Result<T, ChainError> {
    match outcome {
        Ok(Ok(value)) => {
            plugin.record(HOOK, started, Ok("ok"));
            Ok(value)
        }
        Ok(Err(reason)) => {
            plugin.record(HOOK, started, Ok("refused"));
            Err(ChainError::Refused {
                plugin: plugin.config.name.clone(),
                reason,
            })
        }
        Err(failure) => Err(failed(plugin, started, failure)),
    }
}

fn failed(plugin: &LoadedPlugin, started: Instant, failure: CallFailure) -> ChainError {
    plugin.record(HOOK, started, Err(&failure));
    ChainError::Failed {
        plugin: plugin.config.name.clone(),
        failure,
    }
}

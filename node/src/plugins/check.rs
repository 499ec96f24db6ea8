//! `cairn plugin check FILE...`: compiles each component as the node would at start-up,
//! checks that it implements the `cairn:plugin` world and runs the same self-check (one
//! instantiation under the default limits), so a bad file is found before a restart or a
//! reload refuses it.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::runtime::{CallEnv, EmptyState, Runtime};
use super::{version_of, PluginError};
use crate::config::{DEFAULT_PLUGIN_DEADLINE, DEFAULT_PLUGIN_FUEL, DEFAULT_PLUGIN_MEMORY_BYTES};

/// Checks every file, printing one line each; fails when any is not a valid plugin.
pub async fn run(files: Vec<PathBuf>) -> Result<(), PluginError> {
    let runtime = Runtime::new()?;
    let mut bad = 0usize;
    for file in files {
        let path = file.display().to_string();
        match check_one(&runtime, &file).await {
            Ok(version) => println!("{path}: ok (version {version})"),
            Err(reason) => {
                println!("{path}: not a valid cairn plugin: {reason}");
                bad += 1;
            }
        }
    }
    match bad {
        0 => Ok(()),
        n => Err(PluginError::Check(n)),
    }
}

async fn check_one(runtime: &Runtime, file: &std::path::Path) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let loaded = runtime.load(&bytes)?;
    let env = Arc::new(CallEnv {
        name: "check".into(),
        config_json: "null".into(),
        state: Arc::new(EmptyState),
    });
    loaded
        .instances(env, DEFAULT_PLUGIN_MEMORY_BYTES)
        .warm(DEFAULT_PLUGIN_FUEL, DEFAULT_PLUGIN_DEADLINE)
        .await
        .map_err(|e| format!("self-check: {e}"))?;
    Ok(version_of(&Sha256::digest(&bytes).into()))
}

//! `cairn plugin check FILE...`: compiles each component as the node would at start-up and
//! checks that it implements the `cairn:plugin` world, so a bad file is found before a
//! restart refuses it.

use std::ffi::OsString;

use sha2::{Digest, Sha256};

use super::runtime::Runtime;
use super::PluginError;

const USAGE: &str = "usage: cairn plugin check FILE...";

/// Runs the sub-command; `args` are the words after `plugin`.
pub fn run(args: Vec<OsString>) -> Result<(), PluginError> {
    let mut args = args.into_iter();
    if args.next().as_deref().and_then(|a| a.to_str()) != Some("check") {
        return Err(PluginError::Usage(USAGE));
    }
    let files: Vec<OsString> = args.collect();
    if files.is_empty() {
        return Err(PluginError::Usage(USAGE));
    }
    let runtime = Runtime::new()?;
    let mut bad = 0usize;
    for file in files {
        let path = std::path::PathBuf::from(file).display().to_string();
        let checked = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| runtime.load(&bytes).map(|_| bytes));
        match checked {
            Ok(bytes) => {
                let version: String = Sha256::digest(&bytes)
                    .iter()
                    .take(6)
                    .map(|b| format!("{b:02x}"))
                    .collect();
                println!("{path}: ok (version {version})");
            }
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

//! `cairn snapshot restore <file> --data-dir <dir>`: builds a new data dir from a snapshot
//! taken with `etcdctl snapshot save` against cairn, as operators do with `etcdutl snapshot
//! restore` for etcd. The format and the loading are `mvcc::snapshot`'s; this module is the
//! command line around them. A backup sealed by backup plugins (`--backup-dir`) is first
//! opened by the same plugin (`--unseal plugin.wasm --unseal-config config.json`), into a
//! temp file beside the new data dir that is removed afterwards.
//!
//! The new data dir holds the key-value state only: no raft log and no member identity, so
//! `cairn` started on it bootstraps a new cluster (with the flags it is given) whose store
//! continues from the snapshot's revision, like etcd after a restore.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::config::PluginConfig;
use crate::mvcc::snapshot;
use crate::plugins::backup::BackupChain;
use crate::plugins::runtime::{Direction, EmptyState};
use crate::plugins::Plugins;
use crate::storage::Store;

#[derive(Debug, Parser)]
#[command(name = "cairn snapshot", about = "Restore cairn snapshots")]
struct SnapshotArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Create a new data dir holding the key-value state of a snapshot file.
    Restore {
        /// The file `etcdctl snapshot save` wrote.
        file: PathBuf,
        /// The data dir to create; it must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// A backup plugin (.wasm) that sealed the file; its `open` direction unseals it.
        #[arg(long, requires = "unseal_config")]
        unseal: Option<PathBuf>,
        /// The plugin's config as JSON, as in its `config:` entry (backup-seal:
        /// `{"key": "<64 hex digits>"}`).
        #[arg(long, requires = "unseal")]
        unseal_config: Option<PathBuf>,
    },
}

/// Entry point of `cairn snapshot`: `args` are the arguments after `snapshot`.
pub fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from("cairn snapshot")).chain(args);
    // clap prints --help / usage errors itself and exits with its conventional codes.
    let SnapshotArgs { action } = SnapshotArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    match action {
        Action::Restore {
            file,
            data_dir,
            unseal: Some(plugin),
            unseal_config: Some(config),
        } => {
            let opened = unseal(&file, &plugin, &config, &data_dir)?;
            restore(opened.path(), &file, &data_dir)
        }
        Action::Restore { file, data_dir, .. } => restore(&file, &file, &data_dir),
    }
}

/// Streams `file` through `plugin`'s open direction into a temp file beside `data_dir`.
fn unseal(
    file: &Path,
    plugin: &Path,
    config: &Path,
    data_dir: &Path,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let config_text = std::fs::read_to_string(config)
        .with_context(|| format!("reading --unseal-config {}", config.display()))?;
    let config_json: serde_json::Value = serde_json::from_str(&config_text)
        .with_context(|| format!("--unseal-config {} is not JSON", config.display()))?;
    let spec = PluginConfig::backup(plugin.to_owned(), config_json.to_string());
    let dir = match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut out = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    let name = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut input =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    runtime
        .block_on(async {
            let plugins = Plugins::start(None, &[spec], Arc::new(EmptyState)).await?;
            let (mut chain, _) =
                BackupChain::begin(Some(plugins.current()), Direction::Open, &name).await?;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&chain.push(buf[..n].to_vec()).await?)?;
            }
            out.write_all(&chain.finish().await?)?;
            anyhow::Ok(())
        })
        .with_context(|| format!("unsealing {}", file.display()))?;
    out.flush()?;
    Ok(out)
}

/// Restores the snapshot in `file`; `shown` is the file the user named (the sealed one
/// when `file` is its unsealed temp copy).
fn restore(file: &Path, shown: &Path, data_dir: &Path) -> anyhow::Result<()> {
    // As etcdutl: never merge into an existing data dir.
    let occupied = std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some());
    anyhow::ensure!(
        !occupied,
        "data dir {} already exists and is not empty; restore into a new one",
        data_dir.display()
    );
    let store = Store::open(data_dir)?;
    let restored = snapshot::restore(file, &store)
        .with_context(|| format!("restoring {}", shown.display()))?;
    println!(
        "restored {} at revision {} (compact revision {}, {} records) into {}",
        shown.display(),
        restored.revision,
        restored.compact_revision,
        restored.records,
        data_dir.display()
    );
    Ok(())
}

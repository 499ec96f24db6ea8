//! `cairn snapshot restore <file> --data-dir <dir>`: builds a new data dir from a snapshot
//! taken with `etcdctl snapshot save` against cairn, as operators do with `etcdutl snapshot
//! restore` for etcd. The format and the loading are `mvcc::snapshot`'s; this module is the
//! command line around them.
//!
//! The new data dir holds the key-value state only: no raft log and no member identity, so
//! `cairn` started on it bootstraps a new cluster (with the flags it is given) whose store
//! continues from the snapshot's revision, like etcd after a restore.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::mvcc::snapshot;
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
    },
}

/// Entry point of `cairn snapshot`: `args` are the arguments after `snapshot`.
pub fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from("cairn snapshot")).chain(args);
    // clap prints --help / usage errors itself and exits with its conventional codes.
    let SnapshotArgs { action } = SnapshotArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    match action {
        Action::Restore { file, data_dir } => restore(&file, &data_dir),
    }
}

fn restore(file: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<()> {
    // As etcdutl: never merge into an existing data dir.
    let occupied = std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some());
    anyhow::ensure!(
        !occupied,
        "data dir {} already exists and is not empty; restore into a new one",
        data_dir.display()
    );
    let store = Store::open(data_dir)?;
    let restored =
        snapshot::restore(file, &store).with_context(|| format!("restoring {}", file.display()))?;
    println!(
        "restored {} at revision {} (compact revision {}, {} records) into {}",
        file.display(),
        restored.revision,
        restored.compact_revision,
        restored.records,
        data_dir.display()
    );
    Ok(())
}

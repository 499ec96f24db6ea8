//! `cairn snapshot restore|status`, etcdutl's commands with etcdutl's flags, over
//! `mvcc::snapshot`: `restore` builds a new data dir from a snapshot taken with `etcdctl
//! snapshot save` (against cairn or etcd 3.5, or cairn's own format of older backups) as
//! the member `--name` of the new cluster `--initial-cluster`; `status` prints what
//! `etcdutl snapshot status` prints. A backup sealed by backup plugins (`--backup-dir`) is
//! first opened by the same plugin (`--unseal plugin.wasm --unseal-config config.json`),
//! into a temp file beside the new data dir that is removed afterwards.
//!
//! The new data dir holds the key-value state and the member's identity (member and
//! cluster ID computed as etcd does from `--initial-advertise-peer-urls`,
//! `--initial-cluster` and `--initial-cluster-token`, so every member restored with the
//! same flags agrees on the cluster ID) but no raft log: `cairn` started on it with the
//! same cluster flags bootstraps the new cluster, whose store continues from the
//! snapshot's revision, like etcd after a restore.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::config::PluginConfig;
use crate::identity::Identity;
use crate::mvcc::etcd_format::Status;
use crate::mvcc::snapshot;
use crate::plugins::backup::BackupChain;
use crate::plugins::runtime::{Direction, EmptyState};
use crate::plugins::Plugins;
use crate::storage::Store;

#[derive(Debug, Parser)]
#[command(
    name = "cairn snapshot",
    about = "Restore or inspect etcd and cairn snapshots"
)]
struct SnapshotArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Create a new data dir holding a snapshot's state, as a member of a new cluster.
    Restore(RestoreArgs),
    /// Print a snapshot's hash, revision, number of keys and size, as etcdutl.
    Status {
        /// The snapshot file.
        file: PathBuf,
        /// simple, table or json.
        #[arg(short = 'w', long = "write-out", default_value = "simple")]
        write_out: WriteOut,
    },
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The file `etcdctl snapshot save` wrote.
    file: PathBuf,
    /// The data dir to create; it must not exist or be empty (default: <name>.etcd).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// This member's name in --initial-cluster (default: default).
    #[arg(long)]
    name: Option<String>,
    /// The new cluster's members, name=peer-url,... (default: default=http://localhost:2380).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// The new cluster's token (default: etcd-cluster).
    #[arg(long)]
    initial_cluster_token: Option<String>,
    /// This member's peer URLs (default: http://localhost:2380).
    #[arg(long)]
    initial_advertise_peer_urls: Option<String>,
    /// Restore a snapshot without its trailing SHA-256 (a `db` file copied from a data dir).
    #[arg(long)]
    skip_hash_check: bool,
    /// A backup plugin (.wasm) that sealed the file; its `open` direction unseals it.
    #[arg(long, requires = "unseal_config")]
    unseal: Option<PathBuf>,
    /// The plugin's config as JSON, as in its `config:` entry (backup-seal:
    /// `{"key": "<64 hex digits>"}`).
    #[arg(long, requires = "unseal")]
    unseal_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WriteOut {
    Simple,
    Table,
    Json,
}

/// Entry point of `cairn snapshot`: `args` are the arguments after `snapshot`.
pub fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from("cairn snapshot")).chain(args);
    // clap prints --help / usage errors itself and exits with its conventional codes.
    let SnapshotArgs { action } = SnapshotArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    match action {
        Action::Restore(args) => restore_cmd(args),
        Action::Status { file, write_out } => {
            let status =
                snapshot::status(&file).with_context(|| format!("reading {}", file.display()))?;
            print!("{}", format_status(&status, write_out)?);
            Ok(())
        }
    }
}

fn restore_cmd(args: RestoreArgs) -> anyhow::Result<()> {
    let name = args.name.as_deref().unwrap_or(DEFAULT_NAME);
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{name}.etcd")));
    let identity = new_identity(&args, &data_dir)?;
    // As etcdutl: never merge into an existing data dir.
    let occupied = std::fs::read_dir(&data_dir).is_ok_and(|mut entries| entries.next().is_some());
    anyhow::ensure!(
        !occupied,
        "data-dir {:?} not empty or could not be read",
        data_dir
    );
    let opened = match (&args.unseal, &args.unseal_config) {
        (Some(plugin), Some(config)) => Some(unseal(&args.file, plugin, config, &data_dir)?),
        _ => None,
    };
    let file = opened.as_ref().map_or(args.file.as_path(), |f| f.path());
    restore(file, &args, &data_dir, identity)
}

const DEFAULT_NAME: &str = "default";

/// The member and cluster IDs of `--name` in the new cluster, from the flags validated as
/// `cairn` itself validates them at start-up (etcd's checks and messages, etcd's
/// defaults). Without any of the four flags, none: the data dir then takes the identity
/// the first `cairn` started on it computes from its own flags.
fn new_identity(args: &RestoreArgs, data_dir: &Path) -> anyhow::Result<Option<Identity>> {
    let flags = [
        ("--name", &args.name),
        ("--initial-cluster", &args.initial_cluster),
        ("--initial-cluster-token", &args.initial_cluster_token),
        (
            "--initial-advertise-peer-urls",
            &args.initial_advertise_peer_urls,
        ),
    ];
    if flags.iter().all(|(_, v)| v.is_none()) {
        return Ok(None);
    }
    let mut argv = vec![OsString::from("cairn")];
    for (flag, value) in flags {
        if let Some(value) = value {
            argv.extend([OsString::from(flag), OsString::from(value)]);
        }
    }
    argv.extend([
        OsString::from("--data-dir"),
        data_dir.as_os_str().to_owned(),
    ]);
    let cfg = crate::config::load_from(argv, Vec::new())?.config;
    let members = crate::server::initial_members(&cfg.initial_cluster, &cfg.initial_cluster_token);
    let member_id = members
        .iter()
        .find(|(_, m)| m.name == cfg.name)
        .map(|(id, _)| *id)
        .with_context(|| format!("member {:?} is not in --initial-cluster", cfg.name))?;
    let ids: Vec<u64> = members.keys().copied().collect();
    Ok(Some(Identity {
        member_id,
        cluster_id: crate::identity::cluster_id(&ids),
    }))
}

/// etcdutl's three ways of printing a snapshot's status.
fn format_status(s: &Status, how: WriteOut) -> anyhow::Result<String> {
    let size = humanize_bytes(s.total_size);
    Ok(match how {
        WriteOut::Simple => format!("{:x}, {}, {}, {}\n", s.hash, s.revision, s.total_key, size),
        WriteOut::Json => format!("{}\n", serde_json::to_string(s)?),
        WriteOut::Table => {
            let row = [
                format!("{:x}", s.hash),
                s.revision.to_string(),
                s.total_key.to_string(),
                size,
            ];
            table(&["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], &row)
        }
    })
}

/// One header and one row, as etcdutl's tablewriter draws them: headers centred, cells
/// right-aligned, one space of padding.
fn table(header: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = header
        .iter()
        .zip(row)
        .map(|(h, c)| h.len().max(c.len()))
        .collect();
    let line: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = line.clone();
    for (h, w) in header.iter().zip(&widths) {
        let pad = w - h.len();
        out += &format!(
            "| {}{}{} ",
            " ".repeat(pad / 2),
            h,
            " ".repeat(pad - pad / 2)
        );
    }
    out += "|\n";
    out += &line;
    for (c, w) in row.iter().zip(&widths) {
        out += &format!("| {c:>w$} ");
    }
    out += "|\n";
    out += &line;
    out
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
fn humanize_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let value = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[e])
    } else {
        format!("{value:.0} {}", UNITS[e])
    }
}

/// `cairn backup --data-dir X --backup-dir Y` (etcdctl's offline `backup`): copies the
/// stopped member's data dir `X` (state, raft log, raft snapshots) into the new data dir
/// `Y` without the member's identity, so `cairn --data-dir Y --force-new-cluster` starts a
/// one-member cluster, with IDs from its own flags, on the data (the log's entries applied
/// after the state was last flushed included). A running member holds the lock on `X`: its
/// live copy is `etcdctl snapshot save`.
pub fn offline_backup(data_dir: &Path, backup_dir: &Path) -> anyhow::Result<()> {
    let occupied = std::fs::read_dir(backup_dir).is_ok_and(|mut entries| entries.next().is_some());
    anyhow::ensure!(
        !occupied,
        "backup-dir {:?} not empty or could not be read",
        backup_dir
    );
    anyhow::ensure!(
        data_dir.join("db").is_dir(),
        "data-dir {:?} is not a cairn data dir",
        data_dir
    );
    let src = Store::open(data_dir)?;
    let dst = Store::open(backup_dir)?;
    let copied = src
        .copy_into(&dst, &|keyspace, key| Identity::is_identity(keyspace, key))
        .with_context(|| {
            format!(
                "copying {} into {}",
                data_dir.display(),
                backup_dir.display()
            )
        })?;
    println!(
        "backed up {} ({copied} entries) into {}",
        data_dir.display(),
        backup_dir.display()
    );
    Ok(())
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

/// Restores the snapshot in `file` (the unsealed temp copy of `args.file`, if sealed) and
/// stores the member's identity.
fn restore(
    file: &Path,
    args: &RestoreArgs,
    data_dir: &Path,
    id: Option<Identity>,
) -> anyhow::Result<()> {
    let store = Store::open(data_dir)?;
    let restored = snapshot::restore(file, &store, args.skip_hash_check)
        .with_context(|| format!("restoring {}", args.file.display()))?;
    if let Some(id) = id {
        id.save(&store)?;
    }
    let member = id.map_or_else(String::new, |id| {
        format!(
            " as member {:x} of cluster {:x}",
            id.member_id, id.cluster_id
        )
    });
    println!(
        "restored {} at revision {} (compact revision {}, {} records) into {}{member}",
        args.file.display(),
        restored.revision,
        restored.compact_revision,
        restored.records,
        data_dir.display(),
    );
    Ok(())
}

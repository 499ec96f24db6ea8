//! Backups (issue 12): the node's snapshot (the bytes Maintenance.Snapshot serves) streamed
//! through the backup plugins (compress, encrypt, sign) into a file in `--backup-dir`,
//! written atomically: a hidden temp file beside the final one, fsynced, renamed into
//! place, and the directory fsynced, so a crash leaves the old set of backups or the new
//! one, never a torn file under a backup's name. Taken on demand (`POST /cairn/v1/backup`,
//! `cairn backup`) on any member, and every `--backup-interval` on the leader only, so a
//! cluster takes one scheduled backup per interval. After each backup, retention
//! (`--backup-retention-count`, `--backup-retention-age`) deletes the oldest cairn backups
//! in the directory: only files named as cairn names its backups (see [`BackupName`]),
//! never anything else there.
//!
//! Owns: the backup files and the schedule. Must not touch: storage or raft (the snapshot
//! comes from the core, as for a client).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::BackupRetention;
use crate::core::{Core, RequestContext};
use crate::plugins::backup::{BackupChain, ChainError};
use crate::plugins::runtime::Direction;
use crate::plugins::Plugins;

/// Bytes handed to the plugins per call: etcd's snapshot chunk size times two, small
/// enough for a plugin's default 16 MiB memory, big enough to compress well.
const CHUNK: usize = 64 << 10;

/// Why a backup failed. The message reaches the caller of `POST /cairn/v1/backup`.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("taking the snapshot: {0}")]
    Snapshot(String),
    #[error(transparent)]
    Plugin(#[from] ChainError),
    #[error("the backup plugins named the output {0:?}, which is not a plain file name")]
    BadName(String),
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// One written backup, as `POST /cairn/v1/backup` reports it.
#[derive(Debug, Serialize)]
pub struct Written {
    pub name: String,
    pub path: PathBuf,
    /// Bytes of the file, after the plugins.
    pub bytes: u64,
    /// Bytes of the snapshot that went in.
    pub snapshot_bytes: u64,
    pub revision: i64,
    pub seconds: f64,
    /// Older backups retention deleted afterwards.
    pub pruned: Vec<String>,
}

/// How backups are taken and kept.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub dir: PathBuf,
    /// The member name, in default file names.
    pub member: String,
    pub retention: BackupRetention,
    /// The backup plugins to go through (`--backup-plugins`); empty: all.
    pub plugins: Vec<String>,
}

/// The node's backups.
pub struct Backups {
    core: Arc<Core>,
    plugins: Arc<Plugins>,
    options: BackupOptions,
    /// One backup at a time: a second request waits for the first.
    running: tokio::sync::Mutex<()>,
}

impl Backups {
    pub fn new(core: Arc<Core>, plugins: Arc<Plugins>, options: BackupOptions) -> Backups {
        Backups {
            core,
            plugins,
            options,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes one backup, recording it in the metrics.
    pub async fn take(&self) -> Result<Written, BackupError> {
        let _one = self.running.lock().await;
        let started = Instant::now();
        let result = match self.write().await {
            Ok(mut written) => {
                written.pruned = self.prune(&written.name).await;
                Ok(written)
            }
            Err(e) => Err(e),
        };
        let m = crate::metrics::get();
        m.backup_duration.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(written) => {
                m.backup_last_success.set(unix_seconds() as i64);
                m.backup_bytes
                    .set(i64::try_from(written.bytes).unwrap_or(i64::MAX));
                tracing::info!(path = %written.path.display(), bytes = written.bytes, revision = written.revision, "backup written");
            }
            Err(e) => {
                m.backup_failures.inc();
                tracing::warn!(error = %e, "backup failed");
            }
        }
        result
    }

    async fn write(&self) -> Result<Written, BackupError> {
        let started = Instant::now();
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| BackupError::Io { path, source }
        };
        tokio::fs::create_dir_all(&self.options.dir)
            .await
            .map_err(io_err(&self.options.dir))?;
        let source = self
            .core
            .snapshot(&RequestContext::internal())
            .await
            .map_err(|e| BackupError::Snapshot(e.to_string()))?;
        let revision = source.revision();
        let default_name = BackupName {
            member: self.options.member.clone(),
            unix_seconds: unix_seconds(),
            revision,
        }
        .to_string();
        // The plugins loaded now serve the whole stream, whatever a reload does meanwhile.
        let set = Some(self.plugins.current());
        let (mut chain, name) =
            BackupChain::begin_only(set, Direction::Seal, &default_name, &self.options.plugins)
                .await?;
        if !plain_file_name(&name) {
            return Err(BackupError::BadName(name));
        }
        let path = self.options.dir.join(&name);
        let temp = self.options.dir.join(format!(".{name}.partial"));
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        // The snapshot is written by blocking code; it hands chunks over as it goes.
        let producer = tokio::task::spawn_blocking(move || {
            source
                .write_etcd_all(ChunkSender::new(tx))
                .map_err(|e| e.to_string())
        });
        let result = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(io_err(&temp))?;
            let mut bytes = 0u64;
            while let Some(chunk) = rx.recv().await {
                let out = chain.push(chunk).await?;
                bytes += out.len() as u64;
                file.write_all(&out).await.map_err(io_err(&temp))?;
            }
            let snapshot_bytes = producer
                .await
                .map_err(|e| BackupError::Snapshot(e.to_string()))?
                .map_err(BackupError::Snapshot)?;
            let tail = chain.finish().await?;
            bytes += tail.len() as u64;
            file.write_all(&tail).await.map_err(io_err(&temp))?;
            file.sync_all().await.map_err(io_err(&temp))?;
            Ok::<_, BackupError>((bytes, snapshot_bytes))
        }
        .await;
        let (bytes, snapshot_bytes) = match result {
            Ok(sizes) => sizes,
            Err(e) => {
                // Closing the receiver stops the snapshot writer; the partial file goes.
                drop(rx);
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        if let Err(e) = tokio::fs::rename(&temp, &path).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(io_err(&path)(e));
        }
        sync_dir(&self.options.dir)
            .await
            .map_err(io_err(&self.options.dir))?;
        Ok(Written {
            name,
            path,
            bytes,
            snapshot_bytes,
            revision,
            seconds: started.elapsed().as_secs_f64(),
            pruned: Vec::new(),
        })
    }

    /// Applies retention after the backup `kept` was written; returns what it deleted. A
    /// file that cannot be listed or deleted is logged and left; the backup still counts.
    async fn prune(&self, kept: &str) -> Vec<String> {
        let retention = self.options.retention;
        if retention.count.is_none() && retention.age.is_none() {
            return Vec::new();
        }
        let names = match list_backups(&self.options.dir).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(dir = %self.options.dir.display(), error = %e, "listing backups for retention failed");
                return Vec::new();
            }
        };
        let mut pruned = Vec::new();
        for name in expired(names, retention, unix_seconds(), kept) {
            match tokio::fs::remove_file(self.options.dir.join(&name)).await {
                Ok(()) => {
                    tracing::info!(name = %name, "deleted an old backup (retention)");
                    pruned.push(name);
                }
                Err(e) => tracing::warn!(name = %name, error = %e, "deleting an old backup failed"),
            }
        }
        if !pruned.is_empty() {
            if let Err(e) = sync_dir(&self.options.dir).await {
                tracing::warn!(dir = %self.options.dir.display(), error = %e, "fsync of the backup directory failed");
            }
        }
        pruned
    }
}

/// The name cairn gives a backup, `cairn-<member>-<unix seconds>-rev<revision>.snap`,
/// which the backup plugins may extend with suffixes (`.zst`, `.sealed`). Retention only
/// ever deletes files whose names parse as this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupName {
    pub member: String,
    pub unix_seconds: u64,
    pub revision: i64,
}

impl std::fmt::Display for BackupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cairn-{}-{}-rev{}.snap",
            self.member, self.unix_seconds, self.revision
        )
    }
}

impl BackupName {
    /// The name a file carries, with or without plugin suffixes; `None` for any other file.
    pub fn parse(file_name: &str) -> Option<BackupName> {
        let (stem, rest) = file_name.split_once(".snap")?;
        if !(rest.is_empty() || rest.starts_with('.')) {
            return None;
        }
        let (left, revision) = stem.strip_prefix("cairn-")?.rsplit_once("-rev")?;
        let (member, secs) = left.rsplit_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if member.is_empty() || !digits(secs) || !digits(revision) {
            return None;
        }
        Some(BackupName {
            member: member.to_string(),
            unix_seconds: secs.parse().ok()?,
            revision: revision.parse().ok()?,
        })
    }
}

/// The cairn backups in `dir` (by file name), whichever member wrote them: leadership,
/// and with it the scheduled backups, moves between members.
async fn list_backups(dir: &Path) -> io::Result<Vec<String>> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        if !entry.file_type().await?.is_file() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str() {
            if BackupName::parse(name).is_some() {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// Which of the backups `names` retention deletes at `now`: beyond the newest `count`,
/// or older than `age`. `kept`, the one just written, always stays.
fn expired(names: Vec<String>, retention: BackupRetention, now: u64, kept: &str) -> Vec<String> {
    let mut backups: Vec<(BackupName, String)> = names
        .into_iter()
        .filter_map(|n| BackupName::parse(&n).map(|parsed| (parsed, n)))
        .collect();
    // Newest first: by time, then revision, then name, so the order is total.
    backups.sort_by(|(a, an), (b, bn)| {
        (b.unix_seconds, b.revision, bn).cmp(&(a.unix_seconds, a.revision, an))
    });
    let count = retention
        .count
        .map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(usize::MAX));
    let oldest_kept = retention
        .age
        .map_or(0, |age| now.saturating_sub(age.as_secs()));
    backups
        .into_iter()
        .enumerate()
        .filter(|(i, (parsed, name))| {
            name != kept && (*i >= count || parsed.unix_seconds < oldest_kept)
        })
        .map(|(_, (_, name))| name)
        .collect()
}

/// Takes a backup every `interval` while this member leads, the first one an interval
/// after start.
pub fn spawn_periodic(backups: Arc<Backups>, interval: Duration) {
    // The backup-stale alert compares the last success with this.
    crate::metrics::get()
        .backup_interval
        .set(i64::try_from(interval.as_secs()).unwrap_or(i64::MAX));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !backups.core.is_leader() {
                tracing::debug!("scheduled backup skipped: the leader takes them");
                continue;
            }
            // Failures are logged and counted by `take`; the next tick tries again.
            let _ = backups.take().await;
        }
    });
}

/// A name the plugins chose must stay inside the backup directory and not be hidden
/// (hidden names are the temp files').
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A `Write` that cuts what it is given into [`CHUNK`]-byte pieces and sends them to the
/// async side, blocking while the plugins catch up. A closed receiver (the backup
/// failed) fails the write, which stops the snapshot.
struct ChunkSender {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> ChunkSender {
        ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "backup stopped"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// `cairn backup [--endpoint URL]`: asks a running node for a backup and prints where it
/// went. The endpoint is a client or metrics URL (default `http://127.0.0.1:2379`).
pub fn cli(args: Vec<OsString>) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from("cairn backup")).chain(args);
    let args = BackupArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    if let (Some(data_dir), Some(backup_dir)) = (&args.data_dir, &args.backup_dir) {
        return crate::snapshot_cmd::offline_backup(data_dir, backup_dir);
    }
    let url = url::Url::parse(&args.endpoint)
        .with_context(|| format!("--endpoint {:?}", args.endpoint))?;
    anyhow::ensure!(
        url.scheme() == "http",
        "--endpoint {url}: only http:// endpoints are served (cairn has no TLS yet)"
    );
    let host = url.host_str().context("--endpoint has no host")?;
    let port = url.port_or_known_default().unwrap_or(2379);
    let mut stream = std::net::TcpStream::connect((host, port))
        .with_context(|| format!("connecting to {host}:{port}"))?;
    write!(
        stream,
        "POST /cairn/v1/backup HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the node's answer is not HTTP")?;
    let ok = head
        .lines()
        .next()
        .is_some_and(|status| status.split(' ').nth(1) == Some("200"));
    anyhow::ensure!(ok, "backup failed: {}", body.trim());
    println!("{}", body.trim());
    Ok(())
}

#[derive(Debug, clap::Parser)]
#[command(
    name = "cairn backup",
    about = "Ask a running cairn node to write a backup into its --backup-dir, or copy a \
             stopped node's data dir (--data-dir, --backup-dir) as `etcdctl backup`"
)]
struct BackupArgs {
    /// A client or metrics URL of the node.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
    /// Offline: the stopped member's data dir to copy.
    #[arg(long, requires = "backup_dir", conflicts_with = "endpoint")]
    data_dir: Option<PathBuf>,
    /// Offline: the new data dir to create (it must not exist or be empty).
    #[arg(long, requires = "data_dir")]
    backup_dir: Option<PathBuf>,
}

use clap::Parser as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_cut_at_the_chunk_size_and_flushed() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = ChunkSender::new(tx);
        w.write_all(&vec![7u8; CHUNK + 10]).expect("write");
        w.flush().expect("flush");
        drop(w);
        let sizes: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, vec![CHUNK, 10]);
    }

    #[test]
    fn backup_names_parse_with_plugin_suffixes_and_nothing_else() {
        let name = BackupName {
            member: "node-1".into(),
            unix_seconds: 1_796_000_000,
            revision: 42,
        };
        let text = name.to_string();
        assert_eq!(text, "cairn-node-1-1796000000-rev42.snap");
        assert_eq!(BackupName::parse(&text), Some(name.clone()));
        assert_eq!(BackupName::parse(&format!("{text}.zst.sealed")), Some(name));
        for other in [
            "notes.txt",
            "cairn-node-1-1796000000-rev42.snapshot",
            "cairn--1796000000-rev42.snap",
            "cairn-n-x-rev42.snap",
            "cairn-n-1-rev.snap",
            "backup-n-1-rev2.snap",
            ".cairn-n-1-rev2.snap.partial",
        ] {
            assert_eq!(BackupName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn retention_deletes_beyond_the_count_and_past_the_age() {
        let name = |secs: u64| format!("cairn-m-{secs}-rev{secs}.snap.sealed");
        let names: Vec<String> = (1..=5).map(|i| name(i * 100)).collect();
        let by_count = BackupRetention {
            count: Some(2),
            age: None,
        };
        let mut got = expired(names.clone(), by_count, 1000, &name(500));
        got.sort();
        assert_eq!(got, vec![name(100), name(200), name(300)]);
        let by_age = BackupRetention {
            count: None,
            age: Some(Duration::from_secs(250)),
        };
        let mut got = expired(names.clone(), by_age, 600, &name(500));
        got.sort();
        assert_eq!(got, vec![name(100), name(200), name(300)]);
        // The backup just written stays whatever its clock said.
        let got = expired(names, by_age, 10_000, &name(500));
        assert!(!got.contains(&name(500)));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn output_names_stay_in_the_directory() {
        assert!(plain_file_name("cairn-1.snap.sealed"));
        for bad in ["", ".hidden", "../x", "a/b", "a\\b"] {
            assert!(!plain_file_name(bad), "{bad}");
        }
    }
}

//! Raft snapshots: what openraft's snapshot data is, how a leader streams one to a member it
//! cannot catch up from log entries (far behind, or new), and how that member receives it
//! and keeps it until it is installed.
//!
//! A snapshot is the state database's MVCC and lease keyspaces at one applied log id, as
//! the stream of [`crate::mvcc::snapshot`] (the format `etcdctl snapshot save` gets, SHA-256
//! digest last); the log id and membership travel beside it as openraft's `SnapshotMeta`
//! and become the receiver's apply marker. The receiver's identity (`meta` keyspace) and
//! raft log are never part of it.
//!
//! Sending ([`stream`]): a blocking thread writes the state into a bounded channel of
//! [`CHUNK_BYTES`] chunks that the peer transport streams, so at most
//! [`CHUNKS_IN_FLIGHT`] chunks are in memory; apply goes on meanwhile (the storage snapshot
//! only keeps the versions it reads from being discarded).
//!
//! Receiving ([`Incoming`]): chunks are appended to `snap/incoming-<n>.part`, the file is
//! fsynced and its digest checked. Installing then makes it the pending snapshot
//! ([`commit`]): `snap/pending.meta` is written and fsynced, the file is renamed to
//! `snap/pending.snap` and the directory fsynced. That rename is the switch: before it the
//! old state stands and a stray part file is removed at the next start; after it the
//! state machine reports the pending snapshot as its current one at start, so openraft
//! installs it again before replaying the log. Once installed, the pending files go.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::mvcc::snapshot::{self as mvcc_snapshot, Chunker, SnapshotSource};

/// Bytes per chunk on the wire.
pub(super) const CHUNK_BYTES: usize = 1 << 20;
/// Chunks buffered between the reading thread and the transport.
const CHUNKS_IN_FLIGHT: usize = 4;

const PENDING_SNAP: &str = "pending.snap";
const PENDING_META: &str = "pending.meta";
const PART_SUFFIX: &str = ".part";

/// openraft's snapshot data.
pub(crate) enum SnapshotData {
    /// This member's own state, pinned where the snapshot's meta says.
    Local(Box<SnapshotSource>),
    /// A whole snapshot stream with a verified digest, received from a leader.
    Received(PathBuf),
}

impl SnapshotData {
    fn write_to(self, mut out: impl Write) -> io::Result<u64> {
        match self {
            SnapshotData::Local(source) => source.write_to(out).map_err(io::Error::other),
            SnapshotData::Received(path) => io::copy(&mut File::open(path)?, &mut out),
        }
    }
}

/// Streams `data` in chunks, read on a blocking thread; a read error is the last item.
/// Dropping the receiver stops the reading.
pub(super) fn stream(data: SnapshotData) -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let chunks = tx.clone();
        let mut out = Chunker::new(CHUNK_BYTES, move |chunk| {
            chunks
                .blocking_send(Ok(chunk))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "snapshot transfer ended"))
        });
        if let Err(e) = data.write_to(&mut out).and_then(|_| out.flush()) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// A snapshot being received into `snap/incoming-<n>.part`.
pub(super) struct Incoming {
    part: Part,
    file: tokio::fs::File,
}

impl Incoming {
    pub(super) async fn create(dir: &Path) -> io::Result<Incoming> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("incoming-{n}{PART_SUFFIX}"));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Incoming {
            part: Part(path),
            file,
        })
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data).await
    }

    /// Makes the file durable and checks it is a whole snapshot (its digest).
    pub(super) async fn finish(mut self) -> io::Result<Part> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        let path = self.part.0.clone();
        super::blocking(move || mvcc_snapshot::verify(&path).map_err(io::Error::other)).await?;
        Ok(self.part)
    }
}

/// A received file; removed when dropped unless installing moved it.
pub(super) struct Part(PathBuf);

impl Part {
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        // Gone already once installing renamed it.
        let _ = fs::remove_file(&self.0);
    }
}

/// Makes the received snapshot at `file` the pending one with `meta` (openraft's snapshot
/// meta, encoded): the commit point of an install. Returns the pending file's path.
pub(super) fn commit(dir: &Path, meta: &[u8], file: &Path) -> io::Result<PathBuf> {
    let pending = dir.join(PENDING_SNAP);
    if file == pending {
        // Installing again at start: it is committed already.
        return Ok(pending);
    }
    let tmp = dir.join(format!("{PENDING_META}{PART_SUFFIX}"));
    let mut out = File::create(&tmp)?;
    out.write_all(meta)?;
    out.sync_all()?;
    fs::rename(&tmp, dir.join(PENDING_META))?;
    fs::rename(file, &pending)?;
    File::open(dir)?.sync_all()?;
    Ok(pending)
}

/// The pending snapshot left by an install a crash interrupted: its encoded meta and file.
pub(super) fn pending(dir: &Path) -> io::Result<Option<(Vec<u8>, PathBuf)>> {
    let file = dir.join(PENDING_SNAP);
    if !file.exists() {
        return Ok(None);
    }
    Ok(Some((fs::read(dir.join(PENDING_META))?, file)))
}

/// Removes the pending snapshot once installed (or found already applied).
pub(super) fn clear_pending(dir: &Path) -> io::Result<()> {
    for name in [PENDING_SNAP, PENDING_META] {
        match fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    File::open(dir)?.sync_all()
}

/// Removes files of receptions a crash or a broken transfer cut short.
pub(super) fn remove_parts(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(PART_SUFFIX) {
            tracing::info!(file = %path.display(), "removing an incomplete snapshot");
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

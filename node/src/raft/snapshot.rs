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
//! Receiving ([`receive`]): chunks are appended to `snap/incoming-<n>.part`, the file is
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

use futures::{Stream, StreamExt};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{decode, encode, fatal, stopped_or_fatal, Raft, RaftError, TypeConfig};
use crate::metrics;
use crate::mvcc::snapshot::{self as mvcc_snapshot, Chunker, SnapshotSource};
use crate::proto::cairnpb::SnapshotChunk;

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

/// Receives a snapshot streamed by the leader `from` into `dir` (`chunks`: a header with
/// openraft's vote and snapshot meta, then the snapshot stream), checks its digest and
/// hands it to openraft to install; returns openraft's response, encoded. Counted in
/// `etcd_network_snapshot_receive_*{From}`.
pub(super) async fn receive(
    raft: &Raft,
    dir: &Path,
    from: &str,
    chunks: impl Stream<Item = Result<SnapshotChunk, String>> + Send,
) -> Result<Vec<u8>, RaftError> {
    let m = metrics::get();
    let inflight = m.snapshot_receive_inflights.with_label_values(&[from]);
    inflight.inc();
    let started = std::time::Instant::now();
    let result = receive_and_install(raft, dir, chunks).await;
    inflight.dec();
    match &result {
        Ok(_) => {
            m.snapshot_receive_success.with_label_values(&[from]).inc();
            m.snapshot_receive_duration
                .with_label_values(&[from])
                .observe(started.elapsed().as_secs_f64());
        }
        Err(e) => {
            tracing::warn!(from, error = %e, "receiving a snapshot failed");
            m.snapshot_receive_failures.with_label_values(&[from]).inc();
        }
    }
    result
}

async fn receive_and_install(
    raft: &Raft,
    dir: &Path,
    chunks: impl Stream<Item = Result<SnapshotChunk, String>> + Send,
) -> Result<Vec<u8>, RaftError> {
    let mut chunks = std::pin::pin!(chunks);
    let first = match chunks.next().await {
        Some(chunk) => chunk.map_err(RaftError::Malformed)?,
        None => return Err(RaftError::Malformed("empty snapshot stream".into())),
    };
    let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
        decode(&first.header).map_err(|e| RaftError::Malformed(e.to_string()))?;
    let mut incoming = Incoming::create(dir).await.map_err(fatal)?;
    incoming.write(&first.data).await.map_err(fatal)?;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(RaftError::Malformed)?;
        incoming.write(&chunk.data).await.map_err(fatal)?;
    }
    let part = incoming
        .finish()
        .await
        .map_err(|e| RaftError::Malformed(format!("snapshot {meta}: {e}")))?;
    tracing::info!(snapshot = %meta, "received a snapshot from the leader; installing it");
    let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
        meta,
        snapshot: SnapshotData::Received(part.path().to_path_buf()),
    };
    let resp = raft
        .install_full_snapshot(vote, snapshot)
        .await
        .map_err(stopped_or_fatal)?;
    drop(part);
    encode(&resp).map_err(fatal)
}

/// A snapshot being received into `snap/incoming-<n>.part`.
struct Incoming {
    part: Part,
    file: tokio::fs::File,
}

impl Incoming {
    async fn create(dir: &Path) -> io::Result<Incoming> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("incoming-{n}{PART_SUFFIX}"));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Incoming {
            part: Part(path),
            file,
        })
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data).await
    }

    /// Makes the file durable and checks it is a whole snapshot (its digest).
    async fn finish(mut self) -> io::Result<Part> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        let path = self.part.0.clone();
        super::blocking(move || mvcc_snapshot::verify(&path).map_err(io::Error::other)).await?;
        Ok(self.part)
    }
}

/// A received file; removed when dropped unless installing moved it.
struct Part(PathBuf);

impl Part {
    fn path(&self) -> &Path {
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

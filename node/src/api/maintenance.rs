//! etcd's Maintenance service: status and alarms for `etcdctl endpoint status/health` and
//! `alarm list`; defragment is a no-op because fjall compacts in the background; Hash and
//! HashKV for corruption checks; Snapshot streams `mvcc::snapshot`'s format in chunks.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::{code_name, metered, Node, ETCD_SERVER_VERSION};
use crate::mvcc::snapshot::{SnapshotError, SnapshotSource};
use crate::mvcc::KvHash;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, maintenance_server::Maintenance, AlarmMember, AlarmRequest,
    AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, ResponseHeader, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};

const SERVICE: &str = "etcdserverpb.Maintenance";

/// Bytes per snapshot chunk, as etcd's `snapshotSendBufferSize`.
const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// Chunks buffered between the reader thread and the gRPC stream: memory stays bounded by
/// this many chunks whatever the database size.
const SNAPSHOT_QUEUE: usize = 4;

pub struct MaintenanceService(pub Arc<Node>);

impl Node {
    fn status(&self) -> StatusResponse {
        let raft = self.raft.status();
        let db_size = i64::try_from(self.store.disk_space()).unwrap_or(i64::MAX);
        StatusResponse {
            header: self.header(self.mvcc.current_revision()),
            version: ETCD_SERVER_VERSION.to_string(),
            db_size,
            // An LSM has no free pages to reclaim, so everything it holds is in use.
            db_size_in_use: db_size,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            db_size_quota: i64::try_from(self.limits.quota_backend_bytes).unwrap_or(i64::MAX),
            ..Default::default()
        }
    }

    /// Alarms are derived from the current state rather than stored: NOSPACE holds exactly
    /// while the database is over quota.
    pub(super) fn alarms(&self) -> Vec<AlarmMember> {
        if self.over_quota() {
            vec![AlarmMember {
                member_id: self.member_id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        }
    }

    fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, ApiError> {
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) | Ok(AlarmAction::Deactivate) => Ok(AlarmResponse {
                header: self.header(self.mvcc.current_revision()),
                alarms: self.alarms(),
            }),
            _ => Err(ApiError::NotSupported("raising alarms by hand")),
        }
    }

    /// etcd's `HashByRev` (see `mvcc::hash`), computed off the async runtime because it
    /// reads the whole history.
    async fn hash_kv(&self, revision: i64) -> Result<KvHash, ApiError> {
        let mvcc = self.mvcc.clone();
        tokio::task::spawn_blocking(move || mvcc.hash_kv(revision))
            .await
            .map_err(|e| ApiError::Internal(format!("hash task failed: {e}")))?
            .map_err(ApiError::from)
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        metered(SERVICE, "Alarm", async { self.0.alarm(req.into_inner()) }).await
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        metered(SERVICE, "Status", async { Ok(self.0.status()) }).await
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let header = self.0.header(self.0.mvcc.current_revision());
        metered(SERVICE, "Defragment", async {
            Ok(DefragmentResponse { header })
        })
        .await
    }

    /// etcd hashes its whole backend here; cairn's backend also holds the raft log, which
    /// differs between members, so it hashes the key-value history at the current revision,
    /// as HashKV(0).
    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        metered(SERVICE, "Hash", async {
            let h = self.0.hash_kv(0).await?;
            Ok(HashResponse {
                header: self.0.header(h.current_revision),
                hash: h.hash,
            })
        })
        .await
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        metered(SERVICE, "HashKV", async {
            let h = self.0.hash_kv(req.into_inner().revision).await?;
            Ok(HashKvResponse {
                header: self.0.header(h.current_revision),
                hash: h.hash,
                compact_revision: h.compact_revision,
                hash_revision: h.hash_revision,
            })
        })
        .await
    }

    type SnapshotStream = SnapshotStream;

    /// Pins the state now, then a blocking task reads it and feeds the stream through a
    /// bounded channel, so the response starts at once and memory stays bounded.
    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let labels = ["server_stream", SERVICE, "Snapshot"];
        crate::metrics::get()
            .grpc_started
            .with_label_values(&labels)
            .inc();
        let source = match self.0.mvcc.snapshot_source() {
            Ok(source) => source,
            Err(e) => {
                let status = Status::from(ApiError::from(e));
                record_stream_end(&labels, Instant::now(), status.code());
                return Err(status);
            }
        };
        let header = self.0.header(source.revision());
        let (tx, rx) = mpsc::channel(SNAPSHOT_QUEUE);
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let code = send_snapshot(&source, header, tx);
            record_stream_end(&labels, start, code);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        _req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        metered(SERVICE, "MoveLeader", async {
            Err(ApiError::NotSupported("MoveLeader"))
        })
        .await
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        metered(SERVICE, "Downgrade", async {
            Err(ApiError::NotSupported("Downgrade"))
        })
        .await
    }
}

type ChunkSender = mpsc::Sender<Result<SnapshotResponse, Status>>;

/// Streams the snapshot as etcd does: 32 KiB chunks, `remaining_bytes` counting down to 0
/// on the last one (the stream's exact length is computed first). Returns the gRPC code the
/// stream ended with.
fn send_snapshot(
    source: &SnapshotSource,
    header: Option<ResponseHeader>,
    tx: ChunkSender,
) -> tonic::Code {
    let mut out = ChunkWriter {
        tx,
        header,
        remaining: 0,
        buf: Vec::with_capacity(SNAPSHOT_CHUNK),
    };
    let result = source.stream_len().and_then(|total| {
        out.remaining = total;
        source.write_to(&mut out)?;
        out.flush()?;
        if out.remaining != 0 {
            return Err(SnapshotError::Malformed(format!(
                "{} bytes short of the announced length",
                out.remaining
            )));
        }
        Ok(())
    });
    match result {
        Ok(()) => tonic::Code::Ok,
        // The client went away: nobody to tell.
        Err(SnapshotError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            tonic::Code::Cancelled
        }
        Err(e) => {
            tracing::warn!(error = %e, "snapshot stream failed");
            let status = Status::from(ApiError::Internal(e.to_string()));
            let code = status.code();
            let _ = out.tx.blocking_send(Err(status));
            code
        }
    }
}

/// Cuts what is written into `SnapshotResponse` chunks and sends them, blocking while the
/// client is behind.
struct ChunkWriter {
    tx: ChunkSender,
    header: Option<ResponseHeader>,
    /// Stream bytes not yet sent.
    remaining: u64,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK));
        self.remaining = self.remaining.saturating_sub(blob.len() as u64);
        let chunk = SnapshotResponse {
            header: self.header,
            remaining_bytes: self.remaining,
            blob,
            ..Default::default()
        };
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(SNAPSHOT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    /// Sends what is buffered as a (short) chunk; the byte count stays exact either way.
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// etcd's gRPC metrics for a finished server stream.
fn record_stream_end(labels: &[&str; 3], start: Instant, code: tonic::Code) {
    let m = crate::metrics::get();
    m.grpc_handling_seconds
        .with_label_values(labels)
        .observe(start.elapsed().as_secs_f64());
    m.grpc_handled
        .with_label_values(&[labels[0], labels[1], labels[2], code_name(code)])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_count_remaining_bytes_down_to_zero() {
        let (tx, mut rx) = mpsc::channel(8);
        let total = 2 * SNAPSHOT_CHUNK + 100;
        let mut out = ChunkWriter {
            tx,
            header: None,
            remaining: total as u64,
            buf: Vec::new(),
        };
        // Odd-sized writes, as BufWriter makes them.
        for piece in vec![7u8; total].chunks(1000) {
            out.write_all(piece).expect("write");
        }
        out.flush().expect("flush");
        drop(out);
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            let chunk = chunk.expect("chunk");
            chunks.push((chunk.blob.len(), chunk.remaining_bytes));
        }
        let full = SNAPSHOT_CHUNK;
        assert_eq!(chunks, [(full, (full + 100) as u64), (full, 100), (100, 0)]);
    }
}

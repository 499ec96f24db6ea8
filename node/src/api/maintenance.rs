//! etcd's Maintenance service over [`Core`]. Snapshot streams etcd's format (a bbolt file
//! and its SHA-256, see `mvcc::snapshot`) in etcd's 32 KiB chunks.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{context, record_end, record_start, unary, Method};
use crate::core::{Core, Error};
use crate::mvcc::snapshot::{Chunker, SnapshotError, SnapshotSource};
use crate::proto::etcdserverpb::{
    maintenance_server::Maintenance, AlarmRequest, AlarmResponse, DefragmentRequest,
    DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, ResponseHeader,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};

const fn method(name: &'static str) -> Method {
    Method {
        service: "etcdserverpb.Maintenance",
        name,
    }
}

/// Bytes per snapshot chunk, as etcd's `snapshotSendBufferSize`.
const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// The SHA-256 etcd appends to the database file.
const SNAPSHOT_DIGEST_LEN: u64 = 32;
/// Chunks buffered between the reader thread and the gRPC stream: memory stays bounded by
/// this many chunks whatever the database size.
const SNAPSHOT_QUEUE: usize = 4;

pub struct MaintenanceService(pub Arc<Core>);

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        unary(method("Alarm"), req, |ctx, r| async move {
            self.0.alarm(&ctx, r).await
        })
        .await
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        unary(method("Status"), req, |ctx, _| async move {
            self.0.status(&ctx).await
        })
        .await
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        unary(method("Defragment"), req, |ctx, _| async move {
            self.0.defragment(&ctx).await
        })
        .await
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        unary(method("Hash"), req, |ctx, _| async move {
            let h = self.0.hash_kv(&ctx, 0).await?;
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
        unary(method("HashKV"), req, |ctx, r| async move {
            self.0.hash_kv_response(&ctx, r.revision).await
        })
        .await
    }

    type SnapshotStream = SnapshotStream;

    /// Pins the state now, then a blocking task reads it and feeds the stream through a
    /// bounded channel, so the response starts at once and memory stays bounded.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let m = method("Snapshot");
        let started = record_start(m, "server_stream");
        let source = match self.0.snapshot(&context(&req)).await {
            Ok(source) => source,
            Err(e) => {
                let status = Status::from(e);
                record_end(m, "server_stream", started, status.code());
                return Err(status);
            }
        };
        let header = self.0.header(source.revision());
        let (tx, rx) = mpsc::channel(SNAPSHOT_QUEUE);
        tokio::task::spawn_blocking(move || {
            let code = send_snapshot(&source, header, tx);
            record_end(m, "server_stream", started, code);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        unary(method("MoveLeader"), req, |ctx, r| async move {
            self.0.move_leader(&ctx, r).await
        })
        .await
    }

    async fn downgrade(
        &self,
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        unary(method("Downgrade"), req, |ctx, _| async move {
            self.0.unsupported_admin(&ctx, "Downgrade").await
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
    let mut responses = Responses {
        tx,
        header,
        remaining: 0,
    };
    let result = source.etcd_plan().and_then(|plan| {
        responses.remaining = plan.file_len() + SNAPSHOT_DIGEST_LEN;
        let mut out = Chunker::new(SNAPSHOT_CHUNK, |blob| responses.send(blob));
        source.write_etcd(&mut out, plan)?;
        out.flush()?;
        drop(out);
        if responses.remaining != 0 {
            return Err(SnapshotError::Malformed(format!(
                "{} bytes short of the announced length",
                responses.remaining
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
            let status = Status::from(Error::internal(e));
            let code = status.code();
            let _ = responses.tx.blocking_send(Err(status));
            code
        }
    }
}

/// Sends chunks as `SnapshotResponse`s, blocking while the client is behind.
struct Responses {
    tx: ChunkSender,
    header: Option<ResponseHeader>,
    /// Stream bytes not yet sent.
    remaining: u64,
}

impl Responses {
    fn send(&mut self, blob: Vec<u8>) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_count_remaining_bytes_down_to_zero() {
        let (tx, mut rx) = mpsc::channel(8);
        let total = 2 * SNAPSHOT_CHUNK + 100;
        let mut responses = Responses {
            tx,
            header: None,
            remaining: total as u64,
        };
        let mut out = Chunker::new(SNAPSHOT_CHUNK, |blob| responses.send(blob));
        // Odd-sized writes, as BufWriter makes them.
        for piece in vec![7u8; total].chunks(1000) {
            out.write_all(piece).expect("write");
        }
        out.flush().expect("flush");
        drop(out);
        drop(responses);
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            let chunk = chunk.expect("chunk");
            chunks.push((chunk.blob.len(), chunk.remaining_bytes));
        }
        let full = SNAPSHOT_CHUNK;
        assert_eq!(chunks, [(full, (full + 100) as u64), (full, 100), (100, 0)]);
    }
}

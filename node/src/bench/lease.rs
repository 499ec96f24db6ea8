//! `cairn bench lease-keepalive`: one lease per client, kept alive over the client's own
//! LeaseKeepAlive stream with one request in flight, as etcd's `benchmark lease-keepalive`
//! does. A request's latency is from sending the keep-alive to receiving its answer.

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::Streaming;

use super::TOKEN;
use crate::proto::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
};

/// Long enough that no lease expires during a run, whatever its keep-alive latency.
const LEASE_TTL: i64 = 3600;

fn with_token<T>(message: T, token: Option<&MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(TOKEN, token.clone());
    }
    request
}

/// One client's lease and its keep-alive stream.
pub(super) struct KeepAliveConn {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
    timeout: Duration,
}

impl KeepAliveConn {
    /// Grants a lease and opens its keep-alive stream.
    pub(super) async fn open(
        channel: Channel,
        token: Option<&MetadataValue<Ascii>>,
        timeout: Duration,
    ) -> anyhow::Result<KeepAliveConn> {
        let mut client = LeaseClient::new(channel);
        let id = client
            .lease_grant(with_token(
                LeaseGrantRequest {
                    ttl: LEASE_TTL,
                    id: 0,
                },
                token,
            ))
            .await
            .context("granting a lease")?
            .into_inner()
            .id;
        let (requests, rx) = mpsc::channel(1);
        // etcd sends the stream's response headers only with its first answer, and the
        // call resolves only with them: the first keep-alive goes out before it (unmeasured).
        requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .context("queueing the first keep-alive")?;
        let opened = client.lease_keep_alive(with_token(ReceiverStream::new(rx), token));
        let responses = tokio::time::timeout(timeout, opened)
            .await
            .context("opening a keep-alive stream timed out")?
            .context("opening a keep-alive stream")?
            .into_inner();
        let mut conn = KeepAliveConn {
            id,
            requests,
            responses,
            timeout,
        };
        conn.answer().await?;
        Ok(conn)
    }

    /// The next answer; a TTL of 0 (the lease is gone) is an error.
    async fn answer(&mut self) -> Result<(), tonic::Status> {
        match self.responses.message().await? {
            Some(r) if r.ttl > 0 => Ok(()),
            Some(_) => Err(tonic::Status::not_found("lease expired")),
            None => Err(tonic::Status::unavailable("keep-alive stream ended")),
        }
    }

    /// One keep-alive and its answer.
    pub(super) async fn keep_alive(&mut self) -> Result<(), tonic::Status> {
        let timeout = self.timeout;
        let round = async {
            self.requests
                .send(LeaseKeepAliveRequest { id: self.id })
                .await
                .map_err(|_| tonic::Status::unavailable("keep-alive stream closed"))?;
            self.answer().await
        };
        tokio::time::timeout(timeout, round)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("timed out")))
    }
}

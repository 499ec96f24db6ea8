//! The peer service (`cairn/peer.proto`) on `--listen-peer-urls`: raft messages, forwarded
//! proposals and read indexes from the other members. Each method checks the caller's
//! cluster ID, counts the bytes received, and hands the payload to one core operation.

use std::sync::Arc;

use futures::StreamExt;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::core::{Core, RequestContext};
use crate::proto::cairnpb::{
    raft_peer_server::{RaftPeer, RaftPeerServer},
    ProposeRequest, ProposeResponse, RaftMessage, ReadIndexRequest, ReadIndexResponse,
    SnapshotChunk,
};
use crate::proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::raft::network::{CLUSTER_ID_HEADER, MEMBER_ID_HEADER};

use super::error::peer_status;

/// The router of the peer listener.
pub fn router(core: Arc<Core>) -> axum::Router {
    tonic::service::Routes::new(
        RaftPeerServer::new(PeerService(core))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
    )
    .into_axum_router()
}

struct PeerService(Arc<Core>);

impl PeerService {
    /// Refuses a caller of another cluster; counts what it sent.
    fn admit<T: Message>(&self, req: &Request<T>) -> Result<(), Status> {
        let from = self.caller(req)?;
        received(&from, req.get_ref().encoded_len());
        Ok(())
    }

    /// Refuses a caller of another cluster; returns its member id (hex), as metrics label
    /// it.
    fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let header = |name| {
            req.metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| u64::from_str_radix(v, 16).ok())
        };
        self.0
            .check_peer(header(CLUSTER_ID_HEADER))
            .map_err(peer_status)?;
        Ok(header(MEMBER_ID_HEADER).map_or_else(String::new, |id| format!("{id:x}")))
    }
}

fn received(from: &str, bytes: usize) {
    crate::metrics::get()
        .peer_received_bytes
        .with_label_values(&[from])
        .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req)?;
        let data = self
            .0
            .peer_append_entries(&req.into_inner().data)
            .await
            .map_err(peer_status)?;
        Ok(Response::new(RaftMessage { data }))
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req)?;
        let data = self
            .0
            .peer_transfer_leader(&req.into_inner().data)
            .await
            .map_err(peer_status)?;
        Ok(Response::new(RaftMessage { data }))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req)?;
        let data = self
            .0
            .peer_vote(&req.into_inner().data)
            .await
            .map_err(peer_status)?;
        Ok(Response::new(RaftMessage { data }))
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        self.admit(&req)?;
        let resp = self
            .0
            .peer_propose(&req.into_inner().command)
            .await
            .map_err(peer_status)?;
        Ok(Response::new(resp))
    }

    async fn publish(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req)?;
        self.0
            .peer_publish(&req.into_inner().data)
            .await
            .map_err(peer_status)?;
        Ok(Response::new(RaftMessage::default()))
    }

    async fn change_members(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req)?;
        let data = self
            .0
            .peer_member_change(&req.into_inner().data)
            .await
            .map_err(peer_status)?;
        Ok(Response::new(RaftMessage { data }))
    }

    /// Not checked: the caller is joining and does not know the cluster ID yet; the answer
    /// is what `etcdctl member list` shows anyone.
    async fn cluster(&self, _req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let data = self.0.peer_cluster().map_err(peer_status)?;
        Ok(Response::new(RaftMessage { data }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.admit(&req)?;
        let ctx = RequestContext::internal();
        let id = req.into_inner().id;
        let resp = self
            .0
            .lease_keep_alive(&ctx, id)
            .await
            .map_err(peer_status)?;
        Ok(Response::new(resp))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.admit(&req)?;
        let ctx = RequestContext::internal();
        let resp = self
            .0
            .lease_time_to_live(&ctx, req.into_inner())
            .await
            .map_err(peer_status)?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.admit(&req)?;
        let ctx = RequestContext::internal();
        let resp = self.0.lease_leases(&ctx).await.map_err(peer_status)?;
        Ok(Response::new(resp))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let from = self.caller(&req)?;
        let label = from.clone();
        let chunks = req.into_inner().map(move |chunk| {
            let chunk = chunk.map_err(|s| s.to_string())?;
            received(&label, chunk.encoded_len());
            Ok(chunk)
        });
        let data = self
            .0
            .peer_install_snapshot(&from, chunks)
            .await
            .map_err(peer_status)?;
        Ok(Response::new(RaftMessage { data }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admit(&req)?;
        let ctx = RequestContext::internal();
        let revision = req.into_inner().revision;
        let resp = self
            .0
            .hash_kv_response(&ctx, revision)
            .await
            .map_err(peer_status)?;
        Ok(Response::new(resp))
    }

    async fn read_index(
        &self,
        req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        self.admit(&req)?;
        let index = self.0.peer_read_index().await.map_err(peer_status)?;
        Ok(Response::new(ReadIndexResponse { index }))
    }
}

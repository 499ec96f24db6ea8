//! etcd's v3election service (`Campaign`, `Proclaim`, `Leader`, `Observe`, `Resign`), on the
//! Election recipe in `concurrency.rs`. Like etcd's server, its refusals are plain errors
//! ("election: not leader"), which gRPC reports with code Unknown.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::concurrency::{prefix_of, Abandoned};
use super::error::ApiError;
use super::{metered, Node};
use crate::proto::mvccpb::{event::EventType, KeyValue};
use crate::proto::v3electionpb::{
    election_server::Election, CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest,
    LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::watch::KeyRange;

const SERVICE: &str = "v3electionpb.Election";
const NOT_LEADER: ApiError = ApiError::Concurrency("election: not leader");
const NO_LEADER: ApiError = ApiError::Concurrency("election: no leader");
const MISSING_LEADER: ApiError = ApiError::Concurrency("\"leader\" field must be provided");

pub struct ElectionService(pub Arc<Node>);

/// etcd's `Election.Campaign`: queue under `name/` with the value, then wait to be oldest.
async fn campaign(node: &Arc<Node>, req: CampaignRequest) -> Result<CampaignResponse, ApiError> {
    let lease = node.session_lease(req.lease).await?;
    let prefix = prefix_of(&req.name);
    let me = node.enqueue(&prefix, lease, req.value.clone()).await?;
    let abandoned = Abandoned::new(node.clone(), me.key.clone(), me.create_revision);
    if me.existing_value.as_ref().is_some_and(|v| *v != req.value) {
        proclaim_at(node, &me.key, me.create_revision, req.value, lease).await?;
    }
    node.wait_deletes(&prefix, me.create_revision - 1).await?;
    abandoned.disarm();
    Ok(CampaignResponse {
        header: me.header,
        leader: Some(LeaderKey {
            name: req.name,
            key: me.key,
            rev: me.create_revision,
            lease,
        }),
    })
}

async fn proclaim_at(
    node: &Node,
    key: &[u8],
    rev: i64,
    value: Vec<u8>,
    lease: i64,
) -> Result<ProclaimResponse, ApiError> {
    let resp = node.put_if_created_at(key, rev, value, lease).await?;
    if !resp.succeeded {
        return Err(NOT_LEADER);
    }
    Ok(ProclaimResponse {
        header: resp.header,
    })
}

async fn leader(node: &Node, req: LeaderRequest) -> Result<LeaderResponse, ApiError> {
    match node.oldest(&prefix_of(&req.name)).await? {
        (Some(kv), header) => Ok(LeaderResponse {
            header,
            kv: Some(kv),
        }),
        (None, _) => Err(NO_LEADER),
    }
}

/// etcd's `Election.observe`: report the leader, then each new value it proclaims, and the
/// next leader once its key is deleted; ends when the client goes away.
async fn observe(
    node: Arc<Node>,
    prefix: Vec<u8>,
    tx: mpsc::Sender<Result<LeaderResponse, Status>>,
) {
    loop {
        let (leader, header) = match node.oldest(&prefix).await {
            Ok(found) => found,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let kv = match leader {
            Some(kv) => kv,
            None => {
                let from = header.as_ref().map_or(0, |h| h.revision);
                match first_put(&node, &prefix, from).await {
                    Some(kv) => kv,
                    None => continue,
                }
            }
        };
        let mut events = node.watch_events(KeyRange::new(kv.key.clone(), &[]), kv.mod_revision + 1);
        if !send(&node, &tx, kv).await {
            return;
        }
        'leader: while let Some(batch) = events.next().await {
            for event in batch.iter() {
                if event.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                if let Some(kv) = event.kv.clone() {
                    if !send(&node, &tx, kv).await {
                        return;
                    }
                }
            }
        }
    }
}

/// The first key put under `prefix` from revision `from`, or `None` if the watch ended.
async fn first_put(node: &Node, prefix: &[u8], from: i64) -> Option<KeyValue> {
    let end = crate::proto::prefix_end(prefix);
    let mut events = node.watch_events(KeyRange::new(prefix.to_vec(), &end), from);
    while let Some(batch) = events.next().await {
        if let Some(kv) = batch
            .iter()
            .find(|e| e.r#type == EventType::Put as i32)
            .and_then(|e| e.kv.clone())
        {
            return Some(kv);
        }
    }
    None
}

async fn send(
    node: &Node,
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
    kv: KeyValue,
) -> bool {
    let header = node.header(kv.mod_revision);
    tx.send(Ok(LeaderResponse {
        header,
        kv: Some(kv),
    }))
    .await
    .is_ok()
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        metered(SERVICE, "Campaign", campaign(&self.0, req.into_inner())).await
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let req = req.into_inner();
        metered(SERVICE, "Proclaim", async {
            let l = req.leader.ok_or(MISSING_LEADER)?;
            proclaim_at(&self.0, &l.key, l.rev, req.value, l.lease).await
        })
        .await
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        metered(SERVICE, "Leader", leader(&self.0, req.into_inner())).await
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(observe(
            self.0.clone(),
            prefix_of(&req.into_inner().name),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let req = req.into_inner();
        metered(SERVICE, "Resign", async {
            let l = req.leader.ok_or(MISSING_LEADER)?;
            let resp = self.0.delete_if_created_at(&l.key, l.rev).await?;
            Ok(ResignResponse {
                header: resp.header,
            })
        })
        .await
    }
}

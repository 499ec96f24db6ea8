//! etcd's v3election requests (`Campaign`, `Proclaim`, `Leader`, `Observe`, `Resign`), on
//! the Election recipe in `concurrency.rs`. Like etcd's server, its refusals are plain
//! errors ("election: not leader"), which gRPC reports with code Unknown.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::concurrency::{prefix_of, Abandoned};
use super::context::RequestContext;
use super::{Core, Error};
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::watch::KeyRange;

const NOT_LEADER: Error = Error::Concurrency("election: not leader");
const NO_LEADER: Error = Error::Concurrency("election: no leader");
const MISSING_LEADER: Error = Error::Concurrency("\"leader\" field must be provided");
/// Leader changes buffered for a slow observer.
const OBSERVE_QUEUE: usize = 16;

/// The leaders an `Observe` reports, until the receiver is dropped.
pub type Observations = mpsc::Receiver<Result<LeaderResponse, Error>>;

impl Core {
    /// etcd's `Election.Campaign`: queue under `name/` with the value, then wait to be
    /// oldest.
    pub async fn campaign(
        self: &Arc<Self>,
        ctx: &RequestContext,
        req: CampaignRequest,
    ) -> Result<CampaignResponse, Error> {
        let lease = self.session_lease(ctx, req.lease).await?;
        let prefix = prefix_of(&req.name);
        let me = self.enqueue(ctx, &prefix, lease, req.value.clone()).await?;
        let abandoned = Abandoned::new(self.clone(), ctx, me.key.clone(), me.create_revision);
        if me.existing_value.as_ref().is_some_and(|v| *v != req.value) {
            self.proclaim_at(ctx, &me.key, me.create_revision, req.value, lease)
                .await?;
        }
        self.wait_deletes(ctx, &prefix, me.create_revision - 1)
            .await?;
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

    pub async fn proclaim(
        &self,
        ctx: &RequestContext,
        req: ProclaimRequest,
    ) -> Result<ProclaimResponse, Error> {
        let l = req.leader.ok_or(MISSING_LEADER)?;
        self.proclaim_at(ctx, &l.key, l.rev, req.value, l.lease)
            .await
    }

    async fn proclaim_at(
        &self,
        ctx: &RequestContext,
        key: &[u8],
        rev: i64,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<ProclaimResponse, Error> {
        let resp = self.put_if_created_at(ctx, key, rev, value, lease).await?;
        if !resp.succeeded {
            return Err(NOT_LEADER);
        }
        Ok(ProclaimResponse {
            header: resp.header,
        })
    }

    pub async fn leader(
        &self,
        ctx: &RequestContext,
        req: LeaderRequest,
    ) -> Result<LeaderResponse, Error> {
        match self.oldest(ctx, &prefix_of(&req.name)).await? {
            (Some(kv), header) => Ok(LeaderResponse {
                header,
                kv: Some(kv),
            }),
            (None, _) => Err(NO_LEADER),
        }
    }

    pub async fn resign(
        &self,
        ctx: &RequestContext,
        req: ResignRequest,
    ) -> Result<ResignResponse, Error> {
        let l = req.leader.ok_or(MISSING_LEADER)?;
        let resp = self.delete_if_created_at(ctx, &l.key, l.rev).await?;
        Ok(ResignResponse {
            header: resp.header,
        })
    }

    /// etcd's `Election.observe`: report the leader, then each new value it proclaims,
    /// and the next leader once its key is deleted; ends when the receiver is dropped.
    pub fn observe(self: &Arc<Self>, ctx: RequestContext, req: LeaderRequest) -> Observations {
        let (tx, rx) = mpsc::channel(OBSERVE_QUEUE);
        let core = self.clone();
        tokio::spawn(async move { core.observe_into(&ctx, prefix_of(&req.name), tx).await });
        rx
    }

    async fn observe_into(
        &self,
        ctx: &RequestContext,
        prefix: Vec<u8>,
        tx: mpsc::Sender<Result<LeaderResponse, Error>>,
    ) {
        loop {
            let (leader, header) = match self.oldest(ctx, &prefix).await {
                Ok(found) => found,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let kv = match leader {
                Some(kv) => kv,
                None => {
                    let from = header.as_ref().map_or(0, |h| h.revision);
                    match self.first_put(&prefix, from).await {
                        Some(kv) => kv,
                        None => continue,
                    }
                }
            };
            let mut events =
                self.watch_events(KeyRange::new(kv.key.clone(), &[]), kv.mod_revision + 1);
            if !self.send_leader(&tx, kv).await {
                return;
            }
            'leader: while let Some(batch) = events.next().await {
                for event in batch.iter() {
                    if !event.is_put() {
                        break 'leader;
                    }
                    if let Some(kv) = event.kv() {
                        if !self.send_leader(&tx, kv).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The first key put under `prefix` from revision `from`, or `None` if the watch ended.
    async fn first_put(&self, prefix: &[u8], from: i64) -> Option<KeyValue> {
        let end = crate::proto::prefix_end(prefix);
        let mut events = self.watch_events(KeyRange::new(prefix.to_vec(), &end), from);
        while let Some(batch) = events.next().await {
            if let Some(kv) = batch.iter().find(|e| e.is_put()).and_then(|e| e.kv()) {
                return Some(kv);
            }
        }
        None
    }

    async fn send_leader(
        &self,
        tx: &mpsc::Sender<Result<LeaderResponse, Error>>,
        kv: KeyValue,
    ) -> bool {
        let header = self.header(kv.mod_revision);
        tx.send(Ok(LeaderResponse {
            header,
            kv: Some(kv),
        }))
        .await
        .is_ok()
    }
}

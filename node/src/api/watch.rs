//! etcd's Watch service (v3rpc/watch.go): one bidirectional stream carries many watches.
//! Each stream is one task that reads the client's requests (create, cancel, progress),
//! the hub's messages for the stream's watchers, and a progress ticker, and writes
//! responses in that order, so a watch's `created` response always precedes its events.
//!
//! The hub decides which revisions a watcher gets; this layer applies the per-watch options
//! that do not change that (NOPUT/NODELETE filters, `prev_kv`, `fragment`) and maps hub
//! watcher ids to the client's watch ids.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{context, record_end, record_start, Method};
use crate::core::{Core, Error, RequestContext};
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::{event::EventType, Event};
use crate::watch::{self, Sink, WatchMsg, WatcherId};

const METHOD: Method = Method {
    service: "etcdserverpb.Watch",
    name: "Watch",
};
/// etcd's `clientv3.InvalidWatchID`: a response not tied to one watch.
const INVALID_WATCH_ID: i64 = -1;
/// Responses ready for the client before the stream task waits (etcd's ctrlStreamBufLen is
/// 16); beyond that the hub's per-watcher buffers fill and slow watchers catch up later.
const OUT_BUFFER: usize = 16;
/// How often a pending progress request is retried while some watcher is unsynced.
const PROGRESS_RETRY: Duration = Duration::from_millis(100);

const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

pub struct WatchService(pub Arc<Core>);

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let (out, responses) = mpsc::channel(OUT_BUFFER);
        let (sink, msgs) = watch::channel();
        let stream = StreamTask::new(self.0.clone(), context(&request), out, sink);
        tokio::spawn(stream.run(request.into_inner(), msgs));
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }
}

/// One client watch on the stream.
struct ClientWatch {
    watcher: WatcherId,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    fragment: bool,
    /// `Some(idle)` with progress_notify: whether no events were sent since the last tick.
    progress: Option<bool>,
}

/// The client went away (or the stream broke): stop.
struct Gone;

struct StreamTask {
    core: Arc<Core>,
    /// The client's context: every watch of the stream is created as the stream's caller.
    ctx: RequestContext,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    sink: Sink,
    watches: HashMap<i64, ClientWatch>,
    by_watcher: HashMap<WatcherId, i64>,
    /// etcd's `nextID`: automatic ids count up from 0, skipping ids in use.
    next_id: i64,
    /// A progress request waits for every watcher of the stream to be synced.
    progress_requested: bool,
}

impl StreamTask {
    fn new(
        core: Arc<Core>,
        ctx: RequestContext,
        out: mpsc::Sender<Result<WatchResponse, Status>>,
        sink: Sink,
    ) -> StreamTask {
        StreamTask {
            core,
            ctx,
            out,
            sink,
            watches: HashMap::new(),
            by_watcher: HashMap::new(),
            next_id: 0,
            progress_requested: false,
        }
    }

    async fn run(
        mut self,
        mut requests: Streaming<WatchRequest>,
        mut msgs: mpsc::UnboundedReceiver<WatchMsg>,
    ) {
        let m = crate::metrics::get();
        let started = record_start(METHOD, "bidi_stream");
        m.watch_streams.inc();
        let code = self.serve(&mut requests, &mut msgs).await;
        for watch in self.watches.values() {
            self.core.watch_cancel(watch.watcher);
        }
        m.watch_streams.dec();
        record_end(METHOD, "bidi_stream", started, code);
    }

    /// The stream's loop; returns the gRPC code it ended with.
    async fn serve(
        &mut self,
        requests: &mut Streaming<WatchRequest>,
        msgs: &mut mpsc::UnboundedReceiver<WatchMsg>,
    ) -> tonic::Code {
        let mut ticker = tokio::time::interval(self.core.watch_hub().progress_interval);
        ticker.tick().await; // the first tick is immediate
        let mut retry = tokio::time::interval(PROGRESS_RETRY);
        let mut reading = true;
        loop {
            let step = tokio::select! {
                req = requests.message(), if reading => match req {
                    Ok(Some(req)) => self.on_request(req).await,
                    // The client closed its side: keep sending until it goes (as etcd).
                    Ok(None) => { reading = false; Ok(()) }
                    Err(status) => return status.code(),
                },
                Some(msg) = msgs.recv() => self.on_hub(msg).await,
                _ = ticker.tick() => { self.on_tick(); Ok(()) }
                _ = retry.tick(), if self.progress_requested => { self.try_progress(); Ok(()) }
                _ = self.out.closed() => return tonic::Code::Cancelled,
            };
            if step.is_err() {
                return tonic::Code::Cancelled;
            }
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    async fn on_request(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                self.try_progress();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// etcd's create: normalise the key range, pick or check the id, register, answer
    /// `created` (or `created` + `canceled` with a reason and watch id -1).
    async fn create(&mut self, req: WatchCreateRequest) -> Result<(), Gone> {
        let checked = match self.core.watch_check(&self.ctx, &req).await {
            Ok(_) if req.watch_id != 0 && self.watches.contains_key(&req.watch_id) => {
                Err(ERR_DUPLICATE_ID.to_string())
            }
            other => other.map_err(cancel_reason),
        };
        let range = match checked {
            Ok(range) => range,
            Err(reason) => {
                let hub = self.core.watch_hub();
                return self
                    .send(WatchResponse {
                        header: self.core.header(hub.revision()),
                        watch_id: INVALID_WATCH_ID,
                        created: true,
                        canceled: true,
                        cancel_reason: reason,
                        ..Default::default()
                    })
                    .await;
            }
        };
        let id = if req.watch_id != 0 {
            req.watch_id
        } else {
            self.auto_id()
        };
        let (watcher, rev) = self.core.watch_register(range, &req, &self.sink);
        let filter = |f: FilterType| req.filters.contains(&(f as i32));
        self.watches.insert(
            id,
            ClientWatch {
                watcher,
                prev_kv: req.prev_kv,
                no_put: filter(FilterType::Noput),
                no_delete: filter(FilterType::Nodelete),
                fragment: req.fragment,
                progress: req.progress_notify.then_some(true),
            },
        );
        self.by_watcher.insert(watcher, id);
        self.send(WatchResponse {
            header: self.core.header(rev),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    fn auto_id(&mut self) -> i64 {
        while self.watches.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Cancels a watch; as etcd, an unknown id gets no answer.
    async fn cancel(&mut self, id: i64) -> Result<(), Gone> {
        let Some(watch) = self.watches.remove(&id) else {
            return Ok(());
        };
        self.by_watcher.remove(&watch.watcher);
        self.core.watch_cancel(watch.watcher);
        self.send(WatchResponse {
            header: self.core.header(self.core.watch_hub().revision()),
            watch_id: id,
            canceled: true,
            ..Default::default()
        })
        .await
    }

    fn try_progress(&mut self) {
        let ids: Vec<WatcherId> = self.watches.values().map(|w| w.watcher).collect();
        if self.core.watch_hub().progress_all(&ids, &self.sink) {
            self.progress_requested = false;
        }
    }

    /// etcd's progress ticker: a watch with progress_notify that sent nothing since the
    /// last tick gets a progress response (if synced).
    fn on_tick(&mut self) {
        for watch in self.watches.values_mut() {
            if let Some(idle) = watch.progress.as_mut() {
                if *idle {
                    self.core.watch_hub().progress(watch.watcher);
                }
                *idle = true;
            }
        }
    }

    async fn on_hub(&mut self, msg: WatchMsg) -> Result<(), Gone> {
        match msg {
            WatchMsg::Events {
                watcher,
                revision,
                events,
                credit,
            } => {
                let Some((&id, watch)) = self.client_watch(watcher) else {
                    return Ok(()); // canceled meanwhile
                };
                let events = select_events(watch, &events);
                drop(credit);
                if events.is_empty() {
                    return Ok(());
                }
                let fragment = watch.fragment;
                if let Some(watch) = self.watches.get_mut(&id) {
                    if let Some(idle) = watch.progress.as_mut() {
                        *idle = false;
                    }
                }
                let resp = WatchResponse {
                    header: self.core.header(revision),
                    watch_id: id,
                    events,
                    ..Default::default()
                };
                if fragment {
                    let max = self.core.limits().max_request_bytes;
                    for part in fragments(resp, max) {
                        self.send(part).await?;
                    }
                    Ok(())
                } else {
                    self.send(resp).await
                }
            }
            WatchMsg::Compacted {
                watcher,
                compact_revision,
            } => {
                let Some(id) = self.by_watcher.remove(&watcher) else {
                    return Ok(());
                };
                self.watches.remove(&id);
                // etcd's compacted response carries no revision in its header.
                self.send(WatchResponse {
                    header: self.core.header(0),
                    watch_id: id,
                    compact_revision,
                    canceled: true,
                    ..Default::default()
                })
                .await
            }
            WatchMsg::Progress { watcher, revision } => {
                let id = match watcher {
                    None => INVALID_WATCH_ID,
                    Some(w) => match self.by_watcher.get(&w) {
                        Some(&id) => id,
                        None => return Ok(()),
                    },
                };
                self.send(WatchResponse {
                    header: self.core.header(revision),
                    watch_id: id,
                    ..Default::default()
                })
                .await
            }
        }
    }

    fn client_watch(&self, watcher: WatcherId) -> Option<(&i64, &ClientWatch)> {
        let id = self.by_watcher.get(&watcher)?;
        self.watches.get_key_value(id)
    }
}

/// The events a watch sends: its filters applied, prev_kv kept only when asked for.
fn select_events(watch: &ClientWatch, events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| {
            let put = e.r#type == EventType::Put as i32;
            !(put && watch.no_put || !put && watch.no_delete)
        })
        .map(|e| Event {
            prev_kv: if watch.prev_kv {
                e.prev_kv.clone()
            } else {
                None
            },
            ..e.clone()
        })
        .collect()
}

/// etcd's `sendFragments`: a response of at least `max` bytes with two or more events is
/// split into parts each under `max` (or a single event), all but the last with `fragment`.
fn fragments(resp: WatchResponse, max: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < max || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut parts = Vec::new();
    let mut events = resp.events.into_iter().peekable();
    while events.peek().is_some() {
        let mut part = WatchResponse {
            header: resp.header,
            watch_id: resp.watch_id,
            created: resp.created,
            canceled: resp.canceled,
            compact_revision: resp.compact_revision,
            cancel_reason: resp.cancel_reason.clone(),
            fragment: true,
            events: Vec::new(),
        };
        while let Some(event) = events.peek() {
            part.events.push(event.clone());
            if part.events.len() > 1 && part.encoded_len() >= max {
                part.events.pop();
                break;
            }
            events.next();
        }
        part.fragment = events.peek().is_some();
        parts.push(part);
    }
    parts
}

/// The cancel reason of a refused watch: etcd writes a permission refusal as the gRPC
/// status's text (`rpctypes.ErrGRPCPermissionDenied.Error()`), other refusals as is.
fn cancel_reason(e: Error) -> String {
    match e {
        Error::PermissionDenied => format!("rpc error: code = PermissionDenied desc = {e}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn put(key: &str, size: usize) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                value: vec![b'x'; size],
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn large_responses_are_split_into_fragments() {
        let resp = WatchResponse {
            watch_id: 7,
            events: (0..10).map(|i| put(&format!("k{i}"), 100)).collect(),
            ..Default::default()
        };
        let parts = fragments(resp.clone(), 350);
        assert!(parts.len() > 1);
        let flags: Vec<bool> = parts.iter().map(|p| p.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|f| *f) && !flags[flags.len() - 1]);
        assert!(parts
            .iter()
            .all(|p| p.encoded_len() < 350 && p.watch_id == 7));
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, resp.events);
        assert_eq!(fragments(resp.clone(), 1 << 20), vec![resp]);
    }

    #[test]
    fn filters_and_prev_kv() {
        let mut del = put("d", 0);
        del.r#type = EventType::Delete as i32;
        let mut with_prev = put("p", 1);
        with_prev.prev_kv = Some(KeyValue::default());
        let events = vec![with_prev, del];
        let watch = ClientWatch {
            watcher: 1,
            prev_kv: false,
            no_put: false,
            no_delete: true,
            fragment: false,
            progress: None,
        };
        let got = select_events(&watch, &events);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].prev_kv, None);
        let watch = ClientWatch {
            prev_kv: true,
            no_put: true,
            no_delete: false,
            ..watch
        };
        let got = select_events(&watch, &events);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].r#type, EventType::Delete as i32);
    }
}

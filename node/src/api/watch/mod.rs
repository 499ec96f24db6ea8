//! etcd's Watch service (v3rpc/watch.go): one bidirectional stream carries many watches.
//! Each stream is one task that reads the client's requests (create, cancel, progress),
//! the hub's messages for the stream's watchers, and a progress ticker, and writes
//! responses in that order, so a watch's `created` response always precedes its events.
//!
//! The hub decides which revisions a watcher gets; this layer applies the per-watch options
//! that do not change that (NOPUT/NODELETE filters, `prev_kv`, `fragment`) and maps hub
//! watcher ids to the client's watch ids. Events reach the client as the bytes the hub
//! encoded once ([`reply`]), through a hand-written tonic server ([`server`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{context, record_end, record_start, Method};
use crate::core::{Core, Error, RequestContext};
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::watch::{self, Events, Sink, WatchMsg, WatcherId};

mod reply;
mod server;

use reply::WatchReply;
pub use server::WatchServer;

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

struct WatchService(Arc<Core>);

type ReplyStream = ReceiverStream<Result<WatchReply, Status>>;

impl WatchService {
    fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Response<ReplyStream> {
        let (out, responses) = mpsc::channel(OUT_BUFFER);
        let (sink, msgs) = watch::channel();
        let stream = StreamTask::new(self.0.clone(), context(&request), out, sink);
        tokio::spawn(stream.run(request.into_inner(), msgs));
        Response::new(ReceiverStream::new(responses))
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
    out: mpsc::Sender<Result<WatchReply, Status>>,
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
        out: mpsc::Sender<Result<WatchReply, Status>>,
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

    async fn send(&self, resp: impl Into<WatchReply>) -> Result<(), Gone> {
        self.out.send(Ok(resp.into())).await.map_err(|_| Gone)
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
                let events = select_events(watch, events);
                drop(credit);
                if events.is_empty() {
                    return Ok(());
                }
                let (fragment, prev_kv) = (watch.fragment, watch.prev_kv);
                if let Some(watch) = self.watches.get_mut(&id) {
                    if let Some(idle) = watch.progress.as_mut() {
                        *idle = false;
                    }
                }
                let base = WatchResponse {
                    header: self.core.header(revision),
                    watch_id: id,
                    ..Default::default()
                };
                let resp = WatchReply::events(base, events, prev_kv);
                if fragment {
                    let max = self.core.limits().max_request_bytes;
                    for part in resp.fragments(max) {
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

/// The events a watch sends: its filters applied (whether it gets their `prev_kv` is the
/// reply's choice). Unfiltered, the hub's shared list is sent as is.
fn select_events(watch: &ClientWatch, events: Events) -> Events {
    if !watch.no_put && !watch.no_delete {
        return events;
    }
    let kept = events
        .iter()
        .filter(|e| !(e.is_put() && watch.no_put || !e.is_put() && watch.no_delete))
        .cloned()
        .collect();
    Arc::new(kept)
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
    use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
    use crate::watch::SharedEvent;

    fn event(kind: EventType, key: &str) -> Arc<SharedEvent> {
        Arc::new(SharedEvent::new(&Event {
            r#type: kind as i32,
            kv: Some(KeyValue {
                key: key.into(),
                ..Default::default()
            }),
            prev_kv: None,
        }))
    }

    #[test]
    fn filters() {
        let events: Events = Arc::new(vec![
            event(EventType::Put, "p"),
            event(EventType::Delete, "d"),
        ]);
        let watch = ClientWatch {
            watcher: 1,
            prev_kv: false,
            no_put: false,
            no_delete: true,
            fragment: false,
            progress: None,
        };
        let keys =
            |events: Events| -> Vec<Vec<u8>> { events.iter().map(|e| e.key().to_vec()).collect() };
        assert_eq!(
            keys(select_events(&watch, events.clone())),
            vec![b"p".to_vec()]
        );
        let watch = ClientWatch {
            no_put: true,
            no_delete: false,
            ..watch
        };
        assert_eq!(
            keys(select_events(&watch, events.clone())),
            vec![b"d".to_vec()]
        );
        let watch = ClientWatch {
            no_put: false,
            ..watch
        };
        assert!(Arc::ptr_eq(&select_events(&watch, events.clone()), &events));
    }
}

//! Watch creation and cancellation. The watch protocol itself (one stream, many watches,
//! client-chosen ids, filters, fragments, progress) belongs to the transport; the core
//! checks the request and registers the watcher with the hub.

use super::context::RequestContext;
use super::{Core, Error, Operation};
use crate::proto::etcdserverpb::WatchCreateRequest;
use crate::watch::{KeyRange, Sink, WatchHub, WatcherId};

impl Core {
    /// The checks of a watch, in etcd's order: permission, then the range; returns the
    /// range to watch. A refusal's text is etcd's cancel reason.
    pub async fn watch_check(
        &self,
        ctx: &RequestContext,
        req: &WatchCreateRequest,
    ) -> Result<KeyRange, Error> {
        // etcd cancels a watch the caller may not make with "permission denied", whatever
        // the auth failure was (`isWatchPermitted`).
        self.authorize(ctx, Operation::Watch(req))
            .await
            .map_err(|e| match e {
                Error::AuthUnavailable(_) => e,
                _ => Error::PermissionDenied,
            })?;
        // An empty key means the smallest key.
        let key = if req.key.is_empty() {
            vec![0]
        } else {
            req.key.clone()
        };
        let range = KeyRange::new(key, &req.range_end);
        if matches!(&range.end, Some(Some(end)) if range.key >= *end) {
            return Err(Error::EmptyWatchRange);
        }
        Ok(range)
    }

    /// Registers a watcher of `range` (checked by [`Core::watch_check`]) whose messages go
    /// to `sink`; returns it and the revision its `created` response reports.
    pub fn watch_register(
        &self,
        range: KeyRange,
        req: &WatchCreateRequest,
        sink: &Sink,
    ) -> (WatcherId, i64) {
        self.watch
            .watch(range, req.start_revision, req.prev_kv, sink)
    }

    pub fn watch_cancel(&self, watcher: WatcherId) {
        self.watch.cancel(watcher);
    }

    /// The hub, for the stream protocol's progress requests and notifications.
    pub fn watch_hub(&self) -> &WatchHub {
        &self.watch
    }
}

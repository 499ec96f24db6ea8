//! Middleware around the client router for gRPC calls only (by content type):
//! - counts the bytes of request and response bodies into etcd's
//!   `etcd_network_client_grpc_received_bytes_total` / `_sent_bytes_total` (gRPC frames:
//!   each message plus its 5-byte prefix, where etcd counts the messages alone);
//! - answers a message over the receive limit as grpc-go does, `ResourceExhausted` with
//!   `grpc: received message larger than max (N vs. M)`, where tonic says `OutOfRange`.
//!   Clients and etcd's alert rules look at that code.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http_body::{Frame, SizeHint};
use prometheus::IntCounter;

/// `axum::middleware::from_fn(grpc_layer::layer)` on the client router.
pub async fn layer(req: Request, next: Next) -> Response {
    let is_grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        return next.run(req).await;
    }
    let m = crate::metrics::get();
    let req = req.map(|body| Body::new(Counted::new(body, &m.grpc_received_bytes)));
    let mut resp = next.run(req).await;
    // A call refused before it started answers with its status in the headers.
    fix_status(resp.headers_mut());
    resp.map(|body| Body::new(Counted::new(body, &m.grpc_sent_bytes)))
}

/// tonic's status for an over-size message, rewritten to grpc-go's.
fn fix_status(headers: &mut HeaderMap) {
    if headers.get("grpc-status").map(HeaderValue::as_bytes) != Some(b"11") {
        return;
    }
    let Some(message) = headers.get("grpc-message").and_then(|v| v.to_str().ok()) else {
        return;
    };
    let message = message.replace("%20", " ");
    // "Error, decoded message length too large: found {len} bytes, the limit is: {limit} bytes"
    let Some(rest) = message.strip_prefix("Error, decoded message length too large: found ") else {
        return;
    };
    let numbers: Vec<&str> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    let [len, limit] = numbers[..] else {
        return;
    };
    let grpc_go = format!("grpc: received message larger than max ({len} vs. {limit})");
    if let Ok(value) = HeaderValue::from_str(&grpc_go.replace(' ', "%20")) {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert("grpc-message", value);
    }
}

/// A body that adds the length of every data frame to a counter, and fixes the status in
/// its trailers.
struct Counted {
    inner: Body,
    bytes: &'static IntCounter,
}

impl Counted {
    fn new(inner: Body, bytes: &'static IntCounter) -> Counted {
        Counted { inner, bytes }
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes
                    .inc_by(u64::try_from(data.len()).unwrap_or(u64::MAX));
            }
        }
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|mut frame| {
                    if let Some(trailers) = frame.trailers_mut() {
                        fix_status(trailers);
                    }
                    frame
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_size_status_becomes_grpc_gos() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("11"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("Error,%20decoded%20message%20length%20too%20large:%20found%202097210%20bytes,%20the%20limit%20is:%202097152%20bytes"),
        );
        fix_status(&mut headers);
        assert_eq!(headers["grpc-status"], "8");
        assert_eq!(
            headers["grpc-message"],
            "grpc:%20received%20message%20larger%20than%20max%20(2097210%20vs.%202097152)"
        );
        // Other statuses are left alone.
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("11"));
        headers.insert("grpc-message", HeaderValue::from_static("etcdserver:%20x"));
        fix_status(&mut headers);
        assert_eq!(headers["grpc-status"], "11");
    }
}

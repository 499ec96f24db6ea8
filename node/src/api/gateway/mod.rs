//! etcd's HTTP/JSON gateway (grpc-gateway v1, as etcd 3.5 serves it on the client port):
//! `POST /v3/kv/put` and every other route etcd's protos declare with `google.api.http`,
//! also under `/v3beta/`. A gateway call is a gRPC call: the JSON body becomes the
//! method's request message, which is sent through the same gRPC router clients use, in
//! process; so the transport invariant holds by construction (auth, admission, quota and
//! gRPC metrics see a gateway call like any other) and the gateway has no per-method code.
//!
//! What grpc-gateway does and this copies: the `Authorization` header and `Grpc-Metadata-*`
//! headers become gRPC metadata, `Grpc-Timeout` the deadline; an empty body is an empty
//! request and anything after the first JSON value is ignored; unknown fields are ignored;
//! answers use the protos' field names, int64 as strings, bytes as base64 and leave
//! default values out; a refused call is `{"error","code","message"}` with the HTTP status
//! grpc-gateway gives its gRPC code (`error::http_status`); a streaming method answers a
//! chunked stream of `{"result":...}` lines, which stays open while the gRPC stream does,
//! and reads any number of JSON requests from the body.

mod codec;
mod routes;

use std::sync::Arc;

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use futures::StreamExt;
use prost_reflect::DynamicMessage;
use serde::Serialize;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::server::TcpConnectInfo;
use tonic::Status;

use super::http::go_http_error;
use codec::{DynamicCodec, JsonReader};
use routes::Route;

/// Marks a gRPC call the gateway made, so the core sees its transport as HTTP.
#[derive(Clone, Copy, Debug)]
pub struct GatewayCall;

/// The gateway's routes over `grpc` (the client port's gRPC router). `max_request_bytes`
/// bounds the JSON a request may buffer before its message reaches the gRPC limits.
pub fn router(grpc: Router, max_request_bytes: usize) -> Router {
    let mut router = Router::new();
    for route in routes::all() {
        let route = Arc::new(route);
        for path in route.paths() {
            let (grpc, route) = (grpc.clone(), route.clone());
            router = router.route(
                &path,
                any(move |req: Request| call(grpc, route, max_request_bytes, req)),
            );
        }
    }
    router
}

/// Paths under `/v3/` that no route serves get grpc-gateway's 404; others Go's.
pub fn not_found(path: &str) -> Response {
    let text = if path.starts_with("/v3/") || path.starts_with("/v3beta/") {
        "Not Found"
    } else {
        "404 page not found"
    };
    go_http_error(StatusCode::NOT_FOUND, text)
}

async fn call(grpc: Router, route: Arc<Route>, max_request_bytes: usize, req: Request) -> Response {
    if req.method() != Method::POST {
        return go_http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let (parts, body) = req.into_parts();
    let mut reader = JsonReader::new(body, route.input.clone(), max_request_bytes);
    // grpc-gateway decodes the first request before it calls; a unary method's decoding
    // error is InvalidArgument, a streaming one's an untyped (Unknown) error.
    let first = match reader.next().await {
        Ok(first) => first,
        Err(e) if route.client_streaming => return unary_error(&Status::unknown(e.to_string())),
        Err(e) => return unary_error(&e.into_status()),
    };
    let requests = if route.client_streaming {
        futures::stream::iter(first)
            .chain(reader.into_stream())
            .boxed()
    } else {
        let only = first.unwrap_or_else(|| DynamicMessage::new(route.input.clone()));
        futures::stream::iter(Some(only)).boxed()
    };
    let mut request = tonic::Request::new(requests);
    *request.metadata_mut() = metadata(&parts.headers);
    if let Some(timeout) = parts
        .headers
        .get("grpc-timeout")
        .and_then(|t| t.to_str().ok())
        .and_then(super::grpc_timeout)
    {
        request.set_timeout(timeout);
    }
    request.extensions_mut().insert(GatewayCall);
    if let Some(info) = parts.extensions.get::<TcpConnectInfo>() {
        request.extensions_mut().insert(info.clone());
    }
    let mut client = tonic::client::Grpc::new(grpc)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    if let Err(e) = client.ready().await {
        return unary_error(&Status::unavailable(e.to_string()));
    }
    let codec = DynamicCodec::new(route.output.clone());
    let answer = client
        .streaming(request, route.grpc_path.clone(), codec)
        .await
        .map(tonic::Response::into_inner);
    let resp = match (answer, route.server_streaming) {
        (Ok(stream), false) => unary(stream).await,
        (Ok(stream), true) => streaming(stream),
        (Err(status), false) => unary_error(&status),
        (Err(status), true) => stream_error_response(&status),
    };
    with_grpc_metadata(resp)
}

/// grpc-gateway's forwarded request headers: `Authorization` as `authorization` metadata
/// (etcd reads a token there), `Grpc-Metadata-NAME` as `NAME`.
fn metadata(headers: &HeaderMap) -> MetadataMap {
    let mut md = MetadataMap::new();
    for (name, value) in headers {
        let key = match name.as_str() {
            "authorization" => "authorization",
            other => match other.strip_prefix("grpc-metadata-") {
                Some(key) => key,
                None => continue,
            },
        };
        let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_bytes()),
        ) else {
            continue;
        };
        md.append(key, value);
    }
    md
}

/// grpc-gateway forwards the gRPC response's header metadata; etcd's is always this.
fn with_grpc_metadata(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

async fn unary(mut stream: tonic::Streaming<DynamicMessage>) -> Response {
    match stream.message().await {
        Ok(Some(msg)) => json_response(StatusCode::OK, codec::to_json(&msg)),
        Ok(None) => unary_error(&Status::internal("empty response")),
        Err(status) => unary_error(&status),
    }
}

/// grpc-gateway v1's error body (`runtime.DefaultHTTPError`), empty strings left out.
#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    code: i32,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

fn unary_error(status: &Status) -> Response {
    let body = ErrorBody {
        error: status.message(),
        code: status.code() as i32,
        message: status.message(),
    };
    json_response(
        super::error::http_status(status.code()),
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// grpc-gateway v1's `StreamError`, the `error` of a stream's last line.
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    http_status: &'a str,
}

fn stream_error_line(status: &Status) -> Vec<u8> {
    let http = super::error::http_status(status.code());
    let error = StreamError {
        grpc_code: status.code() as i32,
        http_code: http.as_u16(),
        message: status.message(),
        http_status: http.canonical_reason().unwrap_or(""),
    };
    serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_default()
}

/// A stream refused before it opened: the error line with its HTTP status.
fn stream_error_response(status: &Status) -> Response {
    json_response(
        super::error::http_status(status.code()),
        stream_error_line(status),
    )
}

/// A streaming answer, sent as soon as the gRPC stream is open (a watch may stay silent
/// for long): one `{"result":...}` line per message, and an error line last if the
/// stream fails. Dropping the body (the client went away) ends the gRPC call.
fn streaming(stream: tonic::Streaming<DynamicMessage>) -> Response {
    let lines = futures::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
        match stream.message().await {
            Ok(Some(msg)) => Some((result_line(&msg), Some(stream))),
            Ok(None) => None,
            Err(status) => Some((stream_error_line(&status), None)),
        }
    });
    let body = Body::from_stream(lines.map(Ok::<_, std::convert::Infallible>));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn result_line(msg: &DynamicMessage) -> Vec<u8> {
    let mut line = b"{\"result\":".to_vec();
    line.extend(codec::to_json(msg));
    line.extend(b"}\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_and_grpc_metadata_headers_are_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("tok"));
        headers.insert("grpc-metadata-token", HeaderValue::from_static("t2"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-other", HeaderValue::from_static("x"));
        let md = metadata(&headers);
        assert_eq!(md.len(), 2);
        assert_eq!(
            md.get("authorization").map(|v| v.to_str().ok()),
            Some(Some("tok"))
        );
        assert_eq!(md.get("token").map(|v| v.to_str().ok()), Some(Some("t2")));
    }
}

//! `cairn bench --gateway`: the same put and range requests as JSON over HTTP/1.1 through
//! the HTTP/JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`), as curl, Patroni or etcd3gw
//! send them, so its cost can be set beside gRPC's on the same server. Each client keeps
//! one keep-alive connection of its own (HTTP/1.1 has one request in flight per
//! connection).

use anyhow::Context as _;
use base64::prelude::{Engine, BASE64_STANDARD};
use http_body_util::BodyExt as _;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// One client's connection to the gateway.
pub struct GatewayConn {
    sender: SendRequest<String>,
    host: String,
}

impl GatewayConn {
    /// Connects to `endpoint` (host:port or http://host:port).
    pub async fn connect(endpoint: &str) -> anyhow::Result<GatewayConn> {
        let host = endpoint
            .strip_prefix("http://")
            .unwrap_or(endpoint)
            .trim_end_matches('/')
            .to_string();
        let stream = tokio::net::TcpStream::connect(&host)
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {endpoint}"))?;
        tokio::spawn(conn);
        Ok(GatewayConn { sender, host })
    }

    /// POSTs a put of `key` with `value` (already base64), as JSON.
    pub async fn put(&mut self, key: &[u8], value_b64: &str) -> Result<(), tonic::Status> {
        let body = format!(
            r#"{{"key":"{}","value":"{value_b64}"}}"#,
            BASE64_STANDARD.encode(key)
        );
        self.post("/v3/kv/put", body).await
    }

    /// POSTs a range of `key`.
    pub async fn range(&mut self, key: &[u8], serializable: bool) -> Result<(), tonic::Status> {
        let body = format!(
            r#"{{"key":"{}","serializable":{serializable}}}"#,
            BASE64_STANDARD.encode(key)
        );
        self.post("/v3/kv/range", body).await
    }

    /// One request; a non-200 answer is an error carrying the gateway's body.
    async fn post(&mut self, path: &str, body: String) -> Result<(), tonic::Status> {
        let fail = |e: String| tonic::Status::unavailable(format!("gateway: {e}"));
        let req = http::Request::post(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| fail(e.to_string()))?;
        self.sender.ready().await.map_err(|e| fail(e.to_string()))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        if status != http::StatusCode::OK {
            return Err(tonic::Status::unknown(format!(
                "gateway answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(())
    }
}

//! JSON to and from etcd's messages, the way grpc-gateway v1's `JSONPb{OrigName: true}`
//! renders them (proto3 JSON with the protos' own field names: `ID`, `TTL`,
//! `create_revision`; int64 as strings; bytes as standard base64; default values left
//! out; enums by name), and the gRPC codec that carries those messages through the
//! in-process gRPC call.

use axum::body::{Body, BodyDataStream};
use futures::{Stream, StreamExt};
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, MessageDescriptor, ReflectMessage, SerializeOptions,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// A message as the gateway answers it.
pub fn to_json(msg: &DynamicMessage) -> Vec<u8> {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(true);
    let mut out = serde_json::Serializer::new(Vec::new());
    if let Err(e) = msg.serialize_with_options(&mut out, &options) {
        // Only a map key that is not a string could fail, and etcd's messages have none.
        tracing::error!(
            "gateway: encoding {} as JSON: {e}",
            msg.descriptor().full_name()
        );
    }
    out.into_inner()
}

/// Why a request body could not be read as the method's request.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Body(#[from] axum::Error),
    #[error("request body over {0} bytes")]
    TooLarge(usize),
}

impl ReadError {
    /// grpc-gateway's answer to a body it cannot decode.
    pub fn into_status(self) -> Status {
        match self {
            ReadError::TooLarge(_) => crate::core::Error::RequestTooLarge.into(),
            other => Status::invalid_argument(other.to_string()),
        }
    }
}

/// Reads a request body as a sequence of JSON values of one message type, as they arrive
/// (a watch's body may bring more requests later). Whitespace between values is skipped;
/// unknown fields are ignored, as etcd's gateway ignores them.
pub struct JsonReader {
    body: BodyDataStream,
    buf: Vec<u8>,
    body_ended: bool,
    input: MessageDescriptor,
    /// The most a single request may buffer.
    limit: usize,
}

impl JsonReader {
    pub fn new(body: Body, input: MessageDescriptor, max_request_bytes: usize) -> JsonReader {
        JsonReader {
            body: body.into_data_stream(),
            buf: Vec::new(),
            body_ended: false,
            input,
            // JSON's base64 makes bytes 4/3 as long, and quoting and names add more.
            limit: max_request_bytes.saturating_mul(2).max(64 * 1024),
        }
    }

    /// The next request, `None` once the body ended.
    pub async fn next(&mut self) -> Result<Option<DynamicMessage>, ReadError> {
        loop {
            let blank = self
                .buf
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            self.buf.drain(..blank);
            if self.buf.is_empty() && self.body_ended {
                return Ok(None);
            }
            if !self.buf.is_empty() {
                let mut values = serde_json::Deserializer::from_slice(&self.buf)
                    .into_iter::<serde_json::Value>();
                match values.next() {
                    Some(Ok(value)) => {
                        let used = values.byte_offset();
                        self.buf.drain(..used);
                        return Ok(Some(self.decode(value)?));
                    }
                    // Cut short by the end of what arrived so far: wait for more.
                    Some(Err(e)) if e.is_eof() && !self.body_ended => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => {}
                }
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), ReadError> {
        match self.body.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                if self.buf.len() + chunk.len() > self.limit {
                    return Err(ReadError::TooLarge(self.limit));
                }
                self.buf.extend_from_slice(&chunk);
            }
            None => self.body_ended = true,
        }
        Ok(())
    }

    fn decode(&self, value: serde_json::Value) -> Result<DynamicMessage, serde_json::Error> {
        let options = DeserializeOptions::new().deny_unknown_fields(false);
        DynamicMessage::deserialize_with_options(self.input.clone(), value, &options)
    }

    /// The remaining requests; a body that stops parsing ends them (grpc-gateway then
    /// closes the sending side of the stream, as at the body's end).
    pub fn into_stream(self) -> impl Stream<Item = DynamicMessage> + Send + 'static {
        futures::stream::unfold(self, |mut reader| async move {
            match reader.next().await {
                Ok(next) => next.map(|msg| (msg, reader)),
                Err(e) => {
                    tracing::debug!("gateway: stream request not read: {e}");
                    None
                }
            }
        })
    }
}

/// Protobuf encoding of dynamic messages, for the gateway's in-process gRPC calls.
#[derive(Clone)]
pub struct DynamicCodec {
    output: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(output: MessageDescriptor) -> DynamicCodec {
        DynamicCodec { output }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.output.clone())
    }
}

pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("gateway: encoding the request: {e}")))
    }
}

pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("gateway: decoding the answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::gateway::routes;

    fn input(path: &str) -> MessageDescriptor {
        routes::all()
            .into_iter()
            .find(|r| r.http_paths.iter().any(|p| p == path))
            .map(|r| r.input)
            .expect("routed")
    }

    async fn read_all(path: &str, body: &'static str) -> Result<Vec<DynamicMessage>, ReadError> {
        let mut reader = JsonReader::new(Body::from(body), input(path), 1 << 20);
        let mut all = Vec::new();
        while let Some(msg) = reader.next().await? {
            all.push(msg);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn int64_as_string_or_number_and_enums_by_name_or_number() {
        let msgs = read_all(
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":3,"mod_revision":"7"}],
                "success":[{"request_put":{"key":"Zm9v","lease":12}}]}"#,
        )
        .await
        .expect("parses");
        let json = String::from_utf8(to_json(&msgs[0])).expect("utf-8");
        // EQUAL is the default and left out; numbers become names; int64 become strings.
        assert_eq!(
            json,
            r#"{"compare":[{"target":"VALUE","key":"Zm9v","mod_revision":"7"}],"success":[{"request_put":{"key":"Zm9v","lease":"12"}}]}"#
        );
    }

    #[tokio::test]
    async fn bodies_hold_any_number_of_values_and_unknown_fields_are_ignored() {
        let msgs = read_all("/v3/kv/put", " ").await.expect("empty is fine");
        assert!(msgs.is_empty());
        let msgs = read_all(
            "/v3/watch",
            "{\"create_request\":{\"key\":\"YQ==\"}}\n{\"progress_request\":{}} {\"bogus\":1}",
        )
        .await
        .expect("three values");
        assert_eq!(msgs.len(), 3);
        let err = read_all("/v3/kv/put", r#"{"key":"#)
            .await
            .expect_err("cut short");
        assert!(err.to_string().contains("EOF"), "{err}");
        let err = read_all("/v3/kv/put", r#"{"key":"!!"}"#)
            .await
            .expect_err("not base64");
        assert_eq!(err.into_status().code(), tonic::Code::InvalidArgument);
    }
}

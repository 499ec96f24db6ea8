//! The gRPC codec of every cairn service (set with `codec_path` in `build.rs`): prost's,
//! except that
//! - a `TxnRequest` is decoded with [`crate::proto::nesting`], so nested txns are accepted
//!   as deep as etcd accepts them (prost alone stops at about 49 levels) and deeper ones get
//!   etcd's answer instead of a decoder error;
//! - malformed bytes get grpc-go's answer: `Internal`, `grpc: error unmarshalling request: ...`;
//! - what it encodes is a [`Reply`]: any prost message, or a watch response whose events
//!   were encoded once for all watchers (the Watch service's server is written by hand for
//!   that, see `api::watch::server`).
//!
//! Which depth etcd accepts depends on `--max-txn-ops`, which the generated services cannot
//! hand to a codec (they build it with `Default`), so [`set_max_txn_ops`] records it once at
//! start-up.

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::bytes::{Buf, BufMut};
use prost::{EncodeError, Message};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::core::Error;
use crate::proto::etcdserverpb::TxnRequest;
use crate::proto::nesting::{self, NestingError, MAX_TXN_DEPTH};

/// `--max-txn-ops`; etcd's default until [`set_max_txn_ops`] runs.
static MAX_TXN_OPS: AtomicUsize = AtomicUsize::new(128);

/// Records `--max-txn-ops` for decoding nested txns.
pub fn set_max_txn_ops(max_txn_ops: usize) {
    MAX_TXN_OPS.store(max_txn_ops, Ordering::Relaxed);
}

/// A `TxnRequest` nested deeper than this can never pass etcd's op budget (each level with
/// a nested txn spends at least one op of `--max-txn-ops`, and only an empty innermost txn
/// spends none), so decoding stops there with etcd's answer.
fn txn_depth_limit() -> usize {
    MAX_TXN_OPS.load(Ordering::Relaxed).saturating_add(1)
}

/// Decodes a nested txn, answering as etcd does when it is too deep.
pub fn decode_txn(bytes: &[u8]) -> Result<TxnRequest, Status> {
    let by_ops = txn_depth_limit();
    nesting::decode_txn(bytes, by_ops).map_err(|e| match e {
        NestingError::TooDeep(_) if by_ops <= MAX_TXN_DEPTH => Error::TooManyOps.into(),
        NestingError::TooDeep(limit) => Error::TxnTooDeep(limit).into(),
        malformed => unmarshal_error(malformed),
    })
}

/// grpc-go's answer to a request it cannot unmarshal.
fn unmarshal_error(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("grpc: error unmarshalling request: {e}"))
}

/// A response as the codec writes it.
pub trait Reply {
    fn encode_reply(self, buf: &mut impl BufMut) -> Result<(), EncodeError>;
}

impl<M: Message> Reply for M {
    fn encode_reply(self, buf: &mut impl BufMut) -> Result<(), EncodeError> {
        self.encode(buf)
    }
}

/// prost encoding and decoding, as `tonic_prost::ProstCodec`, with the changes above.
#[derive(Debug, Clone)]
pub struct EtcdCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for EtcdCodec<T, U> {
    fn default() -> Self {
        EtcdCodec(PhantomData)
    }
}

impl<T, U> Codec for EtcdCodec<T, U>
where
    T: Reply + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = EtcdEncoder<T>;
    type Decoder = EtcdDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        EtcdEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        EtcdDecoder(PhantomData)
    }
}

#[derive(Debug, Clone)]
pub struct EtcdEncoder<T>(PhantomData<T>);

impl<T: Reply> Encoder for EtcdEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows as needed, so this cannot run out of space.
        item.encode_reply(buf)
            .map_err(|e| Status::internal(format!("encoding a response: {e}")))
    }
}

#[derive(Debug, Clone)]
pub struct EtcdDecoder<U>(PhantomData<U>);

impl<U: Message + Default + 'static> Decoder for EtcdDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() == TypeId::of::<TxnRequest>() {
            let bytes = buf.copy_to_bytes(buf.remaining());
            let txn: Box<dyn Any> = Box::new(decode_txn(&bytes)?);
            return txn
                .downcast::<U>()
                .map(|u| Some(*u))
                .map_err(|_| Status::internal("txn decoder type mismatch"));
        }
        U::decode(buf).map(Some).map_err(unmarshal_error)
    }
}

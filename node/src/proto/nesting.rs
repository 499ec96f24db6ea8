//! Decoding of nested txns past prost's recursion limit.
//!
//! prost refuses messages nested more than 100 levels deep. A nested txn costs two levels
//! (`TxnRequest` -> `RequestOp` -> `TxnRequest`), so prost alone stops at about 49 nested
//! txns, while etcd 3.5 accepts as many as `--max-txn-ops` allows (128 by default: each
//! level spends its largest op list from the budget, see `api/validate.rs`). This module
//! decodes the two recursive messages by hand, with an explicit depth bound, and hands
//! every other message (compares, range/put/delete requests, unknown fields) to prost with
//! a fresh budget: those are not recursive, so prost's limit still guards them (and the
//! nested groups of unknown fields).
//!
//! The depth bound also bounds everything downstream that recurses over a txn (validation,
//! apply, encoding the response, dropping the request), so it must stay small enough for
//! those to fit a thread's stack; [`MAX_TXN_DEPTH`] is measured to.
//!
//! Repeated occurrences of `request_txn` in one `RequestOp` (which prost would merge) keep
//! the last one; no client sends that.

use prost::encoding::{check_wire_type, decode_key, decode_varint, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::cairnpb::{command::Cmd, Command};
use super::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};

/// The deepest txn nesting cairn decodes, counting the outer txn as 1, whatever
/// `--max-txn-ops` says (etcd's only bound is the request size). Far above what etcd
/// accepts by default (128), and low enough that validating, applying, encoding and dropping
/// such a txn fits easily in a 2 MiB tokio worker stack of a debug build.
pub const MAX_TXN_DEPTH: usize = 512;

/// Why a nested txn could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum NestingError {
    /// More txns nested inside each other than the caller allows.
    #[error("txn nested deeper than {0} levels")]
    TooDeep(usize),
    /// A length-delimited field longer than what follows it.
    #[error("buffer underflow")]
    Truncated,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Decodes a `TxnRequest` nested at most `max_depth` txns deep (the outer one is depth 1).
pub fn decode_txn(buf: &[u8], max_depth: usize) -> Result<TxnRequest, NestingError> {
    txn(buf, 1, max_depth.min(MAX_TXN_DEPTH))
}

/// Decodes a Raft command; its txn may be nested up to [`MAX_TXN_DEPTH`] (anything the API
/// let through).
pub fn decode_command(mut buf: &[u8]) -> Result<Command, NestingError> {
    let mut command = Command::default();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag == 1 {
            let bytes = length_delimited(&mut buf, wire_type)?;
            command.cmd = Some(Cmd::Txn(decode_txn(bytes, MAX_TXN_DEPTH)?));
        } else {
            command.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(command)
}

fn txn(mut buf: &[u8], depth: usize, max_depth: usize) -> Result<TxnRequest, NestingError> {
    if depth > max_depth {
        return Err(NestingError::TooDeep(max_depth));
    }
    let mut txn = TxnRequest::default();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            2 => txn.success.push(op(
                length_delimited(&mut buf, wire_type)?,
                depth,
                max_depth,
            )?),
            3 => txn.failure.push(op(
                length_delimited(&mut buf, wire_type)?,
                depth,
                max_depth,
            )?),
            // Compares and unknown fields.
            _ => txn.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?,
        }
    }
    Ok(txn)
}

fn op(mut buf: &[u8], depth: usize, max_depth: usize) -> Result<RequestOp, NestingError> {
    let mut op = RequestOp::default();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag == 4 {
            let inner = length_delimited(&mut buf, wire_type)?;
            op.request = Some(Request::RequestTxn(txn(inner, depth + 1, max_depth)?));
        } else {
            op.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(op)
}

/// The payload of a length-delimited field, advancing `buf` past it.
fn length_delimited<'a>(buf: &mut &'a [u8], wire_type: WireType) -> Result<&'a [u8], NestingError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = usize::try_from(decode_varint(buf)?).map_err(|_| NestingError::Truncated)?;
    if len > buf.len() {
        return Err(NestingError::Truncated);
    }
    let (payload, rest) = buf.split_at(len);
    *buf = rest;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{Compare, PutRequest};

    /// `depth` txns nested through their success branches, a put at the bottom.
    pub(crate) fn nested(depth: usize) -> TxnRequest {
        let mut txn = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        for _ in 1..depth {
            txn = TxnRequest {
                failure: vec![RequestOp {
                    request: Some(Request::RequestTxn(txn)),
                }],
                ..Default::default()
            };
        }
        txn
    }

    #[test]
    fn round_trips_what_prost_cannot_decode() {
        let txn = nested(200);
        let bytes = txn.encode_to_vec();
        assert!(
            TxnRequest::decode(bytes.as_slice()).is_err(),
            "prost's limit"
        );
        let back = decode_txn(&bytes, MAX_TXN_DEPTH).expect("decodes");
        assert!(back == txn);
        let command = Command {
            cmd: Some(Cmd::Txn(txn)),
        };
        let back = decode_command(&command.encode_to_vec()).expect("command decodes");
        assert!(back == command);
    }

    #[test]
    fn depth_is_bounded() {
        let bytes = nested(11).encode_to_vec();
        assert!(decode_txn(&bytes, 11).is_ok());
        assert!(matches!(
            decode_txn(&bytes, 10),
            Err(NestingError::TooDeep(10))
        ));
    }

    /// The deepest txn cairn accepts must be safe to encode, decode and drop on a
    /// tokio worker's 2 MiB stack, in a debug build (whose frames are the largest).
    #[test]
    fn the_deepest_txn_fits_a_worker_stack() {
        let worker = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let bytes = nested(MAX_TXN_DEPTH).encode_to_vec();
                let txn = decode_txn(&bytes, usize::MAX).expect("decodes");
                assert!(txn.encoded_len() == bytes.len());
                let mut deeper = TxnRequest::default();
                deeper.success.push(RequestOp {
                    request: Some(Request::RequestTxn(txn)),
                });
                assert!(matches!(
                    decode_txn(&deeper.encode_to_vec(), usize::MAX),
                    Err(NestingError::TooDeep(MAX_TXN_DEPTH))
                ));
            })
            .expect("spawn");
        assert!(worker.join().is_ok());
    }

    #[test]
    fn malformed_bytes_are_errors() {
        for bad in [
            &b"\xff\xff"[..],
            b"\x12\x05ab",
            b"\x10\x01",
            b"\x12\x02\x22\x05",
        ] {
            assert!(decode_txn(bad, 10).is_err(), "{bad:?}");
        }
        // Unknown fields are skipped, as prost does.
        let mut bytes = nested(2).encode_to_vec();
        bytes.extend([0xa0, 0x06, 0x01]); // field 100, varint 1
        assert!(decode_txn(&bytes, 10).is_ok());
    }
}

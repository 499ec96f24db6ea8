//! The pipeline's pluggable decisions: authentication (who is calling), authorization (may
//! they do this) and admission (may this write go ahead, possibly reshaped). The defaults
//! allow everything; etcd's auth and the WebAssembly plugins implement these traits, and
//! because the core calls them, every transport is covered by the same decision.
//!
//! Hooks run before a proposal, never in apply, so replicas cannot diverge because of one.

use async_trait::async_trait;

use super::context::{Principal, RequestContext};
use super::Error;
use crate::proto::etcdserverpb::{
    request_op::Request, LeaseTimeToLiveRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest,
};

/// What a request asks to do, as authorization sees it. Put and DeleteRange arrive as
/// one-op txns, as they travel through Raft.
#[derive(Clone, Copy, Debug)]
pub enum Operation<'a> {
    Range(&'a RangeRequest),
    Txn(&'a TxnRequest),
    Compact,
    Watch(&'a WatchCreateRequest),
    LeaseGrant,
    LeaseRevoke(i64),
    LeaseKeepAlive(i64),
    LeaseTimeToLive(&'a LeaseTimeToLiveRequest),
    LeaseLeases,
    /// Cluster, maintenance and auth management calls, by RPC name (`MemberList`,
    /// `Status`, `Snapshot`, `UserAdd`...).
    Admin(&'static str),
    /// etcd's `UserGet` of this user name: a user may read itself.
    UserGet(&'a str),
    /// etcd's `RoleGet` of this role: a user may read a role it has.
    RoleGet(&'a str),
}

/// Read or write access to a key range (etcd's `range_end` convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAccess<'a> {
    pub write: bool,
    pub key: &'a [u8],
    pub range_end: &'a [u8],
}

impl<'a> Operation<'a> {
    /// Every key range the operation reads or writes, as etcd's `checkTxnAuth` walks a txn:
    /// compares and ranges read, puts write, deletes write (and read with `prev_kv`).
    pub fn key_access(&self) -> Vec<KeyAccess<'a>> {
        let mut out = Vec::new();
        match *self {
            Operation::Range(r) => out.push(read(&r.key, &r.range_end)),
            Operation::Watch(w) => out.push(read(&w.key, &w.range_end)),
            Operation::Txn(t) => txn_access(t, &mut out),
            _ => {}
        }
        out
    }
}

fn read<'a>(key: &'a [u8], range_end: &'a [u8]) -> KeyAccess<'a> {
    KeyAccess {
        write: false,
        key,
        range_end,
    }
}

fn txn_access<'a>(t: &'a TxnRequest, out: &mut Vec<KeyAccess<'a>>) {
    out.extend(t.compare.iter().map(|c| read(&c.key, &c.range_end)));
    for op in t.success.iter().chain(&t.failure) {
        op_access(op, out);
    }
}

fn op_access<'a>(op: &'a RequestOp, out: &mut Vec<KeyAccess<'a>>) {
    match &op.request {
        Some(Request::RequestRange(r)) => out.push(read(&r.key, &r.range_end)),
        Some(Request::RequestPut(p)) => {
            out.push(KeyAccess {
                write: true,
                key: &p.key,
                range_end: &[],
            });
            if p.prev_kv {
                out.push(read(&p.key, &[]));
            }
        }
        Some(Request::RequestDeleteRange(d)) => {
            out.push(KeyAccess {
                write: true,
                key: &d.key,
                range_end: &d.range_end,
            });
            if d.prev_kv {
                out.push(read(&d.key, &d.range_end));
            }
        }
        Some(Request::RequestTxn(t)) => txn_access(t, out),
        None => {}
    }
}

/// Establishes who is calling from the request's credentials. `Ok(None)`: none of the
/// credentials is this authenticator's to judge, so the next one decides; `Err`: they are
/// its own and invalid (etcd's `invalid auth token`).
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// Whether it judges credentials at all right now (an auth plugin set may be reloaded
    /// away). With none enabled, authentication is off and credentials are ignored.
    fn enabled(&self) -> bool {
        true
    }

    async fn authenticate(&self, ctx: &RequestContext) -> Result<Option<Principal>, Error>;
}

/// Decides whether a principal may perform an operation.
#[async_trait]
pub trait Authorizer: Send + Sync {
    async fn authorize(&self, principal: &Principal, op: &Operation<'_>) -> Result<(), Error>;
}

/// Sees every write before it is proposed: allows it as is, refuses it with a reason
/// ([`Error::Denied`]), or returns a reshaped txn.
#[async_trait]
pub trait Admission: Send + Sync {
    async fn admit(&self, ctx: &RequestContext, txn: TxnRequest) -> Result<TxnRequest, Error>;
}

/// The hooks a core runs with. A hook left out allows everything and costs nothing: no
/// call is made.
///
/// Several authenticators (etcd's built-in auth, auth plugins) are tried in order and the
/// first that claims the credentials names the principal; a caller none claims is
/// [`Principal::anonymous`]. Every authorizer must allow a request: an auth plugin beside
/// etcd's RBAC can only narrow what RBAC permits, and a plugin alone decides alone.
#[derive(Default)]
pub struct Hooks {
    pub authenticators: Vec<Box<dyn Authenticator>>,
    pub authorizers: Vec<Box<dyn Authorizer>>,
    pub admission: Option<Box<dyn Admission>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{Compare, DeleteRangeRequest, PutRequest};

    fn op(request: Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    #[test]
    fn txn_access_walks_compares_branches_and_nested_txns() {
        let nested = TxnRequest {
            failure: vec![op(Request::RequestDeleteRange(DeleteRangeRequest {
                key: b"d".to_vec(),
                range_end: b"e".to_vec(),
                prev_kv: true,
            }))],
            ..Default::default()
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                ..Default::default()
            }],
            success: vec![op(Request::RequestPut(PutRequest {
                key: b"p".to_vec(),
                ..Default::default()
            }))],
            failure: vec![op(Request::RequestTxn(nested))],
        };
        let got: Vec<(bool, &[u8], &[u8])> = Operation::Txn(&txn)
            .key_access()
            .into_iter()
            .map(|a| (a.write, a.key, a.range_end))
            .collect();
        let want: Vec<(bool, &[u8], &[u8])> = vec![
            (false, b"c", b""),
            (true, b"p", b""),
            (true, b"d", b"e"),
            (false, b"d", b"e"),
        ];
        assert_eq!(got, want);
    }
}

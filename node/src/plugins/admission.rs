//! The admission hook: each client write, before it is proposed, goes through the admission
//! plugins in order. A plugin sees only the ops under its prefixes (and is not called when
//! there are none); it allows, denies with a reason, or, when configured with
//! `allow-rewrite`, rewrites put values. A plugin failure (trap, timeout, memory limit,
//! nonsensical answer) is counted, logged and answered by the plugin's failure policy.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::runtime::{
    CallFailure, Decision, DeleteOp, Principal, PrincipalSource, PutOp, WriteOp, WriteRequest,
};
use super::{LoadedPlugin, Plugins};
use crate::config::{DenyCode, FailurePolicy, Hook};
use crate::core::hooks::Admission;
use crate::core::Error;
use crate::core::{self as core_ctx, RequestContext};
use crate::proto::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};

const HOOK: &str = Hook::Admission.name();

/// The core's [`Admission`] hook, served by the plugins loaded at the time of each write.
pub struct PluginAdmission {
    plugins: Arc<Plugins>,
}

impl PluginAdmission {
    pub fn new(plugins: Arc<Plugins>) -> PluginAdmission {
        PluginAdmission { plugins }
    }
}

#[async_trait]
impl Admission for PluginAdmission {
    async fn admit(&self, ctx: &RequestContext, mut txn: TxnRequest) -> Result<TxnRequest, Error> {
        let set = self.plugins.current();
        let mut serving = set.serving(Hook::Admission).peekable();
        if serving.peek().is_none() {
            return Ok(txn);
        }
        let principal = principal(ctx.principal());
        for plugin in serving {
            admit_one(plugin, &principal, &mut txn).await?;
        }
        Ok(txn)
    }
}

/// Runs one plugin over `txn`, rewriting it in place if the plugin may and does.
async fn admit_one(
    plugin: &LoadedPlugin,
    principal: &Principal,
    txn: &mut TxnRequest,
) -> Result<(), Error> {
    let cfg = &plugin.config;
    // Flat indices (in walk order) of the ops this plugin covers, and their WIT form.
    let mut covered = Vec::new();
    let mut ops = Vec::new();
    let mut index = 0usize;
    walk(txn, &mut |op| {
        if let Some(wop) = covered_op(op, &cfg.prefixes, cfg.values) {
            covered.push(index);
            ops.push(wop);
        }
        index += 1;
    });
    if ops.is_empty() {
        return Ok(());
    }
    let request = WriteRequest {
        principal: principal.clone(),
        ops,
    };
    let started = Instant::now();
    let (outcome, usage) = plugin.instances.check(plugin.limits(), &request).await;
    let outcome = outcome.and_then(|d| check_rewrite(d, cfg.allow_rewrite, &request, &covered));
    plugin.record(
        HOOK,
        started,
        usage,
        match &outcome {
            Ok(Verdict::Allow) => Ok("allow"),
            Ok(Verdict::Deny(_)) => Ok("deny"),
            Ok(Verdict::Rewrite(_)) => Ok("rewrite"),
            Err(failure) => Err(failure),
        },
    );
    match outcome {
        Ok(Verdict::Allow) => Ok(()),
        Ok(Verdict::Deny(reason)) => Err(refusal(
            cfg.deny_code,
            format!("plugin {}: {reason}", cfg.name),
        )),
        Ok(Verdict::Rewrite(values)) => {
            apply_rewrites(txn, values);
            Ok(())
        }
        Err(failure) => match cfg.failure_policy {
            FailurePolicy::FailOpen => {
                tracing::warn!(plugin = %cfg.name, error = %failure, "admission plugin failed; write allowed (fail-open)");
                Ok(())
            }
            FailurePolicy::FailClosed => {
                tracing::warn!(plugin = %cfg.name, error = %failure, "admission plugin failed; write refused (fail-closed)");
                Err(refusal(
                    cfg.deny_code,
                    format!(
                        "plugin {}: {failure} (write refused: fail-closed)",
                        cfg.name
                    ),
                ))
            }
        },
    }
}

fn refusal(code: DenyCode, message: String) -> Error {
    match code {
        DenyCode::PermissionDenied => Error::Denied(message),
        DenyCode::FailedPrecondition => Error::Refused(message),
    }
}

/// A plugin's answer after the host checked it.
#[derive(Debug, PartialEq)]
enum Verdict {
    Allow,
    Deny(String),
    /// New values by flat op index.
    Rewrite(Vec<(usize, Vec<u8>)>),
}

/// Accepts a rewrite only when configured and when every index names a covered put.
fn check_rewrite(
    decision: Decision,
    allowed: bool,
    request: &WriteRequest,
    covered: &[usize],
) -> Result<Verdict, CallFailure> {
    let rewrites = match decision {
        Decision::Allow => return Ok(Verdict::Allow),
        Decision::Deny(reason) => return Ok(Verdict::Deny(reason)),
        Decision::Rewrite(r) => r,
    };
    if !allowed {
        return Err(CallFailure::BadAnswer(
            "rewrote values but allow-rewrite is off".into(),
        ));
    }
    rewrites
        .into_iter()
        .map(|r| {
            let i = usize::try_from(r.index).unwrap_or(usize::MAX);
            match (request.ops.get(i), covered.get(i)) {
                (Some(WriteOp::Put(_)), Some(&flat)) => Ok((flat, r.value)),
                _ => Err(CallFailure::BadAnswer(format!(
                    "rewrite of op {} which is not a put it was shown",
                    r.index
                ))),
            }
        })
        .collect::<Result<_, _>>()
        .map(Verdict::Rewrite)
}

fn apply_rewrites(txn: &mut TxnRequest, mut values: Vec<(usize, Vec<u8>)>) {
    let mut index = 0usize;
    walk_mut(txn, &mut |op| {
        if let Some(Request::RequestPut(put)) = &mut op.request {
            if let Some(pos) = values.iter().position(|(i, _)| *i == index) {
                put.value = values.swap_remove(pos).1;
            }
        }
        index += 1;
    });
}

/// The WIT form of `op` if it is a put or delete the prefixes cover.
fn covered_op(op: &RequestOp, prefixes: &[Vec<u8>], values: bool) -> Option<WriteOp> {
    match &op.request {
        Some(Request::RequestPut(p)) if covers(prefixes, &p.key, &[]) => {
            Some(WriteOp::Put(PutOp {
                key: p.key.clone(),
                value: values.then(|| p.value.clone()),
                value_size: p.value.len() as u64,
                lease: p.lease,
                prev_kv: p.prev_kv,
                ignore_value: p.ignore_value,
                ignore_lease: p.ignore_lease,
            }))
        }
        Some(Request::RequestDeleteRange(d)) if covers(prefixes, &d.key, &d.range_end) => {
            Some(WriteOp::Delete(DeleteOp {
                key: d.key.clone(),
                range_end: d.range_end.clone(),
                prev_kv: d.prev_kv,
            }))
        }
        _ => None,
    }
}

/// Whether the key (or range [key, range_end)) touches any prefix; no prefixes cover all.
fn covers(prefixes: &[Vec<u8>], key: &[u8], range_end: &[u8]) -> bool {
    if prefixes.is_empty() {
        return true;
    }
    prefixes.iter().any(|p| {
        if key.starts_with(p) {
            return true;
        }
        // A range starting before the prefix reaches into it if it ends past the prefix
        // (an end of "\0" means "to the end of the keyspace").
        !range_end.is_empty()
            && key < p.as_slice()
            && (range_end == [0] || range_end > p.as_slice())
    })
}

/// Visits every put and delete of a txn, both branches and nested txns, in a fixed order.
fn walk(txn: &TxnRequest, f: &mut impl FnMut(&RequestOp)) {
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(Request::RequestTxn(t)) => walk(t, f),
            Some(Request::RequestPut(_) | Request::RequestDeleteRange(_)) => f(op),
            _ => {}
        }
    }
}

/// [`walk`], with mutable access, in the same order.
fn walk_mut(txn: &mut TxnRequest, f: &mut impl FnMut(&mut RequestOp)) {
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        match &mut op.request {
            Some(Request::RequestTxn(t)) => walk_mut(t, f),
            Some(Request::RequestPut(_) | Request::RequestDeleteRange(_)) => f(op),
            _ => {}
        }
    }
}

/// The WIT form of the core's principal (anonymous when authentication has not run).
pub(super) fn principal(p: Option<&core_ctx::Principal>) -> Principal {
    let Some(p) = p else {
        return Principal {
            name: String::new(),
            source: PrincipalSource::Anonymous,
            roles: Vec::new(),
        };
    };
    let source = match &p.source {
        core_ctx::PrincipalSource::Anonymous => PrincipalSource::Anonymous,
        core_ctx::PrincipalSource::Internal => PrincipalSource::Internal,
        core_ctx::PrincipalSource::User { .. } => PrincipalSource::User,
        core_ctx::PrincipalSource::ClientCert => PrincipalSource::ClientCert,
        core_ctx::PrincipalSource::Plugin(name) => PrincipalSource::Plugin(name.clone()),
    };
    Principal {
        name: p.name.clone(),
        source,
        roles: p.roles.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::runtime::Rewrite;
    use super::*;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};

    fn put(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                prev_kv: false,
            })),
        }
    }

    #[test]
    fn prefixes_cover_keys_and_overlapping_ranges() {
        let p = vec![b"/json/".to_vec()];
        let cases: &[(&str, &str, bool)] = &[
            ("/json/a", "", true),
            ("/jsonx", "", false),
            ("/other", "", false),
            ("/a", "/k", true), // [/a, /k) contains /json/
            ("/a", "/b", false),
            ("/", "\0", true),
            ("/json/", "/json0", true),
        ];
        for (key, end, want) in cases {
            assert_eq!(
                covers(&p, key.as_bytes(), end.as_bytes()),
                *want,
                "{key} {end}"
            );
        }
        assert!(covers(&[], b"anything", b""));
    }

    #[test]
    fn rewrites_land_on_the_covered_puts_in_walk_order() {
        let nested = TxnRequest {
            success: vec![put("/json/n", "old")],
            ..Default::default()
        };
        let mut txn = TxnRequest {
            success: vec![put("/other", "x"), put("/json/a", "old")],
            failure: vec![
                del("/json/d", ""),
                RequestOp {
                    request: Some(Request::RequestTxn(nested)),
                },
            ],
            ..Default::default()
        };
        let prefixes = vec![b"/json/".to_vec()];
        let mut covered = Vec::new();
        let mut ops = Vec::new();
        let mut i = 0;
        walk(&txn, &mut |op| {
            if let Some(w) = covered_op(op, &prefixes, true) {
                covered.push(i);
                ops.push(w);
            }
            i += 1;
        });
        assert_eq!(covered, vec![1, 2, 3]);
        let request = WriteRequest {
            principal: principal(None),
            ops,
        };
        let decision = Decision::Rewrite(vec![
            Rewrite {
                index: 0,
                value: b"A".to_vec(),
            },
            Rewrite {
                index: 2,
                value: b"N".to_vec(),
            },
        ]);
        // Refused unless configured, and a rewrite of a delete is nonsense.
        assert!(check_rewrite(decision.clone(), false, &request, &covered).is_err());
        let bad = Decision::Rewrite(vec![Rewrite {
            index: 1,
            value: vec![],
        }]);
        assert!(check_rewrite(bad, true, &request, &covered).is_err());
        let Ok(Verdict::Rewrite(values)) = check_rewrite(decision, true, &request, &covered) else {
            panic!("valid rewrite refused");
        };
        apply_rewrites(&mut txn, values);
        let value = |op: &RequestOp| match &op.request {
            Some(Request::RequestPut(p)) => p.value.clone(),
            Some(Request::RequestTxn(t)) => match &t.success[0].request {
                Some(Request::RequestPut(p)) => p.value.clone(),
                _ => vec![],
            },
            _ => vec![],
        };
        assert_eq!(value(&txn.success[0]), b"x");
        assert_eq!(value(&txn.success[1]), b"A");
        assert_eq!(value(&txn.failure[1]), b"N");
    }

    #[test]
    fn denials_take_the_configured_code() {
        assert!(
            matches!(refusal(DenyCode::PermissionDenied, "m".into()), Error::Denied(m) if m == "m")
        );
        assert!(matches!(
            refusal(DenyCode::FailedPrecondition, "m".into()),
            Error::Refused(_)
        ));
    }
}

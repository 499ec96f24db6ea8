//! etcd's auth as the core's [`Authenticator`] and [`Authorizer`], beside the auth
//! plugins'. Authentication: a `token` is etcd's simple token or JWT, as `--auth-token`
//! selects (whether auth is enabled or not, as etcd looks every token up: an unknown,
//! expired or badly signed one is `invalid auth token`); without one,
//! with `--client-cert-auth`, the verified client certificate's common name is the user
//! (etcd's `AuthInfoFromTLS`). Authorization follows etcd 3.5: key ranges for KV, txn
//! compares and ops and watches (`apply_auth.go`), write access to every key attached to a
//! revoked lease (and to the lease a put attaches to), the root role for the maintenance
//! calls etcd guards (`Defragment`, `Snapshot`, `Hash`, `HashKV`) and the auth management
//! calls, except a user reading itself or a role it has.

use std::sync::Arc;

use async_trait::async_trait;

use super::{AuthStore, Caller};
use crate::core::hooks::{Authenticator, Authorizer};
use crate::core::{Error, Operation, Principal, PrincipalSource, RequestContext};
use crate::mvcc::Mvcc;
use crate::proto::etcdserverpb::{request_op::Request, TxnRequest};

/// Maintenance calls that need the root role when auth is enabled (etcd's
/// `authMaintenanceServer`, which answers its errors unconverted).
const MAINTENANCE_ADMIN_ONLY: &[&str] = &["Defragment", "Snapshot", "Hash", "HashKV"];

/// Auth management calls that need the root role (etcd's `needAdminPermission`).
const ADMIN_ONLY: &[&str] = &[
    "AuthEnable",
    "AuthDisable",
    "AuthStatus",
    "UserAdd",
    "UserDelete",
    "UserChangePassword",
    "UserGrantRole",
    "UserRevokeRole",
    "UserList",
    "RoleAdd",
    "RoleDelete",
    "RoleGrantPermission",
    "RoleRevokePermission",
    "RoleList",
];

/// etcd's RBAC in the core's pipeline.
pub struct Rbac {
    store: Arc<AuthStore>,
    /// The keys attached to a lease, for lease revokes.
    mvcc: Arc<Mvcc>,
    /// `--client-cert-auth`: a verified certificate's common name names the caller.
    client_cert_auth: bool,
}

impl Rbac {
    pub fn new(store: Arc<AuthStore>, mvcc: Arc<Mvcc>, client_cert_auth: bool) -> Rbac {
        Rbac {
            store,
            mvcc,
            client_cert_auth,
        }
    }

    /// etcd's `AuthInfo` of a principal: a token's revision (a simple token is as new as
    /// the store, a JWT as its claim), a certificate as new as the store; no credentials is
    /// revision 0.
    fn caller(&self, principal: &Principal) -> Caller {
        let revision = match principal.source {
            PrincipalSource::Anonymous | PrincipalSource::Internal => 0,
            PrincipalSource::User { auth_revision } => auth_revision,
            PrincipalSource::ClientCert | PrincipalSource::Plugin(_) => self.store.revision(),
        };
        Caller {
            name: principal.name.clone(),
            revision,
        }
    }

    fn keys(&self, caller: &Caller, op: &Operation<'_>) -> Result<(), Error> {
        for access in op.key_access() {
            self.store
                .is_op_permitted(caller, access.key, access.range_end, access.write)?;
        }
        Ok(())
    }

    /// Write access to every key attached to `lease` (etcd's `checkLeasePuts`).
    fn lease_keys(&self, caller: &Caller, lease: i64) -> Result<(), Error> {
        if lease == 0 || !self.store.is_enabled() {
            return Ok(());
        }
        let keys = self.mvcc.lease_keys(lease)?;
        for key in keys {
            self.store.is_op_permitted(caller, &key, &[], true)?;
        }
        Ok(())
    }
}

/// The lease of a lone put: etcd checks the lease's keys for `Put`, which travels here
/// as a one-op txn.
fn put_lease(txn: &TxnRequest) -> i64 {
    match (
        txn.compare.is_empty(),
        txn.success.as_slice(),
        txn.failure.is_empty(),
    ) {
        (true, [op], true) => match &op.request {
            Some(Request::RequestPut(put)) if !put.ignore_lease => put.lease,
            _ => 0,
        },
        _ => 0,
    }
}

#[async_trait]
impl Authenticator for Rbac {
    async fn authenticate(&self, ctx: &RequestContext) -> Result<Option<Principal>, Error> {
        if let Some(token) = &ctx.credentials.token {
            let Some(caller) = self.store.token_caller(token) else {
                tracing::warn!(peer = ?ctx.peer, "invalid auth token");
                return Err(Error::InvalidAuthToken);
            };
            return Ok(Some(Principal {
                name: caller.name,
                source: PrincipalSource::User {
                    auth_revision: caller.revision,
                },
                roles: Vec::new(),
            }));
        }
        match &ctx.credentials.client_cert_cn {
            Some(cn) if self.client_cert_auth => Ok(Some(Principal {
                name: cn.clone(),
                source: PrincipalSource::ClientCert,
                roles: Vec::new(),
            })),
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl Authorizer for Rbac {
    async fn authorize(&self, principal: &Principal, op: &Operation<'_>) -> Result<(), Error> {
        if !self.store.is_enabled() {
            return Ok(());
        }
        let caller = self.caller(principal);
        match op {
            Operation::Range(_) => self.keys(&caller, op),
            Operation::Watch(w) => {
                // etcd normalises the range first: an empty key is `\0`, and a "from key"
                // range end becomes empty, so it is checked as the one key.
                let key: &[u8] = if w.key.is_empty() { &[0] } else { &w.key };
                let end: &[u8] = if w.range_end == [0] {
                    &[]
                } else {
                    &w.range_end
                };
                Ok(self.store.is_op_permitted(&caller, key, end, false)?)
            }
            Operation::Txn(txn) => {
                self.keys(&caller, op)?;
                self.lease_keys(&caller, put_lease(txn))
            }
            Operation::LeaseRevoke(lease) => self.lease_keys(&caller, *lease),
            Operation::Admin(rpc) if MAINTENANCE_ADMIN_ONLY.contains(rpc) => self
                .store
                .is_admin_permitted(&caller)
                .map_err(Error::MaintenanceAuth),
            Operation::Admin(rpc) if ADMIN_ONLY.contains(rpc) => {
                Ok(self.store.is_admin_permitted(&caller)?)
            }
            Operation::UserGet(name) => match self.store.is_admin_permitted(&caller) {
                Err(_) if *name == caller.name => Ok(()),
                other => Ok(other?),
            },
            Operation::RoleGet(role) => match self.store.is_admin_permitted(&caller) {
                Err(_) if self.store.has_role(&caller.name, role) => Ok(()),
                other => Ok(other?),
            },
            Operation::Compact
            | Operation::Admin(_)
            | Operation::LeaseGrant
            | Operation::LeaseKeepAlive(_)
            | Operation::LeaseTimeToLive(_)
            | Operation::LeaseLeases => Ok(()),
        }
    }
}

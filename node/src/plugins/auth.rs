//! The auth hook: plugins configured with `hooks: [auth]` are the core's [`Authenticator`]
//! and [`Authorizer`], so every transport's requests pass them in the core's pipeline.
//!
//! Authentication hands the plugins the request's credentials in order; the first that
//! claims them names the principal (with its roles), a refusal is etcd's `invalid auth
//! token` (Unauthenticated), and credentials no plugin claims leave the caller anonymous,
//! for the next authenticator (etcd's own auth, `auth::Rbac`) or for authorization to
//! judge. A request without credentials calls no plugin. Authorization asks every auth
//! plugin; any denial is etcd's `permission denied`. The plugin's reasons go to the log,
//! not to the client, as etcd's own auth does. A failed call (trap, timeout, memory,
//! nonsense) follows the plugin's failure policy: fail-closed refuses the request with a
//! message naming the plugin; fail-open makes the caller anonymous (authentication) or
//! allows the request (authorization).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::admission::principal as wit_principal;
use super::runtime::{
    AuthRequest, CallFailure, Credentials, Decision, Identity, KeyAccess, Operation, UserPassword,
};
use super::{LoadedPlugin, Plugins};
use crate::config::{FailurePolicy, Hook};
use crate::core::hooks::{Authenticator, Authorizer};
use crate::core::{self, Error, Principal, PrincipalSource, RequestContext};

/// The core's authentication and authorization hooks, served by the auth plugins loaded
/// at the time of each request (a reload may add or remove them).
pub struct PluginAuth {
    plugins: Arc<Plugins>,
}

impl PluginAuth {
    pub fn new(plugins: Arc<Plugins>) -> PluginAuth {
        PluginAuth { plugins }
    }
}

#[async_trait]
impl Authenticator for PluginAuth {
    fn enabled(&self) -> bool {
        self.plugins.current().serves(Hook::Auth)
    }

    async fn authenticate(&self, ctx: &RequestContext) -> Result<Option<Principal>, Error> {
        let Some(credentials) = credentials(&ctx.credentials) else {
            return Ok(None);
        };
        let set = self.plugins.current();
        for plugin in set.serving(Hook::Auth) {
            if let Some(principal) = authenticate_one(plugin, &credentials).await? {
                return Ok(Some(principal));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Authorizer for PluginAuth {
    async fn authorize(
        &self,
        principal: &Principal,
        op: &core::Operation<'_>,
    ) -> Result<(), Error> {
        let set = self.plugins.current();
        if !set.serves(Hook::Auth) {
            return Ok(());
        }
        let request = AuthRequest {
            principal: wit_principal(Some(principal)),
            operation: operation(op),
            keys: op
                .key_access()
                .into_iter()
                .map(|a| KeyAccess {
                    write: a.write,
                    key: a.key.to_vec(),
                    range_end: a.range_end.to_vec(),
                })
                .collect(),
        };
        for plugin in set.serving(Hook::Auth) {
            authorize_one(plugin, &request).await?;
        }
        Ok(())
    }
}

/// One plugin's verdict on the credentials: `None` when it does not claim them.
async fn authenticate_one(
    plugin: &LoadedPlugin,
    credentials: &Credentials,
) -> Result<Option<Principal>, Error> {
    const HOOK: &str = "authenticate";
    let name = &plugin.config.name;
    let started = Instant::now();
    let (outcome, usage) = plugin
        .instances
        .authenticate(plugin.limits(), credentials)
        .await;
    plugin.record(
        HOOK,
        started,
        usage,
        match &outcome {
            Ok(Ok(Some(_))) => Ok("allow"),
            Ok(Ok(None)) => Ok("pass"),
            Ok(Err(_)) => Ok("deny"),
            Err(failure) => Err(failure),
        },
    );
    match outcome {
        Ok(Ok(identity)) => Ok(identity.map(|Identity { name, roles }| Principal {
            name,
            source: PrincipalSource::Plugin(plugin.config.name.clone()),
            roles,
        })),
        Ok(Err(reason)) => {
            tracing::info!(plugin = %name, %reason, "credentials refused");
            Err(Error::InvalidAuthToken)
        }
        Err(failure) => match plugin.config.failure_policy {
            // The caller goes on as anonymous: it is not refused, and gains nothing.
            FailurePolicy::FailOpen => {
                tracing::warn!(plugin = %name, error = %failure, "auth plugin failed; caller treated as anonymous (fail-open)");
                Ok(Some(Principal::anonymous()))
            }
            FailurePolicy::FailClosed => Err(Error::AuthUnavailable(closed(name, &failure))),
        },
    }
}

/// One plugin's verdict on the request.
async fn authorize_one(plugin: &LoadedPlugin, request: &AuthRequest) -> Result<(), Error> {
    const HOOK: &str = "authorize";
    let name = &plugin.config.name;
    let started = Instant::now();
    let (outcome, usage) = plugin.instances.authorize(plugin.limits(), request).await;
    let outcome = outcome.and_then(|decision| match decision {
        Decision::Rewrite(_) => Err(CallFailure::BadAnswer(
            "authorization cannot rewrite values".into(),
        )),
        other => Ok(other),
    });
    plugin.record(
        HOOK,
        started,
        usage,
        match &outcome {
            Ok(Decision::Deny(_)) => Ok("deny"),
            Ok(_) => Ok("allow"),
            Err(failure) => Err(failure),
        },
    );
    match outcome {
        Ok(Decision::Deny(reason)) => {
            tracing::info!(plugin = %name, principal = %request.principal.name, %reason, "request denied");
            Err(Error::PermissionDenied)
        }
        Ok(_) => Ok(()),
        Err(failure) => match plugin.config.failure_policy {
            FailurePolicy::FailOpen => {
                tracing::warn!(plugin = %name, error = %failure, "auth plugin failed; request allowed (fail-open)");
                Ok(())
            }
            FailurePolicy::FailClosed => Err(Error::Denied(closed(name, &failure))),
        },
    }
}

/// The client's message when a failed plugin closes: what failed, never the guest's
/// backtrace (that is in the log).
fn closed(plugin: &str, failure: &CallFailure) -> String {
    tracing::warn!(%plugin, error = %failure, "auth plugin failed; request refused (fail-closed)");
    format!("plugin {plugin}: {failure} (request refused: fail-closed)")
}

/// The WIT form of the request's credentials; `None` when it carries none.
fn credentials(c: &core::Credentials) -> Option<Credentials> {
    if c.token.is_none() && c.user_password.is_none() && c.client_cert_cn.is_none() {
        return None;
    }
    Some(Credentials {
        token: c.token.clone(),
        user_password: c
            .user_password
            .as_ref()
            .map(|(username, password)| UserPassword {
                username: username.clone(),
                password: password.clone(),
            }),
        client_cert_subject: c.client_cert_cn.clone(),
    })
}

fn operation(op: &core::Operation<'_>) -> Operation {
    use core::Operation as Op;
    match op {
        Op::Range(_) => Operation::Range,
        Op::Txn(_) => Operation::Txn,
        Op::Compact => Operation::Compact,
        Op::Watch(_) => Operation::Watch,
        Op::LeaseGrant => Operation::LeaseGrant,
        Op::LeaseRevoke(_) => Operation::LeaseRevoke,
        Op::LeaseKeepAlive(_) => Operation::LeaseKeepAlive,
        Op::LeaseTimeToLive(_) => Operation::LeaseTimeToLive,
        Op::LeaseLeases => Operation::LeaseLeases,
        Op::Admin(rpc) => Operation::Admin((*rpc).to_string()),
        Op::UserGet(_) => Operation::Admin("UserGet".to_string()),
        Op::RoleGet(_) => Operation::Admin("RoleGet".to_string()),
    }
}

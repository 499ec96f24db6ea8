//! etcd's Auth service (`server/etcdserver/v3_server.go`): each change is authorized (the
//! root role, see `auth::Rbac`), then proposed as one `AuthCommand` and applied by every
//! member; passwords are hashed with bcrypt here, before proposing, so the log never holds
//! one in clear. Reads (status, get, list) answer from this member's auth store after a
//! ReadIndex barrier, as linearizable as etcd's, which sends them through raft.
//!
//! Authenticate checks the password here (bcrypt, on the read pool), then proposes the
//! authentication with a fresh simple-token prefix; apply records the token on every
//! member, or, with JWT tokens, this member signs one for the auth revision the
//! authentication was applied at (etcd signs at apply on every member and keeps the
//! proposer's). As etcd, it starts again if the auth revision moved meanwhile. Failed attempts
//! are logged and limited per client address (`auth::FailureLimiter`).

use std::time::Instant;

use super::context::RequestContext;
use super::{until_deadline, Core, Error, Operation};
use crate::auth::{self, AuthError};
use crate::proto::cairnpb::{
    auth_command::Op, command::Cmd, AuthApplied, AuthCommand, AuthenticateCommand,
};
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListResponse, AuthRoleRevokePermissionRequest,
    AuthRoleRevokePermissionResponse, AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse,
    AuthUserChangePasswordRequest, AuthUserChangePasswordResponse, AuthUserDeleteRequest,
    AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
};
use crate::raft::Applied;

impl Core {
    /// The root-only path of every auth change: authorize as `rpc`, propose, wait for apply.
    async fn auth_change(
        &self,
        ctx: &RequestContext,
        rpc: &'static str,
        op: Op,
    ) -> Result<AuthApplied, Error> {
        self.authorize(ctx, Operation::Admin(rpc)).await?;
        self.propose_auth(op).await
    }

    /// Proposes an auth command and answers once this member applied it too: a follower's
    /// proposal is applied by the leader first, and the caller's next request here (with
    /// the new token, or under the new permissions) must see it.
    async fn propose_auth(&self, op: Op) -> Result<AuthApplied, Error> {
        let cmd = Cmd::Auth(AuthCommand { op: Some(op) });
        let applied = self
            .propose(cmd, |a| match a {
                Applied::Auth(applied) => Some(applied),
                _ => None,
            })
            .await?;
        if self.leader_elsewhere().is_some() {
            self.linearizable_barrier().await?;
        }
        Ok(applied)
    }

    /// etcd's bcrypt of a password, base64 for the log, on the read pool (it is slow by
    /// design, and the pool bounds how many run at once).
    async fn hash_password(&self, password: String) -> Result<String, Error> {
        let cost = self.auth.settings().bcrypt_cost;
        self.reads
            .run(move || auth::hash_password(&password, cost).map_err(Error::internal))
            .await
    }

    pub async fn auth_enable(
        &self,
        ctx: &RequestContext,
        req: AuthEnableRequest,
    ) -> Result<AuthEnableResponse, Error> {
        until_deadline(ctx, async {
            self.auth_change(ctx, "AuthEnable", Op::Enable(req)).await?;
            Ok(AuthEnableResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn auth_disable(
        &self,
        ctx: &RequestContext,
        req: AuthDisableRequest,
    ) -> Result<AuthDisableResponse, Error> {
        until_deadline(ctx, async {
            self.auth_change(ctx, "AuthDisable", Op::Disable(req))
                .await?;
            Ok(AuthDisableResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn auth_status(&self, ctx: &RequestContext) -> Result<AuthStatusResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("AuthStatus")).await?;
            self.linearizable_barrier().await?;
            Ok(AuthStatusResponse {
                header: self.current_header(),
                enabled: self.auth.is_enabled(),
                auth_revision: self.auth.revision(),
            })
        })
        .await
    }

    pub async fn authenticate_user(
        &self,
        ctx: &RequestContext,
        req: AuthenticateRequest,
    ) -> Result<AuthenticateResponse, Error> {
        until_deadline(ctx, async {
            self.linearizable_barrier().await?;
            loop {
                let checked = self.check_password(ctx, &req).await?;
                self.auth.can_issue_tokens()?;
                let applied = self
                    .propose_auth(Op::Authenticate(AuthenticateCommand {
                        name: req.name.clone(),
                        simple_token: auth::token::prefix(),
                    }))
                    .await?;
                if checked == self.auth.revision() {
                    return Ok(AuthenticateResponse {
                        header: self.current_header(),
                        token: self.auth.issued_token(&req.name, applied)?,
                    });
                }
                tracing::info!("revision when password checked became stale; retrying");
            }
        })
        .await
    }

    /// etcd's `CheckPassword`, behind the per-address limiter of failed attempts.
    async fn check_password(
        &self,
        ctx: &RequestContext,
        req: &AuthenticateRequest,
    ) -> Result<u64, Error> {
        if !self.auth.is_enabled() {
            return Err(AuthError::AuthNotEnabled.into());
        }
        let source = ctx.peer.map(|p| p.ip());
        if let Some(ip) = source {
            if !self.auth.failures.may_try(ip, Instant::now()) {
                tracing::warn!(user = %req.name, %ip, "too many failed authentications from this address; refused without checking the password");
                return Err(Error::AuthFailed);
            }
        }
        let (store, name, password) = (self.auth.clone(), req.name.clone(), req.password.clone());
        let checked = self
            .reads
            .run(move || Ok(store.check_password(&name, &password)))
            .await?;
        checked.map_err(|e| {
            tracing::warn!(user = %req.name, peer = ?ctx.peer, error = %e, "invalid authentication was requested");
            if let (Some(ip), AuthError::AuthFailed | AuthError::NoPasswordUser) = (source, e) {
                self.auth.failures.failed(ip, Instant::now());
            }
            Error::from(e)
        })
    }

    pub async fn user_add(
        &self,
        ctx: &RequestContext,
        mut req: AuthUserAddRequest,
    ) -> Result<AuthUserAddResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("UserAdd")).await?;
            if !req.options.is_some_and(|o| o.no_password) {
                req.hashed_password = self
                    .hash_password(std::mem::take(&mut req.password))
                    .await?;
            }
            req.password.clear();
            self.propose_auth(Op::UserAdd(req)).await?;
            Ok(AuthUserAddResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn user_delete(
        &self,
        ctx: &RequestContext,
        req: AuthUserDeleteRequest,
    ) -> Result<AuthUserDeleteResponse, Error> {
        until_deadline(ctx, async {
            self.auth_change(ctx, "UserDelete", Op::UserDelete(req))
                .await?;
            Ok(AuthUserDeleteResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn user_change_password(
        &self,
        ctx: &RequestContext,
        mut req: AuthUserChangePasswordRequest,
    ) -> Result<AuthUserChangePasswordResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("UserChangePassword"))
                .await?;
            if !req.password.is_empty() {
                req.hashed_password = self
                    .hash_password(std::mem::take(&mut req.password))
                    .await?;
            }
            self.propose_auth(Op::UserChangePassword(req)).await?;
            Ok(AuthUserChangePasswordResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn user_grant_role(
        &self,
        ctx: &RequestContext,
        req: AuthUserGrantRoleRequest,
    ) -> Result<AuthUserGrantRoleResponse, Error> {
        until_deadline(ctx, async {
            self.auth_change(ctx, "UserGrantRole", Op::UserGrantRole(req))
                .await?;
            Ok(AuthUserGrantRoleResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn user_revoke_role(
        &self,
        ctx: &RequestContext,
        req: AuthUserRevokeRoleRequest,
    ) -> Result<AuthUserRevokeRoleResponse, Error> {
        until_deadline(ctx, async {
            self.auth_change(ctx, "UserRevokeRole", Op::UserRevokeRole(req))
                .await?;
            Ok(AuthUserRevokeRoleResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn user_get(
        &self,
        ctx: &RequestContext,
        req: AuthUserGetRequest,
    ) -> Result<AuthUserGetResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::UserGet(&req.name)).await?;
            self.linearizable_barrier().await?;
            Ok(AuthUserGetResponse {
                header: self.current_header(),
                roles: self.auth.user_get(&req.name)?,
            })
        })
        .await
    }

    pub async fn user_list(&self, ctx: &RequestContext) -> Result<AuthUserListResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("UserList")).await?;
            self.linearizable_barrier().await?;
            Ok(AuthUserListResponse {
                header: self.current_header(),
                users: self.auth.user_list(),
            })
        })
        .await
    }

    pub async fn role_add(
        &self,
        ctx: &RequestContext,
        req: AuthRoleAddRequest,
    ) -> Result<AuthRoleAddResponse, Error> {
        until_deadline(ctx, async {
            self.auth_change(ctx, "RoleAdd", Op::RoleAdd(req)).await?;
            Ok(AuthRoleAddResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn role_delete(
        &self,
        ctx: &RequestContext,
        req: AuthRoleDeleteRequest,
    ) -> Result<AuthRoleDeleteResponse, Error> {
        until_deadline(ctx, async {
            self.auth_change(ctx, "RoleDelete", Op::RoleDelete(req))
                .await?;
            Ok(AuthRoleDeleteResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn role_grant_permission(
        &self,
        ctx: &RequestContext,
        req: AuthRoleGrantPermissionRequest,
    ) -> Result<AuthRoleGrantPermissionResponse, Error> {
        until_deadline(ctx, async {
            self.auth_change(ctx, "RoleGrantPermission", Op::RoleGrantPermission(req))
                .await?;
            Ok(AuthRoleGrantPermissionResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn role_revoke_permission(
        &self,
        ctx: &RequestContext,
        req: AuthRoleRevokePermissionRequest,
    ) -> Result<AuthRoleRevokePermissionResponse, Error> {
        until_deadline(ctx, async {
            self.auth_change(ctx, "RoleRevokePermission", Op::RoleRevokePermission(req))
                .await?;
            Ok(AuthRoleRevokePermissionResponse {
                header: self.current_header(),
            })
        })
        .await
    }

    pub async fn role_get(
        &self,
        ctx: &RequestContext,
        req: AuthRoleGetRequest,
    ) -> Result<AuthRoleGetResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::RoleGet(&req.role)).await?;
            self.linearizable_barrier().await?;
            Ok(AuthRoleGetResponse {
                header: self.current_header(),
                perm: self.auth.role_get(&req.role)?,
            })
        })
        .await
    }

    pub async fn role_list(&self, ctx: &RequestContext) -> Result<AuthRoleListResponse, Error> {
        until_deadline(ctx, async {
            self.authorize(ctx, Operation::Admin("RoleList")).await?;
            self.linearizable_barrier().await?;
            Ok(AuthRoleListResponse {
                header: self.current_header(),
                roles: self.auth.role_list(),
            })
        })
        .await
    }
}

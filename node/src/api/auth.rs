//! etcd's Auth service over [`Core`]: each method decodes, calls one core operation and
//! encodes (the HTTP gateway's `/v3/auth/*` routes reach the same operations).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{unary, Method};
use crate::core::Core;
use crate::proto::etcdserverpb::{
    auth_server::Auth, AuthDisableRequest, AuthDisableResponse, AuthEnableRequest,
    AuthEnableResponse, AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest,
    AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest,
    AuthRoleListResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse,
    AuthUserChangePasswordRequest, AuthUserChangePasswordResponse, AuthUserDeleteRequest,
    AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest,
    AuthenticateResponse,
};

const fn method(name: &'static str) -> Method {
    Method {
        service: "etcdserverpb.Auth",
        name,
    }
}

pub struct AuthService(pub Arc<Core>);

/// The Auth service: for each method its name in the trait, etcd's RPC name, request and
/// response types, and the core call given the core, the context and the request.
macro_rules! auth_service {
    ($($name:ident, $rpc:literal, $req:ty, $resp:ty, |$core:ident, $ctx:ident, $r:ident| $call:expr;)*) => {
        #[tonic::async_trait]
        impl Auth for AuthService {
            $(
                async fn $name(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let $core = &self.0;
                    unary(method($rpc), req, |$ctx, $r| async move { $call.await }).await
                }
            )*
        }
    };
}

auth_service! {
    auth_enable, "AuthEnable", AuthEnableRequest, AuthEnableResponse,
        |core, ctx, r| core.auth_enable(&ctx, r);
    auth_disable, "AuthDisable", AuthDisableRequest, AuthDisableResponse,
        |core, ctx, r| core.auth_disable(&ctx, r);
    auth_status, "AuthStatus", AuthStatusRequest, AuthStatusResponse,
        |core, ctx, _r| core.auth_status(&ctx);
    authenticate, "Authenticate", AuthenticateRequest, AuthenticateResponse,
        |core, ctx, r| core.authenticate_user(&ctx, r);
    user_add, "UserAdd", AuthUserAddRequest, AuthUserAddResponse,
        |core, ctx, r| core.user_add(&ctx, r);
    user_get, "UserGet", AuthUserGetRequest, AuthUserGetResponse,
        |core, ctx, r| core.user_get(&ctx, r);
    user_list, "UserList", AuthUserListRequest, AuthUserListResponse,
        |core, ctx, _r| core.user_list(&ctx);
    user_delete, "UserDelete", AuthUserDeleteRequest, AuthUserDeleteResponse,
        |core, ctx, r| core.user_delete(&ctx, r);
    user_change_password, "UserChangePassword", AuthUserChangePasswordRequest,
        AuthUserChangePasswordResponse, |core, ctx, r| core.user_change_password(&ctx, r);
    user_grant_role, "UserGrantRole", AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
        |core, ctx, r| core.user_grant_role(&ctx, r);
    user_revoke_role, "UserRevokeRole", AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse,
        |core, ctx, r| core.user_revoke_role(&ctx, r);
    role_add, "RoleAdd", AuthRoleAddRequest, AuthRoleAddResponse,
        |core, ctx, r| core.role_add(&ctx, r);
    role_get, "RoleGet", AuthRoleGetRequest, AuthRoleGetResponse,
        |core, ctx, r| core.role_get(&ctx, r);
    role_list, "RoleList", AuthRoleListRequest, AuthRoleListResponse,
        |core, ctx, _r| core.role_list(&ctx);
    role_delete, "RoleDelete", AuthRoleDeleteRequest, AuthRoleDeleteResponse,
        |core, ctx, r| core.role_delete(&ctx, r);
    role_grant_permission, "RoleGrantPermission", AuthRoleGrantPermissionRequest,
        AuthRoleGrantPermissionResponse, |core, ctx, r| core.role_grant_permission(&ctx, r);
    role_revoke_permission, "RoleRevokePermission", AuthRoleRevokePermissionRequest,
        AuthRoleRevokePermissionResponse, |core, ctx, r| core.role_revoke_permission(&ctx, r);
}

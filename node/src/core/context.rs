//! Who sent a request and how: what every core operation takes besides the request itself.
//! Transports fill it from what they know (peer address, gRPC metadata, deadline); the
//! pipeline's authentication step fills the principal, once per context.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The transport a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
    /// Made by the node itself (auto-compaction, lease expiry): no caller to check.
    Internal,
}

/// What the caller presented to prove who it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// etcd's auth token (gRPC metadata `token`, HTTP header `Authorization`).
    pub token: Option<String>,
    /// A user name and password (gRPC metadata `authorization: Basic ...`).
    pub user_password: Option<(String, String)>,
    /// The common name of a verified client certificate.
    pub client_cert_cn: Option<String>,
}

/// How a principal was established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalSource {
    /// No credentials, and authentication is not required.
    Anonymous,
    /// The node itself.
    Internal,
    /// etcd's user/password, through a token issued at `auth_revision`.
    User { auth_revision: u64 },
    /// A client certificate's common name.
    ClientCert,
    /// An authentication plugin, by name.
    Plugin(String),
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// etcd's user name; empty for the anonymous and internal principals.
    pub name: String,
    pub source: PrincipalSource,
    /// Roles its authenticator granted (an auth plugin's; etcd's RBAC looks its own up).
    pub roles: Vec<String>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            name: String::new(),
            source: PrincipalSource::Anonymous,
            roles: Vec::new(),
        }
    }

    pub fn internal() -> Principal {
        Principal {
            name: String::new(),
            source: PrincipalSource::Internal,
            roles: Vec::new(),
        }
    }
}

/// One request's context. Cheap to clone: a recipe (lock, election) that makes several
/// core calls for one client request passes the same context to each, so the caller is
/// authenticated once and every step is authorized as the caller.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub transport: Transport,
    pub peer: Option<SocketAddr>,
    pub credentials: Credentials,
    /// When the caller stops waiting; the operation is abandoned then.
    pub deadline: Option<Instant>,
    principal: Arc<OnceLock<Principal>>,
}

impl RequestContext {
    pub fn new(transport: Transport, peer: Option<SocketAddr>) -> RequestContext {
        RequestContext {
            transport,
            peer,
            credentials: Credentials::default(),
            deadline: None,
            principal: Arc::default(),
        }
    }

    /// A request the node makes of itself; it is already authenticated as
    /// [`Principal::internal`].
    pub fn internal() -> RequestContext {
        let ctx = RequestContext::new(Transport::Internal, None);
        let _ = ctx.principal.set(Principal::internal());
        ctx
    }

    /// The principal, once authentication ran.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.get()
    }

    pub(super) fn set_principal(&self, principal: Principal) -> &Principal {
        self.principal.get_or_init(|| principal)
    }
}

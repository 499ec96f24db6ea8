//! etcd's auth store (`server/auth/store.go` of etcd 3.5): users with bcrypt password
//! hashes and roles, roles with key-range permissions, the enabled flag and the auth
//! revision; the permission checks; simple and JWT tokens; the failed-authentication
//! limiter; and the core's authentication and authorization hooks ([`Rbac`]).
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `auth` | `enabled` | 1 byte: 1 enabled, 0 disabled |
//! | `auth` | `revision` | the auth revision, u64 BE |
//! | `auth` | `user/` ++ name | `authpb.User` (protobuf, as etcd's `authUsers` bucket) |
//! | `auth` | `role/` ++ name | `authpb.Role` (protobuf, as etcd's `authRoles` bucket) |
//!
//! The state is small, so it is loaded whole at start and kept in memory. It changes only
//! by applying `AuthCommand` entries: [`AuthStore::prepare`] decides (deterministically,
//! from the state alone) what a command changes or refuses it, [`AuthStore::stage`] adds
//! the writes to the apply batch, and [`AuthStore::commit`] makes the new state visible once
//! that batch committed. MVCC copies the keyspace into snapshots; after a snapshot install
//! [`AuthStore::reload`] reads it again. Must not know about raft, gRPC or MVCC's keys.

pub mod cert;
mod hook;
pub mod jwt;
mod limiter;
mod perms;
pub mod token;

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use prost::Message;

pub use hook::Rbac;
pub use limiter::FailureLimiter;

use crate::proto::authpb::{permission::Type as PermType, Permission, Role, User, UserAddOptions};
use crate::proto::cairnpb::{auth_command::Op, AuthApplied, AuthCommand};
use crate::storage::{Keyspace, StorageError, Store, WriteBatch};

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

const ENABLED_KEY: &[u8] = b"enabled";
const REVISION_KEY: &[u8] = b"revision";
const USER_PREFIX: &[u8] = b"user/";
const ROLE_PREFIX: &[u8] = b"role/";

/// etcd's auth store errors (`server/auth/store.go`); the core gives each etcd's client
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth: root user does not exist")]
    RootUserNotExist,
    #[error("auth: root user does not have root role")]
    RootRoleNotExist,
    #[error("auth: user already exists")]
    UserAlreadyExist,
    #[error("auth: user name is empty")]
    UserEmpty,
    #[error("auth: user not found")]
    UserNotFound,
    #[error("auth: role already exists")]
    RoleAlreadyExist,
    #[error("auth: role not found")]
    RoleNotFound,
    #[error("auth: role name is empty")]
    RoleEmpty,
    #[error("auth: permission not given")]
    PermissionNotGiven,
    #[error("auth: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    #[error("auth: permission denied")]
    PermissionDenied,
    #[error("auth: role is not granted to the user")]
    RoleNotGranted,
    #[error("auth: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("auth: authentication is not enabled")]
    AuthNotEnabled,
    #[error("auth: revision in header is old")]
    OldRevision,
    #[error("auth: invalid auth management")]
    InvalidAuthMgmt,
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    /// The key could not sign (logged); checked at start-up, so not expected.
    #[error("auth: failed to sign a token")]
    SignFailed,
}

/// The auth table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("auth table: {0}")]
    Storage(#[from] StorageError),
    #[error("auth table: {0}")]
    Corrupt(String),
}

/// How members hash passwords and issue tokens (`--bcrypt-cost`, `--auth-token`,
/// `--auth-token-ttl`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    pub bcrypt_cost: u32,
    /// `--auth-token-ttl`: simple tokens' idle lifetime.
    pub token_ttl: Duration,
    pub token: TokenType,
}

/// `--auth-token`'s type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenType {
    Simple,
    Jwt(jwt::JwtOptions),
}

/// The token provider of this member: simple tokens are recorded at apply on every member;
/// JWTs are signed by the member that took the authentication, and verified by any.
pub struct Tokens(Provider);

enum Provider {
    Simple(token::SimpleTokens),
    Jwt(Box<jwt::JwtTokens>),
}

impl Tokens {
    /// The provider `settings` select; reads JWT key files.
    pub fn load(settings: &AuthSettings) -> Result<Tokens, jwt::KeyError> {
        Ok(Tokens(match &settings.token {
            TokenType::Simple => Provider::Simple(token::SimpleTokens::new(settings.token_ttl)),
            TokenType::Jwt(opts) => Provider::Jwt(Box::new(jwt::JwtTokens::load(opts)?)),
        }))
    }
}

/// The replicated auth state.
#[derive(Clone, Debug, Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

/// What an applied command changes, decided by [`AuthStore::prepare`].
pub struct Prepared {
    next: State,
    dirty: Vec<Dirty>,
    effect: Effect,
}

enum Dirty {
    User(String),
    Role(String),
    Enabled,
    Revision,
}

/// What a command does besides the persisted state.
enum Effect {
    None,
    /// Record a simple token for the user: the proposer's prefix.
    Authenticate {
        user: String,
        prefix: String,
    },
    /// The user's tokens are no longer valid (deleted, or its password changed).
    InvalidateUser(String),
    /// Authentication was turned off: every token goes.
    Disable,
}

/// Who a permission check is about: etcd's `AuthInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    /// The auth revision the credentials were issued at; 0 for no credentials.
    pub revision: u64,
}

/// The auth store: see the module header.
pub struct AuthStore {
    keyspace: Keyspace,
    state: RwLock<State>,
    tokens: Tokens,
    settings: AuthSettings,
    /// Failed authentications per client address.
    pub failures: FailureLimiter,
}

impl AuthStore {
    pub fn open(
        store: &Store,
        settings: AuthSettings,
        tokens: Tokens,
    ) -> Result<Arc<AuthStore>, TableError> {
        let keyspace = store.keyspace("auth")?;
        let state = load(&keyspace)?;
        Ok(Arc::new(AuthStore {
            keyspace,
            state: RwLock::new(state),
            tokens,
            settings,
            failures: FailureLimiter::default(),
        }))
    }

    /// Reads the state again after apply replaced the keyspace (a raft snapshot install).
    pub fn reload(&self) -> Result<(), TableError> {
        let state = load(&self.keyspace)?;
        if let (false, Provider::Simple(simple)) = (state.enabled, &self.tokens.0) {
            simple.clear();
        }
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    pub fn is_enabled(&self) -> bool {
        self.read().enabled
    }

    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Who presents `token`, if it is live (etcd's `authInfoFromToken`): a simple token
    /// is as new as the store, a JWT as its `revision` claim.
    pub fn token_caller(&self, token: &str) -> Option<Caller> {
        match &self.tokens.0 {
            Provider::Simple(simple) => simple.user(token).map(|name| Caller {
                name,
                revision: self.revision(),
            }),
            Provider::Jwt(jwt) => jwt
                .verify(token)
                .map(|(name, revision)| Caller { name, revision }),
        }
    }

    /// Whether this member can issue tokens: a JWT member given only the public key cannot.
    pub fn can_issue_tokens(&self) -> Result<(), AuthError> {
        match &self.tokens.0 {
            Provider::Simple(_) => Ok(()),
            Provider::Jwt(jwt) => jwt.can_sign(),
        }
    }

    /// The token of an applied authentication of `user`: the simple token apply recorded,
    /// or a JWT signed here for the auth revision it was applied at.
    pub fn issued_token(&self, user: &str, applied: AuthApplied) -> Result<String, AuthError> {
        match &self.tokens.0 {
            Provider::Simple(_) => Ok(applied.token),
            Provider::Jwt(jwt) => jwt.sign(user, applied.revision),
        }
    }

    /// etcd's `CheckPassword`: the auth revision the password was checked at. Runs bcrypt:
    /// call it off the async runtime.
    pub fn check_password(&self, name: &str, password: &str) -> Result<u64, AuthError> {
        let (hash, revision) = {
            let state = self.read();
            if !state.enabled {
                return Err(AuthError::AuthNotEnabled);
            }
            let user = state.users.get(name).ok_or(AuthError::AuthFailed)?;
            if no_password(user) {
                return Err(AuthError::NoPasswordUser);
            }
            (user.password.clone(), state.revision)
        };
        let hash = String::from_utf8(hash).map_err(|_| AuthError::AuthFailed)?;
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(revision),
            _ => Err(AuthError::AuthFailed),
        }
    }

    pub fn user_get(&self, name: &str) -> Result<Vec<String>, AuthError> {
        let state = self.read();
        let user = state.users.get(name).ok_or(AuthError::UserNotFound)?;
        Ok(user.roles.clone())
    }

    pub fn user_list(&self) -> Vec<String> {
        self.read().users.keys().cloned().collect()
    }

    pub fn role_get(&self, name: &str) -> Result<Vec<Permission>, AuthError> {
        let state = self.read();
        let role = state.roles.get(name).ok_or(AuthError::RoleNotFound)?;
        Ok(role.key_permission.clone())
    }

    pub fn role_list(&self) -> Vec<String> {
        self.read().roles.keys().cloned().collect()
    }

    /// etcd's `HasRole`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.read()
            .users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// etcd's `IsAdminPermitted`: with auth enabled, only a user with the root role.
    pub fn is_admin_permitted(&self, caller: &Caller) -> Result<(), AuthError> {
        let state = self.read();
        if !state.enabled {
            return Ok(());
        }
        if caller.name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let user = state
            .users
            .get(&caller.name)
            .ok_or(AuthError::UserNotFound)?;
        if has_root_role(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's `isOpPermitted`: read or write access to `key` .. `range_end`.
    pub fn is_op_permitted(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        write: bool,
    ) -> Result<(), AuthError> {
        let state = self.read();
        if !state.enabled {
            return Ok(());
        }
        // Only credentials-less callers have revision 0.
        if caller.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if caller.revision < state.revision {
            tracing::warn!(user = %caller.name, request = caller.revision, current = state.revision, "request auth revision is less than current node auth revision");
            return Err(AuthError::OldRevision);
        }
        let Some(user) = state.users.get(&caller.name) else {
            tracing::error!(user = %caller.name, "cannot find a user for permission check");
            return Err(AuthError::PermissionDenied);
        };
        if has_root_role(user) {
            return Ok(());
        }
        let wanted = if write {
            [PermType::Write, PermType::Readwrite]
        } else {
            [PermType::Read, PermType::Readwrite]
        };
        let granted: Vec<perms::Interval> = user
            .roles
            .iter()
            .filter_map(|r| state.roles.get(r))
            .flat_map(|role| &role.key_permission)
            .filter(|p| wanted.iter().any(|w| *w as i32 == p.perm_type))
            .map(|p| perms::Interval::of_permission(&p.key, &p.range_end))
            .collect();
        if perms::covers(&granted, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Apply, first step: what `cmd` changes, or etcd's refusal. Reads only the state.
    pub fn prepare(&self, cmd: &AuthCommand) -> Result<Prepared, AuthError> {
        let mut change = Prepared {
            next: self.read().clone(),
            dirty: Vec::new(),
            effect: Effect::None,
        };
        let Some(op) = &cmd.op else {
            return Ok(change);
        };
        change.apply(op)?;
        Ok(change)
    }

    /// Apply, second step: the writes of `change`, into the apply batch.
    pub fn stage(&self, batch: &mut WriteBatch, change: &Prepared) {
        let next = &change.next;
        for dirty in &change.dirty {
            match dirty {
                Dirty::User(name) => {
                    let key = [USER_PREFIX, name.as_bytes()].concat();
                    match next.users.get(name) {
                        Some(user) => batch.insert(&self.keyspace, key, user.encode_to_vec()),
                        None => batch.remove(&self.keyspace, key),
                    }
                }
                Dirty::Role(name) => {
                    let key = [ROLE_PREFIX, name.as_bytes()].concat();
                    match next.roles.get(name) {
                        Some(role) => batch.insert(&self.keyspace, key, role.encode_to_vec()),
                        None => batch.remove(&self.keyspace, key),
                    }
                }
                Dirty::Enabled => {
                    batch.insert(&self.keyspace, ENABLED_KEY, [u8::from(next.enabled)])
                }
                Dirty::Revision => {
                    batch.insert(&self.keyspace, REVISION_KEY, next.revision.to_be_bytes())
                }
            }
        }
    }

    /// Apply, last step, once the batch committed: the new state is visible. `index` is the
    /// entry's log index (a simple token's suffix).
    pub fn commit(&self, change: Prepared, index: u64) -> AuthApplied {
        let revision = change.next.revision;
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = change.next;
        let mut token = String::new();
        // A JWT is signed by the member that took the authentication, and never revoked.
        if let Provider::Simple(simple) = &self.tokens.0 {
            match change.effect {
                Effect::None => {}
                Effect::Authenticate { user, prefix } => {
                    token = token::token(&prefix, index);
                    simple.assign(token.clone(), &user);
                }
                Effect::InvalidateUser(user) => simple.invalidate_user(&user),
                Effect::Disable => simple.clear(),
            }
        }
        AuthApplied { revision, token }
    }
}

impl Prepared {
    fn bump_revision(&mut self) {
        self.next.revision += 1;
        self.dirty.push(Dirty::Revision);
    }

    fn put_user(&mut self, user: User) {
        let name = String::from_utf8_lossy(&user.name).into_owned();
        self.dirty.push(Dirty::User(name.clone()));
        self.next.users.insert(name, user);
    }

    fn put_role(&mut self, role: Role) {
        let name = String::from_utf8_lossy(&role.name).into_owned();
        self.dirty.push(Dirty::Role(name.clone()));
        self.next.roles.insert(name, role);
    }

    fn user(&self, name: &str) -> Result<User, AuthError> {
        self.next
            .users
            .get(name)
            .cloned()
            .ok_or(AuthError::UserNotFound)
    }

    fn role(&self, name: &str) -> Result<Role, AuthError> {
        self.next
            .roles
            .get(name)
            .cloned()
            .ok_or(AuthError::RoleNotFound)
    }

    /// The checks and changes of etcd's `authStore` methods, in etcd's order.
    fn apply(&mut self, op: &Op) -> Result<(), AuthError> {
        let enabled = self.next.enabled;
        match op {
            Op::Enable(_) => {
                if enabled {
                    return Ok(());
                }
                let root = self
                    .next
                    .users
                    .get(ROOT_USER)
                    .ok_or(AuthError::RootUserNotExist)?;
                if !has_root_role(root) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.next.enabled = true;
                self.dirty.push(Dirty::Enabled);
            }
            Op::Disable(_) => {
                if !enabled {
                    return Ok(());
                }
                self.next.enabled = false;
                self.dirty.push(Dirty::Enabled);
                self.bump_revision();
                self.effect = Effect::Disable;
            }
            Op::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.next.users.contains_key(&r.name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let options = r.options.unwrap_or(UserAddOptions { no_password: false });
                let password = if options.no_password {
                    Vec::new()
                } else {
                    decode_hash(&r.hashed_password)?
                };
                self.put_user(User {
                    name: r.name.clone().into_bytes(),
                    password,
                    roles: Vec::new(),
                    options: Some(options),
                });
                self.bump_revision();
            }
            Op::UserDelete(r) => {
                if enabled && r.name == ROOT_USER {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.user(&r.name)?;
                self.next.users.remove(&r.name);
                self.dirty.push(Dirty::User(r.name.clone()));
                self.bump_revision();
                self.effect = Effect::InvalidateUser(r.name.clone());
            }
            Op::UserChangePassword(r) => {
                let mut user = self.user(&r.name)?;
                if !no_password(&user) {
                    user.password = decode_hash(&r.hashed_password)?;
                }
                self.put_user(user);
                self.bump_revision();
                self.effect = Effect::InvalidateUser(r.name.clone());
            }
            Op::UserGrantRole(r) => {
                let mut user = self.user(&r.user)?;
                if r.role != ROOT_ROLE {
                    self.role(&r.role)?;
                }
                if let Err(at) = user.roles.binary_search(&r.role) {
                    user.roles.insert(at, r.role.clone());
                    self.put_user(user);
                    self.bump_revision();
                }
            }
            Op::UserRevokeRole(r) => {
                if enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let mut user = self.user(&r.name)?;
                let before = user.roles.len();
                user.roles.retain(|role| *role != r.role);
                if user.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
                self.put_user(user);
                self.bump_revision();
            }
            Op::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.next.roles.contains_key(&r.name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.put_role(Role {
                    name: r.name.clone().into_bytes(),
                    key_permission: Vec::new(),
                });
                self.bump_revision();
            }
            Op::RoleDelete(r) => {
                if enabled && r.role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.role(&r.role)?;
                self.next.roles.remove(&r.role);
                self.dirty.push(Dirty::Role(r.role.clone()));
                let holders: Vec<User> = self
                    .next
                    .users
                    .values()
                    .filter(|u| u.roles.contains(&r.role))
                    .cloned()
                    .collect();
                for mut user in holders {
                    user.roles.retain(|role| *role != r.role);
                    self.put_user(user);
                }
                self.bump_revision();
            }
            Op::RoleGrantPermission(r) => {
                let perm = r.perm.as_ref().ok_or(AuthError::PermissionNotGiven)?;
                let mut role = self.role(&r.name)?;
                let perms = &mut role.key_permission;
                // etcd looks only at the first permission with a key not below the new one.
                let at = perms.partition_point(|p| p.key < perm.key);
                match perms.get_mut(at) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type;
                    }
                    _ => {
                        perms.push(perm.clone());
                        perms.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                self.put_role(role);
                self.bump_revision();
            }
            Op::RoleRevokePermission(r) => {
                let mut role = self.role(&r.role)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| p.key != r.key || p.range_end != r.range_end);
                if role.key_permission.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                self.put_role(role);
                self.bump_revision();
            }
            Op::Authenticate(r) => {
                if !enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                let user = self.next.users.get(&r.name).ok_or(AuthError::AuthFailed)?;
                if no_password(user) {
                    return Err(AuthError::AuthFailed);
                }
                self.effect = Effect::Authenticate {
                    user: r.name.clone(),
                    prefix: r.simple_token.clone(),
                };
            }
        }
        Ok(())
    }
}

/// Hashes a password as etcd does (bcrypt, `$2a$`), base64 for the log, as etcd's
/// `hashed_password` field carries it. Slow by design: call it off the async runtime.
pub fn hash_password(password: &str, cost: u32) -> Result<String, bcrypt::BcryptError> {
    use base64::Engine;
    let hash = bcrypt::hash_with_result(password, cost)?.format_for_version(bcrypt::Version::TwoA);
    Ok(base64::engine::general_purpose::STANDARD.encode(hash))
}

/// etcd's `selectPassword` for a proposer-hashed password.
fn decode_hash(hashed: &str) -> Result<Vec<u8>, AuthError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(hashed)
        .map_err(|_| AuthError::NoPasswordUser)
}

fn has_root_role(user: &User) -> bool {
    user.roles.iter().any(|r| r == ROOT_ROLE)
}

fn no_password(user: &User) -> bool {
    user.options.is_some_and(|o| o.no_password)
}

fn load(keyspace: &Keyspace) -> Result<State, TableError> {
    let mut state = State {
        enabled: keyspace.get(ENABLED_KEY)?.is_some_and(|v| *v == [1]),
        // etcd starts a new store at revision 1.
        revision: 1,
        ..State::default()
    };
    if let Some(v) = keyspace.get(REVISION_KEY)? {
        if let Ok(bytes) = <[u8; 8]>::try_from(&*v) {
            state.revision = u64::from_be_bytes(bytes).max(1);
        }
    }
    for item in keyspace.iter() {
        let (key, value) = item?;
        if let Some(name) = key.strip_prefix(USER_PREFIX) {
            let user = User::decode(&*value).map_err(|e| corrupt("user", name, e))?;
            state
                .users
                .insert(String::from_utf8_lossy(name).into_owned(), user);
        } else if let Some(name) = key.strip_prefix(ROLE_PREFIX) {
            let role = Role::decode(&*value).map_err(|e| corrupt("role", name, e))?;
            state
                .roles
                .insert(String::from_utf8_lossy(name).into_owned(), role);
        }
    }
    Ok(state)
}

fn corrupt(what: &str, name: &[u8], e: prost::DecodeError) -> TableError {
    TableError::Corrupt(format!(
        "auth {what} {:?}: {e}",
        String::from_utf8_lossy(name)
    ))
}

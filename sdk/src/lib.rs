//! Write cairn plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`] (every hook has a default, so implement only
//! the ones your configuration names) exported with [`export_plugin!`], built with
//! `cargo build --release --target wasm32-wasip2`. Host functions are in [`host`]; on a
//! native target they are served by [`testing`], so plugin logic is unit-tested with plain
//! `cargo test`, no server and no wasm runtime needed.
//!
//! The WIT world is `wit/plugin.wit` (package `cairn:plugin`); [`bindings`] is what
//! `wit-bindgen` generates from it, and the ergonomic names below are re-exports of it.

pub mod host;
pub mod testing;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "cairn_plugin_sdk::bindings",
        // Plugin tests compare decisions and requests.
        additional_derives: [PartialEq],
    });
}

pub use bindings::cairn::plugin::types::{
    Decision, DeleteOp, KeyValue, Principal, PrincipalSource, PutOp, Rewrite, WriteOp, WriteRequest,
};
pub use bindings::exports::cairn::plugin::auth::{
    AuthRequest, Credentials, Identity, KeyAccess, Operation, UserPassword,
};
pub use bindings::exports::cairn::plugin::backup::Direction;

/// A cairn plugin. Every hook has a default that refuses or allows nothing surprising; the
/// node calls only the hooks the plugin is configured for.
pub trait Plugin {
    /// Admission: sees each client write (the ops under the configured prefixes) before it
    /// is proposed. The default allows.
    fn check(_request: WriteRequest) -> Decision {
        Decision::Allow
    }

    /// Authentication: credentials to an identity (a name and roles). `Ok(None)` leaves
    /// them to the next authenticator; `Err` refuses them (the client sees `etcdserver:
    /// invalid auth token`, the reason goes to the node's log). The default claims nothing.
    fn authenticate(_credentials: Credentials) -> Result<Option<Identity>, String> {
        Ok(None)
    }

    /// Authorization of one request: its operation and every key range it touches. A
    /// denial reaches the client as `etcdserver: permission denied`. The default allows.
    fn authorize(_request: AuthRequest) -> Decision {
        Decision::Allow
    }

    /// Backup: starts a stream, returning the output's name.
    fn backup_begin(_direction: Direction, name: String) -> Result<String, String> {
        Ok(name)
    }

    /// Backup: transforms one chunk. The default passes it through.
    fn backup_transform(chunk: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(chunk)
    }

    /// Backup: ends the stream.
    fn backup_finish() -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
}

impl WriteOp {
    /// The key the op starts at.
    pub fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put(p) => &p.key,
            WriteOp::Delete(d) => &d.key,
        }
    }
}

impl WriteRequest {
    /// A request from `principal` with no ops yet (for tests).
    pub fn new(principal: &str) -> WriteRequest {
        WriteRequest {
            principal: Principal {
                name: principal.to_string(),
                source: if principal.is_empty() {
                    PrincipalSource::Anonymous
                } else {
                    PrincipalSource::User
                },
                roles: Vec::new(),
            },
            ops: Vec::new(),
        }
    }

    /// Adds a put of `value` at `key` (for tests).
    pub fn put(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> WriteRequest {
        let value = value.as_ref().to_vec();
        self.ops.push(WriteOp::Put(PutOp {
            key: key.as_ref().to_vec(),
            value_size: value.len() as u64,
            value: Some(value),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        }));
        self
    }

    /// Adds a delete of `key` (for tests).
    pub fn delete(mut self, key: impl AsRef<[u8]>) -> WriteRequest {
        self.ops.push(WriteOp::Delete(DeleteOp {
            key: key.as_ref().to_vec(),
            range_end: Vec::new(),
            prev_kv: false,
        }));
        self
    }
}

impl Principal {
    /// A principal an auth plugin named `plugin` established (for tests).
    pub fn from_plugin(plugin: &str, name: &str, roles: &[&str]) -> Principal {
        Principal {
            name: name.to_string(),
            source: PrincipalSource::Plugin(plugin.to_string()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// The anonymous principal: no credentials were presented, or none was claimed.
    pub fn anonymous() -> Principal {
        Principal {
            name: String::new(),
            source: PrincipalSource::Anonymous,
            roles: Vec::new(),
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

impl Credentials {
    /// Only a bearer token (gRPC metadata `token`).
    pub fn token(token: impl Into<String>) -> Credentials {
        Credentials {
            token: Some(token.into()),
            user_password: None,
            client_cert_subject: None,
        }
    }
}

impl AuthRequest {
    /// A request by `principal` doing `operation`, touching no keys yet (for tests).
    pub fn new(principal: Principal, operation: Operation) -> AuthRequest {
        AuthRequest {
            principal,
            operation,
            keys: Vec::new(),
        }
    }

    /// Adds a read of `[key, range_end)` (for tests).
    pub fn read(self, key: impl AsRef<[u8]>, range_end: impl AsRef<[u8]>) -> AuthRequest {
        self.access(false, key, range_end)
    }

    /// Adds a write of `[key, range_end)` (for tests).
    pub fn write(self, key: impl AsRef<[u8]>, range_end: impl AsRef<[u8]>) -> AuthRequest {
        self.access(true, key, range_end)
    }

    fn access(
        mut self,
        write: bool,
        key: impl AsRef<[u8]>,
        range_end: impl AsRef<[u8]>,
    ) -> AuthRequest {
        self.keys.push(KeyAccess {
            write,
            key: key.as_ref().to_vec(),
            range_end: range_end.as_ref().to_vec(),
        });
        self
    }
}

impl KeyAccess {
    /// Whether the whole range lies under `prefix` (an etcd range end of `"\0"` reaches
    /// the end of the keyspace, so it lies under no prefix but the empty one).
    pub fn within(&self, prefix: &[u8]) -> bool {
        if !self.key.starts_with(prefix) {
            return false;
        }
        if self.range_end.is_empty() || prefix.is_empty() {
            return true;
        }
        match prefix_end(prefix) {
            // An all-0xff prefix reaches the end of the keyspace itself.
            end if end == [0] => true,
            end => self.range_end != [0] && self.range_end <= end,
        }
    }
}

/// The etcd range end that covers every key starting with `prefix` (what `etcdctl get
/// --prefix` sends): the prefix with its last byte below 0xff incremented and the rest cut.
/// `"\0"` (the whole keyspace) for an empty or all-0xff prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Decision {
    /// A refusal with a reason.
    pub fn deny(reason: impl Into<String>) -> Decision {
        Decision::Deny(reason.into())
    }

    /// Whether the write may go ahead (possibly rewritten).
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Decision::Deny(_))
    }
}

/// Reads the plugin's `config` value into `T` (`serde_json`), with a message naming the
/// problem when it does not fit.
pub fn config<T: serde::de::DeserializeOwned>() -> Result<T, String> {
    serde_json::from_str(&host::config()).map_err(|e| format!("bad plugin config: {e}"))
}

/// Exports a [`Plugin`] type as the component's `cairn:plugin/plugin` world.
///
/// ```ignore
/// struct MyPlugin;
/// impl cairn_plugin_sdk::Plugin for MyPlugin { /* ... */ }
/// cairn_plugin_sdk::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            use $crate::bindings::exports::cairn::plugin as __cairn;
            struct __CairnExport;
            impl __cairn::admission::Guest for __CairnExport {
                fn check(request: $crate::WriteRequest) -> $crate::Decision {
                    <$plugin as $crate::Plugin>::check(request)
                }
            }
            impl __cairn::auth::Guest for __CairnExport {
                fn authenticate(
                    credentials: $crate::Credentials,
                ) -> Result<Option<$crate::Identity>, String> {
                    <$plugin as $crate::Plugin>::authenticate(credentials)
                }
                fn authorize(request: $crate::AuthRequest) -> $crate::Decision {
                    <$plugin as $crate::Plugin>::authorize(request)
                }
            }
            impl __cairn::backup::Guest for __CairnExport {
                fn begin(direction: $crate::Direction, name: String) -> Result<String, String> {
                    <$plugin as $crate::Plugin>::backup_begin(direction, name)
                }
                fn transform(chunk: Vec<u8>) -> Result<Vec<u8>, String> {
                    <$plugin as $crate::Plugin>::backup_transform(chunk)
                }
                fn finish() -> Result<Vec<u8>, String> {
                    <$plugin as $crate::Plugin>::backup_finish()
                }
            }
            // Only a component exports the world's symbols; a native build (the plugin's
            // unit tests) must not: their names are not valid native linker symbols.
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::__export_plugin_world!(__CairnExport with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_matches_etcdctl() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn key_access_within_a_prefix() {
        let access = |key: &[u8], end: &[u8]| KeyAccess {
            write: false,
            key: key.to_vec(),
            range_end: end.to_vec(),
        };
        assert!(access(b"/a/x", b"").within(b"/a/"));
        assert!(access(b"/a/", b"/a0").within(b"/a/"));
        assert!(!access(b"/a/", b"/b").within(b"/a/"));
        assert!(!access(b"/a/", b"\0").within(b"/a/"));
        assert!(!access(b"/b", b"").within(b"/a/"));
        assert!(access(b"\xff", b"\0").within(b"\xff"));
        assert!(access(b"anything", b"\0").within(b""));
    }
}

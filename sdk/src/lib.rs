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
pub use bindings::exports::cairn::plugin::auth::Credentials;
pub use bindings::exports::cairn::plugin::backup::Direction;

/// A cairn plugin. Every hook has a default that refuses or allows nothing surprising; the
/// node calls only the hooks the plugin is configured for.
pub trait Plugin {
    /// Admission: sees each client write (the ops under the configured prefixes) before it
    /// is proposed. The default allows.
    fn check(_request: WriteRequest) -> Decision {
        Decision::Allow
    }

    /// Authentication: credentials to a user name, or a reason to refuse them.
    fn authenticate(_credentials: Credentials) -> Result<String, String> {
        Err("this plugin does not authenticate".into())
    }

    /// Authorization of a read or write of `[key, range_end)`. The default allows.
    fn authorize(
        _principal: Principal,
        _write: bool,
        _key: Vec<u8>,
        _range_end: Vec<u8>,
    ) -> Decision {
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
                fn authenticate(credentials: $crate::Credentials) -> Result<String, String> {
                    <$plugin as $crate::Plugin>::authenticate(credentials)
                }
                fn authorize(
                    principal: $crate::Principal,
                    write: bool,
                    key: Vec<u8>,
                    range_end: Vec<u8>,
                ) -> $crate::Decision {
                    <$plugin as $crate::Plugin>::authorize(principal, write, key, range_end)
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

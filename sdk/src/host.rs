//! The host functions a plugin may call. Inside a component they call the node; on a
//! native target (unit tests) they are answered by the thread's [`crate::testing::Harness`].

pub use crate::bindings::cairn::plugin::host::Level;
use crate::KeyValue;

#[cfg(target_arch = "wasm32")]
use crate::bindings::cairn::plugin::host as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::native as imp;

/// Writes to the node's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// The plugin's `config` value as JSON (`"null"` when none is configured).
pub fn config() -> String {
    imp::config()
}

/// Monotonic nanoseconds since an arbitrary origin.
pub fn monotonic_now() -> u64 {
    imp::monotonic_now()
}

/// Wall-clock seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    imp::unix_seconds()
}

/// A bounded read-only range read of the node's current state.
pub fn range(key: &[u8], range_end: &[u8], limit: u32) -> Result<Vec<KeyValue>, String> {
    imp::range(key, range_end, limit)
}

/// The number of live keys in a range of the node's current state (etcd's `count_only`),
/// with no cap. Its cost grows with the range; it fails if it outlasts the call's deadline.
pub fn count(key: &[u8], range_end: &[u8]) -> Result<u64, String> {
    imp::count(key, range_end)
}

/// The number of live keys under `prefix`.
pub fn count_prefix(prefix: &[u8]) -> Result<u64, String> {
    count(prefix, &crate::prefix_end(prefix))
}

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

//! A native stand-in for the node, so plugin logic is tested with `cargo test`.
//!
//! ```
//! use cairn_plugin_sdk::testing::Harness;
//! let h = Harness::new().config(serde_json::json!({"limit": 3})).kv(b"/a", b"1");
//! assert_eq!(cairn_plugin_sdk::host::config(), "{\"limit\":3}");
//! assert_eq!(cairn_plugin_sdk::host::range(b"/a", b"", 10).map(|kvs| kvs.len()), Ok(1));
//! assert_eq!(cairn_plugin_sdk::host::count_prefix(b"/"), Ok(1));
//! drop(h);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::host::Level;
use crate::{Direction, KeyValue, Plugin};

#[derive(Default)]
struct State {
    config: String,
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    logs: Vec<(Level, String)>,
    now_nanos: u64,
    unix_seconds: u64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        config: "null".into(),
        ..State::default()
    });
}

/// The host as a plugin's unit test sees it: config, keys, clocks and captured logs, per
/// thread (cargo runs each test on its own thread). Dropping it resets the thread's state.
pub struct Harness(());

impl Harness {
    /// A host with `null` config, no keys and clocks at zero.
    pub fn new() -> Harness {
        STATE.with(|s| {
            *s.borrow_mut() = State {
                config: "null".into(),
                ..State::default()
            }
        });
        Harness(())
    }

    /// Sets the plugin's config value.
    pub fn config(self, value: serde_json::Value) -> Harness {
        STATE.with(|s| s.borrow_mut().config = value.to_string());
        self
    }

    /// Adds a key to the store `host::range` and `host::count` read.
    pub fn kv(self, key: &[u8], value: &[u8]) -> Harness {
        STATE.with(|s| s.borrow_mut().kv.insert(key.to_vec(), value.to_vec()));
        self
    }

    /// Adds `n` keys `{prefix}{i:08}` (`i` from 0) with empty values: a large store in
    /// one line.
    pub fn keys(self, prefix: &str, n: usize) -> Harness {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            for i in 0..n {
                s.kv.insert(format!("{prefix}{i:08}").into_bytes(), Vec::new());
            }
        });
        self
    }

    /// Sets both clocks (monotonic in nanoseconds, wall in Unix seconds).
    pub fn clock(self, monotonic_nanos: u64, unix_seconds: u64) -> Harness {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.now_nanos = monotonic_nanos;
            s.unix_seconds = unix_seconds;
        });
        self
    }

    /// The messages the plugin logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        STATE.with(|s| s.borrow().logs.clone())
    }
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        STATE.with(|s| *s.borrow_mut() = State::default());
    }
}

/// Runs one backup stream through plugin `P` as the node does: `begin`, then `transform`
/// on `input` cut into `chunk`-byte pieces, then `finish`. Returns the output's name and
/// bytes. A native test runs every stream on the same thread, so `begin` must reset any
/// stream state the plugin keeps (in a component, each stream gets a fresh instance).
pub fn backup_stream<P: Plugin>(
    direction: Direction,
    name: &str,
    input: &[u8],
    chunk: usize,
) -> Result<(String, Vec<u8>), String> {
    let name = P::backup_begin(direction, name.to_string())?;
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        out.extend(P::backup_transform(piece.to_vec())?);
    }
    out.extend(P::backup_finish()?);
    Ok((name, out))
}

#[doc(hidden)]
pub mod native {
    use super::*;

    /// The node's cap on one `host::range` (`RANGE_LIMIT` in node/src/plugins/runtime.rs).
    const RANGE_LIMIT: u32 = 1000;

    pub fn log(level: Level, message: &str) {
        STATE.with(|s| s.borrow_mut().logs.push((level, message.to_string())));
    }

    pub fn config() -> String {
        STATE.with(|s| s.borrow().config.clone())
    }

    pub fn monotonic_now() -> u64 {
        STATE.with(|s| s.borrow().now_nanos)
    }

    pub fn unix_seconds() -> u64 {
        STATE.with(|s| s.borrow().unix_seconds)
    }

    /// Whether `k` is in etcd's range [key, range_end).
    fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
        if range_end.is_empty() {
            k == key
        } else {
            k >= key && (range_end == [0] || k < range_end)
        }
    }

    pub fn count(key: &[u8], range_end: &[u8]) -> Result<u64, String> {
        STATE.with(|s| {
            let n = s
                .borrow()
                .kv
                .keys()
                .filter(|k| in_range(k, key, range_end))
                .count();
            Ok(n as u64)
        })
    }

    pub fn range(key: &[u8], range_end: &[u8], limit: u32) -> Result<Vec<KeyValue>, String> {
        STATE.with(|s| {
            let s = s.borrow();
            Ok(s.kv
                .iter()
                .filter(|(k, _)| in_range(k, key, range_end))
                .take(limit.min(RANGE_LIMIT) as usize)
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                    create_revision: 1,
                    mod_revision: 1,
                    version: 1,
                    lease: 0,
                })
                .collect())
        })
    }
}

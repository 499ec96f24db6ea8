//! `namespace-quota`: each namespace (a key prefix) belongs to some principals, and bounds
//! its values' size and its number of keys.
//!
//! Config:
//! ```json
//! {"namespaces": [
//!   {"prefix": "/team-a/", "owners": ["alice"], "max-value-bytes": 1024, "max-keys": 100}
//! ]}
//! ```
//! `owners` absent or containing `"*"` lets anyone write; the anonymous principal's name is
//! `""`. A key under several namespaces obeys the longest prefix. `max-keys` counts the
//! keys already stored under the prefix with `host.count` (no cap), once per request, and
//! adds the keys the request would create, so a txn cannot overfill a namespace. It is
//! still a soft limit: two concurrent requests can both pass (the plugin sees no raft order).

use std::collections::{BTreeMap, BTreeSet};

use cairn_plugin_sdk::{host, Decision, Plugin, WriteOp, WriteRequest};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Namespace {
    prefix: String,
    owners: Option<Vec<String>>,
    max_value_bytes: Option<u64>,
    max_keys: Option<u32>,
}

impl Namespace {
    fn owned_by(&self, name: &str) -> bool {
        self.owners
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == "*" || n == name))
    }
}

pub struct NamespaceQuota;

impl Plugin for NamespaceQuota {
    fn check(request: WriteRequest) -> Decision {
        let config: Config = match cairn_plugin_sdk::config::<Option<Config>>() {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => return Decision::deny(e),
        };
        let who = &request.principal.name;
        // Keys the request would create, per namespace with a key limit: the namespace is
        // counted once per request, however many of its puts the request carries.
        let mut creates: BTreeMap<&str, (u32, BTreeSet<&[u8]>)> = BTreeMap::new();
        for op in &request.ops {
            let Some(ns) = namespace_of(&config, op.key()) else {
                continue;
            };
            if !ns.owned_by(who) {
                return Decision::deny(format!("{who:?} does not own namespace {}", ns.prefix));
            }
            let WriteOp::Put(put) = op else { continue };
            if let Some(max) = ns.max_value_bytes {
                if !put.ignore_value && put.value_size > max {
                    return Decision::deny(format!(
                        "value of {} bytes exceeds {max} bytes in namespace {}",
                        put.value_size, ns.prefix
                    ));
                }
            }
            if let Some(max) = ns.max_keys {
                let (_, keys) = creates.entry(&ns.prefix).or_insert((max, BTreeSet::new()));
                keys.insert(&put.key);
            }
        }
        for (prefix, (max, keys)) in creates {
            if let Err(reason) = room_for(prefix, max, &keys) {
                return Decision::deny(reason);
            }
        }
        Decision::Allow
    }
}

cairn_plugin_sdk::export_plugin!(NamespaceQuota);

fn namespace_of<'c>(config: &'c Config, key: &[u8]) -> Option<&'c Namespace> {
    config
        .namespaces
        .iter()
        .filter(|n| key.starts_with(n.prefix.as_bytes()))
        .max_by_key(|n| n.prefix.len())
}

/// Refuses puts that would take the namespace `prefix` past `max` keys. Updates of keys
/// that exist need no room; deletes in the same request are not credited.
fn room_for(prefix: &str, max: u32, keys: &BTreeSet<&[u8]>) -> Result<(), String> {
    let mut new = 0;
    for key in keys {
        if host::count(key, b"")? == 0 {
            new += 1;
        }
    }
    if new > 0 && host::count_prefix(prefix.as_bytes())? + new > u64::from(max) {
        return Err(format!("namespace {prefix} is full ({max} keys)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_plugin_sdk::testing::Harness;
    use serde_json::json;

    fn harness() -> Harness {
        Harness::new().config(json!({"namespaces": [
            {"prefix": "/a/", "owners": ["alice"], "max-value-bytes": 4, "max-keys": 2},
            {"prefix": "/open/"},
        ]}))
    }

    #[test]
    fn owners_write_their_namespace_only() {
        let _h = harness();
        assert!(NamespaceQuota::check(WriteRequest::new("alice").put("/a/1", "x")).is_allowed());
        assert_eq!(
            NamespaceQuota::check(WriteRequest::new("bob").delete("/a/1")),
            Decision::deny("\"bob\" does not own namespace /a/")
        );
        assert!(NamespaceQuota::check(WriteRequest::new("bob").put("/open/1", "x")).is_allowed());
        assert!(
            NamespaceQuota::check(WriteRequest::new("bob").put("/elsewhere", "x")).is_allowed()
        );
    }

    #[test]
    fn value_size_and_key_count_are_bounded() {
        let _h = harness().kv(b"/a/1", b"x").kv(b"/a/2", b"y");
        assert!(
            !NamespaceQuota::check(WriteRequest::new("alice").put("/a/1", "12345")).is_allowed()
        );
        // Updating an existing key needs no room; a third key does.
        assert!(NamespaceQuota::check(WriteRequest::new("alice").put("/a/1", "z")).is_allowed());
        assert_eq!(
            NamespaceQuota::check(WriteRequest::new("alice").put("/a/3", "z")),
            Decision::deny("namespace /a/ is full (2 keys)")
        );
    }

    #[test]
    fn a_request_creating_several_keys_needs_room_for_all() {
        let _h = harness().kv(b"/a/1", b"x");
        let two_new = WriteRequest::new("alice").put("/a/2", "y").put("/a/3", "z");
        assert_eq!(
            NamespaceQuota::check(two_new),
            Decision::deny("namespace /a/ is full (2 keys)")
        );
        let update_and_new = WriteRequest::new("alice").put("/a/1", "w").put("/a/2", "y");
        assert!(NamespaceQuota::check(update_and_new).is_allowed());
    }

    #[test]
    fn key_count_is_exact_past_a_thousand_keys() {
        // host.range caps a read at 1000 pairs; host.count has no cap.
        let _h = Harness::new()
            .config(json!({"namespaces": [{"prefix": "/big/", "max-keys": 1500}]}))
            .keys("/big/", 1499);
        assert!(NamespaceQuota::check(WriteRequest::new("").put("/big/new", "x")).is_allowed());
        let _h = _h.kv(b"/big/new", b"x");
        assert_eq!(
            NamespaceQuota::check(WriteRequest::new("").put("/big/newer", "x")),
            Decision::deny("namespace /big/ is full (1500 keys)")
        );
        assert!(NamespaceQuota::check(WriteRequest::new("").put("/big/new", "y")).is_allowed());
    }
}

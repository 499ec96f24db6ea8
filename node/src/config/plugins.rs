//! The `plugins:` list of the config file: raw entries as YAML spells them, validated
//! into [`PluginConfig`]. Plugins are configured only in the file (a list of mappings has
//! no flag or `ETCD_*` form); flags beside `--config-file` still override its other keys.
//!
//! ```yaml
//! plugins:
//!   - name: schema-guard
//!     path: ../plugins/target/wasm32-wasip2/release/schema_guard.wasm  # relative to this file
//!     hooks: [admission]            # and/or auth, backup
//!     prefixes: ["/json/"]          # keys admission sees; empty or absent: every key
//!     order: 10                     # lower runs first; ties keep file order
//!     fuel: 10000000                # wasm instructions per call (backup: per chunk, 2e9)
//!     deadline: 1s                  # wall-clock backstop per call (backup: 10s)
//!     memory: 16MiB                 # per instance
//!     failure-policy: fail-closed   # or fail-open
//!     deny-code: permission-denied  # or failed-precondition
//!     values: true                  # pass put values (false: sizes only)
//!     allow-rewrite: false          # may the plugin rewrite values
//!     config: {schemas: []}         # opaque, handed to the plugin as JSON
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::Value;
use serde::Deserialize;

use super::validate::go_duration;
use super::ConfigError;

/// Hooks the node calls plugins for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Admission,
    /// Authentication and authorization: the plugin's `authenticate` and `authorize`.
    Auth,
    /// The backup stream: `begin`, `transform` per chunk, `finish`.
    Backup,
}

impl Hook {
    /// The hook's name in the config file, the WIT world and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Admission => "admission",
            Hook::Auth => "auth",
            Hook::Backup => "backup",
        }
    }

    /// The `hook` labels its calls are counted under: auth's two calls are told apart.
    pub const fn labels(self) -> &'static [&'static str] {
        match self {
            Hook::Admission => &["admission"],
            Hook::Auth => &["authenticate", "authorize"],
            Hook::Backup => &["backup"],
        }
    }
}

/// What a plugin's failure (trap, timeout, memory limit, bad answer) means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse the request (the default: a broken guard must not let writes through).
    FailClosed,
    /// Let the request through as if the plugin allowed it.
    FailOpen,
}

/// The gRPC code a denial reaches the client with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCode {
    PermissionDenied,
    FailedPrecondition,
}

/// One validated plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    pub name: String,
    pub path: PathBuf,
    pub hooks: Vec<Hook>,
    /// Keys the plugin sees; empty means every key.
    pub prefixes: Vec<Vec<u8>>,
    pub order: i64,
    /// The per-call budget, in wasm instructions (wasmtime fuel).
    pub fuel: u64,
    /// The wall-clock backstop of a call, for what fuel does not count.
    pub deadline: Duration,
    pub memory_bytes: u64,
    pub failure_policy: FailurePolicy,
    pub deny_code: DenyCode,
    pub values: bool,
    pub allow_rewrite: bool,
    /// The opaque `config` value as JSON text.
    pub config_json: String,
}

impl PluginConfig {
    /// A backup plugin named on a command line (`cairn snapshot restore --unseal`), with
    /// the defaults a config file entry would get; named after its file.
    pub fn backup(path: PathBuf, config_json: String) -> PluginConfig {
        PluginConfig {
            name: path
                .file_stem()
                .map_or_else(|| "backup".into(), |s| s.to_string_lossy().into_owned()),
            path,
            hooks: vec![Hook::Backup],
            prefixes: Vec::new(),
            order: 0,
            fuel: DEFAULT_BACKUP_FUEL,
            deadline: DEFAULT_BACKUP_DEADLINE,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            failure_policy: FailurePolicy::FailClosed,
            deny_code: DenyCode::PermissionDenied,
            values: false,
            allow_rewrite: false,
            config_json,
        }
    }
}

/// Defaults. A call's budget is fuel, not time, so that CPU contention (a busy machine
/// descheduling the call's thread) never fails a call that a quiet machine would allow:
/// 10 million instructions is a few milliseconds of compiled wasm, a thousand times what
/// the example plugins use. The wall-clock deadline is only a backstop for what fuel does
/// not count (host calls, page faults), so it is generous. 16 MiB holds a Rust component's
/// heap and a request's values.
pub const DEFAULT_FUEL: u64 = 10_000_000;
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// A backup chunk (64 KiB compressed and encrypted) is work, not a check: a backup plugin
/// gets this much fuel and time per call unless its entry says otherwise.
pub const DEFAULT_BACKUP_FUEL: u64 = 2_000_000_000;
pub const DEFAULT_BACKUP_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_MEMORY_BYTES: u64 = 16 << 20;
/// Upper bounds, so a typo cannot make a plugin hold a request for minutes.
const MAX_DEADLINE: Duration = Duration::from_secs(10);
const MAX_FUEL: u64 = 10_000_000_000;
const MAX_MEMORY_BYTES: u64 = 1 << 30;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlugin {
    name: String,
    path: PathBuf,
    #[serde(default)]
    hooks: Vec<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    order: i64,
    fuel: Option<u64>,
    deadline: Option<String>,
    memory: Option<Value>,
    failure_policy: Option<String>,
    deny_code: Option<String>,
    values: Option<bool>,
    #[serde(default)]
    allow_rewrite: bool,
    config: Option<serde_json::Value>,
}

/// Validates the file's `plugins:` value. Paths are relative to the config file.
pub(crate) fn parse(value: &Value, file: &Path) -> Result<Vec<PluginConfig>, ConfigError> {
    let bad = |reason: String| ConfigError::BadFileValue {
        key: "plugins".into(),
        path: file.to_owned(),
        reason,
    };
    if matches!(value, Value::Empty(..)) {
        return Ok(Vec::new());
    }
    let items: Vec<Value> = value
        .deserialize()
        .map_err(|e| bad(format!("expected a list of plugins: {e}")))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PluginConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        // Name the plugin in every refusal, by its name when it has one.
        let label = match item.find_ref("name").and_then(Value::as_str) {
            Some(name) => format!("{name:?}"),
            None => format!("#{}", i + 1),
        };
        let p: RawPlugin = item
            .deserialize()
            .map_err(|e| bad(format!("plugin {label}: {e}")))?;
        let name = p.name.clone();
        let bad = |reason: String| bad(format!("plugin {name:?}: {reason}"));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                "name must be non-empty letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(bad("name used twice".into()));
        }
        out.push(validate_one(p, base).map_err(bad)?);
    }
    // A stable sort: equal orders keep file order.
    out.sort_by_key(|p| p.order);
    Ok(out)
}

fn validate_one(p: RawPlugin, base: &Path) -> Result<PluginConfig, String> {
    let hooks = p
        .hooks
        .iter()
        .map(|h| match h.as_str() {
            "admission" => Ok(Hook::Admission),
            "auth" => Ok(Hook::Auth),
            "backup" => Ok(Hook::Backup),
            other => Err(format!(
                "unknown hook {other:?} (expected admission, auth or backup)"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if hooks.is_empty() {
        return Err("hooks: name at least one hook (admission, auth or backup)".into());
    }
    // Authorization sees every key a request touches and a backup sees the whole store:
    // a prefix filter there would silently let requests or data through unexamined.
    if !p.prefixes.is_empty() && !hooks.contains(&Hook::Admission) {
        return Err("prefixes apply to the admission hook only".into());
    }
    let deadline = match &p.deadline {
        Some(text) => go_duration(text).map_err(|e| format!("deadline {text:?}: {e}"))?,
        None if hooks == [Hook::Backup] => DEFAULT_BACKUP_DEADLINE,
        None => DEFAULT_DEADLINE,
    };
    if deadline.is_zero() || deadline > MAX_DEADLINE {
        return Err(format!(
            "deadline must be above 0 and at most {MAX_DEADLINE:?}"
        ));
    }
    let fuel = match p.fuel {
        Some(fuel) => fuel,
        None if hooks == [Hook::Backup] => DEFAULT_BACKUP_FUEL,
        None => DEFAULT_FUEL,
    };
    if !(1..=MAX_FUEL).contains(&fuel) {
        return Err(format!("fuel must be between 1 and {MAX_FUEL}, got {fuel}"));
    }
    let memory_bytes = match &p.memory {
        Some(v) => byte_size(v)?,
        None => DEFAULT_MEMORY_BYTES,
    };
    if !(64 << 10..=MAX_MEMORY_BYTES).contains(&memory_bytes) {
        return Err(format!(
            "memory must be between 64KiB and 1GiB, got {memory_bytes} bytes"
        ));
    }
    let failure_policy = match p.failure_policy.as_deref() {
        None | Some("fail-closed") => FailurePolicy::FailClosed,
        Some("fail-open") => FailurePolicy::FailOpen,
        Some(other) => {
            return Err(format!(
                "failure-policy {other:?}: expected fail-closed or fail-open"
            ))
        }
    };
    let deny_code = match p.deny_code.as_deref() {
        None | Some("permission-denied") => DenyCode::PermissionDenied,
        Some("failed-precondition") => DenyCode::FailedPrecondition,
        Some(other) => {
            return Err(format!(
                "deny-code {other:?}: expected permission-denied or failed-precondition"
            ))
        }
    };
    let config_json = p.config.unwrap_or(serde_json::Value::Null).to_string();
    Ok(PluginConfig {
        name: p.name,
        path: base.join(p.path),
        hooks,
        prefixes: p.prefixes.into_iter().map(String::into_bytes).collect(),
        order: p.order,
        fuel,
        deadline,
        memory_bytes,
        failure_policy,
        deny_code,
        values: p.values.unwrap_or(true),
        allow_rewrite: p.allow_rewrite,
        config_json,
    })
}

/// `16777216`, `16MiB`, `512KiB`, `1GiB` (also `MB`/`KB`/`GB` as binary units).
fn byte_size(v: &Value) -> Result<u64, String> {
    if let Some(n) = v.to_u128() {
        return u64::try_from(n).map_err(|_| "memory: too large".to_string());
    }
    let text = v
        .as_str()
        .ok_or("memory: expected bytes or a size like 16MiB")?
        .trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("memory {text:?}: expected bytes or a size like 16MiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "KB" | "K" => 10,
        "MiB" | "MB" | "M" => 20,
        "GiB" | "GB" | "G" => 30,
        other => return Err(format!("memory {text:?}: unknown unit {other:?}")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("memory {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Yaml};
    use figment::Provider;

    fn parse_yaml(text: &str) -> Result<Vec<PluginConfig>, ConfigError> {
        let data = Yaml::string(text).data().expect("test YAML parses");
        let dict = data.into_values().next().expect("one profile");
        parse(&dict["plugins"], Path::new("/etc/cairn/c.yaml"))
    }

    #[test]
    fn defaults_and_relative_paths() {
        let got = parse_yaml("plugins:\n  - name: g\n    path: g.wasm\n    hooks: [admission]\n")
            .expect("valid");
        assert_eq!(
            got,
            vec![PluginConfig {
                name: "g".into(),
                path: "/etc/cairn/g.wasm".into(),
                hooks: vec![Hook::Admission],
                prefixes: vec![],
                order: 0,
                fuel: DEFAULT_FUEL,
                deadline: DEFAULT_DEADLINE,
                memory_bytes: DEFAULT_MEMORY_BYTES,
                failure_policy: FailurePolicy::FailClosed,
                deny_code: DenyCode::PermissionDenied,
                values: true,
                allow_rewrite: false,
                config_json: "null".into(),
            }]
        );
    }

    #[test]
    fn every_setting_is_read_and_sorted_by_order() {
        let got = parse_yaml(
            "plugins:
  - {name: b, path: /b.wasm, hooks: [admission], order: 2}
  - name: a
    path: /a.wasm
    hooks: [admission]
    prefixes: [/x/]
    order: 1
    fuel: 5000
    deadline: 2ms
    memory: 1MiB
    failure-policy: fail-open
    deny-code: failed-precondition
    values: false
    allow-rewrite: true
    config: {k: [1, 2]}
",
        )
        .expect("valid");
        assert_eq!(got[0].name, "a");
        assert_eq!(got[1].name, "b");
        let a = &got[0];
        assert_eq!(a.prefixes, vec![b"/x/".to_vec()]);
        assert_eq!(a.fuel, 5000);
        assert_eq!(a.deadline, Duration::from_millis(2));
        assert_eq!(a.memory_bytes, 1 << 20);
        assert_eq!(a.failure_policy, FailurePolicy::FailOpen);
        assert_eq!(a.deny_code, DenyCode::FailedPrecondition);
        assert!(!a.values && a.allow_rewrite);
        assert_eq!(a.config_json, r#"{"k":[1,2]}"#);
    }

    #[test]
    fn auth_and_backup_hooks_and_the_backup_deadline() {
        let got = parse_yaml(
            "plugins:\n  - {name: t, path: t.wasm, hooks: [auth]}\n  - {name: s, path: s.wasm, hooks: [backup]}\n",
        )
        .expect("valid");
        assert_eq!(got[0].hooks, vec![Hook::Auth]);
        assert_eq!(got[0].deadline, DEFAULT_DEADLINE);
        assert_eq!(got[1].hooks, vec![Hook::Backup]);
        assert_eq!(got[1].deadline, DEFAULT_BACKUP_DEADLINE);
        assert_eq!(got[1].fuel, DEFAULT_BACKUP_FUEL);
    }

    #[test]
    fn refusals_name_the_plugin_and_the_problem() {
        let cases = [
            ("- {name: p, path: x, hooks: [admision]}", "plugin \"p\": unknown hook \"admision\""),
            ("- {name: p, path: x, hooks: []}", "plugin \"p\": hooks"),
            ("- {name: p, path: x, hooks: [auth], prefixes: [/a/]}", "plugin \"p\": prefixes apply to the admission hook only"),
            ("- {name: p, path: x, hooks: [admission], deadline: 0s}", "plugin \"p\": deadline"),
            ("- {name: p, path: x, hooks: [admission], memory: 3TiB}", "unknown unit"),
            ("- {name: p, path: x, hooks: [admission], fuel: 0}", "plugin \"p\": fuel must be"),
            ("- {name: p, path: x, hooks: [admission], failure-policy: maybe}", "failure-policy"),
            ("- {name: p, path: x, hooks: [admission], colour: red}", "plugin \"p\": unknown field: found `colour`"),
            ("- {path: x, hooks: [admission]}", "plugin #1: missing field `name`"),
            ("- {name: p, path: x, hooks: [admission]}\n  - {name: p, path: y, hooks: [admission]}", "name used twice"),
        ];
        for (yaml, want) in cases {
            let err = parse_yaml(&format!("plugins:\n  {yaml}\n"))
                .expect_err(yaml)
                .to_string();
            assert!(err.contains(want), "{yaml}: {err}");
            assert!(err.contains("plugins"), "{yaml}: {err}");
        }
    }
}

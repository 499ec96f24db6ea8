//! The four raw layers (etcd defaults, the YAML file, `ETCD_*` variables, flags) and their
//! figment merge. Every value here is still the raw string the user wrote; turning strings
//! into typed values is `validate`'s job. This module never reads the process environment:
//! the caller hands it the variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::keys::{self, Key, Kind, CONFIG_FILE, KEYS};
use super::{suggest, ConfigError, Origin, Unknown};

/// Layer names, carried through figment's metadata so `merge` can tell which layer won.
const DEFAULT: &str = "default";
const FILE: &str = "file";
const ENV: &str = "env";
const FLAG: &str = "flag";

/// One layer: the raw string it sets for each key it mentions.
#[derive(Debug)]
pub(crate) struct Layer {
    name: &'static str,
    values: BTreeMap<String, String>,
}

impl Layer {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            values: BTreeMap::new(),
        }
    }

    /// The flag layer, from the flags clap saw on the command line.
    pub(crate) fn flags(values: BTreeMap<String, String>) -> Self {
        Self { name: FLAG, values }
    }

    /// The raw value this layer sets for `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

/// etcd 3.5's defaults for every key.
pub(crate) fn defaults() -> Layer {
    let mut layer = Layer::new(DEFAULT);
    for key in KEYS {
        layer.values.insert(key.name.into(), key.default.into());
    }
    layer
}

/// The `ETCD_*` variables among `env`. Like etcd, a variable that names no key is reported
/// as a warning rather than refused, since the same environment often carries variables
/// for other etcd versions or tools.
pub(crate) fn env(env: &[(String, String)], warnings: &mut Vec<String>) -> Layer {
    let mut layer = Layer::new(ENV);
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("ETCD_") else {
            continue;
        };
        let name = rest.to_lowercase().replace('_', "-");
        match keys::find(&name) {
            Some(key) if keys::env_var(key.name) == *var => {
                layer.values.insert(name, value.clone());
            }
            _ => warnings.push(match keys::suggest(&name) {
                Some(near) => format!(
                    "unrecognized environment variable {var}={value} (did you mean {}?)",
                    keys::env_var(near)
                ),
                None => format!("unrecognized environment variable {var}={value}"),
            }),
        }
    }
    layer
}

/// The file layer when no `--config-file` is given.
pub(crate) fn no_file() -> Layer {
    Layer::new(FILE)
}

/// The YAML file at `path`, with etcd's key names. Unknown keys are refused, all of them in
/// one error with the nearest known key for each (etcd itself ignores them, which hides
/// typos). etcd nests TLS settings under `client-transport-security:` /
/// `peer-transport-security:`; they are flattened to the flag names (`cert-file`,
/// `peer-cert-file`, ...) so every layer speaks the same keys. Nested settings that have no
/// flag (the client section's `allowed-cn`) are added to `no_flag` by their written name.
/// The `plugins:` list is not a flag: it is validated here into `plugins`.
pub(crate) fn file(
    path: &Path,
    no_flag: &mut Vec<String>,
    plugins: &mut Vec<super::PluginConfig>,
) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let mut layer = Layer::new(FILE);
    // A file of only comments is a YAML null, not a mapping; treat it as setting nothing.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(layer);
    }
    let data = Yaml::string(&text)
        .data()
        .map_err(|e| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let dict = data.into_values().next().unwrap_or_default();
    let mut flat = FileValues {
        path,
        values: &mut layer.values,
        unknown: Vec::new(),
        no_flag,
    };
    for (name, value) in dict {
        match transport_prefix(&name) {
            Some(prefix) => flat.insert_transport(&name, prefix, value)?,
            None if name == "plugins" => *plugins = super::plugins::parse(&value, path)?,
            None if name == BACKUP_SECTION => flat.insert_backup(value)?,
            None if name != CONFIG_FILE && keys::find(&name).is_some() => {
                flat.insert(&name, name.clone(), &value)?
            }
            None => {
                // `config-file` is a known key the file itself may not set.
                let suggestion = keys::suggest(&name)
                    .filter(|s| *s != name)
                    .map(str::to_owned);
                flat.unknown(name, suggestion)
            }
        }
    }
    if !flat.unknown.is_empty() {
        return Err(ConfigError::UnknownKeys(flat.unknown));
    }
    Ok(layer)
}

/// cairn's `backup:` section: `{dir, interval, retention: {count, age}, plugins}`, the
/// `backup-*` keys nested, flattened like the transport sections.
const BACKUP_SECTION: &str = "backup";

/// The flag each `backup:` setting stands for (`retention` is a mapping of two).
const BACKUP_KEYS: &[(&str, &str)] = &[
    ("dir", "backup-dir"),
    ("interval", "backup-interval"),
    ("plugins", "backup-plugins"),
    ("retention.count", "backup-retention-count"),
    ("retention.age", "backup-retention-age"),
];

/// The flag-name prefix for etcd's nested TLS sections.
fn transport_prefix(name: &str) -> Option<&'static str> {
    match name {
        "client-transport-security" => Some(""),
        "peer-transport-security" => Some("peer-"),
        _ => None,
    }
}

/// The keys etcd's `securityConfig` (3.5 and 3.6) nests under a transport section.
const TRANSPORT_KEYS: &[&str] = &[
    "cert-file",
    "key-file",
    "client-cert-file",
    "client-key-file",
    "client-cert-auth",
    "trusted-ca-file",
    "auto-tls",
    "allowed-cn",
    "allowed-hostname",
    "skip-client-san-verification",
];

/// The flag a nested transport setting stands for, if it has one.
fn transport_flag(prefix: &str, sub: &str) -> Option<String> {
    let flag = match (prefix, sub) {
        ("", "allowed-cn") => return None,
        ("", "allowed-hostname") => "client-cert-allowed-hostname".to_owned(),
        ("", "skip-client-san-verification") => return None,
        (_, "allowed-cn" | "allowed-hostname") => format!("peer-cert-{sub}"),
        (_, "skip-client-san-verification") => "peer-skip-client-san-verification".to_owned(),
        (_, _) => format!("{prefix}{sub}"),
    };
    Some(flag)
}

/// The file's values as they are flattened into flag names.
struct FileValues<'a> {
    path: &'a Path,
    values: &'a mut BTreeMap<String, String>,
    unknown: Vec<Unknown>,
    no_flag: &'a mut Vec<String>,
}

impl FileValues<'_> {
    /// The entries of the file's section `section`, which must be a mapping (or empty).
    fn mapping(&self, section: &str, value: Value) -> Result<Dict, ConfigError> {
        match value {
            Value::Dict(_, inner) => Ok(inner),
            Value::Empty(..) => Ok(Dict::new()),
            _ => Err(self.bad_value(section, "expected a mapping")),
        }
    }

    fn insert_transport(
        &mut self,
        section: &str,
        prefix: &str,
        value: Value,
    ) -> Result<(), ConfigError> {
        for (sub, value) in self.mapping(section, value)? {
            let written = format!("{section}.{sub}");
            if !TRANSPORT_KEYS.contains(&sub.as_str()) {
                let suggestion = suggest::nearest(&sub, TRANSPORT_KEYS.iter().copied())
                    .map(|s| format!("{section}.{s}"));
                self.unknown(written, suggestion);
                continue;
            }
            match transport_flag(prefix, &sub) {
                Some(flag) => self.insert(&written, flag, &value)?,
                None => {
                    // Still refuse a malformed value, as for any other key.
                    if scalar(&value)
                        .map_err(|reason| self.bad_value(&written, reason))?
                        .is_some_and(|v| !v.is_empty())
                    {
                        self.no_flag.push(written);
                    }
                }
            }
        }
        Ok(())
    }

    /// The `backup:` section (see [`BACKUP_KEYS`]); `retention:` nests one level more.
    fn insert_backup(&mut self, value: Value) -> Result<(), ConfigError> {
        let mut settings = Vec::new();
        self.nested(BACKUP_SECTION, value, &mut settings)?;
        for (written, value) in settings {
            let sub = &written[BACKUP_SECTION.len() + 1..];
            match BACKUP_KEYS.iter().find(|(name, _)| *name == sub) {
                Some((_, flag)) => self.insert(&written, (*flag).to_owned(), &value)?,
                None => {
                    let suggestion = suggest::nearest(sub, BACKUP_KEYS.iter().map(|(n, _)| *n))
                        .map(|s| format!("{BACKUP_SECTION}.{s}"));
                    self.unknown(written, suggestion);
                }
            }
        }
        Ok(())
    }

    /// The leaves under the mapping `value` (written `section`), as `section.a.b`; only
    /// `backup.retention` is a mapping inside the section.
    fn nested(
        &self,
        section: &str,
        value: Value,
        leaves: &mut Vec<(String, Value)>,
    ) -> Result<(), ConfigError> {
        for (sub, value) in self.mapping(section, value)? {
            let written = format!("{section}.{sub}");
            if written == "backup.retention" {
                self.nested(&written, value, leaves)?;
            } else {
                leaves.push((written, value));
            }
        }
        Ok(())
    }

    /// Records `value` under `key`; `written` is the key as the file spells it, for errors.
    /// A YAML null (`wal-dir:` with nothing after it, as in etcd's sample file) sets nothing.
    /// An integer for a duration key is nanoseconds, as etcd's YAML decoding reads it.
    fn insert(&mut self, written: &str, key: String, value: &Value) -> Result<(), ConfigError> {
        let is_duration = keys::find(&key).is_some_and(|k| k.kind == Kind::Duration);
        let text = match value {
            Value::Num(..) if is_duration => match number(value) {
                Some(n) if n.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
                    Some(format!("{n}ns"))
                }
                _ => {
                    return Err(self.bad_value(
                        written,
                        "expected a Go duration (\"5s\") or integer nanoseconds",
                    ))
                }
            },
            _ => scalar(value).map_err(|reason| self.bad_value(written, reason))?,
        };
        if let Some(text) = text {
            self.values.insert(key, text);
        }
        Ok(())
    }

    fn unknown(&mut self, key: String, suggestion: Option<String>) {
        self.unknown.push(Unknown {
            key,
            origin: Origin::File(self.path.to_owned()),
            suggestion,
        });
    }

    fn bad_value(&self, key: &str, reason: &str) -> ConfigError {
        ConfigError::BadFileValue {
            key: key.to_owned(),
            path: self.path.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// A YAML scalar as the string a flag would have carried. A list of scalars is joined with
/// commas, the separator etcd's URL lists use.
fn scalar(value: &Value) -> Result<Option<String>, &'static str> {
    Ok(Some(match value {
        Value::String(_, s) => s.clone(),
        Value::Char(_, c) => c.to_string(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(..) => number(value).ok_or("unsupported number")?,
        Value::Empty(..) => return Ok(None),
        Value::Array(_, items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match scalar(item)? {
                    Some(part) => parts.push(part),
                    None => return Err("a list may not contain empty items"),
                }
            }
            parts.join(",")
        }
        Value::Dict(..) => return Err("expected a single value, found a mapping"),
    }))
}

fn number(value: &Value) -> Option<String> {
    value
        .to_u128()
        .map(|n| n.to_string())
        .or_else(|| value.to_i128().map(|n| n.to_string()))
        .or_else(|| value.to_f64().map(|n| n.to_string()))
}

/// One key's winning raw value and the layer it came from.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: &'static Key,
    pub value: String,
    pub origin: Origin,
}

impl Entry {
    /// The value as `config show` prints it: text quoted, numbers and booleans bare.
    pub(crate) fn display_value(&self) -> String {
        match self.key.kind {
            Kind::Text | Kind::List | Kind::Duration | Kind::Legacy => format!("{:?}", self.value),
            Kind::Uint | Kind::Int | Kind::Bool => self.value.clone(),
        }
    }
}

/// The merged raw configuration, one entry per key in `KEYS` order.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    pub entries: Vec<Entry>,
}

impl Raw {
    /// The entry for `name`.
    pub(crate) fn get(&self, name: &str) -> &Entry {
        self.entries
            .iter()
            .find(|e| e.key.name == name)
            .expect("every key validate() reads is in KEYS, and merge() keeps them all")
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> &mut Entry {
        self.entries
            .iter_mut()
            .find(|e| e.key.name == name)
            .expect("every key validate() reads is in KEYS, and merge() keeps them all")
    }
}

/// Merges `layers`, lowest first, and records for each key which layer set its value.
/// `file` is the config file's path, to name it as the origin of the values it set.
pub(crate) fn merge(layers: &[Layer], file: Option<&Path>) -> Result<Raw, ConfigError> {
    let figment = layers.iter().fold(Figment::new(), |f, l| f.merge(l));
    let merged: BTreeMap<String, String> = figment
        .extract()
        .map_err(|e| ConfigError::Merge(Box::new(e)))?;
    let entries = KEYS
        .iter()
        .map(|key| {
            let layer = figment.find_metadata(key.name).map(|m| m.name.as_ref());
            let origin = match layer {
                Some(FILE) => Origin::File(file.map(PathBuf::from).unwrap_or_default()),
                Some(ENV) => Origin::Env(keys::env_var(key.name)),
                Some(FLAG) => Origin::Flag(format!("--{}", key.name)),
                _ => Origin::Default,
            };
            Entry {
                key,
                value: merged.get(key.name).cloned().unwrap_or_default(),
                origin,
            }
        })
        .collect();
    Ok(Raw { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write temp file");
        file
    }

    #[test]
    fn file_flattens_transport_security_and_scalars() {
        let f = write(
            "name: n1\nsnapshot-count: 5000\nforce-new-cluster: false\nwal-dir:\n\
             listen-client-urls: [http://127.0.0.1:1, http://127.0.0.1:2]\n\
             log-outputs: [stderr]\n\
             peer-transport-security:\n  cert-file: /p.pem\n  client-cert-auth: true\n  \
             allowed-cn: [a, b]\n\
             client-transport-security:\n  allowed-hostname: h\n  allowed-cn: [c]\n",
        );
        let mut no_flag = Vec::new();
        let layer = file(f.path(), &mut no_flag, &mut Vec::new()).expect("file loads");
        assert_eq!(layer.get("name"), Some("n1"));
        assert_eq!(layer.get("snapshot-count"), Some("5000"));
        assert_eq!(layer.get("force-new-cluster"), Some("false"));
        assert_eq!(layer.get("wal-dir"), None);
        assert_eq!(
            layer.get("listen-client-urls"),
            Some("http://127.0.0.1:1,http://127.0.0.1:2")
        );
        assert_eq!(layer.get("log-outputs"), Some("stderr"));
        assert_eq!(layer.get("peer-cert-file"), Some("/p.pem"));
        assert_eq!(layer.get("peer-client-cert-auth"), Some("true"));
        assert_eq!(layer.get("peer-cert-allowed-cn"), Some("a,b"));
        assert_eq!(layer.get("client-cert-allowed-hostname"), Some("h"));
        assert_eq!(no_flag, ["client-transport-security.allowed-cn"]);
    }

    #[test]
    fn durations_in_the_file_are_strings_or_integer_nanoseconds() {
        let f = write(
            "experimental-watch-progress-notify-interval: 5000000000\n\
             grpc-keepalive-interval: 90s\ngrpc-keepalive-timeout: 0\n",
        );
        let layer = file(f.path(), &mut Vec::new(), &mut Vec::new()).expect("file loads");
        assert_eq!(
            layer.get("experimental-watch-progress-notify-interval"),
            Some("5000000000ns")
        );
        assert_eq!(layer.get("grpc-keepalive-interval"), Some("90s"));
        assert_eq!(layer.get("grpc-keepalive-timeout"), Some("0ns"));
    }

    #[test]
    fn file_names_every_unknown_key_with_a_suggestion() {
        let f = write(
            "nmae: b\nsnapshot-cuont: 5\nconfig-file: /x.yaml\nzzz-not-close: 1\n\
             client-transport-security:\n  cert-fiel: /c\n",
        );
        match file(f.path(), &mut Vec::new(), &mut Vec::new()) {
            Err(ConfigError::UnknownKeys(unknown)) => {
                let got: Vec<_> = unknown
                    .iter()
                    .map(|u| (u.key.as_str(), u.suggestion.as_deref()))
                    .collect();
                // figment's dictionary is sorted by key.
                assert_eq!(
                    got,
                    [
                        (
                            "client-transport-security.cert-fiel",
                            Some("client-transport-security.cert-file")
                        ),
                        ("config-file", None),
                        ("nmae", Some("name")),
                        ("snapshot-cuont", Some("snapshot-count")),
                        ("zzz-not-close", None),
                    ]
                );
                assert!(unknown
                    .iter()
                    .all(|u| u.origin == Origin::File(f.path().to_owned())));
            }
            other => panic!("expected UnknownKeys, got {other:?}"),
        }
    }

    #[test]
    fn file_of_only_comments_sets_nothing() {
        let f = write("# nothing here\n\n");
        assert!(file(f.path(), &mut Vec::new(), &mut Vec::new())
            .expect("loads")
            .values
            .is_empty());
    }

    #[test]
    fn env_takes_only_exact_etcd_names() {
        let mut warnings = Vec::new();
        let vars = [
            ("ETCD_NAME", "n"),
            ("ETCD_INITIAL_CLUSTER_STATE", "new"),
            ("ETCD_NOT_A_FLAG", "x"),
            ("ETCDCTL_API", "3"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let layer = env(&vars, &mut warnings);
        assert_eq!(layer.get("name"), Some("n"));
        assert_eq!(layer.get("initial-cluster-state"), Some("new"));
        assert_eq!(layer.values.len(), 2);
        assert_eq!(
            warnings,
            ["unrecognized environment variable ETCD_NOT_A_FLAG=x"]
        );
        let mut warnings = Vec::new();
        env(&[("ETCD_DATA_DIRR".into(), "/d".into())], &mut warnings);
        assert_eq!(
            warnings,
            ["unrecognized environment variable ETCD_DATA_DIRR=/d (did you mean ETCD_DATA_DIR?)"]
        );
    }
}

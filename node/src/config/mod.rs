//! Cairn's configuration, configured exactly like etcd 3.5: the same keys with the same
//! defaults, set (lowest precedence first) by etcd's defaults, the YAML file named by
//! `--config-file` (etcd's key names), `ETCD_*` environment variables (flag name upper-cased,
//! `-` -> `_`) and command-line flags (`--name x`, `--name=x`, or Go-style `-name x`).
//!
//! Loading is two steps: `layers` merges raw strings with figment, keeping each value's
//! origin, then `validate` turns them into a typed [`Config`], refusing with the key, the
//! value and its origin. [`load`] is the only function in cairn that reads the process
//! arguments and environment; everything after start-up takes a `Config`.
//!
//! Every flag, `ETCD_*` variable and YAML key of etcd 3.5 is accepted, as are the etcd 3.6
//! names of the `experimental-` ones ([`keys::KEYS`] lists them all). Each is either honoured,
//! or accepted without effect (named in one start-up warning and marked by `config show`),
//! or accepted only at its default because the feature it turns on is not built yet.
//!
//! Deliberate differences from etcd:
//! - With `--config-file`, etcd ignores all other flags and environment variables; cairn
//!   layers them over the file instead, so one flag can override one file key.
//! - Unknown keys in the YAML file are errors, all named at once with the nearest known key
//!   (etcd silently ignores them); so are unknown flags.
//! - Durations in the YAML file may be Go duration strings (`5s`) as well as the integer
//!   nanoseconds etcd reads there; booleans may be any form Go's `strconv.ParseBool` takes.
//! - Features cairn does not implement yet (auto TLS, certificate revocation lists,
//!   discovery, lease checkpoints, the v2 proxy, a Host header whitelist) are
//!   refused rather than ignored.
//! - `initial-cluster` URLs are compared to `initial-advertise-peer-urls` as written; etcd
//!   also resolves host names.

mod cli;
mod keys;
mod layers;
// Plugins: the file's `plugins:` list (issue 12).
mod plugins;
mod suggest;
mod validate;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use keys::{Effect, CONFIG_FILE};
use layers::{Entry, Raw};
pub use plugins::{
    DenyCode, FailurePolicy, Hook, PluginConfig, DEFAULT_DEADLINE as DEFAULT_PLUGIN_DEADLINE,
    DEFAULT_FUEL as DEFAULT_PLUGIN_FUEL, DEFAULT_MEMORY_BYTES as DEFAULT_PLUGIN_MEMORY_BYTES,
};
pub(crate) use validate::go_duration;

/// The typed, validated configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    /// `--wal-dir`: where the raft log lives instead of `<data-dir>/wal`.
    pub wal_dir: Option<PathBuf>,
    /// `--force-new-cluster`: restart this member's data as a one-member cluster.
    pub force_new_cluster: bool,
    /// `--strict-reconfig-check`: refuse membership changes that could lose quorum.
    pub strict_reconfig_check: bool,
    /// `--max-learners` (etcd 3.6; 3.5 has the same limit fixed at 1).
    pub max_learners: usize,
    pub listen_client_urls: Vec<url::Url>,
    pub advertise_client_urls: Vec<url::Url>,
    pub listen_peer_urls: Vec<url::Url>,
    pub initial_advertise_peer_urls: Vec<url::Url>,
    /// Empty unless `--listen-metrics-urls` is set (metrics are then also on client URLs).
    pub listen_metrics_urls: Vec<url::Url>,
    /// `(member name, peer URL)` pairs; a name appears once per URL.
    pub initial_cluster: Vec<(String, url::Url)>,
    pub initial_cluster_token: String,
    pub initial_cluster_state: ClusterState,
    pub snapshot_count: u64,
    /// Raft log entries kept behind a snapshot for slow followers (etcd's
    /// `--experimental-snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub auto_compaction: AutoCompaction,
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    /// The effective quota: a configured 0 is already replaced by etcd's 2 GiB default.
    pub quota_backend_bytes: u64,
    /// One of `debug`, `info`, `warn`, `error`, `panic`, `fatal`.
    pub log_level: String,
    /// Where logs go (`--log-outputs`), without duplicates.
    pub log_outputs: Vec<LogOutput>,
    /// `--log-format` (etcd 3.6): zap's JSON lines or its console text.
    pub log_format: LogFormat,
    /// Extra client listeners (`--listen-client-http-urls`); empty unless set.
    pub listen_client_http_urls: Vec<url::Url>,
    /// `--experimental-watch-progress-notify-interval` (or its etcd 3.6 name).
    pub watch_progress_notify_interval: Duration,
    /// Lease checkpoints (`--experimental-enable-lease-checkpoint` and friends); `None`
    /// when disabled.
    pub lease_checkpoints: Option<crate::lease::CheckpointConfig>,
    /// NOSPACE auto-disarm and the corruption checks.
    pub alarms: crate::core::AlarmSettings,
    pub listener: ListenerOptions,
    pub metrics: MetricsLevel,
    /// Serve `/debug/pprof/profile` on the client URLs.
    pub enable_pprof: bool,
    /// Serve the HTTP/JSON gateway (`/v3/...`) on the client URLs.
    pub enable_grpc_gateway: bool,
    /// Skip fsync: acknowledged writes survive a crash of cairn, not of the machine.
    pub unsafe_no_fsync: bool,
    /// `--unsafe-storage-fault`: tests only, a storage operation to fail on purpose.
    pub unsafe_storage_fault: Option<crate::storage::FaultPlan>,
    /// WebAssembly plugins from the config file's `plugins:` list, in call order.
    pub plugins: Vec<PluginConfig>,
    /// `--backup-dir`: where backups are written; `None` disables them.
    pub backup_dir: Option<PathBuf>,
    /// `--backup-interval`: scheduled backups (on the leader); `None` when 0.
    pub backup_interval: Option<Duration>,
    /// `--backup-retention-count` / `--backup-retention-age`: what pruning keeps.
    pub backup_retention: BackupRetention,
    /// `--backup-plugins`: the backup-hook plugins backups go through; empty: all.
    pub backup_plugins: Vec<String>,
    /// `--config-file`, where a plugin reload reads the `plugins:` list again.
    pub config_file: Option<PathBuf>,
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, `--auto-tls`:
    /// the https client (and metrics) listeners.
    pub client_tls: TlsFiles,
    /// The `--peer-*` twins: https peer listeners, and the certificate this member shows
    /// (and the CA it trusts) when it calls its peers.
    pub peer_tls: TlsFiles,
    /// `--cipher-suites`, `--tls-min-version`, `--tls-max-version`: client and peer sides.
    pub tls_policy: TlsPolicy,
    /// `--self-signed-cert-validity`: years the auto TLS certificates are valid.
    pub self_signed_cert_validity: u64,
    /// `--bcrypt-cost`, `--auth-token` (simple or jwt with its options), `--auth-token-ttl`.
    pub auth: crate::auth::AuthSettings,
}

/// The TLS files of one listener kind, as configured (read and checked by `crate::tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `trusted_ca_file` at the handshake.
    pub client_cert_auth: bool,
    /// `--auto-tls` / `--peer-auto-tls`: without a cert and key file, serve a self-signed
    /// certificate kept under `<data-dir>/fixtures/` (as etcd does).
    pub auto_tls: bool,
}

/// The protocol versions and TLS 1.2 cipher suites of every TLS listener and of the peer
/// client (etcd applies them to both sides too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    /// Go's names (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`, ...); empty means rustls's
    /// defaults. Checked against what rustls implements when the listeners are built.
    pub cipher_suites: Vec<String>,
    pub min_version: TlsVersion,
    /// `None`: the newest rustls implements (TLS 1.3), as an empty value means in etcd.
    pub max_version: Option<TlsVersion>,
}

/// A TLS protocol version rustls implements (it has no TLS 1.0 or 1.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

/// Socket and HTTP/2 settings of every client and metrics listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerOptions {
    /// `--socket-reuse-port`: SO_REUSEPORT, so several processes may bind the same port.
    pub reuse_port: bool,
    /// `--grpc-keepalive-interval` and `--grpc-keepalive-timeout`: the server pings an idle
    /// connection after the interval and closes it if no answer comes within the timeout.
    /// `None` when either is 0, which etcd documents as disabling the pings.
    pub keepalive: Option<(Duration, Duration)>,
    /// `--max-concurrent-streams`: HTTP/2 streams one client connection may open at once.
    pub max_concurrent_streams: u32,
}

/// One `--log-outputs` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    /// `stderr`, or `default` (etcd's default; journald is not used).
    Stderr,
    Stdout,
    /// Any other value: a file, appended to.
    File(PathBuf),
}

/// Which backups pruning keeps after each backup; `None` sets no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackupRetention {
    /// Keep at most this many (the newest).
    pub count: Option<u64>,
    /// Delete those older than this.
    pub age: Option<Duration>,
}

/// `--log-format` (etcd 3.6's flag; 3.5 always writes JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line with zap's keys (`level`, `ts`, `caller`, `msg`, fields).
    Json,
    /// zap's console encoder: the same values separated by tabs, fields as JSON.
    Console,
}

/// `--metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsLevel {
    /// etcd's default: no `grpc_server_handling_seconds` histogram.
    Basic,
    /// Also the `grpc_server_handling_seconds` histogram.
    Extensive,
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// `--auto-compaction-mode` and `--auto-compaction-retention` together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Retention 0: never compact automatically.
    Off,
    /// Keep this much history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// What the command line asked cairn to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `cairn [flags]`.
    Serve,
    /// `cairn config show [flags]`: print [`Loaded::show`].
    ConfigShow,
    /// `cairn bench ...`: the arguments after `bench` (no program name), for the bench
    /// module to parse itself.
    Bench(Vec<OsString>),
    /// `cairn snapshot ...`: the arguments after `snapshot`, for `snapshot_cmd`.
    Snapshot(Vec<OsString>),
    /// `cairn plugin check FILE...`: the arguments after `plugin`, for `plugins::check`.
    Plugin(Vec<OsString>),
    /// `cairn backup [--endpoint URL]`: the arguments after `backup`, for `backup::cli`.
    Backup(Vec<OsString>),
    /// `cairn version` or `cairn --version`: print [`version`].
    Version,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// etcd's default.
    Default,
    /// The `--config-file` at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This flag, spelled `--name`.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The loaded configuration and the command to run with it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub command: Command,
    /// For `Bench` and `Version`, which read no configuration, this is etcd's defaults.
    pub config: Config,
    sources: Vec<Entry>,
    warnings: Vec<String>,
}

impl Loaded {
    /// `cairn config show`: every key's effective value and origin, one per line, e.g.
    /// `name = "default"  # default` or `snapshot-count = 5000  # env ETCD_SNAPSHOT_COUNT`;
    /// keys without effect in cairn say so: `max-wals = 5  # default; no effect: <why>`.
    pub fn show(&self) -> String {
        self.sources
            .iter()
            .filter(|e| e.key.section != keys::HIDDEN)
            .map(|e| {
                let note = match e.key.effect {
                    Effect::Ignored(why) => format!("; no effect: {why}"),
                    Effect::Honoured | Effect::DefaultOnly(_) => String::new(),
                };
                format!(
                    "{} = {}  # {}{note}\n",
                    e.key.name,
                    e.display_value(),
                    e.origin
                )
            })
            .collect()
    }

    /// Where the value of `key` (an etcd flag name) came from.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.sources
            .iter()
            .find(|e| e.key.name == key)
            .map(|e| &e.origin)
    }

    /// Things worth logging once logging is set up, e.g. unrecognized `ETCD_*` variables.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad flags, or `--help`: `main` should call `exit()` on it, which prints help to
    /// stdout and exits 0, or prints the error and exits 2.
    #[error("{0}")]
    Cli(clap::Error),
    #[error("{0}")]
    Usage(String),
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config file {}: {message}", path.display())]
    ParseFile { path: PathBuf, message: String },
    /// Every unknown key of one layer (the file, or the flags), each with a suggestion.
    #[error("{}", unknown_message(.0))]
    UnknownKeys(Vec<Unknown>),
    #[error("invalid value for {key} in config file {}: {reason}", path.display())]
    BadFileValue {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("invalid value {value:?} for {key} (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Origin,
        reason: String,
    },
    #[error("--{key}: {what} (value {value:?} from {origin})")]
    Unsupported {
        key: &'static str,
        value: String,
        origin: Origin,
        what: &'static str,
    },
    /// A check across several keys; `origins` says where each came from.
    #[error("{message} ({origins})")]
    Conflict { message: String, origins: String },
    #[error("merging configuration layers: {0}")]
    Merge(Box<figment::Error>),
}

/// A key no layer of cairn knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// As written: `nmae`, `client-transport-security.crl-file`, `--nmae`.
    pub key: String,
    pub origin: Origin,
    /// The nearest known key, spelt like `key`.
    pub suggestion: Option<String>,
}

/// `unknown key "nmae" in file /etc/c.yaml (did you mean "name"?)`, or for several
/// `unknown keys: "a" in file ... (did you mean ...); "b" in file ...`.
fn unknown_message(unknown: &[Unknown]) -> String {
    let items: Vec<String> = unknown
        .iter()
        .map(|u| {
            let hint = u
                .suggestion
                .as_ref()
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            match &u.origin {
                Origin::Flag(_) => format!("{:?}{hint}", u.key),
                origin => format!("{:?} in {origin}{hint}", u.key),
            }
        })
        .collect();
    let what = match unknown.first().map(|u| &u.origin) {
        Some(Origin::Flag(_)) => "flag",
        _ => "key",
    };
    match items.as_slice() {
        [one] => format!("unknown {what} {one}"),
        many => format!("unknown {what}s: {}", many.join("; ")),
    }
}

/// The one start-up warning naming every explicitly set key that has no effect in cairn,
/// grouped by reason; `None` if there is none. `no_flag` are file settings without a flag
/// (they are TLS settings, so they share the TLS keys' reason).
fn no_effect_warning(entries: &[Entry], no_flag: &[String]) -> Option<String> {
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    let mut add = |why: &'static str, name: String| match groups.iter_mut().find(|g| g.0 == why) {
        Some(group) => group.1.push(name),
        None => groups.push((why, vec![name])),
    };
    for entry in entries.iter().filter(|e| e.origin != Origin::Default) {
        if let Effect::Ignored(why) = entry.key.effect {
            add(why, entry.key.name.to_owned());
        }
    }
    for name in no_flag {
        add(keys::TLS_ONLY, name.clone());
    }
    if groups.is_empty() {
        return None;
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(why, names)| format!("{} ({why})", names.join(", ")))
        .collect();
    Some(format!(
        "accepted, no effect in cairn: {}",
        parts.join("; ")
    ))
}

/// `cairn <crate version> (etcd API 3.5.0)`.
pub fn version() -> String {
    format!("cairn {} (etcd API 3.5.0)", env!("CARGO_PKG_VERSION"))
}

/// Loads the configuration from this process's arguments and environment.
pub fn load() -> Result<Loaded, ConfigError> {
    // Variables that are not UTF-8 cannot be etcd settings; `vars()` would panic on them.
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    load_from(std::env::args_os().collect(), env)
}

/// Loads the configuration from `args` (including the program name, as `args_os` gives
/// it) and `env`.
pub fn load_from(args: Vec<OsString>, env: Vec<(String, String)>) -> Result<Loaded, ConfigError> {
    let args = args.into_iter().skip(1).collect();
    let (command, flag_args) = match cli::split(args)? {
        cli::Invocation::Bench(rest) => return defaults_only(Command::Bench(rest)),
        cli::Invocation::Snapshot(rest) => return defaults_only(Command::Snapshot(rest)),
        cli::Invocation::Plugin(rest) => return defaults_only(Command::Plugin(rest)),
        cli::Invocation::Backup(rest) => return defaults_only(Command::Backup(rest)),
        cli::Invocation::Version => return defaults_only(Command::Version),
        cli::Invocation::Serve(flags) => (Command::Serve, flags),
        cli::Invocation::ConfigShow(flags) => (Command::ConfigShow, flags),
    };
    let flags = cli::parse(flag_args)?;
    if flags.version {
        return defaults_only(Command::Version);
    }
    let mut warnings = Vec::new();
    let env = layers::env(&env, &mut warnings);
    let file_path = flags
        .layer
        .get(CONFIG_FILE)
        .or_else(|| env.get(CONFIG_FILE))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let mut no_flag = Vec::new();
    let mut plugin_specs = Vec::new();
    let file = match &file_path {
        Some(path) => layers::file(path, &mut no_flag, &mut plugin_specs)?,
        None => layers::no_file(),
    };
    let raw = layers::merge(
        &[layers::defaults(), file, env, flags.layer],
        file_path.as_deref(),
    )?;
    let mut loaded = finish(command, raw, warnings)?;
    validate::check_backup_plugins(&loaded.sources, &plugin_specs)?;
    loaded.config.plugins = plugin_specs;
    loaded.config.config_file = file_path;
    loaded
        .warnings
        .extend(no_effect_warning(&loaded.sources, &no_flag));
    Ok(loaded)
}

/// The `plugins:` list of the config file at `path`, validated as at start-up (the whole
/// file is read, so a file broken since start-up is refused, naming the problem).
pub fn plugins_in_file(path: &std::path::Path) -> Result<Vec<PluginConfig>, ConfigError> {
    let mut plugins = Vec::new();
    layers::file(path, &mut Vec::new(), &mut plugins)?;
    Ok(plugins)
}

/// The configuration for commands that read none: etcd's defaults.
fn defaults_only(command: Command) -> Result<Loaded, ConfigError> {
    finish(
        command,
        layers::merge(&[layers::defaults()], None)?,
        Vec::new(),
    )
}

fn finish(command: Command, mut raw: Raw, warnings: Vec<String>) -> Result<Loaded, ConfigError> {
    validate::fill_derived(&mut raw);
    let config = validate::validate(&raw)?;
    Ok(Loaded {
        command,
        config,
        sources: raw.entries,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let args = std::iter::once("cairn")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_from(args, env)
    }

    fn ok(args: &[&str], env: &[(&str, &str)]) -> Loaded {
        run(args, env).unwrap_or_else(|e| panic!("{args:?} {env:?}: {e}"))
    }

    fn err(args: &[&str], env: &[(&str, &str)]) -> String {
        match run(args, env) {
            Ok(_) => panic!("{args:?} {env:?} should be refused"),
            Err(e) => e.to_string(),
        }
    }

    fn yaml(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write temp file");
        file
    }

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).expect("test URL parses")
    }

    #[test]
    fn cluster_operation_keys_are_typed() {
        let c = ok(
            &[
                "--wal-dir=/disk2/wal",
                "--force-new-cluster",
                "--strict-reconfig-check=false",
            ],
            &[("ETCD_MAX_LEARNERS", "2")],
        )
        .config;
        assert_eq!(c.wal_dir, Some(PathBuf::from("/disk2/wal")));
        assert!(c.force_new_cluster);
        assert!(!c.strict_reconfig_check);
        assert_eq!(c.max_learners, 2);
        let e = err(&["--max-learners=0"], &[]);
        assert!(
            e.contains("--max-learners") && e.contains("at least 1"),
            "{e}"
        );
    }

    #[test]
    fn defaults_equal_etcds() {
        let loaded = ok(&[], &[]);
        assert_eq!(loaded.command, Command::Serve);
        assert_eq!(
            loaded.config,
            Config {
                name: "default".into(),
                data_dir: "default.etcd".into(),
                wal_dir: None,
                force_new_cluster: false,
                strict_reconfig_check: true,
                max_learners: 1,
                listen_client_urls: vec![url("http://localhost:2379")],
                advertise_client_urls: vec![url("http://localhost:2379")],
                listen_peer_urls: vec![url("http://localhost:2380")],
                initial_advertise_peer_urls: vec![url("http://localhost:2380")],
                listen_metrics_urls: vec![],
                initial_cluster: vec![("default".into(), url("http://localhost:2380"))],
                initial_cluster_token: "etcd-cluster".into(),
                initial_cluster_state: ClusterState::New,
                snapshot_count: 100_000,
                snapshot_catchup_entries: 5000,
                heartbeat_interval: Duration::from_millis(100),
                election_timeout: Duration::from_millis(1000),
                auto_compaction: AutoCompaction::Off,
                max_request_bytes: 1_572_864,
                max_txn_ops: 128,
                quota_backend_bytes: 2 * 1024 * 1024 * 1024,
                log_level: "info".into(),
                log_outputs: vec![LogOutput::Stderr],
                log_format: LogFormat::Json,
                listen_client_http_urls: vec![],
                watch_progress_notify_interval: Duration::from_secs(600),
                lease_checkpoints: Some(crate::lease::CheckpointConfig {
                    interval: Duration::from_secs(300),
                    persist: false,
                }),
                alarms: crate::core::AlarmSettings::default(),
                listener: ListenerOptions {
                    reuse_port: false,
                    keepalive: Some((Duration::from_secs(7200), Duration::from_secs(20))),
                    max_concurrent_streams: u32::MAX,
                },
                metrics: MetricsLevel::Basic,
                enable_pprof: false,
                enable_grpc_gateway: true,
                unsafe_no_fsync: false,
                unsafe_storage_fault: None,
                plugins: Vec::new(),
                backup_dir: None,
                backup_interval: None,
                backup_retention: BackupRetention::default(),
                backup_plugins: Vec::new(),
                config_file: None,
                client_tls: TlsFiles::default(),
                peer_tls: TlsFiles::default(),
                tls_policy: TlsPolicy::default(),
                self_signed_cert_validity: 1,
                auth: crate::auth::AuthSettings {
                    bcrypt_cost: 10,
                    token_ttl: Duration::from_secs(300),
                    token: crate::auth::TokenType::Simple,
                },
            }
        );
        assert!(keys::KEYS
            .iter()
            .all(|k| loaded.origin(k.name) == Some(&Origin::Default)));
        assert!(loaded.warnings().is_empty());
    }

    #[test]
    fn precedence_is_default_file_env_flag() {
        let file = yaml(
            "name: from-file\nsnapshot-count: 1\nlog-level: debug\n\
             initial-cluster-token: file-token\nmax-txn-ops: 11\n",
        );
        let path = file.path().to_str().expect("utf-8 temp path");
        let env = [
            ("ETCD_CONFIG_FILE", path),
            ("ETCD_SNAPSHOT_COUNT", "2"),
            ("ETCD_LOG_LEVEL", "warn"),
            ("ETCD_INITIAL_CLUSTER_TOKEN", "env-token"),
        ];
        let args = ["--log-level", "error", "--initial-cluster-token=flag-token"];
        let loaded = ok(&args, &env);
        let c = &loaded.config;
        let from_file = Origin::File(file.path().to_owned());
        let flag = |f: &str| Origin::Flag(f.into());
        let env_var = |v: &str| Origin::Env(v.into());
        let table = [
            ("name", c.name.clone(), "from-file", from_file.clone()),
            ("max-txn-ops", c.max_txn_ops.to_string(), "11", from_file),
            (
                "snapshot-count",
                c.snapshot_count.to_string(),
                "2",
                env_var("ETCD_SNAPSHOT_COUNT"),
            ),
            (
                "log-level",
                c.log_level.clone(),
                "error",
                flag("--log-level"),
            ),
            (
                "initial-cluster-token",
                c.initial_cluster_token.clone(),
                "flag-token",
                flag("--initial-cluster-token"),
            ),
            (
                "max-request-bytes",
                c.max_request_bytes.to_string(),
                "1572864",
                Origin::Default,
            ),
            (
                "config-file",
                path.to_owned(),
                path,
                env_var("ETCD_CONFIG_FILE"),
            ),
        ];
        for (key, got, want, origin) in table {
            assert_eq!(got, want, "{key}");
            assert_eq!(loaded.origin(key), Some(&origin), "{key}");
        }
        // Defaults computed from the name follow the name's layer.
        assert_eq!(c.data_dir, PathBuf::from("from-file.etcd"));
        assert_eq!(
            c.initial_cluster,
            vec![("from-file".into(), url("http://localhost:2380"))]
        );
    }

    #[test]
    fn config_file_flag_beats_env_and_flags_beat_file() {
        let file = yaml("name: f\ninitial-cluster-state: new\n");
        let other = yaml("name: other\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        let other_path = other.path().to_str().expect("utf-8 temp path");
        let loaded = ok(
            &["-config-file", path, "-name=flagged"],
            &[("ETCD_CONFIG_FILE", other_path)],
        );
        assert_eq!(loaded.config.name, "flagged");
        assert_eq!(loaded.origin("name"), Some(&Origin::Flag("--name".into())));
        assert_eq!(
            loaded.origin("initial-cluster-state"),
            Some(&Origin::File(file.path().to_owned()))
        );
    }

    #[test]
    fn single_dash_flags_work_like_go() {
        let loaded = ok(
            &[
                "-name",
                "n1",
                "-data-dir=/var/lib/cairn",
                "-listen-client-urls",
                "http://127.0.0.1:12379",
                "-advertise-client-urls=http://127.0.0.1:12379",
                "-initial-advertise-peer-urls",
                "http://127.0.0.1:12380",
                "-listen-peer-urls",
                "http://127.0.0.1:12380",
                "-initial-cluster",
                "n1=http://127.0.0.1:12380",
            ],
            &[],
        );
        let c = &loaded.config;
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cairn"));
        assert_eq!(c.listen_client_urls, vec![url("http://127.0.0.1:12379")]);
        assert_eq!(
            c.initial_cluster,
            vec![("n1".into(), url("http://127.0.0.1:12380"))]
        );
    }

    #[test]
    fn name_alone_derives_data_dir_and_initial_cluster() {
        let c = ok(&["--name", "solo"], &[]).config;
        assert_eq!(c.data_dir, PathBuf::from("solo.etcd"));
        assert_eq!(
            c.initial_cluster,
            vec![("solo".into(), url("http://localhost:2380"))]
        );
    }

    #[test]
    fn unknown_yaml_keys_are_named_together() {
        let file = yaml("name: a\nsnapshot-cuont: 5\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        assert_eq!(
            err(&["--config-file", path], &[]),
            format!(
                "unknown key \"snapshot-cuont\" in file {path} (did you mean \"snapshot-count\"?)"
            )
        );
        let file = yaml("data_dir: /d\nsnapshot-cuont: 5\nname: a\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        assert_eq!(
            err(&["--config-file", path], &[]),
            format!(
                "unknown keys: \"data_dir\" in file {path} (did you mean \"data-dir\"?); \
                 \"snapshot-cuont\" in file {path} (did you mean \"snapshot-count\"?)"
            )
        );
        assert_eq!(
            err(&["--nmae", "x", "--bogus"], &[]),
            "unknown flags: \"--nmae\" (did you mean \"--name\"?); \"--bogus\""
        );
        assert!(err(&["--config-file", "/nonexistent/cairn.yaml"], &[])
            .starts_with("cannot read config file /nonexistent/cairn.yaml"));
    }

    #[test]
    fn bad_values_name_key_value_and_origin() {
        let file = yaml("advertise-client-urls: http://h\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        /// Flags, environment, expected error.
        type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
        let cases: Vec<Case> = vec![
            (
                vec!["--listen-client-urls", "htp://x"],
                vec![],
                "invalid value \"htp://x\" for listen-client-urls (from flag --listen-client-urls): \
                 URL scheme must be http or https".into(),
            ),
            (
                vec![],
                vec![("ETCD_LISTEN_PEER_URLS", "http://example.com:2380")],
                "invalid value \"http://example.com:2380\" for listen-peer-urls (from env \
                 ETCD_LISTEN_PEER_URLS): expected IP in URL for binding (http://example.com:2380)"
                    .into(),
            ),
            (
                vec!["--config-file", path],
                vec![],
                format!(
                    "invalid value \"http://h\" for advertise-client-urls (from file {path}): URL \
                     address does not have the form \"host:port\": http://h"
                ),
            ),
            (
                vec!["--listen-metrics-urls", "http://127.0.0.1:2381/metrics"],
                vec![],
                "invalid value \"http://127.0.0.1:2381/metrics\" for listen-metrics-urls (from flag \
                 --listen-metrics-urls): URL must not contain a path: http://127.0.0.1:2381/metrics"
                    .into(),
            ),
            (
                vec![],
                vec![("ETCD_SNAPSHOT_COUNT", "lots")],
                "invalid value \"lots\" for snapshot-count (from env ETCD_SNAPSHOT_COUNT): must be a \
                 non-negative integer"
                    .into(),
            ),
            (
                vec!["--initial-cluster-state", "old"],
                vec![],
                "invalid value \"old\" for initial-cluster-state (from flag --initial-cluster-state): \
                 must be one of new, existing"
                    .into(),
            ),
            (
                vec!["--log-level=loud"],
                vec![],
                "invalid value \"loud\" for log-level (from flag --log-level): must be one of debug, \
                 info, warn, error, panic, fatal"
                    .into(),
            ),
        ];
        for (args, env, want) in cases {
            assert_eq!(err(&args, &env), want, "{args:?} {env:?}");
        }
    }

    #[test]
    fn heartbeat_and_election_follow_etcd() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--heartbeat-interval", "300"],
                "--election-timeout[1000ms] should be at least as 5 times as \
                 --heartbeat-interval[300ms] (election-timeout from default, heartbeat-interval \
                 from flag --heartbeat-interval)",
            ),
            (
                &["--heartbeat-interval=0"],
                "invalid value \"0\" for heartbeat-interval (from flag --heartbeat-interval): \
                 --heartbeat-interval must be >0 (set to 0ms)",
            ),
            (
                &["--election-timeout", "60000"],
                "invalid value \"60000\" for election-timeout (from flag --election-timeout): \
                 --election-timeout[60000ms] is too long, and should be set less than 50000ms",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(err(args, &[]), *want, "{args:?}");
        }
        let c = ok(
            &["--heartbeat-interval", "200", "--election-timeout", "1000"],
            &[],
        )
        .config;
        assert_eq!(c.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(c.election_timeout, Duration::from_secs(1));
    }

    #[test]
    fn auto_compaction_retention() {
        let hour = Duration::from_secs(3600);
        let cases: &[(&str, &str, AutoCompaction)] = &[
            ("periodic", "0", AutoCompaction::Off),
            ("periodic", "1", AutoCompaction::Periodic(hour)),
            ("periodic", "72", AutoCompaction::Periodic(72 * hour)),
            ("periodic", "30m", AutoCompaction::Periodic(hour / 2)),
            (
                "periodic",
                "5m30s",
                AutoCompaction::Periodic(Duration::from_secs(330)),
            ),
            ("periodic", "1h", AutoCompaction::Periodic(hour)),
            ("revision", "1000", AutoCompaction::Revision(1000)),
            ("revision", "0", AutoCompaction::Off),
        ];
        for (mode, retention, want) in cases {
            let c = ok(
                &[
                    "--auto-compaction-mode",
                    mode,
                    "--auto-compaction-retention",
                    retention,
                ],
                &[],
            )
            .config;
            assert_eq!(c.auto_compaction, *want, "{mode} {retention}");
        }
        assert_eq!(
            err(&["--auto-compaction-retention", "5x"], &[]),
            "invalid value \"5x\" for auto-compaction-retention (from flag \
             --auto-compaction-retention): error parsing CompactionRetention: time: unknown unit \
             \"x\" in duration \"5x\""
        );
        assert!(err(
            &[
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=1h"
            ],
            &[]
        )
        .contains("non-negative number of revisions"));
        assert!(err(&["--auto-compaction-mode=daily"], &[])
            .contains("unknown auto-compaction-mode \"daily\""));
    }

    #[test]
    fn tls_files_from_flags_env_and_file() {
        let https = [
            "--listen-client-urls=http://127.0.0.1:2379,https://127.0.0.1:2479",
            "--advertise-client-urls=https://127.0.0.1:2479",
        ];
        let c = ok(
            &[
                &https[..],
                &[
                    "--cert-file=/c.pem",
                    "--trusted-ca-file=/ca.pem",
                    "--client-cert-auth",
                ],
            ]
            .concat(),
            &[
                ("ETCD_KEY_FILE", "/k.pem"),
                ("ETCD_PEER_CERT_FILE", "/p.pem"),
                ("ETCD_PEER_KEY_FILE", "/pk.pem"),
            ],
        )
        .config;
        assert_eq!(
            c.client_tls,
            TlsFiles {
                cert_file: Some("/c.pem".into()),
                key_file: Some("/k.pem".into()),
                trusted_ca_file: Some("/ca.pem".into()),
                client_cert_auth: true,
                auto_tls: false,
            }
        );
        assert_eq!(c.peer_tls.cert_file, Some("/p.pem".into()));
        assert!(!c.peer_tls.client_cert_auth);
        let file = yaml("client-transport-security:\n  cert-file: /c.pem\n  key-file: /k.pem\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        let c = ok(&["--config-file", path], &[]).config;
        assert_eq!(c.client_tls.key_file, Some("/k.pem".into()));

        assert_eq!(
            err(&https, &[]),
            "invalid value \"http://127.0.0.1:2379,https://127.0.0.1:2479\" for listen-client-urls \
             (from flag --listen-client-urls): TLS key/cert (--cert-file, --key-file) must be \
             provided for client url https://127.0.0.1:2479 with HTTPS scheme"
        );
        assert!(
            err(&["--listen-peer-urls=https://127.0.0.1:2380"], &[]).contains(
                "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url"
            )
        );
        assert!(err(&["--cert-file=/c.pem"], &[])
            .contains("--cert-file and --key-file must be set together"));
        assert!(err(&["--peer-client-cert-auth"], &[])
            .contains("client certificates can only be verified against --peer-trusted-ca-file"));
        // Auto TLS stands in for the files, from the YAML file's nested section too.
        let file = yaml("peer-transport-security:\n  auto-tls: true\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        let c = ok(
            &[
                "--config-file",
                path,
                "--listen-peer-urls=https://127.0.0.1:2380",
            ],
            &[("ETCD_AUTO_TLS", "true")],
        )
        .config;
        assert!(c.peer_tls.auto_tls && c.client_tls.auto_tls);
    }

    #[test]
    fn tls_versions_and_cipher_suites() {
        let c = ok(
            &["--tls-min-version=TLS1.3"],
            &[("ETCD_TLS_MAX_VERSION", "TLS1.3")],
        )
        .config;
        assert_eq!(
            c.tls_policy,
            TlsPolicy {
                cipher_suites: vec![],
                min_version: TlsVersion::Tls13,
                max_version: Some(TlsVersion::Tls13),
            }
        );
        let c = ok(
            &[],
            &[(
                "ETCD_CIPHER_SUITES",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            )],
        )
        .config;
        assert_eq!(c.tls_policy.cipher_suites.len(), 2);
        assert_eq!(c.tls_policy.min_version, TlsVersion::Tls12);
        assert_eq!(
            err(&["--tls-min-version=TLS1.1"], &[]),
            "invalid value \"TLS1.1\" for tls-min-version (from flag --tls-min-version): \
             TLS1.1 is not supported: cairn's TLS (rustls) implements only TLS1.2 and TLS1.3"
        );
        assert!(err(&["--tls-max-version=TLS1.0"], &[]).contains("TLS1.0 is not supported"));
        assert!(err(&["--tls-min-version=tls13"], &[])
            .contains("unexpected TLS version \"tls13\" (must be one of: TLS1.2, TLS1.3)"));
        assert!(err(
            &["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"],
            &[]
        )
        .contains("min version (TLS1.3) is greater than max version (TLS1.2)"));
        assert!(err(
            &[
                "--tls-min-version=TLS1.3",
                "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ],
            &[]
        )
        .contains("cipher suites cannot be configured when only TLS1.3 is enabled"));
    }

    #[test]
    fn unsupported_features_are_refused_not_ignored() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--discovery", "https://discovery.etcd.io/x"],
                "--discovery: discovery is not supported",
            ),
            (
                &["--discovery-srv", "example.com"],
                "--discovery-srv: DNS discovery is not supported",
            ),
            (
                &["--proxy=on"],
                "--proxy: running as a v2 proxy is not supported",
            ),
            (
                &["--host-whitelist=example.com"],
                "--host-whitelist: checking the HTTP Host header is not supported yet",
            ),
        ];
        for (args, want) in cases {
            let got = err(args, &[]);
            assert!(got.starts_with(want), "{args:?}: {got}");
        }
        // Their defaults, written out explicitly, are fine, as is an empty list for a
        // key whose default is `*`.
        ok(
            &[
                "--client-cert-auth=false",
                "--wal-dir=",
                "--proxy=off",
                "--host-whitelist=",
                "--feature-gates=LeaseCheckpoint=false",
            ],
            &[],
        );
    }

    #[test]
    fn initial_cluster_must_hold_this_member_at_its_peer_urls() {
        assert_eq!(
            err(
                &[
                    "--name",
                    "n1",
                    "--initial-cluster",
                    "default=http://localhost:2380"
                ],
                &[]
            ),
            "couldn't find local name \"n1\" in the initial cluster configuration (name from flag \
             --name, initial-cluster from flag --initial-cluster, initial-advertise-peer-urls from \
             default)"
        );
        assert!(
            err(&["--initial-cluster", "default=http://127.0.0.1:2380"], &[]).starts_with(
                "--initial-cluster has default=http://127.0.0.1:2380 but missing from \
             --initial-advertise-peer-urls=http://localhost:2380"
            )
        );
    }

    #[test]
    fn explicit_listen_client_urls_need_advertise_client_urls() {
        assert_eq!(
            err(&["--listen-client-urls", "http://127.0.0.1:2379"], &[]),
            "--advertise-client-urls is required when --listen-client-urls is set explicitly \
             (listen-client-urls from flag --listen-client-urls)"
        );
        let c = ok(
            &[
                "--listen-client-urls",
                "http://127.0.0.1:2379,http://0.0.0.0:2379",
                "--advertise-client-urls",
                "http://10.0.0.1:2379",
            ],
            &[],
        )
        .config;
        assert_eq!(
            c.listen_client_urls,
            vec![url("http://0.0.0.0:2379"), url("http://127.0.0.1:2379")]
        );
    }

    #[test]
    fn quota_zero_means_two_gib() {
        assert_eq!(ok(&[], &[]).config.quota_backend_bytes, 2 << 30);
        let c = ok(&["--quota-backend-bytes", "8589934592"], &[]).config;
        assert_eq!(c.quota_backend_bytes, 8 << 30);
    }

    #[test]
    fn show_prints_every_key_with_its_origin() {
        let loaded = ok(
            &["config", "show", "--name", "n1", "--snapshot-count=5"],
            &[("ETCD_LOG_LEVEL", "debug")],
        );
        assert_eq!(loaded.command, Command::ConfigShow);
        let shown = loaded.show();
        let visible = keys::KEYS.iter().filter(|k| k.section != keys::HIDDEN);
        assert_eq!(shown.lines().count(), visible.count());
        for line in [
            "name = \"n1\"  # flag --name",
            "data-dir = \"n1.etcd\"  # default",
            "snapshot-count = 5  # flag --snapshot-count",
            "heartbeat-interval = 100  # default",
            "initial-cluster = \"n1=http://localhost:2380\"  # default",
            "log-level = \"debug\"  # env ETCD_LOG_LEVEL",
            "force-new-cluster = false  # default",
            "config-file = \"\"  # default",
            "max-wals = 5  # default; no effect: cairn's raft log is purged after each snapshot; \
             there are no WAL files",
        ] {
            assert!(
                shown.lines().any(|l| l == line),
                "missing {line:?} in\n{shown}"
            );
        }
    }

    #[test]
    fn commands() {
        assert_eq!(ok(&["version"], &[]).command, Command::Version);
        assert_eq!(ok(&["--version"], &[]).command, Command::Version);
        assert_eq!(ok(&["-version"], &[]).command, Command::Version);
        assert_eq!(
            ok(&["bench", "put", "--total=10"], &[("ETCD_NAME", "ignored")]).command,
            Command::Bench(vec!["put".into(), "--total=10".into()])
        );
        assert!(version().starts_with("cairn ") && version().ends_with(" (etcd API 3.5.0)"));
        assert!(matches!(run(&["help"], &[]), Err(ConfigError::Cli(_))));
        assert!(matches!(
            run(&["--bogus"], &[]),
            Err(ConfigError::UnknownKeys(_))
        ));
        assert!(matches!(run(&["stray"], &[]), Err(ConfigError::Cli(_))));
    }

    #[test]
    fn lease_checkpoints_come_from_the_flags_or_their_feature_gates() {
        use crate::lease::CheckpointConfig;
        let checkpoints = |args: &[&str]| ok(args, &[]).config.lease_checkpoints;
        let on = |secs, persist| {
            Some(CheckpointConfig {
                interval: Duration::from_secs(secs),
                persist,
            })
        };
        assert_eq!(checkpoints(&[]), on(300, false));
        assert_eq!(
            checkpoints(&["--experimental-enable-lease-checkpoint=false"]),
            None
        );
        assert_eq!(
            checkpoints(&["--feature-gates=LeaseCheckpoint=false"]),
            None
        );
        assert_eq!(
            checkpoints(&[
                "--feature-gates=LeaseCheckpointPersist=true",
                "--experimental-lease-checkpoint-interval=2s"
            ]),
            on(2, true)
        );
        assert_eq!(
            checkpoints(&[
                "--experimental-enable-lease-checkpoint=true",
                "--feature-gates=LeaseCheckpoint=true"
            ]),
            on(300, false)
        );
        let refused = [
            (
                &["--experimental-enable-lease-checkpoint=true", "--feature-gates=LeaseCheckpoint=false"][..],
                "--experimental-enable-lease-checkpoint=true and --feature-gates=LeaseCheckpoint=false are set at the same time",
            ),
            (
                &["--experimental-enable-lease-checkpoint=false", "--experimental-enable-lease-checkpoint-persist=true"],
                "(from flag --experimental-enable-lease-checkpoint-persist): setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint",
            ),
            (
                &["--experimental-lease-checkpoint-interval=500ms"],
                "(from flag --experimental-lease-checkpoint-interval): --experimental-lease-checkpoint-interval must be at least 1s",
            ),
        ];
        for (args, want) in refused {
            let got = err(args, &[]);
            assert!(got.contains(want), "{args:?}: {got}");
        }
    }

    #[test]
    fn the_backup_section_sets_the_backup_flags_which_override_it() {
        let file = yaml(
            "plugins:\n  - {name: seal, path: s.wasm, hooks: [backup]}\n\
             backup:\n  dir: /b\n  interval: 1h\n  retention:\n    count: 7\n    age: 168h\n\
             \x20 plugins: [seal]\n",
        );
        let path = file.path().to_str().expect("utf-8 temp path");
        let c = ok(&["--config-file", path], &[]).config;
        assert_eq!(c.backup_dir, Some(PathBuf::from("/b")));
        assert_eq!(c.backup_interval, Some(Duration::from_secs(3600)));
        assert_eq!(
            c.backup_retention,
            BackupRetention {
                count: Some(7),
                age: Some(Duration::from_secs(168 * 3600)),
            }
        );
        assert_eq!(c.backup_plugins, vec!["seal".to_string()]);
        let c = ok(
            &["--config-file", path, "--backup-retention-count=0"],
            &[("ETCD_BACKUP_INTERVAL", "5m")],
        )
        .config;
        assert_eq!(c.backup_retention.count, None);
        assert_eq!(c.backup_interval, Some(Duration::from_secs(300)));
    }

    #[test]
    fn bad_backup_settings_are_refused_naming_the_key() {
        let file = yaml("backup:\n  dir: /b\n  retention: {cuont: 3}\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        let e = err(&["--config-file", path], &[]);
        assert!(e.contains("backup.retention.cuont"), "{e}");
        assert!(e.contains("backup.retention.count"), "{e}");
        assert_eq!(
            err(&["--backup-retention-age=1h"], &[]),
            "invalid value \"1h\" for backup-retention-age (from flag \
             --backup-retention-age): backup retention needs --backup-dir"
        );
        let e = err(&["--backup-dir=/b", "--backup-plugins=seal"], &[]);
        assert!(
            e.contains("no plugin named \"seal\" with the backup hook"),
            "{e}"
        );
    }

    #[test]
    fn durations_and_booleans_take_every_form_etcd_does() {
        let interval = |args: &[&str]| ok(args, &[]).config.watch_progress_notify_interval;
        assert_eq!(
            interval(&["--experimental-watch-progress-notify-interval=5s"]),
            Duration::from_secs(5)
        );
        assert_eq!(
            interval(&["--watch-progress-notify-interval", "1m30s"]),
            Duration::from_secs(90)
        );
        let file = yaml("experimental-watch-progress-notify-interval: 5000000000\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        assert_eq!(interval(&["--config-file", path]), Duration::from_secs(5));
        let file = yaml("watch-progress-notify-interval: 250ms\n");
        let path = file.path().to_str().expect("utf-8 temp path");
        assert_eq!(
            interval(&["--config-file", path]),
            Duration::from_millis(250)
        );
        // As with Go's flag package, a flag or variable needs a unit.
        assert_eq!(
            err(&["--grpc-keepalive-timeout=20"], &[]),
            "invalid value \"20\" for grpc-keepalive-timeout (from flag \
             --grpc-keepalive-timeout): time: missing unit in duration \"20\""
        );
        assert!(err(
            &[
                "--experimental-watch-progress-notify-interval=5s",
                "--watch-progress-notify-interval=6s"
            ],
            &[]
        )
        .contains("are set to different values"));

        for (text, want) in [
            ("1", true),
            ("t", true),
            ("T", true),
            ("TRUE", true),
            ("true", true),
            ("True", true),
            ("0", false),
            ("f", false),
            ("F", false),
            ("FALSE", false),
            ("false", false),
            ("False", false),
        ] {
            let flag = format!("--unsafe-no-fsync={text}");
            assert_eq!(ok(&[&flag], &[]).config.unsafe_no_fsync, want, "{text}");
            let env = [("ETCD_ENABLE_PPROF", text)];
            assert_eq!(ok(&[], &env).config.enable_pprof, want, "{text}");
        }
        for bad in ["yes", "on", "tRUE", ""] {
            let flag = format!("--enable-pprof={bad}");
            assert!(err(&[&flag], &[]).contains("must be a boolean"), "{bad:?}");
        }
    }

    #[test]
    fn honoured_settings_reach_the_config() {
        let c = ok(
            &[
                "--log-outputs=stdout,stderr,/tmp/cairn.log,stdout",
                "--metrics=extensive",
                "--grpc-keepalive-interval=30s",
                "--grpc-keepalive-timeout=5s",
                "--max-concurrent-streams=100",
                "--socket-reuse-port",
                "--socket-reuse-address=true",
                "--listen-client-http-urls=http://127.0.0.1:2382",
            ],
            &[],
        )
        .config;
        assert_eq!(
            c.log_outputs,
            vec![
                LogOutput::File("/tmp/cairn.log".into()),
                LogOutput::Stderr,
                LogOutput::Stdout
            ]
        );
        assert_eq!(c.metrics, MetricsLevel::Extensive);
        assert_eq!(
            c.listener,
            ListenerOptions {
                reuse_port: true,
                keepalive: Some((Duration::from_secs(30), Duration::from_secs(5))),
                max_concurrent_streams: 100,
            }
        );
        assert_eq!(
            c.listen_client_http_urls,
            vec![url("http://127.0.0.1:2382")]
        );
        assert_eq!(
            ok(&["--grpc-keepalive-interval=0s"], &[])
                .config
                .listener
                .keepalive,
            None
        );
        for (args, want) in [
            (
                &["--log-outputs=default,stdout"][..],
                "multi logoutput for \"default\" is not supported yet",
            ),
            (
                &["--logger=capnslog"],
                "--logger=capnslog is removed in v3.5",
            ),
            (&["--metrics=all"], "must be one of basic, extensive"),
            (
                &["--max-concurrent-streams=0"],
                "must be between 1 and 4294967295",
            ),
            (&["--auth-token=oauth"], "unknown token type"),
            (
                &["--auth-token=jwt,pub-key=a.pub,sign-method=HS512"],
                "missing key data",
            ),
            (
                &["--feature-gates=Bogus=true"],
                "unrecognized feature gate: Bogus",
            ),
            (
                &["--discovery-fallback=retry"],
                "must be one of exit, proxy",
            ),
            (&["--max-wals=many"], "must be a non-negative integer"),
        ] {
            let got = err(args, &[]);
            assert!(got.contains(want), "{args:?}: {got}");
        }
    }

    #[test]
    fn settings_without_effect_are_named_in_one_warning() {
        let file = yaml(
            "max-wals: 5\nproxy-dial-timeout: 1000\nproxy-read-timeout: 0\n\
             client-transport-security:\n  allowed-cn: [x]\n",
        );
        let path = file.path().to_str().expect("utf-8 temp path");
        let loaded = ok(
            &["--config-file", path, "--enable-v2", "--name=n"],
            &[("ETCD_CORS", "*")],
        );
        assert_eq!(
            loaded.warnings(),
            [
                "accepted, no effect in cairn: max-wals (cairn's raft log is purged after each \
                 snapshot; there are no WAL files); enable-v2 (cairn serves only the v3 API \
                 (etcd 3.6 removed v2)); cors (cairn's HTTP endpoints send no CORS headers yet, \
                 so browsers get no cross-origin access at all); proxy-dial-timeout, \
                 proxy-read-timeout (cairn always runs as a cluster member, never as a v2 \
                 proxy); client-transport-security.allowed-cn (cairn's TLS (rustls) does \
                 not implement this setting yet)"
            ]
        );
    }

    #[test]
    fn example_config_file_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/cairn.yaml");
        let loaded = ok(&["--config-file", path], &[]);
        let c = &loaded.config;
        assert_eq!(c.name, "cairn-1");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cairn"));
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(
            c.auto_compaction,
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
        assert_eq!(loaded.origin("name"), Some(&Origin::File(path.into())));
    }
}

//! Step two of loading: the merged raw strings become a typed [`Config`], with etcd 3.5's
//! checks (`server/embed/config.go` `Validate`, `etcdserver` `VerifyBootstrap`) and their
//! messages. Features cairn does not implement yet are refused here with a clear error
//! instead of being silently ignored. Every refusal names the key, its value and origin.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use url::{Host, Url};

use super::keys::{
    Effect, Kind, CORRUPT_CHECK, CORRUPT_CHECK_OLD, FEATURE_GATES, LEASE_CHECKPOINT,
    LEASE_CHECKPOINT_INTERVAL, LEASE_CHECKPOINT_PERSIST, SNAPSHOT_CATCHUP, SNAPSHOT_CATCHUP_OLD,
    WATCH_PROGRESS, WATCH_PROGRESS_OLD,
};
use super::layers::{Entry, Raw};
use super::{
    AutoCompaction, BackupRetention, ClusterState, Config, ConfigError, Hook, ListenerOptions,
    LogFormat, LogOutput, MetricsLevel, Origin, PluginConfig, TlsFiles, TlsPolicy, TlsVersion,
};
use crate::auth::jwt::JwtOptions;
use crate::auth::{AuthSettings, TokenType};
use crate::core::AlarmSettings;
use crate::lease::CheckpointConfig;

/// etcd's `maxElectionMs`.
const MAX_ELECTION_MS: u64 = 50_000;

/// What `--quota-backend-bytes 0` means: etcd's `DefaultQuotaBytes`, 2 GiB.
pub(crate) const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error", "panic", "fatal"];

/// Keys whose value etcd checks against a fixed set.
const CHOICES: &[(&str, &[&str])] = &[
    ("log-level", LOG_LEVELS),
    ("metrics", &["basic", "extensive"]),
    ("log-format", &["json", "console"]),
    ("discovery-fallback", &["exit", "proxy"]),
    ("proxy", &["off", "readonly", "on"]),
    (
        "v2-deprecation",
        &["not-yet", "write-only", "write-only-drop-data", "gone"],
    ),
];

/// etcd 3.6's feature gates. They mirror experimental flags of 3.5 with the same effect in
/// cairn: the lease checkpoint ones set those flags, the others change nothing.
const FEATURE_GATE_NAMES: &[&str] = &[
    "StopGRPCServiceOnDefrag",
    "TxnModeWriteWithSharedBuffer",
    "InitialCorruptCheck",
    "CompactHashCheck",
    "LeaseCheckpoint",
    "LeaseCheckpointPersist",
    "SetMemberLocalAddr",
];

/// Fills in the defaults etcd computes from other keys, so `config show` prints what is
/// used: an empty `data-dir` is `${name}.etcd`, and an `initial-cluster` left at its
/// default is this member alone at its advertised peer URLs (etcd's
/// `UpdateDefaultClusterFromName`).
pub(crate) fn fill_derived(raw: &mut Raw) {
    let name = raw.get("name").value.clone();
    if raw.get("data-dir").value.is_empty() {
        raw.get_mut("data-dir").value = format!("{name}.etcd");
    }
    if raw.get("initial-cluster").origin == Origin::Default {
        let peers = raw.get("initial-advertise-peer-urls").value.clone();
        raw.get_mut("initial-cluster").value = peers
            .split(',')
            .map(|u| format!("{name}={}", u.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
}

/// Turns the merged raw values into a [`Config`].
pub(crate) fn validate(raw: &Raw) -> Result<Config, ConfigError> {
    check_forms(raw)?;
    check_choices(raw)?;
    reject_unsupported(raw)?;
    let gates = feature_gates(raw.get(FEATURE_GATES))?;
    let lease_checkpoints = lease_checkpoints(raw, &gates)?;
    let alarms = alarm_settings(raw, &gates)?;
    let name = raw.get("name").value.clone();
    let listen_client_urls = urls(raw.get("listen-client-urls"), Need::Bind)?;
    let advertise_client_urls = urls(raw.get("advertise-client-urls"), Need::Host)?;
    let listen_peer_urls = urls(raw.get("listen-peer-urls"), Need::Bind)?;
    let initial_advertise_peer_urls = urls(raw.get("initial-advertise-peer-urls"), Need::Host)?;
    let listen_metrics_urls = urls(raw.get("listen-metrics-urls"), Need::BindOrNone)?;
    require_advertise_client_urls(raw)?;
    let initial_cluster = initial_cluster(raw.get("initial-cluster"))?;
    check_local_member(raw, &name, &initial_cluster, &initial_advertise_peer_urls)?;
    let (heartbeat_interval, election_timeout) = timing(raw)?;
    let quota = uint(raw.get("quota-backend-bytes"))?;
    check_logging(raw)?;
    let client_tls = tls_files(raw, "")?;
    let peer_tls = tls_files(raw, "peer-")?;
    require_tls(
        raw.get("listen-client-urls"),
        &listen_client_urls,
        &client_tls,
        "--cert-file, --key-file",
        "client",
    )?;
    require_tls(
        raw.get("listen-metrics-urls"),
        &listen_metrics_urls,
        &client_tls,
        "--cert-file, --key-file",
        "metrics",
    )?;
    require_tls(
        raw.get("listen-peer-urls"),
        &listen_peer_urls,
        &peer_tls,
        "--peer-cert-file, --peer-key-file",
        "peer",
    )?;
    Ok(Config {
        data_dir: PathBuf::from(&raw.get("data-dir").value),
        wal_dir: Some(&raw.get("wal-dir").value)
            .filter(|w| !w.is_empty())
            .map(PathBuf::from),
        force_new_cluster: boolean(raw.get("force-new-cluster"))?,
        strict_reconfig_check: boolean(raw.get("strict-reconfig-check"))?,
        max_learners: max_learners(raw.get("max-learners"))?,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        listen_metrics_urls,
        initial_cluster,
        initial_cluster_token: raw.get("initial-cluster-token").value.clone(),
        initial_cluster_state: cluster_state(raw.get("initial-cluster-state"))?,
        snapshot_count: uint(raw.get("snapshot-count"))?,
        snapshot_catchup_entries: renamed(raw, SNAPSHOT_CATCHUP_OLD, SNAPSHOT_CATCHUP, uint)?.1,
        heartbeat_interval,
        election_timeout,
        auto_compaction: auto_compaction(raw)?,
        max_request_bytes: uint(raw.get("max-request-bytes"))?,
        max_txn_ops: uint(raw.get("max-txn-ops"))?,
        quota_backend_bytes: if quota == 0 {
            DEFAULT_QUOTA_BYTES
        } else {
            quota
        },
        log_level: raw.get("log-level").value.clone(),
        log_outputs: log_outputs(raw.get("log-outputs"))?,
        log_format: match raw.get("log-format").value.as_str() {
            "console" => LogFormat::Console,
            _ => LogFormat::Json,
        },
        listen_client_http_urls: urls(raw.get("listen-client-http-urls"), Need::BindOrNone)?,
        watch_progress_notify_interval: watch_progress(raw)?,
        lease_checkpoints,
        alarms,
        listener: listener(raw)?,
        metrics: match raw.get("metrics").value.as_str() {
            "extensive" => MetricsLevel::Extensive,
            _ => MetricsLevel::Basic,
        },
        enable_pprof: boolean(raw.get("enable-pprof"))?,
        enable_grpc_gateway: boolean(raw.get("enable-grpc-gateway"))?,
        unsafe_no_fsync: boolean(raw.get("unsafe-no-fsync"))?,
        unsafe_storage_fault: match raw.get("unsafe-storage-fault") {
            e if e.value.is_empty() => None,
            e => Some(
                e.value
                    .parse()
                    .map_err(|bad: crate::storage::BadFaultPlan| e.invalid(bad.to_string()))?,
            ),
        },
        name,
        // Filled from the file's `plugins:` list and path by `load_from`.
        plugins: Vec::new(),
        backup_dir: Some(raw.get("backup-dir").value.as_str())
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from),
        backup_interval: backup_interval(raw)?,
        backup_retention: backup_retention(raw)?,
        backup_plugins: list(raw.get("backup-plugins")),
        config_file: None,
        client_tls,
        peer_tls,
        tls_policy: tls_policy(raw)?,
        self_signed_cert_validity: uint(raw.get("self-signed-cert-validity"))?,
        auth: AuthSettings {
            bcrypt_cost: bcrypt_cost(raw.get("bcrypt-cost"))?,
            token_ttl: Duration::from_secs(uint(raw.get("auth-token-ttl"))?),
            token: auth_token(raw)?,
        },
    })
}

/// `--cipher-suites`, `--tls-min-version` and `--tls-max-version`, with etcd 3.6's checks;
/// the suite names are matched against rustls's when the listeners are built.
fn tls_policy(raw: &Raw) -> Result<TlsPolicy, ConfigError> {
    let min = raw.get("tls-min-version");
    let max = raw.get("tls-max-version");
    let min_version = tls_version(min)?.unwrap_or_default();
    let max_version = tls_version(max)?;
    if max_version.is_some_and(|m| m < min_version) {
        return Err(min.invalid(format!(
            "min version ({}) is greater than max version ({})",
            min.value, max.value
        )));
    }
    let suites = raw.get("cipher-suites");
    let cipher_suites: Vec<String> = suites
        .value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    // etcd's rule: Go cannot restrict TLS 1.3 suites, so a list with only TLS 1.3 allowed
    // would be silently ignored.
    if min_version == TlsVersion::Tls13 && !cipher_suites.is_empty() {
        return Err(
            suites.invalid("cipher suites cannot be configured when only TLS1.3 is enabled")
        );
    }
    Ok(TlsPolicy {
        cipher_suites,
        min_version,
        max_version,
    })
}

/// A `--tls-min-version`/`--tls-max-version` value; `None` when empty.
fn tls_version(entry: &Entry) -> Result<Option<TlsVersion>, ConfigError> {
    match entry.value.trim() {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(TlsVersion::Tls12)),
        "TLS1.3" => Ok(Some(TlsVersion::Tls13)),
        old @ ("TLS1.0" | "TLS1.1") => Err(entry.invalid(format!(
            "{old} is not supported: cairn's TLS (rustls) implements only TLS1.2 and TLS1.3"
        ))),
        other => Err(entry.invalid(format!(
            "unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"
        ))),
    }
}

/// `--bcrypt-cost`: etcd uses its default (10) for a cost bcrypt does not allow (4..=31).
fn bcrypt_cost(entry: &Entry) -> Result<u32, ConfigError> {
    const DEFAULT: u32 = 10;
    Ok(u32::try_from(uint(entry)?)
        .ok()
        .filter(|c| (4..=31).contains(c))
        .unwrap_or(DEFAULT))
}

/// The client (`prefix` empty) or peer (`peer-`) TLS keys. The files are read when the
/// listeners start (`crate::tls`), so a bad file is named there with what is wrong in it.
fn tls_files(raw: &Raw, prefix: &str) -> Result<TlsFiles, ConfigError> {
    let path = |name: &str| {
        Some(raw.get(&format!("{prefix}{name}")).value.trim())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    };
    let files = TlsFiles {
        cert_file: path("cert-file"),
        key_file: path("key-file"),
        trusted_ca_file: path("trusted-ca-file"),
        client_cert_auth: boolean(raw.get(&format!("{prefix}client-cert-auth")))?,
        auto_tls: boolean(raw.get(&format!("{prefix}auto-tls")))?,
    };
    let cert = raw.get(&format!("{prefix}cert-file"));
    if files.cert_file.is_some() != files.key_file.is_some() {
        return Err(cert.invalid(format!(
            "--{prefix}cert-file and --{prefix}key-file must be set together"
        )));
    }
    if files.client_cert_auth && files.trusted_ca_file.is_none() {
        let auth = raw.get(&format!("{prefix}client-cert-auth"));
        return Err(auth.invalid(format!(
            "client certificates can only be verified against --{prefix}trusted-ca-file, which is not set"
        )));
    }
    Ok(files)
}

/// etcd's check that an https listener has a certificate to serve.
fn require_tls(
    entry: &Entry,
    urls: &[Url],
    files: &TlsFiles,
    flags: &str,
    kind: &str,
) -> Result<(), ConfigError> {
    match urls.iter().find(|u| u.scheme() == "https") {
        Some(url) if files.cert_file.is_none() && !files.auto_tls => Err(entry.invalid(format!(
            "TLS key/cert ({flags}) must be provided for {kind} url {} with HTTPS scheme",
            bare(url)
        ))),
        _ => Ok(()),
    }
}

/// `--max-learners`: a Go `int`; etcd 3.6 refuses a value below 1.
fn max_learners(entry: &Entry) -> Result<usize, ConfigError> {
    match entry.value.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => Err(entry.invalid("must be at least 1")),
    }
}

impl Entry {
    fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.key.name,
            value: self.value.clone(),
            origin: self.origin.clone(),
            reason: reason.into(),
        }
    }

    fn unsupported(&self, what: &'static str) -> ConfigError {
        ConfigError::Unsupported {
            key: self.key.name,
            value: self.value.clone(),
            origin: self.origin.clone(),
            what,
        }
    }

    /// `"<key> from <origin>"`, for errors that involve several keys.
    fn provenance(&self) -> String {
        format!("{} from {}", self.key.name, self.origin)
    }
}

/// Checks every value has the form of its key's kind, so a malformed value is refused even
/// for a key cairn does nothing with (as etcd's flag parser would refuse it).
fn check_forms(raw: &Raw) -> Result<(), ConfigError> {
    for entry in &raw.entries {
        match entry.key.kind {
            Kind::Uint => uint(entry).map(drop)?,
            Kind::Int => {
                entry
                    .value
                    .parse::<i64>()
                    .map_err(|_| entry.invalid("must be an integer"))?;
            }
            Kind::Bool => boolean(entry).map(drop)?,
            Kind::Duration => duration(entry).map(drop)?,
            Kind::Text | Kind::List | Kind::Legacy => {}
        }
    }
    Ok(())
}

fn check_choices(raw: &Raw) -> Result<(), ConfigError> {
    for (key, allowed) in CHOICES {
        let entry = raw.get(key);
        if !allowed.contains(&entry.value.as_str()) {
            let shown: Vec<&str> = allowed.iter().copied().filter(|a| !a.is_empty()).collect();
            return Err(entry.invalid(format!("must be one of {}", shown.join(", "))));
        }
    }
    auth_token(raw).map(drop)
}

/// etcd's `--auth-token`: a token type, optionally followed by `,option=value` pairs (the
/// JWT key files are read at start-up).
fn auth_token(raw: &Raw) -> Result<TokenType, ConfigError> {
    let token = raw.get("auth-token");
    match token.value.split_once(',').unwrap_or((&token.value, "")) {
        ("simple", _) => Ok(TokenType::Simple),
        ("jwt", opts) => JwtOptions::parse(opts)
            .map(TokenType::Jwt)
            .map_err(|e| token.invalid(e)),
        _ => Err(token.invalid("unknown token type: must be simple or jwt[,options]")),
    }
}

/// Refuses settings for features a later issue implements: a key that only takes its
/// default must have it (an empty value counts as the default, as in etcd).
fn reject_unsupported(raw: &Raw) -> Result<(), ConfigError> {
    for entry in &raw.entries {
        if let Effect::DefaultOnly(what) = entry.key.effect {
            let at_default = match entry.key.kind {
                Kind::Bool => boolean(entry)? == (entry.key.default == "true"),
                _ => entry.value.trim().is_empty() || entry.value == entry.key.default,
            };
            if !at_default {
                return Err(entry.unsupported(what));
            }
        }
    }
    Ok(())
}

/// `--feature-gates`: `Name=bool` pairs with etcd 3.6's gate names; returns those given.
fn feature_gates(entry: &Entry) -> Result<Vec<(&str, bool)>, ConfigError> {
    let mut gates = Vec::new();
    for pair in entry
        .value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| entry.invalid(format!("missing bool value for {pair}")))?;
        if !FEATURE_GATE_NAMES.contains(&name) {
            return Err(entry.invalid(format!("unrecognized feature gate: {name}")));
        }
        let enabled = parse_bool(value)
            .ok_or_else(|| entry.invalid(format!("invalid value of {name}={value}")))?;
        gates.push((name, enabled));
    }
    Ok(gates)
}

/// Lease checkpoints, from the experimental flags or their etcd 3.6 feature gates, with
/// etcd's rule that persisting needs checkpoints.
fn lease_checkpoints(
    raw: &Raw,
    gates: &[(&str, bool)],
) -> Result<Option<CheckpointConfig>, ConfigError> {
    let enabled = gated(raw, gates, LEASE_CHECKPOINT, "LeaseCheckpoint")?;
    let persist = gated(
        raw,
        gates,
        LEASE_CHECKPOINT_PERSIST,
        "LeaseCheckpointPersist",
    )?;
    if persist && !enabled {
        return Err(raw.get(LEASE_CHECKPOINT_PERSIST).invalid(format!(
            "setting {LEASE_CHECKPOINT_PERSIST} requires {LEASE_CHECKPOINT}"
        )));
    }
    let entry = raw.get(LEASE_CHECKPOINT_INTERVAL);
    let interval = duration(entry)?;
    if interval < Duration::from_secs(1) {
        return Err(entry.invalid(format!("--{LEASE_CHECKPOINT_INTERVAL} must be at least 1s")));
    }
    Ok(enabled.then_some(CheckpointConfig { interval, persist }))
}

/// The NOSPACE auto-disarm and the corruption checks (`InitialCorruptCheck` is the
/// feature gate of the initial check; a check interval of 0 turns the periodic one off).
fn alarm_settings(raw: &Raw, gates: &[(&str, bool)]) -> Result<AlarmSettings, ConfigError> {
    let interval = renamed(raw, CORRUPT_CHECK_OLD, CORRUPT_CHECK, duration)?.1;
    Ok(AlarmSettings {
        auto_disarm_nospace: boolean(raw.get("auto-disarm-nospace"))?,
        initial_corrupt_check: gated(
            raw,
            gates,
            "experimental-initial-corrupt-check",
            "InitialCorruptCheck",
        )?,
        corrupt_check_interval: (!interval.is_zero()).then_some(interval),
    })
}

/// A boolean flag that an etcd 3.6 feature gate may set instead; both set differently is
/// refused rather than one silently ignored.
fn gated(raw: &Raw, gates: &[(&str, bool)], flag: &str, gate: &str) -> Result<bool, ConfigError> {
    let entry = raw.get(flag);
    let value = boolean(entry)?;
    match gates.iter().find(|(name, _)| *name == gate) {
        Some(&(_, gated)) if entry.origin != Origin::Default && gated != value => {
            Err(ConfigError::Conflict {
                message: format!(
                    "--{flag}={value} and --{FEATURE_GATES}={gate}={gated} are set at the same time"
                ),
                origins: format!(
                    "{}, {}",
                    entry.provenance(),
                    raw.get(FEATURE_GATES).provenance()
                ),
            })
        }
        Some(&(_, gated)) => Ok(gated),
        None => Ok(value),
    }
}

/// Go's `strconv.ParseBool`, which etcd's boolean flags use.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn boolean(entry: &Entry) -> Result<bool, ConfigError> {
    parse_bool(&entry.value).ok_or_else(|| entry.invalid("must be a boolean (true or false)"))
}

fn duration(entry: &Entry) -> Result<Duration, ConfigError> {
    go_duration(&entry.value).map_err(|e| entry.invalid(e))
}

/// `--backup-interval`: periodic backups need somewhere to go.
fn backup_interval(raw: &Raw) -> Result<Option<Duration>, ConfigError> {
    let entry = raw.get("backup-interval");
    match duration(entry)? {
        d if d.is_zero() => Ok(None),
        _ if raw.get("backup-dir").value.is_empty() => {
            Err(entry.invalid("periodic backups need --backup-dir"))
        }
        d => Ok(Some(d)),
    }
}

/// `--backup-retention-count` and `--backup-retention-age`: pruning needs `--backup-dir`.
fn backup_retention(raw: &Raw) -> Result<BackupRetention, ConfigError> {
    let count = raw.get("backup-retention-count");
    let age = raw.get("backup-retention-age");
    let retention = BackupRetention {
        count: Some(uint(count)?).filter(|n| *n > 0),
        age: Some(duration(age)?).filter(|d| !d.is_zero()),
    };
    let no_dir = raw.get("backup-dir").value.is_empty();
    match (retention.count, retention.age) {
        (Some(_), _) if no_dir => Err(count.invalid("backup retention needs --backup-dir")),
        (_, Some(_)) if no_dir => Err(age.invalid("backup retention needs --backup-dir")),
        _ => Ok(retention),
    }
}

/// A comma-separated list key's items, without blanks.
fn list(entry: &Entry) -> Vec<String> {
    entry
        .value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `--backup-plugins` may name only plugins of the config file's `plugins:` list that have
/// the backup hook.
pub(super) fn check_backup_plugins(
    entries: &[Entry],
    plugins: &[PluginConfig],
) -> Result<(), ConfigError> {
    let Some(entry) = entries.iter().find(|e| e.key.name == "backup-plugins") else {
        return Ok(());
    };
    for name in list(entry) {
        let known = plugins
            .iter()
            .any(|p| p.name == name && p.hooks.contains(&Hook::Backup));
        if !known {
            return Err(entry.invalid(format!(
                "no plugin named {name:?} with the backup hook in the config file's plugins: list"
            )));
        }
    }
    Ok(())
}

/// The watch progress interval, under its etcd 3.5 or 3.6 name.
fn watch_progress(raw: &Raw) -> Result<Duration, ConfigError> {
    let (entry, interval) = renamed(raw, WATCH_PROGRESS_OLD, WATCH_PROGRESS, duration)?;
    if interval.is_zero() {
        return Err(entry.invalid(format!("--{} must be >0", entry.key.name)));
    }
    Ok(interval)
}

/// A value under its etcd 3.5 (`old`, `experimental-`) or 3.6 (`new`) name, with the entry
/// it came from. Like etcd 3.6, an explicitly set old name wins over the default of the
/// new one; both set differently is refused rather than one silently ignored.
fn renamed<'r, T: PartialEq>(
    raw: &'r Raw,
    old: &str,
    new: &str,
    parse: impl Fn(&Entry) -> Result<T, ConfigError>,
) -> Result<(&'r Entry, T), ConfigError> {
    let (old_entry, new_entry) = (raw.get(old), raw.get(new));
    let (old_value, new_value) = (parse(old_entry)?, parse(new_entry)?);
    match (
        old_entry.origin != Origin::Default,
        new_entry.origin != Origin::Default,
    ) {
        (true, true) if old_value != new_value => Err(ConfigError::Conflict {
            message: format!("--{old} and --{new} (its etcd 3.6 name) are set to different values"),
            origins: format!("{}, {}", old_entry.provenance(), new_entry.provenance()),
        }),
        (true, _) => Ok((old_entry, old_value)),
        _ => Ok((new_entry, new_value)),
    }
}

fn listener(raw: &Raw) -> Result<ListenerOptions, ConfigError> {
    let interval = duration(raw.get("grpc-keepalive-interval"))?;
    let timeout = duration(raw.get("grpc-keepalive-timeout"))?;
    let streams = raw.get("max-concurrent-streams");
    let max_concurrent_streams = u32::try_from(uint(streams)?)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| streams.invalid("must be between 1 and 4294967295"))?;
    Ok(ListenerOptions {
        reuse_port: boolean(raw.get("socket-reuse-port"))?,
        keepalive: (!interval.is_zero() && !timeout.is_zero()).then_some((interval, timeout)),
        max_concurrent_streams,
    })
}

/// `--log-outputs`: `default`, `stderr`, `stdout` or file paths, deduplicated as etcd's
/// `UniqueStringsValue` does. Like etcd, `default` cannot be combined with others.
fn log_outputs(entry: &Entry) -> Result<Vec<LogOutput>, ConfigError> {
    let mut names: Vec<&str> = entry
        .value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Err(entry.invalid("at least one output is required"));
    }
    if names.len() > 1 && names.contains(&"default") {
        return Err(entry.invalid("multi logoutput for \"default\" is not supported yet"));
    }
    Ok(names
        .into_iter()
        .map(|name| match name {
            "default" | "stderr" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            path => LogOutput::File(PathBuf::from(path)),
        })
        .collect())
}

fn uint(entry: &Entry) -> Result<u64, ConfigError> {
    entry
        .value
        .parse()
        .map_err(|_| entry.invalid("must be a non-negative integer"))
}

/// What a URL list must satisfy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// At least one URL, each with an IP or `localhost` host (etcd's `checkBindURLs`).
    Bind,
    /// Like `Bind`, but the list may be empty.
    BindOrNone,
    /// At least one URL with a host (etcd's `checkHostURLs`).
    Host,
}

/// A comma-separated URL list, sorted and deduplicated as etcd's `types.NewURLs` does.
fn urls(entry: &Entry, need: Need) -> Result<Vec<Url>, ConfigError> {
    if entry.value.trim().is_empty() {
        return match need {
            Need::BindOrNone => Ok(Vec::new()),
            Need::Bind | Need::Host => Err(entry.invalid("at least one URL is required")),
        };
    }
    let mut list = Vec::new();
    for part in entry.value.split(',').map(str::trim) {
        let url = url(entry, part)?;
        if need != Need::Host {
            check_bind_host(entry, part, &url)?;
        }
        list.push(url);
    }
    list.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    list.dedup();
    Ok(list)
}

/// One URL, with etcd's `types.NewURLs` rules: scheme, `host:port`, no path.
fn url(entry: &Entry, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| entry.invalid(format!("{text:?}: {e}")))?;
    match url.scheme() {
        "http" | "https" => {}
        "unix" | "unixs" => return Err(entry.unsupported("unix socket URLs are not supported yet")),
        _ => return Err(entry.invalid("URL scheme must be http or https")),
    }
    if !has_explicit_port(text) {
        return Err(entry.invalid(format!(
            "URL address does not have the form \"host:port\": {text}"
        )));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(entry.invalid(format!("URL must not contain a path: {text}")));
    }
    Ok(url)
}

/// Whether the authority of `text` names a port. The `url` crate forgets a port equal to
/// the scheme's default (`http://h:80`), so the raw text is inspected.
fn has_explicit_port(text: &str) -> bool {
    let authority = text.split_once("://").map_or("", |(_, rest)| rest);
    let authority = authority.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let after_host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, port)| port),
        None => host_port,
    };
    after_host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty())
}

/// etcd's `checkBindURLs`: a listener needs an IP address (or `localhost`), not a name.
fn check_bind_host(entry: &Entry, text: &str, url: &Url) -> Result<(), ConfigError> {
    match url.host() {
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => Ok(()),
        Some(Host::Domain("localhost")) => Ok(()),
        _ => Err(entry.invalid(format!("expected IP in URL for binding ({text})"))),
    }
}

/// etcd refuses an explicitly set `listen-client-urls` without `advertise-client-urls`,
/// rather than advertising `localhost` for a server that listens elsewhere. Like etcd,
/// this applies to flags and environment variables, not to the file.
fn require_advertise_client_urls(raw: &Raw) -> Result<(), ConfigError> {
    let listen = raw.get("listen-client-urls");
    let explicit = matches!(listen.origin, Origin::Env(_) | Origin::Flag(_));
    if explicit && raw.get("advertise-client-urls").origin == Origin::Default {
        return Err(ConfigError::Conflict {
            message: "--advertise-client-urls is required when --listen-client-urls is set \
                      explicitly"
                .into(),
            origins: listen.provenance(),
        });
    }
    Ok(())
}

/// `name=url,name=url` (etcd's `types.NewURLsMap`); a name may repeat to give it several
/// URLs. Only single-member clusters are supported for now.
fn initial_cluster(entry: &Entry) -> Result<Vec<(String, Url)>, ConfigError> {
    let mut members = Vec::new();
    for pair in entry.value.split(',').filter(|p| !p.is_empty()) {
        let (name, text) = pair.split_once('=').unwrap_or((pair, ""));
        members.push((name.to_owned(), url(entry, text.trim())?));
    }
    Ok(members)
}

/// etcd's `hasLocalMember` and `advertiseMatchesCluster`, comparing URLs as written (etcd
/// also resolves host names; cairn does not).
fn check_local_member(
    raw: &Raw,
    name: &str,
    cluster: &[(String, Url)],
    advertised: &[Url],
) -> Result<(), ConfigError> {
    let conflict = |message: String| ConfigError::Conflict {
        message,
        origins: ["name", "initial-cluster", "initial-advertise-peer-urls"]
            .map(|k| raw.get(k).provenance())
            .join(", "),
    };
    let mine: BTreeSet<&str> = cluster
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, u)| bare(u))
        .collect();
    if mine.is_empty() {
        return Err(conflict(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        )));
    }
    let advertised: BTreeSet<&str> = advertised.iter().map(bare).collect();
    let join = |set: &BTreeSet<&str>, prefix: &str| {
        set.iter()
            .map(|u| format!("{prefix}{u}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let named = format!("{name}=");
    let missing: BTreeSet<&str> = mine.difference(&advertised).copied().collect();
    if !missing.is_empty() {
        return Err(conflict(format!(
            "--initial-cluster has {} but missing from --initial-advertise-peer-urls={}",
            join(&missing, &named),
            join(&advertised, "")
        )));
    }
    let extra: BTreeSet<&str> = advertised.difference(&mine).copied().collect();
    if !extra.is_empty() {
        return Err(conflict(format!(
            "--initial-advertise-peer-urls has {} but missing from --initial-cluster={}",
            join(&extra, ""),
            join(&advertised, &named)
        )));
    }
    Ok(())
}

/// A URL as Go prints it: without the `/` the `url` crate adds for an empty path.
fn bare(url: &Url) -> &str {
    url.as_str().strip_suffix('/').unwrap_or(url.as_str())
}

fn cluster_state(entry: &Entry) -> Result<ClusterState, ConfigError> {
    match entry.value.as_str() {
        "new" => Ok(ClusterState::New),
        "existing" => Ok(ClusterState::Existing),
        _ => Err(entry.invalid("must be one of new, existing")),
    }
}

/// Heartbeat and election timeout in milliseconds, with etcd's checks and messages.
fn timing(raw: &Raw) -> Result<(Duration, Duration), ConfigError> {
    let (tick, election) = (raw.get("heartbeat-interval"), raw.get("election-timeout"));
    let tick_ms = uint(tick)?;
    let election_ms = uint(election)?;
    if tick_ms == 0 {
        return Err(tick.invalid("--heartbeat-interval must be >0 (set to 0ms)"));
    }
    if election_ms == 0 {
        return Err(election.invalid("--election-timeout must be >0 (set to 0ms)"));
    }
    if tick_ms.saturating_mul(5) > election_ms {
        return Err(ConfigError::Conflict {
            message: format!(
                "--election-timeout[{election_ms}ms] should be at least as 5 times as \
                 --heartbeat-interval[{tick_ms}ms]"
            ),
            origins: format!("{}, {}", election.provenance(), tick.provenance()),
        });
    }
    if election_ms > MAX_ELECTION_MS {
        return Err(election.invalid(format!(
            "--election-timeout[{election_ms}ms] is too long, and should be set less than \
             {MAX_ELECTION_MS}ms"
        )));
    }
    Ok((
        Duration::from_millis(tick_ms),
        Duration::from_millis(election_ms),
    ))
}

/// etcd's `parseCompactionRetention`: for `periodic`, a bare number is hours and anything
/// else a Go duration; for `revision`, a number of revisions. Zero turns compaction off.
fn auto_compaction(raw: &Raw) -> Result<AutoCompaction, ConfigError> {
    let (mode, retention) = (
        raw.get("auto-compaction-mode"),
        raw.get("auto-compaction-retention"),
    );
    let text = retention.value.as_str();
    let whole = text.parse::<i64>().ok().filter(|n| *n >= 0);
    let compaction = match mode.value.as_str() {
        "periodic" => {
            let period = match whole {
                Some(hours) => Duration::from_secs(hours.unsigned_abs().saturating_mul(3600)),
                None => go_duration(text).map_err(|e| {
                    retention.invalid(format!("error parsing CompactionRetention: {e}"))
                })?,
            };
            if period.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(period)
            }
        }
        "revision" => match whole {
            Some(0) => AutoCompaction::Off,
            Some(revisions) => AutoCompaction::Revision(revisions),
            None => {
                return Err(retention.invalid(
                    "with auto-compaction-mode revision, must be a non-negative number of \
                     revisions",
                ))
            }
        },
        "" => return Err(mode.invalid("undefined auto-compaction-mode")),
        other => return Err(mode.invalid(format!("unknown auto-compaction-mode {other:?}"))),
    };
    Ok(compaction)
}

/// Go's `time.ParseDuration` (e.g. `1h`, `30m`, `5m30s`, `1.5h`, `300ms`), refusing
/// negative durations, which no setting of etcd's can use.
pub(crate) fn go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let (whole, after) = split_digits(rest);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(f) => split_digits(f),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        // Digits past the 18th cannot change a nanosecond count below Go's i64 limit.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = match fraction {
            "" => 0,
            digits => {
                let value: u128 = digits.parse().map_err(|_| invalid())?;
                value * scale / 10u128.pow(digits.len() as u32)
            }
        };
        nanos = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(nanos))
            .filter(|n| *n <= i64::MAX as u128)
            .ok_or_else(invalid)?;
        rest = after;
    }
    if negative && nanos > 0 {
        return Err(format!("{text:?} is negative"));
    }
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| invalid())
}

fn split_digits(text: &str) -> (&str, &str) {
    let len = text.bytes().take_while(u8::is_ascii_digit).count();
    text.split_at(len)
}

fn check_logging(raw: &Raw) -> Result<(), ConfigError> {
    let logger = raw.get("logger");
    match logger.value.as_str() {
        "zap" => Ok(()),
        "capnslog" => Err(logger.invalid("--logger=capnslog is removed in v3.5")),
        other => Err(logger.invalid(format!("unknown logger option {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("30m", Duration::from_secs(1800)),
            ("5m30s", Duration::from_secs(330)),
            ("1h", Duration::from_secs(3600)),
            ("1.5h", Duration::from_secs(5400)),
            ("300ms", Duration::from_millis(300)),
            ("2us", Duration::from_micros(2)),
            (".5s", Duration::from_millis(500)),
        ];
        for (text, want) in ok {
            assert_eq!(go_duration(text).as_ref(), Ok(want), "{text}");
        }
        for bad in ["", "1", "1x", "h", "-1h", "1h-", ".s", "99999999999h"] {
            assert!(go_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(
            go_duration("5"),
            Err("time: missing unit in duration \"5\"".to_owned())
        );
    }

    #[test]
    fn explicit_ports() {
        for (text, want) in [
            ("http://localhost:2379", true),
            ("http://h:80", true),
            ("http://h", false),
            ("http://h:", false),
            ("http://[::1]:2379", true),
            ("http://[::1]", false),
            ("http://u:p@h:1/", true),
        ] {
            assert_eq!(has_explicit_port(text), want, "{text}");
        }
    }
}

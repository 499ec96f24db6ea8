//! The table of every configuration key cairn accepts: every flag of etcd 3.5's `etcdmain`
//! and every YAML field of its `embed.Config`, plus the etcd 3.6 names that replace the
//! `experimental-` ones. A key's name is at once the flag name, the YAML key and, upper-cased,
//! the `ETCD_*` variable. Each entry carries etcd's default, its type, its `--help` section
//! and what cairn does with it ([`Effect`]). Every layer, `--help`, validation of the value's
//! form, the start-up warning and `config show` are driven by this one table, so a key cannot
//! exist in one place and be missing in another.

/// The type of a key's value; decides clap's arity, how the value is checked and how
/// `config show` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Free text, a path, a URL list or an enumeration.
    Text,
    /// A comma-separated list; the YAML file may also write it as a YAML list.
    List,
    /// A non-negative integer.
    Uint,
    /// An integer that may be negative (Go `int` flags).
    Int,
    /// A Go boolean (`strconv.ParseBool`): a bare `--flag` means true, `--flag=false` sets
    /// false.
    Bool,
    /// A Go duration (`5s`, `1h30m`); the YAML file may also give integer nanoseconds, as
    /// etcd's own YAML decoding of `time.Duration` requires.
    Duration,
    /// etcd's `IgnoredFlag`: etcd 0.4 flags that etcd 3.5 still parses and ignores. They take
    /// an optional value and are not listed in `--help`.
    Legacy,
}

/// What cairn does with a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Cairn acts on it as etcd does (some values may still be refused in `validate`).
    Honoured,
    /// Only etcd's default (or an empty value) is accepted: anything else asks for a
    /// feature cairn does not have yet and is refused with this explanation.
    DefaultOnly(&'static str),
    /// Accepted so that etcd configurations start unchanged, but nothing in cairn would
    /// change with it, for this reason. Setting it is reported once at start-up. Its form is
    /// still checked, and `validate` refuses a value that would turn on a missing feature.
    Ignored(&'static str),
}

/// One accepted key.
#[derive(Debug)]
pub(crate) struct Key {
    pub name: &'static str,
    /// etcd's default, as the raw string the layers would carry.
    pub default: &'static str,
    pub kind: Kind,
    /// The `--help` section, named like etcd's own help text.
    pub section: &'static str,
    pub effect: Effect,
    pub help: &'static str,
}

const MEMBER: &str = "Member";
const CLUSTERING: &str = "Clustering";
const SECURITY: &str = "Security";
const AUTH: &str = "Auth";
const MONITORING: &str = "Profiling and Monitoring";
const LOGGING: &str = "Logging";
const TRACING: &str = "Experimental distributed tracing";
const PROXY: &str = "v2 Proxy (to be deprecated in v3.6)";
const EXPERIMENTAL: &str = "Experimental feature";
const UNSAFE: &str = "Unsafe feature";
/// Not shown in `--help`, as etcd does not show them.
pub(crate) const HIDDEN: &str = "";

use Effect::{DefaultOnly, Honoured, Ignored};
use Kind::{Bool, Duration, Int, Legacy, List, Text, Uint};

// Why settings have no effect, shared by the keys they explain.
pub(crate) const TLS_ONLY: &str = "cairn's TLS (rustls) does not implement this setting yet";
const NO_V2: &str = "cairn serves only the v3 API (etcd 3.6 removed v2)";
const V2_PROXY: &str = "cairn always runs as a cluster member, never as a v2 proxy";
const DISCOVERY_ONLY: &str = "it only applies to discovery, which cairn does not support yet";
const NO_PEERS: &str =
    "cairn runs the periodic and initial corruption checks, not the compaction hash check";
const NO_BBOLT: &str = "cairn stores data in fjall (an LSM), not bbolt";
const NO_TRACING: &str = "cairn exports no OpenTelemetry traces";
const NO_RAFT_HTTP: &str =
    "it tunes etcd's peer transport; cairn's peer calls are bounded by openraft's own timeouts";
const NO_DEFRAG: &str = "defragmentation never stops a member in cairn: the LSM rewrites its tables while reads and writes go on";
const NO_SLOW_LOG: &str = "cairn logs no slow-request warnings yet";
const NO_COMPACTION_BATCHES: &str = "cairn compacts in one LSM range delete, not in batches";
const NO_LOG_ROTATION: &str = "cairn does not rotate log files (use logrotate with copytruncate)";
pub(crate) const LEASE_CHECKPOINT: &str = "experimental-enable-lease-checkpoint";
pub(crate) const LEASE_CHECKPOINT_PERSIST: &str = "experimental-enable-lease-checkpoint-persist";
pub(crate) const LEASE_CHECKPOINT_INTERVAL: &str = "experimental-lease-checkpoint-interval";

const fn key(
    name: &'static str,
    default: &'static str,
    kind: Kind,
    section: &'static str,
    effect: Effect,
    help: &'static str,
) -> Key {
    Key {
        name,
        default,
        kind,
        section,
        effect,
        help,
    }
}

/// The name of the key that points at the YAML file; it is read before the file layer
/// exists, so the file itself may not set it.
pub(crate) const CONFIG_FILE: &str = "config-file";

/// Every key, in `--help` and `config show` order.
#[rustfmt::skip]
pub(crate) static KEYS: &[Key] = &[
    // Member
    key("name", "default", Text, MEMBER, Honoured, "Human-readable name for this member."),
    key("data-dir", "", Text, MEMBER, Honoured, "Path to the data directory (empty means ${name}.etcd)."),
    key("wal-dir", "", Text, MEMBER, Honoured, "Path to the dedicated wal directory."),
    key("snapshot-count", "100000", Uint, MEMBER, Honoured, "Number of committed transactions to trigger a snapshot to disk."),
    key("heartbeat-interval", "100", Uint, MEMBER, Honoured, "Time (in milliseconds) of a heartbeat interval."),
    key("election-timeout", "1000", Uint, MEMBER, Honoured, "Time (in milliseconds) for an election to timeout."),
    key("initial-election-tick-advance", "true", Bool, MEMBER, Ignored("openraft starts its election timer at boot; there are no ticks to fast-forward"), "Whether to fast-forward initial election ticks on boot for faster election."),
    key("listen-peer-urls", "http://localhost:2380", List, MEMBER, Honoured, "List of URLs to listen on for peer traffic."),
    key("listen-client-urls", "http://localhost:2379", List, MEMBER, Honoured, "List of URLs to listen on for client traffic."),
    key("listen-client-http-urls", "", List, MEMBER, Honoured, "List of URLs to listen on for HTTP client traffic (cairn serves gRPC there too, and keeps HTTP on --listen-client-urls)."),
    key("backup-dir", "", Text, MEMBER, Honoured, "cairn only: directory that backups (POST /cairn/v1/backup, `cairn backup`, --backup-interval) are written to, through the backup plugins; empty disables backups; the config file's backup.dir."),
    key("backup-interval", "0s", Duration, MEMBER, Honoured, "cairn only: the leader takes a backup into --backup-dir this often (0 disables scheduled backups); the config file's backup.interval."),
    key("backup-retention-count", "0", Uint, MEMBER, Honoured, "cairn only: after each backup, keep this many of the newest cairn backups in --backup-dir and delete older ones (0 keeps all); backup.retention.count."),
    key("backup-retention-age", "0s", Duration, MEMBER, Honoured, "cairn only: after each backup, delete cairn backups in --backup-dir older than this (0 keeps all); backup.retention.age."),
    key("backup-plugins", "", List, MEMBER, Honoured, "cairn only: which of the configured backup-hook plugins backups go through, in the plugins: list's order (empty: every plugin with the backup hook); backup.plugins."),
    key("max-snapshots", "5", Uint, MEMBER, Ignored("cairn keeps its raft snapshot in the LSM, not in snapshot files"), "Maximum number of snapshot files to retain (0 is unlimited)."),
    key("max-wals", "5", Uint, MEMBER, Ignored("cairn's raft log is purged after each snapshot; there are no WAL files"), "Maximum number of wal files to retain (0 is unlimited)."),
    key("quota-backend-bytes", "0", Uint, MEMBER, Honoured, "Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB)."),
    key("auto-disarm-nospace", "false", Bool, MEMBER, Honoured, "cairn only: disarm this member's NOSPACE alarm by itself once the data in use is back under --quota-backend-bytes (etcd-io/etcd#14267; etcd waits for `alarm disarm`)."),
    key("backend-bbolt-freelist-type", "map", Text, MEMBER, Ignored(NO_BBOLT), "BackendFreelistType specifies the type of freelist that boltdb backend uses (array and map are supported types)."),
    key("backend-batch-interval", "0s", Duration, MEMBER, Ignored("cairn commits every apply as one LSM batch at once"), "BackendBatchInterval is the maximum time before commit the backend transaction."),
    key("backend-batch-limit", "0", Int, MEMBER, Ignored("cairn commits every apply as one LSM batch at once"), "BackendBatchLimit is the maximum operations before commit the backend transaction."),
    key("max-txn-ops", "128", Uint, MEMBER, Honoured, "Maximum number of operations permitted in a transaction."),
    key("max-request-bytes", "1572864", Uint, MEMBER, Honoured, "Maximum client request size in bytes the server will accept."),
    key("max-concurrent-streams", "4294967295", Uint, MEMBER, Honoured, "Maximum concurrent streams that each client can open at a time."),
    key("grpc-keepalive-min-time", "5s", Duration, MEMBER, Ignored("the HTTP/2 server (hyper) cannot police how often clients ping"), "Minimum interval duration that a client should wait before pinging server."),
    key("grpc-keepalive-interval", "2h", Duration, MEMBER, Honoured, "Frequency duration of server-to-client ping to check if a connection is alive (0 to disable)."),
    key("grpc-keepalive-timeout", "20s", Duration, MEMBER, Honoured, "Additional duration of wait before closing a non-responsive connection (0 to disable)."),
    key("socket-reuse-port", "false", Bool, MEMBER, Honoured, "Enable to set socket option SO_REUSEPORT on listeners allowing rebinding of a port already in use."),
    key("socket-reuse-address", "false", Bool, MEMBER, Ignored("cairn's listeners always set SO_REUSEADDR, as Go's (and so etcd's) do by default"), "Enable to set socket option SO_REUSEADDR on listeners allowing binding to an address in TIME_WAIT state."),
    key("raft-read-timeout", "5s", Duration, MEMBER, Ignored(NO_RAFT_HTTP), "Read timeout set on each rafthttp connection."),
    key("raft-write-timeout", "5s", Duration, MEMBER, Ignored(NO_RAFT_HTTP), "Write timeout set on each rafthttp connection."),
    key(CONFIG_FILE, "", Text, MEMBER, Honoured, "Path to the server configuration file (YAML, etcd's key names)."),
    // Clustering
    key("initial-advertise-peer-urls", "http://localhost:2380", List, CLUSTERING, Honoured, "List of this member's peer URLs to advertise to the rest of the cluster."),
    key("initial-cluster", "default=http://localhost:2380", Text, CLUSTERING, Honoured, "Initial cluster configuration for bootstrapping."),
    key("initial-cluster-state", "new", Text, CLUSTERING, Honoured, "Initial cluster state ('new' or 'existing')."),
    key("initial-cluster-token", "etcd-cluster", Text, CLUSTERING, Honoured, "Initial cluster token for the etcd cluster during bootstrap."),
    key("advertise-client-urls", "http://localhost:2379", List, CLUSTERING, Honoured, "List of this member's client URLs to advertise to the public."),
    key("discovery", "", Text, CLUSTERING, DefaultOnly("discovery is not supported"), "Discovery URL used to bootstrap the cluster."),
    key("discovery-fallback", "proxy", Text, CLUSTERING, Ignored(DISCOVERY_ONLY), "Expected behavior ('exit' or 'proxy') when discovery services fails."),
    key("discovery-proxy", "", Text, CLUSTERING, Ignored(DISCOVERY_ONLY), "HTTP proxy to use for traffic to discovery service."),
    key("discovery-srv", "", Text, CLUSTERING, DefaultOnly("DNS discovery is not supported"), "DNS srv domain used to bootstrap the cluster."),
    key("discovery-srv-name", "", Text, CLUSTERING, Ignored(DISCOVERY_ONLY), "Suffix to the dns srv name queried when bootstrapping."),
    key("discovery-endpoints", "", List, CLUSTERING, DefaultOnly("v3 discovery is not supported"), "V3 discovery (etcd 3.6): gRPC endpoints of the discovery service."),
    key("discovery-token", "", Text, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): discovery token for the etcd cluster to be bootstrapped."),
    key("discovery-dial-timeout", "2s", Duration, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): dial timeout for client connections."),
    key("discovery-request-timeout", "5s", Duration, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): timeout for discovery requests (excluding dial timeout)."),
    key("discovery-keepalive-time", "2s", Duration, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): keepalive time for client connections."),
    key("discovery-keepalive-timeout", "6s", Duration, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): keepalive timeout for client connections."),
    key("discovery-insecure-transport", "true", Bool, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): disable transport security for client connections."),
    key("discovery-insecure-skip-tls-verify", "false", Bool, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): skip server certificate verification."),
    key("discovery-cert", "", Text, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): identify secure client using this TLS certificate file."),
    key("discovery-key", "", Text, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): identify secure client using this TLS key file."),
    key("discovery-cacert", "", Text, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): verify certificates of TLS-enabled secure servers using this CA bundle."),
    key("discovery-user", "", Text, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): username[:password] for authentication."),
    key("discovery-password", "", Text, CLUSTERING, Ignored(DISCOVERY_ONLY), "V3 discovery (etcd 3.6): password for authentication."),
    key("strict-reconfig-check", "true", Bool, CLUSTERING, Honoured, "Reject reconfiguration requests that would cause quorum loss."),
    key("pre-vote", "true", Bool, CLUSTERING, Ignored("cairn always runs the pre-vote phase (etcd 3.5's default); it cannot be turned off"), "Enable to run an additional Raft election phase."),
    key("auto-compaction-retention", "0", Text, CLUSTERING, Honoured, "Auto compaction retention for mvcc key value store. 0 means disable auto compaction."),
    key("auto-compaction-mode", "periodic", Text, CLUSTERING, Honoured, "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention."),
    key("enable-v2", "false", Bool, CLUSTERING, Ignored(NO_V2), "Accept etcd V2 client requests. Deprecated in v3.5."),
    key("v2-deprecation", "not-yet", Text, CLUSTERING, Ignored("cairn has no v2 store to deprecate"), "Phase of v2store deprecation: not-yet, write-only, write-only-drop-data or gone."),
    key("experimental-enable-v2v3", "", Text, CLUSTERING, Ignored(NO_V2), "Serve v2 requests through the v3 backend under a given prefix. Deprecated in v3.5."),
    key("max-learners", "1", Int, CLUSTERING, Honoured, "Sets the maximum number of learners that can be available in the cluster membership (etcd 3.6)."),
    // Security
    key("cert-file", "", Text, SECURITY, Honoured, "Path to the client server TLS cert file."),
    key("key-file", "", Text, SECURITY, Honoured, "Path to the client server TLS key file."),
    key("client-cert-file", "", Text, SECURITY, Ignored(TLS_ONLY), "Path to an explicit peer client TLS cert file otherwise cert file will be used when client auth is required."),
    key("client-key-file", "", Text, SECURITY, Ignored(TLS_ONLY), "Path to an explicit peer client TLS key file otherwise key file will be used when client auth is required."),
    key("client-cert-auth", "false", Bool, SECURITY, Honoured, "Enable client cert authentication."),
    key("client-crl-file", "", Text, SECURITY, Ignored(TLS_ONLY), "Path to the client certificate revocation list file."),
    key("client-cert-allowed-hostname", "", Text, SECURITY, Ignored(TLS_ONLY), "Allowed TLS hostname for client cert authentication."),
    key("trusted-ca-file", "", Text, SECURITY, Honoured, "Path to the client server TLS trusted CA cert file."),
    key("auto-tls", "false", Bool, SECURITY, Honoured, "Client TLS using generated certificates."),
    key("peer-cert-file", "", Text, SECURITY, Honoured, "Path to the peer server TLS cert file."),
    key("peer-key-file", "", Text, SECURITY, Honoured, "Path to the peer server TLS key file."),
    key("peer-client-cert-file", "", Text, SECURITY, Ignored(TLS_ONLY), "Path to an explicit peer client TLS cert file otherwise peer cert file will be used when client auth is required."),
    key("peer-client-key-file", "", Text, SECURITY, Ignored(TLS_ONLY), "Path to an explicit peer client TLS key file otherwise peer key file will be used when client auth is required."),
    key("peer-client-cert-auth", "false", Bool, SECURITY, Honoured, "Enable peer client cert authentication."),
    key("peer-trusted-ca-file", "", Text, SECURITY, Honoured, "Path to the peer server TLS trusted CA file."),
    key("peer-cert-allowed-cn", "", List, SECURITY, Ignored(TLS_ONLY), "Required CN for client certs connecting to the peer endpoint."),
    key("peer-cert-allowed-hostname", "", List, SECURITY, Ignored(TLS_ONLY), "Allowed TLS hostname for inter peer authentication."),
    key("peer-auto-tls", "false", Bool, SECURITY, Honoured, "Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided."),
    key("self-signed-cert-validity", "1", Uint, SECURITY, Honoured, "The validity period of the client and peer certificates that are automatically generated by etcd when you specify ClientAutoTLS and PeerAutoTLS, the unit is year, and the default is 1."),
    key("peer-crl-file", "", Text, SECURITY, Ignored(TLS_ONLY), "Path to the peer certificate revocation list file."),
    key("cipher-suites", "", List, SECURITY, Honoured, "Comma-separated list of supported TLS cipher suites between client/server and peers (empty will be auto-populated by rustls; Go's names, TLS 1.2 suites only take effect as in etcd)."),
    key("tls-min-version", "TLS1.2", Text, SECURITY, Honoured, "Minimum TLS version supported by etcd (etcd 3.6): TLS1.2 or TLS1.3 (rustls has no TLS1.0/TLS1.1)."),
    key("tls-max-version", "", Text, SECURITY, Honoured, "Maximum TLS version supported by etcd (etcd 3.6): TLS1.2 or TLS1.3; empty is the newest, TLS1.3."),
    key("experimental-peer-skip-client-san-verification", "false", Bool, SECURITY, Ignored(TLS_ONLY), "Skip verification of SAN field in client certificate for peer connections."),
    key("peer-skip-client-san-verification", "false", Bool, SECURITY, Ignored(TLS_ONLY), "etcd 3.6 name of --experimental-peer-skip-client-san-verification."),
    key("cors", "*", List, SECURITY, Ignored("cairn's HTTP endpoints send no CORS headers yet, so browsers get no cross-origin access at all"), "Comma-separated whitelist of origins for CORS, or cross-origin resource sharing, (empty or * means allow all)."),
    key("host-whitelist", "*", List, SECURITY, DefaultOnly("checking the HTTP Host header is not supported yet"), "Acceptable hostnames from HTTP client requests, if server is not secure (empty or * means allow all)."),
    // Auth
    key("auth-token", "simple", Text, AUTH, Honoured, "Specify a v3 authentication token type and token specific options, especially for JWT. Its format is \"type,var1=val1,var2=val2,...\". Possible type is 'simple' or 'jwt'. Possible variables are 'sign-method' for specifying a sign method of jwt (its possible values are 'ES256', 'ES384', 'HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512' or 'EdDSA'; not 'ES512'), 'pub-key' for specifying a path to a public key for verifying jwt, 'priv-key' for specifying a path to a private key for signing jwt, and 'ttl' for specifying TTL of jwt tokens (default 5m)."),
    key("bcrypt-cost", "10", Uint, AUTH, Honoured, "Specify the cost / strength of the bcrypt algorithm for hashing auth passwords. Valid values are between 4 and 31."),
    key("auth-token-ttl", "300", Uint, AUTH, Honoured, "Time (in seconds) of the auth-token-ttl (simple tokens; a JWT's is the ttl option of --auth-token)."),
    // Profiling and Monitoring
    key("enable-pprof", "false", Bool, MONITORING, Honoured, "Enable a CPU profile via HTTP at client URL + \"/debug/pprof/profile?seconds=N\" (readable by `go tool pprof`)."),
    key("metrics", "basic", Text, MONITORING, Honoured, "Set level of detail for exported metrics, specify 'extensive' to include server side grpc histogram metrics."),
    key("listen-metrics-urls", "", List, MONITORING, Honoured, "List of URLs to listen on for the /metrics and /health endpoints."),
    key("enable-grpc-gateway", "true", Bool, MONITORING, Honoured, "Enable GRPC gateway."),
    // Logging
    key("logger", "zap", Text, LOGGING, Honoured, "Currently only supports 'zap' for structured logging."),
    key("log-outputs", "default", List, LOGGING, Honoured, "Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd, or list of comma separated output targets."),
    key("log-level", "info", Text, LOGGING, Honoured, "Configures log level. Only supports debug, info, warn, error, panic, or fatal."),
    key("log-format", "json", Text, LOGGING, Honoured, "Configures log format. Only supports json, console (etcd 3.6; 3.5 always writes json)."),
    key("enable-log-rotation", "false", Bool, LOGGING, Ignored(NO_LOG_ROTATION), "Enable log rotation of a single log-outputs file target."),
    key("log-rotation-config-json", "{\"maxsize\": 100, \"maxage\": 0, \"maxbackups\": 0, \"localtime\": false, \"compress\": false}", Text, LOGGING, Ignored(NO_LOG_ROTATION), "Configures log rotation if enabled with a JSON logger config."),
    // Experimental distributed tracing, with the etcd 3.6 names beside the 3.5 ones.
    key("experimental-enable-distributed-tracing", "false", Bool, TRACING, Ignored(NO_TRACING), "Enable experimental distributed tracing."),
    key("experimental-distributed-tracing-address", "localhost:4317", Text, TRACING, Ignored(NO_TRACING), "Distributed tracing collector address."),
    key("experimental-distributed-tracing-service-name", "etcd", Text, TRACING, Ignored(NO_TRACING), "Distributed tracing service name, must be same across all etcd instances."),
    key("experimental-distributed-tracing-instance-id", "", Text, TRACING, Ignored(NO_TRACING), "Distributed tracing instance ID, must be unique per each etcd instance."),
    key("experimental-distributed-tracing-sampling-rate", "0", Int, TRACING, Ignored(NO_TRACING), "Number of samples to collect per million spans."),
    key("enable-distributed-tracing", "false", Bool, TRACING, Ignored(NO_TRACING), "etcd 3.6 name of --experimental-enable-distributed-tracing."),
    key("distributed-tracing-address", "localhost:4317", Text, TRACING, Ignored(NO_TRACING), "etcd 3.6 name of --experimental-distributed-tracing-address."),
    key("distributed-tracing-service-name", "etcd", Text, TRACING, Ignored(NO_TRACING), "etcd 3.6 name of --experimental-distributed-tracing-service-name."),
    key("distributed-tracing-instance-id", "", Text, TRACING, Ignored(NO_TRACING), "etcd 3.6 name of --experimental-distributed-tracing-instance-id."),
    key("distributed-tracing-sampling-rate", "0", Int, TRACING, Ignored(NO_TRACING), "etcd 3.6 name of --experimental-distributed-tracing-sampling-rate."),
    // v2 proxy
    key("proxy", "off", Text, PROXY, DefaultOnly("running as a v2 proxy is not supported"), "Proxy mode setting ('off', 'readonly' or 'on')."),
    key("proxy-failure-wait", "5000", Uint, PROXY, Ignored(V2_PROXY), "Time (in milliseconds) an endpoint will be held in a failed state."),
    key("proxy-refresh-interval", "30000", Uint, PROXY, Ignored(V2_PROXY), "Time (in milliseconds) of the endpoints refresh interval."),
    key("proxy-dial-timeout", "1000", Uint, PROXY, Ignored(V2_PROXY), "Time (in milliseconds) for a dial to timeout."),
    key("proxy-write-timeout", "5000", Uint, PROXY, Ignored(V2_PROXY), "Time (in milliseconds) for a write to timeout."),
    key("proxy-read-timeout", "0", Uint, PROXY, Ignored(V2_PROXY), "Time (in milliseconds) for a read to timeout."),
    // Experimental features, each followed by its etcd 3.6 name where it has one.
    key("experimental-initial-corrupt-check", "false", Bool, EXPERIMENTAL, Honoured, "Enable to check data corruption before serving any client/peer traffic."),
    key(CORRUPT_CHECK_OLD, "0s", Duration, EXPERIMENTAL, Honoured, "Duration of time between cluster corruption check passes."),
    key(CORRUPT_CHECK, "0s", Duration, EXPERIMENTAL, Honoured, "etcd 3.6 name of --experimental-corrupt-check-time."),
    key("experimental-compact-hash-check-enabled", "false", Bool, EXPERIMENTAL, Ignored(NO_PEERS), "Enable leader to periodically check followers compaction hashes."),
    key("experimental-compact-hash-check-time", "1m", Duration, EXPERIMENTAL, Ignored(NO_PEERS), "Duration of time between leader checks followers compaction hashes."),
    key("compact-hash-check-time", "1m", Duration, EXPERIMENTAL, Ignored(NO_PEERS), "etcd 3.6 name of --experimental-compact-hash-check-time."),
    key(LEASE_CHECKPOINT, "true", Bool, EXPERIMENTAL, Honoured, "Enable leader to send regular checkpoints to other members to prevent reset of remaining TTL on leader change (on by default in cairn)."),
    key(LEASE_CHECKPOINT_PERSIST, "false", Bool, EXPERIMENTAL, Honoured, "Enable persisting remainingTTL to prevent indefinite auto-renewal of long lived leases."),
    key(LEASE_CHECKPOINT_INTERVAL, "5m", Duration, EXPERIMENTAL, Honoured, "cairn only: how often the leader checkpoints a lease's remaining TTL (etcd's fixed LeaseCheckpointInterval)."),
    key("experimental-compaction-batch-limit", "1000", Int, EXPERIMENTAL, Ignored(NO_COMPACTION_BATCHES), "Sets the maximum revisions deleted in each compaction batch."),
    key("compaction-batch-limit", "1000", Int, EXPERIMENTAL, Ignored(NO_COMPACTION_BATCHES), "etcd 3.6 name of --experimental-compaction-batch-limit."),
    key("experimental-compaction-sleep-interval", "10ms", Duration, EXPERIMENTAL, Ignored(NO_COMPACTION_BATCHES), "Sets the sleep interval between each compaction batch."),
    key("compaction-sleep-interval", "10ms", Duration, EXPERIMENTAL, Ignored(NO_COMPACTION_BATCHES), "etcd 3.6 name of --experimental-compaction-sleep-interval."),
    key(WATCH_PROGRESS_OLD, "10m", Duration, EXPERIMENTAL, Honoured, "Duration of periodic watch progress notifications."),
    key(WATCH_PROGRESS, "10m", Duration, EXPERIMENTAL, Honoured, "etcd 3.6 name of --experimental-watch-progress-notify-interval."),
    key("experimental-warning-apply-duration", "100ms", Duration, EXPERIMENTAL, Ignored(NO_SLOW_LOG), "Time duration after which a warning is generated if request takes more time."),
    key("warning-apply-duration", "100ms", Duration, EXPERIMENTAL, Ignored(NO_SLOW_LOG), "etcd 3.6 name of --experimental-warning-apply-duration."),
    key("experimental-warning-unary-request-duration", "300ms", Duration, EXPERIMENTAL, Ignored(NO_SLOW_LOG), "Time duration after which a warning is generated if a unary request takes more time."),
    key("warning-unary-request-duration", "300ms", Duration, EXPERIMENTAL, Ignored(NO_SLOW_LOG), "etcd 3.6 name of --experimental-warning-unary-request-duration."),
    key("experimental-txn-mode-write-with-shared-buffer", "true", Bool, EXPERIMENTAL, Ignored(NO_BBOLT), "Enable the write transaction to use a shared buffer in its readonly check operations."),
    key("experimental-bootstrap-defrag-threshold-megabytes", "0", Uint, EXPERIMENTAL, Ignored(NO_DEFRAG), "Enable the defrag during etcd server bootstrap on condition that it will free at least the provided threshold of disk space."),
    key("bootstrap-defrag-threshold-megabytes", "0", Uint, EXPERIMENTAL, Ignored(NO_DEFRAG), "etcd 3.6 name of --experimental-bootstrap-defrag-threshold-megabytes."),
    key("experimental-stop-grpc-service-on-defrag", "false", Bool, EXPERIMENTAL, Ignored(NO_DEFRAG), "Enable etcd gRPC service to stop serving client requests on defragmentation."),
    key("experimental-downgrade-check-time", "5s", Duration, EXPERIMENTAL, Ignored("cairn does not support downgrades"), "Duration of time between two downgrade status check."),
    key("downgrade-check-time", "5s", Duration, EXPERIMENTAL, Ignored("cairn does not support downgrades"), "etcd 3.6 name of --experimental-downgrade-check-time."),
    key("experimental-memory-mlock", "false", Bool, EXPERIMENTAL, Ignored(NO_BBOLT), "Enable to enforce etcd pages (in particular bbolt) to stay in RAM."),
    key("memory-mlock", "false", Bool, EXPERIMENTAL, Ignored(NO_BBOLT), "etcd 3.6 name of --experimental-memory-mlock."),
    key(SNAPSHOT_CATCHUP_OLD, "5000", Uint, EXPERIMENTAL, Honoured, "Number of entries for a slow follower to catch up after compacting the raft storage entries."),
    key(SNAPSHOT_CATCHUP, "5000", Uint, EXPERIMENTAL, Honoured, "etcd 3.6 name of --experimental-snapshot-catchup-entries."),
    key(FEATURE_GATES, "", List, EXPERIMENTAL, Honoured, "etcd 3.6 feature gates, e.g. LeaseCheckpoint=false (the gates other than LeaseCheckpoint and LeaseCheckpointPersist mirror experimental flags that have no effect in cairn)."),
    // Unsafe
    key("force-new-cluster", "false", Bool, UNSAFE, Honoured, "Force to create a new one-member cluster."),
    key("unsafe-no-fsync", "false", Bool, UNSAFE, Honoured, "Disables fsync, unsafe, will cause data loss: acknowledged writes survive a crash of cairn but not of the machine."),
    key("unsafe-storage-fault", "", Text, UNSAFE, Honoured, "cairn only, for tests: fail one storage operation with an injected I/O error, as <wal|db>-<write|fsync>:<N> (the Nth since start); the node then stops as on a real disk error. Never use it in production."),
    // etcd 0.4 flags that etcd 3.5 still accepts and ignores.
    key("cluster-active-size", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("cluster-remove-delay", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("cluster-sync-interval", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("config", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("force", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("max-result-buffer", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("max-retry-attempts", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("peer-heartbeat-interval", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("peer-election-timeout", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("retry-interval", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("snapshot", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("v", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
    key("vv", "", Legacy, HIDDEN, Ignored(LEGACY), ""),
];

const LEGACY: &str = "an etcd 0.4 flag that etcd 3.5 ignores too";

/// `--experimental-watch-progress-notify-interval` and its etcd 3.6 name.
pub(crate) const SNAPSHOT_CATCHUP_OLD: &str = "experimental-snapshot-catchup-entries";
pub(crate) const SNAPSHOT_CATCHUP: &str = "snapshot-catchup-entries";
pub(crate) const WATCH_PROGRESS_OLD: &str = "experimental-watch-progress-notify-interval";
pub(crate) const WATCH_PROGRESS: &str = "watch-progress-notify-interval";
/// `--experimental-corrupt-check-time` and its etcd 3.6 name.
pub(crate) const CORRUPT_CHECK_OLD: &str = "experimental-corrupt-check-time";
pub(crate) const CORRUPT_CHECK: &str = "corrupt-check-time";
/// etcd 3.6's `--feature-gates`.
pub(crate) const FEATURE_GATES: &str = "feature-gates";

/// The key named `name`, if cairn accepts it.
pub(crate) fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The environment variable etcd reads for `name`: `ETCD_` + upper case, `-` -> `_`.
pub(crate) fn env_var(name: &str) -> String {
    format!("ETCD_{}", name.to_uppercase().replace('-', "_"))
}

/// The visible key nearest to `unknown` (a misspelling, or `_` for `-`), if any is close.
pub(crate) fn suggest(unknown: &str) -> Option<&'static str> {
    let wanted = unknown.to_lowercase().replace('_', "-");
    super::suggest::nearest(
        &wanted,
        KEYS.iter().filter(|k| k.section != HIDDEN).map(|k| k.name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_env_names_follow_etcd() {
        let mut names: Vec<_> = KEYS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KEYS.len());
        assert_eq!(
            env_var("initial-cluster-state"),
            "ETCD_INITIAL_CLUSTER_STATE"
        );
        assert!(find("data-dir").is_some());
        assert!(find("data_dir").is_none());
    }

    #[test]
    fn suggestions_find_the_nearest_key() {
        let cases = [
            ("snapshot-cuont", Some("snapshot-count")),
            ("data_dir", Some("data-dir")),
            ("nmae", Some("name")),
            ("listen-client-url", Some("listen-client-urls")),
            ("log-output", Some("log-outputs")),
            ("heartbeat-intervall", Some("heartbeat-interval")),
            ("completely-unrelated", None),
            ("x", None),
        ];
        for (typo, want) in cases {
            assert_eq!(suggest(typo), want, "{typo}");
        }
    }

    #[test]
    fn defaults_have_the_form_of_their_kind() {
        for key in KEYS {
            let ok = match key.kind {
                Text | List | Legacy => true,
                Uint => key.default.parse::<u64>().is_ok(),
                Int => key.default.parse::<i64>().is_ok(),
                Bool => ["true", "false"].contains(&key.default),
                Duration => super::super::validate::go_duration(key.default).is_ok(),
            };
            assert!(ok, "{}: default {:?}", key.name, key.default);
        }
    }
}

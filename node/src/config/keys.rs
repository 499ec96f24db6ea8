//! The table of every configuration key cairn accepts: its etcd name (which is at once the
//! flag name, the YAML key and, upper-cased, the `ETCD_*` variable), etcd 3.5's default,
//! its kind and its `--help` section. Every layer and `config show` are driven by this one
//! table so a key cannot exist in one place and be missing in another.

/// How a key's raw string is read; decides clap's arity and how `config show` quotes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Free text, a path, a URL list or an enumeration.
    Text,
    /// A non-negative integer.
    Uint,
    /// A Go-style boolean: a bare `--flag` means true, `--flag=false` sets false.
    Bool,
}

/// One accepted key.
#[derive(Debug)]
pub(crate) struct Key {
    pub name: &'static str,
    /// etcd 3.5's default, as the raw string the layers would carry.
    pub default: &'static str,
    pub kind: Kind,
    /// The `--help` section, named like etcd's own help text.
    pub section: &'static str,
    pub help: &'static str,
}

const MEMBER: &str = "Member";
const CLUSTERING: &str = "Clustering";
const SECURITY: &str = "Security";
const LOGGING: &str = "Logging";
const MONITORING: &str = "Profiling and Monitoring";
const UNSAFE: &str = "Unsafe feature";

const fn key(
    name: &'static str,
    default: &'static str,
    kind: Kind,
    section: &'static str,
    help: &'static str,
) -> Key {
    Key {
        name,
        default,
        kind,
        section,
        help,
    }
}

/// The name of the key that points at the YAML file; it is read before the file layer
/// exists, so the file itself may not set it.
pub(crate) const CONFIG_FILE: &str = "config-file";

/// Every key, in `--help` and `config show` order.
pub(crate) static KEYS: &[Key] = &[
    key(
        "name",
        "default",
        Kind::Text,
        MEMBER,
        "Human-readable name for this member.",
    ),
    key(
        "data-dir",
        "",
        Kind::Text,
        MEMBER,
        "Path to the data directory (empty means ${name}.etcd).",
    ),
    key(
        "wal-dir",
        "",
        Kind::Text,
        MEMBER,
        "Path to a dedicated WAL directory (not supported yet).",
    ),
    key(
        "snapshot-count",
        "100000",
        Kind::Uint,
        MEMBER,
        "Number of committed transactions to trigger a snapshot to disk.",
    ),
    key(
        "heartbeat-interval",
        "100",
        Kind::Uint,
        MEMBER,
        "Time (in milliseconds) of a heartbeat interval.",
    ),
    key(
        "election-timeout",
        "1000",
        Kind::Uint,
        MEMBER,
        "Time (in milliseconds) for an election to timeout.",
    ),
    key(
        "listen-peer-urls",
        "http://localhost:2380",
        Kind::Text,
        MEMBER,
        "List of URLs to listen on for peer traffic.",
    ),
    key(
        "listen-client-urls",
        "http://localhost:2379",
        Kind::Text,
        MEMBER,
        "List of URLs to listen on for client traffic.",
    ),
    key(
        "max-request-bytes",
        "1572864",
        Kind::Uint,
        MEMBER,
        "Maximum client request size in bytes the server will accept.",
    ),
    key(
        "max-txn-ops",
        "128",
        Kind::Uint,
        MEMBER,
        "Maximum number of operations permitted in a transaction.",
    ),
    key(
        "quota-backend-bytes",
        "0",
        Kind::Uint,
        MEMBER,
        "Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).",
    ),
    key(
        CONFIG_FILE,
        "",
        Kind::Text,
        MEMBER,
        "Path to the server configuration file (YAML, etcd's key names).",
    ),
    key(
        "initial-advertise-peer-urls",
        "http://localhost:2380",
        Kind::Text,
        CLUSTERING,
        "List of this member's peer URLs to advertise to the rest of the cluster.",
    ),
    key(
        "initial-cluster",
        "default=http://localhost:2380",
        Kind::Text,
        CLUSTERING,
        "Initial cluster configuration for bootstrapping.",
    ),
    key(
        "initial-cluster-state",
        "new",
        Kind::Text,
        CLUSTERING,
        "Initial cluster state ('new' or 'existing'; 'existing' is not supported yet).",
    ),
    key(
        "initial-cluster-token",
        "etcd-cluster",
        Kind::Text,
        CLUSTERING,
        "Initial cluster token for the etcd cluster during bootstrap.",
    ),
    key(
        "advertise-client-urls",
        "http://localhost:2379",
        Kind::Text,
        CLUSTERING,
        "List of this member's client URLs to advertise to the public.",
    ),
    key(
        "discovery",
        "",
        Kind::Text,
        CLUSTERING,
        "Discovery URL used to bootstrap the cluster (not supported).",
    ),
    key(
        "auto-compaction-retention",
        "0",
        Kind::Text,
        CLUSTERING,
        "Auto compaction retention for mvcc key value store. 0 means disable auto compaction.",
    ),
    key(
        "auto-compaction-mode",
        "periodic",
        Kind::Text,
        CLUSTERING,
        "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for \
         duration based retention, defaulting to hours if no time unit is provided (e.g. \
         '5m'). 'revision' for revision number based retention.",
    ),
    key(
        "enable-v2",
        "false",
        Kind::Bool,
        CLUSTERING,
        "Accept etcd V2 client requests (only false is accepted).",
    ),
    key(
        "cert-file",
        "",
        Kind::Text,
        SECURITY,
        "Path to the client server TLS cert file (not supported yet).",
    ),
    key(
        "key-file",
        "",
        Kind::Text,
        SECURITY,
        "Path to the client server TLS key file (not supported yet).",
    ),
    key(
        "client-cert-auth",
        "false",
        Kind::Bool,
        SECURITY,
        "Enable client cert authentication (not supported yet).",
    ),
    key(
        "trusted-ca-file",
        "",
        Kind::Text,
        SECURITY,
        "Path to the client server TLS trusted CA cert file (not supported yet).",
    ),
    key(
        "auto-tls",
        "false",
        Kind::Bool,
        SECURITY,
        "Client TLS using generated certificates (not supported yet).",
    ),
    key(
        "peer-cert-file",
        "",
        Kind::Text,
        SECURITY,
        "Path to the peer server TLS cert file (not supported yet).",
    ),
    key(
        "peer-key-file",
        "",
        Kind::Text,
        SECURITY,
        "Path to the peer server TLS key file (not supported yet).",
    ),
    key(
        "peer-client-cert-auth",
        "false",
        Kind::Bool,
        SECURITY,
        "Enable peer client cert authentication (not supported yet).",
    ),
    key(
        "peer-trusted-ca-file",
        "",
        Kind::Text,
        SECURITY,
        "Path to the peer server TLS trusted CA file (not supported yet).",
    ),
    key(
        "peer-auto-tls",
        "false",
        Kind::Bool,
        SECURITY,
        "Peer TLS using generated certificates (not supported yet).",
    ),
    key(
        "logger",
        "zap",
        Kind::Text,
        LOGGING,
        "Currently only supports 'zap' for structured logging.",
    ),
    key(
        "log-level",
        "info",
        Kind::Text,
        LOGGING,
        "Configures log level. Only supports debug, info, warn, error, panic, or fatal.",
    ),
    key(
        "listen-metrics-urls",
        "",
        Kind::Text,
        MONITORING,
        "List of URLs to listen on for the /metrics and /health endpoints.",
    ),
    key(
        "force-new-cluster",
        "false",
        Kind::Bool,
        UNSAFE,
        "Force to create a new one member cluster (not supported yet).",
    ),
    key(
        "unsafe-storage-fault",
        "",
        Kind::Text,
        UNSAFE,
        "cairn only, for tests: fail one storage operation with an injected I/O error, as \
         <wal|db>-<write|fsync>:<N> (the Nth since start). The node then stops as on a real \
         disk error. Never use it in production.",
    ),
];

/// The key named `name`, if cairn accepts it.
pub(crate) fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The environment variable etcd reads for `name`: `ETCD_` + upper case, `-` -> `_`.
pub(crate) fn env_var(name: &str) -> String {
    format!("ETCD_{}", name.to_uppercase().replace('-', "_"))
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
}

//! The Prometheus registry, with etcd's metric names so etcd dashboards and alerts work
//! unchanged. Cairn's own metrics are named `cairn_<subsystem>_<name>`.
//!
//! One process-wide [`Metrics`] (see [`get`]); modules record into its fields. It must not
//! read any state itself: whoever owns a value updates the gauge, as it happens or, for
//! values etcd exports as gauge functions (db size, revisions, key count) and fjall's
//! statistics, when `/metrics` is scraped (`Core::publish_metrics`).
//!
//! Scrape cost: label values are members, gRPC methods, plugins and databases, never
//! leases, watchers or keys, so the number of series does not grow with the data.

use std::sync::OnceLock;

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// etcd's disk latency buckets: 1 ms doubling up to ~8 s.
fn disk_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
}

/// Every metric cairn exports.
pub struct Metrics {
    pub registry: Registry,
    pub wal_fsync_duration: Histogram,
    pub backend_commit_duration: Histogram,
    /// A gauge, as in etcd 3.5 (`wal/metrics.go`), though it only grows.
    pub wal_write_bytes: IntGauge,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub is_learner: IntGauge,
    pub leader_changes: IntCounter,
    pub heartbeat_send_failures: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub quota_backend_bytes: IntGauge,
    pub db_total_size: IntGauge,
    pub db_total_size_in_use: IntGauge,
    pub mvcc_put: IntCounter,
    pub mvcc_delete: IntCounter,
    pub mvcc_range: IntCounter,
    pub mvcc_txn: IntCounter,
    pub keys: IntGauge,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
    pub hash_rev_duration: Histogram,
    pub server_id: IntGaugeVec,
    pub server_version: IntGaugeVec,
    pub cluster_version: IntGaugeVec,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub grpc_handling_seconds: HistogramVec,
    pub grpc_received_bytes: IntCounter,
    pub grpc_sent_bytes: IntCounter,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    pub slow_apply: IntCounter,
    pub watchers: IntGauge,
    pub slow_watchers: IntGauge,
    pub watch_streams: IntGauge,
    pub peer_round_trip: HistogramVec,
    pub peer_sent_bytes: IntCounterVec,
    pub peer_received_bytes: IntCounterVec,
    pub peer_sent_failures: IntCounterVec,
    pub snapshot_send_success: IntCounterVec,
    pub snapshot_send_failures: IntCounterVec,
    pub snapshot_send_duration: HistogramVec,
    pub snapshot_send_inflights: IntGaugeVec,
    pub snapshot_receive_success: IntCounterVec,
    pub snapshot_receive_failures: IntCounterVec,
    pub snapshot_receive_duration: HistogramVec,
    pub snapshot_receive_inflights: IntGaugeVec,
    pub snap_save_duration: Histogram,
    // Plugins (issue 12): calls by result, latency, failures by kind, loaded versions.
    pub plugin_calls: IntCounterVec,
    pub plugin_call_seconds: HistogramVec,
    pub plugin_call_fuel: HistogramVec,
    pub plugin_traps: IntCounterVec,
    pub plugin_timeouts: IntCounterVec,
    pub plugin_loaded: IntGaugeVec,
    pub plugin_load_failures: IntCounterVec,
    // Backups (issue 12): the last success, how long and how big, failures.
    pub backup_last_success: IntGauge,
    pub backup_duration: Histogram,
    pub backup_bytes: IntGauge,
    pub backup_failures: IntCounter,
    pub backup_interval: IntGauge,
    // fjall, per database (`db`: MVCC state, `wal`: raft log), read at scrape time.
    pub storage_write_buffer: IntGaugeVec,
    pub storage_pending_flushes: IntGaugeVec,
    pub storage_active_compactions: IntGaugeVec,
    pub storage_compactions: IntCounterVec,
    pub storage_compaction_seconds: CounterVec,
    pub storage_block_cache: IntGaugeVec,
}

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ...,
        // as the Go client exports them for etcd.
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let reg = Registrar(&registry);
        Ok(Metrics {
            wal_fsync_duration: reg.histogram(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                disk_buckets(),
            )?,
            backend_commit_duration: reg.histogram(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                disk_buckets(),
            )?,
            wal_write_bytes: reg.gauge("etcd_disk_wal_write_bytes_total", "Total number of bytes written in WAL.")?,
            has_leader: reg.gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.")?,
            is_leader: reg.gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.")?,
            is_learner: reg.gauge("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.")?,
            leader_changes: reg.counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen.")?,
            heartbeat_send_failures: reg.counter("etcd_server_heartbeat_send_failures_total", "The total number of leader heartbeat send failures (likely overloaded from slow disk).")?,
            proposals_committed: reg.gauge("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.")?,
            proposals_applied: reg.gauge("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.")?,
            proposals_pending: reg.gauge("etcd_server_proposals_pending", "The current number of pending proposals to commit.")?,
            proposals_failed: reg.counter("etcd_server_proposals_failed_total", "The total number of failed proposals seen.")?,
            quota_backend_bytes: reg.gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.")?,
            db_total_size: reg.gauge("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.")?,
            db_total_size_in_use: reg.gauge("etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.")?,
            mvcc_put: reg.counter("etcd_mvcc_put_total", "Total number of puts seen by this member.")?,
            mvcc_delete: reg.counter("etcd_mvcc_delete_total", "Total number of deletes seen by this member.")?,
            mvcc_range: reg.counter("etcd_mvcc_range_total", "Total number of ranges seen by this member.")?,
            mvcc_txn: reg.counter("etcd_mvcc_txn_total", "Total number of txns seen by this member.")?,
            keys: reg.gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.")?,
            current_revision: reg.gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.")?,
            compact_revision: reg.gauge("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.")?,
            hash_rev_duration: reg.histogram(
                "etcd_mvcc_hash_rev_duration_seconds",
                "The latency distribution of storage hash by revision operation.",
                prometheus::exponential_buckets(0.01, 2.0, 15).unwrap_or_default(),
            )?,
            server_id: reg.gauge_vec("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.", &["server_id"])?,
            server_version: reg.gauge_vec("etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.", &["server_version"])?,
            cluster_version: reg.gauge_vec("etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with current cluster version", &["cluster_version"])?,
            grpc_started: reg.counter_vec("grpc_server_started_total", "Total number of RPCs started on the server.", &["grpc_type", "grpc_service", "grpc_method"])?,
            grpc_handled: reg.counter_vec("grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or failure.", &["grpc_type", "grpc_service", "grpc_method", "grpc_code"])?,
            grpc_handling_seconds: reg.histogram_vec(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                &["grpc_type", "grpc_service", "grpc_method"],
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )?,
            grpc_received_bytes: reg.counter("etcd_network_client_grpc_received_bytes_total", "The total number of bytes received from grpc clients.")?,
            grpc_sent_bytes: reg.counter("etcd_network_client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients.")?,
            health_success: reg.counter("etcd_server_health_success", "The total number of successful health checks")?,
            health_failures: reg.counter("etcd_server_health_failures", "The total number of failed health checks")?,
            slow_apply: reg.counter("etcd_server_slow_apply_total", "The total number of slow apply requests (likely overloaded from slow disk).")?,
            watchers: reg.gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.")?,
            slow_watchers: reg.gauge("etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.")?,
            watch_streams: reg.gauge("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.")?,
            peer_round_trip: reg.histogram_vec(
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
                &["To"],
                prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap_or_default(),
            )?,
            peer_sent_bytes: reg.counter_vec("etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers.", &["To"])?,
            peer_received_bytes: reg.counter_vec("etcd_network_peer_received_bytes_total", "The total number of bytes received from peers.", &["From"])?,
            peer_sent_failures: reg.counter_vec("etcd_network_peer_sent_failures_total", "The total number of send failures from peers.", &["To"])?,
            // etcd's rafthttp snapshot metrics, with its buckets (100 ms doubling).
            snapshot_send_success: reg.counter_vec("etcd_network_snapshot_send_success", "Total number of successful snapshot sends", &["To"])?,
            snapshot_send_failures: reg.counter_vec("etcd_network_snapshot_send_failures", "Total number of snapshot send failures", &["To"])?,
            snapshot_send_duration: reg.histogram_vec("etcd_network_snapshot_send_total_duration_seconds", "Total latency distributions of v3 snapshot sends", &["To"], prometheus::exponential_buckets(0.1, 2.0, 10).unwrap_or_default())?,
            snapshot_send_inflights: reg.gauge_vec("etcd_network_snapshot_send_inflights_total", "Total number of inflight snapshot sends", &["To"])?,
            snapshot_receive_success: reg.counter_vec("etcd_network_snapshot_receive_success", "Total number of successful snapshot receives", &["From"])?,
            snapshot_receive_failures: reg.counter_vec("etcd_network_snapshot_receive_failures", "Total number of snapshot receive failures", &["From"])?,
            snapshot_receive_duration: reg.histogram_vec("etcd_network_snapshot_receive_total_duration_seconds", "Total latency distributions of v3 snapshot receives", &["From"], prometheus::exponential_buckets(0.1, 2.0, 10).unwrap_or_default())?,
            snapshot_receive_inflights: reg.gauge_vec("etcd_network_snapshot_receive_inflights_total", "Total number of inflight snapshot receives", &["From"])?,
            snap_save_duration: reg.histogram("etcd_debugging_snap_save_total_duration_seconds", "The total latency distributions of save called by snapshot.", disk_buckets())?,
            plugin_calls: reg.counter_vec("cairn_plugin_calls_total", "Plugin calls by plugin, hook and result (allow, deny, rewrite, failure).", &["plugin", "hook", "result"])?,
            // An admission check should take microseconds: buckets from 1 us to ~16 ms.
            plugin_call_seconds: reg.histogram_vec("cairn_plugin_call_duration_seconds", "The latency of plugin calls, instantiation (when no instance is idle) included.", &["plugin", "hook"], prometheus::exponential_buckets(0.000_001, 2.0, 15).unwrap_or_default())?,
            plugin_call_fuel: reg.histogram_vec("cairn_plugin_call_fuel", "Fuel (wasm instructions) used by plugin calls.", &["plugin", "hook"], prometheus::exponential_buckets(100.0, 4.0, 12).unwrap_or_default())?,
            plugin_traps: reg.counter_vec("cairn_plugin_traps_total", "Plugin calls that trapped, ran out of memory or could not be instantiated.", &["plugin", "hook"])?,
            plugin_timeouts: reg.counter_vec("cairn_plugin_timeouts_total", "Plugin calls stopped for running out of fuel or passing their deadline.", &["plugin", "hook"])?,
            plugin_load_failures: reg.counter_vec("cairn_plugin_load_failures_total", "Plugin versions a reload could not load or self-check (the old version kept serving).", &["plugin"])?,
            plugin_loaded: reg.gauge_vec("cairn_plugin_loaded", "1 for each loaded plugin, labelled with its file's SHA-256 prefix as version.", &["plugin", "version"])?,
            backup_last_success: reg.gauge("cairn_backup_last_success_timestamp_seconds", "Unix time the last successful backup was written (0: none yet).")?,
            backup_duration: reg.histogram("cairn_backup_duration_seconds", "How long backups took, snapshot to renamed file, failed ones included.", prometheus::exponential_buckets(0.01, 2.0, 16).unwrap_or_default())?,
            backup_bytes: reg.gauge("cairn_backup_bytes", "Size of the last successful backup file, after the backup plugins.")?,
            backup_failures: reg.counter("cairn_backup_failures_total", "Backups that failed (snapshot, plugin or file system).")?,
            backup_interval: reg.gauge("cairn_backup_interval_seconds", "--backup-interval in seconds; 0 when backups are taken on demand only.")?,
            storage_write_buffer: reg.gauge_vec("cairn_storage_write_buffer_bytes", "Bytes held in fjall's memtables (not yet flushed to tables), per database.", &["database"])?,
            storage_pending_flushes: reg.gauge_vec("cairn_storage_pending_flushes", "Sealed memtables queued for a flush to disk, per database.", &["database"])?,
            storage_active_compactions: reg.gauge_vec("cairn_storage_active_compactions", "fjall compactions running now, per database.", &["database"])?,
            storage_compactions: reg.counter_vec("cairn_storage_compactions_total", "fjall compactions completed since start, per database.", &["database"])?,
            storage_compaction_seconds: reg.add(CounterVec::new(Opts::new("cairn_storage_compaction_seconds_total", "Time fjall spent compacting since start, per database."), &["database"])?)?,
            storage_block_cache: reg.gauge_vec("cairn_storage_block_cache_bytes", "Bytes in fjall's block cache, per database.", &["database"])?,
            registry,
        })
    }

    /// `--metrics basic` (etcd's default): stop exporting the `grpc_server_handling_seconds`
    /// histogram, which etcd exports only with `--metrics extensive`. Recording into it
    /// stays harmless, so callers need not know the level.
    pub fn omit_extensive(&self) {
        // Unregistering fails only if it is not registered, which is the state wanted.
        let _ = self
            .registry
            .unregister(Box::new(self.grpc_handling_seconds.clone()));
    }

    /// The text exposition format served at `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Registers each metric as it is created, so a name can't be declared and forgotten.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        m: M,
    ) -> Result<M, prometheus::Error> {
        self.0.register(Box::new(m.clone()))?;
        Ok(m)
    }
    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
    ) -> Result<Histogram, prometheus::Error> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        )?)
    }
    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> Result<HistogramVec, prometheus::Error> {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets),
            labels,
        )?)
    }
    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.add(IntCounter::with_opts(Opts::new(name, help))?)
    }
    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }
    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::with_opts(Opts::new(name, help))?)
    }
    fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    // Names and label sets are static, so registration can only fail on a programming error.
    METRICS.get_or_init(|| Metrics::new().expect("metric definitions are valid and unique"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_etcd_names() {
        let m = super::get();
        m.has_leader.set(1);
        let text = m.render();
        for name in [
            "etcd_server_has_leader 1",
            "etcd_disk_wal_fsync_duration_seconds_bucket",
            "etcd_server_quota_backend_bytes",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}

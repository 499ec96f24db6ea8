//! etcd's lease metrics (`server/lease/metrics.go` and `etcd_server_lease_expired_total`
//! from `etcdserver/metrics.go`), registered in the process-wide registry the first time
//! they are used; [`super::Lessor::open`] uses them so they are exported from the start.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, Opts};

/// The lease counters.
pub struct LeaseCounters {
    pub granted: IntCounter,
    pub revoked: IntCounter,
    pub renewed: IntCounter,
    /// Leases revoked because they expired (counted by whoever proposes the revoke).
    pub expired: IntCounter,
    pub ttl: Histogram,
}

impl LeaseCounters {
    fn new() -> Result<LeaseCounters, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            crate::metrics::get()
                .registry
                .register(Box::new(c.clone()))?;
            Ok(c)
        };
        let ttl = Histogram::with_opts(
            HistogramOpts::new(
                "etcd_debugging_lease_ttl_total",
                "Bucketed histogram of lease TTLs.",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 24)?),
        )?;
        crate::metrics::get()
            .registry
            .register(Box::new(ttl.clone()))?;
        Ok(LeaseCounters {
            granted: counter(
                "etcd_debugging_lease_granted_total",
                "The total number of granted leases.",
            )?,
            revoked: counter(
                "etcd_debugging_lease_revoked_total",
                "The total number of revoked leases.",
            )?,
            renewed: counter(
                "etcd_debugging_lease_renewed_total",
                "The number of renewed leases seen by the leader.",
            )?,
            expired: counter(
                "etcd_server_lease_expired_total",
                "The total number of expired leases.",
            )?,
            ttl,
        })
    }
}

/// The process-wide lease counters.
pub fn counters() -> &'static LeaseCounters {
    static COUNTERS: OnceLock<LeaseCounters> = OnceLock::new();
    // Names are static and used nowhere else, so registration can only fail on a
    // programming error.
    COUNTERS.get_or_init(|| {
        LeaseCounters::new().expect("lease metric definitions are valid and unique")
    })
}

//! Leases, as etcd 3.5's lessor (`server/lease/lessor.go`): the table of granted leases
//! (persisted, changed only by applying `LeaseGrant` / `LeaseRevoke` entries) and, on the
//! leader, each lease's expiry (in memory only, as in etcd).
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `leases` | lease id(8, BE) | granted TTL in seconds(8, BE) |
//!
//! Leases are few, so the table is held in RAM and loaded at start; the keys attached to a
//! lease are not (ask [`crate::mvcc::Mvcc::lease_keys`]). Like etcd without lease
//! checkpoints (its 3.5 default), the remaining TTL is not persisted: after a restart or on
//! promotion to leader every lease expires `extend + TTL` from then.
//!
//! Apply goes through [`Lessor::check_grant`] / [`Lessor::stage_grant`] /
//! [`Lessor::granted`] (and the revoke equivalents): the staged writes join the apply
//! batch, and the in-memory table changes only after that batch committed. Expiry is
//! decided here ([`Lessor::expired`]) but carried out by the caller proposing a revoke.
//! Must not know about raft or gRPC.

mod metrics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::storage::{Keyspace, StorageError, Store, WriteBatch};

pub use metrics::counters;

/// The largest TTL a lease may have, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How long an expired lease whose revoke was proposed is left alone before it is reported
/// as expired again (etcd's `defaultExpiredleaseRetryInterval`).
const EXPIRED_RETRY: Duration = Duration::from_secs(3);

/// Why a lease operation was refused; the API maps these to etcd's errors.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease not found")]
    NotFound,
    #[error("lease already exists")]
    Exists,
    #[error("too large lease TTL")]
    TtlTooLarge,
    /// Renewing a lease that has expired and is being revoked.
    #[error("lease expired")]
    Expired,
    /// Only the leader keeps expiries.
    #[error("not the primary lessor")]
    NotPrimary,
    #[error("lease table: {0}")]
    Storage(#[from] StorageError),
    #[error("lease table is corrupt: {0}")]
    Corrupt(String),
}

/// Settings derived from the raft timing, as etcd does.
#[derive(Clone, Copy, Debug)]
pub struct LessorConfig {
    /// The smallest TTL granted, in seconds: etcd's `ceil((3 * electionTicks / 2) * heartbeat)`.
    pub min_ttl: i64,
    /// Added to every lease's TTL on promotion to leader (etcd: the election timeout).
    pub promote_extend: Duration,
    /// The member id, whose low 16 bits prefix server-chosen lease ids (etcd's `idutil`).
    pub member_id: u64,
}

impl LessorConfig {
    /// etcd's `minTTL := time.Duration((3*cfg.ElectionTicks)/2) * heartbeat`, in whole
    /// seconds rounded up (2 s with the defaults, 100 ms / 1000 ms).
    pub fn new(heartbeat: Duration, election_timeout: Duration, member_id: u64) -> LessorConfig {
        let beat = heartbeat.as_millis().max(1);
        let ticks = election_timeout.as_millis() / beat;
        let min_ms = (3 * ticks / 2) * beat;
        LessorConfig {
            min_ttl: i64::try_from(min_ms.div_ceil(1000))
                .unwrap_or(i64::MAX)
                .max(1),
            promote_extend: election_timeout,
            member_id,
        }
    }
}

/// One lease as the lessor holds it.
#[derive(Clone, Copy, Debug)]
struct Lease {
    /// The granted TTL in seconds (after raising to the minimum).
    ttl: i64,
    /// When it expires; `None` while this member is not the leader (etcd's `forever`).
    expiry: Option<Instant>,
    /// When its revoke was last handed out by [`Lessor::expired`].
    revoking: Option<Instant>,
}

impl Lease {
    fn refresh(&mut self, now: Instant, extend: Duration) {
        self.expiry = Some(now + extend + ttl_duration(self.ttl));
        self.revoking = None;
    }

    fn expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

#[derive(Default)]
struct Table {
    leases: HashMap<i64, Lease>,
    /// Whether this member is the leader and so keeps expiries.
    primary: bool,
}

/// Every lease of the `leases` keyspace, none expiring yet.
fn load(keyspace: &Keyspace) -> Result<HashMap<i64, Lease>, LeaseError> {
    let mut leases = HashMap::new();
    for item in keyspace.iter() {
        let (key, value) = item?;
        let (id, ttl) = (decode_i64(&key)?, decode_i64(&value)?);
        leases.insert(
            id,
            Lease {
                ttl,
                expiry: None,
                revoking: None,
            },
        );
    }
    Ok(leases)
}

/// What `LeaseTimeToLive` reports about a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeToLive {
    /// Remaining seconds, truncated as etcd's `int64(Remaining().Seconds())`.
    pub remaining: i64,
    pub granted: i64,
}

/// The lease table. Apply calls come from the one apply thread; the rest from anywhere.
pub struct Lessor {
    keyspace: Keyspace,
    config: LessorConfig,
    table: Mutex<Table>,
    next_id: AtomicU64,
}

impl Lessor {
    /// Opens the `leases` keyspace and loads every lease, none expiring until [`Lessor::promote`].
    pub fn open(store: &Store, config: LessorConfig) -> Result<Lessor, LeaseError> {
        counters();
        let keyspace = store.keyspace("leases")?;
        let leases = load(&keyspace)?;
        Ok(Lessor {
            keyspace,
            config,
            table: Mutex::new(Table {
                leases,
                primary: false,
            }),
            next_id: AtomicU64::new(id_seed(config.member_id)),
        })
    }

    /// Loads the lease table again after apply replaced it wholesale (a raft snapshot from
    /// the leader was installed); on the leader every lease gets its full TTL, as after a
    /// promotion.
    pub fn reload(&self) -> Result<(), LeaseError> {
        let leases = load(&self.keyspace)?;
        let now = Instant::now();
        let mut table = self.lock();
        table.leases = leases;
        if table.primary {
            for lease in table.leases.values_mut() {
                lease.refresh(now, self.config.promote_extend);
            }
        }
        Ok(())
    }

    pub fn min_ttl(&self) -> i64 {
        self.config.min_ttl
    }

    /// A positive id no lease has now, for a grant that asked for none (etcd's `reqIDGen`).
    pub fn fresh_id(&self) -> i64 {
        loop {
            let raw = self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            let id = i64::try_from(raw & (u64::MAX >> 1)).unwrap_or(0);
            if id != 0 && !self.contains(id) {
                return id;
            }
        }
    }

    /// Whether the lease exists (is granted and not yet revoked).
    pub fn contains(&self, id: i64) -> bool {
        self.lock().leases.contains_key(&id)
    }

    /// Apply: etcd's checks in `lessor.Grant`, made before anything is written.
    pub fn check_grant(&self, id: i64, ttl: i64) -> Result<(), LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        if self.contains(id) {
            return Err(LeaseError::Exists);
        }
        Ok(())
    }

    /// Apply: adds the lease record to the apply batch.
    pub fn stage_grant(&self, batch: &mut WriteBatch, id: i64, ttl: i64) {
        batch.insert(&self.keyspace, id.to_be_bytes(), ttl.to_be_bytes());
    }

    /// Apply, after the batch committed: the lease exists from now on. On the leader it
    /// expires `ttl` from now (a local timer, not part of the replicated state).
    pub fn granted(&self, id: i64, ttl: i64) {
        let now = Instant::now();
        let mut table = self.lock();
        let mut lease = Lease {
            ttl,
            expiry: None,
            revoking: None,
        };
        if table.primary {
            lease.refresh(now, Duration::ZERO);
        }
        table.leases.insert(id, lease);
        let c = counters();
        c.granted.inc();
        // etcd observes the TTL in seconds into its histogram.
        #[allow(clippy::cast_precision_loss)]
        c.ttl.observe(ttl as f64);
    }

    /// Apply: the lease must exist to be revoked.
    pub fn check_revoke(&self, id: i64) -> Result<(), LeaseError> {
        if self.contains(id) {
            Ok(())
        } else {
            Err(LeaseError::NotFound)
        }
    }

    /// Apply: adds the removal of the lease record to the apply batch.
    pub fn stage_revoke(&self, batch: &mut WriteBatch, id: i64) {
        batch.remove(&self.keyspace, id.to_be_bytes());
    }

    /// Apply, after the batch committed: the lease is gone.
    pub fn revoked(&self, id: i64) {
        self.lock().leases.remove(&id);
        counters().revoked.inc();
    }

    /// This member became leader: every lease expires `extend + TTL` from now (etcd's
    /// `Promote`).
    pub fn promote(&self) {
        let now = Instant::now();
        let mut table = self.lock();
        table.primary = true;
        for lease in table.leases.values_mut() {
            lease.refresh(now, self.config.promote_extend);
        }
    }

    /// This member is no longer leader: no lease expires here (etcd's `Demote`).
    pub fn demote(&self) {
        let mut table = self.lock();
        table.primary = false;
        for lease in table.leases.values_mut() {
            lease.expiry = None;
            lease.revoking = None;
        }
    }

    /// Leader: a keep-alive. Returns the TTL the lease was renewed for.
    pub fn renew(&self, id: i64) -> Result<i64, LeaseError> {
        let now = Instant::now();
        let mut table = self.lock();
        if !table.primary {
            return Err(LeaseError::NotPrimary);
        }
        let lease = table.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        if lease.expired(now) {
            // Its revoke is pending or under way: the caller waits for it (as etcd).
            return Err(LeaseError::Expired);
        }
        lease.refresh(now, Duration::ZERO);
        counters().renewed.inc();
        Ok(lease.ttl)
    }

    /// Leader: remaining and granted TTL of a lease, `None` if it does not exist.
    pub fn time_to_live(&self, id: i64) -> Result<Option<TimeToLive>, LeaseError> {
        let now = Instant::now();
        let table = self.lock();
        if !table.primary {
            return Err(LeaseError::NotPrimary);
        }
        Ok(table.leases.get(&id).map(|lease| TimeToLive {
            remaining: remaining_secs(lease.expiry, now),
            granted: lease.ttl,
        }))
    }

    /// Every lease id, soonest expiry first (as etcd's `Leases`).
    pub fn leases(&self) -> Vec<i64> {
        let table = self.lock();
        let mut all: Vec<(Option<Instant>, i64)> =
            table.leases.iter().map(|(id, l)| (l.expiry, *id)).collect();
        // `None` (forever) sorts after any instant.
        all.sort_by_key(|(expiry, id)| (expiry.is_none(), *expiry, *id));
        all.into_iter().map(|(_, id)| id).collect()
    }

    /// Leader: up to `limit` expired leases to revoke, oldest expiry first. A lease handed
    /// out is not handed out again for a few seconds, while its revoke goes through raft.
    pub fn expired(&self, limit: usize) -> Vec<i64> {
        let now = Instant::now();
        let mut table = self.lock();
        if !table.primary {
            return Vec::new();
        }
        let mut due: Vec<(Instant, i64)> = table
            .leases
            .iter()
            .filter(|(_, l)| l.expired(now) && l.revoking.is_none_or(|t| now >= t + EXPIRED_RETRY))
            .filter_map(|(id, l)| l.expiry.map(|e| (e, *id)))
            .collect();
        due.sort_unstable();
        due.truncate(limit);
        for (_, id) in &due {
            if let Some(lease) = table.leases.get_mut(id) {
                lease.revoking = Some(now);
            }
        }
        due.into_iter().map(|(_, id)| id).collect()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent even if a holder panicked: every update is one insert,
        // remove or field store.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// etcd's `int64(l.Remaining().Seconds())`: truncated toward zero, negative once expired.
fn remaining_secs(expiry: Option<Instant>, now: Instant) -> i64 {
    let Some(expiry) = expiry else {
        return i64::MAX;
    };
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    if expiry >= now {
        secs(expiry - now)
    } else {
        -secs(now - expiry)
    }
}

/// etcd's `idutil.Generator` start: the member id's low 16 bits, then the low 40 bits of
/// the Unix time in milliseconds shifted left by 8, so ids differ across members and
/// restarts.
fn id_seed(member_id: u64) -> u64 {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    ((member_id & 0xFFFF) << 48) | ((millis & ((1 << 40) - 1)) << 8)
}

fn decode_i64(bytes: &[u8]) -> Result<i64, LeaseError> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| LeaseError::Corrupt(format!("{} bytes where 8 were expected", bytes.len())))?;
    Ok(i64::from_be_bytes(raw))
}

#[cfg(test)]
mod tests;

//! Leases, as etcd 3.5's lessor (`server/lease/lessor.go`): the table of granted leases
//! (persisted, changed only by applying `LeaseGrant` / `LeaseRevoke` entries) and, on the
//! leader, each lease's expiry (in memory only, as in etcd).
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `leases` | lease id(8, BE) | granted TTL in seconds(8, BE), then the checkpointed remaining TTL(8, BE) if persisted |
//!
//! Leases are few, so the table is held in RAM and loaded at start; the keys attached to a
//! lease are not (ask [`crate::mvcc::Mvcc::lease_keys`]).
//!
//! Checkpoints (etcd's `--experimental-enable-lease-checkpoint`): the leader schedules each
//! lease whose remaining TTL exceeds the checkpoint interval for a checkpoint one interval
//! later ([`Lessor::due_checkpoints`]); the caller proposes the remaining TTLs through raft
//! and apply records them on every member ([`Lessor::checkpointed`], and in the lease table
//! with `--experimental-enable-lease-checkpoint-persist`). A member promoted to leader then
//! gives a lease `extend +` its checkpointed remaining TTL instead of its full TTL. A
//! keep-alive clears the checkpoint first ([`Lessor::needs_clear`]). Without checkpoints
//! (etcd's default) every lease expires `extend + TTL` after a promotion.
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
    /// Lease checkpoints; `None` when disabled.
    pub checkpoints: Option<CheckpointConfig>,
}

/// etcd's lease checkpoint settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// How long after a promotion, grant or checkpoint a lease is checkpointed (again).
    pub interval: Duration,
    /// Also write the checkpointed remaining TTL to the lease table, so it survives a
    /// restart of every member.
    pub persist: bool,
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
            checkpoints: None,
        }
    }
}

/// One lease as the lessor holds it.
#[derive(Clone, Copy, Debug)]
struct Lease {
    /// The granted TTL in seconds (after raising to the minimum).
    ttl: i64,
    /// The remaining TTL in seconds the last checkpoint recorded, 0 if none or cleared
    /// (etcd's `remainingTTL`).
    remaining: i64,
    /// When it expires; `None` while this member is not the leader (etcd's `forever`).
    expiry: Option<Instant>,
    /// When its revoke was last handed out by [`Lessor::expired`].
    revoking: Option<Instant>,
    /// Leader: when its remaining TTL is due to be checkpointed.
    checkpoint_at: Option<Instant>,
}

impl Lease {
    fn new(ttl: i64, remaining: i64) -> Lease {
        Lease {
            ttl,
            remaining,
            expiry: None,
            revoking: None,
            checkpoint_at: None,
        }
    }

    /// etcd's `getRemainingTTL`: the checkpointed remaining TTL if there is one.
    fn remaining_or_ttl(&self) -> i64 {
        if self.remaining > 0 {
            self.remaining
        } else {
            self.ttl
        }
    }

    fn refresh(&mut self, now: Instant, extend: Duration, secs: i64) {
        self.expiry = Some(now + extend + ttl_duration(secs));
        self.revoking = None;
    }

    /// etcd's `scheduleCheckpointIfNeeded`: only a lease that outlives the interval is
    /// worth a checkpoint.
    fn schedule_checkpoint(&mut self, now: Instant, checkpoints: Option<CheckpointConfig>) {
        self.checkpoint_at = checkpoints
            .filter(|c| self.remaining_or_ttl() > secs_i64(c.interval))
            .map(|c| now + c.interval);
    }

    fn expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
}

fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
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
        let (ttl, remaining) = decode_record(&value)?;
        leases.insert(decode_i64(&key)?, Lease::new(ttl, remaining));
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
    /// the leader was installed); on the leader every lease is renewed as after a promotion
    /// (its checkpointed remaining TTL, else its full TTL).
    pub fn reload(&self) -> Result<(), LeaseError> {
        let leases = load(&self.keyspace)?;
        let primary = {
            let mut table = self.lock();
            table.leases = leases;
            table.primary
        };
        if primary {
            self.promote();
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
        let mut lease = Lease::new(ttl, 0);
        if table.primary {
            lease.refresh(now, Duration::ZERO, ttl);
            lease.schedule_checkpoint(now, self.config.checkpoints);
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

    /// Apply: adds the checkpointed remaining TTLs (`(lease, seconds)`, 0 clears) of the
    /// leases that exist to the apply batch, if checkpoints are persisted.
    pub fn stage_checkpoints(&self, batch: &mut WriteBatch, checkpoints: &[(i64, i64)]) {
        if !self.config.checkpoints.is_some_and(|c| c.persist) {
            return;
        }
        let table = self.lock();
        for (id, remaining) in checkpoints {
            if let Some(lease) = table.leases.get(id) {
                let mut record = lease.ttl.to_be_bytes().to_vec();
                record.extend_from_slice(&remaining.to_be_bytes());
                batch.insert(&self.keyspace, id.to_be_bytes(), record);
            }
        }
    }

    /// Apply, after the batch committed: etcd's `Checkpoint`. Unknown leases (revoked
    /// meanwhile) are skipped; the leader schedules the next checkpoint.
    pub fn checkpointed(&self, checkpoints: &[(i64, i64)]) {
        let now = Instant::now();
        let mut table = self.lock();
        let primary = table.primary;
        for (id, remaining) in checkpoints {
            if let Some(lease) = table.leases.get_mut(id) {
                lease.remaining = *remaining;
                if primary {
                    lease.schedule_checkpoint(now, self.config.checkpoints);
                }
            }
        }
    }

    /// This member became leader: every lease expires `extend +` its checkpointed remaining
    /// TTL, or its full TTL, from now (etcd's `Promote`).
    pub fn promote(&self) {
        let now = Instant::now();
        let mut table = self.lock();
        table.primary = true;
        for lease in table.leases.values_mut() {
            lease.refresh(now, self.config.promote_extend, lease.remaining_or_ttl());
            lease.schedule_checkpoint(now, self.config.checkpoints);
        }
    }

    /// Leader: up to `limit` leases whose checkpoint is due, with their remaining TTL in
    /// whole seconds rounded up (etcd's `findDueScheduledCheckpoints`). A lease that still
    /// has its full TTL (renewed since) needs none and is scheduled again; the others are
    /// scheduled again when their checkpoint applies.
    pub fn due_checkpoints(&self, limit: usize) -> Vec<(i64, i64)> {
        let Some(config) = self.config.checkpoints else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut table = self.lock();
        if !table.primary {
            return Vec::new();
        }
        let mut due: Vec<(Instant, i64, i64)> = Vec::new();
        for (id, lease) in &mut table.leases {
            let (Some(at), Some(expiry)) = (lease.checkpoint_at, lease.expiry) else {
                continue;
            };
            if at > now || expiry <= now {
                continue;
            }
            let left = expiry - now;
            let remaining = secs_i64(left) + i64::from(left.subsec_nanos() > 0);
            if remaining >= lease.ttl {
                lease.checkpoint_at = Some(now + config.interval);
            } else {
                due.push((at, *id, remaining));
            }
        }
        due.sort_unstable();
        due.truncate(limit);
        // Scheduled again now too, in case the proposal is lost.
        for (_, id, _) in &due {
            if let Some(lease) = table.leases.get_mut(id) {
                lease.checkpoint_at = Some(now + config.interval);
            }
        }
        due.into_iter().map(|(_, id, left)| (id, left)).collect()
    }

    /// Leader: whether renewing this lease must first clear its checkpointed remaining TTL
    /// through raft, so that a later leader does not use it (etcd's `clearRemainingTTL`).
    pub fn needs_clear(&self, id: i64) -> bool {
        self.config.checkpoints.is_some()
            && self.lock().leases.get(&id).is_some_and(|l| l.remaining > 0)
    }

    /// This member is no longer leader: no lease expires here (etcd's `Demote`).
    pub fn demote(&self) {
        let mut table = self.lock();
        table.primary = false;
        for lease in table.leases.values_mut() {
            lease.expiry = None;
            lease.revoking = None;
            lease.checkpoint_at = None;
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
        lease.refresh(now, Duration::ZERO, lease.ttl);
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

/// A lease record: the granted TTL, then the persisted remaining TTL if any.
fn decode_record(bytes: &[u8]) -> Result<(i64, i64), LeaseError> {
    match bytes.len() {
        8 => Ok((decode_i64(bytes)?, 0)),
        16 => Ok((decode_i64(&bytes[..8])?, decode_i64(&bytes[8..])?)),
        n => Err(LeaseError::Corrupt(format!(
            "a lease record of {n} bytes (8 or 16 expected)"
        ))),
    }
}

fn decode_i64(bytes: &[u8]) -> Result<i64, LeaseError> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| LeaseError::Corrupt(format!("{} bytes where 8 were expected", bytes.len())))?;
    Ok(i64::from_be_bytes(raw))
}

#[cfg(test)]
mod tests;

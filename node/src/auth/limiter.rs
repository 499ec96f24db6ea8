//! A token bucket per client address for failed authentications (cairn's own: etcd has
//! none). Each wrong password takes a token; while an address has none left its password
//! checks are refused without running bcrypt, as "authentication failed", so guessing is
//! held to [`REFILL_PER_SEC`] tries a second after a burst of [`BURST`]. Addresses that
//! never fail cost nothing; buckets that have refilled are forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Failures an address may make in a row before it is slowed down.
pub const BURST: f64 = 10.0;
/// Failures an address earns back per second.
pub const REFILL_PER_SEC: f64 = 1.0;
/// Past this many tracked addresses, full buckets are dropped before a new one is added.
const MAX_TRACKED: usize = 10_000;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> Bucket {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * REFILL_PER_SEC;
        Bucket {
            tokens: (self.tokens + earned).min(BURST),
            at: now,
        }
    }
}

/// Failed-authentication buckets by client address.
#[derive(Default)]
pub struct FailureLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailureLimiter {
    /// Whether `who` may try a password now.
    pub fn may_try(&self, who: IpAddr, now: Instant) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets
            .get(&who)
            .is_none_or(|b| b.refilled(now).tokens >= 1.0)
    }

    /// Records a failed attempt by `who`.
    pub fn failed(&self, who: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&who) {
            buckets.retain(|_, b| b.refilled(now).tokens < BURST);
        }
        let bucket = buckets.entry(who).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let mut next = bucket.refilled(now);
        next.tokens = (next.tokens - 1.0).max(0.0);
        *bucket = next;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn failures_beyond_the_burst_wait_for_the_refill() {
        let limiter = FailureLimiter::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert!(limiter.may_try(a, t0));
            limiter.failed(a, t0);
        }
        assert!(!limiter.may_try(a, t0), "the burst is spent");
        assert!(limiter.may_try(b, t0), "another address is not affected");
        assert!(!limiter.may_try(a, t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_secs_f64(1.0 / REFILL_PER_SEC);
        assert!(limiter.may_try(a, later), "one try earned back");
        limiter.failed(a, later);
        assert!(!limiter.may_try(a, later));
        let rested = t0 + Duration::from_secs(3600);
        for _ in 0..BURST as usize {
            assert!(limiter.may_try(a, rested));
            limiter.failed(a, rested);
        }
        assert!(!limiter.may_try(a, rested), "refill stops at the burst");
    }
}

//! The fault-injection seam, for tests only in effect: with a [`FaultPlan`] armed (the
//! `--unsafe-storage-fault` setting), the Nth write or fsync of one database fails with an
//! injected I/O error instead of reaching the engine. The error is an engine error like any
//! other: it is wrapped, latched and reported by the very code that handles a real one, so
//! a test sees what a failing disk would cause.
//!
//! The fault fires once. A node that retried past it would find the next fsync
//! "succeeding", as after a real fsync failure on Linux (the kernel drops the failed pages
//! and clears the error): only the failure latch in [`super::Db`] keeps such a node from
//! acknowledging writes that are not on disk.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which database a fault is injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultDatabase {
    /// `<data-dir>/wal`: the raft log.
    Wal,
    /// `<data-dir>/db`: MVCC, leases, identity.
    State,
}

/// Which operation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    /// A batch commit or single-key write.
    Write,
    /// A durability call ([`super::Store::sync`] / [`super::Store::sync_wal`]).
    Fsync,
}

/// An armed fault: the `nth` `op` on `database` after the store is opened fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    pub database: FaultDatabase,
    pub op: FaultOp,
    /// 1-based.
    pub nth: u64,
}

/// Why a fault plan could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("expected <wal|db>-<write|fsync>:<N> with N >= 1, e.g. wal-fsync:200")]
pub struct BadFaultPlan;

impl FromStr for FaultPlan {
    type Err = BadFaultPlan;

    /// `wal-write:N`, `wal-fsync:N`, `db-write:N` or `db-fsync:N`.
    fn from_str(s: &str) -> Result<FaultPlan, BadFaultPlan> {
        let (what, nth) = s.split_once(':').ok_or(BadFaultPlan)?;
        let nth: u64 = nth.trim().parse().map_err(|_| BadFaultPlan)?;
        let (database, op) = match what.trim() {
            "wal-write" => (FaultDatabase::Wal, FaultOp::Write),
            "wal-fsync" => (FaultDatabase::Wal, FaultOp::Fsync),
            "db-write" => (FaultDatabase::State, FaultOp::Write),
            "db-fsync" => (FaultDatabase::State, FaultOp::Fsync),
            _ => return Err(BadFaultPlan),
        };
        if nth == 0 {
            return Err(BadFaultPlan);
        }
        Ok(FaultPlan { database, op, nth })
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let db = match self.database {
            FaultDatabase::Wal => "wal",
            FaultDatabase::State => "db",
        };
        let op = match self.op {
            FaultOp::Write => "write",
            FaultOp::Fsync => "fsync",
        };
        write!(f, "{db}-{op}:{}", self.nth)
    }
}

/// A plan armed on one database, counting its operations.
pub(super) struct Armed {
    plan: FaultPlan,
    seen: AtomicU64,
}

impl Armed {
    pub(super) fn new(plan: FaultPlan) -> Armed {
        Armed {
            plan,
            seen: AtomicU64::new(0),
        }
    }

    /// Counts one `op`; fails it if it is the planned one.
    pub(super) fn check(&self, op: FaultOp) -> Result<(), fjall::Error> {
        if op != self.plan.op || self.seen.fetch_add(1, Ordering::Relaxed) + 1 != self.plan.nth {
            return Ok(());
        }
        tracing::warn!(fault = %self.plan, "injecting a storage fault");
        Err(fjall::Error::Io(std::io::Error::other(format!(
            "injected fault {} (--unsafe-storage-fault)",
            self.plan
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_print() {
        for text in ["wal-write:1", "wal-fsync:200", "db-write:3", "db-fsync:9"] {
            let plan: FaultPlan = text.parse().expect(text);
            assert_eq!(plan.to_string(), text);
        }
        for bad in [
            "",
            "wal-fsync",
            "wal-fsync:0",
            "wal-fsync:x",
            "disk-write:1",
        ] {
            assert!(bad.parse::<FaultPlan>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_nth_operation_of_its_kind_fails() {
        let armed = Armed::new("wal-fsync:3".parse().expect("plan"));
        let results: Vec<bool> = [
            FaultOp::Fsync,
            FaultOp::Write,
            FaultOp::Fsync,
            FaultOp::Write,
            FaultOp::Fsync,
            FaultOp::Fsync,
        ]
        .into_iter()
        .map(|op| armed.check(op).is_ok())
        .collect();
        assert_eq!(results, [true, true, true, true, false, true]);
    }
}

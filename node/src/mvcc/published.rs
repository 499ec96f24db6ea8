//! The revisions and live key count of the committed state, published by apply so that a
//! reader can take a storage snapshot and know them without reading them from `mvcc_meta`.
//! That keyspace holds a version of them per write in its memtable, and looking them up was
//! 2.5 % of the server's work for one-key ranges at 64 clients; counting the live keys
//! instead would walk them all.
//!
//! A sequence lock: the apply thread, the one writer of revisions, makes the sequence odd
//! before a commit that changes them and even again after storing the new values. A
//! reader that sees the same even sequence before and after taking its snapshot took it
//! between two such commits, so the published values are the snapshot's; otherwise it
//! reads them from the snapshot itself.

use std::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};

use super::Revisions;

pub(super) struct Published {
    seq: AtomicU64,
    current: AtomicI64,
    compact: AtomicI64,
    live_keys: AtomicI64,
}

impl Published {
    pub fn new(revs: Revisions) -> Published {
        Published {
            seq: AtomicU64::new(0),
            current: AtomicI64::new(revs.current),
            compact: AtomicI64::new(revs.compact),
            live_keys: AtomicI64::new(revs.live_keys),
        }
    }

    /// The last published revisions: exact for the apply thread, which publishes them;
    /// any other thread may see them a moment behind or ahead of what it can read.
    pub fn get(&self) -> Revisions {
        Revisions {
            current: self.current.load(Ordering::Acquire),
            compact: self.compact.load(Ordering::Acquire),
            live_keys: self.live_keys.load(Ordering::Acquire),
        }
    }

    /// Runs `commit`, which makes state visible and returns the revisions it is at, and
    /// publishes them. Only the apply thread calls this.
    pub fn change<T, E>(&self, commit: impl FnOnce() -> Result<(T, Revisions), E>) -> Result<T, E> {
        self.seq.fetch_add(1, Ordering::Relaxed);
        // The odd sequence is visible before anything the commit writes.
        fence(Ordering::Release);
        let result = commit().map(|(value, to)| {
            self.current.store(to.current, Ordering::Relaxed);
            self.compact.store(to.compact, Ordering::Relaxed);
            self.live_keys.store(to.live_keys, Ordering::Relaxed);
            value
        });
        self.seq.fetch_add(1, Ordering::Release);
        result
    }

    /// Takes a snapshot with `take`; returns it with its revisions if no change was under
    /// way meanwhile (`None`: read them from the snapshot).
    pub fn read<S>(&self, take: impl FnOnce() -> S) -> (S, Option<Revisions>) {
        let before = self.seq.load(Ordering::Acquire);
        let snap = take();
        let revs = self.get();
        // Orders the snapshot's and the values' loads before the second look.
        fence(Ordering::Acquire);
        let stable = before.is_multiple_of(2) && self.seq.load(Ordering::Relaxed) == before;
        (snap, stable.then_some(revs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Revisions with ten live keys per revision.
    fn revs(current: i64, compact: i64) -> Revisions {
        Revisions {
            current,
            compact,
            live_keys: current * 10,
        }
    }

    fn pair(r: Option<Revisions>) -> Option<(i64, i64)> {
        r.map(|r| (r.current, r.compact))
    }

    #[test]
    fn a_snapshot_taken_between_changes_gets_the_published_revisions() {
        let p = Published::new(revs(5, 2));
        p.change(|| Ok::<_, ()>(((), revs(6, 2)))).expect("commit");
        let ((), got) = p.read(|| ());
        assert_eq!(pair(got), Some((6, 2)));
        assert_eq!(got.map(|r| r.live_keys), Some(60));
    }

    #[test]
    fn a_snapshot_taken_while_a_change_is_under_way_gets_none() {
        let p = Published::new(revs(5, 2));
        // The commit lands while the reader takes its snapshot.
        let ((), got) = p.read(|| p.change(|| Ok::<_, ()>(((), revs(6, 2)))).expect("commit"));
        assert_eq!(pair(got), None);
        // Inside a change, before its commit returns.
        let got = p
            .change(|| Ok::<_, ()>((p.read(|| ()).1, revs(7, 3))))
            .expect("commit");
        assert_eq!(pair(got), None);
        assert_eq!((p.get().current, p.get().compact), (7, 3));
    }

    #[test]
    fn a_failed_commit_publishes_nothing() {
        let p = Published::new(revs(5, 2));
        assert_eq!(p.change(|| Err::<((), Revisions), _>("disk")), Err("disk"));
        assert_eq!(pair(p.read(|| ()).1), Some((5, 2)));
    }
}

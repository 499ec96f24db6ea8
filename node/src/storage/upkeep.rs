//! Keeps fjall's own housekeeping from stalling writes, on one background thread.
//!
//! fjall does two slow things while holding locks that every write needs, both measured as
//! apply standing still for 20-55 ms several times a second under puts:
//! - When a memtable is flushed or the journal rotates, it fsyncs the journal holding the
//!   journal lock every commit takes. Nothing on cairn's write path fsyncs the state
//!   database's journal (the raft log makes writes durable), so up to 64 MiB of it sat in
//!   the page cache for that fsync to write. Every [`INTERVAL`] this thread starts the disk
//!   writing it (`sync_file_range`, not waiting), so that fsync finds little left to do.
//! - After a memtable rotation it drops the versions no reader needs under each keyspace's
//!   version lock, which inserts take too; dropping the last version that holds a flushed
//!   memtable frees the memtable there: a 16 MiB skiplist, node by node. This thread holds
//!   every keyspace's active memtable as it finds it and lets go once it is the only holder,
//!   so the freeing happens here, outside fjall's locks.
//!
//! Both only move work: nothing here is needed for correctness or durability, and errors
//! are ignored (fjall's own fsyncs stay the ones that count).

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use fjall::AbstractTree;

use super::{Db, StorageError};

/// At 20 k puts/s, about half a MiB of the state journal is written per interval.
const INTERVAL: Duration = Duration::from_millis(50);

/// Adds a keyspace of `db` to those the upkeep thread looks after (once, however often it
/// is opened).
pub(super) fn register(db: &Db, keyspace: &fjall::Keyspace) {
    let mut keyspaces = db.keyspaces.lock().unwrap_or_else(PoisonError::into_inner);
    if !keyspaces.iter().any(|k| k.name() == keyspace.name()) {
        keyspaces.push(keyspace.clone());
    }
}

/// Starts the thread; it ends once both databases are dropped. `write_back`: start writing
/// the state journal early (not under `--unsafe-no-fsync`, which never fsyncs it anyway).
pub(super) fn spawn(state: &Arc<Db>, wal: &Arc<Db>, write_back: bool) -> Result<(), StorageError> {
    let dbs = [Arc::downgrade(state), Arc::downgrade(wal)];
    let journal_dir = write_back.then(|| state.path.clone());
    std::thread::Builder::new()
        .name("cairn-upkeep".into())
        .spawn(move || run(&dbs, journal_dir.as_deref()))
        .map(drop)
        .map_err(StorageError::io(Path::new("storage upkeep thread")))
}

fn run(dbs: &[Weak<Db>], journal_dir: Option<&Path>) {
    let mut journal: Option<(PathBuf, File)> = None;
    let mut memtables = Vec::new();
    while dbs.iter().any(|db| db.strong_count() > 0) {
        std::thread::sleep(INTERVAL);
        if let Some(dir) = journal_dir {
            write_back(dir, &mut journal);
        }
        // Each database only for the moment of the look, so a dropped store closes at once.
        for db in dbs.iter().filter_map(Weak::upgrade) {
            let keyspaces = db.keyspaces.lock().unwrap_or_else(PoisonError::into_inner);
            for ks in keyspaces.iter() {
                let active = ks.tree.active_memtable();
                if !memtables.iter().any(|m| Arc::ptr_eq(m, &active)) {
                    memtables.push(active);
                }
            }
        }
        // Held here only: flushed, and out of every version and reader. Freed here.
        memtables.retain(|m| Arc::strong_count(m) > 1);
    }
}

/// Starts writing the newest journal in `dir` to disk (fjall names them `<n>.jnl`).
fn write_back(dir: &Path, open: &mut Option<(PathBuf, File)>) {
    let Some(newest) = newest_journal(dir) else {
        return;
    };
    if open.as_ref().is_none_or(|(path, _)| *path != newest) {
        *open = File::open(&newest).ok().map(|file| (newest, file));
    }
    if let Some((_, file)) = open {
        // SAFETY: `file` is an open descriptor; the call takes plain integers.
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
}

fn newest_journal(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n: u64 = e.file_name().to_str()?.strip_suffix(".jnl")?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_journal_is_the_highest_number_not_the_last_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["9.jnl", "10.jnl", "11.jnl.tmp", "keyspaces", "version"] {
            fs::write(dir.path().join(name), b"").expect("write");
        }
        assert_eq!(newest_journal(dir.path()), Some(dir.path().join("10.jnl")));
        assert_eq!(newest_journal(&dir.path().join("missing")), None);
    }
}

//! fdatasync of a database's journal without holding the engine's journal lock.
//!
//! fjall's own `persist(SyncData)` keeps the journal's writer lock for the whole fdatasync,
//! so every commit to that database (a raft append, an apply) waits for the fsync in flight.
//! Instead [`Journal::sync`] has fjall hand its buffer to the OS (`persist(Buffer)`, a
//! `write(2)` under the lock, microseconds) and then fdatasyncs the journal file through a
//! descriptor of its own, with the lock free: commits made meanwhile go on into the page
//! cache, and the next sync covers them.
//!
//! Why this is as durable as fjall's call: fdatasync flushes the file (the inode), whatever
//! descriptor it is called on, and the file is the newest `<id>.jnl` of the database's
//! directory. If fjall rotates to a new journal between the buffer flush and the fdatasync,
//! its rotation has already fsynced (`SyncAll`) the journal that received the flushed bytes
//! before it creates the new one, so syncing the newest file is still enough.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// The journal file name suffix fjall uses: `<id>.jnl` in the database's directory.
const SUFFIX: &str = ".jnl";

/// The newest journal of one database and an open descriptor to it.
pub(super) struct Journal {
    dir: PathBuf,
    active: Mutex<Option<(u64, Arc<File>)>>,
}

impl Journal {
    pub(super) fn new(dir: &Path) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            active: Mutex::new(None),
        }
    }

    /// fdatasyncs the newest journal: everything the engine had flushed to the OS before
    /// the call is durable when it returns `Ok`.
    pub(super) fn sync_data(&self) -> io::Result<()> {
        self.newest()?.sync_data()
    }

    /// The newest journal's descriptor, reopened only when fjall has rotated. The directory
    /// is listed every time (a few entries): fjall may rotate twice and delete the journal
    /// in between, so no single file's existence tells whether `id` is still the newest.
    fn newest(&self) -> io::Result<Arc<File>> {
        let id = newest_id(&self.dir)?;
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        match active.as_ref() {
            Some((open, file)) if *open == id => Ok(file.clone()),
            _ => {
                let file = Arc::new(File::open(self.path(id))?);
                *active = Some((id, file.clone()));
                Ok(file)
            }
        }
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }
}

/// The highest journal id in `dir`.
fn newest_id(dir: &Path) -> io::Result<u64> {
    let mut newest = None;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        newest = newest.max(id);
    }
    newest.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no journal (*{SUFFIX}) in {}", dir.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_journal_and_follows_rotations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path());
        assert!(journal.sync_data().is_err(), "no journal yet");
        for name in ["0.jnl", "keyspaces", "10.jnl.tmp"] {
            fs::write(dir.path().join(name), b"x").expect("write");
        }
        journal.sync_data().expect("sync 0.jnl");
        assert_eq!(
            journal.active.lock().expect("lock").as_ref().map(|a| a.0),
            Some(0)
        );
        fs::write(dir.path().join("1.jnl"), b"x").expect("write");
        journal.sync_data().expect("sync 1.jnl");
        assert_eq!(
            journal.active.lock().expect("lock").as_ref().map(|a| a.0),
            Some(1)
        );
    }
}

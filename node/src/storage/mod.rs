//! The data directory and the fjall database inside it.
//!
//! Owns: creating and validating `--data-dir`, the exclusive lock that keeps a second
//! process out, the format marker, opening fjall, and the durability calls. Every fjall
//! keyspace is opened through [`Store::keyspace`]; the module that owns a keyspace documents
//! its key encoding next to where it opens it (see ARCHITECTURE.md for the list).
//! It must not know what is stored: no raft or MVCC types here.
//!
//! Layout of a data dir:
//! ```text
//! <data-dir>/CAIRN_FORMAT   "cairn-data-v2": written last on first start, checked on every start
//! <data-dir>/cairn.lock     held with an exclusive lock while a node runs
//! <data-dir>/db/            the fjall database of the state: MVCC, leases, meta
//! <data-dir>/wal/           the fjall database of the raft log and raft meta
//! ```
//!
//! Two databases, because fjall holds a database's journal lock for the whole of an
//! fdatasync: with one journal, every MVCC apply would wait for the log's fsync in flight.
//! The WAL database is made durable by [`Store::sync_wal`] (the raft log's group commit);
//! the state database only by [`Store::sync`] (snapshots, identity, restore), and may lag
//! behind the log after a crash, which replaying the log repairs.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub use fjall::{Keyspace, OwnedWriteBatch as WriteBatch, PersistMode, Readable, Snapshot};

/// The content of the format marker. Bump it (and add a migration) when an on-disk
/// encoding changes incompatibly.
const FORMAT: &str = "cairn-data-v2";
const FORMAT_FILE: &str = "CAIRN_FORMAT";
const LOCK_FILE: &str = "cairn.lock";
const DB_DIR: &str = "db";
const WAL_DIR: &str = "wal";
/// Block cache of each database. Reads of recent revisions hit the memtables; the cache
/// serves the rest, and etcd (bbolt) relies on the page cache the same way.
const CACHE_BYTES: u64 = 16 << 20;
/// A keyspace's memtable is sealed and flushed at this size (fjall's default, 64 MiB per
/// keyspace, would let a handful of busy keyspaces hold hundreds of MiB). Measured: 8 MiB
/// costs ~10% of put throughput and doubles put p99 (more flushes), 16 MiB is close to 64.
const MEMTABLE_BYTES: u64 = 16 << 20;
/// All memtables of the state database together.
const DB_WRITE_BUFFER_BYTES: u64 = 64 << 20;
/// All memtables of the WAL database together: log entries are read back once, by apply,
/// right after they are written, so a small buffer serves them.
const WAL_WRITE_BUFFER_BYTES: u64 = 32 << 20;
/// How often the data dir's size is measured for `Status`, `/metrics` and the quota check.
const SIZE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another process (is another cairn running on it?)")]
    Locked(PathBuf),
    #[error("data dir {path} is not a cairn data directory ({found}); refusing to use it")]
    Foreign { path: PathBuf, found: String },
    #[error("data dir {path} has format {found:?}, this cairn reads {FORMAT:?}")]
    WrongFormat { path: PathBuf, found: String },
    #[error("storage engine error in {path}: {source}")]
    Engine { path: PathBuf, source: fjall::Error },
}

impl StorageError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
        move |source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An opened, locked data directory.
pub struct Store {
    db: fjall::Database,
    wal: fjall::Database,
    dir: PathBuf,
    /// Bytes allocated on disk by the database, sampled in the background: asking fjall
    /// would wait for its journal lock, which an fsync in progress holds.
    size: Arc<AtomicU64>,
    /// `SyncData`, or `Buffer` under `--unsafe-no-fsync`.
    durability: PersistMode,
    // Held for the life of the process; the OS releases it on exit, even on kill -9.
    _lock: File,
}

impl Store {
    /// Opens (creating on first start) the data directory at `dir`.
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        fs::create_dir_all(dir).map_err(StorageError::io(dir))?;
        let lock = lock(dir)?;
        let fresh = check_format(dir)?;
        let db = open_db(&dir.join(DB_DIR), DB_WRITE_BUFFER_BYTES)?;
        let wal = open_db(&dir.join(WAL_DIR), WAL_WRITE_BUFFER_BYTES)?;
        if fresh {
            write_format(dir)?;
        }
        let paths = vec![dir.join(DB_DIR), dir.join(WAL_DIR)];
        let size = Arc::new(AtomicU64::new(allocated(&paths)));
        sample_size(paths, Arc::downgrade(&size))?;
        Ok(Store {
            db,
            wal,
            dir: dir.to_path_buf(),
            size,
            durability: PersistMode::SyncData,
            _lock: lock,
        })
    }

    /// `--unsafe-no-fsync`: [`Store::sync`] and [`Store::sync_wal`] hand their writes to the
    /// OS without fsync, so they survive a crash of this process but not of the machine.
    pub fn unsafe_no_fsync(mut self, skip_fsync: bool) -> Store {
        if skip_fsync {
            self.durability = PersistMode::Buffer;
        }
        self
    }

    /// Opens or creates the named keyspace of the state database.
    pub fn keyspace(&self, name: &str) -> Result<Keyspace, StorageError> {
        self.db
            .keyspace(name, keyspace_options)
            .map_err(|e| self.engine(e))
    }

    /// Opens or creates the named keyspace of the WAL database.
    pub fn wal_keyspace(&self, name: &str) -> Result<Keyspace, StorageError> {
        self.wal
            .keyspace(name, keyspace_options)
            .map_err(|e| self.wal_engine(e))
    }

    /// A new atomic batch across keyspaces. Nothing is fsynced by committing it; durability
    /// comes from [`Store::sync`].
    pub fn batch(&self) -> WriteBatch {
        self.db.batch()
    }

    /// A new atomic batch across WAL keyspaces; durable after [`Store::sync_wal`].
    pub fn wal_batch(&self) -> WriteBatch {
        self.wal.batch()
    }

    /// A consistent point-in-time view across all keyspaces.
    pub fn snapshot(&self) -> Snapshot {
        self.db.snapshot()
    }

    /// Makes everything committed so far to the state database durable (fdatasync of its
    /// journal) and records the time in `etcd_disk_backend_commit_duration_seconds`.
    pub fn sync(&self) -> Result<(), StorageError> {
        let start = Instant::now();
        self.db
            .persist(self.durability)
            .map_err(|e| self.engine(e))?;
        crate::metrics::get()
            .backend_commit_duration
            .observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Makes everything committed so far to the WAL database durable (fdatasync of its
    /// journal) and records the time in `etcd_disk_wal_fsync_duration_seconds`.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        let start = Instant::now();
        self.wal
            .persist(self.durability)
            .map_err(|e| self.wal_engine(e))?;
        crate::metrics::get()
            .wal_fsync_duration
            .observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Bytes the database occupies on disk (allocated blocks, like `du`: fjall preallocates
    /// its journal sparsely), at most [`SIZE_SAMPLE_INTERVAL`] old.
    pub fn disk_space(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// The data directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Wraps an engine error with the state database path.
    pub fn engine(&self, source: fjall::Error) -> StorageError {
        StorageError::Engine {
            path: self.dir.join(DB_DIR),
            source,
        }
    }

    fn wal_engine(&self, source: fjall::Error) -> StorageError {
        StorageError::Engine {
            path: self.dir.join(WAL_DIR),
            source,
        }
    }
}

/// Opens one fjall database with cairn's settings.
fn open_db(path: &Path, write_buffer: u64) -> Result<fjall::Database, StorageError> {
    #[allow(deprecated)] // fjall marks the write buffer limit "todo"; it works and bounds RSS.
    let builder = fjall::Database::builder(path)
        // Cairn decides when to fsync (group commit, snapshots); fjall must not on its own.
        .manual_journal_persist(true)
        .cache_size(CACHE_BYTES)
        .max_write_buffer_size(Some(write_buffer));
    builder.open().map_err(|source| StorageError::Engine {
        path: path.to_path_buf(),
        source,
    })
}

fn keyspace_options() -> fjall::KeyspaceCreateOptions {
    fjall::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// Measures the databases' size every [`SIZE_SAMPLE_INTERVAL`] until the store is dropped.
fn sample_size(paths: Vec<PathBuf>, size: Weak<AtomicU64>) -> Result<(), StorageError> {
    std::thread::Builder::new()
        .name("cairn-du".into())
        .spawn(move || loop {
            std::thread::sleep(SIZE_SAMPLE_INTERVAL);
            let Some(size) = size.upgrade() else { return };
            size.store(allocated(&paths), Ordering::Relaxed);
        })
        .map(drop)
        .map_err(StorageError::io(Path::new("size sampler thread")))
}

fn allocated(paths: &[PathBuf]) -> u64 {
    paths.iter().map(|p| allocated_bytes(p)).sum()
}

/// Bytes allocated to the files under `path`. Files vanish while fjall compacts; those are
/// simply not counted.
fn allocated_bytes(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn lock(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StorageError::io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StorageError::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(StorageError::io(&path)(e)),
    }
}

/// Returns whether the directory is new. A directory with other content and no marker
/// is someone else's (an etcd data dir, a home directory...) and is refused untouched.
fn check_format(dir: &Path) -> Result<bool, StorageError> {
    let marker = dir.join(FORMAT_FILE);
    match fs::read_to_string(&marker) {
        Ok(found) if found.trim() == FORMAT => Ok(false),
        Ok(found) => Err(StorageError::WrongFormat {
            path: dir.to_path_buf(),
            found: found.trim().to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let others: Vec<String> = fs::read_dir(dir)
                .map_err(StorageError::io(dir))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != LOCK_FILE && n != DB_DIR && n != WAL_DIR)
                .collect();
            if others.is_empty() {
                return Ok(true);
            }
            let found = if others.iter().any(|n| n == "member") {
                "it looks like an etcd data dir; restore it with `etcdutl snapshot` into a new cairn instead".to_string()
            } else {
                format!("found {}", others.join(", "))
            };
            Err(StorageError::Foreign {
                path: dir.to_path_buf(),
                found,
            })
        }
        Err(e) => Err(StorageError::io(&marker)(e)),
    }
}

fn write_format(dir: &Path) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(StorageError::io(&tmp))?;
    f.write_all(format!("{FORMAT}\n").as_bytes())
        .map_err(StorageError::io(&tmp))?;
    f.sync_all().map_err(StorageError::io(&tmp))?;
    fs::rename(&tmp, dir.join(FORMAT_FILE)).map_err(StorageError::io(dir))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Store::open(dir.path()).expect("first open");
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(err, StorageError::Locked(_)), "{err}");
    }

    #[test]
    fn foreign_directory_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("member")).expect("mkdir");
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(err.to_string().contains("etcd data dir"), "{err}");
        assert!(!dir.path().join(FORMAT_FILE).exists());
    }

    #[test]
    fn wrong_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FORMAT_FILE), "cairn-data-v999\n").expect("write");
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StorageError::WrongFormat { .. }), "{err}");
    }

    #[test]
    fn size_counts_allocated_bytes_not_the_sparse_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        assert!(
            s.disk_space() < 8 << 20,
            "{} bytes for an empty store",
            s.disk_space()
        );
    }

    #[test]
    fn reopen_after_close_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            s.keyspace("t")
                .expect("ks")
                .insert("a", "b")
                .expect("insert");
            s.sync().expect("sync");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            s.keyspace("t")
                .expect("ks")
                .get("a")
                .expect("get")
                .as_deref(),
            Some(&b"b"[..])
        );
    }
}

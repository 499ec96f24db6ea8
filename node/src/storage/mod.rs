//! The data directory, the fjall databases inside it, and the storage contract every other
//! module reads and writes through. No module outside `storage/` names fjall.
//!
//! Owns: creating and validating `--data-dir`, the exclusive lock that keeps a second
//! process out, the format marker, opening fjall, the durability calls, the failure latch
//! and the fault-injection seam ([`fault`]). Every keyspace is opened through
//! [`Store::keyspace`] or [`Store::wal_keyspace`]; the module that owns a keyspace
//! documents its key encoding next to where it opens it (see ARCHITECTURE.md for the list).
//! It must not know what is stored: no raft or MVCC types here.
//!
//! Layout of a data dir:
//! ```text
//! <data-dir>/CAIRN_FORMAT   "cairn-data-v4": written last on first start, checked on every start
//! <data-dir>/cairn.lock     held with an exclusive lock while a node runs
//! <data-dir>/db/            the state database: MVCC, leases, meta
//! <data-dir>/wal/           the WAL database: the raft log and raft meta
//! <data-dir>/snap/          raft snapshots received from a leader (files, see `raft::snapshot`)
//! ```
//!
//! With `--wal-dir W` the WAL database is `W/wal/` instead, and `W/cairn.lock` is held too,
//! so one lock covers both directories. The raft log is looked for in one place only, as
//! etcd does (`cfg.WALDir()`); a log in the other place, or a started data dir whose log is
//! in neither, is refused at start (see [`wal_location`]) instead of silently starting an
//! empty log next to the old state, which is what etcd does.
//!
//! Two databases, because fjall holds a database's journal lock for the whole of an
//! fdatasync: with one journal, every MVCC apply would wait for the log's fsync in flight.
//! fjall's own housekeeping under its locks is kept short by [`upkeep`].
//!
//! # The contract
//!
//! * **Keyspaces** ([`Keyspace`]): named tables of one database. Keys and values are byte
//!   strings (a key at most 64 KiB); iteration is in ascending byte order of the keys,
//!   descending from the back ([`Iter`], [`Keys`]), so big-endian integers in keys iterate
//!   in numeric order. Reads hand out [`Bytes`], which share the engine's buffer.
//! * **Atomicity**: a [`WriteBatch`] spans any keyspaces of one database and is applied all
//!   or nothing, also across a crash; so is a single [`Keyspace::insert`]. Nothing is atomic
//!   across the two databases.
//! * **Visibility**: a commit is visible to every read started after it returns. A
//!   [`Snapshot`] ([`Store::snapshot`]) is a consistent view of the state database as of
//!   its creation: it sees every commit before it whole and none after.
//! * **Durability**: committing does not fsync. Commits to a database become durable, in
//!   commit order, at the next [`Store::sync`] (state database) or [`Store::sync_wal`]
//!   (WAL database) that returns `Ok`. After a crash each database holds a prefix of its
//!   commits: everything before its last successful sync and possibly some after. The
//!   state database may lag behind the WAL; replaying the log repairs that.
//! * **Errors**: every failure is a [`StorageError`]. An engine error (I/O, corruption,
//!   a failed fsync) is fatal: the store logs it, latches it, refuses every later write and
//!   sync with [`StorageError::Refused`] (after a failed fsync, a later one that succeeds
//!   proves nothing about the earlier writes), and [`Store::failure`] resolves, so the node
//!   stops and a restart recovers from what is durable.
//! * **Fault injection**: [`StoreOptions::fault`] makes one chosen write or fsync fail with
//!   an injected I/O error that takes the same path as a real one (see [`fault`]).

mod fault;
mod kv;
mod upkeep;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use fault::{BadFaultPlan, FaultDatabase, FaultOp, FaultPlan};
pub use kv::{Bytes, Iter, Keys, Keyspace, KeyspaceUsage, Snapshot, WriteBatch};

/// The content of the format marker. Bump it (and add a migration) when an on-disk
/// encoding changes incompatibly.
const FORMAT: &str = "cairn-data-v4";
/// Formats this cairn opens and upgrades in place by rewriting the marker, because their
/// data reads as it is: v2 stored each live value twice (`kv_latest` and `kv_history`);
/// v3 writes it once and reads v2's records too; v4 keeps the write counters in one
/// `mvcc_meta` record and the raft membership apart from the apply marker, and reads v3's
/// names too. None can be opened by a cairn of an earlier format.
const UPGRADES_FROM: &[&str] = &["cairn-data-v2", "cairn-data-v3"];
const FORMAT_FILE: &str = "CAIRN_FORMAT";
const LOCK_FILE: &str = "cairn.lock";
const DB_DIR: &str = "db";
const WAL_DIR: &str = "wal";
/// Where `--auto-tls`/`--peer-auto-tls` keep their certificates (etcd's place), created
/// before the store is opened.
pub const FIXTURES_DIR: &str = "fixtures";
const SNAP_DIR: &str = "snap";
/// Block cache of each database. Reads of recent revisions hit the memtables; the cache
/// serves the rest, and etcd (bbolt) relies on the page cache the same way.
const CACHE_BYTES: u64 = 16 << 20;
/// A keyspace's memtable is sealed and flushed at this size (fjall's default, 64 MiB per
/// keyspace, would let a handful of busy keyspaces hold hundreds of MiB). Measured: 8 MiB
/// costs ~10% of put throughput and doubles put p99 (more flushes), 16 MiB is close to 64.
const MEMTABLE_BYTES: u64 = 16 << 20;
/// Memtable size of [`Store::small_keyspace`]. fjall halts a keyspace's writes (in 100 ms
/// sleeps) while 4 of its sealed memtables wait for a flush worker; at 4 MiB that is ~5 s of
/// puts queued behind other flushes and compactions, as for the larger keyspaces, where
/// 1 MiB allowed ~1 s.
const SMALL_MEMTABLE_BYTES: u64 = 4 << 20;
/// All memtables of the state database together.
const DB_WRITE_BUFFER_BYTES: u64 = 64 << 20;
/// All memtables of the WAL database together: log entries are read back once, by apply,
/// right after they are written, so a small buffer serves them.
const WAL_WRITE_BUFFER_BYTES: u64 = 32 << 20;
/// Journal files each database keeps before it flushes the memtables that pin the oldest
/// (fjall's default is 512 MiB). The small keyspaces rewritten on every apply (`mvcc_meta`,
/// the raft meta) never fill a memtable, so they pin every journal up to this limit: at
/// the default, a loaded node carried up to 1 GiB of journals on disk and replayed them on
/// restart. 64 MiB is fjall's minimum.
const JOURNAL_BYTES: u64 = 64 << 20;
/// How often the data dir's size is measured for `Status`, `/metrics` and the quota check.
const SIZE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Why a storage operation failed: the one error type of the storage contract.
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
    /// The raft log is not where the configuration says it is (see [`wal_location`]).
    #[error("{0}")]
    WalMisplaced(String),
    /// The engine failed an operation. Fatal: see the module header.
    #[error("storage engine error in {path} ({context}): {source}")]
    Engine {
        path: PathBuf,
        /// The operation and, where there is one, the keyspace.
        context: String,
        source: EngineError,
    },
    /// The store has failed (what [`Store::failure`] reports): `first` is the first engine
    /// error.
    #[error("storage failed: {first}")]
    Failed { first: String },
    /// Refused because an earlier engine error made the store unusable until a restart.
    #[error("refused {op} in {path}: storage failed earlier: {first}")]
    Refused {
        path: PathBuf,
        op: String,
        first: String,
    },
}

impl StorageError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
        move |source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The engine's own error, opaque to callers: its message and `source()` chain are all
/// they get.
#[derive(Debug)]
pub struct EngineError(fjall::Error);

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            fjall::Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// How a [`Store`] is opened.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Testing only: a storage operation to fail with an injected I/O error.
    pub fault: Option<FaultPlan>,
    /// `--unsafe-no-fsync`: [`Store::sync`] and [`Store::sync_wal`] hand their writes to the
    /// OS without fsync, so they survive a crash of this process but not of the machine.
    pub skip_fsync: bool,
    /// `--wal-dir`: the directory that holds the WAL database instead of the data dir.
    pub wal_dir: Option<PathBuf>,
}

/// An operation on a database, for error context and fault injection.
#[derive(Clone, Copy, Debug)]
enum Op {
    Read,
    /// A single-key write.
    Write,
    /// A batch commit.
    Commit,
    Sync,
    Open,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Commit => "batch commit",
            Op::Sync => "fsync",
            Op::Open => "open keyspace",
        })
    }
}

/// The first fatal engine error of a store; shared by both databases.
struct Failure {
    failed: AtomicBool,
    /// The first engine error, as text (it names the database).
    first: watch::Sender<Option<String>>,
}

/// What every handle of one database shares: where it is, its armed fault, the store's
/// failure latch, and its keyspaces for [`upkeep`].
struct Db {
    path: PathBuf,
    fault: Option<fault::Armed>,
    failure: Arc<Failure>,
    keyspaces: Mutex<Vec<fjall::Keyspace>>,
}

impl Db {
    /// Refuses a write or sync once the store has failed.
    fn before_write(&self, op: Op, keyspace: &str) -> Result<(), StorageError> {
        if !self.failure.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let first = self.failure.first.borrow().clone().unwrap_or_default();
        let op = if keyspace.is_empty() {
            op.to_string()
        } else {
            format!("{op} of keyspace {keyspace}")
        };
        Err(StorageError::Refused {
            path: self.path.clone(),
            op,
            first,
        })
    }

    /// The fault-injection seam: fails the planned operation as the engine would.
    fn inject(&self, op: Op) -> Result<(), fjall::Error> {
        let Some(armed) = &self.fault else {
            return Ok(());
        };
        match op {
            Op::Write | Op::Commit => armed.check(FaultOp::Write),
            Op::Sync => armed.check(FaultOp::Fsync),
            Op::Read | Op::Open => Ok(()),
        }
    }

    /// Wraps an engine error with its context, logs it and latches the store as failed.
    fn fail(&self, op: Op, keyspace: Option<&str>, source: fjall::Error) -> StorageError {
        let context = match keyspace {
            Some(ks) => format!("{op} of keyspace {ks}"),
            None => op.to_string(),
        };
        let err = StorageError::Engine {
            path: self.path.clone(),
            context,
            source: EngineError(source),
        };
        let first = self.failure.first.send_if_modified(|first| {
            if first.is_some() {
                return false;
            }
            *first = Some(err.to_string());
            true
        });
        self.failure.failed.store(true, Ordering::Release);
        if first {
            tracing::error!(error = %err, "fatal storage error: cairn must stop and recover on restart");
        }
        err
    }
}

/// An opened, locked data directory.
pub struct Store {
    db: fjall::Database,
    wal: fjall::Database,
    db_info: Arc<Db>,
    wal_info: Arc<Db>,
    failure: Arc<Failure>,
    dir: PathBuf,
    /// Bytes allocated on disk by the database, sampled in the background: asking fjall
    /// would wait for its journal lock, which an fsync in progress holds.
    size: Arc<AtomicU64>,
    /// `SyncData`, or `Buffer` under `--unsafe-no-fsync`.
    durability: fjall::PersistMode,
    // Held for the life of the process; the OS releases them on exit, even on kill -9. The
    // second is `--wal-dir`'s, if it is set.
    _locks: (File, Option<File>),
}

impl Store {
    /// Opens (creating on first start) the data directory at `dir`.
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        Store::open_with(dir, &StoreOptions::default())
    }

    /// [`Store::open`] with options.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Store, StorageError> {
        fs::create_dir_all(dir).map_err(StorageError::io(dir))?;
        let lock = lock(dir)?;
        let found = check_format(dir)?;
        let fresh = matches!(found, Found::Fresh);
        let (wal_path, wal_lock) = wal_location(dir, options.wal_dir.as_deref(), fresh)?;
        let db = open_db(&dir.join(DB_DIR), DB_WRITE_BUFFER_BYTES)?;
        let wal = open_db(&wal_path, WAL_WRITE_BUFFER_BYTES)?;
        match found {
            Found::Fresh => write_format(dir)?,
            Found::Current => {}
            Found::Upgradable(old) => {
                write_format(dir)?;
                tracing::info!(
                    data_dir = %dir.display(),
                    "data dir format {old} upgraded to {FORMAT} in place (existing records are \
                     read as they are and replaced as the state changes); a cairn that reads \
                     only {old} can no longer open it"
                );
            }
        }
        let paths = vec![dir.join(DB_DIR), wal_path.clone()];
        let size = Arc::new(AtomicU64::new(allocated(&paths)));
        sample_size(paths, Arc::downgrade(&size))?;
        let failure = Arc::new(Failure {
            failed: AtomicBool::new(false),
            first: watch::Sender::new(None),
        });
        let info = |path: PathBuf, which: FaultDatabase| {
            let fault = options.fault.filter(|f| f.database == which);
            if let Some(plan) = fault {
                tracing::warn!(fault = %plan, "storage fault injection armed (--unsafe-storage-fault): never use this in production");
            }
            Arc::new(Db {
                path,
                fault: fault.map(fault::Armed::new),
                failure: failure.clone(),
                keyspaces: Mutex::default(),
            })
        };
        let (db_info, wal_info) = (
            info(dir.join(DB_DIR), FaultDatabase::State),
            info(wal_path, FaultDatabase::Wal),
        );
        upkeep::spawn(&db_info, &wal_info, !options.skip_fsync)?;
        Ok(Store {
            db,
            wal,
            db_info,
            wal_info,
            failure: failure.clone(),
            dir: dir.to_path_buf(),
            size,
            durability: if options.skip_fsync {
                fjall::PersistMode::Buffer
            } else {
                fjall::PersistMode::SyncData
            },
            _locks: (lock, wal_lock),
        })
    }

    /// Opens or creates the named keyspace of the state database.
    pub fn keyspace(&self, name: &str) -> Result<Keyspace, StorageError> {
        open_keyspace(&self.db, &self.db_info, name, keyspace_options)
    }

    /// [`Store::keyspace`] for a keyspace read by key at random (MVCC's live records: every
    /// put reads the version it supersedes): its filter and index blocks stay in memory at
    /// every level, about 2 MiB per million keys. fjall pins them only in the first levels,
    /// so beyond a few million keys each lookup read a whole filter or index block from disk
    /// and checksummed it (a fifth of the CPU of puts at 10 M keys; the index blocks are
    /// the larger part). A keyspace keeps the options it was created with.
    pub fn lookup_keyspace(&self, name: &str) -> Result<Keyspace, StorageError> {
        open_keyspace(&self.db, &self.db_info, name, || {
            keyspace_options()
                .filter_block_pinning_policy(fjall::config::PinningPolicy::all(true))
                .index_block_pinning_policy(fjall::config::PinningPolicy::all(true))
        })
    }

    /// [`Store::keyspace`] for a keyspace of a few names rewritten on every apply (MVCC's
    /// revisions and counters): each write adds a version of them to the memtable, and the
    /// skiplist of a full-size memtable (hundreds of thousands of versions of a handful of
    /// keys, beyond the CPU caches) made every insert and lookup chase a cache miss per
    /// level, and it never filled, so it stayed in memory. A flush of it leaves a table of a
    /// few keys.
    pub fn small_keyspace(&self, name: &str) -> Result<Keyspace, StorageError> {
        open_keyspace(&self.db, &self.db_info, name, || {
            keyspace_options().max_memtable_size(SMALL_MEMTABLE_BYTES)
        })
    }

    /// Opens or creates the named keyspace of the WAL database.
    pub fn wal_keyspace(&self, name: &str) -> Result<Keyspace, StorageError> {
        open_keyspace(&self.wal, &self.wal_info, name, keyspace_options)
    }

    /// A new atomic batch across keyspaces of the state database; durable after
    /// [`Store::sync`].
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::new(self.db.batch(), self.db_info.clone())
    }

    /// A new atomic batch across keyspaces of the WAL database; durable after
    /// [`Store::sync_wal`].
    pub fn wal_batch(&self) -> WriteBatch {
        WriteBatch::new(self.wal.batch(), self.wal_info.clone())
    }

    /// A consistent point-in-time view across all keyspaces of the state database.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.db.snapshot())
    }

    /// Makes everything committed so far to the state database durable (fdatasync of its
    /// journal) and records the time in `etcd_disk_backend_commit_duration_seconds`.
    pub fn sync(&self) -> Result<(), StorageError> {
        let start = Instant::now();
        persist(&self.db, &self.db_info, self.durability)?;
        crate::metrics::get()
            .backend_commit_duration
            .observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Makes everything committed so far to the WAL database durable (fdatasync of its
    /// journal) and records the time in `etcd_disk_wal_fsync_duration_seconds`.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        let start = Instant::now();
        persist(&self.wal, &self.wal_info, self.durability)?;
        crate::metrics::get()
            .wal_fsync_duration
            .observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Resolves with [`StorageError::Failed`] once an engine error has made the store
    /// unusable (see the module header); never while the store is healthy.
    pub fn failure(&self) -> impl Future<Output = StorageError> + Send + 'static {
        let mut rx = self.failure.first.subscribe();
        async move {
            let first = rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|first| first.clone());
            match first {
                Some(first) => StorageError::Failed { first },
                // The store was dropped healthy: it never fails now.
                None => std::future::pending().await,
            }
        }
    }

    /// Bytes the database occupies on disk (allocated blocks, like `du`: fjall preallocates
    /// its journal sparsely), at most [`SIZE_SAMPLE_INTERVAL`] old.
    pub fn disk_space(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Measures [`Store::disk_space`] now rather than at the next sample (after a
    /// defragmentation, whose effect the caller reports).
    pub fn measure_disk_space(&self) -> u64 {
        let bytes = allocated(&[self.db_info.path.clone(), self.wal_info.path.clone()]);
        self.size.store(bytes, Ordering::Relaxed);
        bytes
    }

    /// Copies fjall's statistics of both databases into the `cairn_storage_*` metrics. Each
    /// is an atomic read or a short lock in fjall, so a scrape can afford it.
    pub fn publish_metrics(&self) {
        // Counters mirror fjall's running totals; the lock keeps two concurrent scrapes
        // from both adding the same difference.
        static PUBLISHING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = PUBLISHING.lock().unwrap_or_else(PoisonError::into_inner);
        let m = crate::metrics::get();
        for (name, db) in [("db", &self.db), ("wal", &self.wal)] {
            let labels = &[name];
            let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
            m.storage_write_buffer
                .with_label_values(labels)
                .set(gauge(db.write_buffer_size()));
            m.storage_pending_flushes
                .with_label_values(labels)
                .set(gauge(db.outstanding_flushes() as u64));
            m.storage_active_compactions
                .with_label_values(labels)
                .set(gauge(db.active_compactions() as u64));
            m.storage_block_cache
                .with_label_values(labels)
                .set(gauge(db.cache_size()));
            let compactions = m.storage_compactions.with_label_values(labels);
            compactions
                .inc_by((db.compactions_completed() as u64).saturating_sub(compactions.get()));
            let seconds = m.storage_compaction_seconds.with_label_values(labels);
            let delta = db.time_compacting().as_secs_f64() - seconds.get();
            if delta > 0.0 {
                seconds.inc_by(delta);
            }
        }
    }

    /// Copies every entry of both databases into the empty `dst`, except those `skip`
    /// (keyspace name, key) names, then the raft snapshot files, and syncs `dst`: the offline
    /// backup of a data dir, which this store's lock keeps every node off meanwhile.
    /// Returns the number of entries copied.
    pub fn copy_into(
        &self,
        dst: &Store,
        skip: &dyn Fn(&str, &[u8]) -> bool,
    ) -> Result<u64, StorageError> {
        let mut copied = 0;
        for wal in [false, true] {
            let db = if wal { &self.wal } else { &self.db };
            for name in db.list_keyspace_names() {
                let name: &str = &name;
                let (from, to) = if wal {
                    (self.wal_keyspace(name)?, dst.wal_keyspace(name)?)
                } else {
                    (self.keyspace(name)?, dst.keyspace(name)?)
                };
                let new_batch = || if wal { dst.wal_batch() } else { dst.batch() };
                let mut batch = new_batch();
                let mut bytes = 0;
                for item in from.iter() {
                    let (k, v) = item?;
                    if skip(name, &k) {
                        continue;
                    }
                    bytes += k.len() + v.len();
                    batch.insert(&to, k, v);
                    copied += 1;
                    if bytes >= COPY_BATCH_BYTES {
                        std::mem::replace(&mut batch, new_batch()).commit()?;
                        bytes = 0;
                    }
                }
                batch.commit()?;
            }
        }
        copy_files(&self.dir.join(SNAP_DIR), &dst.dir.join(SNAP_DIR))?;
        dst.sync()?;
        dst.sync_wal()?;
        Ok(copied)
    }

    /// The data directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory for snapshot files received from a leader, created if missing. Files
    /// there are plain files, not part of either database.
    pub fn snap_dir(&self) -> Result<PathBuf, StorageError> {
        let dir = self.dir.join(SNAP_DIR);
        fs::create_dir_all(&dir).map_err(StorageError::io(&dir))?;
        Ok(dir)
    }
}

/// A copy commits a batch once it holds this many bytes, to bound its memory.
const COPY_BATCH_BYTES: usize = 16 << 20;

/// Copies the files under `from` (if it exists) to `to`, recursively, fsyncing each.
fn copy_files(from: &Path, to: &Path) -> Result<(), StorageError> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    fs::create_dir_all(to).map_err(StorageError::io(to))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_files(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(StorageError::io(&dst))?;
            File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(StorageError::io(&dst))?;
        }
    }
    Ok(())
}

fn open_keyspace(
    db: &fjall::Database,
    info: &Arc<Db>,
    name: &str,
    options: impl FnOnce() -> fjall::KeyspaceCreateOptions,
) -> Result<Keyspace, StorageError> {
    let ks = db
        .keyspace(name, options)
        .map_err(|e| info.fail(Op::Open, Some(name), e))?;
    upkeep::register(info, &ks);
    Ok(Keyspace::new(ks, name, info.clone()))
}

fn persist(
    db: &fjall::Database,
    info: &Db,
    durability: fjall::PersistMode,
) -> Result<(), StorageError> {
    info.before_write(Op::Sync, "")?;
    info.inject(Op::Sync)
        .and_then(|()| db.persist(durability))
        .map_err(|e| info.fail(Op::Sync, None, e))
}

/// Opens one fjall database with cairn's settings.
fn open_db(path: &Path, write_buffer: u64) -> Result<fjall::Database, StorageError> {
    #[allow(deprecated)] // fjall marks the write buffer limit "todo"; it works and bounds RSS.
    let builder = fjall::Database::builder(path)
        // Cairn decides when to fsync (group commit, snapshots); fjall must not on its own.
        .manual_journal_persist(true)
        .cache_size(CACHE_BYTES)
        .max_journaling_size(JOURNAL_BYTES)
        .max_write_buffer_size(Some(write_buffer));
    builder.open().map_err(|source| StorageError::Engine {
        path: path.to_path_buf(),
        context: "open".to_string(),
        source: EngineError(source),
    })
}

/// Every keyspace compresses its data blocks with LZ4 at every level: fjall's default
/// leaves levels 0 and 1 uncompressed, which is where a store of a few hundred MiB keeps
/// most of its data. Keyspaces created before keep the policy they were created with.
fn keyspace_options() -> fjall::KeyspaceCreateOptions {
    fjall::KeyspaceCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
        .data_block_compression_policy(fjall::config::CompressionPolicy::all(
            fjall::CompressionType::Lz4,
        ))
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

/// Where the WAL database is, and the lock of `--wal-dir` if one is set (with the data dir's
/// own lock already held). The raft log is looked for only where the configuration puts it;
/// refused, with what to do:
/// - `--wal-dir` set but the log is still in the data dir (or in both places);
/// - a data dir that has been started (`fresh` is false) whose log is not where it is looked
///   for, e.g. `--wal-dir` dropped or changed: starting would begin an empty log beside the
///   old state.
fn wal_location(
    dir: &Path,
    wal_dir: Option<&Path>,
    fresh: bool,
) -> Result<(PathBuf, Option<File>), StorageError> {
    let in_data_dir = dir.join(WAL_DIR);
    let wal_dir = match wal_dir {
        Some(w) if !same_dir(w, dir) => w,
        _ => {
            if !fresh && !in_data_dir.exists() {
                return Err(StorageError::WalMisplaced(format!(
                    "data dir {} has no raft log ({} is missing); if it was started with \
                     --wal-dir, start it with the same --wal-dir",
                    dir.display(),
                    in_data_dir.display()
                )));
            }
            return Ok((in_data_dir, None));
        }
    };
    fs::create_dir_all(wal_dir).map_err(StorageError::io(wal_dir))?;
    let lock = lock(wal_dir)?;
    let wal_path = wal_dir.join(WAL_DIR);
    let others: Vec<String> = fs::read_dir(wal_dir)
        .map_err(StorageError::io(wal_dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE && n != WAL_DIR)
        .collect();
    if !others.is_empty() {
        return Err(StorageError::Foreign {
            path: wal_dir.to_path_buf(),
            found: format!("--wal-dir holds {}", others.join(", ")),
        });
    }
    let misplaced = match (in_data_dir.exists(), wal_path.exists()) {
        (true, true) => Some("both hold a raft log; keep one of them"),
        (true, false) => Some("the raft log is still in the data dir: move it to --wal-dir, or start without --wal-dir"),
        (false, false) if !fresh => Some("the data dir has been started but --wal-dir holds no raft log: pass the --wal-dir it was started with"),
        _ => None,
    };
    match misplaced {
        Some(what) => Err(StorageError::WalMisplaced(format!(
            "data dir {} and --wal-dir {}: {what} ({} is the raft log's place with --wal-dir)",
            dir.display(),
            wal_dir.display(),
            wal_path.display()
        ))),
        None => Ok((wal_path, Some(lock))),
    }
}

/// Whether two paths name the same directory (`--wal-dir` equal to `--data-dir` is the
/// default layout).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Returns whether the directory is new. A directory with other content and no marker
/// is someone else's (an etcd data dir, a home directory...) and is refused untouched.
/// What the format marker of a data dir says.
enum Found {
    /// No marker and nothing else: a new data dir.
    Fresh,
    Current,
    /// One of [`UPGRADES_FROM`].
    Upgradable(String),
}

fn check_format(dir: &Path) -> Result<Found, StorageError> {
    let marker = dir.join(FORMAT_FILE);
    match fs::read_to_string(&marker) {
        Ok(found) if found.trim() == FORMAT => Ok(Found::Current),
        Ok(found) if UPGRADES_FROM.contains(&found.trim()) => {
            Ok(Found::Upgradable(found.trim().to_string()))
        }
        Ok(found) => Err(StorageError::WrongFormat {
            path: dir.to_path_buf(),
            found: found.trim().to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let others: Vec<String> = fs::read_dir(dir)
                .map_err(StorageError::io(dir))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != LOCK_FILE && n != DB_DIR && n != WAL_DIR && n != FIXTURES_DIR)
                .collect();
            if others.is_empty() {
                return Ok(Found::Fresh);
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

    fn with_wal_dir(dir: &Path, wal: &Path) -> Result<Store, StorageError> {
        let options = StoreOptions {
            wal_dir: Some(wal.to_path_buf()),
            ..StoreOptions::default()
        };
        Store::open_with(dir, &options)
    }

    #[test]
    fn wal_dir_holds_the_log_and_is_locked_too() {
        let root = tempfile::tempdir().expect("tempdir");
        let (data, wal) = (root.path().join("data"), root.path().join("wal-disk"));
        {
            let s = with_wal_dir(&data, &wal).expect("open");
            s.wal_keyspace("log")
                .expect("ks")
                .insert("1", "e")
                .expect("insert");
            s.sync_wal().expect("sync");
            assert!(wal.join(WAL_DIR).is_dir());
            assert!(!data.join(WAL_DIR).exists());
            // Another process pointing only its data dir at the WAL dir is kept out.
            let err = Store::open(&wal).err().expect("locked");
            assert!(matches!(err, StorageError::Locked(_)), "{err}");
        }
        let s = with_wal_dir(&data, &wal).expect("reopen");
        let got = s.wal_keyspace("log").expect("ks").get("1").expect("get");
        assert_eq!(got.as_deref(), Some(&b"e"[..]));
    }

    #[test]
    fn a_raft_log_in_the_other_place_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let (data, wal) = (root.path().join("data"), root.path().join("wal-disk"));
        drop(Store::open(&data).expect("plain start"));
        // Log in the data dir, --wal-dir now set.
        let err = with_wal_dir(&data, &wal).err().expect("refused");
        assert!(err.to_string().contains("still in the data dir"), "{err}");
        assert!(!wal.join(WAL_DIR).exists(), "nothing created in --wal-dir");

        let other = root.path().join("data2");
        drop(with_wal_dir(&other, &wal).expect("start with --wal-dir"));
        // Started with --wal-dir, now without it.
        let err = Store::open(&other).err().expect("refused");
        assert!(err.to_string().contains("same --wal-dir"), "{err}");
        // Started with --wal-dir, now with another, empty one.
        let err = with_wal_dir(&other, &root.path().join("elsewhere"))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("holds no raft log"), "{err}");
    }

    #[test]
    fn wal_dir_equal_to_the_data_dir_is_the_default_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(with_wal_dir(dir.path(), dir.path()).expect("open"));
        assert!(dir.path().join(WAL_DIR).is_dir());
        drop(Store::open(dir.path()).expect("reopen without --wal-dir"));
    }

    #[test]
    fn a_foreign_wal_dir_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let wal = root.path().join("w");
        fs::create_dir_all(wal.join("member")).expect("mkdir");
        let err = with_wal_dir(&root.path().join("d"), &wal)
            .err()
            .expect("refused");
        assert!(matches!(err, StorageError::Foreign { .. }), "{err}");
    }

    #[test]
    fn wrong_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FORMAT_FILE), "cairn-data-v999\n").expect("write");
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StorageError::WrongFormat { .. }), "{err}");
    }

    #[test]
    fn an_older_format_is_upgraded_in_place() {
        for old in UPGRADES_FROM {
            let dir = tempfile::tempdir().expect("tempdir");
            drop(Store::open(dir.path()).expect("create"));
            fs::write(dir.path().join(FORMAT_FILE), format!("{old}\n")).expect("write");
            drop(Store::open(dir.path()).expect("open an older data dir"));
            let marker = fs::read_to_string(dir.path().join(FORMAT_FILE)).expect("read");
            assert_eq!(marker.trim(), FORMAT);
        }
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

    #[test]
    fn iteration_is_in_key_byte_order_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let ks = s.keyspace("t").expect("ks");
        let mut batch = s.batch();
        for n in [300u64, 2, 70_000, 1] {
            batch.insert(&ks, n.to_be_bytes(), n.to_string());
        }
        batch.remove(&ks, 2u64.to_be_bytes());
        batch.commit().expect("commit");
        let snap = s.snapshot();
        ks.insert(5u64.to_be_bytes(), "late").expect("insert");
        fn keys(it: impl Iterator<Item = Result<(Bytes, Bytes), StorageError>>) -> Vec<u64> {
            it.map(|e| {
                let (k, _) = e.expect("entry");
                u64::from_be_bytes(k[..].try_into().expect("8 bytes"))
            })
            .collect()
        }
        assert_eq!(
            keys(snap.iter(&ks)),
            [1, 300, 70_000],
            "the snapshot misses later writes"
        );
        assert_eq!(keys(ks.iter()), [1, 5, 300, 70_000]);
        assert_eq!(
            keys(snap.range(&ks, 2u64.to_be_bytes()..).rev()),
            [70_000, 300]
        );
        let last = ks.iter().keys().next_back().expect("a key").expect("read");
        assert_eq!(&*last, &70_000u64.to_be_bytes()[..]);
        assert_eq!(
            snap.get(&ks, 300u64.to_be_bytes()).expect("get").as_deref(),
            Some(&b"300"[..])
        );
        assert_eq!(snap.prefix(&ks, [0u8; 6]).count(), 2, "1 and 300");
    }

    #[tokio::test]
    async fn an_injected_fsync_failure_is_fatal_and_latched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions {
            fault: Some("wal-fsync:2".parse().expect("plan")),
            ..Default::default()
        };
        let s = Store::open_with(dir.path(), &options).expect("open");
        let ks = s.wal_keyspace("log").expect("ks");
        let failure = s.failure();
        ks.insert("a", "1").expect("insert");
        s.sync_wal().expect("first fsync");
        s.sync().expect("the state database is not armed");
        let err = s.sync_wal().expect_err("second fsync fails");
        assert!(
            matches!(&err, StorageError::Engine { context, .. } if context == "fsync"),
            "{err}"
        );
        assert!(
            err.to_string().contains("injected fault wal-fsync:2"),
            "{err}"
        );
        // The fault fires once, but the store stays failed: nothing later is acknowledged.
        for refused in [
            s.sync_wal(),
            s.sync(),
            ks.insert("b", "2"),
            s.batch().commit(),
        ] {
            assert!(
                matches!(refused, Err(StorageError::Refused { .. })),
                "{refused:?}"
            );
        }
        let failed = tokio::time::timeout(Duration::from_secs(5), failure)
            .await
            .expect("failure() resolves");
        assert!(failed.to_string().contains("injected fault"), "{failed}");
        assert_eq!(
            ks.get("a").expect("reads still work").as_deref(),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn an_injected_write_failure_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions {
            fault: Some("db-write:1".parse().expect("plan")),
            ..Default::default()
        };
        let s = Store::open_with(dir.path(), &options).expect("open");
        let ks = s.keyspace("t").expect("ks");
        let mut batch = s.batch();
        batch.insert(&ks, "k", "v");
        let err = batch.commit().expect_err("the first write fails");
        assert!(matches!(err, StorageError::Engine { .. }), "{err}");
        assert_eq!(ks.get("k").expect("get"), None);
    }
}

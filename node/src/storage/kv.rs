//! The handles callers read and write through: [`Keyspace`], [`WriteBatch`], [`Snapshot`],
//! the iterators [`Iter`] and [`Keys`], and [`Bytes`]. Each wraps the engine's own type
//! and adds only error context (database path and keyspace name), the failure latch and
//! the fault-injection seam; reads hand out the engine's buffers without copying them.
//! The contract these types keep is in the module header of [`crate::storage`].

use std::fmt;
use std::ops::{Deref, RangeBounds};
use std::sync::Arc;

use super::{Db, Op, StorageError};

/// A key or value read from the store. It shares the engine's buffer (no copy); it
/// derefs to `[u8]`, so `&*bytes`, `bytes.to_vec()` and slicing work as on a slice.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(fjall::Slice);

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A keyspace's size as the engine counts it (see [`Keyspace::usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyspaceUsage {
    pub disk_bytes: u64,
    pub memtable_bytes: u64,
    pub entries: u64,
    pub tombstones: u64,
}

/// One named table of a database, with keys and values as byte strings ordered by their
/// bytes. Cheap to clone; every clone is the same keyspace.
#[derive(Clone)]
pub struct Keyspace {
    inner: fjall::Keyspace,
    info: Arc<KeyspaceInfo>,
}

/// What error messages name, and the database the keyspace belongs to.
struct KeyspaceInfo {
    name: String,
    db: Arc<Db>,
}

impl Keyspace {
    pub(super) fn new(inner: fjall::Keyspace, name: &str, db: Arc<Db>) -> Keyspace {
        Keyspace {
            inner,
            info: Arc::new(KeyspaceInfo {
                name: name.to_string(),
                db,
            }),
        }
    }

    /// The value of `key` in the latest committed state.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, StorageError> {
        self.inner
            .get(key)
            .map(|v| v.map(Bytes))
            .map_err(|e| self.fail(Op::Read, e))
    }

    /// Writes one key on its own: atomic, visible at once, durable like a batch (see the
    /// module header of [`crate::storage`]).
    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), StorageError> {
        self.info.db.before_write(Op::Write, &self.info.name)?;
        self.info
            .db
            .inject(Op::Write)
            .and_then(|()| self.inner.insert(key.as_ref(), value.as_ref()))
            .map_err(|e| self.fail(Op::Write, e))
    }

    /// Every entry in the latest committed state, in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter::new(self.inner.iter(), self)
    }

    /// The entries whose keys lie in `range`, in key order, from the latest committed state.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter<'_> {
        Iter::new(self.inner.range(range), self)
    }

    /// The entry with the smallest key, if any.
    pub fn first(&self) -> Result<Option<(Bytes, Bytes)>, StorageError> {
        self.inner
            .first_key_value()
            .map(|guard| self.pair(guard))
            .transpose()
    }

    /// The entry with the largest key, if any.
    pub fn last(&self) -> Result<Option<(Bytes, Bytes)>, StorageError> {
        self.inner
            .last_key_value()
            .map(|guard| self.pair(guard))
            .transpose()
    }

    /// What this keyspace holds, from the engine's statistics (no data is read): bytes
    /// in its tables on disk and in its memtables, entries (tables and memtables, counting
    /// every version and tombstone) and tombstones in the tables.
    pub fn usage(&self) -> KeyspaceUsage {
        use fjall::AbstractTree;
        KeyspaceUsage {
            disk_bytes: self.inner.disk_space(),
            memtable_bytes: self.inner.tree.version_memtable_size_sum(),
            entries: self.inner.approximate_len() as u64,
            tombstones: self.inner.tree.tombstone_count(),
        }
    }

    /// Rewrites every table of the keyspace into one sorted run, dropping the versions and
    /// tombstones no open snapshot needs (fjall's major compaction), memtable included. Reads and writes go on
    /// meanwhile: it works on immutable tables and swaps them in at the end.
    pub fn major_compact(&self) -> Result<(), StorageError> {
        self.info.db.before_write(Op::Commit, &self.info.name)?;
        // Flushed first, so what the memtable holds is rewritten too.
        self.inner
            .rotate_memtable_and_wait()
            .and_then(|()| self.inner.major_compact())
            .map_err(|e| self.fail(Op::Commit, e))
    }

    fn pair(&self, guard: fjall::Guard) -> Result<(Bytes, Bytes), StorageError> {
        guard
            .into_inner()
            .map(|(k, v)| (Bytes(k), Bytes(v)))
            .map_err(|e| self.fail(Op::Read, e))
    }

    fn fail(&self, op: Op, source: fjall::Error) -> StorageError {
        self.info.db.fail(op, Some(&self.info.name), source)
    }
}

/// Writes to any keyspaces of one database, applied atomically by [`WriteBatch::commit`]:
/// after a crash, all of them or none are there. Nothing is visible before the commit.
pub struct WriteBatch {
    inner: fjall::OwnedWriteBatch,
    db: Arc<Db>,
}

impl WriteBatch {
    pub(super) fn new(inner: fjall::OwnedWriteBatch, db: Arc<Db>) -> WriteBatch {
        WriteBatch { inner, db }
    }

    /// Sets `key` to `value` in `ks`, which must belong to the batch's database.
    pub fn insert(&mut self, ks: &Keyspace, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        debug_assert!(
            Arc::ptr_eq(&ks.info.db, &self.db),
            "keyspace of another database"
        );
        self.inner.insert(&ks.inner, key.as_ref(), value.as_ref());
    }

    /// Removes `key` from `ks` (nothing happens if it is absent).
    pub fn remove(&mut self, ks: &Keyspace, key: impl AsRef<[u8]>) {
        debug_assert!(
            Arc::ptr_eq(&ks.info.db, &self.db),
            "keyspace of another database"
        );
        self.inner.remove(&ks.inner, key.as_ref());
    }

    /// Applies every write of the batch atomically. Not fsynced: see the module header of
    /// [`crate::storage`] for when it becomes durable.
    pub fn commit(self) -> Result<(), StorageError> {
        let WriteBatch { inner, db } = self;
        db.before_write(Op::Commit, "")?;
        db.inject(Op::Commit)
            .and_then(|()| inner.commit())
            .map_err(|e| db.fail(Op::Commit, None, e))
    }
}

/// A consistent, point-in-time view of every keyspace of the state database: later
/// commits are not seen through it, and every commit before it is seen whole. Holding it
/// keeps the engine from discarding the versions it can see, so drop it when done.
pub struct Snapshot {
    inner: fjall::Snapshot,
}

impl Snapshot {
    pub(super) fn new(inner: fjall::Snapshot) -> Snapshot {
        Snapshot { inner }
    }

    /// The value of `key` in `ks` as of the snapshot.
    pub fn get(&self, ks: &Keyspace, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, StorageError> {
        use fjall::Readable;
        self.inner
            .get(&ks.inner, key)
            .map(|v| v.map(Bytes))
            .map_err(|e| ks.fail(Op::Read, e))
    }

    /// Every entry of `ks`, in key order.
    pub fn iter<'k>(&self, ks: &'k Keyspace) -> Iter<'k> {
        use fjall::Readable;
        Iter::new(self.inner.iter(&ks.inner), ks)
    }

    /// The entries of `ks` whose keys lie in `range`, in key order.
    pub fn range<'k, K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        ks: &'k Keyspace,
        range: R,
    ) -> Iter<'k> {
        use fjall::Readable;
        Iter::new(self.inner.range(&ks.inner, range), ks)
    }

    /// The entries of `ks` whose keys start with `prefix`, in key order.
    pub fn prefix<'k>(&self, ks: &'k Keyspace, prefix: impl AsRef<[u8]>) -> Iter<'k> {
        use fjall::Readable;
        Iter::new(self.inner.prefix(&ks.inner, prefix), ks)
    }
}

/// Entries `(key, value)` in ascending key order (byte order of the keys); from the back,
/// descending. An item is an error when the engine could not read it; the iteration
/// should stop there.
pub struct Iter<'k> {
    inner: fjall::Iter,
    ks: &'k Keyspace,
}

impl<'k> Iter<'k> {
    fn new(inner: fjall::Iter, ks: &'k Keyspace) -> Iter<'k> {
        Iter { inner, ks }
    }

    /// The same entries, keys only: values are not read where the engine can avoid it.
    pub fn keys(self) -> Keys<'k> {
        Keys(self)
    }

    fn pair(&self, guard: fjall::Guard) -> Result<(Bytes, Bytes), StorageError> {
        self.ks.pair(guard)
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<(Bytes, Bytes), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let guard = self.inner.next()?;
        Some(self.pair(guard))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let guard = self.inner.next_back()?;
        Some(self.pair(guard))
    }
}

/// The keys of an [`Iter`], in the same order.
pub struct Keys<'k>(Iter<'k>);

impl Keys<'_> {
    fn key(&self, guard: fjall::Guard) -> Result<Bytes, StorageError> {
        guard
            .key()
            .map(Bytes)
            .map_err(|e| self.0.ks.fail(Op::Read, e))
    }
}

impl Iterator for Keys<'_> {
    type Item = Result<Bytes, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let guard = self.0.inner.next()?;
        Some(self.key(guard))
    }
}

impl DoubleEndedIterator for Keys<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let guard = self.0.inner.next_back()?;
        Some(self.key(guard))
    }
}

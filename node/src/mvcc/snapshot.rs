//! Point-in-time copies of the MVCC state, in two formats:
//!
//! * **etcd's** (what `Maintenance.Snapshot` streams, so `etcdctl snapshot save`,
//!   `etcdutl snapshot status|restore` and every tool that reads etcd snapshots take it): a
//!   bbolt file with etcd 3.5's buckets (`etcd_format`, written by `crate::bbolt`), then the
//!   SHA-256 of the file, as etcd appends it. [`restore`] also loads etcd's own snapshots.
//! * **cairn's own**, for raft snapshots between members (the apply state, checked by its
//!   digest) and for snapshots saved by cairn before it spoke bbolt, which [`restore`]
//!   still reads. All integers are big-endian.
//!
//! ```text
//! header   "CAIRNSNAP" | format u32 (= 3; 1 and 2 are read too) | revision i64 | compact revision i64 (-1: never)
//! sections, one per keyspace, in this order: kv_latest, kv_history, kv_revs, mvcc_meta,
//! kv_lease, leases, auth (absent from snapshots made before cairn had auth: restored
//! without users, roles or auth enabled)
//!   'S' | name length u8 | name
//!   then one record per entry, in key order: 'E' | key length u32 | key | value length u32 | value
//! end      'Z' | number of records u64
//! padding  zero bytes up to a multiple of 512
//! digest   SHA-256 of everything before it (32 bytes)
//! ```
//!
//! The padding and the digest are etcd's convention: etcd appends a SHA-256 of the database
//! file to the stream, and `etcdctl snapshot save` refuses a stream whose length modulo 512
//! is not 32 (a bbolt file is a whole number of pages).
//!
//! **Invariant:** everything in one snapshot is read from one storage snapshot, so the copy
//! is exactly the state at one revision whatever is applied meanwhile. Writing is streamed,
//! in bounded memory; the exact length is known in advance from a first pass over the same
//! storage snapshot ([`SnapshotSource::stream_len`], [`SnapshotSource::etcd_plan`]).
//!
//! `mvcc_meta`'s apply marker and configuration record are left out: they name an entry of
//! the source's raft log and its membership, which mean nothing to the cluster the copy is
//! restored into (a raft snapshot's receiver records the snapshot's own).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use sha2::{Digest, Sha256};

use super::{etcd_format, meta, Keyspaces, Mvcc, MvccError, Revisions};
use crate::bbolt::{self, BboltError, Plan, Reader};
use crate::storage::{Keyspace, Snapshot, StorageError, Store};

/// The first bytes of every snapshot.
pub const MAGIC: &[u8; 9] = b"CAIRNSNAP";
/// The format this cairn writes. Format 2 holds the MVCC encodings that store each value
/// once (see `mvcc/mod.rs`), which a cairn reading only format 1 would take for corruption.
/// Format 3 keeps the write counters in `mvcc_meta`'s progress record (see `meta.rs`),
/// which a cairn reading only format 2 would miss, counting no live keys. The older
/// formats' encodings are read as they are.
pub const FORMAT_VERSION: u32 = 3;
/// The formats this cairn reads.
const READS_FORMATS: [u32; 3] = [1, 2, FORMAT_VERSION];

const HEADER_LEN: u64 = MAGIC.len() as u64 + 4 + 8 + 8;
const TAG_SECTION: u8 = b'S';
const TAG_ENTRY: u8 = b'E';
const TAG_END: u8 = b'Z';
const END_LEN: u64 = 1 + 8;
/// The stream before the digest is padded to a multiple of this (see the module header).
const ALIGN: u64 = 512;
const DIGEST_LEN: u64 = 32;
/// Restore commits a batch once it holds this many bytes, to bound its memory.
const RESTORE_BATCH_BYTES: usize = 16 << 20;
/// Keys removed per batch when an install clears the old state.
const CLEAR_BATCH_KEYS: usize = 10_000;

/// Why a snapshot could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot i/o: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error("not a cairn snapshot")]
    NotCairn,
    #[error("not a snapshot: {0}")]
    Bbolt(#[from] BboltError),
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("snapshot format {0}, this cairn reads formats 1 to {FORMAT_VERSION}")]
    Format(u32),
    #[error("snapshot checksum mismatch: the file is damaged or truncated")]
    Checksum,
    #[error("snapshot is malformed: {0}")]
    Malformed(String),
    #[error("the target store already holds MVCC data; restore into a new data dir")]
    NotEmpty,
}

impl From<StorageError> for SnapshotError {
    fn from(e: StorageError) -> SnapshotError {
        SnapshotError::Mvcc(e.into())
    }
}

/// The MVCC state at one revision, ready to be serialised.
pub struct SnapshotSource {
    snap: Snapshot,
    ks: Keyspaces,
    revision: i64,
    compact_revision: i64,
}

impl Mvcc {
    /// Pins the current state for a snapshot. Holding it keeps the storage engine from discarding the
    /// versions it reads, so drop it when done.
    pub fn snapshot_source(&self) -> Result<SnapshotSource, MvccError> {
        let (snap, revs) = self.view_at()?;
        Ok(SnapshotSource {
            snap,
            ks: self.ks.clone(),
            revision: revs.current,
            compact_revision: revs.compact,
        })
    }
}

/// One piece of the stream, before encoding.
enum Item<'a> {
    Section(&'a str),
    Entry(&'a [u8], &'a [u8]),
}

impl Item<'_> {
    fn encoded_len(&self) -> u64 {
        match self {
            Item::Section(name) => 2 + name.len() as u64,
            Item::Entry(k, v) => 1 + 4 + k.len() as u64 + 4 + v.len() as u64,
        }
    }

    fn write_to(&self, out: &mut impl Write) -> Result<(), SnapshotError> {
        match self {
            Item::Section(name) => {
                let len = u8::try_from(name.len())
                    .map_err(|_| SnapshotError::Malformed(format!("section name {name}")))?;
                out.write_all(&[TAG_SECTION, len])?;
                out.write_all(name.as_bytes())?;
            }
            Item::Entry(k, v) => {
                out.write_all(&[TAG_ENTRY])?;
                for part in [k, v] {
                    out.write_all(&len_u32(part)?.to_be_bytes())?;
                    out.write_all(part)?;
                }
            }
        }
        Ok(())
    }
}

impl SnapshotSource {
    /// The revision the snapshot is taken at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The compact revision at that point; -1 if never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The exact length of the stream [`SnapshotSource::write_to`] produces, digest
    /// included. Reads every entry once.
    pub fn stream_len(&self) -> Result<u64, SnapshotError> {
        let mut body = HEADER_LEN + END_LEN;
        self.visit(|item| {
            body += item.encoded_len();
            Ok(())
        })?;
        Ok(padded(body) + DIGEST_LEN)
    }

    /// Writes the whole snapshot to `out` and returns the number of bytes written.
    pub fn write_to(&self, out: impl Write) -> Result<u64, SnapshotError> {
        let mut out = DigestWriter::new(BufWriter::with_capacity(64 << 10, out));
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_be_bytes())?;
        out.write_all(&self.revision.to_be_bytes())?;
        out.write_all(&self.compact_revision.to_be_bytes())?;
        let mut records = 0u64;
        self.visit(|item| {
            if matches!(item, Item::Entry(..)) {
                records += 1;
            }
            item.write_to(&mut out)
        })?;
        out.write_all(&[TAG_END])?;
        out.write_all(&records.to_be_bytes())?;
        let padding = padded(out.written) - out.written;
        io::copy(&mut io::repeat(0).take(padding), &mut out)?;
        let (mut inner, digest, written) = out.finish();
        inner.write_all(&digest)?;
        inner.flush()?;
        Ok(written + DIGEST_LEN)
    }

    /// The layout of the etcd-format file ([`SnapshotSource::write_etcd`]), from a first pass
    /// that writes nowhere. The stream is [`Plan::file_len`] plus the 32-byte digest.
    pub fn etcd_plan(&self) -> Result<Plan, SnapshotError> {
        Ok(etcd_format::write(&self.snap, &self.ks, io::sink(), None)?.0)
    }

    /// Writes the snapshot as etcd's bbolt file laid out as `plan` says, then its SHA-256;
    /// returns the number of bytes written.
    pub fn write_etcd(&self, out: impl Write, plan: Plan) -> Result<u64, SnapshotError> {
        let out = DigestWriter::new(BufWriter::with_capacity(64 << 10, out));
        let (written, out) = etcd_format::write(&self.snap, &self.ks, out, Some(plan))?;
        if written != plan {
            return Err(SnapshotError::Malformed(
                "the state changed between the two passes".into(),
            ));
        }
        let (mut inner, digest, written) = out.finish();
        inner.write_all(&digest)?;
        inner.flush()?;
        Ok(written + DIGEST_LEN)
    }

    /// The whole etcd-format stream: [`SnapshotSource::etcd_plan`], then
    /// [`SnapshotSource::write_etcd`], for writers that need no length in advance.
    pub fn write_etcd_all(&self, out: impl Write) -> Result<u64, SnapshotError> {
        let plan = self.etcd_plan()?;
        self.write_etcd(out, plan)
    }

    /// Calls `f` with every section and entry, in stream order, leaving out the apply
    /// marker and configuration record.
    fn visit(
        &self,
        mut f: impl FnMut(Item<'_>) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        for (name, ks) in sections(&self.ks) {
            f(Item::Section(name))?;
            for item in self.snap.iter(ks) {
                let (k, v) = item?;
                // The receiver records its own.
                if name == "mvcc_meta" && meta::is_apply_record(&k) {
                    continue;
                }
                f(Item::Entry(&k, &v))?;
            }
        }
        Ok(())
    }
}

/// Sections every snapshot has; the later ones may be missing from older snapshots.
const REQUIRED_SECTIONS: usize = 6;

/// The keyspaces a snapshot holds, with their names in the stream, in stream order.
fn sections(ks: &Keyspaces) -> [(&'static str, &Keyspace); 7] {
    [
        ("kv_latest", &ks.latest),
        ("kv_history", &ks.history),
        ("kv_revs", &ks.revs),
        ("mvcc_meta", &ks.meta),
        ("kv_lease", &ks.lease),
        ("leases", &ks.leases),
        ("auth", &ks.auth),
    ]
}

/// `n` rounded up to a multiple of [`ALIGN`].
fn padded(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

fn len_u32(part: &[u8]) -> Result<u32, SnapshotError> {
    u32::try_from(part.len())
        .map_err(|_| SnapshotError::Malformed(format!("entry of {} bytes", part.len())))
}

/// Passes bytes through while hashing and counting them.
struct DigestWriter<W> {
    inner: W,
    sha: Sha256,
    written: u64,
}

impl<W: Write> DigestWriter<W> {
    fn new(inner: W) -> DigestWriter<W> {
        DigestWriter {
            inner,
            sha: Sha256::new(),
            written: 0,
        }
    }

    fn finish(self) -> (W, [u8; 32], u64) {
        (self.inner, self.sha.finalize().into(), self.written)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Cuts what is written into chunks of `size` bytes (the last one shorter) and hands each
/// to `send`: how a snapshot is streamed in bounded memory.
pub struct Chunker<F> {
    size: usize,
    buf: Vec<u8>,
    send: F,
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> Chunker<F> {
    pub fn new(size: usize, send: F) -> Chunker<F> {
        Chunker {
            size,
            buf: Vec::with_capacity(size),
            send,
        }
    }
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> Write for Chunker<F> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(self.size - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == self.size {
            self.flush()?;
        }
        Ok(n)
    }

    /// Sends what is buffered as a (short) chunk.
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.size));
        (self.send)(chunk)
    }
}

/// What a restore loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    pub revision: i64,
    pub compact_revision: i64,
    pub records: u64,
}

/// Loads the snapshot file at `path` into `store`, whose MVCC keyspaces must be empty,
/// and syncs the store. The file is etcd's format (from cairn or etcd: its trailing
/// SHA-256 is checked unless `skip_hash_check`, for a `db` file copied out of a data dir,
/// as etcdutl) or cairn's own (always checked). The caller opens the MVCC store afterwards;
/// it resumes at the snapshot's revision.
pub fn restore(
    path: &Path,
    store: &Store,
    skip_hash_check: bool,
) -> Result<Restored, SnapshotError> {
    let mut file = File::open(path)?;
    let ks = Keyspaces::open(store)?;
    if ks.revs.first()?.is_some() || ks.meta.first()?.is_some() {
        return Err(SnapshotError::NotEmpty);
    }
    let mut magic = [0u8; MAGIC.len()];
    let is_cairn = file.read_exact(&mut magic).is_ok() && &magic == MAGIC;
    let restored = if is_cairn {
        verify_digest(&mut file)?;
        file.seek(SeekFrom::Start(0))?;
        load(&mut BufReader::with_capacity(64 << 10, file), store, &ks)?
    } else {
        etcd_format::load(&open_etcd(file, skip_hash_check)?, store, &ks)?
    };
    store.sync()?;
    Ok(restored)
}

/// What `etcdutl snapshot status` reports of the etcd-format snapshot at `path`. As
/// etcdutl, this reads the database without checking the trailing digest.
pub fn status(path: &Path) -> Result<etcd_format::Status, SnapshotError> {
    etcd_format::status(&open_etcd(File::open(path)?, true)?)
}

/// Opens an etcd-format snapshot: a bbolt file, followed by its SHA-256 if the length
/// says so (etcdutl's rule: length modulo 512 is 32).
fn open_etcd(mut file: File, skip_hash_check: bool) -> Result<Reader, SnapshotError> {
    let len = file.metadata()?.len();
    let has_hash = len % ALIGN == DIGEST_LEN;
    if !skip_hash_check {
        if !has_hash {
            return Err(SnapshotError::MissingHash);
        }
        if !digest_matches(&mut file, len)? {
            return Err(SnapshotError::Checksum);
        }
    }
    let db_len = if has_hash { len - DIGEST_LEN } else { len };
    Ok(bbolt::Reader::open(file, db_len)?)
}

/// Checks that the file at `path` is a whole snapshot: its trailing SHA-256 matches.
pub fn verify(path: &Path) -> Result<(), SnapshotError> {
    verify_digest(&mut File::open(path)?)
}

impl Mvcc {
    /// Replaces the whole MVCC state and the lease table with the snapshot file at `path`
    /// (a raft snapshot from the leader), stores `applied` as the apply marker and `config` as
    /// the configuration record, and syncs.
    /// The digest is checked before anything is touched. Reads wait until the new state
    /// is complete and the compaction worker pauses meanwhile. Not atomic across a crash:
    /// the caller keeps the file until this returns and installs it again after a crash.
    pub fn install(
        &self,
        path: &Path,
        applied: &[u8],
        config: &[u8],
    ) -> Result<Restored, SnapshotError> {
        let mut file = File::open(path)?;
        verify_digest(&mut file)?;
        file.seek(SeekFrom::Start(0))?;
        let restored = {
            let _compaction = self
                .compacting
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let _readers = self.gate.write().unwrap_or_else(PoisonError::into_inner);
            let (restored, history_added) = self.revs.change(|| {
                clear(&self.store, &self.ks)?;
                let restored = load(
                    &mut BufReader::with_capacity(64 << 10, file),
                    &self.store,
                    &self.ks,
                )?;
                // One batch: a short marker is read right only beside its record.
                let mut batch = self.store.batch();
                batch.insert(&self.ks.meta, meta::APPLIED, applied);
                batch.insert(&self.ks.meta, meta::APPLIED_CONFIG, config);
                batch.commit()?;
                self.store.sync()?;
                let progress = super::progress(&self.store.snapshot(), &self.ks)?;
                let revs = Revisions {
                    current: restored.revision,
                    compact: restored.compact_revision,
                    live_keys: progress.key_count,
                };
                Ok::<_, SnapshotError>(((restored, progress.history_added), revs))
            })?;
            self.alarms.reload(&self.ks.meta)?;
            self.history_added.store(history_added, Ordering::Release);
            restored
        };
        // The snapshot may hold an unfinished physical compaction: wake the worker.
        if let Ok(guard) = self.compactor.lock() {
            if let Some(tx) = guard.as_ref() {
                let (done, _) = tokio::sync::oneshot::channel();
                let rev = restored.compact_revision;
                let _ = tx.send(super::compact::Waiter { rev, done });
            }
        }
        Ok(restored)
    }
}

/// Removes every entry of the snapshot's keyspaces, `mvcc_meta` (and with it the apply
/// marker) first, in bounded batches.
fn clear(store: &Store, ks: &Keyspaces) -> Result<(), SnapshotError> {
    let mut order = sections(ks);
    order.sort_by_key(|(name, _)| *name != "mvcc_meta");
    for (_, keyspace) in order {
        // One pass over a view from before the deletes, committing as it goes.
        let mut batch = store.batch();
        let mut staged = 0;
        let view = store.snapshot();
        for key in view.iter(keyspace).keys() {
            batch.remove(keyspace, key?);
            staged += 1;
            if staged == CLEAR_BATCH_KEYS {
                std::mem::replace(&mut batch, store.batch()).commit()?;
                staged = 0;
            }
        }
        batch.commit()?;
    }
    Ok(())
}

/// Checks the trailing SHA-256 against the rest of the file.
fn verify_digest(file: &mut File) -> Result<(), SnapshotError> {
    let len = file.metadata()?.len();
    if len < HEADER_LEN + END_LEN + DIGEST_LEN || len % ALIGN != DIGEST_LEN {
        return Err(SnapshotError::Checksum);
    }
    if !digest_matches(file, len)? {
        return Err(SnapshotError::Checksum);
    }
    Ok(())
}

/// Whether the last 32 of the `len` bytes of `file` are the SHA-256 of the others.
fn digest_matches(file: &mut File, len: u64) -> io::Result<bool> {
    file.seek(SeekFrom::Start(0))?;
    let mut sha = Sha256::new();
    // The limit goes under the buffer, so reading ahead stops where the digest starts.
    let mut body = BufReader::with_capacity(64 << 10, (&mut *file).take(len - DIGEST_LEN));
    io::copy(&mut body, &mut sha)?;
    let mut expected = [0u8; DIGEST_LEN as usize];
    file.read_exact(&mut expected)?;
    Ok(sha.finalize()[..] == expected)
}

/// Parses the stream (already verified) and writes its entries to the keyspaces.
fn load(input: &mut impl Read, store: &Store, ks: &Keyspaces) -> Result<Restored, SnapshotError> {
    let mut magic = [0u8; MAGIC.len()];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(SnapshotError::NotCairn);
    }
    let format = u32::from_be_bytes(read_array(input)?);
    if !READS_FORMATS.contains(&format) {
        return Err(SnapshotError::Format(format));
    }
    let revision = i64::from_be_bytes(read_array(input)?);
    let compact_revision = i64::from_be_bytes(read_array(input)?);
    let names = sections(ks);
    let mut target: Option<&Keyspace> = None;
    let mut next_section = 0;
    let mut records = 0u64;
    let mut batch = store.batch();
    let mut batch_bytes = 0usize;
    loop {
        let [tag] = read_array(input)?;
        match tag {
            TAG_SECTION => {
                let [len] = read_array(input)?;
                let name = read_vec(input, usize::from(len))?;
                let Some((expected, keyspace)) = names.get(next_section) else {
                    return Err(malformed("more sections than keyspaces"));
                };
                if name != expected.as_bytes() {
                    return Err(malformed(format!(
                        "section {:?}",
                        String::from_utf8_lossy(&name)
                    )));
                }
                target = Some(keyspace);
                next_section += 1;
            }
            TAG_ENTRY => {
                let keyspace = target.ok_or_else(|| malformed("entry before any section"))?;
                let key = read_part(input)?;
                let value = read_part(input)?;
                batch_bytes += key.len() + value.len();
                batch.insert(keyspace, key, value);
                records += 1;
                if batch_bytes >= RESTORE_BATCH_BYTES {
                    std::mem::replace(&mut batch, store.batch()).commit()?;
                    batch_bytes = 0;
                }
            }
            TAG_END => {
                let count = u64::from_be_bytes(read_array(input)?);
                if count != records || next_section < REQUIRED_SECTIONS {
                    return Err(malformed("record count or sections do not match the end"));
                }
                batch.commit()?;
                return Ok(Restored {
                    revision,
                    compact_revision,
                    records,
                });
            }
            other => return Err(malformed(format!("unknown tag {other:#04x}"))),
        }
    }
}

fn read_array<const N: usize>(input: &mut impl Read) -> Result<[u8; N], SnapshotError> {
    let mut out = [0u8; N];
    input.read_exact(&mut out).map_err(truncated)?;
    Ok(out)
}

fn read_vec(input: &mut impl Read, len: usize) -> Result<Vec<u8>, SnapshotError> {
    let mut out = vec![0u8; len];
    input.read_exact(&mut out).map_err(truncated)?;
    Ok(out)
}

/// A length-prefixed key or value.
fn read_part(input: &mut impl Read) -> Result<Vec<u8>, SnapshotError> {
    let len = u32::from_be_bytes(read_array(input)?);
    read_vec(input, len as usize)
}

fn truncated(e: io::Error) -> SnapshotError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        malformed("truncated")
    } else {
        SnapshotError::Io(e)
    }
}

fn malformed(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed(what.into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proto::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};

    fn open(dir: &Path) -> Mvcc {
        Mvcc::open(Arc::new(Store::open(dir).expect("store"))).expect("mvcc")
    }

    fn put(mvcc: &Mvcc, key: &[u8], value: &[u8]) {
        let op = request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        });
        let req = TxnRequest {
            success: vec![RequestOp { request: Some(op) }],
            ..Default::default()
        };
        mvcc.apply_txn(&req, b"marker").expect("apply");
    }

    fn all_keys(mvcc: &Mvcc, revision: i64) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let resp = mvcc
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision,
                ..Default::default()
            })
            .expect("range");
        resp.kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value, kv.mod_revision))
            .collect()
    }

    /// A store with history, a compaction and a key holding a 0 byte, its snapshot taken
    /// before one more write, encoded by `encode`; then restored into a new store.
    async fn round_trip(encode: impl Fn(&SnapshotSource) -> Vec<u8>) {
        let src_dir = tempfile::tempdir().expect("tempdir");
        let src = open(src_dir.path());
        put(&src, b"a", b"1"); // 2
        put(&src, b"a\0b", &[0u8; 3000]); // 3
        put(&src, b"a", b"2"); // 4
        put(&src, b"c", b""); // 5
        src.compact(3, b"marker")
            .expect("compact")
            .await
            .expect("physical compaction");
        let source = src.snapshot_source().expect("source");
        // Writes after the snapshot is taken are not in it.
        put(&src, b"late", b"x");
        let bytes = encode(&source);
        assert_eq!(
            bytes.len() as u64 % ALIGN,
            DIGEST_LEN,
            "etcdctl's size check"
        );
        drop(source);

        let file = src_dir.path().join("snap.db");
        std::fs::write(&file, &bytes).expect("write file");
        let dst_dir = tempfile::tempdir().expect("tempdir");
        let restored = {
            let store = Store::open(dst_dir.path()).expect("store");
            let restored = restore(&file, &store, false).expect("restore");
            assert!(matches!(
                restore(&file, &store, false),
                Err(SnapshotError::NotEmpty)
            ));
            restored
        };
        assert_eq!((restored.revision, restored.compact_revision), (5, 3));
        let dst = open(dst_dir.path());
        assert_eq!(dst.current_revision(), 5);
        assert_eq!(dst.compact_revision(), 3);
        assert_eq!(dst.key_count(), 3);
        assert_eq!(all_keys(&dst, 0), all_keys(&src, 5));
        assert_eq!(all_keys(&dst, 4), all_keys(&src, 4));
        assert_eq!(dst.hash_kv(5).expect("hash"), {
            let mut h = src.hash_kv(5).expect("hash");
            h.current_revision = 5;
            h
        });
        assert!(dst.applied_marker().expect("marker").is_none());
    }

    #[tokio::test]
    async fn cairn_snapshots_round_trip_into_a_new_store() {
        round_trip(|source| {
            let mut bytes = Vec::new();
            let written = source.write_to(&mut bytes).expect("write");
            assert_eq!(written, bytes.len() as u64);
            assert_eq!(
                source.stream_len().expect("len"),
                written,
                "length known in advance"
            );
            assert!(bytes.starts_with(MAGIC));
            bytes
        })
        .await;
    }

    #[tokio::test]
    async fn etcd_snapshots_round_trip_into_a_new_store() {
        round_trip(|source| {
            let plan = source.etcd_plan().expect("plan");
            let mut bytes = Vec::new();
            let written = source.write_etcd(&mut bytes, plan).expect("write");
            assert_eq!(written, bytes.len() as u64);
            assert_eq!(
                plan.file_len() + DIGEST_LEN,
                written,
                "length known in advance"
            );
            bytes
        })
        .await;
    }

    #[test]
    fn raised_alarms_fill_etcds_alarm_bucket() {
        use crate::proto::etcdserverpb::{
            alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmType,
        };
        use prost::Message;
        let dir = tempfile::tempdir().expect("tempdir");
        let mvcc = open(dir.path());
        let raised = AlarmMember {
            member_id: 0x8e9e05c52164694d,
            alarm: AlarmType::Nospace as i32,
        };
        let req = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: raised.member_id,
            alarm: raised.alarm,
        };
        mvcc.apply_alarm(&req, b"marker").expect("alarm");
        let file = dir.path().join("snap.db");
        let source = mvcc.snapshot_source().expect("source");
        let mut out = File::create(&file).expect("create");
        source.write_etcd_all(&mut out).expect("write");
        drop(out);
        let reader = open_etcd(File::open(&file).expect("open"), false).expect("reader");
        let mut alarms = Vec::new();
        reader
            .for_each(&mut |bucket, entry| {
                if let (b"alarm", Some((k, v))) = (bucket, entry) {
                    assert!(v.is_empty(), "etcd stores no value");
                    alarms.push(AlarmMember::decode(k).expect("an AlarmMember"));
                }
                Ok(())
            })
            .expect("read");
        assert_eq!(alarms, vec![raised]);
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mvcc = open(&dir.path().join("src"));
        put(&mvcc, b"k", b"v");
        let mut bytes = Vec::new();
        let source = mvcc.snapshot_source().expect("source");
        source.write_to(&mut bytes).expect("write");
        let file = dir.path().join("snap.db");
        let try_restore = |bytes: &[u8], name: &str| {
            std::fs::write(&file, bytes).expect("write file");
            let store = Store::open(&dir.path().join(name)).expect("store");
            restore(&file, &store, false)
        };
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert!(matches!(
            try_restore(&flipped, "a"),
            Err(SnapshotError::Checksum)
        ));
        assert!(matches!(
            try_restore(&bytes[..bytes.len() - 1], "b"),
            Err(SnapshotError::Checksum)
        ));
        // A well-formed stream from something else: right size and digest, no bbolt meta.
        let mut foreign = vec![0u8; 512];
        foreign[..6].copy_from_slice(b"bbolt!");
        let digest: [u8; 32] = Sha256::digest(&foreign).into();
        foreign.extend_from_slice(&digest);
        assert!(matches!(
            try_restore(&foreign, "c"),
            Err(SnapshotError::Bbolt(BboltError::NoMeta))
        ));
        assert!(try_restore(&bytes, "d").is_ok());
    }
}

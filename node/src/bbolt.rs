//! The bbolt file format (etcd's backend, `go.etcd.io/bbolt` 1.3): a streaming writer and a
//! checking reader, nothing else. It knows pages, B+trees and buckets, not etcd's buckets
//! (that is `mvcc::etcd_format`).
//!
//! Why not the `bbolt-rs` crate: it writes through an mmap'd file in transactions, so a
//! snapshot would go to a temp file first and be streamed afterwards, and it pulls a CLI's
//! and a fake-data generator's dependencies into the node. A file that is written once, in
//! key order, and never updated needs only the bottom-up bulk load below.
//!
//! Layout written (page size 4096, little-endian as bbolt on amd64/arm64):
//!
//! ```text
//! page 0, 1   meta (txid 0 and 1, identical otherwise), checksum FNV-1a 64
//! page 2      freelist, empty
//! then        each bucket in the order given: its leaves in key order, then each branch
//!             level above them; a leaf or branch larger than a page takes overflow pages
//! last        the root bucket's leaf: bucket name -> (root pgid, sequence 0); an empty
//!             bucket is stored inline, as bbolt does
//! ```
//!
//! Every page below the high-water mark is reachable, so `bbolt check` (which `etcdutl
//! snapshot status` runs) finds nothing. The meta pages come first but name the root page,
//! which is written last: the caller runs the same writes twice, first into
//! [`std::io::sink`] to learn the [`Plan`], then for real ([`Writer::new`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Page size of every file written.
pub const PAGE_SIZE: usize = 4096;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH_FLAG: u16 = 0x01;
const LEAF_FLAG: u16 = 0x02;
const META_FLAG: u16 = 0x04;
const FREELIST_FLAG: u16 = 0x10;
const BUCKET_LEAF_FLAG: u32 = 0x01;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
/// Bytes of the meta struct covered by its checksum.
const META_SUMMED: usize = 56;
const FIRST_DATA_PAGE: u64 = 3;
/// Deeper than any tree bbolt builds: a cycle in a damaged file stops here.
const MAX_DEPTH: usize = 64;

/// Why a bbolt file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    #[error("bbolt i/o: {0}")]
    Io(#[from] io::Error),
    #[error("not a bbolt file, or both meta pages are damaged")]
    NoMeta,
    #[error("bbolt file is damaged: {0}")]
    Damaged(String),
}

fn damaged(what: impl Into<String>) -> BboltError {
    BboltError::Damaged(what.into())
}

/// A key and its value, or `None` when a bucket starts.
pub type Entry<'a> = Option<(&'a [u8], &'a [u8])>;

/// What [`Reader::for_each`] calls: bucket name and entry.
pub type Visit<'a> = dyn FnMut(&[u8], Entry<'_>) -> Result<(), BboltError> + 'a;

/// A leaf element's flags, key and value.
type ElementFn<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<(), BboltError> + 'a;

/// What the meta pages need: known after a first pass over the same data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The root bucket's page.
    pub root: u64,
    /// Number of pages in the file (bbolt's high-water mark).
    pub pages: u64,
}

impl Plan {
    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }
}

/// Writes a bbolt file front to back. Buckets are written one at a time
/// ([`Writer::bucket`]), their keys in strictly increasing order.
pub struct Writer<W> {
    out: W,
    next_page: u64,
    /// (name, value in the root bucket) of every finished bucket.
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<W: Write> Writer<W> {
    /// Starts a file; `plan` is what [`Writer::finish`] returned for the same writes, or
    /// `None` in the first pass (the meta pages are then zeros).
    pub fn new(mut out: W, plan: Option<Plan>) -> io::Result<Writer<W>> {
        for txid in 0..2u64 {
            let mut page = [0u8; PAGE_SIZE];
            if let Some(plan) = plan {
                write_meta(&mut page, txid, plan);
            }
            out.write_all(&page)?;
        }
        let mut freelist = [0u8; PAGE_SIZE];
        put_header(&mut freelist, 2, FREELIST_FLAG, 0, 0);
        out.write_all(&freelist)?;
        Ok(Writer {
            out,
            next_page: FIRST_DATA_PAGE,
            buckets: Vec::new(),
        })
    }

    /// Starts a bucket named `name`; every bucket name must be new.
    pub fn bucket(&mut self, name: &[u8]) -> BucketWriter<'_, W> {
        BucketWriter {
            name: name.to_vec(),
            writer: self,
            leaf: Node::default(),
            children: Vec::new(),
        }
    }

    /// Writes the root bucket and returns the plan the meta pages need.
    pub fn finish(mut self) -> io::Result<(Plan, W)> {
        self.buckets.sort();
        let mut root = Node::default();
        for (name, value) in std::mem::take(&mut self.buckets) {
            root.push(name, value, BUCKET_LEAF_FLAG);
        }
        let pgid = self.write_node(&root, LEAF_FLAG)?;
        self.out.flush()?;
        let plan = Plan {
            root: pgid,
            pages: self.next_page,
        };
        Ok((plan, self.out))
    }

    /// Writes `node` as a page (with overflow pages if it needs them); returns its pgid.
    fn write_node(&mut self, node: &Node, flag: u16) -> io::Result<u64> {
        let pgid = self.next_page;
        let bytes = node.encode(pgid, flag);
        self.next_page += (bytes.len() / PAGE_SIZE) as u64;
        self.out.write_all(&bytes)?;
        Ok(pgid)
    }
}

/// Elements of one page being filled: keys with values (leaf) or child pgids (branch).
#[derive(Default)]
struct Node {
    elements: Vec<(Vec<u8>, Vec<u8>, u32)>,
    size: usize,
}

impl Node {
    fn push(&mut self, key: Vec<u8>, value: Vec<u8>, flags: u32) {
        self.size += ELEMENT + key.len() + value.len();
        self.elements.push((key, value, flags));
    }

    /// Whether one more element of this size still fits in one page.
    fn fits(&self, extra: usize) -> bool {
        self.elements.is_empty() || HEADER + self.size + ELEMENT + extra <= PAGE_SIZE
    }

    /// The page bytes, padded to whole pages. A branch element's "value" is the child's
    /// pgid, which bbolt stores inside the element rather than after the key.
    fn encode(&self, pgid: u64, flag: u16) -> Vec<u8> {
        let branch = flag == BRANCH_FLAG;
        let data_len: usize = self
            .elements
            .iter()
            .map(|(k, v, _)| k.len() + if branch { 0 } else { v.len() })
            .sum();
        let len = HEADER + ELEMENT * self.elements.len() + data_len;
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let mut out = vec![0u8; pages * PAGE_SIZE];
        let count = u16::try_from(self.elements.len()).unwrap_or(u16::MAX);
        put_header(&mut out, pgid, flag, count, (pages - 1) as u32);
        let mut data = HEADER + ELEMENT * self.elements.len();
        for (i, (key, value, flags)) in self.elements.iter().enumerate() {
            let at = HEADER + ELEMENT * i;
            let pos = (data - at) as u32;
            let el = &mut out[at..at + ELEMENT];
            if branch {
                el[0..4].copy_from_slice(&pos.to_le_bytes());
                el[4..8].copy_from_slice(&(key.len() as u32).to_le_bytes());
                el[8..16].copy_from_slice(value);
            } else {
                el[0..4].copy_from_slice(&flags.to_le_bytes());
                el[4..8].copy_from_slice(&pos.to_le_bytes());
                el[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
                el[12..16].copy_from_slice(&(value.len() as u32).to_le_bytes());
            }
            out[data..data + key.len()].copy_from_slice(key);
            data += key.len();
            if !branch {
                out[data..data + value.len()].copy_from_slice(value);
                data += value.len();
            }
        }
        out
    }
}

/// One bucket being written; [`BucketWriter::finish`] must be called.
pub struct BucketWriter<'a, W: Write> {
    name: Vec<u8>,
    writer: &'a mut Writer<W>,
    leaf: Node,
    /// (first key, pgid) of each leaf written: the level above, built at the end. One key
    /// per page: a bounded fraction (about 1/200 for short keys) of the bucket's size.
    children: Vec<(Vec<u8>, u64)>,
}

impl<W: Write> BucketWriter<'_, W> {
    /// Adds an entry; keys must come in strictly increasing byte order.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if !self.leaf.fits(key.len() + value.len()) {
            self.flush_leaf()?;
        }
        self.leaf.push(key.to_vec(), value.to_vec(), 0);
        Ok(())
    }

    fn flush_leaf(&mut self) -> io::Result<()> {
        let leaf = std::mem::take(&mut self.leaf);
        let pgid = self.writer.write_node(&leaf, LEAF_FLAG)?;
        if let Some((first, _, _)) = leaf.elements.into_iter().next() {
            self.children.push((first, pgid));
        }
        Ok(())
    }

    /// Writes what is left and the branch levels, and records the bucket in the root.
    pub fn finish(mut self) -> io::Result<()> {
        let value = if self.leaf.elements.is_empty() && self.children.is_empty() {
            // bbolt's inline bucket: header (root 0, sequence 0), then an empty leaf page.
            let mut value = vec![0u8; 16 + HEADER];
            value[16 + 8..16 + 10].copy_from_slice(&LEAF_FLAG.to_le_bytes());
            value
        } else {
            if !self.leaf.elements.is_empty() {
                self.flush_leaf()?;
            }
            let mut level = std::mem::take(&mut self.children);
            while level.len() > 1 {
                level = self.write_branches(level)?;
            }
            let root = level.first().map_or(0, |(_, pgid)| *pgid);
            let mut value = vec![0u8; 16];
            value[..8].copy_from_slice(&root.to_le_bytes());
            value
        };
        self.writer.buckets.push((self.name, value));
        Ok(())
    }

    /// Writes one branch level over `children`; returns the level above.
    fn write_branches(&mut self, children: Vec<(Vec<u8>, u64)>) -> io::Result<Vec<(Vec<u8>, u64)>> {
        let mut above = Vec::new();
        let mut node = Node::default();
        for (key, pgid) in children {
            // A branch needs at least two children to be useful; bbolt reads one fine.
            if !node.fits(key.len()) {
                let full = std::mem::take(&mut node);
                let at = self.writer.write_node(&full, BRANCH_FLAG)?;
                above.push((first_key(&full), at));
            }
            // The element's size counts the pgid in place of a value: 16 bytes either way.
            node.size += ELEMENT + key.len();
            node.elements.push((key, pgid.to_le_bytes().to_vec(), 0));
        }
        let at = self.writer.write_node(&node, BRANCH_FLAG)?;
        above.push((first_key(&node), at));
        Ok(above)
    }
}

fn first_key(node: &Node) -> Vec<u8> {
    node.elements
        .first()
        .map(|(k, _, _)| k.clone())
        .unwrap_or_default()
}

fn put_header(page: &mut [u8], pgid: u64, flag: u16, count: u16, overflow: u32) {
    page[0..8].copy_from_slice(&pgid.to_le_bytes());
    page[8..10].copy_from_slice(&flag.to_le_bytes());
    page[10..12].copy_from_slice(&count.to_le_bytes());
    page[12..16].copy_from_slice(&overflow.to_le_bytes());
}

fn write_meta(page: &mut [u8], txid: u64, plan: Plan) {
    put_header(page, txid, META_FLAG, 0, 0);
    let m = &mut page[HEADER..];
    m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION.to_le_bytes());
    m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    // flags (4 bytes) stay 0; root bucket: root pgid, sequence 0.
    m[16..24].copy_from_slice(&plan.root.to_le_bytes());
    m[32..40].copy_from_slice(&2u64.to_le_bytes()); // freelist
    m[40..48].copy_from_slice(&plan.pages.to_le_bytes());
    m[48..56].copy_from_slice(&txid.to_le_bytes());
    let sum = fnv1a64(&m[..META_SUMMED]);
    m[56..64].copy_from_slice(&sum.to_le_bytes());
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A bbolt file opened for reading, checked as it is read: every page lies inside the file
/// and below the high-water mark, has the type its parent expects, and keys are strictly
/// increasing within a page and between the bounds its parent gives.
pub struct Reader {
    file: File,
    page_size: usize,
    root: u64,
    pages: u64,
}

impl Reader {
    /// Opens `file`, whose first `len` bytes are the database (an etcd snapshot has its
    /// SHA-256 after them).
    pub fn open(file: File, len: u64) -> Result<Reader, BboltError> {
        let mut best: Option<(u64, Reader)> = None;
        for candidate in 0..2u64 {
            // Meta page 1 sits at one page size, not known yet: try the common ones.
            for page_size in [4096u64, 8192, 16384, 65536] {
                let at = if candidate == 0 { 0 } else { page_size };
                if at + 128 > len {
                    continue;
                }
                let mut head = [0u8; 128];
                file.read_exact_at(&mut head, at)?;
                let Some((txid, reader)) = parse_meta(&head, &file, len)? else {
                    continue;
                };
                if reader.page_size as u64 != page_size && candidate == 1 {
                    continue;
                }
                if best.as_ref().is_none_or(|(t, _)| txid > *t) {
                    best = Some((txid, reader));
                }
                break;
            }
        }
        best.map(|(_, r)| r).ok_or(BboltError::NoMeta)
    }

    /// The file size bbolt reports (`tx.Size()`): pages times page size.
    pub fn size(&self) -> u64 {
        self.pages * self.page_size as u64
    }

    /// Calls `f` with each top-level bucket's name and `None`, then with its name and each
    /// (key, value) in key order; buckets in name order.
    pub fn for_each(&self, f: &mut Visit<'_>) -> Result<(), BboltError> {
        let mut buckets = Vec::new();
        self.walk(self.root, 0, &mut |flags, k, v| {
            if flags & BUCKET_LEAF_FLAG == 0 {
                return Err(damaged("a plain value in the root bucket"));
            }
            buckets.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        for (name, header) in buckets {
            f(&name, None)?;
            if header.len() < 16 {
                return Err(damaged("short bucket header"));
            }
            let root = le_u64(&header, 0);
            let mut entry = |flags: u32, k: &[u8], v: &[u8]| {
                if flags & BUCKET_LEAF_FLAG != 0 {
                    // etcd's buckets hold no nested buckets; skip them like ForEach's values.
                    return Ok(());
                }
                f(&name, Some((k, v)))
            };
            if root == 0 {
                leaf_elements(&header[16..], &mut entry)?;
            } else {
                self.walk(root, 0, &mut entry)?;
            }
        }
        Ok(())
    }

    fn read_page(&self, pgid: u64) -> Result<Vec<u8>, BboltError> {
        if pgid < 2 || pgid >= self.pages {
            return Err(damaged(format!("page {pgid} outside the file")));
        }
        let at = pgid * self.page_size as u64;
        let mut page = vec![0u8; self.page_size];
        self.file.read_exact_at(&mut page, at)?;
        if le_u64(&page, 0) != pgid {
            return Err(damaged(format!(
                "page {pgid} has the id {}",
                le_u64(&page, 0)
            )));
        }
        let overflow = u64::from(le_u32(&page, 12));
        if overflow > 0 {
            if pgid + overflow >= self.pages {
                return Err(damaged(format!("page {pgid} overflows past the end")));
            }
            page.resize(self.page_size * (overflow as usize + 1), 0);
            self.file
                .read_exact_at(&mut page[self.page_size..], at + self.page_size as u64)?;
        }
        Ok(page)
    }

    /// Visits the leaf elements under `pgid` in key order.
    fn walk(&self, pgid: u64, depth: usize, f: &mut ElementFn<'_>) -> Result<(), BboltError> {
        if depth > MAX_DEPTH {
            return Err(damaged("tree too deep (a cycle?)"));
        }
        let page = self.read_page(pgid)?;
        match le_u16(&page, 8) {
            LEAF_FLAG => leaf_elements(&page, f),
            BRANCH_FLAG => {
                let count = usize::from(le_u16(&page, 10));
                let mut previous: Option<Vec<u8>> = None;
                for i in 0..count {
                    let at = HEADER + ELEMENT * i;
                    let el = page
                        .get(at..at + ELEMENT)
                        .ok_or_else(|| damaged("branch element"))?;
                    let key = slice(&page, at + le_u32(el, 0) as usize, le_u32(el, 4) as usize)?;
                    if previous.as_deref().is_some_and(|p| p >= key) {
                        return Err(damaged(format!("keys out of order on page {pgid}")));
                    }
                    previous = Some(key.to_vec());
                    self.walk(le_u64(el, 8), depth + 1, f)?;
                }
                Ok(())
            }
            other => Err(damaged(format!("page {pgid} has type {other:#x}"))),
        }
    }
}

/// Reads a meta page's fields; `None` if it is not a valid meta.
fn parse_meta(head: &[u8], file: &File, len: u64) -> Result<Option<(u64, Reader)>, BboltError> {
    if le_u16(head, 8) != META_FLAG {
        return Ok(None);
    }
    let m = &head[HEADER..];
    if le_u32(m, 0) != MAGIC
        || le_u32(m, 4) != VERSION
        || fnv1a64(&m[..META_SUMMED]) != le_u64(m, 56)
    {
        return Ok(None);
    }
    let page_size = le_u32(m, 8) as usize;
    let pages = le_u64(m, 40);
    if !(512..=1 << 20).contains(&page_size) || pages * page_size as u64 > len {
        return Err(damaged(format!(
            "{pages} pages of {page_size} bytes do not fit in {len} bytes (truncated?)"
        )));
    }
    let reader = Reader {
        file: file.try_clone()?,
        page_size,
        root: le_u64(m, 16),
        pages,
    };
    Ok(Some((le_u64(m, 48), reader)))
}

/// The elements of a leaf page (a whole page or an inline bucket's), keys checked in order.
fn leaf_elements(page: &[u8], f: &mut ElementFn<'_>) -> Result<(), BboltError> {
    if page.len() < HEADER || le_u16(page, 8) != LEAF_FLAG {
        return Err(damaged("expected a leaf page"));
    }
    let count = usize::from(le_u16(page, 10));
    let mut previous: Option<&[u8]> = None;
    for i in 0..count {
        let at = HEADER + ELEMENT * i;
        let el = page
            .get(at..at + ELEMENT)
            .ok_or_else(|| damaged("leaf element"))?;
        let pos = at + le_u32(el, 4) as usize;
        let klen = le_u32(el, 8) as usize;
        let key = slice(page, pos, klen)?;
        let value = slice(page, pos + klen, le_u32(el, 12) as usize)?;
        if previous.is_some_and(|p| p >= key) {
            return Err(damaged("keys out of order in a leaf"));
        }
        previous = Some(key);
        f(le_u32(el, 0), key, value)?;
    }
    Ok(())
}

fn slice(page: &[u8], at: usize, len: usize) -> Result<&[u8], BboltError> {
    page.get(at..at.saturating_add(len))
        .ok_or_else(|| damaged("element points outside its page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Buckets = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

    fn write_all(buckets: &Buckets, out: impl Write, plan: Option<Plan>) -> (Plan, impl Write) {
        let mut w = Writer::new(out, plan).expect("new");
        for (name, entries) in buckets {
            let mut b = w.bucket(name);
            for (k, v) in entries {
                b.put(k, v).expect("put");
            }
            b.finish().expect("finish");
        }
        w.finish().expect("finish")
    }

    fn read_back(path: &std::path::Path) -> Result<Buckets, BboltError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let reader = Reader::open(file, len)?;
        let mut out: Buckets = Vec::new();
        reader.for_each(&mut |name, entry| {
            match entry {
                None => out.push((name.to_vec(), Vec::new())),
                Some((k, v)) => {
                    if let Some(last) = out.last_mut() {
                        last.1.push((k.to_vec(), v.to_vec()));
                    }
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn files_round_trip_through_many_levels_and_overflow_pages() {
        let big: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000u32)
            .map(|i| {
                (
                    i.to_be_bytes().to_vec(),
                    vec![(i % 251) as u8; (i % 97) as usize],
                )
            })
            .chain([(vec![0xff; 3], vec![7u8; 3 * PAGE_SIZE + 5])])
            .collect();
        let buckets: Buckets = vec![
            (b"key".to_vec(), big),
            (b"alarm".to_vec(), Vec::new()),
            (b"meta".to_vec(), vec![(b"a".to_vec(), b"1".to_vec())]),
        ];
        let (plan, _) = write_all(&buckets, io::sink(), None);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let (again, _) = write_all(&buckets, File::create(&path).expect("create"), Some(plan));
        assert_eq!(plan, again, "both passes lay out the same pages");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            plan.file_len()
        );
        let mut expected = buckets.clone();
        expected.sort();
        assert_eq!(read_back(&path).expect("read"), expected);
    }

    #[test]
    fn damaged_files_are_refused() {
        let buckets: Buckets = vec![(
            b"key".to_vec(),
            (0..2000u32)
                .map(|i| (i.to_be_bytes().to_vec(), vec![1; 50]))
                .collect(),
        )];
        let (plan, _) = write_all(&buckets, io::sink(), None);
        let mut bytes = Vec::new();
        write_all(&buckets, &mut bytes, Some(plan));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", bytes[..bytes.len() - PAGE_SIZE].to_vec()),
            ("no meta", {
                let mut b = bytes.clone();
                b[HEADER] ^= 1;
                b[PAGE_SIZE + HEADER] ^= 1;
                b
            }),
            ("branch pointing nowhere", {
                let mut b = bytes.clone();
                // The root bucket's leaf is the last page; its bucket names page 9999.
                let root = plan.root as usize * PAGE_SIZE;
                let pos = root + HEADER + le_u32(&b, root + HEADER + 4) as usize + 3;
                b[pos..pos + 8].copy_from_slice(&9999u64.to_le_bytes());
                b
            }),
        ];
        for (what, case) in cases {
            std::fs::write(&path, case).expect("write");
            assert!(read_back(&path).is_err(), "{what} must be refused");
        }
    }
}

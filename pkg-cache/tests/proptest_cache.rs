//! Reference-model property test of [`SliceCache`]: random writes
//! (around block and chunk boundaries, and sequential appends; every other
//! one handed over as bytes lent by a log, kept in place from `LEND_MIN`
//! on), reads,
//! truncates, removes, flush snapshots, flushed marks, aborts and
//! evictions on three files, checked after every step against a model.
//!
//! The model keeps, per file, its content, the LSN and pending state of
//! every byte, and a "store": the bytes that a flushed mark made clean (what
//! the object store holds). After every step every file is read whole; the
//! ranges the cache reports missing are taken from the store model, and the
//! result must equal the file model byte for byte. Also checked after every
//! step: a pending byte is never reported missing (never evicted), the
//! cache holds nothing outside the written bytes, and the counters
//! (pending bytes, files, chunks, extents) match the model. Every snapshot
//! must hold exactly the model's pending bytes of its block, with an LSN
//! that covers them.
//!
//! Store model: a flushed mark stores, for the bytes of its block with
//! `0 < lsn <= snapshot.lsn`, their current content (which is what the
//! snapshot holds for them: they were not written since). Bytes truncated
//! or removed after the snapshot (LSN reset to 0) are not stored: the block
//! store cuts its block map at a truncate, so a late upload does not bring
//! them back. A truncate cuts the store model too.
//!
//! A remove while a snapshot is in flight ends that snapshot's claim on
//! the block (the file is gone; a re-created file may snapshot the block
//! again, and the stale snapshot's mark changes nothing). Blocks with a
//! snapshot in flight at a remove are "tainted": the one-snapshot-per-block
//! check skips them, and the pending count is then only checked as an
//! upper bound (the cache may keep more bytes pending than the model, never
//! fewer).
//!
//! Cases: `PROPTEST_CASES` (default 128).

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use proptest::prelude::*;
use slicefs_cache::{
    BLOCK_SIZE, BlockSnapshot, CHUNK_SIZE, CacheConfig, CacheStats, FileId, SliceCache,
};
use slicefs_wal::sim::SimStorage;
use slicefs_wal::{
    ChunkIndex, Durability, MmapPersister, Persister, SliceId, SliceWrite, WalConfig,
};

/// Model granularity; divides the block size.
const PAGE: u64 = 4096;
/// Files 0..FILES.
const FILES: u64 = 3;
/// Small enough that eviction really happens.
const CAPACITY: u64 = 1 << 20;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128)
}

/// Write data: distinct per LSN, never zero (so a hole is never mistaken
/// for written bytes).
fn pattern(lsn: u64, len: usize) -> Vec<u8> {
    let mut x = lsn.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 24) as u8) | 1
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Size {
    At(u64),
    /// Percent of the current length.
    Frac(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        file: u64,
        offset: u64,
        len: usize,
    },
    /// A write at the end of the file's previous write.
    Append {
        file: u64,
        len: usize,
    },
    Read {
        file: u64,
        offset: u64,
        len: usize,
    },
    Truncate {
        file: u64,
        size: Size,
    },
    Remove {
        file: u64,
    },
    Snapshot {
        file: u64,
    },
    MarkFlushed {
        pick: usize,
    },
    Abort {
        pick: usize,
    },
    Evict,
}

fn offset() -> impl Strategy<Value = u64> {
    let base = prop_oneof![
        Just(0u64),
        Just(BLOCK_SIZE),
        Just(2 * BLOCK_SIZE),
        Just(CHUNK_SIZE - BLOCK_SIZE),
        Just(CHUNK_SIZE),
        Just(CHUNK_SIZE + BLOCK_SIZE),
    ];
    (base, 0..48u64 << 10).prop_map(|(b, d)| (b + d).saturating_sub(24 << 10))
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 1..20usize << 10, 2 => 64usize << 10..600 << 10]
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES;
    prop_oneof![
        8 => (file.clone(), offset(), len())
            .prop_map(|(file, offset, len)| Op::Write { file, offset, len }),
        4 => (file.clone(), len()).prop_map(|(file, len)| Op::Append { file, len }),
        2 => (file.clone(), offset(), 1..64usize << 10)
            .prop_map(|(file, offset, len)| Op::Read { file, offset, len }),
        1 => (
            file.clone(),
            prop_oneof![offset().prop_map(Size::At), (0..=100u64).prop_map(Size::Frac)]
        )
            .prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => file.clone().prop_map(|file| Op::Remove { file }),
        3 => file.prop_map(|file| Op::Snapshot { file }),
        3 => any::<usize>().prop_map(|pick| Op::MarkFlushed { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Abort { pick }),
        1 => Just(Op::Evict),
    ]
}

/// One page of a file model.
#[derive(Clone)]
struct Page {
    data: Vec<u8>,
    store: Vec<u8>,
    /// LSN of the last write of each byte; 0: never written (or cut).
    lsn: Vec<u64>,
    pending: Vec<bool>,
    npending: u64,
}

impl Page {
    fn new() -> Self {
        Page {
            data: vec![0; PAGE as usize],
            store: vec![0; PAGE as usize],
            lsn: vec![0; PAGE as usize],
            pending: vec![false; PAGE as usize],
            npending: 0,
        }
    }
}

/// A file: sparse pages (absent = zeros everywhere, nothing pending).
#[derive(Default)]
struct FileModel {
    len: u64,
    pages: BTreeMap<u64, Page>,
    last_end: u64,
}

/// Calls `f(page_index, in_page_range, range_offset)` for the pages that
/// `range` touches.
fn for_pages(range: Range<u64>, mut f: impl FnMut(u64, Range<usize>, usize)) {
    let mut pos = range.start;
    while pos < range.end {
        let i = (pos % PAGE) as usize;
        let n = (PAGE - pos % PAGE).min(range.end - pos) as usize;
        f(pos / PAGE, i..i + n, (pos - range.start) as usize);
        pos += n as u64;
    }
}

impl FileModel {
    fn write(&mut self, offset: u64, data: &[u8], lsn: u64) {
        let end = offset + data.len() as u64;
        let pages = &mut self.pages;
        for_pages(offset..end, |p, r, at| {
            let page = pages.entry(p).or_insert_with(Page::new);
            page.data[r.clone()].copy_from_slice(&data[at..at + r.len()]);
            page.lsn[r.clone()].fill(lsn);
            for b in &mut page.pending[r] {
                if !*b {
                    *b = true;
                    page.npending += 1;
                }
            }
        });
        self.len = self.len.max(end);
        self.last_end = end;
    }

    fn truncate(&mut self, size: u64) {
        drop(self.pages.split_off(&size.div_ceil(PAGE)));
        if !size.is_multiple_of(PAGE)
            && let Some(page) = self.pages.get_mut(&(size / PAGE))
        {
            let i = (size % PAGE) as usize;
            page.data[i..].fill(0);
            page.store[i..].fill(0);
            page.lsn[i..].fill(0);
            for b in &mut page.pending[i..] {
                if *b {
                    *b = false;
                    page.npending -= 1;
                }
            }
        }
        self.len = size;
    }

    /// A flushed mark of the block at file offset `block_start`.
    fn mark_flushed(&mut self, block_start: u64, upto: u64) {
        let range = block_start / PAGE..(block_start + BLOCK_SIZE) / PAGE;
        for (_, page) in self.pages.range_mut(range) {
            for i in 0..PAGE as usize {
                let l = page.lsn[i];
                if l != 0 && l <= upto {
                    page.store[i] = page.data[i];
                    if page.pending[i] {
                        page.pending[i] = false;
                        page.npending -= 1;
                    }
                }
            }
        }
    }

    fn pending(&self) -> u64 {
        self.pages.values().map(|p| p.npending).sum()
    }

    fn pending_in_block(&self, block_start: u64) -> u64 {
        self.pages
            .range(block_start / PAGE..(block_start + BLOCK_SIZE) / PAGE)
            .map(|(_, p)| p.npending)
            .sum()
    }

    /// File offsets of the blocks holding pending bytes.
    fn pending_blocks(&self) -> HashSet<u64> {
        self.pages
            .iter()
            .filter(|(_, p)| p.npending > 0)
            .map(|(i, _)| i * PAGE / BLOCK_SIZE * BLOCK_SIZE)
            .collect()
    }

    /// Ranges of consecutive pages, cut at the file length.
    fn runs(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for &p in self.pages.keys() {
            let r = p * PAGE..((p + 1) * PAGE).min(self.len);
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }
}

fn block_key(snap: &BlockSnapshot) -> (u64, u32, u32) {
    (snap.file.0, snap.chunk.0, snap.block)
}

fn block_start(snap: &BlockSnapshot) -> u64 {
    u64::from(snap.chunk.0) * CHUNK_SIZE + u64::from(snap.block_offset())
}

struct Harness {
    cache: SliceCache,
    /// Lends the bytes of every other write (`SliceCache::insert_logged`).
    wal: MmapPersister<SimStorage>,
    files: Vec<FileModel>,
    in_flight: Vec<BlockSnapshot>,
    tainted: HashSet<(u64, u32, u32)>,
    tainted_ever: bool,
    next_lsn: u64,
}

impl Harness {
    fn new() -> Self {
        Harness {
            cache: SliceCache::new(CacheConfig {
                capacity_bytes: CAPACITY,
                dirty_max_bytes: 1 << 30,
                dirty_wait: std::time::Duration::from_secs(5),
            })
            .expect("cache"),
            wal: MmapPersister::open_on(
                SimStorage::new(),
                WalConfig {
                    durability: Durability::None,
                    // Small simulated files (a larger record gets its own).
                    segment_bytes: 1 << 20,
                    auto_reclaim: false,
                    ..WalConfig::default()
                },
            )
            .expect("log"),
            files: (0..FILES).map(|_| FileModel::default()).collect(),
            in_flight: Vec::new(),
            tainted: HashSet::new(),
            tainted_ever: false,
            next_lsn: 1,
        }
    }

    fn write(&mut self, file: u64, offset: u64, len: usize) {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        let data = pattern(lsn, len);
        let mut r = self.cache.reserve(len as u64).expect("reserve");
        if lsn.is_multiple_of(2) {
            // As the file system does: one logged record per chunk's part,
            // kept in place by the cache.
            let mut at = 0;
            while at < len {
                let off = offset + at as u64;
                let n = ((CHUNK_SIZE - off % CHUNK_SIZE) as usize).min(len - at);
                let (_, bytes) = self
                    .wal
                    .append_slice_logged(&SliceWrite {
                        file: FileId(file),
                        chunk: ChunkIndex((off / CHUNK_SIZE) as u32),
                        slice: SliceId(lsn),
                        offset: (off % CHUNK_SIZE) as u32,
                        data: &data[at..at + n],
                    })
                    .expect("append");
                let bytes = bytes.expect("the log lends its bytes");
                self.cache.insert_logged(
                    FileId(file),
                    off,
                    &bytes,
                    slicefs_cache::Lsn(lsn),
                    Some(&mut r),
                );
                at += n;
            }
        } else {
            self.cache.insert(
                FileId(file),
                offset,
                &data,
                slicefs_cache::Lsn(lsn),
                Some(&mut r),
            );
        }
        drop(r);
        self.files[file as usize].write(offset, &data, lsn);
    }

    /// Taints the in-flight blocks of `file` for which `hit` holds.
    fn taint(&mut self, file: u64, hit: impl Fn(&BlockSnapshot) -> bool) {
        for s in &self.in_flight {
            if s.file.0 == file && hit(s) {
                self.tainted.insert(block_key(s));
                self.tainted_ever = true;
            }
        }
    }

    fn untaint(&mut self, key: (u64, u32, u32)) {
        if !self.in_flight.iter().any(|s| block_key(s) == key) {
            self.tainted.remove(&key);
        }
    }

    fn flushed(&mut self, snap: &BlockSnapshot) {
        self.cache.mark_flushed(snap);
        self.files[snap.file.0 as usize].mark_flushed(block_start(snap), snap.lsn.0);
    }

    fn snapshot(&mut self, file: u64) -> Result<(), TestCaseError> {
        let before: HashSet<(u32, u32)> = self
            .in_flight
            .iter()
            .filter(|s| s.file.0 == file)
            .map(|s| (s.chunk.0, s.block))
            .collect();
        let snaps = self.cache.dirty_blocks(FileId(file));
        let fm = &self.files[file as usize];
        let tainted_ever = self.tainted_ever;
        let mut returned = HashSet::new();
        for s in &snaps {
            prop_assert_eq!(s.file, FileId(file));
            prop_assert!(s.block < 16);
            prop_assert!(
                returned.insert((s.chunk.0, s.block)),
                "block {:?}/{} twice in one call",
                s.chunk,
                s.block
            );
            let key = block_key(s);
            if !self.tainted.contains(&key) {
                prop_assert!(
                    !before.contains(&(s.chunk.0, s.block)),
                    "snapshot of chunk {} block {} while one is in flight",
                    s.chunk.0,
                    s.block
                );
            }
            prop_assert!(!s.ranges.is_empty(), "empty snapshot");
            let bstart = block_start(s);
            let chunk_base = u64::from(s.chunk.0) * CHUNK_SIZE;
            let mut prev_end = bstart;
            let mut max_lsn = 0u64;
            for (off, bytes) in &s.ranges {
                let start = chunk_base + u64::from(*off);
                let end = start + bytes.len() as u64;
                prop_assert!(!bytes.is_empty());
                prop_assert!(
                    start >= prev_end && end <= bstart + BLOCK_SIZE,
                    "range {start}..{end} of block at {bstart}: unsorted, overlapping or outside"
                );
                prev_end = end;
                let mut err = None;
                for_pages(start..end, |p, r, at| {
                    if err.is_some() {
                        return;
                    }
                    let Some(page) = fm.pages.get(&p) else {
                        err = Some(format!("snapshot byte at {} never written", p * PAGE));
                        return;
                    };
                    if page.data[r.clone()] != bytes[at..at + r.len()] {
                        err = Some(format!("snapshot bytes differ in page at {}", p * PAGE));
                        return;
                    }
                    for i in r {
                        // A tainted block may keep bytes pending that the
                        // model has seen flushed (never the reverse).
                        if !page.pending[i] && !tainted_ever {
                            err = Some(format!(
                                "snapshot holds byte {} that is not pending",
                                p * PAGE + i as u64
                            ));
                            return;
                        }
                        max_lsn = max_lsn.max(page.lsn[i]);
                    }
                });
                if let Some(e) = err {
                    return Err(TestCaseError::fail(e));
                }
            }
            prop_assert!(
                s.lsn.0 >= max_lsn && s.lsn.0 < self.next_lsn,
                "snapshot lsn {} outside [{max_lsn}, {})",
                s.lsn.0,
                self.next_lsn
            );
            if !self.tainted_ever {
                prop_assert_eq!(
                    s.pending_bytes(),
                    fm.pending_in_block(bstart),
                    "snapshot of block at {} misses pending bytes",
                    bstart
                );
            }
        }
        // Every block with pending bytes is either in flight or returned.
        for b in fm.pending_blocks() {
            let key = (
                (b / CHUNK_SIZE) as u32,
                ((b % CHUNK_SIZE) / BLOCK_SIZE) as u32,
            );
            prop_assert!(
                before.contains(&key) || returned.contains(&key),
                "block at {} has pending bytes and was not snapshotted",
                b
            );
        }
        self.in_flight.extend(snaps);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Write { file, offset, len } => self.write(file, offset, len),
            Op::Append { file, len } => {
                let at = self.files[file as usize].last_end;
                self.write(file, at, len);
            }
            Op::Read { file, offset, len } => {
                self.read_and_check(file, offset..offset + len as u64)?;
            }
            Op::Truncate { file, ref size } => {
                let size = match *size {
                    Size::At(s) => s,
                    Size::Frac(p) => self.files[file as usize].len * p / 100,
                };
                self.cache.truncate(FileId(file), size);
                self.files[file as usize].truncate(size);
            }
            Op::Remove { file } => {
                self.cache.remove(FileId(file));
                self.files[file as usize] = FileModel::default();
                self.taint(file, |_| true);
            }
            Op::Snapshot { file } => self.snapshot(file)?,
            Op::MarkFlushed { pick } => {
                if !self.in_flight.is_empty() {
                    let s = self.in_flight.remove(pick % self.in_flight.len());
                    self.flushed(&s);
                    self.untaint(block_key(&s));
                }
            }
            Op::Abort { pick } => {
                if !self.in_flight.is_empty() {
                    let s = self.in_flight.remove(pick % self.in_flight.len());
                    self.cache.abort_snapshot(&s);
                    self.untaint(block_key(&s));
                }
            }
            Op::Evict => self.cache.evict_if_needed(),
        }
        Ok(())
    }

    /// Reads `range` of `file` and checks it against the model; returns
    /// the ranges the cache holds.
    fn read_and_check(
        &self,
        file: u64,
        range: Range<u64>,
    ) -> Result<Vec<Range<u64>>, TestCaseError> {
        let fm = &self.files[file as usize];
        let n = (range.end - range.start) as usize;
        let mut got = vec![0u8; n];
        let missing = self
            .cache
            .read(FileId(file), range.start, &mut got)
            .expect("readable");
        let mut cached = Vec::new();
        let mut cursor = range.start;
        for m in &missing {
            prop_assert!(
                m.start >= cursor && m.start < m.end && m.end <= range.end,
                "bad missing ranges {:?} for {:?}",
                missing,
                range
            );
            if m.start > cursor {
                cached.push(cursor..m.start);
            }
            cursor = m.end;
            // Missing bytes come from the store; none may be pending.
            let mut err = None;
            for_pages(m.clone(), |p, r, at| {
                if let Some(page) = fm.pages.get(&p) {
                    let to = (m.start - range.start) as usize + at;
                    got[to..to + r.len()].copy_from_slice(&page.store[r.clone()]);
                    if page.npending > 0
                        && let Some(i) = r.clone().find(|&i| page.pending[i])
                        && err.is_none()
                    {
                        err = Some(p * PAGE + i as u64);
                    }
                }
            });
            if let Some(b) = err {
                return Err(TestCaseError::fail(format!(
                    "file {file}: pending byte {b} reported missing (evicted or lost)"
                )));
            }
        }
        if cursor < range.end {
            cached.push(cursor..range.end);
        }
        // `cached_ranges` is the complement of what `read` reports missing.
        prop_assert_eq!(
            &self
                .cache
                .cached_ranges(FileId(file), range.start, range.end - range.start),
            &cached,
            "cached_ranges of file {} {:?}",
            file,
            range
        );
        // Pending ranges lie inside the cached ones, and hold every byte
        // the model has pending (the cache may keep more pending: see the
        // tainted blocks above).
        let pending = self
            .cache
            .pending_ranges(FileId(file), range.start, range.end - range.start);
        for p in &pending {
            prop_assert!(
                cached.iter().any(|c| c.start <= p.start && p.end <= c.end),
                "pending {:?} outside cached {:?}",
                p,
                cached
            );
        }
        let mut unlisted = None;
        for_pages(range.clone(), |p, r, at| {
            if let Some(page) = fm.pages.get(&p) {
                for i in r.clone().filter(|&i| page.pending[i]) {
                    let b = range.start + (at + i - r.start) as u64;
                    if unlisted.is_none() && !pending.iter().any(|q| q.contains(&b)) {
                        unlisted = Some(b);
                    }
                }
            }
        });
        prop_assert!(
            unlisted.is_none(),
            "file {}: pending byte {:?} not in pending_ranges {:?}",
            file,
            unlisted,
            pending
        );
        for c in &cached {
            prop_assert!(
                c.end <= fm.len,
                "file {}: cache holds {:?} past the end {}",
                file,
                c,
                fm.len
            );
        }
        let mut want = vec![0u8; n];
        for_pages(range.clone(), |p, r, at| {
            if let Some(page) = fm.pages.get(&p) {
                want[at..at + r.len()].copy_from_slice(&page.data[r]);
            }
        });
        if got != want {
            let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(TestCaseError::fail(format!(
                "file {file}: byte {} is {} (cached: {}), model says {}; missing {:?}",
                range.start + i as u64,
                got[i],
                cached.iter().any(|c| c.contains(&(range.start + i as u64))),
                want[i],
                missing
            )));
        }
        Ok(cached)
    }

    /// Reads every file whole and checks the counters.
    fn check(&self) -> Result<(), TestCaseError> {
        let mut cached_total = 0u64;
        let mut files = 0u64;
        let mut chunks = HashSet::new();
        let mut extents = 0u64;
        for file in 0..FILES {
            let mut in_file = 0u64;
            for run in self.files[file as usize].runs() {
                for c in self.read_and_check(file, run)? {
                    in_file += c.end - c.start;
                    for k in c.start / CHUNK_SIZE..=(c.end - 1) / CHUNK_SIZE {
                        chunks.insert((file, k));
                    }
                }
            }
            files += u64::from(in_file > 0);
            cached_total += in_file;
            extents += self.cache.debug_extents(FileId(file)) as u64;
        }
        let st = self.cache.stats();
        prop_assert_eq!(
            st.dirty_bytes + st.clean_bytes,
            cached_total,
            "cached bytes outside the written ranges? {:?}",
            st
        );
        prop_assert_eq!(st.files, files, "files: {:?}", st);
        prop_assert_eq!(st.chunks, chunks.len() as u64, "chunks: {:?}", st);
        prop_assert_eq!(st.slices, extents, "slices: {:?}", st);
        prop_assert!(st.memory_bytes >= cached_total, "memory: {:?}", st);
        let pending: u64 = self.files.iter().map(FileModel::pending).sum();
        if self.tainted_ever {
            prop_assert!(
                st.dirty_bytes >= pending,
                "cache has {} pending bytes, model {}",
                st.dirty_bytes,
                pending
            );
        } else {
            prop_assert_eq!(st.dirty_bytes, pending, "pending bytes: {:?}", st);
        }
        Ok(())
    }

    /// Flushes everything, then evicts: all data comes from the store.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for s in std::mem::take(&mut self.in_flight) {
            self.flushed(&s);
        }
        self.tainted.clear();
        for file in 0..FILES {
            self.snapshot(file)?;
        }
        for s in std::mem::take(&mut self.in_flight) {
            self.flushed(&s);
        }
        let st = self.cache.stats();
        prop_assert_eq!(st.dirty_bytes, 0, "pending after flushing all: {:?}", st);
        let pending: u64 = self.files.iter().map(FileModel::pending).sum();
        prop_assert_eq!(pending, 0);
        self.check()?;
        self.cache.evict_if_needed();
        let st = self.cache.stats();
        prop_assert!(st.memory_bytes <= CAPACITY, "after evict: {:?}", st);
        self.check()
    }
}

/// Runs `ops` with a check after each; returns the final counters.
fn run(ops: &[Op]) -> Result<CacheStats, TestCaseError> {
    let mut h = Harness::new();
    for (i, op) in ops.iter().enumerate() {
        h.step(op)
            .and_then(|()| h.check())
            .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
    }
    h.finish()?;
    Ok(h.cache.stats())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn cache_matches_the_reference_model(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops)?;
    }
}

/// A fixed sequence touching every operation, so that a plain `cargo test`
/// exercises eviction and the store model even with few cases.
#[test]
fn a_fixed_sequence_with_eviction_matches_the_model() {
    let mut ops = Vec::new();
    for i in 0..6u64 {
        ops.push(Op::Write {
            file: i % FILES,
            offset: BLOCK_SIZE - 100_000 + i * 7_000,
            len: 300_000,
        });
        ops.push(Op::Snapshot { file: i % FILES });
        ops.push(Op::Append {
            file: i % FILES,
            len: 5_000,
        });
        ops.push(Op::MarkFlushed { pick: 0 });
    }
    ops.push(Op::Evict);
    ops.push(Op::Truncate {
        file: 1,
        size: Size::At(BLOCK_SIZE),
    });
    ops.push(Op::Read {
        file: 0,
        offset: BLOCK_SIZE - 50_000,
        len: 60_000,
    });
    ops.push(Op::Remove { file: 2 });
    let st = run(&ops).expect("model");
    assert!(st.evicted_bytes > 0, "nothing was evicted: {st:?}");
}

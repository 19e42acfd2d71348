//! [`SliceCache`]: files -> chunks -> extents, with memory and dirty
//! limits.
//!
//! Locking order: the file map (`files`, read or write) -> one file's
//! mutex -> the pool's idle list. Dirty room is an atomic counter; its
//! mutex is taken only by a writer waiting for room (holding no other
//! lock) and by whoever frees room while someone waits.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use slicefs_wal::{ChunkIndex, FileId, LoggedBytes, Lsn, MediaError, SliceId};

use crate::buf::{Buf, Pool};
use crate::chunk::{BlockSnapshot, Chunk, Delta, SnapshotOptions, Src};
use crate::{CHUNK, CacheError, chunk_ranges};

/// Writes of at least this many bytes are kept in the log's lent copy by
/// [`SliceCache::insert_logged`]; smaller ones are copied (an extent and
/// its buffer header cost about 200 bytes, 5% of a 4 KiB write, and
/// small sequential writes then share one buffer). 64 KiB.
pub const LEND_MIN: usize = 64 << 10;

/// The bytes of a write handed to the cache.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// Copied into the cache's buffers.
    Copy(&'a [u8]),
    /// Lent by the log, kept in place.
    Logged(&'a LoggedBytes),
}

impl<'a> Input<'a> {
    /// Lent bytes: kept in place from [`LEND_MIN`] on, else copied.
    fn lent(data: &'a LoggedBytes) -> Input<'a> {
        if data.len() < LEND_MIN {
            Input::Copy(data.as_slice())
        } else {
            Input::Logged(data)
        }
    }
}

/// Start-up settings of a [`SliceCache`].
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Memory for cached bytes (allocated capacity), in bytes. Clean bytes
    /// past it are evicted, least recently used chunk first. Pending
    /// bytes are never evicted. Default: 1 GiB. Minimum: 1 MiB.
    pub capacity_bytes: u64,
    /// Pending (not yet uploaded) bytes allowed. A writer that would pass
    /// it waits for uploads to make room. Default: 512 MiB. Minimum: 1 MiB.
    pub dirty_max_bytes: u64,
    /// How long a writer waits for dirty room before it gets
    /// [`CacheError::CacheFull`]. Default: 60 s.
    pub dirty_wait: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity_bytes: 1 << 30,
            dirty_max_bytes: 512 << 20,
            dirty_wait: Duration::from_secs(60),
        }
    }
}

/// Counters of a [`SliceCache`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Files with cached bytes.
    pub files: u64,
    /// Chunks with cached bytes.
    pub chunks: u64,
    /// Slices (disjoint extents) held.
    pub slices: u64,
    /// Bytes not yet in the object store.
    pub dirty_bytes: u64,
    /// Bytes in the object store and still cached.
    pub clean_bytes: u64,
    /// Allocated capacity of all buffers, idle pooled ones included.
    pub memory_bytes: u64,
    /// Estimated memory of the bookkeeping around the buffers (file
    /// entries, chunks, extents). The cache's capacity bounds
    /// `memory_bytes + bookkeeping_bytes`.
    pub bookkeeping_bytes: u64,
    /// Freed large buffers kept for reuse (part of `memory_bytes`).
    pub pooled_bytes: u64,
    /// Bytes evicted since start.
    pub evicted_bytes: u64,
    /// Writers that had to wait for dirty room.
    pub waits: u64,
    /// Writers that gave up with [`CacheError::CacheFull`].
    pub full_errors: u64,
}

struct FileCache {
    chunks: ChunkMap,
}

/// A file's chunks by index, in a vector sorted by index: most files have
/// one chunk, and a `BTreeMap`'s first leaf (room for eleven) cost about
/// 2 KiB of every cached small file.
#[derive(Default)]
struct ChunkMap(Vec<(u32, Chunk)>);

impl ChunkMap {
    fn find(&self, idx: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&idx, |(i, _)| *i)
    }

    fn get(&self, idx: &u32) -> Option<&Chunk> {
        self.find(*idx).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, idx: &u32) -> Option<&mut Chunk> {
        self.find(*idx).ok().map(|i| &mut self.0[i].1)
    }

    /// The chunk, created empty if missing.
    fn get_or_default(&mut self, idx: u32) -> &mut Chunk {
        let i = match self.find(idx) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (idx, Chunk::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    fn remove(&mut self, idx: &u32) {
        if let Ok(i) = self.find(*idx) {
            self.0.remove(i);
        }
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = (&u32, &Chunk)> {
        self.0.iter().map(|(i, c)| (i, c))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&u32, &mut Chunk)> {
        self.0.iter_mut().map(|(i, c)| (&*i, c))
    }

    fn values(&self) -> impl Iterator<Item = &Chunk> {
        self.0.iter().map(|(_, c)| c)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Chunk> {
        self.0.iter_mut().map(|(_, c)| c)
    }

    /// Drops the chunks with no bytes and no snapshot in flight.
    fn drop_empty(&mut self) {
        self.0.retain(|(_, c)| !c.is_empty());
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

/// Dirty room: a counter writers take from without locking; the mutex
/// and condvar are only for writers that must wait.
///
/// No lost wake-up: a waiter registers in `waiters` and re-checks
/// `committed` under `lock` before sleeping; a releaser lowers
/// `committed`, then reads `waiters` (both sequentially consistent) and,
/// if anyone waits, takes `lock` before notifying.
#[derive(Default)]
struct Space {
    /// Pending bytes plus outstanding reservations.
    committed: AtomicU64,
    /// Writers waiting for room: only then does freeing room wake anyone
    /// (a condvar notify is a futex system call even with no waiter).
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Space {
    /// Takes `bytes` if they fit under `limit` (or nothing is committed:
    /// a write larger than the limit waits for an empty cache).
    fn try_take(&self, bytes: u64, limit: u64) -> bool {
        self.committed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                (c == 0 || c + bytes <= limit).then_some(c + bytes)
            })
            .is_ok()
    }

    fn add(&self, bytes: u64) {
        self.committed.fetch_add(bytes, Ordering::SeqCst);
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ = self
            .committed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                Some(c.saturating_sub(bytes))
            });
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = lock(&self.lock);
            self.cv.notify_all();
        }
    }
}

/// Room for pending bytes, taken before a write is logged so that a write
/// is refused (or waits) before anything is appended. Dropping it gives
/// back what [`SliceCache::insert`] did not use.
#[must_use = "a reservation is released when dropped"]
pub struct Reservation<'a> {
    cache: &'a SliceCache,
    bytes: u64,
}

impl Reservation<'_> {
    /// Bytes still reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.cache.space.release(self.bytes);
        }
    }
}

/// The write-back slice cache. A pure data structure: no I/O, no async.
///
/// Per file: 64 MiB chunks, each a map of disjoint extents holding the
/// newest bytes written (highest LSN). Many readers and writers of
/// different files run in parallel; each file has its own mutex.
///
/// Contract: the writes of one file are inserted in LSN order (the file
/// system holds the file's lock across the log append and the insert).
/// Out-of-order inserts are still resolved by LSN, but sequential-write
/// extension assumes the order.
pub struct SliceCache {
    config: CacheConfig,
    files: RwLock<HashMap<FileId, Arc<Mutex<FileCache>>>>,
    space: Space,
    pending: AtomicI64,
    clean: AtomicI64,
    /// Every buffer's memory, and the idle large ones.
    pool: Arc<Pool>,
    extents: AtomicI64,
    evicted: AtomicU64,
    waits: AtomicU64,
    full_errors: AtomicU64,
    next_slice: AtomicU64,
    next_snapshot: AtomicU64,
    /// Access clock for LRU eviction (each chunk keeps its last tick);
    /// starts at 1 (a chunk's `lru_stamp` 0 means not queued).
    clock: AtomicU64,
    /// The eviction queue: chunks that came to hold clean bytes, as
    /// `(stamp, file, chunk index)`, oldest first. An entry is live while
    /// its chunk's `lru_stamp` is its stamp; a chunk has at most one live
    /// entry. Eviction pops from the front (a chunk used since it was
    /// queued goes to the back once: CLOCK's second chance), so its work
    /// follows the chunks it evicts, never the number of cached files
    /// (a walk and sort of every file took 90% of the daemon's CPU with
    /// 250,000 small files in a 64 MiB cache). Entries of dropped chunks
    /// stay until popped or compacted away (`compact_lru_if_stale`).
    lru: Mutex<VecDeque<(u64, FileId, u32)>>,
    /// `lru`'s length, read without its lock (stored under it).
    lru_len: AtomicUsize,
    /// File entries in `files`.
    entries: AtomicI64,
    /// Bumped by every change of cached bytes (see `account`).
    generation: AtomicU64,
    /// `(generation, files, chunks)` of the last walk in `stats`: an idle
    /// cache's stats walk no file, however many it holds.
    counted: Mutex<(u64, u64, u64)>,
}

/// Bookkeeping of a file entry with one chunk, estimated: the map slot,
/// the shared entry, the chunk, and the first leaf of its extent map
/// (room for eleven extents), plus allocator headers.
const ENTRY_OVERHEAD: u64 = (size_of::<(FileId, Arc<Mutex<FileCache>>)>()
    + size_of::<Mutex<FileCache>>()
    + size_of::<(u32, Chunk)>()
    + 11 * size_of::<(u32, crate::chunk::Extent)>()
    + 128) as u64;
/// Bookkeeping of one more extent, estimated: its slot in the extent map
/// and its buffer's shared header.
const EXTENT_OVERHEAD: u64 = (size_of::<(u32, crate::chunk::Extent)>() + 64) as u64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SliceCache {
    /// An empty cache.
    ///
    /// # Errors
    /// [`CacheError::InvalidConfig`] below the minimums.
    pub fn new(config: CacheConfig) -> Result<Self, CacheError> {
        if config.capacity_bytes < 1 << 20 || config.dirty_max_bytes < 1 << 20 {
            return Err(CacheError::InvalidConfig(
                "capacity_bytes and dirty_max_bytes must be at least 1 MiB".into(),
            ));
        }
        Ok(SliceCache {
            config: config.clone(),
            files: RwLock::default(),
            space: Space::default(),
            pending: AtomicI64::new(0),
            clean: AtomicI64::new(0),
            pool: Pool::new(config.capacity_bytes),
            extents: AtomicI64::new(0),
            evicted: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            full_errors: AtomicU64::new(0),
            next_slice: AtomicU64::new(1),
            next_snapshot: AtomicU64::new(1),
            clock: AtomicU64::new(1),
            lru: Mutex::default(),
            lru_len: AtomicUsize::new(0),
            entries: AtomicI64::new(0),
            generation: AtomicU64::new(1),
            counted: Mutex::new((0, 0, 0)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// A new slice id, unique in this cache (for the log record).
    pub fn next_slice_id(&self) -> SliceId {
        SliceId(self.next_slice.fetch_add(1, Ordering::Relaxed))
    }

    /// Makes slice ids start past `id` (after recovery).
    pub fn observe_slice_id(&self, id: SliceId) {
        self.next_slice.fetch_max(id.0 + 1, Ordering::Relaxed);
    }

    /// Reserves room for `bytes` pending bytes, waiting up to the
    /// configured time for uploads to make room.
    ///
    /// # Errors
    /// [`CacheError::CacheFull`] when no room came in time. Nothing is
    /// dropped: the caller reports the error to the writer.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, CacheError> {
        let limit = self.config.dirty_max_bytes;
        let space = &self.space;
        if space.try_take(bytes, limit) {
            return Ok(Reservation { cache: self, bytes });
        }
        let deadline = Instant::now() + self.config.dirty_wait;
        self.waits.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            bytes,
            committed = space.committed.load(Ordering::Relaxed),
            "writer waits for dirty room"
        );
        let mut g = lock(&space.lock);
        space.waiters.fetch_add(1, Ordering::SeqCst);
        let taken = loop {
            if space.try_take(bytes, limit) {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            g = space
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        space.waiters.fetch_sub(1, Ordering::SeqCst);
        drop(g);
        if taken {
            return Ok(Reservation { cache: self, bytes });
        }
        self.full_errors.fetch_add(1, Ordering::Relaxed);
        Err(CacheError::CacheFull {
            dirty_bytes: space.committed.load(Ordering::Relaxed),
            dirty_max_bytes: limit,
            waited: self.config.dirty_wait,
        })
    }

    fn file(&self, file: FileId) -> Option<Arc<Mutex<FileCache>>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&file)
            .cloned()
    }

    /// Every file's cache, taken out of the file map (so that each file's
    /// lock is taken without holding the map's).
    fn all_files(&self) -> Vec<(FileId, Arc<Mutex<FileCache>>)> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Drops the entry of `file` (`f`, the caller's handle on it, given
    /// up here) if it holds no chunk and nobody else holds it: the map
    /// follows cached files, not every file ever written. A thread that
    /// looked the entry up keeps it alive (it is not dropped then); a later
    /// lookup creates a new one.
    fn forget_if_empty(&self, file: FileId, f: Arc<Mutex<FileCache>>) {
        if !lock(&f).chunks.is_empty() {
            return;
        }
        drop(f);
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(&file)
            && Arc::strong_count(f) == 1
            && lock(f).chunks.is_empty()
        {
            files.remove(&file);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn file_or_new(&self, file: FileId) -> Arc<Mutex<FileCache>> {
        if let Some(f) = self.file(file) {
            return f;
        }
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(file)
            .or_insert_with(|| {
                self.entries.fetch_add(1, Ordering::Relaxed);
                Arc::new(Mutex::new(FileCache {
                    chunks: ChunkMap::default(),
                }))
            })
            .clone()
    }

    /// Applies accounting; pending bytes freed give room to writers.
    fn account(&self, d: Delta, reservation: Option<&mut Reservation<'_>>) {
        if d == Delta::default() {
            // An in-place rewrite of pending bytes: nothing to count.
            return;
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.clean.fetch_add(d.clean, Ordering::Relaxed);
        self.extents.fetch_add(d.extents, Ordering::Relaxed);
        self.pending.fetch_add(d.pending, Ordering::Relaxed);
        match reservation {
            // New pending bytes come out of the reservation.
            Some(r) if d.pending > 0 => {
                let used = (d.pending as u64).min(r.bytes);
                r.bytes -= used;
                if d.pending as u64 > used {
                    self.space.add(d.pending as u64 - used);
                }
            }
            _ if d.pending > 0 => self.space.add(d.pending as u64),
            _ => self.space.release(d.pending.unsigned_abs()),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues chunk `idx` of `file` (`c`, under its file's lock) for
    /// eviction if it holds clean bytes and is not queued yet.
    fn queue_clean(&self, file: FileId, idx: u32, c: &mut Chunk) {
        if c.lru_stamp != 0 || c.clean() == 0 {
            return;
        }
        c.lru_stamp = self.tick();
        let mut q = lock(&self.lru);
        q.push_back((c.lru_stamp, file, idx));
        self.lru_len.store(q.len(), Ordering::Relaxed);
    }

    /// The next entry of the eviction queue.
    fn pop_lru(&self) -> Option<(u64, FileId, u32)> {
        let mut q = lock(&self.lru);
        let e = q.pop_front();
        self.lru_len.store(q.len(), Ordering::Relaxed);
        e
    }

    /// Drops the eviction queue's dead entries (of chunks dropped by
    /// removes, truncates and uploads) once they may outnumber the live
    /// ones: the queue's length stays within a small multiple of the
    /// cached chunks, whatever was written and removed in between. Each
    /// compaction costs the entries it looks at, paid for by the drops
    /// that made them dead.
    fn compact_lru_if_stale(&self) {
        let live_max = self.entries.load(Ordering::Relaxed).max(0) as usize
            + self.extents.load(Ordering::Relaxed).max(0) as usize;
        if self.lru_len.load(Ordering::Relaxed) <= 2 * live_max + 4096 {
            return;
        }
        // Out of the queue while each file is locked (a file's lock is
        // taken before the queue's, never after).
        let old = std::mem::take(&mut *lock(&self.lru));
        let mut kept: VecDeque<(u64, FileId, u32)> = old
            .into_iter()
            .filter(|&(stamp, file, idx)| {
                self.file(file).is_some_and(|f| {
                    lock(&f)
                        .chunks
                        .get(&idx)
                        .is_some_and(|c| c.lru_stamp == stamp)
                })
            })
            .collect();
        let mut q = lock(&self.lru);
        // Entries queued meanwhile are newer: after the kept ones.
        kept.extend(q.drain(..));
        self.lru_len.store(kept.len(), Ordering::Relaxed);
        *q = kept;
    }

    /// Inserts a write of `data` at byte `offset` of `file`, logged at
    /// `lsn`. The write may span chunks (it is split).
    /// Pending bytes are taken from `reservation` (see
    /// [`SliceCache::reserve`]); past it, they are counted anyway.
    pub fn insert(
        &self,
        file: FileId,
        offset: u64,
        data: &[u8],
        lsn: Lsn,
        reservation: Option<&mut Reservation<'_>>,
    ) {
        self.insert_with(file, offset, Input::Copy(data), lsn, reservation, true);
    }

    /// [`SliceCache::insert`] of bytes lent by the log
    /// ([`slicefs_wal::Persister::append_slice_logged`]): from
    /// [`LEND_MIN`] bytes on the cache keeps them in place instead of
    /// copying, so a write is copied once, into the log. Each such write is
    /// an extent of its own (never extended or rewritten in place), and
    /// once uploaded its bytes are dropped rather than kept as clean
    /// (holding them would keep the log's segment file alive). Smaller
    /// writes are copied as by [`SliceCache::insert`], where sequential
    /// ones share a growing buffer and rewrites go in place.
    pub fn insert_logged(
        &self,
        file: FileId,
        offset: u64,
        data: &LoggedBytes,
        lsn: Lsn,
        reservation: Option<&mut Reservation<'_>>,
    ) {
        self.insert_with(file, offset, Input::lent(data), lsn, reservation, true);
    }

    /// [`SliceCache::insert`] for recovery replay: every record keeps its
    /// own LSN (no in-place extension), so the flushed markers that follow
    /// in the log drop exactly the bytes they cover.
    pub fn insert_replayed(&self, file: FileId, offset: u64, data: &[u8], lsn: Lsn) {
        self.insert_with(file, offset, Input::Copy(data), lsn, None, false);
    }

    /// [`SliceCache::insert_replayed`] of bytes lent by the log
    /// ([`slicefs_wal::Recovery::next_record_lent`]), kept in place from
    /// [`LEND_MIN`] on as by [`SliceCache::insert_logged`]: recovery then
    /// copies no large record and takes no anonymous memory for it.
    pub fn insert_replayed_logged(&self, file: FileId, offset: u64, data: &LoggedBytes, lsn: Lsn) {
        self.insert_with(file, offset, Input::lent(data), lsn, None, false);
    }

    fn insert_with(
        &self,
        file: FileId,
        offset: u64,
        data: Input<'_>,
        lsn: Lsn,
        reservation: Option<&mut Reservation<'_>>,
        extend: bool,
    ) {
        let f = self.file_or_new(file);
        let mut d = Delta::default();
        let len = match data {
            Input::Copy(b) => b.len(),
            Input::Logged(b) => b.len(),
        };
        {
            let mut fc = lock(&f);
            for r in chunk_ranges(offset, len as u64) {
                let c = fc.chunks.get_or_default(r.chunk.0);
                // A buffer belongs to one chunk: one per chunk's part.
                let logged;
                let src = match data {
                    Input::Copy(b) => Src::Copy(&b[r.buf.clone()]),
                    Input::Logged(b) => {
                        logged = Buf::logged(&self.pool, b.slice(r.buf.clone()));
                        Src::Logged {
                            buf: &logged,
                            at: 0,
                            len: r.buf.len(),
                        }
                    }
                };
                d.add(c.insert(&self.pool, r.offset, src, lsn, extend));
                d.add(c.compact_if_wasteful(&self.pool));
                c.last_use = self.tick();
            }
        }
        self.account(d, reservation);
        self.evict_if_needed();
    }

    /// Copies the cached bytes of `offset..offset + out.len()` of `file`
    /// into `out` and returns the file ranges the cache does not hold
    /// (to be read from the block store, or zeros below the file size).
    ///
    /// # Errors
    /// Some of the range's cached bytes are only in a log page the disk
    /// could not read ([`slicefs_wal::media`]): they are lost, and the
    /// read must fail (EIO), never return the zeros `out` holds there.
    pub fn read(
        &self,
        file: FileId,
        offset: u64,
        out: &mut [u8],
    ) -> Result<Vec<Range<u64>>, MediaError> {
        let Some(f) = self.file(file) else {
            return Ok(std::iter::once(offset..offset + out.len() as u64).collect());
        };
        let mut fc = lock(&f);
        let mut missing = Vec::new();
        for r in chunk_ranges(offset, out.len() as u64) {
            let base = u64::from(r.chunk.0) * CHUNK;
            match fc.chunks.get_mut(&r.chunk.0) {
                None => missing.push(base + u64::from(r.offset)..base + u64::from(r.end())),
                Some(c) => {
                    for m in c.read(r.offset..r.end(), &mut out[r.buf.clone()])? {
                        missing.push(base + u64::from(m.start)..base + u64::from(m.end));
                    }
                    c.last_use = self.tick();
                }
            }
        }
        // Adjacent misses across a chunk boundary read as one range.
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(missing.len());
        for m in missing {
            match merged.last_mut() {
                Some(last) if last.end == m.start => last.end = m.end,
                _ => merged.push(m),
            }
        }
        Ok(merged)
    }

    /// The ranges of `offset..offset + len` of `file` whose bytes the
    /// cache holds (written, pending or already uploaded), in file order,
    /// adjacent ones merged. Bytes outside them come from committed blocks
    /// or are holes. Copies nothing.
    pub fn cached_ranges(&self, file: FileId, offset: u64, len: u64) -> Vec<Range<u64>> {
        self.ranges(file, offset, len, false)
    }

    /// [`SliceCache::cached_ranges`] of the pending bytes only: those not
    /// yet in the object store (clean bytes are also in committed blocks).
    pub fn pending_ranges(&self, file: FileId, offset: u64, len: u64) -> Vec<Range<u64>> {
        self.ranges(file, offset, len, true)
    }

    fn ranges(&self, file: FileId, offset: u64, len: u64, pending_only: bool) -> Vec<Range<u64>> {
        let Some(f) = self.file(file) else {
            return Vec::new();
        };
        let fc = lock(&f);
        let mut out: Vec<Range<u64>> = Vec::new();
        for r in chunk_ranges(offset, len) {
            let Some(c) = fc.chunks.get(&r.chunk.0) else {
                continue;
            };
            let base = u64::from(r.chunk.0) * CHUNK;
            for m in c.cached_ranges(r.offset..r.end(), pending_only) {
                let m = base + u64::from(m.start)..base + u64::from(m.end);
                match out.last_mut() {
                    Some(last) if last.end == m.start => last.end = m.end,
                    _ => out.push(m),
                }
            }
        }
        out
    }

    /// Snapshots the pending bytes of `file`, one [`BlockSnapshot`] per
    /// 4 MiB block, skipping blocks whose previous snapshot is still in
    /// flight (one upload per block at a time).
    pub fn dirty_blocks(&self, file: FileId) -> Vec<BlockSnapshot> {
        self.dirty_blocks_with(file, &SnapshotOptions::default())
    }

    /// [`SliceCache::dirty_blocks`] restricted by `opts` (full blocks
    /// only, at most so many), in file order. Blocks not chosen are not
    /// marked in flight.
    pub fn dirty_blocks_with(&self, file: FileId, opts: &SnapshotOptions) -> Vec<BlockSnapshot> {
        let Some(f) = self.file(file) else {
            return Vec::new();
        };
        let mut fc = lock(&f);
        let mut out = Vec::new();
        let mut budget = opts.max_blocks;
        for (&idx, c) in fc.chunks.iter_mut() {
            if budget == 0 {
                break;
            }
            if c.pending > 0 {
                out.extend(c.snapshot_dirty(
                    file,
                    ChunkIndex(idx),
                    &self.next_snapshot,
                    opts,
                    &mut budget,
                    &self.pool,
                ));
            }
        }
        out
    }

    /// Bytes not yet in the object store (a counter; no locking).
    pub fn dirty_bytes(&self) -> u64 {
        self.pending.load(Ordering::Relaxed).max(0) as u64
    }

    /// The lowest LSN among the pending bytes of `file` (`None`: nothing
    /// pending). A flush of everything written before LSN `l` is done
    /// when this is `None` or above `l`.
    pub fn oldest_pending_lsn(&self, file: FileId) -> Option<Lsn> {
        let f = self.file(file)?;
        let fc = lock(&f);
        fc.chunks.values().filter_map(|c| c.min_pending_lsn()).min()
    }

    /// The end of the highest cached byte of `file` (0: nothing cached).
    /// After recovery every cached byte is pending, so this is how far the
    /// log's surviving writes reach.
    pub fn cached_end(&self, file: FileId) -> u64 {
        let Some(f) = self.file(file) else {
            return 0;
        };
        let fc = lock(&f);
        fc.chunks
            .iter()
            .rev()
            .find_map(|(&idx, c)| c.end().map(|e| u64::from(idx) * CHUNK + u64::from(e)))
            .unwrap_or(0)
    }

    /// Files with pending bytes. With none pending (the counter, read
    /// without locking), no file is walked: an idle mount's periodic sweep
    /// costs nothing however many files the cache holds.
    pub fn dirty_files(&self) -> Vec<FileId> {
        if self.pending.load(Ordering::Relaxed) <= 0 {
            return Vec::new();
        }
        self.all_files()
            .into_iter()
            .filter(|(_, f)| lock(f).chunks.values().any(|c| c.pending > 0))
            .map(|(k, _)| k)
            .collect()
    }

    /// The snapshot's bytes reached the object store and its block
    /// reference is committed: bytes of its block with LSN <= the
    /// snapshot's become clean; a write that landed after the snapshot
    /// stays pending.
    pub fn mark_flushed(&self, snap: &BlockSnapshot) {
        let Some(f) = self.file(snap.file) else {
            return;
        };
        let d = {
            let mut fc = lock(&f);
            let d = match fc.chunks.get_mut(&snap.chunk.0) {
                Some(c) => {
                    let d = c.mark_flushed(snap);
                    self.queue_clean(snap.file, snap.chunk.0, c);
                    d
                }
                None => Delta::default(),
            };
            if fc.chunks.get(&snap.chunk.0).is_some_and(|c| c.is_empty()) {
                fc.chunks.remove(&snap.chunk.0);
            }
            d
        };
        self.forget_if_empty(snap.file, f);
        self.account(d, None);
        self.evict_if_needed();
    }

    /// Gives a snapshot up (upload abandoned at shutdown): its block may be
    /// snapshotted again; its bytes stay pending.
    pub fn abort_snapshot(&self, snap: &BlockSnapshot) {
        if let Some(f) = self.file(snap.file)
            && let Some(c) = lock(&f).chunks.get_mut(&snap.chunk.0)
        {
            c.abort_snapshot(snap);
        }
    }

    /// Recovery: drops the bytes of `len` bytes at `offset` of chunk
    /// `chunk` written at LSN <= `upto` (they are in the object store).
    pub fn drop_flushed(&self, file: FileId, chunk: ChunkIndex, offset: u32, len: u32, upto: Lsn) {
        let Some(f) = self.file(file) else {
            return;
        };
        let d = {
            let mut fc = lock(&f);
            let d = match fc.chunks.get_mut(&chunk.0) {
                Some(c) => c.drop_flushed(offset, offset.saturating_add(len), upto),
                None => Delta::default(),
            };
            fc.chunks.drop_empty();
            d
        };
        self.forget_if_empty(file, f);
        self.account(d, None);
    }

    /// Truncates `file` to `size` bytes: cached bytes at or past `size` are
    /// dropped (pending ones too: the truncate is in the log). A later
    /// write is unaffected.
    pub fn truncate(&self, file: FileId, size: u64) {
        let Some(f) = self.file(file) else {
            return;
        };
        let mut d = Delta::default();
        {
            let mut fc = lock(&f);
            for (&idx, c) in fc.chunks.iter_mut() {
                let start = u64::from(idx) * CHUNK;
                if size < start + CHUNK {
                    d.add(c.truncate(size.saturating_sub(start) as u32));
                }
            }
            fc.chunks.drop_empty();
        }
        self.forget_if_empty(file, f);
        self.account(d, None);
    }

    /// Drops everything cached of `file` (it was removed).
    pub fn remove(&self, file: FileId) {
        let removed = self
            .files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&file);
        let Some(f) = removed else {
            return;
        };
        self.entries.fetch_sub(1, Ordering::Relaxed);
        let mut d = Delta::default();
        {
            let mut fc = lock(&f);
            for c in fc.chunks.values_mut() {
                d.add(c.truncate(0));
            }
            fc.chunks.clear();
        }
        self.account(d, None);
    }

    /// Memory of all buffers (live and pooled), in bytes.
    fn memory(&self) -> u64 {
        self.pool.live_bytes() + self.pool.idle_bytes()
    }

    /// An estimate of the memory of the bookkeeping around the buffers
    /// (per file entry and per extent), in bytes.
    fn bookkeeping(&self) -> u64 {
        let entries = self.entries.load(Ordering::Relaxed).max(0) as u64;
        let extents = self.extents.load(Ordering::Relaxed).max(0) as u64;
        entries * ENTRY_OVERHEAD + extents * EXTENT_OVERHEAD
    }

    /// What the capacity limits: buffers and bookkeeping, so that many
    /// small files, whose bookkeeping outweighs their bytes, are evicted
    /// too.
    fn footprint(&self) -> u64 {
        self.memory() + self.bookkeeping()
    }

    /// Frees pooled buffers, then evicts clean bytes, about least
    /// recently used chunk first (the eviction queue, see `lru`), until
    /// memory is under 90% of the capacity. Pending bytes are never
    /// evicted. Costs the queue entries it pops, not a walk of the cache.
    pub fn evict_if_needed(&self) {
        self.compact_lru_if_stale();
        let cap = self.config.capacity_bytes;
        if self.footprint() <= cap {
            return;
        }
        // Evict to 90% so that eviction runs in batches.
        let target = cap - cap / 10;
        self.pool.trim(target);
        if self.footprint() <= cap || self.clean.load(Ordering::Relaxed) == 0 {
            return;
        }
        // Every entry at most twice: once, and once more after a second
        // chance.
        let mut budget = self
            .lru_len
            .load(Ordering::Relaxed)
            .saturating_mul(2)
            .saturating_add(1);
        while budget > 0 && self.footprint() > target {
            budget -= 1;
            let Some((stamp, file, idx)) = self.pop_lru() else {
                break;
            };
            let Some(f) = self.file(file) else {
                continue;
            };
            let d = {
                let mut fc = lock(&f);
                let Some(c) = fc.chunks.get_mut(&idx).filter(|c| c.lru_stamp == stamp) else {
                    continue;
                };
                c.lru_stamp = 0;
                if c.last_use > stamp {
                    // Used since it was queued: to the back, once.
                    self.queue_clean(file, idx, c);
                    continue;
                }
                let d = c.evict_clean();
                if c.is_empty() {
                    fc.chunks.remove(&idx);
                }
                d
            };
            self.forget_if_empty(file, f);
            self.evicted
                .fetch_add(d.clean.unsigned_abs(), Ordering::Relaxed);
            self.account(d, None);
        }
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let (nfiles, chunks) = self.count_files_and_chunks();
        let get = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
        CacheStats {
            files: nfiles,
            chunks,
            slices: get(&self.extents),
            dirty_bytes: get(&self.pending),
            clean_bytes: get(&self.clean),
            memory_bytes: self.memory(),
            bookkeeping_bytes: self.bookkeeping(),
            pooled_bytes: self.pool.idle_bytes(),
            evicted_bytes: self.evicted.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            full_errors: self.full_errors.load(Ordering::Relaxed),
        }
    }

    /// Files and chunks with cached bytes: a walk of every file, unless no
    /// cached byte changed since the last walk.
    fn count_files_and_chunks(&self) -> (u64, u64) {
        let mut counted = lock(&self.counted);
        // Read before the walk: a change during it makes the next call walk.
        let generation = self.generation.load(Ordering::Relaxed);
        if counted.0 == generation {
            return (counted.1, counted.2);
        }
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        let mut chunks = 0u64;
        let mut nfiles = 0u64;
        for f in files.values() {
            let fc = lock(f);
            // Chunks kept only for a snapshot in flight hold no bytes.
            let n = fc.chunks.values().filter(|c| c.extent_count() > 0).count() as u64;
            if n > 0 {
                nfiles += 1;
                chunks += n;
            }
        }
        *counted = (generation, nfiles, chunks);
        (nfiles, chunks)
    }

    /// File entries held (files with bytes or a snapshot in flight), for
    /// tests.
    #[doc(hidden)]
    pub fn debug_entries(&self) -> u64 {
        self.files.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// Entries in the eviction queue, dead ones included, for tests.
    #[doc(hidden)]
    pub fn debug_lru_len(&self) -> usize {
        lock(&self.lru).len()
    }

    /// Per-chunk extents (start, end, lsn, pending?) of a file, for tests.
    #[doc(hidden)]
    pub fn debug_extents(&self, file: FileId) -> usize {
        self.file(file).map_or(0, |f| {
            lock(&f).chunks.values().map(|c| c.extent_count()).sum()
        })
    }
}

//! Append-only byte buffers for extents, and the pool that recycles the
//! large ones.
//!
//! A [`Buf`] has a fixed capacity and a written length. Bytes below the
//! length never change again, so extents (and copies taken for upload)
//! may share a buffer while its owner keeps appending past the end: a
//! sequential writer extends its extent in place, and recovery replay
//! packs consecutive records into one buffer.
//!
//! Memory: buffers under [`POOL_MIN`] come from the global allocator,
//! sized exactly. Larger ones are anonymous mappings (whole pages; the
//! ones meant to grow into have a power-of-two size up to [`POOL_MAX`],
//! 4 MiB, a block), faulted in with one `MADV_POPULATE_WRITE` call, and
//! from 2 MiB on with transparent huge pages (`MADV_HUGEPAGE`). Measured
//! on the 2-core VM (`cargo bench -p slicefs-cache --bench cache`): first
//! touch of fresh memory ran at 2.3 GB/s with 4 KiB pages and 10.7 GB/s
//! with huge pages, and recovery of 1 GiB at 1.65 against 2.76 GB/s. The
//! very first huge pages a fresh VM hands out can be slow (0.4 GB/s once,
//! while the kernel compacts memory). A freed power-of-two buffer goes
//! back to the [`Pool`] while live and idle buffers together stay under
//! the cache's capacity, so a writer in steady state reuses memory that
//! is already faulted in (rewriting touched memory runs at 25 GB/s).
//!
//! A buffer may instead hold bytes lent by the log ([`Buf::logged`]): a
//! record's payload read in place, full from the start and never written.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use slicefs_wal::{LoggedBytes, MediaError};

/// Smallest buffer taken from the pool (and mapped); smaller ones come
/// from the global allocator, which recycles them itself.
pub(crate) const POOL_MIN: usize = 128 << 10;
/// Largest pooled buffer: a block.
pub(crate) const POOL_MAX: usize = crate::BLOCK_SIZE as usize;
/// Buffers from this size on ask for transparent huge pages.
const HUGE_MIN: usize = 2 << 20;
/// Pool size classes: POOL_MIN, 2 * POOL_MIN, ..., POOL_MAX.
const CLASSES: usize = (POOL_MAX / POOL_MIN).trailing_zeros() as usize + 1;

/// A capacity of at least `need` bytes that the pool recycles: the next
/// power of two from [`POOL_MIN`] on (for buffers meant to grow into).
pub(crate) fn class_size(need: usize) -> usize {
    if need < POOL_MIN {
        need
    } else {
        need.next_power_of_two()
    }
}

/// The capacity a buffer asked for `need` bytes gets: exact from the
/// global allocator below [`POOL_MIN`], else rounded up to whole 4 KiB
/// pages of a mapping (pooled when that is a [`class_size`]).
fn alloc_size(need: usize) -> usize {
    if need < POOL_MIN {
        need
    } else {
        need.next_multiple_of(4096)
    }
}

fn class_index(cap: usize) -> Option<usize> {
    (cap.is_power_of_two() && (POOL_MIN..=POOL_MAX).contains(&cap))
        .then(|| (cap / POOL_MIN).trailing_zeros() as usize)
}

/// Memory behind a buffer.
enum Region {
    /// From the global allocator with `Layout::array::<u8>(cap)`.
    Heap { ptr: NonNull<u8>, cap: usize },
    /// An anonymous mapping.
    Map(memmap2::MmapMut),
    /// A record's payload in the log, read in place; full and read-only.
    Logged(LoggedBytes),
}

impl Region {
    fn new(cap: usize) -> Region {
        if cap >= POOL_MIN
            && let Ok(m) = memmap2::MmapMut::map_anon(cap)
        {
            // Huge pages from 2 MiB on, then every page faulted in with one
            // call. Only hints; the memory is counted by capacity either
            // way.
            if cap >= HUGE_MIN {
                let _ = m.advise(memmap2::Advice::HugePage);
            }
            let _ = m.advise(memmap2::Advice::PopulateWrite);
            return Region::Map(m);
        }
        if cap == 0 {
            return Region::Heap {
                ptr: NonNull::dangling(),
                cap: 0,
            };
        }
        let layout = Layout::array::<u8>(cap).expect("buffer size fits a layout");
        // SAFETY: `layout` has a non-zero size (cap > 0).
        let ptr = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        Region::Heap { ptr, cap }
    }

    /// Start of the region. Never written through for `Logged` (such a
    /// buffer is full when made, so nothing appends to it, and its
    /// extents are never `Sole`).
    fn ptr(&mut self) -> *mut u8 {
        match self {
            Region::Heap { ptr, .. } => ptr.as_ptr(),
            Region::Map(m) => m.as_mut_ptr(),
            Region::Logged(b) => b.as_slice().as_ptr().cast_mut(),
        }
    }

    fn cap(&self) -> usize {
        match self {
            Region::Heap { cap, .. } => *cap,
            Region::Map(m) => m.len(),
            Region::Logged(b) => b.len(),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Region::Heap { ptr, cap } = *self
            && cap > 0
        {
            let layout = Layout::array::<u8>(cap).expect("allocated with this layout");
            // SAFETY: allocated in `Region::new` with this layout, freed once.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
        }
    }
}

// SAFETY: a region is plain owned memory (a heap allocation or a mapping)
// or lent log bytes (which are Send); nothing in it is tied to a thread.
unsafe impl Send for Region {}

/// Recycles large buffers and counts the memory of all buffers.
#[derive(Default)]
pub(crate) struct Pool {
    /// Idle mappings by size class.
    idle: Mutex<[Vec<Region>; CLASSES]>,
    /// Capacity of live buffers (held by extents or copies in flight).
    live: AtomicU64,
    /// Capacity of idle pooled buffers.
    idle_bytes: AtomicU64,
    /// Live plus idle bytes the pool may keep (the cache's capacity).
    limit: AtomicU64,
}

impl Pool {
    pub(crate) fn new(limit: u64) -> Arc<Pool> {
        let p = Pool::default();
        p.limit.store(limit, Ordering::Relaxed);
        Arc::new(p)
    }

    /// Capacity of live buffers, in bytes.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Capacity of idle buffers kept for reuse, in bytes.
    pub(crate) fn idle_bytes(&self) -> u64 {
        self.idle_bytes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Vec<Region>; CLASSES]> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, cap: usize) -> Region {
        if let Some(i) = class_index(cap)
            && let Some(r) = self.lock()[i].pop()
        {
            self.idle_bytes.fetch_sub(cap as u64, Ordering::Relaxed);
            return r;
        }
        Region::new(cap)
    }

    fn give(&self, r: Region) {
        if matches!(r, Region::Logged(_)) {
            return;
        }
        let cap = r.cap();
        let Some(i) = class_index(cap) else {
            return;
        };
        let used = self.live_bytes() + self.idle_bytes() + cap as u64;
        if used <= self.limit.load(Ordering::Relaxed) {
            self.lock()[i].push(r);
            self.idle_bytes.fetch_add(cap as u64, Ordering::Relaxed);
        }
    }

    /// Frees idle buffers until live plus idle bytes are at most `target`
    /// (or nothing is idle). Returns the bytes freed.
    pub(crate) fn trim(&self, target: u64) -> u64 {
        let mut freed = 0;
        let mut idle = self.lock();
        for class in idle.iter_mut().rev() {
            while self.live_bytes() + self.idle_bytes() > target
                && let Some(r) = class.pop()
            {
                let cap = r.cap() as u64;
                self.idle_bytes.fetch_sub(cap, Ordering::Relaxed);
                freed += cap;
                // Unmapped outside the loop's check, when `r` drops here.
            }
        }
        freed
    }
}

/// A fixed-capacity, append-only byte buffer (see the module docs).
pub(crate) struct Buf {
    region: Option<Region>,
    /// Start of the region (stable: regions never move).
    ptr: *mut u8,
    cap: usize,
    /// Bytes written; `..len` never changes again.
    len: AtomicUsize,
    /// Extents referencing the buffer, kept by the owning chunk for its
    /// memory count.
    pub(crate) extents: AtomicU32,
    /// Some bytes were copied in from a log page the disk could not read
    /// (zeros in their place, see [`slicefs_wal::media`]).
    damaged: AtomicBool,
    /// Counted in the pool's live bytes (see [`Buf::make`]).
    counted: bool,
    pool: Arc<Pool>,
}

// SAFETY: bytes below `len` are immutable once published (Release store
// of `len` after writing them, Acquire load before reading); bytes at or
// past `len` are written only by `append`, whose callers guarantee a
// single appender (see there). The region is owned memory.
unsafe impl Send for Buf {}
// SAFETY: as for Send.
unsafe impl Sync for Buf {}

impl Buf {
    /// An empty buffer of at least `need` bytes (exactly `need` below
    /// [`POOL_MIN`], whole pages above), from the pool if `need` is a
    /// [`class_size`].
    pub(crate) fn new(pool: &Arc<Pool>, need: usize) -> Arc<Buf> {
        Buf::make(pool, need, true)
    }

    /// [`Buf::new`], or when not `counted` a buffer left out of the
    /// pool's live bytes (an upload's copy: the cache's memory counts
    /// only what it holds), which still goes back to the pool when freed.
    fn make(pool: &Arc<Pool>, need: usize, counted: bool) -> Arc<Buf> {
        let cap = alloc_size(need);
        let mut region = pool.take(cap);
        if counted {
            pool.live.fetch_add(cap as u64, Ordering::Relaxed);
        }
        Arc::new(Buf {
            ptr: region.ptr(),
            region: Some(region),
            cap,
            len: AtomicUsize::new(0),
            extents: AtomicU32::new(0),
            damaged: AtomicBool::new(false),
            counted,
            pool: pool.clone(),
        })
    }

    /// A full, read-only buffer over bytes lent by the log (no copy). It
    /// counts as live memory like any buffer: the bytes sit in the page
    /// cache for as long as the buffer holds them.
    pub(crate) fn logged(pool: &Arc<Pool>, bytes: LoggedBytes) -> Arc<Buf> {
        let cap = bytes.len();
        let mut region = Region::Logged(bytes);
        pool.live.fetch_add(cap as u64, Ordering::Relaxed);
        Arc::new(Buf {
            ptr: region.ptr(),
            region: Some(region),
            cap,
            len: AtomicUsize::new(cap),
            extents: AtomicU32::new(0),
            damaged: AtomicBool::new(false),
            counted: true,
            pool: pool.clone(),
        })
    }

    /// Whether the bytes are lent by the log ([`Buf::logged`]).
    pub(crate) fn is_logged(&self) -> bool {
        matches!(self.region, Some(Region::Logged(_)))
    }

    /// A buffer holding a copy of `data`.
    pub(crate) fn copy_of(pool: &Arc<Pool>, need: usize, data: &[u8]) -> Arc<Buf> {
        Buf::copy_into(Buf::new(pool, need.max(data.len())), data)
    }

    /// `b` (new, not shared) with `data` appended.
    fn copy_into(b: Arc<Buf>, data: &[u8]) -> Arc<Buf> {
        // SAFETY: `b` is new and not shared: the only appender.
        let at = unsafe { b.append(data) };
        debug_assert_eq!(at, Some(0));
        b
    }

    /// Capacity in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes written.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Appends `data` if it fits; returns the offset it was written at.
    ///
    /// # Safety
    /// No other thread may append to this buffer at the same time. The
    /// cache appends only under the lock of the file whose chunk owns the
    /// buffer (a buffer belongs to one chunk).
    pub(crate) unsafe fn append(&self, data: &[u8]) -> Option<usize> {
        let at = self.len.load(Ordering::Relaxed);
        if data.len() > self.cap - at {
            return None;
        }
        // SAFETY: `at + data.len() <= cap`, so the destination is inside
        // the region; bytes at or past `len` are not read by anyone (no
        // slice reaches past `len`) and no one else writes them (the
        // caller is the only appender); `data` cannot overlap them.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(at), data.len());
        }
        self.len.store(at + data.len(), Ordering::Release);
        self.note_source(data);
        Some(at)
    }

    /// After copying `data` into this buffer: if `data` came from a log
    /// page the disk could not read, the buffer holds zeros for it and
    /// is marked damaged.
    pub(crate) fn note_source(&self, data: &[u8]) {
        if slicefs_wal::media::check(data).is_err() {
            self.damaged.store(true, Ordering::Release);
        }
    }

    /// `Err` if `bytes` (of this buffer) may not be the data: the buffer
    /// lends log bytes the disk could not read, or holds a copy of such.
    /// Call after copying them out.
    pub(crate) fn check(&self, bytes: &[u8]) -> Result<(), MediaError> {
        if self.damaged.load(Ordering::Acquire) {
            return Err(MediaError { page: 0 });
        }
        if self.is_logged() {
            return slicefs_wal::media::check(bytes);
        }
        Ok(())
    }

    /// The written bytes `at..at + n`.
    ///
    /// # Panics
    /// If the range reaches past the written length (a cache bug).
    /// Where byte `at` of the buffer lives (stable for the buffer's life:
    /// regions never move). Writing through it is the caller's business:
    /// see [`Chunk`](crate::chunk)'s `Sole`.
    pub(crate) fn ptr_at(&self, at: usize) -> NonNull<u8> {
        assert!(at <= self.cap, "buffer offset past its capacity");
        // SAFETY: `at` is inside the region (or one past its end).
        NonNull::new(unsafe { self.ptr.add(at) }).expect("regions are not null")
    }

    pub(crate) fn bytes(&self, at: usize, n: usize) -> &[u8] {
        let len = self.len();
        assert!(at <= len && n <= len - at, "buffer range past its length");
        // SAFETY: `..len` is written, published (Acquire above) and never
        // written again while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.add(at), n) }
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buf")
            .field("cap", &self.cap)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if self.counted {
            self.pool.live.fetch_sub(self.cap as u64, Ordering::Relaxed);
        }
        if let Some(r) = self.region.take() {
            self.pool.give(r);
        }
    }
}

/// Bytes copied out of the cache for an upload: one range of a
/// [`BlockSnapshot`](crate::BlockSnapshot).
///
/// They sit in a buffer of their own. From 128 KiB on it
/// comes from the cache's pool, so an upload in steady state copies into
/// memory that is already faulted in (huge pages from 2 MiB) instead of
/// a fresh mapping: a snapshot of a 4 MiB block copied into new memory
/// ran at 1.4-1.6 GB/s on the 2-core VM, most of it page faults (`cargo
/// bench -p slicefs-cache --bench cache -- snapshot`). The buffer is not
/// counted in the cache's memory while any clone, or the
/// [`bytes::Bytes`] made by [`SnapBytes::into_bytes`], is alive (the
/// cache limits what it holds, not the uploads in flight); then it goes
/// back to the pool, where it counts as idle memory like any other.
#[derive(Clone)]
pub struct SnapBytes(Arc<Buf>);

impl SnapBytes {
    /// A copy of `data` in a buffer with room for `need` bytes (at least
    /// `data.len()`), from `pool` when large.
    pub(crate) fn copy_of(pool: &Arc<Pool>, need: usize, data: &[u8]) -> SnapBytes {
        let need = class_size(need.max(data.len()));
        SnapBytes(Buf::copy_into(Buf::make(pool, need, false), data))
    }

    /// Appends `data` (the bytes right after this range's end), in place
    /// while it fits and this is the only handle on the buffer, else by
    /// copying into a larger one.
    pub(crate) fn extend(&mut self, pool: &Arc<Pool>, data: &[u8]) {
        if let Some(b) = Arc::get_mut(&mut self.0)
            && b.len() + data.len() <= b.capacity()
        {
            // SAFETY: `get_mut` proved this the only handle on the
            // buffer: no other appender, no reader.
            unsafe { b.append(data) };
            return;
        }
        let mut grown = SnapBytes::copy_of(pool, self.len() + data.len(), self);
        grown.extend(pool, data);
        *self = grown;
    }

    /// Bytes of the buffer behind this range (its length and the room
    /// reserved after it).
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// The bytes as a [`bytes::Bytes`], without a copy; the buffer goes
    /// back to the pool when that is dropped.
    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

impl std::ops::Deref for SnapBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.bytes(0, self.0.len())
    }
}

impl AsRef<[u8]> for SnapBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for SnapBytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for SnapBytes {}

impl std::fmt::Debug for SnapBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapBytes({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_bytes_grow_in_place_and_go_back_to_the_pool() {
        let pool = Pool::new(64 << 20);
        let mut s = SnapBytes::copy_of(&pool, 4 << 20, &[1u8; 1 << 20]);
        let at = s.as_ptr();
        s.extend(&pool, &[2u8; 3 << 20]);
        assert_eq!(s.as_ptr(), at, "room reserved: extended in place");
        assert_eq!(s.len(), 4 << 20);
        assert_eq!((s[0], s[(1 << 20) - 1], s[1 << 20]), (1, 1, 2));
        // Shared: an extension copies instead of writing under a reader.
        let mut t = SnapBytes::copy_of(&pool, 256 << 10, b"abc");
        let reader = t.clone();
        t.extend(&pool, b"de");
        assert_eq!((&*t, &*reader), (&b"abcde"[..], &b"abc"[..]));
        // Full: grows by copying.
        let mut u = SnapBytes::copy_of(&pool, 3, b"xyz");
        u.extend(&pool, b"w");
        assert_eq!(&*u, b"xyzw");
        drop((t, reader, u));
        assert_eq!(pool.live_bytes(), 0, "snapshots are not the cache's");
        assert_eq!(pool.idle_bytes(), 256 << 10, "`reader`'s buffer");
        let bytes = s.into_bytes();
        assert_eq!(bytes.len(), 4 << 20);
        assert_eq!(pool.idle_bytes(), 256 << 10, "Bytes keeps the buffer");
        drop(bytes);
        // Idle: the block and the 256 KiB buffer `reader` kept.
        assert_eq!(
            (pool.live_bytes(), pool.idle_bytes()),
            (0, (4 << 20) + (256 << 10))
        );
    }

    #[test]
    fn appends_are_shared_and_pooled_buffers_recycled() {
        let pool = Pool::new(64 << 20);
        assert_eq!(Buf::new(&pool, 200_000).capacity(), 200_704);
        let b = Buf::new(&pool, class_size(200 << 10));
        assert_eq!(b.capacity(), 256 << 10);
        // SAFETY: single-threaded test: the only appender.
        let (x, y) = unsafe { (b.append(b"abc"), b.append(b"de")) };
        assert_eq!((x, y), (Some(0), Some(3)));
        assert_eq!(b.bytes(1, 4), b"bcde");
        // SAFETY: as above.
        assert_eq!(unsafe { b.append(&vec![0; 256 << 10]) }, None);
        assert_eq!(pool.live_bytes(), 256 << 10);
        drop(b);
        assert_eq!((pool.live_bytes(), pool.idle_bytes()), (0, 256 << 10));
        let c = Buf::new(&pool, 256 << 10);
        assert_eq!((pool.live_bytes(), pool.idle_bytes()), (256 << 10, 0));
        assert_eq!(c.len(), 0, "a recycled buffer starts empty");
        drop(c);
        assert_eq!(pool.trim(0), 256 << 10);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_limit() {
        let pool = Pool::new(1 << 20);
        let bufs: Vec<_> = (0..3).map(|_| Buf::new(&pool, 512 << 10)).collect();
        drop(bufs);
        assert_eq!(pool.idle_bytes(), 1 << 20);
        let small = Buf::copy_of(&pool, 0, b"xyz");
        assert_eq!((small.capacity(), small.bytes(0, 3)), (3, &b"xyz"[..]));
    }

    #[test]
    #[should_panic(expected = "past its length")]
    fn reading_past_the_written_length_panics() {
        let pool = Pool::new(1 << 20);
        let b = Buf::copy_of(&pool, 100, b"ab");
        let _ = b.bytes(1, 2);
    }
}

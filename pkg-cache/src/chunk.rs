//! One chunk's cached bytes: a map of non-overlapping extents, each the
//! newest write (highest LSN) of its byte range.
//!
//! Writes are resolved when they are inserted: a newer write cuts the older
//! extents it overlaps (they keep sharing their buffer), so a read is a walk
//! over disjoint extents and never merges. An extent never crosses a block
//! boundary, so flush snapshots and flushed marks work per block.

use std::collections::BTreeMap;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use slicefs_wal::{Lsn, MediaError};

use crate::buf::{Buf, POOL_MIN, Pool, SnapBytes, class_size};
use crate::{BLOCK_SIZE, BLOCKS_PER_CHUNK};

/// Whether an extent's bytes still need uploading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Not yet in the object store.
    Pending,
    /// In the object store; may be evicted.
    Clean,
}

#[derive(Clone, Debug)]
pub(crate) struct Extent {
    pub(crate) len: u32,
    pub(crate) lsn: Lsn,
    /// The lowest LSN among the extent's bytes (an extension raises `lsn`
    /// to the newest write's, never this).
    pub(crate) first_lsn: Lsn,
    pub(crate) state: State,
    /// The bytes are `buf[at..at + len]`.
    pub(crate) buf: Arc<Buf>,
    pub(crate) at: usize,
    /// Set while this extent is the only user of its buffer: an exact
    /// rewrite then copies in place without reading the buffer's shared
    /// header (measured: that cache miss was 40% of random 4 KiB rewrites).
    sole: Option<Sole>,
}

/// Where an extent's first byte lives, kept only while the extent is the
/// only user of its buffer (no other extent shares it; snapshots copy
/// bytes and hold no buffer). Every place that lets a second extent share
/// a buffer (`Extent::part`, packing after an extent in `place`) clears it.
#[derive(Clone, Copy, Debug)]
struct Sole(NonNull<u8>);

// SAFETY: the pointer is only written through by the chunk that owns the
// extent, under its file's lock (see `Chunk::insert_in_block`); the
// memory is the extent's buffer, which the extent keeps alive.
unsafe impl Send for Sole {}
// SAFETY: as for Send.
unsafe impl Sync for Sole {}

impl Sole {
    /// For an extent that alone uses `buf` from byte `at`.
    fn of(buf: &Buf, at: usize) -> Option<Sole> {
        Some(Sole(buf.ptr_at(at)))
    }
}

impl Extent {
    fn bytes(&self) -> &[u8] {
        self.buf.bytes(self.at, self.len as usize)
    }

    /// The extent's bytes end where its buffer's written bytes end, so an
    /// append to the buffer continues the extent.
    fn at_buffer_tail(&self) -> bool {
        self.at + self.len as usize == self.buf.len()
    }

    /// The part `from..to` (offsets relative to the extent start).
    fn part(&self, from: u32, to: u32) -> Extent {
        Extent {
            len: to - from,
            at: self.at + from as usize,
            buf: self.buf.clone(),
            sole: None,
            ..*self
        }
    }
}

/// The bytes of a write being inserted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Src<'a> {
    /// Copied into the cache's own buffers.
    Copy(&'a [u8]),
    /// Already in a logged buffer ([`Buf::logged`]), used in place:
    /// `buf[at..at + len]`.
    Logged {
        buf: &'a Arc<Buf>,
        at: usize,
        len: usize,
    },
}

impl<'a> Src<'a> {
    fn len(&self) -> usize {
        match *self {
            Src::Copy(b) => b.len(),
            Src::Logged { len, .. } => len,
        }
    }

    /// The part `from..to` (offsets relative to the start).
    fn part(&self, from: usize, to: usize) -> Src<'a> {
        match *self {
            Src::Copy(b) => Src::Copy(&b[from..to]),
            Src::Logged { buf, at, .. } => Src::Logged {
                buf,
                at: at + from,
                len: to - from,
            },
        }
    }
}

/// Byte counts that changed, for the cache's global accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub(crate) pending: i64,
    pub(crate) clean: i64,
    pub(crate) extents: i64,
}

impl Delta {
    pub(crate) fn add(&mut self, o: Delta) {
        self.pending += o.pending;
        self.clean += o.clean;
        self.extents += o.extents;
    }
}

/// A copy of a block's pending bytes, taken for upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSnapshot {
    /// Unique id; only the block's current snapshot can be marked
    /// flushed or aborted.
    pub id: u64,
    /// The file.
    pub file: slicefs_wal::FileId,
    /// The chunk.
    pub chunk: slicefs_wal::ChunkIndex,
    /// Index of the block within the chunk (0..16).
    pub block: u32,
    /// Pending bytes of the block: (offset within the chunk, bytes), sorted
    /// and disjoint, each range contiguous bytes. Bytes of the block not
    /// listed come from the committed block (or are zeros).
    pub ranges: Vec<(u32, SnapBytes)>,
    /// The highest LSN among the snapshot's bytes.
    pub lsn: Lsn,
}

/// Which pending blocks [`SliceCache::dirty_blocks_with`](crate::SliceCache::dirty_blocks_with)
/// snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Only blocks whose 4 MiB are all pending (a sequential writer filled
    /// them); partial blocks are left to grow. Default: false.
    pub full_blocks_only: bool,
    /// At most this many snapshots per call (each copies up to 4 MiB).
    /// Default: unlimited.
    pub max_blocks: usize,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            full_blocks_only: false,
            max_blocks: usize::MAX,
        }
    }
}

impl BlockSnapshot {
    /// Offset of the block within its chunk.
    pub fn block_offset(&self) -> u32 {
        self.block * BLOCK_SIZE as u32
    }

    /// Pending bytes in the snapshot.
    pub fn pending_bytes(&self) -> u64 {
        self.ranges.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// A copy of [`BlockSnapshot::ranges`] in plain vectors (tests,
    /// diagnostics).
    pub fn ranges_copied(&self) -> Vec<(u32, Vec<u8>)> {
        self.ranges.iter().map(|(o, b)| (*o, b.to_vec())).collect()
    }
}

#[derive(Default)]
pub(crate) struct Chunk {
    extents: BTreeMap<u32, Extent>,
    /// Written bytes of the distinct buffers the extents use: what the
    /// buffers hold, superseded bytes included (spare capacity is not).
    written: u64,
    /// Highest LSN inserted.
    max_lsn: Lsn,
    /// (block, id of the snapshot in flight), one pair per block with a
    /// snapshot in flight: empty (no allocation) for most chunks, where a
    /// per-block array cost 128 bytes of every cached small file.
    in_flight: Vec<(u32, u64)>,
    /// Bytes held in extents (pending + clean).
    live: u64,
    /// Pending bytes.
    pub(crate) pending: u64,
    /// The cache's clock at the last read or write (for LRU eviction).
    pub(crate) last_use: u64,
    /// The clock stamp of this chunk's entry in the cache's eviction
    /// queue; 0: not queued (see `SliceCache::evict_if_needed`).
    pub(crate) lru_stamp: u64,
    /// Per block (bit `b`), pending bytes found unreadable in the log
    /// (logged once; see `snapshot_dirty`).
    damaged: u16,
}

const _: () = assert!(
    BLOCKS_PER_CHUNK <= 16,
    "one bit per block in Chunk::damaged"
);

fn block_of(offset: u32) -> u32 {
    offset / BLOCK_SIZE as u32
}

/// Capacity of a buffer that replaces (or continues) a full one of
/// `prev_cap` bytes for a sequential stream, starting at chunk offset
/// `start` and needing `need` bytes now: 4 times larger, at least the
/// pooled minimum, at most to the end of the block, a pool size class.
fn grown_capacity(prev_cap: usize, start: u32, need: usize) -> usize {
    let room = ((block_of(start) + 1) * BLOCK_SIZE as u32 - start) as usize;
    class_size((prev_cap * 4).max(POOL_MIN).min(room).max(need))
}

impl Chunk {
    /// No bytes and no snapshot in flight: the chunk may be dropped.
    pub(crate) fn is_empty(&self) -> bool {
        self.extents.is_empty() && self.in_flight.is_empty()
    }

    fn block_in_flight(&self, block: u32) -> bool {
        self.in_flight.iter().any(|&(b, _)| b == block)
    }

    /// Clears the block's snapshot if it is `id`; whether it was.
    fn end_snapshot(&mut self, block: u32, id: u64) -> bool {
        let Some(i) = self.in_flight.iter().position(|&p| p == (block, id)) else {
            return false;
        };
        self.in_flight.swap_remove(i);
        if self.in_flight.is_empty() {
            self.in_flight = Vec::new();
        }
        true
    }

    pub(crate) fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// Drops the extent at `start`, returning its accounting. Its buffer
    /// leaves the chunk's written count when no other extent uses it.
    fn take(&mut self, start: u32) -> (Extent, Delta) {
        let e = self.extents.remove(&start).expect("extent exists");
        let mut d = Delta {
            extents: -1,
            ..Delta::default()
        };
        match e.state {
            State::Pending => d.pending -= i64::from(e.len),
            State::Clean => d.clean -= i64::from(e.len),
        }
        if e.buf.extents.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.written -= e.buf.len() as u64;
        }
        (e, d)
    }

    /// Start of the first extent that may overlap `from..`.
    fn first_from(&self, from: u32) -> u32 {
        self.extents
            .range(..from)
            .next_back()
            .map_or(from, |(s, _)| *s)
    }

    fn put(&mut self, start: u32, e: Extent) -> Delta {
        let mut d = Delta {
            extents: 1,
            ..Delta::default()
        };
        match e.state {
            State::Pending => d.pending += i64::from(e.len),
            State::Clean => d.clean += i64::from(e.len),
        }
        if e.buf.extents.fetch_add(1, Ordering::Relaxed) == 0 {
            self.written += e.buf.len() as u64;
        }
        let old = self.extents.insert(start, e);
        debug_assert!(old.is_none(), "extents overlap at {start}");
        d
    }

    fn apply(&mut self, d: Delta) -> Delta {
        self.pending = (self.pending as i64 + d.pending) as u64;
        self.live = (self.live as i64 + d.pending + d.clean) as u64;
        d
    }

    /// Cuts `from..to` out of every extent with LSN <= `lsn_max`
    /// (all extents when `None`); returns the accounting.
    fn cut(&mut self, from: u32, to: u32, lsn_max: Option<Lsn>) -> Delta {
        let mut d = Delta::default();
        let starts: Vec<u32> = self
            .extents
            .range(..to)
            .rev()
            .take_while(|(s, e)| *s + e.len > from || **s >= from)
            .filter(|(s, e)| *s + e.len > from && lsn_max.is_none_or(|m| e.lsn <= m))
            .map(|(s, _)| *s)
            .collect();
        for s in starts {
            let (e, td) = self.take(s);
            d.add(td);
            let end = s + e.len;
            if s < from {
                d.add(self.put(s, e.part(0, from - s)));
            }
            if end > to {
                d.add(self.put(to, e.part(to - s, e.len)));
            }
        }
        d
    }

    /// Inserts a write of `data` at `offset` with `lsn`. Bytes already
    /// held with a higher LSN are kept (an out-of-order insert loses to
    /// them). Returns the accounting.
    /// `extend`: sequential writes may grow the newest extent in place
    /// (off during recovery replay, where each record's LSN must stay
    /// exact for the flushed markers that follow; replayed records still
    /// share buffers). Logged bytes are never copied: each such write is
    /// an extent of its own, never extended or rewritten in place.
    pub(crate) fn insert(
        &mut self,
        pool: &Arc<Pool>,
        offset: u32,
        data: Src<'_>,
        lsn: Lsn,
        extend: bool,
    ) -> Delta {
        let mut d = Delta::default();
        let mut at = 0usize;
        // Split at block boundaries: an extent never crosses one.
        while at < data.len() {
            let off = offset + at as u32;
            let block_end = (block_of(off) + 1) * BLOCK_SIZE as u32;
            let n = (data.len() - at).min((block_end - off) as usize);
            d.add(self.insert_in_block(pool, off, data.part(at, at + n), lsn, extend));
            at += n;
        }
        self.max_lsn = self.max_lsn.max(lsn);
        self.apply(d)
    }

    /// The extent ending exactly at `offset` in the same block, if any.
    fn ending_at(&self, offset: u32) -> Option<(u32, &Extent)> {
        self.extents
            .range(..offset)
            .next_back()
            .filter(|(s, e)| **s + e.len == offset && block_of(**s) == block_of(offset))
            .map(|(s, e)| (*s, e))
    }

    fn insert_in_block(
        &mut self,
        pool: &Arc<Pool>,
        offset: u32,
        src: Src<'_>,
        lsn: Lsn,
        extend: bool,
    ) -> Delta {
        let end = offset + src.len() as u32;
        if src.len() == 0 {
            return Delta::default();
        }
        // A rewrite of exactly one older extent whose buffer nothing else
        // uses (random overwrites of the same records): in place.
        if let Src::Copy(data) = src
            && let Some(e) = self.extents.get_mut(&offset)
            && e.len == data.len() as u32
            && e.lsn < lsn
            && let Some(Sole(p)) = e.sole
        {
            debug_assert_eq!(Arc::strong_count(&e.buf), 1, "a sole extent shares");
            // SAFETY: `sole` says no other extent uses the buffer and no
            // snapshot holds it, so nothing reads these bytes but this
            // chunk, which the caller holds mutably; `p..p + len` is the
            // extent's part of the buffer's written bytes.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
            e.buf.note_source(data);
            let n = i64::from(e.len);
            let was = std::mem::replace(&mut e.state, State::Pending);
            e.lsn = lsn;
            e.first_lsn = lsn;
            return match was {
                State::Pending => Delta::default(),
                State::Clean => Delta {
                    pending: n,
                    clean: -n,
                    ..Delta::default()
                },
            };
        }
        // Sequential writes extend the newest pending extent.
        if let Src::Copy(data) = src
            && extend
            && lsn > self.max_lsn
            && !self.block_in_flight(block_of(offset))
        {
            let next_free = self
                .extents
                .range(offset..)
                .next()
                .is_none_or(|(s, _)| *s >= end);
            if next_free
                && let Some((s, e)) = self.ending_at(offset)
                && e.state == State::Pending
                && e.lsn == self.max_lsn
            {
                return self.extend(pool, s, data, lsn);
            }
        }
        // Older bytes in the range give way; newer ones (an out-of-order
        // insert) stay, and the write fills only around them.
        let mut d = self.cut(offset, end, Some(Lsn(lsn.0.saturating_sub(1))));
        let newer: Vec<(u32, u32)> = self
            .extents
            .range(self.first_from(offset)..end)
            .filter(|(s, e)| *s + e.len > offset)
            .map(|(s, e)| (*s, *s + e.len))
            .collect();
        let (buf, base, fresh) = match src {
            Src::Copy(data) => self.place(pool, offset, data),
            Src::Logged { buf, at, .. } => (buf.clone(), at, false),
        };
        let mut cursor = offset;
        let mut gaps = Vec::new();
        for (s, e) in newer {
            if s > cursor {
                gaps.push((cursor, s));
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        let alone = fresh && gaps.len() == 1;
        for (s, e) in gaps {
            let at = base + (s - offset) as usize;
            let ext = Extent {
                len: e - s,
                lsn,
                first_lsn: lsn,
                state: State::Pending,
                sole: if alone { Sole::of(&buf, at) } else { None },
                buf: buf.clone(),
                at,
            };
            d.add(self.put(s, ext));
        }
        d
    }

    /// Appends a write to the extent at `s` (which ends where the write
    /// starts): in its buffer if the buffer has room past the extent, else
    /// in a bigger buffer the extent moves to (its bytes copied once).
    fn extend(&mut self, pool: &Arc<Pool>, s: u32, data: &[u8], lsn: Lsn) -> Delta {
        let n = data.len() as u32;
        let e = self.extents.get_mut(&s).expect("extent exists");
        // SAFETY: the buffer belongs to this chunk, which the caller holds
        // mutably (under its file's lock): the only appender.
        if e.at_buffer_tail() && unsafe { e.buf.append(data) }.is_some() {
            e.len += n;
            e.lsn = lsn;
            self.written += u64::from(n);
            return Delta {
                pending: i64::from(n),
                ..Delta::default()
            };
        }
        // Grow 4 times (at least to the pooled minimum, at most to the end
        // of the block): a sequential writer copies about a third of its
        // bytes once more, and spare capacity stays under 4 times the
        // extent.
        let need = (e.len + n) as usize;
        let cap = grown_capacity(e.buf.capacity(), s, need);
        let buf = Buf::copy_of(pool, cap, e.bytes());
        // SAFETY: `buf` is new and not shared: the only appender.
        let appended = unsafe { buf.append(data) };
        debug_assert_eq!(appended, Some(e.len as usize));
        let (old, mut d) = self.take(s);
        d.add(self.put(
            s,
            Extent {
                len: need as u32,
                lsn,
                sole: Sole::of(&buf, 0),
                buf,
                at: 0,
                ..old
            },
        ));
        d
    }

    /// Writes `data` (to be inserted at `offset`) into a buffer: packed
    /// after the extent that ends at `offset` when its buffer has room
    /// there (replayed records), else into a new buffer, sized for growth
    /// if the write continues the newest extent. Returns the buffer,
    /// where in it the bytes start, and whether it is new (no extent uses
    /// it yet).
    fn place(&mut self, pool: &Arc<Pool>, offset: u32, data: &[u8]) -> (Arc<Buf>, usize, bool) {
        let mut cap = data.len();
        if let Some((s, prev)) = self.ending_at(offset)
            && prev.at_buffer_tail()
        {
            // SAFETY: the buffer belongs to this chunk, which the caller
            // holds mutably: the only appender.
            if let Some(at) = unsafe { prev.buf.append(data) } {
                let buf = prev.buf.clone();
                self.written += data.len() as u64;
                // The buffer is shared from now on.
                self.extents.get_mut(&s).expect("extent exists").sole = None;
                return (buf, at, false);
            }
            // Room to grow only for a sequential stream (the write follows
            // the newest one), never for random writes that happen to
            // touch an older extent.
            if prev.lsn == self.max_lsn {
                cap = grown_capacity(prev.buf.capacity(), offset, cap);
            }
        }
        (Buf::copy_of(pool, cap, data), 0, true)
    }

    /// Copies the cached bytes of `range` (chunk offsets) into `out`
    /// (which covers `range`) and returns the sub-ranges not cached.
    ///
    /// # Errors
    /// Some of the bytes are a log page the disk could not read (their
    /// only copy): `out` then holds zeros there, which are not the data.
    pub(crate) fn read(
        &self,
        range: Range<u32>,
        out: &mut [u8],
    ) -> Result<Vec<Range<u32>>, MediaError> {
        let mut missing = Vec::new();
        let mut cursor = range.start;
        for (&s, e) in self.extents.range(self.first_from(range.start)..range.end) {
            let (from, to) = (s.max(range.start), (s + e.len).min(range.end));
            if from >= to {
                continue;
            }
            if from > cursor {
                missing.push(cursor..from);
            }
            let src = &e.bytes()[(from - s) as usize..(to - s) as usize];
            out[(from - range.start) as usize..(to - range.start) as usize].copy_from_slice(src);
            e.buf.check(src)?;
            cursor = to;
        }
        if cursor < range.end {
            missing.push(cursor..range.end);
        }
        Ok(missing)
    }

    /// The sub-ranges of `range` (chunk offsets) that hold cached bytes
    /// (only pending ones with `pending_only`), in order; adjacent
    /// extents are merged.
    pub(crate) fn cached_ranges(&self, range: Range<u32>, pending_only: bool) -> Vec<Range<u32>> {
        let mut out: Vec<Range<u32>> = Vec::new();
        for (&s, e) in self.extents.range(self.first_from(range.start)..range.end) {
            let (from, to) = (s.max(range.start), (s + e.len).min(range.end));
            if from >= to || (pending_only && e.state != State::Pending) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == from => last.end = to,
                _ => out.push(from..to),
            }
        }
        out
    }

    /// Snapshots every block with pending bytes and no snapshot in flight.
    pub(crate) fn snapshot_dirty(
        &mut self,
        file: slicefs_wal::FileId,
        chunk: slicefs_wal::ChunkIndex,
        next_id: &std::sync::atomic::AtomicU64,
        opts: &SnapshotOptions,
        budget: &mut usize,
        pool: &Arc<Pool>,
    ) -> Vec<BlockSnapshot> {
        // Pending bytes per block, to choose blocks before copying
        // anything, and the length of each run of adjacent pending bytes
        // within a block (by its start), to size each range's buffer once.
        let mut pending = [0u64; BLOCKS_PER_CHUNK as usize];
        let mut runs: Vec<(u32, usize)> = Vec::new();
        let mut run_end = None;
        for (&s, e) in &self.extents {
            if e.state != State::Pending {
                run_end = None;
                continue;
            }
            let n = e.bytes().len();
            pending[block_of(s) as usize] += n as u64;
            match runs.last_mut() {
                Some((start, len)) if run_end == Some(s) && block_of(*start) == block_of(s) => {
                    *len += n;
                }
                _ => runs.push((s, n)),
            }
            run_end = Some(s + n as u32);
        }
        let mut chosen = [false; BLOCKS_PER_CHUNK as usize];
        for (b, &n) in pending.iter().enumerate() {
            if *budget == 0 {
                break;
            }
            let full = n == BLOCK_SIZE;
            if n > 0 && !self.block_in_flight(b as u32) && (full || !opts.full_blocks_only) {
                chosen[b] = true;
                *budget -= 1;
            }
        }
        let mut out: Vec<BlockSnapshot> = Vec::new();
        for (&s, e) in &self.extents {
            let block = block_of(s);
            if e.state != State::Pending || !chosen[block as usize] {
                continue;
            }
            if out.last().is_none_or(|b| b.block != block) {
                out.push(BlockSnapshot {
                    id: next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    file,
                    chunk,
                    block,
                    ranges: Vec::new(),
                    lsn: Lsn(0),
                });
            }
            let snap = out.last_mut().expect("pushed above");
            snap.lsn = snap.lsn.max(e.lsn);
            match snap.ranges.last_mut() {
                Some((o, b)) if *o + b.len() as u32 == s => b.extend(pool, e.bytes()),
                // Room for the whole run that starts here, so the range
                // never grows by copying.
                _ => {
                    let run = runs
                        .binary_search_by_key(&s, |&(start, _)| start)
                        .map_or(0, |i| runs[i].1);
                    snap.ranges
                        .push((s, SnapBytes::copy_of(pool, run, e.bytes())));
                }
            }
            if e.buf.check(e.bytes()).is_err() {
                // The only copy of these pending bytes is a log page the
                // disk could not read: never upload the zeros read in its
                // place. The block stays pending; reads of it fail.
                snap.lsn = Lsn(u64::MAX);
                let bit = 1u16 << block;
                if self.damaged & bit == 0 {
                    self.damaged |= bit;
                    tracing::error!(
                        file = file.0,
                        chunk = chunk.0,
                        block,
                        "pending bytes could not be read back from the log (media error): \
                         they are not uploaded, and reads of them fail with EIO"
                    );
                }
            }
        }
        out.retain(|b| b.lsn != Lsn(u64::MAX));
        for b in &out {
            // Only blocks with no snapshot in flight were taken.
            self.in_flight.push((b.block, b.id));
        }
        out
    }

    /// End (within the chunk) of the highest extent.
    pub(crate) fn end(&self) -> Option<u32> {
        self.extents
            .iter()
            .next_back()
            .map(|(&s, e)| s + e.bytes().len() as u32)
    }

    /// The lowest LSN among pending bytes.
    pub(crate) fn min_pending_lsn(&self) -> Option<Lsn> {
        self.extents
            .values()
            .filter(|e| e.state == State::Pending)
            .map(|e| e.first_lsn)
            .min()
    }

    /// The snapshot reached the object store: its block's bytes with
    /// LSN <= the snapshot's become clean. Bytes written after it stay
    /// pending.
    /// A snapshot that is no longer the block's current one (the file was
    /// truncated or removed since) changes nothing: its bytes stay pending
    /// and are uploaded again, which is safe.
    pub(crate) fn mark_flushed(&mut self, snap: &BlockSnapshot) -> Delta {
        if !self.end_snapshot(snap.block, snap.id) {
            return Delta::default();
        }
        let from = snap.block_offset();
        let d = self.set_clean(from, from + BLOCK_SIZE as u32, snap.lsn);
        self.apply(d)
    }

    /// Gives up a snapshot (upload abandoned): its block may be
    /// snapshotted again; nothing changes state.
    pub(crate) fn abort_snapshot(&mut self, snap: &BlockSnapshot) {
        self.end_snapshot(snap.block, snap.id);
    }

    fn set_clean(&mut self, from: u32, to: u32, upto: Lsn) -> Delta {
        let mut d = Delta::default();
        let starts: Vec<u32> = self
            .extents
            .range(self.first_from(from)..to)
            .filter(|(s, e)| *s + e.len > from && e.state == State::Pending && e.lsn <= upto)
            .map(|(s, _)| *s)
            .collect();
        for s in starts {
            let (e, td) = self.take(s);
            d.add(td);
            let end = s + e.len;
            let (a, b) = (s.max(from), end.min(to));
            if s < a {
                d.add(self.put(s, e.part(0, a - s)));
            }
            // Logged bytes are not kept once uploaded: they would keep
            // the log's segment (and its disk space) alive until evicted.
            if !e.buf.is_logged() {
                let mut clean = e.part(a - s, b - s);
                clean.state = State::Clean;
                d.add(self.put(a, clean));
            }
            if end > b {
                d.add(self.put(b, e.part(b - s, e.len)));
            }
        }
        d
    }

    /// Recovery: bytes of `from..to` written at LSN <= `upto` are in the
    /// object store; drop them (they need no replay).
    pub(crate) fn drop_flushed(&mut self, from: u32, to: u32, upto: Lsn) -> Delta {
        let d = self.cut(from, to, Some(upto));
        self.apply(d)
    }

    /// Drops every byte at or past `from` (a truncate).
    pub(crate) fn truncate(&mut self, from: u32) -> Delta {
        let d = self.cut(from, crate::CHUNK as u32, None);
        self.apply(d)
    }

    /// Drops clean extents; returns the accounting.
    pub(crate) fn evict_clean(&mut self) -> Delta {
        let starts: Vec<u32> = self
            .extents
            .iter()
            .filter(|(_, e)| e.state == State::Clean)
            .map(|(s, _)| *s)
            .collect();
        let mut d = Delta::default();
        for s in starts {
            let (_, td) = self.take(s);
            d.add(td);
        }
        self.apply(d)
    }

    /// Bytes held by clean extents.
    pub(crate) fn clean(&self) -> u64 {
        self.live - self.pending
    }

    /// Copies extents into exact-size buffers when buffers hold much more
    /// than the extents still use (after many partial overwrites).
    pub(crate) fn compact_if_wasteful(&mut self, pool: &Arc<Pool>) -> Delta {
        if self.written <= 2 * self.live + (64 << 10) {
            return Delta::default();
        }
        let starts: Vec<u32> = self.extents.keys().copied().collect();
        let mut d = Delta::default();
        for s in starts {
            let (mut e, td) = self.take(s);
            d.add(td);
            e.buf = Buf::copy_of(pool, e.len as usize, e.bytes());
            e.at = 0;
            e.sole = Sole::of(&e.buf, 0);
            d.add(self.put(s, e));
        }
        self.apply(d)
    }
}

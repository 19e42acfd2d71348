//! One chunk's cached bytes: a map of non-overlapping extents, each the
//! newest write (highest LSN) of its byte range.
//!
//! Writes are resolved when they are inserted: a newer write cuts the older
//! extents it overlaps (they keep sharing their buffer), so a read is a walk
//! over disjoint extents and never merges. An extent never crosses a block
//! boundary, so flush snapshots and flushed marks work per block.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use slicefs_wal::Lsn;

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
    pub(crate) buf: Arc<Vec<u8>>,
    pub(crate) at: usize,
}

impl Extent {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len as usize]
    }

    /// The part `from..to` (offsets relative to the extent start).
    fn part(&self, from: u32, to: u32) -> Extent {
        Extent {
            len: to - from,
            at: self.at + from as usize,
            buf: self.buf.clone(),
            ..*self
        }
    }
}

/// Byte counts that changed, for the cache's global accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub(crate) pending: i64,
    pub(crate) clean: i64,
    pub(crate) mem: i64,
    pub(crate) extents: i64,
}

impl Delta {
    pub(crate) fn add(&mut self, o: Delta) {
        self.pending += o.pending;
        self.clean += o.clean;
        self.mem += o.mem;
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
    /// and disjoint. Bytes of the block not listed come from the committed
    /// block (or are zeros).
    pub ranges: Vec<(u32, Vec<u8>)>,
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
}

#[derive(Default)]
pub(crate) struct Chunk {
    extents: BTreeMap<u32, Extent>,
    /// Capacity of the distinct buffers (memory counted by allocation).
    pub(crate) mem: u64,
    /// Highest LSN inserted.
    max_lsn: Lsn,
    /// Per block, the id of the snapshot in flight (0: none).
    in_flight: [u64; BLOCKS_PER_CHUNK as usize],
    /// Bytes held in extents (pending + clean).
    live: u64,
    /// Pending bytes.
    pub(crate) pending: u64,
}

fn block_of(offset: u32) -> u32 {
    offset / BLOCK_SIZE as u32
}

impl Chunk {
    /// No bytes and no snapshot in flight: the chunk may be dropped.
    pub(crate) fn is_empty(&self) -> bool {
        self.extents.is_empty() && self.in_flight.iter().all(|&id| id == 0)
    }

    fn block_in_flight(&self, block: u32) -> bool {
        self.in_flight[block as usize] != 0
    }

    pub(crate) fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// Drops the extent at `start`, returning its accounting.
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
        (e, d)
    }

    /// Drops a taken extent: its buffer's memory goes if no other extent
    /// shares it.
    fn release(e: Extent) -> Delta {
        let mem = if Arc::strong_count(&e.buf) == 1 {
            -(e.buf.capacity() as i64)
        } else {
            0
        };
        Delta {
            mem,
            ..Delta::default()
        }
    }

    /// Start of the first extent that may overlap `from..`.
    fn first_from(&self, from: u32) -> u32 {
        self.extents
            .range(..from)
            .next_back()
            .map_or(from, |(s, _)| *s)
    }

    fn put(&mut self, start: u32, e: Extent, new_buf: bool) -> Delta {
        let mut d = Delta {
            extents: 1,
            ..Delta::default()
        };
        match e.state {
            State::Pending => d.pending += i64::from(e.len),
            State::Clean => d.clean += i64::from(e.len),
        }
        if new_buf {
            d.mem += e.buf.capacity() as i64;
        }
        let old = self.extents.insert(start, e);
        debug_assert!(old.is_none(), "extents overlap at {start}");
        d
    }

    fn apply(&mut self, d: Delta) -> Delta {
        self.pending = (self.pending as i64 + d.pending) as u64;
        self.live = (self.live as i64 + d.pending + d.clean) as u64;
        self.mem = (self.mem as i64 + d.mem) as u64;
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
                d.add(self.put(s, e.part(0, from - s), false));
            }
            if end > to {
                d.add(self.put(to, e.part(to - s, e.len), false));
            }
            d.add(Self::release(e));
        }
        d
    }

    /// Inserts a write of `data` at `offset` with `lsn`. Bytes already
    /// held with a higher LSN are kept (an out-of-order insert loses to
    /// them). Returns the accounting.
    /// `extend`: sequential writes may grow the newest extent in place
    /// (off during recovery replay, where each record's LSN must stay
    /// exact for the flushed markers that follow).
    pub(crate) fn insert(&mut self, offset: u32, data: &[u8], lsn: Lsn, extend: bool) -> Delta {
        let mut d = Delta::default();
        let mut at = 0usize;
        // Split at block boundaries: an extent never crosses one.
        while at < data.len() {
            let off = offset + at as u32;
            let block_end = (block_of(off) + 1) * BLOCK_SIZE as u32;
            let n = (data.len() - at).min((block_end - off) as usize);
            d.add(self.insert_in_block(off, &data[at..at + n], lsn, extend));
            at += n;
        }
        self.max_lsn = self.max_lsn.max(lsn);
        self.apply(d)
    }

    fn insert_in_block(&mut self, offset: u32, data: &[u8], lsn: Lsn, extend: bool) -> Delta {
        let end = offset + data.len() as u32;
        if data.is_empty() {
            return Delta::default();
        }
        // Sequential writes extend the newest pending extent in place.
        if extend && lsn > self.max_lsn && !self.block_in_flight(block_of(offset)) {
            let next_free = self
                .extents
                .range(offset..)
                .next()
                .is_none_or(|(s, _)| *s >= end);
            if next_free
                && let Some((&s, e)) = self.extents.range_mut(..offset).next_back()
                && s + e.len == offset
                && e.state == State::Pending
                && e.lsn == self.max_lsn
                && block_of(s) == block_of(offset)
                && e.at + e.len as usize == e.buf.len()
                && let Some(buf) = Arc::get_mut(&mut e.buf)
            {
                let cap = buf.capacity();
                buf.extend_from_slice(data);
                e.len += data.len() as u32;
                e.lsn = lsn;
                return Delta {
                    pending: data.len() as i64,
                    mem: (buf.capacity() - cap) as i64,
                    ..Delta::default()
                };
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
        let buf = Arc::new(data.to_vec());
        let mut first = true;
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
        for (s, e) in gaps {
            let ext = Extent {
                len: e - s,
                lsn,
                first_lsn: lsn,
                state: State::Pending,
                buf: buf.clone(),
                at: (s - offset) as usize,
            };
            d.add(self.put(s, ext, first));
            first = false;
        }
        d
    }

    /// Copies the cached bytes of `range` (chunk offsets) into `out`
    /// (which covers `range`) and returns the sub-ranges not cached.
    pub(crate) fn read(&self, range: Range<u32>, out: &mut [u8]) -> Vec<Range<u32>> {
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
            out[(from - range.start) as usize..(to - range.start) as usize]
                .copy_from_slice(&e.bytes()[(from - s) as usize..(to - s) as usize]);
            cursor = to;
        }
        if cursor < range.end {
            missing.push(cursor..range.end);
        }
        missing
    }

    /// Snapshots every block with pending bytes and no snapshot in flight.
    pub(crate) fn snapshot_dirty(
        &mut self,
        file: slicefs_wal::FileId,
        chunk: slicefs_wal::ChunkIndex,
        next_id: &std::sync::atomic::AtomicU64,
        opts: &SnapshotOptions,
        budget: &mut usize,
    ) -> Vec<BlockSnapshot> {
        // Pending bytes per block, to choose blocks before copying anything.
        let mut pending = [0u64; BLOCKS_PER_CHUNK as usize];
        for (&s, e) in &self.extents {
            if e.state == State::Pending {
                pending[block_of(s) as usize] += e.bytes().len() as u64;
            }
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
                Some((o, b)) if *o + b.len() as u32 == s => b.extend_from_slice(e.bytes()),
                _ => snap.ranges.push((s, e.bytes().to_vec())),
            }
        }
        for b in &out {
            self.in_flight[b.block as usize] = b.id;
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
        let slot = &mut self.in_flight[snap.block as usize];
        if *slot != snap.id {
            return Delta::default();
        }
        *slot = 0;
        let from = snap.block_offset();
        let d = self.set_clean(from, from + BLOCK_SIZE as u32, snap.lsn);
        self.apply(d)
    }

    /// Gives up a snapshot (upload abandoned): its block may be
    /// snapshotted again; nothing changes state.
    pub(crate) fn abort_snapshot(&mut self, snap: &BlockSnapshot) {
        let slot = &mut self.in_flight[snap.block as usize];
        if *slot == snap.id {
            *slot = 0;
        }
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
                d.add(self.put(s, e.part(0, a - s), false));
            }
            let mut clean = e.part(a - s, b - s);
            clean.state = State::Clean;
            d.add(self.put(a, clean, false));
            if end > b {
                d.add(self.put(b, e.part(b - s, e.len), false));
            }
            d.add(Self::release(e));
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
            let (e, td) = self.take(s);
            d.add(td);
            d.add(Self::release(e));
        }
        self.apply(d)
    }

    /// Bytes held by clean extents.
    pub(crate) fn clean(&self) -> u64 {
        self.live - self.pending
    }

    /// Copies extents into exact-size buffers when buffers hold much more
    /// than the extents still use (after many partial overwrites).
    pub(crate) fn compact_if_wasteful(&mut self) -> Delta {
        if self.mem <= 2 * self.live + (64 << 10) {
            return Delta::default();
        }
        let old: Vec<(u32, Extent)> = std::mem::take(&mut self.extents).into_iter().collect();
        let mut mem = 0u64;
        for (s, mut e) in old {
            let v = e.bytes().to_vec();
            mem += v.capacity() as u64;
            e.buf = Arc::new(v);
            e.at = 0;
            self.extents.insert(s, e);
        }
        let d = Delta {
            mem: mem as i64 - self.mem as i64,
            ..Delta::default()
        };
        self.apply(d)
    }
}

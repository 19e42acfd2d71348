//! Which slice bytes in the log are still live (not flushed, removed or
//! truncated away), and where they are. Reclaim copies exactly these.

use std::collections::{BTreeMap, HashMap};

use crate::types::{CHUNK_SIZE, ChunkIndex, FileId, Lsn, RecordKind, SliceId};

/// Byte ranges within a chunk, sorted and disjoint. The first range is
/// kept inline so the common one-range case allocates nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ranges {
    first: (u32, u32),
    rest: Vec<(u32, u32)>,
}

impl Ranges {
    pub(crate) fn one(start: u32, end: u32) -> Self {
        Ranges {
            first: (start, end),
            rest: Vec::new(),
        }
    }

    fn from_vec(v: Vec<(u32, u32)>) -> Self {
        match v.split_first() {
            None => Ranges::default(),
            Some((f, r)) => Ranges {
                first: *f,
                rest: r.to_vec(),
            },
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        std::iter::once(self.first)
            .chain(self.rest.iter().copied())
            .filter(|r| r.0 < r.1)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.iter().map(|(s, e)| u64::from(e - s)).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    /// Removes `start..end`; returns the bytes removed.
    fn subtract(&mut self, start: u32, end: u32) -> u64 {
        let before = self.bytes();
        if !self.iter().any(|(s, e)| s < end && e > start) {
            return 0;
        }
        let mut out = Vec::new();
        for (s, e) in self.iter() {
            if e <= start || s >= end {
                out.push((s, e));
                continue;
            }
            if s < start {
                out.push((s, start));
            }
            if e > end {
                out.push((end, e));
            }
        }
        *self = Ranges::from_vec(out);
        before - self.bytes()
    }

    /// The part of `self` inside `start..end`.
    pub(crate) fn intersect(&self, start: u32, end: u32) -> Ranges {
        Ranges::from_vec(
            self.iter()
                .filter_map(|(s, e)| {
                    let (s, e) = (s.max(start), e.min(end));
                    (s < e).then_some((s, e))
                })
                .collect(),
        )
    }
}

/// A live slice record (or, after compaction, a live part of one).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) lsn: Lsn,
    /// Key (first LSN) of the segment holding the bytes.
    pub(crate) seg: u64,
    pub(crate) slice: SliceId,
    /// Range of the chunk whose bytes are on disk in this record.
    pub(crate) disk: (u32, u32),
    /// File offset, in the segment, of the byte at `disk.0`.
    pub(crate) data_at: u64,
    /// Bytes of `disk` still live.
    pub(crate) remaining: Ranges,
}

/// A live range to copy during compaction.
#[derive(Clone, Debug)]
pub(crate) struct CopyPart {
    pub(crate) file: FileId,
    pub(crate) chunk: ChunkIndex,
    pub(crate) lsn: Lsn,
    pub(crate) slice: SliceId,
    pub(crate) range: (u32, u32),
    pub(crate) src_seg: u64,
    pub(crate) src_at: u64,
}

/// Where compaction put the live ranges of each record: per (file, chunk,
/// LSN), the ranges and the file offset of each range's first byte.
pub(crate) type Moved = HashMap<(FileId, ChunkIndex, Lsn), Vec<((u32, u32), u64)>>;

#[derive(Default)]
pub(crate) struct LiveIndex {
    files: HashMap<FileId, HashMap<ChunkIndex, Vec<Entry>>>,
    /// Live data bytes per segment key.
    seg_live: BTreeMap<u64, u64>,
}

impl LiveIndex {
    pub(crate) fn live_bytes(&self) -> u64 {
        self.seg_live.values().sum()
    }

    /// Live bytes of segments with key < `boundary`.
    pub(crate) fn live_bytes_below(&self, boundary: u64) -> u64 {
        self.seg_live.range(..boundary).map(|(_, v)| v).sum()
    }

    /// Live bytes of the segment keyed `seg`.
    pub(crate) fn live_bytes_in(&self, seg: u64) -> u64 {
        self.seg_live.get(&seg).copied().unwrap_or(0)
    }

    fn drop_bytes(seg_live: &mut BTreeMap<u64, u64>, seg: u64, n: u64) {
        if let Some(v) = seg_live.get_mut(&seg) {
            *v -= n.min(*v);
        }
    }

    /// Applies a record at `lsn` in segment `seg`; `data_at` is the file
    /// offset of a slice's data.
    pub(crate) fn apply(&mut self, lsn: Lsn, seg: u64, data_at: u64, kind: &RecordKind<'_>) {
        match *kind {
            RecordKind::Slice(w) => {
                let end = w.offset + w.data.len() as u32;
                if w.data.is_empty() {
                    return;
                }
                *self.seg_live.entry(seg).or_default() += w.data.len() as u64;
                self.files
                    .entry(w.file)
                    .or_default()
                    .entry(w.chunk)
                    .or_default()
                    .push(Entry {
                        lsn,
                        seg,
                        slice: w.slice,
                        disk: (w.offset, end),
                        data_at,
                        remaining: Ranges::one(w.offset, end),
                    });
            }
            RecordKind::Remove { file } => {
                if let Some(chunks) = self.files.remove(&file) {
                    for e in chunks.values().flatten() {
                        Self::drop_bytes(&mut self.seg_live, e.seg, e.remaining.bytes());
                    }
                }
            }
            RecordKind::Truncate { file, size } => {
                let Some(chunks) = self.files.get_mut(&file) else {
                    return;
                };
                let seg_live = &mut self.seg_live;
                chunks.retain(|chunk, entries| {
                    let chunk_start = u64::from(chunk.0) * CHUNK_SIZE;
                    let cut_from = size.saturating_sub(chunk_start);
                    if cut_from >= CHUNK_SIZE {
                        return true;
                    }
                    entries.retain_mut(|e| {
                        let n = e.remaining.subtract(cut_from as u32, CHUNK_SIZE as u32);
                        Self::drop_bytes(seg_live, e.seg, n);
                        !e.remaining.is_empty()
                    });
                    !entries.is_empty()
                });
                if chunks.is_empty() {
                    self.files.remove(&file);
                }
            }
            RecordKind::Flushed(m) => {
                let Some(chunks) = self.files.get_mut(&m.file) else {
                    return;
                };
                let Some(entries) = chunks.get_mut(&m.chunk) else {
                    return;
                };
                let seg_live = &mut self.seg_live;
                entries.retain_mut(|e| {
                    if e.lsn <= m.upto {
                        let n = e
                            .remaining
                            .subtract(m.offset, m.offset.saturating_add(m.len));
                        Self::drop_bytes(seg_live, e.seg, n);
                    }
                    !e.remaining.is_empty()
                });
                if entries.is_empty() {
                    chunks.remove(&m.chunk);
                    if chunks.is_empty() {
                        self.files.remove(&m.file);
                    }
                }
            }
        }
    }

    /// The live ranges of segments with key < `boundary`, in LSN order.
    pub(crate) fn snapshot_below(&self, boundary: u64) -> Vec<CopyPart> {
        let mut parts = Vec::new();
        for (&file, chunks) in &self.files {
            for (&chunk, entries) in chunks {
                for e in entries.iter().filter(|e| e.seg < boundary) {
                    for (s, end) in e.remaining.iter() {
                        parts.push(CopyPart {
                            file,
                            chunk,
                            lsn: e.lsn,
                            slice: e.slice,
                            range: (s, end),
                            src_seg: e.seg,
                            src_at: e.data_at + u64::from(s - e.disk.0),
                        });
                    }
                }
            }
        }
        parts.sort_by_key(|p| (p.lsn, p.range.0));
        parts
    }

    /// After a compaction of the segments below `boundary` into segment
    /// `new_seg`: `moved` gives, per (file, chunk, lsn), the ranges now in
    /// the new segment and their data offsets. Entries keep only what is
    /// still live now (flushes may have landed during the copy).
    pub(crate) fn relocate(&mut self, boundary: u64, new_seg: u64, moved: &Moved) {
        self.seg_live.retain(|&k, _| k >= boundary);
        let mut new_live = 0;
        for (&file, chunks) in self.files.iter_mut() {
            for (&chunk, entries) in chunks.iter_mut() {
                let mut out = Vec::with_capacity(entries.len());
                for e in entries.drain(..) {
                    if e.seg >= boundary {
                        out.push(e);
                        continue;
                    }
                    let Some(parts) = moved.get(&(file, chunk, e.lsn)) else {
                        continue;
                    };
                    for &((s, end), at) in parts {
                        let rem = e.remaining.intersect(s, end);
                        if rem.is_empty() {
                            continue;
                        }
                        new_live += rem.bytes();
                        out.push(Entry {
                            lsn: e.lsn,
                            seg: new_seg,
                            slice: e.slice,
                            disk: (s, end),
                            data_at: at,
                            remaining: rem,
                        });
                    }
                }
                out.sort_by_key(|e| (e.lsn, e.disk.0));
                *entries = out;
            }
            chunks.retain(|_, v| !v.is_empty());
        }
        self.files.retain(|_, c| !c.is_empty());
        if new_live > 0 {
            *self.seg_live.entry(new_seg).or_default() += new_live;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::types::{FlushedMarker, Record, SliceWrite};

    /// The index fed whole records, as the scan feeds it.
    #[derive(Default)]
    struct LiveModel(LiveIndex);

    impl LiveModel {
        fn apply(&mut self, r: &Record<'_>) {
            self.0.apply(r.lsn, 1, 0, &r.kind);
        }
        fn live_bytes(&self) -> u64 {
            self.0.live_bytes()
        }
    }

    fn slice(lsn: u64, file: u64, chunk: u32, offset: u32, data: &[u8]) -> Record<'_> {
        Record {
            lsn: Lsn(lsn),
            kind: RecordKind::Slice(SliceWrite {
                file: FileId(file),
                chunk: ChunkIndex(chunk),
                slice: SliceId(lsn),
                offset,
                data,
            }),
        }
    }

    fn flushed(
        lsn: u64,
        file: u64,
        chunk: u32,
        offset: u32,
        len: u32,
        upto: u64,
    ) -> Record<'static> {
        Record {
            lsn: Lsn(lsn),
            kind: RecordKind::Flushed(FlushedMarker {
                file: FileId(file),
                chunk: ChunkIndex(chunk),
                offset,
                len,
                upto: Lsn(upto),
            }),
        }
    }

    #[test]
    fn flushed_markers_void_only_older_bytes_in_their_range() {
        let data = [7u8; 100];
        let mut m = LiveModel::default();
        m.apply(&slice(1, 1, 0, 0, &data));
        m.apply(&slice(2, 1, 0, 50, &data));
        m.apply(&slice(3, 1, 1, 0, &data));
        assert_eq!(m.live_bytes(), 300);
        // Covers 0..120 of chunk 0 up to LSN 1: 100 bytes of LSN 1 only.
        m.apply(&flushed(4, 1, 0, 0, 120, 1));
        assert_eq!(m.live_bytes(), 200);
        // Up to LSN 2, range 50..100: 50 bytes of LSN 2.
        m.apply(&flushed(5, 1, 0, 50, 50, 2));
        assert_eq!(m.live_bytes(), 150);
        // Another file's marker changes nothing.
        m.apply(&flushed(6, 2, 0, 0, 1000, 9));
        assert_eq!(m.live_bytes(), 150);
    }

    #[test]
    fn truncate_and_remove_void_earlier_records_only() {
        let data = [7u8; 100];
        let mut m = LiveModel::default();
        m.apply(&slice(1, 1, 0, 0, &data));
        m.apply(&slice(2, 1, 1, 0, &data));
        m.apply(&slice(3, 2, 0, 0, &data));
        m.apply(&Record {
            lsn: Lsn(4),
            kind: RecordKind::Truncate {
                file: FileId(1),
                size: 40,
            },
        });
        assert_eq!(m.live_bytes(), 140);
        m.apply(&slice(5, 1, 0, 0, &data));
        assert_eq!(m.live_bytes(), 240);
        m.apply(&Record {
            lsn: Lsn(6),
            kind: RecordKind::Remove { file: FileId(1) },
        });
        assert_eq!(m.live_bytes(), 100);
        // A re-created file counts again.
        m.apply(&slice(7, 1, 0, 0, &data));
        assert_eq!(m.live_bytes(), 200);
    }

    #[test]
    fn truncate_in_a_later_chunk_keeps_earlier_chunks() {
        let data = [7u8; 100];
        let mut m = LiveModel::default();
        m.apply(&slice(1, 1, 0, 0, &data));
        m.apply(&slice(2, 1, 2, 0, &data));
        m.apply(&Record {
            lsn: Lsn(3),
            kind: RecordKind::Truncate {
                file: FileId(1),
                size: CHUNK_SIZE + 10,
            },
        });
        assert_eq!(m.live_bytes(), 100);
    }

    #[test]
    fn ranges_subtract_and_intersect() {
        let mut r = Ranges::one(0, 100);
        assert_eq!(r.subtract(10, 20), 10);
        assert_eq!(r.subtract(90, 200), 10);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(0, 10), (20, 90)]);
        assert_eq!(r.subtract(200, 300), 0);
        assert_eq!(
            r.intersect(5, 30).iter().collect::<Vec<_>>(),
            vec![(5, 10), (20, 30)]
        );
        assert_eq!(r.subtract(0, 100), 80);
        assert!(r.is_empty());
    }
}

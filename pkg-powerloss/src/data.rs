//! A file's bytes: a size and 4 KiB pages shared copy-on-write between the
//! live and the durable image, so that `fsync` costs what was written
//! since the last one, not the file's size.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Page size of the simulator, bytes: the unit of copy-on-write sharing
/// and of torn writes.
pub(crate) const PAGE: u64 = 4096;

type Page = Arc<[u8; PAGE as usize]>;

/// The bytes of one file. A page that is absent reads as zeros.
///
/// Invariant: no page at or past `size.div_ceil(PAGE)`, and the bytes of
/// the last page past `size` are zero (so growing the file exposes zeros).
#[derive(Clone, Debug, Default)]
pub(crate) struct Data {
    size: u64,
    pages: BTreeMap<u64, Page>,
}

/// Page indexes changed since the last sync of a file (written, cut or
/// dropped): what `sync_from` copies.
pub(crate) type Dirty = BTreeSet<u64>;

impl Data {
    /// Size, bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Up to `len` bytes from `off`, cut at the end of the file.
    pub(crate) fn read(&self, off: u64, len: u64) -> Vec<u8> {
        if off >= self.size || len == 0 {
            return Vec::new();
        }
        let end = off.saturating_add(len).min(self.size);
        let mut out = vec![0u8; (end - off) as usize];
        for (&idx, page) in self.pages.range(off / PAGE..=(end - 1) / PAGE) {
            let start = idx * PAGE;
            let (s, e) = (start.max(off), (start + PAGE).min(end));
            out[(s - off) as usize..(e - off) as usize]
                .copy_from_slice(&page[(s - start) as usize..(e - start) as usize]);
        }
        out
    }

    /// Writes `buf` at `off`, growing the file if it ends past the size.
    pub(crate) fn write(&mut self, off: u64, buf: &[u8], dirty: &mut Dirty) {
        let end = off + buf.len() as u64;
        let mut pos = off;
        while pos < end {
            let idx = pos / PAGE;
            let start = idx * PAGE;
            let e = (start + PAGE).min(end);
            let page = self
                .pages
                .entry(idx)
                .or_insert_with(|| Arc::new([0; PAGE as usize]));
            Arc::make_mut(page)[(pos - start) as usize..(e - start) as usize]
                .copy_from_slice(&buf[(pos - off) as usize..(e - off) as usize]);
            dirty.insert(idx);
            pos = e;
        }
        self.size = self.size.max(end);
    }

    /// Cuts or grows (with zeros) the file to `size` bytes.
    pub(crate) fn set_size(&mut self, size: u64, dirty: &mut Dirty) {
        if size < self.size {
            let dropped = self.pages.split_off(&size.div_ceil(PAGE));
            dirty.extend(dropped.keys());
            let tail = size % PAGE;
            if tail != 0
                && let Some(page) = self.pages.get_mut(&(size / PAGE))
            {
                Arc::make_mut(page)[tail as usize..].fill(0);
                dirty.insert(size / PAGE);
            }
        }
        self.size = size;
    }

    /// Makes `self` (the durable image) equal to `live`, given the pages
    /// changed since the two were last equal. Pages are shared, not copied.
    pub(crate) fn sync_from(&mut self, live: &Data, dirty: &Dirty) {
        self.size = live.size;
        drop(self.pages.split_off(&live.size.div_ceil(PAGE)));
        for &idx in dirty {
            match live.pages.get(&idx) {
                Some(p) => {
                    self.pages.insert(idx, p.clone());
                }
                None => {
                    self.pages.remove(&idx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_truncate_and_sync_share_pages() {
        let mut live = Data::default();
        let mut durable = Data::default();
        let mut dirty = Dirty::new();
        live.write(5000, &[7u8; 10000], &mut dirty);
        assert_eq!(live.size(), 15000);
        assert_eq!(live.read(0, 5000), vec![0u8; 5000]);
        assert_eq!(live.read(5000, 20000), vec![7u8; 10000]);
        durable.sync_from(&live, &dirty);
        dirty.clear();
        assert_eq!(durable.read(0, 1 << 20), live.read(0, 1 << 20));
        // Shrink into a page, then grow: the cut bytes come back as zeros.
        live.set_size(6000, &mut dirty);
        live.set_size(12000, &mut dirty);
        let mut want = vec![0u8; 12000];
        want[5000..6000].fill(7);
        assert_eq!(live.read(0, 1 << 20), want);
        // The durable image did not move until the sync.
        assert_eq!(durable.read(5000, 20000), vec![7u8; 10000]);
        durable.sync_from(&live, &dirty);
        assert_eq!(durable.read(0, 1 << 20), want);
    }
}

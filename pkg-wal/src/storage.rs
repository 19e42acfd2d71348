//! What the persister needs from the disk: a directory of segment files,
//! each an append-only byte array whose space is allocated before it is
//! written. [`MmapStorage`] is the real one; [`crate::sim::SimStorage`]
//! simulates crashes in tests.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::format::{WATERMARK_LEN, WATERMARK_OFFSET};

/// A directory of segment files.
pub trait Storage: Send + Sync + 'static {
    /// The segment file type.
    type File: SegmentFile;

    /// Names of the files in the directory, in no order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new empty file (fails if it exists) that can grow to
    /// `capacity` bytes. Not durable until [`Storage::sync_dir`].
    fn create(&self, name: &str, capacity: u64) -> io::Result<Self::File>;
    /// Opens an existing file; its whole length counts as published.
    fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Removes a file. Not durable until [`Storage::sync_dir`].
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames a file, replacing `to`. Not durable until [`Storage::sync_dir`].
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Shrinks a file to `len` bytes and makes that durable. Only for files
    /// not open in this process.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Makes creations, removals and renames durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// A human-readable name of the directory, for errors.
    fn describe(&self) -> String;
}

/// One segment file: an append-only byte array.
///
/// Bytes below [`SegmentFile::published`] are immutable and may be read
/// by any thread; appends write past it. The one exception is the
/// watermark slot of the header, which only [`SegmentFile::write_watermark`]
/// writes and which `read` never returns.
pub trait SegmentFile: Send + Sync + 'static {
    /// Bytes of address space reserved; the file never grows past it.
    fn capacity(&self) -> u64;
    /// Bytes allocated on disk (the file's length).
    fn allocated(&self) -> u64;
    /// Allocates disk space up to `len` bytes (<= capacity) before anything
    /// is written there. A full disk gives an error, never a fault later.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// End of the published (immutable) bytes.
    fn published(&self) -> u64;
    /// Writes `parts` one after another at [`SegmentFile::published`] and
    /// publishes them. Panics if they do not fit in the allocated space:
    /// callers allocate first.
    fn append(&self, parts: &[&[u8]]);
    /// The published bytes `offset..offset + len`, or `None` if that range
    /// is not published or touches the watermark slot.
    fn read(&self, offset: u64, len: u64) -> Option<&[u8]>;
    /// Writes the watermark slot in place.
    fn write_watermark(&self, slot: &[u8; WATERMARK_LEN]);
    /// Reads the watermark slot (all zeros if the file is too short).
    fn watermark(&self) -> [u8; WATERMARK_LEN];
    /// Makes bytes `start..end` (and the header page, if `with_header`)
    /// durable: `msync(MS_SYNC)` on the pages, which Linux runs as
    /// `fdatasync` of the range (file size included).
    fn sync(&self, start: u64, end: u64, with_header: bool) -> io::Result<()>;
    /// Releases allocated space past the published end (on close).
    fn trim(&self) -> io::Result<()>;
}

/// Segment files in a directory, written through a shared memory map.
#[derive(Debug)]
pub struct MmapStorage {
    dir: PathBuf,
}

impl MmapStorage {
    /// Uses `dir`, creating it if missing.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(MmapStorage { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn map(&self, file: File, capacity: u64, published: u64) -> io::Result<MmapFile> {
        let map = MmapOptions::new()
            .len(usize::try_from(capacity).map_err(|_| io::ErrorKind::InvalidInput)?)
            .map_raw(&file)?;
        Ok(MmapFile {
            allocated: AtomicU64::new(file.metadata()?.len()),
            file,
            map,
            published: AtomicU64::new(published),
            unmapped: AtomicU64::new(published / UNMAP_STEP * UNMAP_STEP),
            append_lock: Mutex::new(()),
        })
    }
}

impl Storage for MmapStorage {
    type File = MmapFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str, capacity: u64) -> io::Result<MmapFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        self.map(file, capacity, 0)
    }

    fn open(&self, name: &str) -> io::Result<MmapFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        let len = file.metadata()?.len();
        // A mapping cannot be empty; an empty file maps one page that is
        // never read (published is 0).
        self.map(file, len.max(1), len)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(self.dir.join(name))?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// A segment file mapped shared, read-write, with room to grow to its
/// capacity. Pages past the allocated length are never touched.
#[derive(Debug)]
pub struct MmapFile {
    file: File,
    map: MmapRaw,
    allocated: AtomicU64,
    published: AtomicU64,
    /// Below this offset appended pages have had their page-table entries
    /// dropped ([`MmapFile::unmap_behind`]); a multiple of `UNMAP_STEP`.
    unmapped: AtomicU64,
    append_lock: Mutex<()>,
}

/// Appended bytes are unmapped from page tables in steps of this many
/// bytes (2 MiB: one TLB flush per step instead of one per 4 KiB page at
/// write-back).
const UNMAP_STEP: u64 = 2 << 20;

impl MmapFile {
    /// Maps the pages of `start..end` writable in one call, so appends do
    /// not take one page fault per 4 KiB page (measured: about 90% of the
    /// time of small appends on a fresh file went to those faults). Only a
    /// hint: where `MADV_POPULATE_WRITE` is missing (Linux < 5.14) the pages
    /// fault in on first write as before.
    fn populate(&self, start: u64, end: u64) {
        let page = 4096u64;
        let from = start / page * page;
        if end <= from {
            return;
        }
        // Harmless: `from..end` lies inside the mapping (end
        // <= allocated <= capacity) and within the file (just allocated),
        // so populating it touches no page past EOF; madvise does not
        // write the contents.
        self.advise(from, end, libc::MADV_POPULATE_WRITE, "MADV_POPULATE_WRITE");
    }

    /// `madvise(advice)` over `from..to` of the mapping; a failure is only
    /// logged (every caller's advice is an optimisation). The caller
    /// makes sure the advice is harmless for that range.
    fn advise(&self, from: u64, to: u64, advice: libc::c_int, name: &str) {
        // SAFETY: the callers pass ranges inside the mapping, for which
        // madvise only changes page-table state (see each caller).
        let rc = unsafe {
            libc::madvise(
                self.map.as_mut_ptr().add(from as usize).cast(),
                (to - from) as usize,
                advice,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "{name} failed");
        }
    }

    /// Drops the page-table entries of whole `UNMAP_STEP`s of appended
    /// bytes below `published` (`MADV_DONTNEED`). The pages stay in the
    /// page cache, dirty until written back, and read back the same if
    /// touched again: for a shared file mapping the call only unmaps. Why:
    /// before writing back a mapped page the kernel write-protects it in
    /// every page table that maps it, one TLB shootdown (an
    /// inter-processor interrupt, a VM exit under virtualisation) per
    /// page; measured with `perf` on a 2-core VM, those shootdowns took
    /// 28% of all CPU time during a 2 GiB sequential write through the
    /// mount. Unmapped pages are written back without any. Called with
    /// `append_lock` held.
    fn unmap_behind(&self, published: u64) {
        let from = self.unmapped.load(Ordering::Relaxed);
        let to = published / UNMAP_STEP * UNMAP_STEP;
        if to <= from {
            return;
        }
        // `from..to` lies inside the mapping, below `published`.
        // MADV_DONTNEED on a MAP_SHARED file mapping discards no data
        // (dirty bits move to the page cache); readers holding slices of
        // published bytes fault the same bytes back in.
        self.advise(from, to, libc::MADV_DONTNEED, "MADV_DONTNEED");
        self.unmapped.store(to, Ordering::Relaxed);
    }
}

impl SegmentFile for MmapFile {
    fn capacity(&self) -> u64 {
        self.map.len() as u64
    }

    fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Acquire)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let _g = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.allocated.load(Ordering::Acquire);
        if len <= cur {
            return Ok(());
        }
        if len > self.capacity() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "allocation of {len} bytes past the capacity {}",
                    self.capacity()
                ),
            ));
        }
        fallocate(&self.file, cur, len - cur)?;
        self.allocated.store(len, Ordering::Release);
        self.populate(cur, len);
        Ok(())
    }

    fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    fn append(&self, parts: &[&[u8]]) {
        let _g = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let start = self.published.load(Ordering::Acquire);
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        assert!(
            start + total <= self.allocated.load(Ordering::Acquire),
            "append past the allocated space"
        );
        let mut at = start as usize;
        for p in parts {
            // SAFETY: `at..at + p.len()` lies below `allocated`, which is
            // within the mapping (allocate checks the capacity) and backed
            // by allocated file blocks, so the pages exist. It lies at or
            // past `published`, which no reader is given, and appends are
            // serialised by `append_lock`, so nothing else aliases it.
            unsafe {
                std::ptr::copy_nonoverlapping(p.as_ptr(), self.map.as_mut_ptr().add(at), p.len());
            }
            at += p.len();
        }
        self.published.store(start + total, Ordering::Release);
        self.unmap_behind(start + total);
    }

    fn read(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.published() || touches_watermark(offset, end) {
            return None;
        }
        // SAFETY: the range is published, so it is allocated, mapped, and
        // never written again (appends go past `published`; the watermark
        // slot is excluded above). The slice borrows `self`, which keeps
        // the mapping alive.
        Some(unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(offset as usize), len as usize)
        })
    }

    fn write_watermark(&self, slot: &[u8; WATERMARK_LEN]) {
        let _g = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        assert!(self.allocated() >= (WATERMARK_OFFSET + WATERMARK_LEN) as u64);
        // SAFETY: the slot is inside the allocated header, and `read` never
        // hands out a slice that overlaps it; `append_lock` serialises
        // writers of the slot.
        unsafe {
            std::ptr::copy_nonoverlapping(
                slot.as_ptr(),
                self.map.as_mut_ptr().add(WATERMARK_OFFSET),
                WATERMARK_LEN,
            );
        }
    }

    fn watermark(&self) -> [u8; WATERMARK_LEN] {
        let _g = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut slot = [0u8; WATERMARK_LEN];
        if self.allocated() >= (WATERMARK_OFFSET + WATERMARK_LEN) as u64 {
            // SAFETY: the slot is allocated and mapped; its only writer
            // holds `append_lock`, which we hold.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.map.as_ptr().add(WATERMARK_OFFSET),
                    slot.as_mut_ptr(),
                    WATERMARK_LEN,
                );
            }
        }
        slot
    }

    fn sync(&self, start: u64, end: u64, with_header: bool) -> io::Result<()> {
        let (start, end) = (start as usize, end.min(self.allocated()) as usize);
        // One msync over header and tail is one fdatasync: only the dirty
        // pages in between are written, so this costs no extra flush.
        let from = if with_header { 0 } else { start };
        if end > from {
            self.map.flush_range(from, end - from)?;
        }
        Ok(())
    }

    fn trim(&self) -> io::Result<()> {
        let _g = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.published.load(Ordering::Acquire);
        self.file.set_len(p)?;
        self.allocated.store(p, Ordering::Release);
        self.file.sync_all()
    }
}

fn touches_watermark(start: u64, end: u64) -> bool {
    start < (WATERMARK_OFFSET + WATERMARK_LEN) as u64 && end > WATERMARK_OFFSET as u64
}

/// Allocates `len` bytes at `offset` (extending the file). Falls back to
/// writing zeros where the file system has no `fallocate`.
fn fallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as i64, len as i64) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends past several unmap steps, then reads everything back
    /// through the mapping and from the file: unmapping appended pages
    /// loses nothing, whether they were synced or not.
    #[test]
    fn appended_bytes_survive_unmapping_behind_the_append_point() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MmapStorage::new(dir.path()).unwrap();
        let cap = 4 * UNMAP_STEP;
        let f = storage.create("seg", cap).unwrap();
        f.allocate(cap).unwrap();
        let piece: Vec<u8> = (0..=250u8).cycle().take(100_003).collect();
        let mut want = Vec::new();
        while want.len() + piece.len() <= cap as usize {
            f.append(&[&piece]);
            want.extend_from_slice(&piece);
            if want.len() > UNMAP_STEP as usize && want.len() < 2 * UNMAP_STEP as usize {
                // Half synced, half only in the page cache.
                f.sync(0, want.len() as u64, false).unwrap();
            }
        }
        assert_eq!(f.unmapped.load(Ordering::Relaxed), 3 * UNMAP_STEP);
        let n = want.len() as u64;
        assert_eq!(f.read(4096, n - 4096).unwrap(), &want[4096..]);
        drop(f);
        let on_disk = std::fs::read(dir.path().join("seg")).unwrap();
        assert_eq!(&on_disk[..want.len()], &want[..]);
    }
}

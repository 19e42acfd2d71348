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
    ///
    /// # Errors
    /// The write failed (EIO, say): nothing is published, and bytes past
    /// the published end may hold part of the write, which the next
    /// append overwrites.
    fn append(&self, parts: &[&[u8]]) -> io::Result<()>;
    /// The published bytes `offset..offset + len`, or `None` if that range
    /// is not published or touches the watermark slot.
    ///
    /// Where the disk cannot read a page, the bytes there read as zeros:
    /// a caller checks what it used with [`crate::media::check`] before it
    /// trusts it (a copy, a decoded record).
    fn read(&self, offset: u64, len: u64) -> Option<&[u8]>;
    /// Writes the watermark slot in place.
    ///
    /// # Errors
    /// The write failed; the slot may then read as torn ("unknown").
    fn write_watermark(&self, slot: &[u8; WATERMARK_LEN]) -> io::Result<()>;
    /// Reads the watermark slot (all zeros if the file is too short).
    fn watermark(&self) -> [u8; WATERMARK_LEN];
    /// Makes bytes `start..end` (and the header page, if `with_header`)
    /// durable, file size included (`fdatasync`).
    fn sync(&self, start: u64, end: u64, with_header: bool) -> io::Result<()>;
    /// Releases allocated space past the published end (on close).
    fn trim(&self) -> io::Result<()>;
}

/// Segment files in a directory: appended with `pwritev`, read through a
/// shared read-only memory map.
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
            .map_raw_read_only(&file)?;
        let f = MmapFile {
            allocated: AtomicU64::new(file.metadata()?.len()),
            file,
            map,
            published: AtomicU64::new(published),
            prewritten: AtomicU64::new(published),
            append_lock: Mutex::new(()),
        };
        // Registered so that a media error under the mapping is an error
        // for the bytes it hit (crate::media), not SIGBUS for the process;
        // `Drop` unregisters it.
        crate::media::register(f.map.as_ptr(), f.map.len());
        Ok(f)
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

/// A segment file, mapped shared and read-only with room to grow to its
/// capacity, and appended with `pwritev` on its descriptor (the mapping
/// sees the bytes: both are the same page cache).
///
/// Why not write through the mapping: measured with `perf` on the 2-core
/// VM during a 2 GiB `fio` write through the mount, a write fault on a
/// fresh page of a fallocated file reads the page in first (zero-filling
/// it, an `ext4_mpage_readpages` pass over every byte) and goes through
/// `page_mkwrite`; write-back then write-protects every mapped dirty page
/// (a TLB shootdown each). `pwritev` copies once into the page cache and
/// maps nothing writable: the same write went from 158-359 to 594-776
/// MB/s (three runs each, alternating). LMDB makes the same choice by
/// default (writes with `pwrite`, reads through the map). A read-only
/// mapping also means no stray store can reach the log's bytes, and an
/// I/O error on a write is an error return, never `SIGBUS`. An I/O error
/// on a read is `SIGBUS`, which [`crate::media`] turns into an error for
/// the bytes it hit.
#[derive(Debug)]
pub struct MmapFile {
    file: File,
    map: MmapRaw,
    allocated: AtomicU64,
    published: AtomicU64,
    /// Bytes from the start known to be written (records or zeros), so
    /// that appends there change no extent of the file system's
    /// ([`MmapFile::prewrite`]).
    prewritten: AtomicU64,
    append_lock: Mutex<()>,
}

/// A sync of at most this many bytes counts as small: a program that
/// fsyncs after every small write (a database's commit).
const SMALL_SYNC: u64 = 64 << 10;
/// Zeros written ahead of the append position at a small sync.
const PREWRITE: u64 = 256 << 10;
/// A source of zeros for [`MmapFile::prewrite`].
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Writes all of `parts`, one after another, at byte `offset` of `file`
/// (`pwritev` of up to 8 parts per call, repeated after a short write; no
/// allocation, as it runs once per append).
fn pwrite_all(file: &File, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
    const BATCH: usize = 8;
    // The next part to write, and how many of its bytes are written.
    let (mut next, mut done) = (0usize, 0usize);
    while next < parts.len() {
        if done == parts[next].len() {
            (next, done) = (next + 1, 0);
            continue;
        }
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        let batch = &parts[next..parts.len().min(next + BATCH)];
        for (k, p) in batch.iter().enumerate() {
            let p = if k == 0 { &p[done..] } else { p };
            iov[k] = libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            };
        }
        // SAFETY: the first `batch.len()` iovecs point into live slices of
        // `parts` for their whole length, and pwritev only reads them.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                batch.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        let mut n = n as usize;
        while n > 0 {
            let left = parts[next].len() - done;
            if n >= left {
                (next, done, n) = (next + 1, 0, n - left);
            } else {
                (done, n) = (done + n, 0);
            }
        }
    }
    Ok(())
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
        Ok(())
    }

    fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    fn append(&self, parts: &[&[u8]]) -> io::Result<()> {
        let _g = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let start = self.published.load(Ordering::Acquire);
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        assert!(
            start + total <= self.allocated.load(Ordering::Acquire),
            "append past the allocated space"
        );
        pwrite_all(&self.file, parts, start)?;
        self.published.store(start + total, Ordering::Release);
        Ok(())
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

    fn write_watermark(&self, slot: &[u8; WATERMARK_LEN]) -> io::Result<()> {
        let _g = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        assert!(self.allocated() >= (WATERMARK_OFFSET + WATERMARK_LEN) as u64);
        // `read` never hands out a slice that overlaps the slot, and
        // `append_lock` serialises its writers.
        pwrite_all(&self.file, &[slot], WATERMARK_OFFSET as u64)
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
        // One writer appends in order and syncs follow it, so the file's
        // dirty pages are the unsynced range (and the header page): one
        // `fdatasync` writes just those and flushes once.
        if end.min(self.allocated()) > start || with_header {
            if end.saturating_sub(start) <= SMALL_SYNC {
                self.prewrite()?;
            }
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn trim(&self) -> io::Result<()> {
        let _g = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.published.load(Ordering::Acquire);
        self.file.set_len(p)?;
        self.allocated.store(p, Ordering::Release);
        self.prewritten.fetch_min(p, Ordering::AcqRel);
        self.file.sync_all()
    }
}

impl MmapFile {
    /// Writes zeros ahead of the append position (up to [`PREWRITE`]
    /// bytes past it, within the allocated space) unless at least
    /// [`SMALL_SYNC`] bytes there are written already. Called before the
    /// `fdatasync` of a small sync, which makes the zeros durable with it.
    ///
    /// Why: `fallocate` leaves unwritten extents, and the first write into
    /// one converts it, so every `fdatasync` after an append into fresh
    /// space also writes the file's extent tree or inode (a second device
    /// write, waited for before the flush; seen with `perf` as
    /// `ext4_write_inode` under `fdatasync`). With the space ahead written,
    /// a run of small syncs (SQLite's commits through the mount) pays that
    /// once per [`PREWRITE`] bytes: measured on the 2-core VM, 2000 SQLite
    /// WAL commits with `synchronous=FULL` went from about 400 to 310 us
    /// each. Large syncs (bulk writes) skip it: the zeros would double
    /// their device writes. Zeros past the published end are what the
    /// format expects there (doc: `crate::format`), so a crash at any
    /// point leaves the same bytes.
    fn prewrite(&self) -> io::Result<()> {
        let _g = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let published = self.published.load(Ordering::Acquire);
        let done = self.prewritten.load(Ordering::Acquire).max(published);
        if done >= published + SMALL_SYNC {
            return Ok(());
        }
        // From the page after the one being appended to.
        let edge = published.div_ceil(4096) * 4096;
        let to = (edge + PREWRITE).min(self.allocated());
        let mut at = done.max(edge);
        while at < to {
            let n = (to - at).min(ZEROS.len() as u64) as usize;
            pwrite_all(&self.file, &[&ZEROS[..n]], at)?;
            at += n as u64;
        }
        self.prewritten.store(to.max(done), Ordering::Release);
        Ok(())
    }
}

impl Drop for MmapFile {
    fn drop(&mut self) {
        crate::media::unregister(self.map.as_ptr());
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

    /// Appends records of odd sizes in several parts, syncing some of
    /// them, then reads everything back through the mapping and from the
    /// file: what `pwritev` wrote is what the read-only mapping shows.
    #[test]
    fn appended_bytes_read_back_through_the_mapping_and_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MmapStorage::new(dir.path()).unwrap();
        let cap = 8 << 20;
        let f = storage.create("seg", cap).unwrap();
        f.allocate(cap).unwrap();
        let piece: Vec<u8> = (0..=250u8).cycle().take(100_003).collect();
        let mut want = Vec::new();
        while want.len() + 2 * piece.len() <= cap as usize {
            let (a, b) = piece.split_at(want.len() % 4099);
            f.append(&[a, &[], b, &piece]).unwrap();
            want.extend_from_slice(&piece);
            want.extend_from_slice(&piece);
            if want.len() < cap as usize / 2 {
                // Half synced, half only in the page cache.
                f.sync(0, want.len() as u64, false).unwrap();
            }
        }
        let slot = [7u8; WATERMARK_LEN];
        f.write_watermark(&slot).unwrap();
        assert_eq!(f.watermark(), slot);
        let n = want.len() as u64;
        assert_eq!(f.published(), n);
        let past = WATERMARK_OFFSET as u64 + WATERMARK_LEN as u64;
        assert_eq!(f.read(past, n - past).unwrap(), &want[past as usize..]);
        assert_eq!(
            f.read(0, WATERMARK_OFFSET as u64).unwrap(),
            &want[..WATERMARK_OFFSET]
        );
        assert!(f.read(WATERMARK_OFFSET as u64 - 4, 8).is_none(), "the slot");
        assert!(f.read(n - 10, 11).is_none(), "past the published end");
        drop(f);
        let on_disk = std::fs::read(dir.path().join("seg")).unwrap();
        assert_eq!(&on_disk[past as usize..want.len()], &want[past as usize..]);
        assert_eq!(&on_disk[WATERMARK_OFFSET..past as usize], &slot);
    }

    /// Whether byte `offset` of `file` lies in an unwritten (fallocated,
    /// never written) extent, from `FS_IOC_FIEMAP` after a sync; `None`
    /// where the file system does not report extents.
    fn unwritten_at(file: &File, offset: u64) -> Option<bool> {
        const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
        const FIEMAP_FLAG_SYNC: u32 = 1;
        const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
        // struct fiemap (32 bytes) and one struct fiemap_extent (56).
        let mut buf = [0u64; (32 + 56) / 8];
        buf[0] = offset; // fm_start
        buf[1] = 1; // fm_length
        buf[2] = u64::from(FIEMAP_FLAG_SYNC); // fm_flags; fm_mapped_extents 0
        buf[3] = 1; // fm_extent_count 1, fm_reserved 0
        // SAFETY: `buf` is a struct fiemap with room for the one extent
        // it asks for; the kernel writes only within it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
        if rc != 0 || (buf[2] >> 32) == 0 {
            return None;
        }
        let flags = (buf[4 + 5] & 0xffff_ffff) as u32; // fe_flags
        Some(flags & FIEMAP_EXTENT_UNWRITTEN != 0)
    }

    /// A small sync writes zeros ahead of the append position, so the
    /// appends of the next small syncs go into written space (no extent
    /// to convert, no inode write per `fdatasync`); a large sync does not
    /// (bulk writes would write their bytes twice). Zeros read as zeros.
    #[test]
    fn small_syncs_write_the_space_ahead_and_large_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MmapStorage::new(dir.path()).unwrap();
        let cap = 8 << 20;
        let f = storage.create("seg", cap).unwrap();
        f.allocate(cap).unwrap();
        let Some(true) = unwritten_at(&f.file, 1 << 20) else {
            panic!("{} does not report unwritten extents", dir.path().display());
        };
        let rec = vec![0xabu8; 4000];
        f.append(&[&rec]).unwrap();
        f.sync(0, 4000, true).unwrap();
        for at in [4000, 4096, 4096 + SMALL_SYNC, PREWRITE] {
            assert_eq!(
                unwritten_at(&f.file, at),
                Some(false),
                "byte {at} after a small sync"
            );
        }
        assert_eq!(
            unwritten_at(&f.file, PREWRITE + 8192),
            Some(true),
            "past the zeros"
        );
        // A large sync: nothing more is written ahead.
        let big = vec![0xcdu8; 1 << 20];
        f.append(&[&big]).unwrap();
        let end = f.published();
        f.sync(4000, end, false).unwrap();
        assert_eq!(
            unwritten_at(&f.file, end.div_ceil(4096) * 4096 + 8192),
            Some(true)
        );
        // Small syncs again: the space ahead is written again.
        f.append(&[&rec]).unwrap();
        f.sync(end, f.published(), false).unwrap();
        let ahead = f.published().div_ceil(4096) * 4096 + SMALL_SYNC;
        assert_eq!(unwritten_at(&f.file, ahead), Some(false));
        // What was appended reads back; the zeros ahead read as zeros.
        assert_eq!(f.read(128, 3872).unwrap(), &rec[128..]);
        let mut tail = vec![1u8; 8192];
        use std::os::unix::fs::FileExt;
        f.file.read_exact_at(&mut tail, f.published()).unwrap();
        assert!(tail.iter().all(|&b| b == 0));
    }

    /// `pwrite_all` finishes a write that takes several `pwritev` calls
    /// (here: more parts than one call takes, and empty parts).
    #[test]
    fn pwrite_all_writes_more_parts_than_one_call_takes() {
        let dir = tempfile::tempdir().unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let bytes: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        let mut parts: Vec<&[u8]> = bytes.chunks(1).collect();
        parts.insert(7, &[]);
        parts.push(&[]);
        pwrite_all(&file, &parts, 5).unwrap();
        let got = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(&got[..5], &[0; 5]);
        assert_eq!(&got[5..], &bytes[..]);
    }
}

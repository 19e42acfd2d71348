//! A crash-simulating [`Storage`] for tests.
//!
//! It keeps two images of every file: the *live* bytes (what a process
//! sees, like the page cache) and the *durable* bytes (what a sync made
//! durable). [`SimStorage::crash`] builds the storage a machine would find
//! after a power loss: synced pages as they were synced, and each page
//! written since its last sync either whole, torn (each 512-byte sector
//! new or old, at random) or not written at all. Directory changes
//! (create, remove, rename) survive only if [`Storage::sync_dir`] ran after
//! them. Syncs, allocations and writes can be made to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;

use crate::format::{WATERMARK_LEN, WATERMARK_OFFSET};
use crate::storage::{SegmentFile, Storage};

/// Page size of the simulated disk (writeback granularity).
pub const PAGE: u64 = 4096;
/// Sector size of the simulated disk (atomic write granularity).
pub const SECTOR: u64 = 512;

#[derive(Default)]
struct Faults {
    fail_syncs: AtomicBool,
    fail_allocate: AtomicBool,
    fail_writes: AtomicBool,
    syncs: AtomicU64,
}

/// The crash-simulating storage. Cheap to clone: clones share the files.
#[derive(Clone, Default)]
pub struct SimStorage {
    live: Arc<Mutex<BTreeMap<String, Arc<SimFile>>>>,
    durable: Arc<Mutex<BTreeMap<String, Arc<SimFile>>>>,
    faults: Arc<Faults>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimStorage {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later sync fail with EIO (`true`) or succeed (`false`).
    pub fn fail_syncs(&self, fail: bool) {
        self.faults.fail_syncs.store(fail, Ordering::SeqCst);
    }

    /// Makes every later allocation fail with ENOSPC (`true`) or succeed.
    pub fn fail_allocate(&self, fail: bool) {
        self.faults.fail_allocate.store(fail, Ordering::SeqCst);
    }

    /// Makes every later append and watermark write fail with EIO after
    /// writing the first half of its bytes (`true`), or succeed.
    pub fn fail_writes(&self, fail: bool) {
        self.faults.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Number of successful file syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    /// Total bytes of all files (allocated length).
    pub fn total_bytes(&self) -> u64 {
        lock(&self.live)
            .values()
            .map(|f| lock(&f.state).allocated)
            .sum()
    }

    /// The storage after a power loss at this instant. Call it while no
    /// thread is writing (the persister dropped or idle).
    pub fn crash(&self, rng: &mut impl Rng) -> SimStorage {
        let durable = lock(&self.durable);
        let mut files = BTreeMap::new();
        for (name, f) in durable.iter() {
            files.insert(name.clone(), Arc::new(f.crash_image(rng)));
        }
        SimStorage {
            live: Arc::new(Mutex::new(files.clone())),
            durable: Arc::new(Mutex::new(files)),
            faults: Arc::default(),
        }
    }

    /// The storage after a crash of the process only: the page cache
    /// survives, so every file is as the process left it, but directory
    /// changes are kept too (the kernel has them).
    pub fn process_crash(&self) -> SimStorage {
        let live = lock(&self.live);
        let mut files = BTreeMap::new();
        for (name, f) in live.iter() {
            files.insert(name.clone(), Arc::new(f.live_image()));
        }
        SimStorage {
            live: Arc::new(Mutex::new(files.clone())),
            durable: Arc::new(Mutex::new(files)),
            faults: Arc::default(),
        }
    }

    /// Names of the files (live view).
    pub fn list_names(&self) -> Vec<String> {
        lock(&self.live).keys().cloned().collect()
    }

    /// A copy of a file's live bytes (`None` if missing).
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.live).get(name).map(|f| f.live_bytes())
    }

    /// Replaces or creates a file with `bytes`, durable at once (for
    /// corruption tests).
    pub fn put_file(&self, name: &str, bytes: &[u8]) {
        let f = Arc::new(SimFile::with_bytes(bytes));
        lock(&self.live).insert(name.to_string(), f.clone());
        lock(&self.durable).insert(name.to_string(), f);
    }

    fn get(&self, name: &str) -> io::Result<Arc<SimFile>> {
        lock(&self.live)
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }
}

/// A handle on a simulated file.
pub struct SimHandle {
    file: Arc<SimFile>,
    faults: Arc<Faults>,
}

struct SimState {
    allocated: u64,
    /// Durable bytes; its length is the durable file length.
    durable: Vec<u8>,
    /// Pages written since their last sync.
    dirty: BTreeSet<u64>,
}

struct SimFile {
    /// Live bytes, `capacity` long. Written only past `published` (under
    /// `state`) or in the watermark slot (under `state`).
    buf: Box<[std::cell::UnsafeCell<u8>]>,
    published: AtomicU64,
    state: Mutex<SimState>,
}

// SAFETY: `buf` is written only under the `state` mutex and only in ranges
// no reader can be given (past `published`, or the watermark slot that
// `read` excludes), so shared access from several threads is race-free.
unsafe impl Sync for SimFile {}

impl SimFile {
    fn new(capacity: u64) -> Self {
        SimFile {
            buf: (0..capacity)
                .map(|_| std::cell::UnsafeCell::new(0))
                .collect(),
            published: AtomicU64::new(0),
            state: Mutex::new(SimState {
                allocated: 0,
                durable: Vec::new(),
                dirty: BTreeSet::new(),
            }),
        }
    }

    fn with_bytes(bytes: &[u8]) -> Self {
        let f = SimFile::new(bytes.len().max(1) as u64);
        {
            let mut st = lock(&f.state);
            f.write_at(0, bytes);
            st.allocated = bytes.len() as u64;
            st.durable = bytes.to_vec();
        }
        f.published.store(bytes.len() as u64, Ordering::Release);
        f
    }

    fn ptr(&self) -> *mut u8 {
        // UnsafeCell<u8> has the layout of u8.
        self.buf.as_ptr() as *mut u8
    }

    /// Caller holds `state` and writes only where no reader looks.
    fn write_at(&self, at: u64, bytes: &[u8]) {
        assert!(at + bytes.len() as u64 <= self.buf.len() as u64);
        // SAFETY: in bounds (checked); see the `Sync` impl for aliasing.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr().add(at as usize), bytes.len())
        }
    }

    fn live_range(&self, start: u64, end: u64) -> Vec<u8> {
        // SAFETY: in bounds; callers hold `state`, so no writer runs.
        unsafe {
            std::slice::from_raw_parts(self.ptr().add(start as usize), (end - start) as usize)
                .to_vec()
        }
    }

    fn live_bytes(&self) -> Vec<u8> {
        let st = lock(&self.state);
        self.live_range(0, st.allocated)
    }

    fn live_image(&self) -> SimFile {
        SimFile::with_bytes(&self.live_bytes())
    }

    fn crash_image(&self, rng: &mut impl Rng) -> SimFile {
        let st = lock(&self.state);
        let live = self.live_range(0, st.allocated);
        let mut img = st.durable.clone();
        // Space allocated since the last sync: its length may or may not
        // have reached the disk; either way unwritten space reads as zeros.
        if rng.random_bool(0.5) && img.len() < live.len() {
            img.resize(live.len(), 0);
        }
        for &page in &st.dirty {
            let start = page * PAGE;
            if start >= img.len() as u64 {
                continue;
            }
            let end = (start + PAGE).min(img.len() as u64).min(live.len() as u64);
            match rng.random_range(0..3) {
                0 => {} // never written
                1 => img[start as usize..end as usize]
                    .copy_from_slice(&live[start as usize..end as usize]),
                _ => {
                    let mut s = start;
                    while s < end {
                        let e = (s + SECTOR).min(end);
                        if rng.random_bool(0.5) {
                            img[s as usize..e as usize]
                                .copy_from_slice(&live[s as usize..e as usize]);
                        }
                        s = e;
                    }
                }
            }
        }
        SimFile::with_bytes(&img)
    }
}

impl Storage for SimStorage {
    type File = SimHandle;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.live).keys().cloned().collect())
    }

    fn create(&self, name: &str, capacity: u64) -> io::Result<SimHandle> {
        let mut live = lock(&self.live);
        if live.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let f = Arc::new(SimFile::new(capacity));
        live.insert(name.to_string(), f.clone());
        Ok(SimHandle {
            file: f,
            faults: self.faults.clone(),
        })
    }

    fn open(&self, name: &str) -> io::Result<SimHandle> {
        Ok(SimHandle {
            file: self.get(name)?,
            faults: self.faults.clone(),
        })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        lock(&self.live)
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut live = lock(&self.live);
        let f = live
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        live.insert(to.to_string(), f);
        Ok(())
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let f = self.get(name)?;
        let mut st = lock(f.file_state());
        st.allocated = st.allocated.min(len);
        st.durable.truncate(len as usize);
        let p = f.published.load(Ordering::Acquire).min(len);
        f.published.store(p, Ordering::Release);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        if self.faults.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let live = lock(&self.live).clone();
        *lock(&self.durable) = live;
        Ok(())
    }

    fn describe(&self) -> String {
        "sim".into()
    }
}

impl SimFile {
    fn file_state(&self) -> &Mutex<SimState> {
        &self.state
    }
}

impl SegmentFile for SimHandle {
    fn capacity(&self) -> u64 {
        self.file.buf.len() as u64
    }

    fn allocated(&self) -> u64 {
        lock(&self.file.state).allocated
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.faults.fail_allocate.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if len > self.capacity() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "past capacity"));
        }
        let mut st = lock(&self.file.state);
        st.allocated = st.allocated.max(len);
        Ok(())
    }

    fn published(&self) -> u64 {
        self.file.published.load(Ordering::Acquire)
    }

    fn append(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut st = lock(&self.file.state);
        let start = self.file.published.load(Ordering::Acquire);
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        assert!(
            start + total <= st.allocated,
            "append past the allocated space"
        );
        let failing = self.faults.fail_writes.load(Ordering::SeqCst);
        // A failing write leaves its first half behind, unpublished.
        let mut budget = if failing { total / 2 } else { total };
        let mut at = start;
        for p in parts {
            let p = &p[..(p.len() as u64).min(budget) as usize];
            self.file.write_at(at, p);
            let (first, last) = (at / PAGE, (at + p.len() as u64).div_ceil(PAGE));
            st.dirty.extend(first..last);
            at += p.len() as u64;
            budget -= p.len() as u64;
        }
        if failing {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.published.store(at, Ordering::Release);
        Ok(())
    }

    fn read(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        let slot = (
            WATERMARK_OFFSET as u64,
            (WATERMARK_OFFSET + WATERMARK_LEN) as u64,
        );
        if end > self.published() || (offset < slot.1 && end > slot.0) {
            return None;
        }
        // SAFETY: published bytes are never written again, and the slot is
        // excluded; the slice borrows `self`, which keeps the buffer alive.
        Some(unsafe {
            std::slice::from_raw_parts(self.file.ptr().add(offset as usize), len as usize)
        })
    }

    fn write_watermark(&self, slot: &[u8; WATERMARK_LEN]) -> io::Result<()> {
        let mut st = lock(&self.file.state);
        if self.faults.fail_writes.load(Ordering::SeqCst) {
            self.file
                .write_at(WATERMARK_OFFSET as u64, &slot[..WATERMARK_LEN / 2]);
            st.dirty.insert(0);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.write_at(WATERMARK_OFFSET as u64, slot);
        st.dirty.insert(0);
        Ok(())
    }

    fn watermark(&self) -> [u8; WATERMARK_LEN] {
        let st = lock(&self.file.state);
        let mut slot = [0u8; WATERMARK_LEN];
        if st.allocated >= (WATERMARK_OFFSET + WATERMARK_LEN) as u64 {
            slot.copy_from_slice(&self.file.live_range(
                WATERMARK_OFFSET as u64,
                (WATERMARK_OFFSET + WATERMARK_LEN) as u64,
            ));
        }
        slot
    }

    fn sync(&self, start: u64, end: u64, with_header: bool) -> io::Result<()> {
        if self.faults.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut st = lock(&self.file.state);
        let alloc = st.allocated;
        // fdatasync makes the file length durable too.
        if st.durable.len() as u64 != alloc {
            st.durable.resize(alloc as usize, 0);
        }
        let end = end.min(alloc);
        let mut pages: Vec<u64> = st
            .dirty
            .range(start / PAGE..end.div_ceil(PAGE))
            .copied()
            .collect();
        if with_header && st.dirty.contains(&0) {
            pages.push(0);
        }
        for page in pages {
            let s = page * PAGE;
            let e = (s + PAGE).min(alloc);
            let bytes = self.file.live_range(s, e);
            st.durable[s as usize..e as usize].copy_from_slice(&bytes);
            st.dirty.remove(&page);
        }
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn trim(&self) -> io::Result<()> {
        let mut st = lock(&self.file.state);
        let p = self.file.published.load(Ordering::Acquire);
        st.allocated = p;
        st.durable.resize(p as usize, 0);
        let bytes = self.file.live_range(0, p);
        st.durable.copy_from_slice(&bytes);
        st.dirty.clear();
        Ok(())
    }
}

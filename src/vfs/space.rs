//! Room on a full disk: a reserve file in the data directory, given back
//! when the disk fills so that deletes (which need a little metadata and
//! log space themselves) can still run and free space, and a compaction
//! of the whole log, which gives back the space of flushed and removed
//! records. Taken again once the disk has room.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slicefs_wal::Persister;

use super::lock;

/// Compactions of the whole log for a full disk are at least this far
/// apart (each one costs a new segment file).
const RELIEF_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The reserve is taken again only when the disk has this many times its
/// size free.
const RESTORE_FACTOR: u64 = 4;

/// How often a writer below the free-space floor looks again.
const FLOOR_POLL: Duration = Duration::from_millis(50);

/// The free-space floor (`--free-space-ratio`): the fraction of the data
/// directory's disk kept free, and how long a writer waits for room.
pub(super) struct Floor {
    pub ratio: f64,
    pub wait: Duration,
}

pub(super) struct Space {
    /// The reserve file, if the VFS keeps one.
    reserve: Option<PathBuf>,
    floor: Option<Floor>,
    bytes: u64,
    held: AtomicBool,
    last_relief: Mutex<Option<Instant>>,
    persister: Arc<dyn Persister>,
}

impl Space {
    /// Takes `bytes` in `reserve` (best effort: on a disk already full the
    /// reserve is taken later, by [`Space::restore`]).
    pub fn new(
        reserve: Option<PathBuf>,
        bytes: u64,
        floor: Option<Floor>,
        persister: Arc<dyn Persister>,
    ) -> Space {
        let s = Space {
            floor: floor.filter(|f| f.ratio > 0.0 && reserve.is_some()),
            reserve,
            bytes,
            held: AtomicBool::new(false),
            last_relief: Mutex::new(None),
            persister,
        };
        s.take();
        s
    }

    fn take(&self) {
        let Some(path) = &self.reserve else {
            return;
        };
        let r = (|| {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
            // SAFETY: fallocate on a descriptor this function owns; no
            // memory is passed.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, self.bytes as libc::off_t) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                let _ = f.set_len(0);
                return Err(e);
            }
            f.sync_all()
        })();
        match r {
            Ok(()) => self.held.store(true, Ordering::Release),
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "reserve not taken"),
        }
    }

    /// The disk is full. Compacts the whole log (at most once a second),
    /// and with `release` also gives the reserve back, so that a delete
    /// can go on. Best effort: errors are logged.
    pub fn relieve(&self, release: bool) {
        if release
            && let Some(path) = &self.reserve
            && self.held.swap(false, Ordering::AcqRel)
        {
            match std::fs::OpenOptions::new().write(true).open(path) {
                Ok(f) => {
                    let _ = f.set_len(0);
                    tracing::warn!(
                        bytes = self.bytes,
                        "the data directory's disk is full: gave back the reserve so deletes can go on"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "could not give back the reserve"),
            }
        }
        {
            let mut last = lock(&self.last_relief);
            if last.is_some_and(|t| t.elapsed() < RELIEF_MIN_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        if self.persister.is_enabled()
            && let Err(e) = self.persister.reclaim_all()
        {
            tracing::debug!(error = %e, "log compaction for a full disk failed");
        }
    }

    /// Room for a write of `bytes` to the log above the free-space floor:
    /// at once if the disk has it; else compacts the log (at most once a
    /// second) and looks again every 50 ms while uploads make flushed
    /// records reclaimable, for the floor's wait at most.
    ///
    /// # Errors
    /// The text for `ENOSPC` when the wait ran out.
    pub fn room_for_write(&self, bytes: u64) -> Result<(), String> {
        let (Some(floor), Some(path)) = (&self.floor, &self.reserve) else {
            return Ok(());
        };
        let Some(dir) = path.parent() else {
            return Ok(());
        };
        let deadline = Instant::now() + floor.wait;
        loop {
            // A disk that cannot be asked is not held against the writer.
            let Ok((free, total)) = disk_space(dir) else {
                return Ok(());
            };
            let keep = (floor.ratio * total as f64) as u64;
            if free >= keep.saturating_add(bytes) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the data directory's disk has {} free, and --free-space-ratio {} keeps {} free \
                     (uploads and log compaction did not make room in {:?})",
                    bytesize::ByteSize(free),
                    floor.ratio,
                    bytesize::ByteSize(keep),
                    floor.wait
                ));
            }
            self.relieve(false);
            std::thread::sleep(FLOOR_POLL);
        }
    }

    /// Takes the reserve again if it was given back and the disk has room.
    pub fn restore(&self) {
        let Some(path) = &self.reserve else {
            return;
        };
        if self.held.load(Ordering::Acquire) {
            return;
        }
        let Some(dir) = path.parent() else {
            return;
        };
        let free = free_bytes(dir).unwrap_or(0);
        if free >= RESTORE_FACTOR * self.bytes {
            self.take();
            if self.held.load(Ordering::Acquire) {
                tracing::info!("the data directory's disk has room again: reserve taken back");
            }
        }
    }
}

/// Bytes available to this process on the file system of `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    disk_space(dir).map(|(free, _)| free)
}

/// (bytes available to this process, total bytes) of the file system of
/// `dir`.
fn disk_space(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable
    // memory of the right type; statvfs fills it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
}

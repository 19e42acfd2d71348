//! [`MmapPersister`]: the log as segment files, appended with `pwritev`
//! and read through a shared read-only memory map.
//!
//! Locking order: `reclaim_lock` -> `inner` -> (a segment's own append
//! lock). `sync_state` is never held while taking `inner`... except by the
//! sync leader, which takes `inner` briefly with `sync_state` released.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::WalError;
use crate::format::{
    EncodedRecord, FLAG_COMPACTED, HEADER_LEN, RECORD_HEADER_LEN, SLICE_PAYLOAD_LEN, SegmentHeader,
    WATERMARK_LEN, WATERMARK_OFFSET, encode_watermark, padded,
};
use crate::index::{LiveIndex, Moved};
use crate::recovery::{
    Corruption, Recovery, RecoveryMode, RecoveryStats, ReplaySource, ReplaySpan,
};
use crate::scan::{CORRUPT_SUFFIX, LogScan, TMP_SUFFIX, compacted_name, scan, segment_name};
use crate::storage::{MmapStorage, SegmentFile, Storage};
use crate::types::{FileId, FlushedMarker, Lsn, RecordKind, SliceWrite};
use crate::{LoggedBytes, Persister, Result};

/// When appends become durable against power loss. Every mode keeps a
/// returned append across a crash of the process (the record is in the
/// page cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every append is durable before it returns. Concurrent appenders
    /// share one `fdatasync` (group commit).
    Always,
    /// Appends return at once; a background sync runs every `max_delay`,
    /// so a power loss loses at most the last `max_delay` (plus one sync)
    /// of appends. [`Persister::sync`] waits for durability.
    Batch {
        /// Longest time an append stays only in the page cache.
        max_delay: Duration,
    },
    /// The persister never syncs on its own: a power loss may lose any
    /// append not covered by an explicit [`Persister::sync`].
    None,
}

/// Start-up settings of an [`MmapPersister`].
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Default: `Batch { max_delay: 5 ms }`.
    pub durability: Durability,
    /// Address space reserved per segment file, in bytes; a record larger
    /// than this gets a segment of its own. Default: 64 MiB. Minimum: 64 KiB.
    pub segment_bytes: u64,
    /// Bytes allocated (fallocate) at a time as a segment grows.
    /// Default: 4 MiB. Minimum: 4 KiB.
    pub grow_bytes: u64,
    /// What to do with corruption found at open. Default: strict.
    pub recovery_mode: RecoveryMode,
    /// Compact in a background thread once sealed segments hold more dead
    /// bytes than live ones (and at least one segment's worth). Default: on.
    pub auto_reclaim: bool,
    /// The first LSN of a log that has no segment yet (a new or wiped
    /// directory); a log with segments goes on from where it ends. Its
    /// owner sets it past every LSN it still remembers (metadata's
    /// truncate LSNs), so that a recreated log never hands out an LSN
    /// that means something else there. Default: 1. Minimum: 1.
    pub first_lsn: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            durability: Durability::Batch {
                max_delay: Duration::from_millis(5),
            },
            segment_bytes: 64 << 20,
            grow_bytes: 4 << 20,
            recovery_mode: RecoveryMode::Strict,
            auto_reclaim: true,
            first_lsn: 1,
        }
    }
}

/// What a reclaim did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReclaimStats {
    /// Segment files replaced.
    pub segments_compacted: u64,
    /// Bytes of the replaced files.
    pub bytes_before: u64,
    /// Bytes of the compacted file that replaced them.
    pub bytes_after: u64,
    /// Live slice bytes copied.
    pub live_bytes: u64,
}

struct Segment<F> {
    file: F,
    name: String,
    header: SegmentHeader,
    /// Bytes known durable (everything below was synced).
    synced_to: AtomicU64,
    /// End of the records of a segment found at open (its file may be
    /// longer: allocated zeros); `None` for segments written since.
    records_end: Option<u64>,
}

impl<F: SegmentFile> Segment<F> {
    fn records_end(&self) -> u64 {
        if self.header.is_compacted() {
            self.header.data_end
        } else {
            self.records_end.unwrap_or_else(|| self.file.published())
        }
    }
}

impl<F: SegmentFile> ReplaySource for Segment<F> {
    fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        self.file.read(offset, len)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A record just appended: its LSN, its segment, and where in the segment
/// it starts.
type Appended<F> = (Lsn, Arc<Segment<F>>, u64);

struct Inner<F> {
    next_lsn: u64,
    active: Arc<Segment<F>>,
    /// All retained segments by first LSN, the active one included.
    segments: BTreeMap<u64, Arc<Segment<F>>>,
    index: LiveIndex,
    /// A file was created, renamed or removed since the last sync.
    dir_dirty: bool,
}

#[derive(Default)]
struct SyncState {
    durable: u64,
    in_progress: bool,
}

#[derive(Default)]
struct Background {
    shutdown: bool,
    reclaim_requested: bool,
}

struct Shared<S: Storage> {
    storage: S,
    config: WalConfig,
    wal_id: u64,
    inner: Mutex<Inner<S::File>>,
    sync_state: Mutex<SyncState>,
    sync_cv: Condvar,
    durable: AtomicU64,
    next_lsn: AtomicU64,
    poisoned: AtomicBool,
    poison_cause: Mutex<String>,
    closed: AtomicBool,
    open_stats: RecoveryStats,
    bg: Mutex<Background>,
    bg_cv: Condvar,
    /// The batch syncer sleeps until an append (nothing to sync): an
    /// append then wakes it. Idle, the log takes no wake-ups.
    syncer_idle: AtomicBool,
    reclaim_lock: Mutex<()>,
    reclaim_barrier: Mutex<Option<Arc<crate::ReclaimBarrier>>>,
    /// Live bytes compactions copied since open.
    copied: AtomicU64,
}

/// The log on segment files: appended with `pwritev`, read (recovery,
/// compaction) through a shared read-only memory map without copying.
///
/// `S` is the storage: [`MmapStorage`] (a directory) in production,
/// [`crate::sim::SimStorage`] in crash tests.
///
/// # Durability
/// See [`Durability`]. Records are written at the end of the active
/// segment under one lock (so LSN order is file order); syncs run outside
/// it with `fdatasync` of each segment with unsynced bytes, oldest first, after
/// an `fsync` of the directory when a segment file was created. Space is
/// allocated with `fallocate` before any byte is written into it, so a
/// full disk fails the append with an error ([`WalError::is_disk_full`])
/// and consumes no LSN; it never raises `SIGBUS`.
///
/// # On-disk layout and recovery
/// See [`crate::format`] and `doc/DESIGN.md`.
pub struct MmapPersister<S: Storage = MmapStorage> {
    shared: Arc<Shared<S>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    _lock: Option<File>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Name of the directory lock file.
pub const LOCK_FILE: &str = "LOCK";

impl MmapPersister<MmapStorage> {
    /// Opens (or creates) the log in directory `dir`, recovering what is
    /// there: the torn tail of a crash is cut, corruption before the
    /// durable watermark fails the open (see [`RecoveryMode`]).
    ///
    /// # Errors
    /// [`WalError::Locked`] if another process (or another log in this
    /// one) has the directory open, after retrying for half a second;
    /// [`WalError::Corrupt`] / [`WalError::BadHeader`] for damaged logs;
    /// [`WalError::Io`] for I/O failures.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<Self> {
        let dir = dir.as_ref();
        let lock_file = lock_dir(dir)?;
        let storage = MmapStorage::new(dir)
            .map_err(|e| WalError::io("open", dir.display().to_string(), e))?;
        let mut p = Self::open_on(storage, config)?;
        p._lock = Some(lock_file);
        Ok(p)
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)
        .map_err(|e| WalError::io("mkdir", dir.display().to_string(), e))?;
    let path: PathBuf = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io("open", path.display().to_string(), e))?;
    // A lock released by a log just closed in this process can linger for
    // a moment: a child another thread is spawning shares the descriptor
    // (and so the lock) until it execs. Seen as a rare `Locked` in the
    // parallel tests; a short wait covers it, and a real second user
    // still gets `Locked`.
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(WalError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(WalError::io("flock", path.display().to_string(), e));
            }
        }
    }
}

/// How long [`MmapPersister::open`] retries a held directory lock before
/// it reports [`WalError::Locked`].
const LOCK_WAIT: Duration = Duration::from_millis(500);

impl<S: Storage> MmapPersister<S> {
    /// Opens the log kept in `storage` (see [`MmapPersister::open`]). No
    /// directory lock is taken: the caller owns the storage.
    pub fn open_on(storage: S, config: WalConfig) -> Result<Self> {
        if config.segment_bytes < 64 << 10 || config.grow_bytes < 4096 {
            return Err(WalError::InvalidArgument(
                "segment_bytes must be >= 64 KiB and grow_bytes >= 4 KiB".into(),
            ));
        }
        let t0 = Instant::now();
        let dir = storage.describe();
        let log = scan(&storage)?;
        let LogScan {
            wal_id,
            segments,
            superseded,
            tmp_files,
            failure,
            mut stats,
            index,
            ..
        } = log;
        let wal_id = wal_id.unwrap_or_else(rand::random);
        let mut keep = segments;
        let mut dir_changed = false;
        for name in tmp_files.iter().chain(superseded.iter()) {
            storage
                .remove(name)
                .map_err(|e| WalError::io("remove", name, e))?;
            dir_changed = true;
        }
        stats.segments_removed += superseded.len() as u64;

        if let Some(f) = failure {
            if !f.torn && config.recovery_mode == RecoveryMode::Strict {
                return Err(WalError::Corrupt {
                    file: f.file,
                    offset: f.offset,
                    reason: format!(
                        "{} (records up to LSN {} were acknowledged durable, the valid prefix ends at LSN {})",
                        f.reason, stats.watermark, stats.last_lsn
                    ),
                });
            }
            let later = keep.split_off(f.segment + 1);
            let failed = keep.pop().expect("failure names a scanned segment");
            let keep_prefix = failed.header.is_some() && failed.records > 0;
            if f.torn {
                tracing::warn!(file = %f.file, offset = f.offset, reason = %f.reason,
                    bytes = stats.torn_bytes, "cutting the torn tail of the log");
                if keep_prefix {
                    storage
                        .truncate(&failed.name, f.offset)
                        .map_err(|e| WalError::io("truncate", &failed.name, e))?;
                    let file = storage
                        .open(&failed.name)
                        .map_err(|e| WalError::io("open", &failed.name, e))?;
                    keep.push(crate::scan::ScannedSegment {
                        file,
                        len: f.offset,
                        ..failed
                    });
                } else {
                    drop(failed.file);
                    storage
                        .remove(&failed.name)
                        .map_err(|e| WalError::io("remove", &failed.name, e))?;
                    stats.segments_removed += 1;
                }
                for s in later {
                    drop(s.file);
                    storage
                        .remove(&s.name)
                        .map_err(|e| WalError::io("remove", &s.name, e))?;
                    stats.segments_removed += 1;
                }
            } else {
                tracing::error!(file = %f.file, offset = f.offset, reason = %f.reason,
                    "corrupt log: keeping the valid prefix, moving damaged files aside");
                let prefix = if keep_prefix {
                    Some(copy_prefix(&failed, f.offset, &stats)?)
                } else {
                    None
                };
                drop(failed.file);
                for name in std::iter::once(&failed.name).chain(later.iter().map(|s| &s.name)) {
                    let aside = format!("{name}{CORRUPT_SUFFIX}");
                    storage
                        .rename(name, &aside)
                        .map_err(|e| WalError::io("rename", name, e))?;
                }
                if let Some(bytes) = prefix {
                    // A compacted prefix covers a shorter range: its name
                    // says so, or the next open would refuse it.
                    let name = match failed.header {
                        Some(h) if h.is_compacted() => {
                            compacted_name(h.first_lsn, Lsn(stats.last_lsn + 1))
                        }
                        _ => failed.name.clone(),
                    };
                    write_whole_file(&storage, &name, &bytes)?;
                    let file = storage
                        .open(&name)
                        .map_err(|e| WalError::io("open", &name, e))?;
                    let header = failed.header.expect("prefix needs a header");
                    let header = SegmentHeader {
                        end_lsn: if header.is_compacted() {
                            Lsn(stats.last_lsn + 1)
                        } else {
                            header.end_lsn
                        },
                        data_end: if header.is_compacted() { f.offset } else { 0 },
                        ..header
                    };
                    keep.push(crate::scan::ScannedSegment {
                        name,
                        file,
                        header: Some(header),
                        len: bytes.len() as u64,
                        valid_end: f.offset,
                        ..failed
                    });
                }
                // Watermarks of kept segments may claim LSNs that are now
                // gone; lower them, or every later open reports the loss
                // again.
                for s in &keep {
                    if let Some(h) = s.header
                        && !h.is_compacted()
                        && crate::format::decode_watermark(h.record_seed(), &s.file.watermark())
                            .is_some_and(|w| w.0 > stats.last_lsn)
                    {
                        s.file
                            .write_watermark(&encode_watermark(
                                h.record_seed(),
                                Lsn(stats.last_lsn),
                            ))
                            .map_err(|e| WalError::io("pwrite", &s.name, e))?;
                        s.file
                            .sync(0, 0, true)
                            .map_err(|e| WalError::io("fdatasync", &s.name, e))?;
                    }
                }
                stats.corruption = Some(Corruption {
                    file: f.file,
                    offset: f.offset,
                    reason: f.reason,
                });
            }
            dir_changed = true;
        }

        // Empty normal segments hold nothing (a new one starts below).
        let mut segments = BTreeMap::new();
        for s in keep {
            let h = s
                .header
                .expect("scanned segments before a failure have headers");
            if !h.is_compacted() && s.records == 0 {
                drop(s.file);
                storage
                    .remove(&s.name)
                    .map_err(|e| WalError::io("remove", &s.name, e))?;
                dir_changed = true;
                continue;
            }
            // What survived may sit only in the page cache (a crash of the
            // process in mode None): make it durable before anything new
            // is acknowledged after it.
            s.file
                .sync(HEADER_LEN as u64, s.file.published(), false)
                .map_err(|e| WalError::io("fdatasync", &s.name, e))?;
            let seg = Segment {
                synced_to: AtomicU64::new(s.file.published()),
                records_end: Some(s.valid_end),
                file: s.file,
                name: s.name,
                header: h,
            };
            segments.insert(h.first_lsn.0, Arc::new(seg));
        }
        if dir_changed {
            storage
                .sync_dir()
                .map_err(|e| WalError::io("fsync", &dir, e))?;
        }

        // The scan built the live index of the valid prefix; cutting a torn
        // tail or moving damaged files aside kept segment keys and offsets.
        stats.live_data_bytes = index.live_bytes();

        let mut next_lsn = stats.last_lsn + 1;
        if segments.is_empty() {
            next_lsn = next_lsn.max(config.first_lsn);
        }
        let durable = next_lsn - 1;
        let active = create_segment(
            &storage,
            &config,
            wal_id,
            Lsn(next_lsn),
            Lsn(durable),
            0,
            false,
        )?;
        segments.insert(next_lsn, active.clone());
        storage
            .sync_dir()
            .map_err(|e| WalError::io("fsync", &dir, e))?;
        active.synced_to.store(0, Ordering::Release);
        stats.duration = t0.elapsed();

        let shared = Arc::new(Shared {
            storage,
            wal_id,
            inner: Mutex::new(Inner {
                next_lsn,
                active,
                segments,
                index,
                dir_dirty: false,
            }),
            sync_state: Mutex::new(SyncState {
                durable,
                in_progress: false,
            }),
            sync_cv: Condvar::new(),
            durable: AtomicU64::new(durable),
            next_lsn: AtomicU64::new(next_lsn),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(String::new()),
            closed: AtomicBool::new(false),
            open_stats: stats,
            bg: Mutex::new(Background::default()),
            syncer_idle: AtomicBool::new(false),
            bg_cv: Condvar::new(),
            reclaim_lock: Mutex::new(()),
            reclaim_barrier: Mutex::new(None),
            copied: AtomicU64::new(0),
            config,
        });
        let mut threads = Vec::new();
        if let Durability::Batch { max_delay } = shared.config.durability {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("wal-sync".into())
                    .spawn(move || s.batch_syncer(max_delay))
                    .map_err(|e| WalError::io("spawn", "wal-sync", e))?,
            );
        }
        if shared.config.auto_reclaim {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("wal-reclaim".into())
                    .spawn(move || s.reclaimer())
                    .map_err(|e| WalError::io("spawn", "wal-reclaim", e))?,
            );
        }
        Ok(MmapPersister {
            shared,
            threads: Mutex::new(threads),
            _lock: None,
        })
    }

    /// What the scan at open found.
    pub fn open_stats(&self) -> &RecoveryStats {
        &self.shared.open_stats
    }

    /// The log's identity (the same in every segment header).
    pub fn wal_id(&self) -> u64 {
        self.shared.wal_id
    }

    /// Bytes of segment files on disk (allocated length).
    pub fn disk_bytes(&self) -> u64 {
        let inner = lock(&self.shared.inner);
        inner.segments.values().map(|s| s.file.allocated()).sum()
    }

    /// Slice bytes not yet flushed (what reclaim must keep).
    pub fn live_bytes(&self) -> u64 {
        lock(&self.shared.inner).index.live_bytes()
    }

    /// Live slice bytes that compactions copied into new files since
    /// open: the log's write amplification from reclaim, in bytes.
    pub fn compaction_copied_bytes(&self) -> u64 {
        self.shared.copied.load(Ordering::Relaxed)
    }

    /// What background reclaim does when a segment fills
    /// (`auto_reclaim`): compacts the sealed segments only where that pays
    /// for itself, and drops a leading run of wholly flushed segments
    /// without copying a byte (see `doc/DESIGN.md`, "Reclaim").
    /// [`Persister::reclaim`] compacts every sealed segment.
    ///
    /// # Errors
    /// As [`Persister::reclaim`].
    pub fn reclaim_auto(&self) -> Result<ReclaimStats> {
        self.shared.reclaim(false)
    }

    /// The storage under the log.
    pub fn storage(&self) -> &S {
        &self.shared.storage
    }

    fn stop_threads(&self) {
        {
            let mut bg = lock(&self.shared.bg);
            bg.shutdown = true;
        }
        self.shared.bg_cv.notify_all();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

/// Offset of slice data from the start of its record.
fn data_offset() -> u64 {
    (RECORD_HEADER_LEN + SLICE_PAYLOAD_LEN) as u64
}

/// Creates a normal segment starting at `first` with room for a record of
/// `need` bytes, header written (not yet synced).
/// Creates the segment file for `first`, with room for a record of
/// `need` bytes. With `replacing`, a segment of that name exists (empty):
/// the new one is written under a temporary name and renamed over it.
#[allow(clippy::too_many_arguments)]
fn create_segment<S: Storage>(
    storage: &S,
    config: &WalConfig,
    wal_id: u64,
    first: Lsn,
    durable: Lsn,
    need: u64,
    replacing: bool,
) -> Result<Arc<Segment<S::File>>> {
    let final_name = segment_name(first);
    let name = if replacing {
        format!("{final_name}{TMP_SUFFIX}")
    } else {
        final_name.clone()
    };
    let header = SegmentHeader {
        flags: 0,
        wal_id,
        salt: rand::random(),
        first_lsn: first,
        end_lsn: Lsn(0),
        data_end: 0,
    };
    let capacity = config.segment_bytes.max(HEADER_LEN as u64 + need);
    let file = storage
        .create(&name, capacity)
        .map_err(|e| WalError::io("create", &name, e))?;
    let initial = (HEADER_LEN as u64 + need)
        .max(config.grow_bytes)
        .min(capacity);
    if let Err(e) = file.allocate(initial) {
        drop(file);
        let _ = storage.remove(&name);
        return Err(WalError::io("fallocate", &name, e));
    }
    let mut head = header.encode();
    head[WATERMARK_OFFSET..WATERMARK_OFFSET + WATERMARK_LEN]
        .copy_from_slice(&encode_watermark(header.record_seed(), durable));
    if let Err(e) = file.append(&[&head]) {
        drop(file);
        let _ = storage.remove(&name);
        return Err(WalError::io("pwrite", &name, e));
    }
    if replacing && let Err(e) = storage.rename(&name, &final_name) {
        drop(file);
        let _ = storage.remove(&name);
        return Err(WalError::io("rename", &name, e));
    }
    Ok(Arc::new(Segment {
        file,
        name: final_name,
        header,
        synced_to: AtomicU64::new(0),
        records_end: None,
    }))
}

/// The bytes of a damaged segment's valid prefix as a complete file whose
/// header agrees with it (watermark = last kept LSN).
fn copy_prefix<F: SegmentFile>(
    seg: &crate::scan::ScannedSegment<F>,
    valid_end: u64,
    stats: &RecoveryStats,
) -> Result<Vec<u8>> {
    let h = seg.header.expect("caller checked the header");
    let h = if h.is_compacted() {
        SegmentHeader {
            end_lsn: Lsn(stats.last_lsn + 1),
            data_end: valid_end,
            ..h
        }
    } else {
        h
    };
    let mut out = h.encode().to_vec();
    out[WATERMARK_OFFSET..WATERMARK_OFFSET + WATERMARK_LEN]
        .copy_from_slice(&encode_watermark(h.record_seed(), Lsn(stats.last_lsn)));
    let body = seg
        .file
        .read(HEADER_LEN as u64, valid_end - HEADER_LEN as u64)
        .ok_or_else(|| WalError::Corrupt {
            file: seg.name.clone(),
            offset: valid_end,
            reason: "valid prefix not readable".into(),
        })?;
    out.extend_from_slice(body);
    Ok(out)
}

/// Writes `bytes` as file `name` through a temporary file: durable and
/// complete, or absent.
fn write_whole_file<S: Storage>(storage: &S, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = format!("{name}{TMP_SUFFIX}");
    let len = bytes.len() as u64;
    let f = storage
        .create(&tmp, len.max(1))
        .map_err(|e| WalError::io("create", &tmp, e))?;
    f.allocate(len)
        .map_err(|e| WalError::io("fallocate", &tmp, e))?;
    f.append(&[bytes])
        .map_err(|e| WalError::io("pwrite", &tmp, e))?;
    f.sync(0, len, true)
        .map_err(|e| WalError::io("fdatasync", &tmp, e))?;
    drop(f);
    storage
        .rename(&tmp, name)
        .map_err(|e| WalError::io("rename", &tmp, e))?;
    storage
        .sync_dir()
        .map_err(|e| WalError::io("fsync", storage.describe(), e))
}

impl<S: Storage> Shared<S> {
    fn check_usable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(WalError::Poisoned {
                cause: lock(&self.poison_cause).clone(),
            });
        }
        Ok(())
    }

    fn poison(&self, cause: String) {
        tracing::error!(%cause, "log poisoned: no more appends or syncs until reopened");
        let mut c = lock(&self.poison_cause);
        if c.is_empty() {
            *c = cause;
        }
        self.poisoned.store(true, Ordering::Release);
    }

    fn append(&self, kind: RecordKind<'_>) -> Result<Lsn> {
        self.append_at(kind).map(|(lsn, _, _)| lsn)
    }

    /// Appends a record; returns its LSN, its segment and where in the
    /// segment it starts.
    fn append_at(&self, kind: RecordKind<'_>) -> Result<Appended<S::File>> {
        self.check_usable()?;
        let (lsn, seg, at) = {
            let mut inner = lock(&self.inner);
            let lsn = Lsn(inner.next_lsn);
            if lsn.0 >= crate::format::MAX_LSN {
                return Err(WalError::InvalidArgument(format!(
                    "the log has used all LSNs up to {}",
                    crate::format::MAX_LSN
                )));
            }
            let mut rec = EncodedRecord::new(inner.active.header.record_seed(), lsn, &kind)
                .map_err(WalError::InvalidArgument)?;
            let need = rec.disk_len() as u64;
            if inner.active.file.published() + need > inner.active.file.capacity() {
                let durable = self.durable.load(Ordering::Acquire);
                // An active segment that holds no record has the name the
                // new one gets: the new one is made under a temporary name
                // and renamed over it, so that a failure (a full disk)
                // leaves the old one in place and active.
                let replacing = inner.active.file.published() == HEADER_LEN as u64;
                let seg = create_segment(
                    &self.storage,
                    &self.config,
                    self.wal_id,
                    lsn,
                    Lsn(durable),
                    need,
                    replacing,
                )?;
                inner.segments.insert(lsn.0, seg.clone());
                inner.active = seg;
                inner.dir_dirty = true;
                rec = EncodedRecord::new(inner.active.header.record_seed(), lsn, &kind)
                    .map_err(WalError::InvalidArgument)?;
                self.maybe_request_reclaim(&inner);
            }
            let seg = inner.active.clone();
            let at = seg.file.published();
            if at + need > seg.file.allocated() {
                let want = (at + need)
                    .max(seg.file.allocated() + self.config.grow_bytes)
                    .min(seg.file.capacity());
                seg.file
                    .allocate(want)
                    .map_err(|e| WalError::io("fallocate", &seg.name, e))?;
            }
            // A failed write uses no LSN; the next append overwrites what
            // it left past the published end.
            seg.file
                .append(&[rec.head(), rec.data(), rec.padding()])
                .map_err(|e| WalError::io("pwrite", &seg.name, e))?;
            inner
                .index
                .apply(lsn, seg.header.first_lsn.0, at + data_offset(), &kind);
            inner.next_lsn += 1;
            self.next_lsn.store(inner.next_lsn, Ordering::SeqCst);
            (lsn, seg, at)
        };
        // SeqCst with the syncer's flag and check (`batch_syncer`): either
        // it sees this LSN before it sleeps, or this sees it asleep.
        if self.syncer_idle.load(Ordering::SeqCst) {
            let _bg = lock(&self.bg);
            self.bg_cv.notify_all();
        }
        if self.config.durability == Durability::Always {
            self.sync_to(lsn.0)?;
        }
        Ok((lsn, seg, at))
    }

    fn maybe_request_reclaim(&self, inner: &Inner<S::File>) {
        if self.config.auto_reclaim && self.auto_boundary(inner).is_some() {
            lock(&self.bg).reclaim_requested = true;
            self.bg_cv.notify_all();
        }
    }

    /// Where an automatic reclaim ends (the LSN below which it rewrites
    /// the sealed segments), or `None` when it would gain too little:
    /// - all sealed segments, when rewriting them pays for itself: the
    ///   dead bytes among them (outside a leading run of wholly dead
    ///   segments) are at least their live bytes and one segment;
    /// - else the leading run of sealed segments that hold no live byte
    ///   (unless it is only a compacted segment of a header alone): those
    ///   go without a byte copied (such a header-only segment takes their
    ///   place). Uploads finish roughly in the order bytes were written,
    ///   so under a steady stream of writes this is the usual case, and
    ///   the log is not rewritten while uploads catch up.
    fn auto_boundary(&self, inner: &Inner<S::File>) -> Option<u64> {
        let sealed_end = inner.active.header.first_lsn.0;
        let mut sealed = 0;
        let mut prefix = 0;
        let mut prefix_end = None;
        for (&key, s) in inner.segments.range(..sealed_end) {
            let bytes = s.file.published();
            sealed += bytes;
            if prefix_end.is_none() {
                if inner.index.live_bytes_in(key) == 0 {
                    prefix += bytes;
                } else {
                    prefix_end = Some(key);
                }
            }
        }
        let live = inner.index.live_bytes_below(sealed_end);
        let dead_rest = sealed.saturating_sub(live).saturating_sub(prefix);
        let segment = self.config.segment_bytes;
        if dead_rest >= live.max(segment) {
            Some(sealed_end)
        } else if prefix > HEADER_LEN as u64 {
            Some(prefix_end.unwrap_or(sealed_end))
        } else {
            None
        }
    }

    /// Group commit: returns once everything up to `target` is durable.
    fn sync_to(&self, target: u64) -> Result<Lsn> {
        let mut st = lock(&self.sync_state);
        loop {
            self.check_usable()?;
            if st.durable >= target {
                return Ok(Lsn(st.durable));
            }
            if !st.in_progress {
                break;
            }
            st = self.sync_cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.in_progress = true;
        let prev = st.durable;
        drop(st);
        let result = self.sync_once(prev);
        let mut st = lock(&self.sync_state);
        st.in_progress = false;
        let out = match result {
            Ok(upto) => {
                st.durable = st.durable.max(upto);
                self.durable.store(st.durable, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                self.poison(e.to_string());
                Err(e)
            }
        };
        drop(st);
        self.sync_cv.notify_all();
        out?;
        // Our target was appended before we became leader, so it is covered.
        self.sync_to(target)
    }

    /// Syncs everything appended so far; returns the LSN it covers.
    fn sync_once(&self, prev_durable: u64) -> Result<u64> {
        let (segs, upto, dir_dirty, active) = {
            let mut inner = lock(&self.inner);
            let segs: Vec<(Arc<Segment<S::File>>, u64)> = inner
                .segments
                .values()
                .filter(|s| s.synced_to.load(Ordering::Acquire) < s.file.published())
                .map(|s| (s.clone(), s.file.published()))
                .collect();
            let dirty = std::mem::take(&mut inner.dir_dirty);
            (segs, inner.next_lsn - 1, dirty, inner.active.clone())
        };
        if dir_dirty {
            self.storage
                .sync_dir()
                .map_err(|e| WalError::io("fsync", self.storage.describe(), e))?;
        }
        // The watermark says what the previous sync made durable; it rides
        // along with this sync at no extra flush.
        active
            .file
            .write_watermark(&encode_watermark(
                active.header.record_seed(),
                Lsn(prev_durable),
            ))
            .map_err(|e| WalError::io("pwrite", &active.name, e))?;
        let mut synced_active = false;
        for (seg, to) in segs {
            let is_active = Arc::ptr_eq(&seg, &active);
            synced_active |= is_active;
            let from = seg.synced_to.load(Ordering::Acquire);
            seg.file
                .sync(from, to, is_active)
                .map_err(|e| WalError::io("fdatasync", &seg.name, e))?;
            seg.synced_to.fetch_max(to, Ordering::AcqRel);
        }
        if !synced_active {
            active
                .file
                .sync(0, 0, true)
                .map_err(|e| WalError::io("fdatasync", &active.name, e))?;
        }
        Ok(upto)
    }

    fn batch_syncer(&self, max_delay: Duration) {
        loop {
            let unsynced =
                || self.next_lsn.load(Ordering::SeqCst) - 1 > self.durable.load(Ordering::Acquire);
            if !unsynced() {
                // Nothing to sync: sleep until an append wakes us.
                let mut bg = lock(&self.bg);
                self.syncer_idle.store(true, Ordering::SeqCst);
                while !bg.shutdown && !unsynced() {
                    bg = self.bg_cv.wait(bg).unwrap_or_else(|e| e.into_inner());
                }
                self.syncer_idle.store(false, Ordering::SeqCst);
                if bg.shutdown {
                    return;
                }
            }
            {
                let bg = lock(&self.bg);
                let (bg, _) = self
                    .bg_cv
                    .wait_timeout_while(bg, max_delay, |b| !b.shutdown)
                    .unwrap_or_else(|e| e.into_inner());
                if bg.shutdown {
                    return;
                }
            }
            let next = self.next_lsn.load(Ordering::Acquire);
            if next - 1 > self.durable.load(Ordering::Acquire)
                && let Err(e) = self.sync_to(next - 1)
            {
                tracing::error!(error = %e, "background sync failed");
                return;
            }
        }
    }

    fn reclaimer(&self) {
        loop {
            {
                let bg = lock(&self.bg);
                let mut bg = self
                    .bg_cv
                    .wait_while(bg, |b| !b.shutdown && !b.reclaim_requested)
                    .unwrap_or_else(|e| e.into_inner());
                if bg.shutdown {
                    return;
                }
                bg.reclaim_requested = false;
            }
            match self.reclaim(false) {
                Ok(s) => tracing::debug!(?s, "log compacted"),
                Err(e) => tracing::warn!(error = %e, "log compaction failed; will retry"),
            }
        }
    }

    /// Seals the active segment (the next append goes to a new one), so
    /// that reclaim can compact it too. Nothing to do while it holds no
    /// record.
    fn seal(&self) -> Result<()> {
        self.check_usable()?;
        let mut inner = lock(&self.inner);
        if inner.active.file.published() == HEADER_LEN as u64 {
            return Ok(());
        }
        let lsn = Lsn(inner.next_lsn);
        let durable = Lsn(self.durable.load(Ordering::Acquire));
        let seg = create_segment(
            &self.storage,
            &self.config,
            self.wal_id,
            lsn,
            durable,
            0,
            false,
        )?;
        inner.segments.insert(lsn.0, seg.clone());
        inner.active = seg;
        inner.dir_dirty = true;
        Ok(())
    }

    /// Compacts the sealed segments (all of them with `whole`, else
    /// those [`Shared::auto_boundary`] picks) into one file holding only
    /// their live slice bytes. See `doc/DESIGN.md`, "Reclaim".
    fn reclaim(&self, whole: bool) -> Result<ReclaimStats> {
        let _one = lock(&self.reclaim_lock);
        self.check_usable()?;
        let (group, boundary, parts, total, snapshot_lsn) = {
            let inner = lock(&self.inner);
            let sealed_end = inner.active.header.first_lsn.0;
            let boundary = if whole {
                sealed_end
            } else {
                match self.auto_boundary(&inner) {
                    Some(b) => b,
                    None => return Ok(ReclaimStats::default()),
                }
            };
            let group: Vec<Arc<Segment<S::File>>> = inner
                .segments
                .range(..boundary)
                .map(|(_, s)| s.clone())
                .collect();
            let parts = inner.index.snapshot_below(boundary);
            let total: u64 = HEADER_LEN as u64
                + parts
                    .iter()
                    .map(|p| {
                        padded(data_offset() as usize + (p.range.1 - p.range.0) as usize) as u64
                    })
                    .sum::<u64>();
            // A lone compacted segment with nothing dead: nothing to gain.
            let nothing_to_gain = group.len() == 1
                && group[0].header.is_compacted()
                && total >= group[0].file.published();
            if group.is_empty() || nothing_to_gain {
                return Ok(ReclaimStats::default());
            }
            (group, boundary, parts, total, inner.next_lsn - 1)
        };
        // The snapshot reflects every flushed marker, remove and truncate
        // up to `snapshot_lsn`. Dropping the bytes they void is safe only
        // once they are durable themselves: a compaction must never be
        // more durable than the records that justify it.
        self.sync_to(snapshot_lsn)?;
        // And only once what justifies them outside the log is durable
        // (the metadata change behind a truncate).
        let barrier = lock(&self.reclaim_barrier).clone();
        if let Some(b) = barrier {
            b().map_err(WalError::ReclaimBarrier)?;
        }
        let first = group[0].header.first_lsn;
        let end = Lsn(boundary);
        let name = compacted_name(first, end);
        let tmp = format!("{name}{TMP_SUFFIX}");
        let header = SegmentHeader {
            flags: FLAG_COMPACTED,
            wal_id: self.wal_id,
            salt: rand::random(),
            first_lsn: first,
            end_lsn: end,
            data_end: total,
        };
        let _ = self.storage.remove(&tmp);
        let file = self
            .storage
            .create(&tmp, total)
            .map_err(|e| WalError::io("create", &tmp, e))?;
        // On an error below, the partial file goes (a leftover would be
        // removed at the next open anyway).
        let discard = |op: &'static str, e: std::io::Error| {
            let _ = self.storage.remove(&tmp);
            WalError::io(op, &tmp, e)
        };
        file.allocate(total).map_err(|e| discard("fallocate", e))?;
        let mut head = header.encode();
        head[WATERMARK_OFFSET..WATERMARK_OFFSET + WATERMARK_LEN]
            .copy_from_slice(&encode_watermark(header.record_seed(), Lsn(end.0 - 1)));
        file.append(&[&head]).map_err(|e| discard("pwrite", e))?;
        let by_key: HashMap<u64, &Arc<Segment<S::File>>> =
            group.iter().map(|s| (s.header.first_lsn.0, s)).collect();
        let mut moved = Moved::new();
        let mut live_bytes = 0;
        for p in &parts {
            let len = u64::from(p.range.1 - p.range.0);
            let src = by_key
                .get(&p.src_seg)
                .and_then(|s| s.file.read(p.src_at, len))
                .ok_or_else(|| WalError::Corrupt {
                    file: format!("segment {:016x}", p.src_seg),
                    offset: p.src_at,
                    reason: "live range not readable during compaction".into(),
                })?;
            let kind = RecordKind::Slice(SliceWrite {
                file: p.file,
                chunk: p.chunk,
                slice: p.slice,
                offset: p.range.0,
                data: src,
            });
            let rec = EncodedRecord::new(header.record_seed(), p.lsn, &kind)
                .map_err(WalError::InvalidArgument)?;
            let at = file.published();
            file.append(&[rec.head(), rec.data(), rec.padding()])
                .map_err(|e| discard("pwrite", e))?;
            if let Err(e) = crate::media::check(src) {
                // The source read as zeros where the disk failed: the
                // copy is not the data. Keep the old segments.
                let _ = self.storage.remove(&tmp);
                return Err(WalError::Corrupt {
                    file: format!("segment {:016x}", p.src_seg),
                    offset: p.src_at,
                    reason: e.to_string(),
                });
            }
            moved
                .entry((p.file, p.chunk, p.lsn))
                .or_default()
                .push((p.range, at + data_offset()));
            live_bytes += len;
        }
        debug_assert_eq!(file.published(), total);
        file.sync(0, total, true)
            .map_err(|e| discard("fdatasync", e))?;
        self.storage
            .rename(&tmp, &name)
            .map_err(|e| WalError::io("rename", &tmp, e))?;
        if let Err(e) = self.storage.sync_dir() {
            // The rename may or may not be durable: either state recovers,
            // but this process can no longer tell which files are current.
            let e = WalError::io("fsync", self.storage.describe(), e);
            self.poison(e.to_string());
            return Err(e);
        }
        let seg = Arc::new(Segment {
            synced_to: AtomicU64::new(total),
            records_end: None,
            file,
            name: name.clone(),
            header,
        });
        let bytes_before: u64 = group.iter().map(|s| s.file.published()).sum();
        {
            let mut inner = lock(&self.inner);
            for s in &group {
                inner.segments.remove(&s.header.first_lsn.0);
            }
            inner.segments.insert(first.0, seg);
            inner.index.relocate(boundary, first.0, &moved);
        }
        for s in &group {
            if s.name != name
                && let Err(e) = self.storage.remove(&s.name)
            {
                tracing::warn!(file = %s.name, error = %e, "could not remove a compacted segment; it is superseded and will be removed at the next open");
            }
        }
        lock(&self.inner).dir_dirty = true;
        self.copied.fetch_add(live_bytes, Ordering::Relaxed);
        Ok(ReclaimStats {
            segments_compacted: group.len() as u64,
            bytes_before,
            bytes_after: total,
            live_bytes,
        })
    }
}

impl<S: Storage> Persister for MmapPersister<S> {
    fn append_slice(&self, write: &SliceWrite<'_>) -> Result<Lsn> {
        self.shared.append(RecordKind::Slice(*write))
    }

    /// Lends the payload from the segment it was written to (see
    /// [`LoggedBytes`]).
    fn append_slice_logged(&self, write: &SliceWrite<'_>) -> Result<(Lsn, Option<LoggedBytes>)> {
        let (lsn, seg, at) = self.shared.append_at(RecordKind::Slice(*write))?;
        let len = write.data.len() as u64;
        let Some(bytes) = seg.file.read(at + data_offset(), len) else {
            // Not expected (the record was just published); the caller
            // then keeps a copy.
            return Ok((lsn, None));
        };
        debug_assert_eq!(bytes, write.data);
        let owner: Arc<dyn Send + Sync> = seg.clone();
        // SAFETY: published bytes of a segment never change and stay
        // mapped while the segment lives (`SegmentFile::read`), and
        // `owner` keeps the segment alive.
        Ok((lsn, Some(unsafe { LoggedBytes::new(owner, bytes) })))
    }

    fn append_remove(&self, file: FileId) -> Result<Lsn> {
        self.shared.append(RecordKind::Remove { file })
    }

    fn append_truncate(&self, file: FileId, size: u64) -> Result<Lsn> {
        self.shared.append(RecordKind::Truncate { file, size })
    }

    fn append_flushed(&self, marker: &FlushedMarker) -> Result<Lsn> {
        self.shared.append(RecordKind::Flushed(*marker))
    }

    fn sync(&self) -> Result<Lsn> {
        let target = self.shared.next_lsn.load(Ordering::Acquire) - 1;
        self.shared.sync_to(target)
    }

    fn durable_lsn(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    fn next_lsn(&self) -> Lsn {
        Lsn(self.shared.next_lsn.load(Ordering::Acquire))
    }

    fn recover(&self) -> Result<Recovery<'_>> {
        self.shared.check_usable()?;
        let inner = lock(&self.shared.inner);
        let spans = inner
            .segments
            .values()
            .map(|s| ReplaySpan {
                source: s.clone() as Arc<dyn ReplaySource>,
                owner: s.clone() as Arc<dyn Send + Sync>,
                start: HEADER_LEN as u64,
                end: s.records_end(),
            })
            .collect();
        Ok(Recovery::new(spans, self.shared.open_stats.clone()))
    }

    fn log_id(&self) -> u64 {
        self.shared.wal_id
    }

    fn set_reclaim_barrier(&self, barrier: crate::ReclaimBarrier) {
        *lock(&self.shared.reclaim_barrier) = Some(Arc::new(barrier));
    }

    fn reclaim(&self) -> Result<ReclaimStats> {
        self.shared.reclaim(true)
    }

    fn reclaim_all(&self) -> Result<ReclaimStats> {
        // A disk too full for a new segment still gets what is sealed.
        if let Err(e) = self.shared.seal() {
            tracing::debug!(error = %e, "sealing the active segment failed");
        }
        self.shared.reclaim(true)
    }

    fn close(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let synced = self.sync();
        self.stop_threads();
        self.shared.closed.store(true, Ordering::Release);
        synced?;
        let inner = lock(&self.shared.inner);
        inner
            .active
            .file
            .trim()
            .map_err(|e| WalError::io("ftruncate", &inner.active.name, e))
    }

    fn is_enabled(&self) -> bool {
        true
    }
}

impl<S: Storage> Drop for MmapPersister<S> {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

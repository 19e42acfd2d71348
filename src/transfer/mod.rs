//! The transfer manager: moves dirty blocks from the slice cache to the
//! block store, and committed blocks back for reads.
//!
//! Upload of one block (a [`BlockSnapshot`] of its pending bytes):
//!
//! 1. make the log durable up to the snapshot's LSN, so the object store
//!    never holds bytes the log could lose;
//! 2. merge the snapshot over the committed block (read-modify-write:
//!    bytes the snapshot lacks come from the committed object, or zeros);
//! 3. put the result as a new object (a new version: nothing committed is
//!    ever overwritten), retried with backoff until it succeeds or the
//!    manager shuts down;
//! 4. commit the new block reference in metadata (if the file was not
//!    truncated or removed since the snapshot);
//! 5. append a flushed marker to the persister;
//! 6. mark the snapshot's bytes clean in the cache.
//!
//! A crash between any two steps loses nothing: until step 5 is durable,
//! the log still holds the bytes and recovery uploads them again; at worst
//! an object nobody references is left for [`TransferManager::sweep_orphans`].
//! The replaced object is deleted after step 4, past a grace period so
//! that reads that looked the old version up can finish; the commit put
//! it on the doomed list in metadata, so its deletion survives a stop or
//! a crash (see [`crate::meta::BlockMap::doomed`]).

mod blockcache;
mod pack;
mod queue;
mod sched;

use std::collections::HashMap;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use slicefs_cache::{BLOCK_SIZE, BlockSnapshot, CHUNK_SIZE, SliceCache, SnapshotOptions};
use slicefs_wal::{ChunkIndex, FileId, FlushedMarker, Persister};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::blockstore::{BlockKey, BlockStore, BlockStoreError};
use crate::meta::{BlockAddr, BlockCommit, BlockMap, BlockRef, MetaError};
use blockcache::{BlockCache, Fetch};
use pack::{Claim, Decision, Member, Packer, Sealed};
pub use pack::{PACK_MEMBER_MAX, PACK_WINDOW};
use queue::{Plan, Stamp, Timing};
use sched::{IoClass, IoPermit, IoScheduler};

/// Start-up settings of a [`TransferManager`].
#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// Concurrent object-store requests (uploads and downloads together).
    /// Default: 32. Minimum: 1.
    pub io_max: usize,
    /// Concurrent block uploads. Default: 16. Minimum: 1.
    pub uploads_max: usize,
    /// A file's dirty data is uploaded once the file has had no write for
    /// this long (a file still being rewritten at random would otherwise
    /// re-upload whole blocks again and again). Default: 5 s.
    pub upload_delay: Duration,
    /// Dirty data older than this is uploaded even while its file is still
    /// being written. Default: 30 s. At least `upload_delay`.
    pub max_dirty_age: Duration,
    /// Above this share of the cache's dirty limit, the oldest dirty files
    /// are uploaded at once. Default: 0.75: a burst smaller than that is
    /// absorbed at local-disk speed and uploaded when it ends (uploads
    /// during a 2 GiB `fio` write on 2 cores shared with SeaweedFS cut it
    /// from 320-485 to 170-290 MB/s), and the last quarter still gives
    /// uploads a head start before writers wait.
    pub pressure_ratio: f64,
    /// Upload a block as soon as a write fills it, while its file is still
    /// being written. Off by default: a burst of writes is absorbed by the
    /// log and the cache, and uploads start when the file goes quiet, its
    /// data ages past `max_dirty_age`, or dirty bytes pass
    /// `pressure_ratio`. Measured on 2 cores with SeaweedFS on the same
    /// machine: eager uploads of a 1 GiB `fio` sequential write took the
    /// CPU from the writer (117 MB/s against 248 MB/s deferred).
    pub eager_full_blocks: bool,
    /// Blocks read ahead of a sequential reader. Default: 8 (32 MiB).
    pub readahead_blocks: u32,
    /// Memory for downloaded blocks (an LRU of whole blocks), in bytes.
    /// It stages read-ahead and shares downloads; re-reads are served by
    /// the kernel's page cache above the mount. Kept small on purpose: a
    /// block cache that keeps taking fresh memory pays a page fault per
    /// 4 KiB (measured: 1 GiB of it cut cold-read throughput from 91% to
    /// 32% of raw gets). Default: 64 MiB.
    pub block_cache_bytes: u64,
    /// First delay between retries of a failed request; it doubles up to
    /// `retry_max`, with jitter. Default: 100 ms.
    pub retry_initial: Duration,
    /// Longest delay between retries. Default: 10 s.
    pub retry_max: Duration,
    /// How long a read retries a failing store before it fails with the
    /// last error. Uploads retry without end. Default: 60 s.
    pub read_retry_for: Duration,
    /// Delay before a replaced or dropped object is deleted. Default: 30 s.
    pub gc_grace: Duration,
    /// How often the flusher looks for aged or pressing dirty data.
    /// Default: 100 ms.
    pub tick: Duration,
    /// How long the metadata syncer gathers block commits before one
    /// sync makes them durable (fewer syncs, at this much upload latency;
    /// a sync under way gathers the next ones anyway). Default: 5 ms; a
    /// shared volume, whose `close` waits for its uploads, uses 0.
    pub meta_sync_window: Duration,
    /// Most bytes one pack object holds: blocks whose upload is at most
    /// [`PACK_MEMBER_MAX`] bytes (small files, a file's short last block)
    /// are uploaded several to an object (see `transfer/pack.rs`).
    /// 0: every block is an object of its own. At most 4 MiB. Default:
    /// 1 MiB; a shared volume uses 0 (its schema stores no offset).
    /// Measured: one `file://` object cost 0.3-0.4 ms of daemon CPU
    /// (create, fsync, rename, directory fsync), and uploads were 68% of
    /// the daemon's CPU while `tar` unpacked a source tree.
    pub pack_bytes: usize,
    /// Testing only: stop dead at this step of the first upload that
    /// reaches it, as if the process were killed there.
    #[doc(hidden)]
    pub crash_at: Option<CrashPoint>,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            io_max: 32,
            uploads_max: 16,
            upload_delay: Duration::from_secs(5),
            max_dirty_age: Duration::from_secs(30),
            pressure_ratio: 0.75,
            eager_full_blocks: false,
            readahead_blocks: 8,
            block_cache_bytes: 64 << 20,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            read_retry_for: Duration::from_secs(60),
            gc_grace: Duration::from_secs(30),
            tick: Duration::from_millis(100),
            meta_sync_window: META_SYNC_WINDOW,
            pack_bytes: 1 << 20,
            crash_at: None,
        }
    }
}

/// Where [`TransferConfig::crash_at`] stops an upload.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The object is in the store; metadata does not reference it.
    AfterUpload,
    /// Metadata references the object; no flushed marker was appended.
    AfterMetaCommit,
}

/// Errors of the transfer manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The block store failed (after retries, for reads).
    #[error(transparent)]
    Store(Arc<BlockStoreError>),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The persister failed; uploads stopped (the log is poisoned).
    #[error("the write-ahead log failed, uploads stopped: {0}")]
    Wal(String),
    /// The manager is shutting down or stopped.
    #[error("the transfer manager is shut down")]
    Shutdown,
    /// A read past the largest offset the chunk index can address.
    #[error("offset {offset} is past the largest file offset")]
    OutOfRange {
        /// The offset asked for.
        offset: u64,
    },
    /// [`TransferManager::drain`] ran out of time.
    #[error("drain timed out with {dirty_bytes} dirty bytes left")]
    DrainTimeout {
        /// Bytes not yet uploaded.
        dirty_bytes: u64,
    },
}

impl From<BlockStoreError> for TransferError {
    fn from(e: BlockStoreError) -> Self {
        TransferError::Store(Arc::new(e))
    }
}

impl From<Arc<BlockStoreError>> for TransferError {
    fn from(e: Arc<BlockStoreError>) -> Self {
        TransferError::Store(e)
    }
}

/// Counters and gauges of a [`TransferManager`].
#[derive(Clone, Debug, Default)]
pub struct TransferStats {
    /// Blocks uploaded and committed.
    pub uploads: u64,
    /// Bytes of those blocks.
    pub upload_bytes: u64,
    /// Pack objects put, each holding several of the blocks counted in
    /// `uploads` (see [`TransferConfig::pack_bytes`]).
    pub packs: u64,
    /// Uploads in progress.
    pub uploads_in_flight: u64,
    /// Snapshots given up because the file was truncated or removed.
    pub uploads_discarded: u64,
    /// Blocks downloaded.
    pub downloads: u64,
    /// Bytes downloaded.
    pub download_bytes: u64,
    /// Reads that joined a download already in flight.
    pub downloads_shared: u64,
    /// Reads served by the block cache.
    pub block_cache_hits: u64,
    /// Blocks read ahead.
    pub prefetches: u64,
    /// Failed requests that were retried.
    pub retries: u64,
    /// How long requests have been failing without a success, if they are.
    pub stalled_for: Option<Duration>,
    /// The last request error seen.
    pub last_error: Option<String>,
    /// Age of the oldest data not yet uploaded (its upload planned, in
    /// flight or stalled, or not started yet).
    pub oldest_dirty_age: Option<Duration>,
    /// Files the manager keeps state for: dirty ones and those with an
    /// upload in flight (0 once everything is uploaded; its planning
    /// walks these, never every file ever written).
    pub tracked_files: u64,
    /// Replaced objects deleted.
    pub gc_deleted: u64,
    /// Replaced objects waiting for deletion.
    pub gc_pending: u64,
    /// Deletions that failed or did not fit the queue (left for
    /// [`TransferManager::sweep_orphans`]).
    pub gc_deferred: u64,
    /// Set once the manager stopped uploading for good (a failed log).
    pub fatal: Option<String>,
}

/// What [`TransferManager::sweep_orphans`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects listed.
    pub listed: u64,
    /// Unreferenced objects deleted (with `dry_run`: that would be).
    pub deleted: u64,
    /// Unreferenced objects kept because they are younger than the
    /// minimum age (an upload may be about to commit them).
    pub young: u64,
}

/// Progress of [`TransferManager::drain_with_progress`].
#[derive(Clone, Copy, Debug)]
pub struct DrainProgress {
    /// Dirty bytes when the drain started.
    pub start_dirty_bytes: u64,
    /// Dirty bytes now.
    pub dirty_bytes: u64,
    /// Uploads in flight now.
    pub uploads_in_flight: u64,
}

#[derive(Default)]
struct Counters {
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    packs: AtomicU64,
    uploads_discarded: AtomicU64,
    downloads: AtomicU64,
    download_bytes: AtomicU64,
    downloads_shared: AtomicU64,
    block_cache_hits: AtomicU64,
    prefetches: AtomicU64,
    retries: AtomicU64,
    gc_deleted: AtomicU64,
    gc_pending: AtomicU64,
    gc_deferred: AtomicU64,
}

type Download = Shared<BoxFuture<'static, Result<Bytes, Arc<BlockStoreError>>>>;

/// What [`TransferManager::on_commit`] calls.
type CommitHook = Box<dyn Fn(FileId) + Send + Sync>;

struct Inner {
    /// This manager, for tasks that must not keep it alive.
    me: std::sync::Weak<Inner>,
    /// Called after each block commit (see [`TransferManager::on_commit`]).
    commit_hook: OnceLock<CommitHook>,
    cache: Arc<SliceCache>,
    persister: Arc<dyn Persister>,
    meta: Arc<dyn BlockMap>,
    store: BlockStore,
    config: TransferConfig,
    /// Upload state of the files with dirty data, and their queue.
    plan: Mutex<Plan>,
    /// Read-ahead: per file, the block after the last one read.
    readers: Mutex<HashMap<FileId, u64>>,
    wake: Notify,
    progress: Notify,
    io: IoScheduler,
    upload_slots: Semaphore,
    uploads_in_flight: AtomicUsize,
    /// The open pack of small blocks.
    packer: Packer,
    /// Block commits waiting to be durable: the highest commit sequence
    /// number an upload waits for, the syncer's wake-up, and the highest
    /// number known durable (see [`Inner::meta_syncer`]).
    meta_want: AtomicU64,
    meta_wake: Notify,
    meta_durable: tokio::sync::watch::Sender<u64>,
    downloads: Mutex<HashMap<Fetch, Download>>,
    block_cache: Mutex<BlockCache>,
    gc_tx: mpsc::Sender<GcItem>,
    /// `true` once background work may run ([`TransferManager::resume`]).
    resumed: tokio::sync::watch::Sender<bool>,
    draining: AtomicBool,
    /// Objects put but not yet committed or given up: never orphans.
    uploading: Arc<Mutex<std::collections::HashSet<BlockKey>>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    stall: Mutex<(Option<Instant>, Option<String>)>,
    fatal: Mutex<Option<String>>,
    counters: Counters,
}

/// Moves dirty blocks to the object store and committed blocks back.
/// Cheap to clone; all clones drive the same manager. Needs a Tokio
/// runtime (multi-threaded) for its background tasks.
#[derive(Clone)]
pub struct TransferManager {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const GC_QUEUE_MAX: usize = 1 << 16;
/// Deleted objects taken off the doomed list per metadata transaction.
const FORGET_BATCH: usize = 256;

/// How long the metadata syncer gathers block commits before one sync
/// makes them all durable: bounds the syncs to about 200 a second however
/// many small files are uploaded, at a few milliseconds of upload latency.
const META_SYNC_WINDOW: Duration = Duration::from_millis(5);

/// An object to delete: when it was queued, and when it may go.
struct GcItem {
    queued: Instant,
    due: Instant,
    key: BlockKey,
}

/// Largest file offset the manager addresses: `u32` chunk indexes of
/// 64 MiB.
pub const MAX_OFFSET: u64 = (u32::MAX as u64) * CHUNK_SIZE;

impl TransferManager {
    /// Starts the manager on the current Tokio runtime. Every file the
    /// cache holds dirty data of (after recovery) is queued for upload at
    /// once, without waiting for a new write.
    ///
    /// Contract: inode numbers are not reused (a removed file's stale
    /// uploads are recognised by its number).
    pub fn start(
        cache: Arc<SliceCache>,
        persister: Arc<dyn Persister>,
        meta: Arc<dyn BlockMap>,
        store: BlockStore,
        config: TransferConfig,
    ) -> TransferManager {
        let tm = TransferManager::start_paused(cache, persister, meta, store, config);
        tm.resume();
        tm
    }

    /// [`TransferManager::start`], with uploads and deletions held until
    /// [`TransferManager::resume`]: start-up settles recovery against
    /// metadata first (truncates, removed files, orphans), and no upload
    /// may commit a block on unsettled state. Reads work at once.
    pub fn start_paused(
        cache: Arc<SliceCache>,
        persister: Arc<dyn Persister>,
        meta: Arc<dyn BlockMap>,
        store: BlockStore,
        config: TransferConfig,
    ) -> TransferManager {
        let (gc_tx, gc_rx) = mpsc::channel(GC_QUEUE_MAX);
        let timing = Timing {
            upload_delay: config.upload_delay,
            max_dirty_age: config.max_dirty_age,
            eager_full_blocks: config.eager_full_blocks,
        };
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            commit_hook: OnceLock::new(),
            io: IoScheduler::new(config.io_max),
            upload_slots: Semaphore::new(config.uploads_max.max(1)),
            packer: Packer::new(config.pack_bytes),
            block_cache: Mutex::new(BlockCache::new(config.block_cache_bytes)),
            cache,
            persister,
            meta,
            store,
            config,
            plan: Mutex::new(Plan::new(timing)),
            readers: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            progress: Notify::new(),
            uploads_in_flight: AtomicUsize::new(0),
            meta_want: AtomicU64::new(0),
            meta_wake: Notify::new(),
            meta_durable: tokio::sync::watch::Sender::new(0),
            downloads: Mutex::new(HashMap::new()),
            gc_tx,
            resumed: tokio::sync::watch::Sender::new(false),
            draining: AtomicBool::new(false),
            uploading: Arc::new(Mutex::new(std::collections::HashSet::new())),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            stall: Mutex::new((None, None)),
            fatal: Mutex::new(None),
            counters: Counters::default(),
        });
        let recovered = inner.cache.dirty_files();
        {
            let mut plan = lock(&inner.plan);
            let now = Instant::now();
            for f in recovered {
                let st = plan.entry(f);
                st.mark_dirty(now);
                st.flush_requested = true;
                plan.schedule(f);
            }
        }
        let tm = TransferManager { inner };
        let i = tm.inner.clone();
        tm.inner.tasks.spawn(async move { i.flusher().await });
        let i = tm.inner.clone();
        tm.inner
            .tasks
            .spawn(async move { i.collector(gc_rx).await });
        let i = tm.inner.clone();
        tm.inner.tasks.spawn(async move { i.meta_syncer().await });
        tm
    }

    /// Lets uploads and deletions run (see
    /// [`TransferManager::start_paused`]). Idempotent.
    pub fn resume(&self) {
        self.inner.resumed.send_replace(true);
    }

    /// Tells the manager that `len` bytes at `offset` of `file` were
    /// written (after the cache insert). Cheap; never blocks on I/O.
    pub fn notify_write(&self, file: FileId, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        // Only eager uploads care that a block filled (it wakes the flusher).
        let filled = self.inner.config.eager_full_blocks
            && len > 0
            && (end.is_multiple_of(BLOCK_SIZE) || offset / BLOCK_SIZE != end / BLOCK_SIZE);
        let mut plan = lock(&self.inner.plan);
        let st = plan.entry(file);
        let now = Instant::now();
        let first = st.dirty_since.is_none();
        st.mark_dirty(now);
        st.last_write = Some(now);
        if filled {
            st.full_block = true;
        }
        if first || filled {
            plan.schedule(file);
        }
        drop(plan);
        if filled {
            self.inner.wake.notify_one();
        }
    }

    /// Uploads everything of `file` written before this call and returns
    /// when it is committed (for fsync or close with upload).
    ///
    /// # Errors
    /// [`TransferError::Shutdown`] if the manager stops first;
    /// [`TransferError::Wal`] once the log has failed.
    pub async fn flush_file(&self, file: FileId) -> Result<(), TransferError> {
        let target = self.inner.persister.next_lsn();
        loop {
            let done = self
                .inner
                .cache
                .oldest_pending_lsn(file)
                .is_none_or(|l| l >= target);
            if done {
                return Ok(());
            }
            self.inner.check_alive()?;
            {
                let mut plan = lock(&self.inner.plan);
                let st = plan.entry(file);
                st.flush_requested = true;
                st.mark_dirty(Instant::now());
                plan.schedule(file);
            }
            let notified = self.inner.progress.notified();
            self.inner.wake.notify_one();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(self.inner.config.tick) => {}
                _ = self.inner.cancel.cancelled() => return Err(TransferError::Shutdown),
            }
        }
    }

    /// Uploads all dirty data and waits until none is left, up to
    /// `timeout`.
    ///
    /// # Errors
    /// [`TransferError::DrainTimeout`] with what is left;
    /// [`TransferError::Shutdown`]; [`TransferError::Wal`].
    pub async fn drain(&self, timeout: Duration) -> Result<(), TransferError> {
        self.drain_with_progress(timeout, |_| {}).await
    }

    /// [`TransferManager::drain`], calling `progress` about every 100 ms.
    ///
    /// # Errors
    /// As [`TransferManager::drain`].
    pub async fn drain_with_progress(
        &self,
        timeout: Duration,
        mut progress: impl FnMut(DrainProgress),
    ) -> Result<(), TransferError> {
        let inner = &self.inner;
        let deadline = Instant::now() + timeout;
        let start = inner.cache.dirty_bytes();
        inner.draining.store(true, Ordering::SeqCst);
        let result = loop {
            let dirty = inner.cache.dirty_bytes();
            let in_flight = inner.uploads_in_flight.load(Ordering::SeqCst) as u64;
            progress(DrainProgress {
                start_dirty_bytes: start,
                dirty_bytes: dirty,
                uploads_in_flight: in_flight,
            });
            if dirty == 0 && in_flight == 0 {
                break Ok(());
            }
            if let Err(e) = inner.check_alive() {
                break Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(TransferError::DrainTimeout { dirty_bytes: dirty });
            }
            inner.wake.notify_one();
            let notified = inner.progress.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep((deadline - now).min(Duration::from_millis(100))) => {}
                _ = inner.cancel.cancelled() => break Err(TransferError::Shutdown),
            }
        };
        inner.draining.store(false, Ordering::SeqCst);
        result
    }

    /// Reads `buf.len()` bytes at `offset` of `file` from the committed
    /// blocks (zeros where no block or past a block's valid length).
    /// Sequential readers trigger read-ahead. Retries a failing store for
    /// [`TransferConfig::read_retry_for`].
    ///
    /// The caller merges the cache's newer bytes over the result (the
    /// cache's bytes win; see [`SliceCache::read`]).
    ///
    /// # Errors
    /// The last store or metadata error once retries are exhausted.
    pub async fn read(
        &self,
        file: FileId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), TransferError> {
        let inner = &self.inner;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= MAX_OFFSET)
            .ok_or(TransferError::OutOfRange { offset })?;
        let mut pos = offset;
        while pos < end {
            let bidx = pos / BLOCK_SIZE;
            let bstart = bidx * BLOCK_SIZE;
            let take_end = end.min(bstart + BLOCK_SIZE);
            let out = &mut buf[(pos - offset) as usize..(take_end - offset) as usize];
            inner
                .read_block(addr_of(file, bidx), (pos - bstart) as usize, out)
                .await?;
            pos = take_end;
        }
        if !buf.is_empty() {
            inner
                .clone()
                .read_ahead(file, offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
        }
        Ok(())
    }

    /// The file was truncated to `size` bytes (the caller already logged
    /// the truncate and cut the cache): drops the block references past
    /// `size` and shortens the one holding it, in one metadata change;
    /// uploads snapshotted before are discarded. Replaced objects are
    /// deleted after the grace period.
    ///
    /// # Errors
    /// The metadata store's error (nothing changed).
    pub fn truncate(&self, file: FileId, size: u64) -> Result<(), TransferError> {
        let meta = self.inner.meta.clone();
        self.change_blocks(file, false, || Ok(((), meta.truncate_blocks(file, size)?)))
    }

    /// A hole punched in `file` over `from..to`: drops the committed
    /// blocks wholly inside it, in one metadata change; uploads
    /// snapshotted before are discarded (they would bring the old bytes
    /// back) and go again from the cache. The caller has already written
    /// zeros over the cached bytes of the range and the blocks it only
    /// overlaps. Replaced objects are deleted after the grace period.
    ///
    /// # Errors
    /// The metadata store's error (nothing changed).
    pub fn punch(&self, file: FileId, from: u64, to: u64) -> Result<(), TransferError> {
        let meta = self.inner.meta.clone();
        self.change_blocks(file, false, || Ok(((), meta.punch_blocks(file, from, to)?)))
    }

    /// The file is gone for good (last link and last open handle): drops
    /// its block references; uploads in flight are discarded; its objects
    /// are deleted after the grace period.
    ///
    /// # Errors
    /// The metadata store's error (nothing changed).
    pub fn remove(&self, file: FileId) -> Result<(), TransferError> {
        let meta = self.inner.meta.clone();
        self.change_blocks(file, true, || Ok(((), meta.remove_blocks(file)?)))
    }

    /// Runs `change`, a metadata transaction that cuts the block map of
    /// `file` (a truncate with its size update, or a removal) and returns
    /// the objects it dropped, so that no upload of the file commits
    /// meanwhile and every upload snapshotted before is discarded. The
    /// dropped objects are deleted after the grace period. `removed`: the
    /// file is gone for good.
    ///
    /// # Errors
    /// `change`'s error.
    pub fn change_blocks<T, E>(
        &self,
        file: FileId,
        removed: bool,
        change: impl FnOnce() -> Result<(T, Vec<BlockKey>), E>,
    ) -> Result<T, E> {
        self.change_blocks_of_many(&[file], removed, change)
    }

    /// [`TransferManager::change_blocks`] for many files at once (the
    /// reaper's removals): `change`, one metadata transaction for all of
    /// them, runs with every file's gate held.
    ///
    /// # Errors
    /// `change`'s error.
    pub fn change_blocks_of_many<T, E>(
        &self,
        files: &[FileId],
        removed: bool,
        change: impl FnOnce() -> Result<(T, Vec<BlockKey>), E>,
    ) -> Result<T, E> {
        let mut sorted = files.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        // Gates are taken in file order; uploads hold one at a time: no
        // lock-order cycle.
        let gates: Vec<_> = sorted
            .iter()
            .map(|&f| self.inner.bump_epoch(f, removed))
            .collect();
        let result = {
            let mut guards: Vec<_> = gates.iter().map(|g| lock(g)).collect();
            let r = change();
            // An upload snapshotted between the bump above and `change`
            // carries the new epoch, yet may have merged over the block
            // map from before `change`: bump once more, still under the
            // gates, so that none of those commits either. (Gate, then
            // plan: no path holds the plan while it waits for a gate.)
            let mut plan = lock(&self.inner.plan);
            for ((f, gate), g) in sorted.iter().zip(&gates).zip(guards.iter_mut()) {
                if let Some(st) = plan.get_mut(*f)
                    && Arc::ptr_eq(&st.gate, gate)
                {
                    st.epoch += 1;
                    **g = (**g).max(st.epoch);
                }
            }
            r
        };
        drop(gates);
        {
            // A truncate of a file with nothing dirty leaves no state.
            let mut plan = lock(&self.inner.plan);
            for &f in &sorted {
                plan.forget_if_idle(f);
            }
        }
        let (value, dropped) = result?;
        if removed {
            let mut readers = lock(&self.inner.readers);
            for f in &sorted {
                readers.remove(f);
            }
        }
        for k in dropped {
            self.inner.collect_later(k);
        }
        Ok(value)
    }

    /// Deletes block objects that no committed metadata references and
    /// that are older than `min_age` (younger ones may belong to an upload
    /// about to commit). Objects left by a crash between upload and
    /// commit, or by deletions that failed, go this way.
    ///
    /// # Errors
    /// Listing, metadata or deletion errors (what was deleted stays
    /// deleted).
    pub async fn sweep_orphans(&self, min_age: Duration) -> Result<SweepReport, TransferError> {
        self.sweep_orphans_with(min_age, false).await
    }

    /// [`TransferManager::sweep_orphans`]; with `dry_run`, only counts
    /// what it would delete (`slicefs gc --dry-run`).
    ///
    /// # Errors
    /// As [`TransferManager::sweep_orphans`].
    pub async fn sweep_orphans_with(
        &self,
        min_age: Duration,
        dry_run: bool,
    ) -> Result<SweepReport, TransferError> {
        let inner = &self.inner;
        let mut report = SweepReport::default();
        let now = SystemTime::now();
        let mut doomed = Vec::new();
        for (key, modified) in inner.store.list(None).await? {
            report.listed += 1;
            if inner.meta.is_referenced(&key)? || lock(&inner.uploading).contains(&key) {
                continue;
            }
            let age = now.duration_since(modified).unwrap_or_default();
            if age < min_age {
                report.young += 1;
                continue;
            }
            doomed.push(key);
        }
        if doomed.is_empty() {
            return Ok(report);
        }
        if dry_run {
            report.deleted = doomed.len() as u64;
            return Ok(report);
        }
        // The change that unreferenced them must be durable before they
        // go (versions are never reused, so nothing references them again).
        let meta = inner.meta.clone();
        tokio::task::spawn_blocking(move || meta.sync())
            .await
            .map_err(|_| TransferError::Shutdown)??;
        for key in doomed {
            inner.store.delete(&key).await?;
            lock(&inner.block_cache).remove(&Fetch::whole(key));
            report.deleted += 1;
        }
        Ok(report)
    }

    /// Sets what is called after each block of a file is committed and
    /// its bytes marked clean: attributes that follow the block map (the
    /// file's allocated bytes, `st_blocks`) changed. The FUSE front end
    /// invalidates the kernel's cached attributes there. Runs on a
    /// runtime worker: it must not block. Set once; later calls are
    /// ignored.
    pub fn on_commit(&self, hook: impl Fn(FileId) + Send + Sync + 'static) {
        let _ = self.inner.commit_hook.set(Box::new(hook));
    }

    /// Every block object in the store, with its last-modified time
    /// (`slicefs fsck`).
    ///
    /// # Errors
    /// The store's listing error.
    pub async fn list_objects(&self) -> Result<Vec<(BlockKey, SystemTime)>, TransferError> {
        Ok(self.inner.store.list(None).await?)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> TransferStats {
        let i = &self.inner;
        let c = &i.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (stalled_since, last_error) = lock(&i.stall).clone();
        let (oldest, tracked_files) = {
            let plan = lock(&i.plan);
            (plan.oldest_dirty(), plan.len() as u64)
        };
        TransferStats {
            uploads: g(&c.uploads),
            upload_bytes: g(&c.upload_bytes),
            packs: g(&c.packs),
            uploads_in_flight: i.uploads_in_flight.load(Ordering::Relaxed) as u64,
            uploads_discarded: g(&c.uploads_discarded),
            downloads: g(&c.downloads),
            download_bytes: g(&c.download_bytes),
            downloads_shared: g(&c.downloads_shared),
            block_cache_hits: g(&c.block_cache_hits),
            prefetches: g(&c.prefetches),
            retries: g(&c.retries),
            stalled_for: stalled_since.map(|t| t.elapsed()),
            last_error,
            oldest_dirty_age: oldest.map(|t| t.elapsed()),
            tracked_files,
            gc_deleted: g(&c.gc_deleted),
            gc_pending: g(&c.gc_pending),
            gc_deferred: g(&c.gc_deferred),
            fatal: lock(&i.fatal).clone(),
        }
    }

    /// Stops: no new uploads; retries give up; uploads in flight are
    /// abandoned (their bytes stay dirty in the cache and in the log) and
    /// background tasks end. Call [`TransferManager::drain`] first for a
    /// clean stop. Queued deletions are dropped (left for the orphan
    /// sweep).
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Graceful stop: drains for up to `timeout`, logging progress about
    /// once a second (bytes left, upload rate), then shuts down. Bytes
    /// still dirty at the end stay in the log for the next start.
    ///
    /// # Errors
    /// The drain's error ([`TransferError::DrainTimeout`] with what is
    /// left); the manager is shut down either way.
    pub async fn close(&self, timeout: Duration) -> Result<(), TransferError> {
        let started = Instant::now();
        let mut last_log = Instant::now();
        let result = self
            .drain_with_progress(timeout, |p| {
                if last_log.elapsed() >= Duration::from_secs(1) {
                    last_log = Instant::now();
                    let done = p.start_dirty_bytes.saturating_sub(p.dirty_bytes);
                    let rate = done as f64 / started.elapsed().as_secs_f64() / 1e6;
                    tracing::info!(
                        dirty_bytes = p.dirty_bytes,
                        uploads_in_flight = p.uploads_in_flight,
                        rate_mb_s = format!("{rate:.1}"),
                        "draining dirty data to the object store"
                    );
                }
            })
            .await;
        match &result {
            Ok(()) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "all dirty data uploaded"
            ),
            Err(e) => tracing::warn!(error = %e, "stopping with dirty data left in the log"),
        }
        self.shutdown().await;
        result
    }

    /// The directory of a `file://` block store (`None` for others).
    pub fn store_local_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.store.local_dir()
    }

    /// Whether a [`CrashPoint`] stopped the manager.
    #[doc(hidden)]
    pub fn crashed(&self) -> bool {
        self.inner.cancel.is_cancelled() && self.inner.config.crash_at.is_some()
    }
}

/// What to download for committed block `r` at `addr`, and where the
/// block's bytes start in what that returns. A block in a shared object
/// (a pack member, a clone) fetches only its own `len` bytes, one ranged
/// `GET`: a cold read of a 1 KiB file must not download its 1 MiB pack.
/// A block's own object is fetched whole (and cached whole, for the
/// merge of a partial rewrite).
fn fetch_of(r: &BlockRef, addr: BlockAddr) -> (Fetch, usize) {
    let key = r.key(addr);
    match r.origin {
        Some(_) => (
            Fetch {
                key,
                range: Some((r.offset, r.len)),
            },
            0,
        ),
        None => (Fetch::whole(key), r.offset as usize),
    }
}

fn addr_of(file: FileId, block_in_file: u64) -> BlockAddr {
    let per_chunk = CHUNK_SIZE / BLOCK_SIZE;
    BlockAddr {
        file,
        chunk: ChunkIndex((block_in_file / per_chunk) as u32),
        block: (block_in_file % per_chunk) as u32,
    }
}

/// Marks an object as being uploaded while alive.
struct Uploading {
    set: Arc<Mutex<std::collections::HashSet<BlockKey>>>,
    key: BlockKey,
}

impl Uploading {
    fn new(set: &Arc<Mutex<std::collections::HashSet<BlockKey>>>, key: BlockKey) -> Uploading {
        lock(set).insert(key);
        Uploading {
            set: set.clone(),
            key,
        }
    }
}

impl Drop for Uploading {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.key);
    }
}

/// How an upload ended.
enum Outcome {
    Committed,
    Discarded,
    Stopped,
}

impl Inner {
    fn check_alive(&self) -> Result<(), TransferError> {
        if let Some(f) = lock(&self.fatal).clone() {
            return Err(TransferError::Wal(f));
        }
        if self.cancel.is_cancelled() {
            return Err(TransferError::Shutdown);
        }
        Ok(())
    }

    fn bump_epoch(&self, file: FileId, removed: bool) -> Arc<Mutex<u64>> {
        let mut plan = lock(&self.plan);
        let st = plan.entry(file);
        st.epoch += 1;
        st.full_block = false;
        st.flush_requested = false;
        if removed {
            st.removed = true;
            st.dirty_since = None;
        }
        let gate = st.gate.clone();
        let epoch = st.epoch;
        if removed && st.uploads == 0 {
            plan.remove(file);
        }
        drop(plan);
        // Not under `files`: a commit may hold the gate for a while.
        let mut g = lock(&gate);
        *g = (*g).max(epoch);
        drop(g);
        gate
    }

    /// The background loop that decides what to upload.
    /// Waits for [`TransferManager::resume`]; `false` if the manager
    /// stopped first.
    async fn resumed(&self) -> bool {
        let mut rx = self.resumed.subscribe();
        tokio::select! {
            r = rx.wait_for(|&r| r) => r.is_ok(),
            _ = self.cancel.cancelled() => false,
        }
    }

    async fn flusher(self: Arc<Self>) {
        if !self.resumed().await {
            return;
        }
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.tick) => {}
                _ = self.cancel.cancelled() => return,
            }
            // Files the cache holds dirty data of but nobody announced
            // (an upload given up after a truncate): picked up here.
            if last_sweep.elapsed() >= self.config.upload_delay.min(Duration::from_secs(1)) {
                last_sweep = Instant::now();
                let dirty = self.cache.dirty_files();
                let mut plan = lock(&self.plan);
                for f in dirty {
                    plan.entry(f).mark_dirty(last_sweep);
                    plan.schedule(f);
                }
            }
            self.start_due_uploads();
        }
    }

    /// Snapshots the files that are due, oldest dirty first, and starts
    /// their uploads, as many as there is room for (twice the upload
    /// slots, so that the next uploads are ready when slots free up).
    fn start_due_uploads(self: &Arc<Self>) {
        let mut room = (2 * self.config.uploads_max)
            .saturating_sub(self.uploads_in_flight.load(Ordering::SeqCst));
        let now = Instant::now();
        let all = self.draining.load(Ordering::SeqCst)
            || self.cache.dirty_bytes() as f64
                > self.config.pressure_ratio * self.cache.config().dirty_max_bytes as f64;
        while room > 0 {
            let Some(p) = lock(&self.plan).next_due(now, all) else {
                return;
            };
            let snaps = self.cache.dirty_blocks_with(
                p.file,
                &SnapshotOptions {
                    max_blocks: room,
                    ..p.opts
                },
            );
            room -= snaps.len();
            let counted = {
                let mut plan = lock(&self.plan);
                if room == 0 {
                    // More may be left.
                    plan.replan(&p);
                }
                let counted = match plan.get_mut(p.file) {
                    Some(st) if Arc::ptr_eq(&st.gate, &p.stamp.gate) && !st.removed => {
                        st.uploads += snaps.len();
                        true
                    }
                    _ => false,
                };
                if snaps.is_empty() || !counted {
                    let file = p.file;
                    drop(p);
                    plan.settle(file);
                    None
                } else {
                    Some(p)
                }
            };
            let Some(p) = counted else {
                // Removed (or removed and seen again) since planning.
                for snap in &snaps {
                    self.cache.abort_snapshot(snap);
                }
                continue;
            };
            for snap in snaps {
                self.uploads_in_flight.fetch_add(1, Ordering::SeqCst);
                let me = self.clone();
                let stamp = p.stamp.clone();
                self.tasks
                    .spawn(async move { me.upload(snap, stamp).await });
            }
        }
    }

    async fn upload(self: Arc<Self>, mut snap: BlockSnapshot, stamp: Stamp) {
        let file = snap.file;
        let outcome = match self.upload_inner(&mut snap, &stamp).await {
            Ok(o) => o,
            Err(e) => {
                // Only a failed log gets here: uploads stop for good.
                tracing::error!(error = %e, "uploads stopped");
                *lock(&self.fatal) = Some(e.to_string());
                self.cancel.cancel();
                Outcome::Stopped
            }
        };
        match outcome {
            Outcome::Committed => {}
            Outcome::Discarded => {
                self.cache.abort_snapshot(&snap);
                self.counters
                    .uploads_discarded
                    .fetch_add(1, Ordering::Relaxed);
                // Bytes written after the truncate may still be pending.
                let mut plan = lock(&self.plan);
                if let Some(st) = plan.get_mut(file) {
                    st.mark_dirty(Instant::now());
                    plan.schedule(file);
                }
            }
            Outcome::Stopped => {
                if !self.crash_stopped() {
                    self.cache.abort_snapshot(&snap);
                }
            }
        }
        {
            let mut plan = lock(&self.plan);
            if let Some(st) = plan.get_mut(file)
                && Arc::ptr_eq(&st.gate, &stamp.gate)
            {
                st.uploads = st.uploads.saturating_sub(1);
                let removed = st.removed && st.uploads == 0;
                // Under the lock, so that the last upload to finish sees
                // no other stamp and drops the idle state.
                drop(stamp);
                if removed {
                    plan.remove(file);
                } else {
                    plan.settle(file);
                }
            }
        }
        self.uploads_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.progress.notify_waiters();
        self.wake.notify_one();
    }

    fn crash_stopped(&self) -> bool {
        self.config.crash_at.is_some() && self.cancel.is_cancelled()
    }

    fn crash_here(&self, point: CrashPoint) -> bool {
        if self.config.crash_at == Some(point) {
            tracing::warn!(?point, "testing crash point reached: stopping dead");
            self.cancel.cancel();
            return true;
        }
        false
    }

    async fn upload_inner(
        &self,
        snap: &mut BlockSnapshot,
        stamp: &Stamp,
    ) -> Result<Outcome, TransferError> {
        let slot = tokio::select! {
            s = self.upload_slots.acquire() => s,
            _ = self.cancel.cancelled() => return Ok(Outcome::Stopped),
        };
        // 1. The log holds the bytes durably before any object does.
        if self.persister.is_enabled() && self.persister.durable_lsn() < snap.lsn {
            let p = self.persister.clone();
            tokio::task::spawn_blocking(move || p.sync())
                .await
                .map_err(|e| TransferError::Wal(e.to_string()))?
                .map_err(|e| TransferError::Wal(e.to_string()))?;
        }
        let addr = BlockAddr {
            file: snap.file,
            chunk: snap.chunk,
            block: snap.block,
        };
        // 2. Merge over the committed block.
        let Some(base) = self
            .retry("read block map", || async { self.meta.block(addr) })
            .await
        else {
            return Ok(Outcome::Stopped);
        };
        let data = match self.merge(addr, base, snap, stamp).await {
            Ok(d) => d,
            Err(outcome) => return Ok(outcome),
        };
        // 3. A new object, unless the block is all zeros (a punched hole,
        // zeros written by a program): that becomes a hole in the block
        // map, with nothing stored. A small block joins a pack.
        let hole = data.iter().all(|&b| b == 0);
        let mut key = None;
        let mut version = 0;
        let mut member: Option<Member> = None;
        let mut decided = None;
        let mut _uploading = None;
        if hole {
        } else if self.packer.takes(data.len()) {
            drop(slot);
            let claim = Claim {
                addr,
                base,
                len: data.len() as u32,
                gate: stamp.gate.clone(),
                epoch: stamp.epoch,
            };
            let m = self.packer.join(addr, data.clone(), claim);
            if m.leader {
                self.put_pack(&m).await;
            }
            let Some(v) = m.pack.version().await else {
                return Ok(Outcome::Stopped);
            };
            version = v;
            key = Some(m.pack.key(v));
            decided = m.pack.decision(m.index);
            member = Some(m);
        } else {
            let Some(v) = self
                .retry("allocate version", || async {
                    self.meta.allocate_version()
                })
                .await
            else {
                return Ok(Outcome::Stopped);
            };
            version = v;
            let k = addr.key(version);
            key = Some(k);
            // Not an orphan for the sweep until committed or given up.
            _uploading = Some(Uploading::new(&self.uploading, k));
            let put = self
                .retry("upload", || async {
                    let _io = self.io.acquire(IoClass::Upload).await;
                    self.store.put(&k, data.clone()).await
                })
                .await;
            if put.is_none() {
                return Ok(Outcome::Stopped);
            }
        }
        if decided.is_none()
            && (self.crash_here(CrashPoint::AfterUpload) || self.cancel.is_cancelled())
        {
            return Ok(Outcome::Stopped);
        }
        // 4. Commit, unless a truncate or remove came in between (a pack's
        // leader committed its members' rows already).
        let new = (!hole).then(|| BlockRef {
            version,
            len: data.len() as u32,
            // Every row of a pack names the leader's block, the
            // leader's own too: a row with an origin reads only its range.
            origin: member.as_ref().map(|m| m.pack.first),
            offset: member.as_ref().map_or(0, |m| m.offset),
        });
        let committed = match decided {
            Some(Decision::Committed(old)) => Some(old),
            Some(Decision::Gone) => {
                self.forget_gone_file(addr.file);
                None
            }
            Some(Decision::Stale) => None,
            None => {
                let gate = &stamp.gate;
                let mut backoff = self.config.retry_initial;
                loop {
                    let attempt = {
                        let g = lock(gate);
                        if *g != stamp.epoch {
                            None
                        } else {
                            // Only over the block the merge read: another
                            // host may have committed or cut it since.
                            Some(self.meta.commit_over(addr, base, new, data.len() as u32))
                        }
                    };
                    match attempt {
                        Some(Err(MetaError::FileGone { .. })) => {
                            self.forget_gone_file(addr.file);
                            break None;
                        }
                        // Merged again, over the new block, when the
                        // discarded upload is planned again.
                        None | Some(Err(MetaError::Conflict { .. })) => break None,
                        Some(Ok(old)) => break Some(old),
                        Some(Err(e)) => {
                            self.note_failure("commit block", &e);
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = self.cancel.cancelled() => return Ok(Outcome::Stopped),
                            }
                            backoff = (backoff * 2).min(self.config.retry_max);
                        }
                    }
                }
            }
        };
        let garbage = match member {
            // A pack is garbage only once no member committed.
            Some(m) => m.finish(committed.is_some()),
            None => true,
        };
        let Some(old) = committed else {
            // The object is nobody's: delete it now.
            if let Some(key) = key
                && garbage
            {
                self.collect_now(key);
            }
            return Ok(Outcome::Discarded);
        };
        self.note_success();
        if let Some(old) = old {
            // Deleted only after a metadata sync (see the collector).
            self.collect_later(old.key(addr));
        }
        if self.crash_here(CrashPoint::AfterMetaCommit) {
            return Ok(Outcome::Stopped);
        }
        // The commit is durable before the log may forget the bytes: a
        // flushed marker over a commit a power loss undid would lose them.
        if !self.meta_made_durable(self.meta.commit_seq()).await {
            return Ok(Outcome::Stopped);
        }
        // 5. The log may forget these bytes.
        if self.persister.is_enabled() {
            let marker = FlushedMarker {
                file: snap.file,
                chunk: snap.chunk,
                offset: snap.block_offset(),
                len: BLOCK_SIZE as u32,
                upto: snap.lsn,
            };
            match self.persister.append_flushed(&marker) {
                Ok(_) => {}
                Err(e) if e.is_disk_full() => {
                    // The block is committed; only the log's note of it is
                    // missing. The bytes stay pending (the log keeps them)
                    // and are uploaded again once the disk has room: a
                    // full disk never stops uploads for good.
                    self.note_failure("flushed marker", &e);
                    return Ok(Outcome::Discarded);
                }
                Err(e) => return Err(TransferError::Wal(e.to_string())),
            }
        }
        // 6. Clean in the cache.
        self.cache.mark_flushed(snap);
        if let Some(hook) = self.commit_hook.get() {
            hook(addr.file);
        }
        self.counters.uploads.fetch_add(1, Ordering::Relaxed);
        if !hole {
            self.counters
                .upload_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        // Not kept in the block cache: the slice cache holds the bytes
        // (clean now), and holding more memory costs fresh pages.
        drop(data);
        Ok(Outcome::Committed)
    }

    /// The leader's part of a pack (see `transfer/pack.rs`): waits for
    /// members, then puts them as one object under a fresh version, in
    /// an upload slot, and tells the members (also when the manager
    /// stops first).
    async fn put_pack(&self, m: &Member) {
        let Sealed { bytes, claims } = self.packer.seal(&m.pack).await;
        let stored = async {
            let _slot = tokio::select! {
                s = self.upload_slots.acquire() => s,
                _ = self.cancel.cancelled() => return None,
            };
            let version = self
                .retry("allocate version", || async {
                    self.meta.allocate_version()
                })
                .await?;
            let key = m.pack.key(version);
            let uploading = Uploading::new(&self.uploading, key);
            self.retry("upload", || async {
                let _io = self.io.acquire(IoClass::Upload).await;
                self.store.put(&key, bytes.clone()).await
            })
            .await?;
            self.counters.packs.fetch_add(1, Ordering::Relaxed);
            if self.crash_here(CrashPoint::AfterUpload) || self.cancel.is_cancelled() {
                return None;
            }
            let decisions = self.commit_pack(version, m.pack.first, &claims);
            Some((version, uploading, decisions))
        }
        .await;
        // The claims hold the members' gates: a file whose state still
        // sees another holder of its gate is not dropped when its upload
        // settles, so they go before the members are woken.
        drop(claims);
        match stored {
            Some((version, uploading, decisions)) => {
                m.pack.stored(Some(version), Some(uploading), decisions)
            }
            None => m.pack.stored(None, None, Vec::new()),
        }
    }

    /// Commits the rows of a pack's members (stored as `version`, keyed
    /// by `first`'s block) in one metadata transaction, under every
    /// member file's gate (taken in file order, as
    /// [`TransferManager::change_blocks_of_many`] does). Per member: how
    /// it ended, or `None` when the transaction failed (the member then
    /// commits alone, with retries).
    fn commit_pack(
        &self,
        version: u64,
        first: BlockAddr,
        claims: &[(Claim, u32)],
    ) -> Vec<Option<Decision>> {
        let mut order: Vec<(FileId, &Arc<Mutex<u64>>)> =
            claims.iter().map(|(c, _)| (c.addr.file, &c.gate)).collect();
        order.sort_by_key(|(f, g)| (*f, Arc::as_ptr(g)));
        order.dedup_by(|a, b| Arc::ptr_eq(a.1, b.1));
        let guards: Vec<_> = order.into_iter().map(|(_, g)| (g, lock(g))).collect();
        let current = |gate: &Arc<Mutex<u64>>| {
            guards
                .iter()
                .find(|(g, _)| Arc::ptr_eq(g, gate))
                .map(|(_, guard)| **guard)
        };
        let mut items = Vec::with_capacity(claims.len());
        let mut fresh = Vec::with_capacity(claims.len());
        for (c, offset) in claims {
            let ok = current(&c.gate) == Some(c.epoch);
            fresh.push(ok);
            if ok {
                items.push(BlockCommit {
                    addr: c.addr,
                    base: c.base,
                    new: Some(BlockRef {
                        version,
                        len: c.len,
                        // The leader's row names its own block too: a
                        // row with an origin reads only its range.
                        origin: Some(first),
                        offset: *offset,
                    }),
                    len: c.len,
                });
            }
        }
        let results = self.meta.commit_over_many(&items);
        drop(guards);
        let mut results = match results {
            Ok(r) => r.into_iter(),
            Err(e) => {
                self.note_failure("commit blocks", &e);
                return Vec::new();
            }
        };
        fresh
            .into_iter()
            .map(|ok| {
                if !ok {
                    return Some(Decision::Stale);
                }
                match results.next()? {
                    Ok(old) => Some(Decision::Committed(old)),
                    Err(MetaError::FileGone { .. }) => Some(Decision::Gone),
                    Err(MetaError::Conflict { .. }) => Some(Decision::Stale),
                    Err(_) => None,
                }
            })
            .collect()
    }

    /// The block image to upload: the committed block (cut to its valid
    /// length), zero-extended, with the snapshot's bytes over it.
    /// Takes the snapshot's bytes (its other fields stay for
    /// `mark_flushed`). Fails with the outcome when the manager stops or
    /// a truncate or remove made the snapshot stale meanwhile.
    async fn merge(
        &self,
        addr: BlockAddr,
        base: Option<BlockRef>,
        snap: &mut BlockSnapshot,
        stamp: &Stamp,
    ) -> Result<Bytes, Outcome> {
        let off = snap.block_offset();
        let snap_end = snap
            .ranges
            .last()
            .map_or(0, |(o, b)| (o - off) as usize + b.len());
        let base_len = base.map_or(0, |b| b.len as usize);
        let len = snap_end.max(base_len);
        let covered = snap.ranges.len() == 1 && snap.ranges[0].0 == off;
        if covered && snap.ranges[0].1.len() >= len {
            let (_, b) = snap.ranges.swap_remove(0);
            return Ok(b.into_bytes());
        }
        let mut out = vec![0u8; len];
        if let Some(b) = base
            && b.len > 0
        {
            let (fetch, at) = fetch_of(&b, addr);
            let key = fetch.key;
            let mut backoff = self.config.retry_initial;
            let mut missing = 0;
            let bytes = loop {
                match self.download(fetch, IoClass::Upload, None).await {
                    Ok(b) => break b,
                    Err(e) => {
                        // A truncate may have dropped the base meanwhile.
                        if stamp.stale() {
                            return Err(Outcome::Discarded);
                        }
                        if matches!(*e, BlockStoreError::NotFound { .. }) {
                            // Replaced meanwhile (another host committed
                            // a newer version and deleted this one):
                            // merge again over the new block.
                            if self.meta.block(addr).is_ok_and(|now| now != base) {
                                return Err(Outcome::Discarded);
                            }
                            missing += 1;
                            if missing == 5 {
                                // The committed object is gone from the
                                // store (not by us: the epoch is the
                                // same). Its bytes are not ours to invent:
                                // the upload waits (the log keeps the
                                // snapshot's bytes), reads of the rest of
                                // the block fail with EIO, and the stall
                                // shows in the status.
                                tracing::error!(%key, "committed block object missing from the store; this block cannot be uploaded and reads of its bytes fail");
                            }
                        }
                        self.note_failure("read block for merge", &e);
                        tokio::select! {
                            _ = tokio::time::sleep(jitter(backoff)) => {}
                            _ = self.cancel.cancelled() => return Err(Outcome::Stopped),
                        }
                        backoff = (backoff * 2).min(self.config.retry_max);
                    }
                }
            };
            self.note_success();
            let at = at.min(bytes.len());
            let n = base_len.min(bytes.len() - at);
            out[..n].copy_from_slice(&bytes[at..at + n]);
        }
        for (o, b) in std::mem::take(&mut snap.ranges) {
            let s = (o - off) as usize;
            out[s..s + b.len()].copy_from_slice(&b);
        }
        Ok(Bytes::from(out))
    }

    /// One object or range ([`fetch_of`]), deduplicated with downloads
    /// in flight and cached. `permit`: a request slot the caller already
    /// holds (read-ahead).
    fn download(&self, fetch: Fetch, class: IoClass, permit: Option<IoPermit>) -> Download {
        let key = fetch.key;
        if let Some(b) = lock(&self.block_cache).get(&fetch) {
            self.counters
                .block_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return futures::future::ready(Ok(b)).boxed().shared();
        }
        let mut downloads = lock(&self.downloads);
        if let Some(d) = downloads.get(&fetch) {
            self.counters
                .downloads_shared
                .fetch_add(1, Ordering::Relaxed);
            return d.clone();
        }
        let store = self.store.clone();
        let io = self.io.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let url = self.store.url().to_string();
        let fut = rx
            .map(move |r: Result<Result<Bytes, Arc<BlockStoreError>>, _>| {
                // The task only drops the sender by panicking.
                r.unwrap_or_else(|_| {
                    Err(Arc::new(BlockStoreError::Request {
                        url: url.clone(),
                        op: "get",
                        key,
                        source: Box::new(object_store::Error::Generic {
                            store: "slicefs",
                            source: "the download task failed".into(),
                        }),
                    }))
                })
            })
            .boxed()
            .shared();
        downloads.insert(fetch, fut.clone());
        drop(downloads);
        // The download runs on its own so that a reader giving up does not
        // cancel it for the others.
        let this = self.me.clone();
        tokio::spawn(async move {
            let _io = match permit {
                Some(p) => p,
                None => io.acquire(class).await,
            };
            let r = match fetch.range {
                None => store.get(&key).await,
                Some((offset, len)) => store.get_range(&key, offset, len).await,
            }
            .map_err(Arc::new);
            if let Some(inner) = this.upgrade() {
                if let Ok(b) = &r {
                    inner.counters.downloads.fetch_add(1, Ordering::Relaxed);
                    inner
                        .counters
                        .download_bytes
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    lock(&inner.block_cache).insert(fetch, b.clone());
                }
                lock(&inner.downloads).remove(&fetch);
            }
            let _ = tx.send(r);
        });
        fut
    }

    /// Reads committed block `addr` from byte `from` into `out`, retrying
    /// a failing store for [`TransferConfig::read_retry_for`]. An object
    /// missing from the store is looked up again at once (a newer version
    /// may have replaced it, and the old one may be deleted); missing
    /// again under the same version, it is gone for good: the error
    /// returns at once (`EIO` to the reader), never zeros.
    async fn read_block(
        &self,
        addr: BlockAddr,
        from: usize,
        out: &mut [u8],
    ) -> Result<(), TransferError> {
        let deadline = Instant::now() + self.config.read_retry_for;
        let mut backoff = self.config.retry_initial;
        let mut missing: Option<BlockKey> = None;
        loop {
            let mut not_found = None;
            let attempt: Result<(), TransferError> = async {
                let Some(r) = self.meta.block(addr)? else {
                    out.fill(0);
                    return Ok(());
                };
                let valid = (r.len as usize).saturating_sub(from).min(out.len());
                if valid > 0 {
                    let (fetch, at) = fetch_of(&r, addr);
                    let bytes = match self.download(fetch, IoClass::Demand, None).await {
                        Ok(b) => b,
                        Err(e) => {
                            if matches!(*e, BlockStoreError::NotFound { .. }) {
                                not_found = Some(fetch.key);
                            }
                            return Err(e.into());
                        }
                    };
                    let start = at + from;
                    let have = bytes.len().saturating_sub(start).min(valid);
                    if have > 0 {
                        out[..have].copy_from_slice(&bytes[start..start + have]);
                    }
                    out[have..].fill(0);
                } else {
                    out.fill(0);
                }
                Ok(())
            }
            .await;
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if let Some(key) = not_found {
                        if missing == Some(key) {
                            tracing::error!(%key, "committed block object missing from the store; reads of its bytes fail");
                            return Err(e);
                        }
                        missing = Some(key);
                        continue;
                    }
                    if Instant::now() + backoff > deadline {
                        return Err(e);
                    }
                    self.note_failure("read", &e);
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(backoff)) => {}
                        _ = self.cancel.cancelled() => return Err(TransferError::Shutdown),
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    fn read_ahead(self: Arc<Self>, file: FileId, first: u64, last: u64) {
        let n = u64::from(self.config.readahead_blocks);
        if n == 0 {
            return;
        }
        let sequential = {
            let mut readers = lock(&self.readers);
            let next = readers.insert(file, last + 1);
            next.map_or(first == 0, |b| first == b || first + 1 == b)
        };
        if !sequential {
            return;
        }
        for b in last + 1..=last + n {
            let addr = addr_of(file, b);
            let Ok(Some(r)) = self.meta.block(addr) else {
                break;
            };
            let (fetch, _) = fetch_of(&r, addr);
            if lock(&self.block_cache).contains(&fetch)
                || lock(&self.downloads).contains_key(&fetch)
            {
                continue;
            }
            // Read-ahead only uses idle slots; it never queues.
            let Some(permit) = self.io.try_acquire() else {
                break;
            };
            self.counters.prefetches.fetch_add(1, Ordering::Relaxed);
            // The download runs on its own task with this slot; nobody
            // waits for it here.
            drop(self.download(fetch, IoClass::Prefetch, Some(permit)));
        }
    }

    /// Runs `op` until it succeeds, with backoff; `None` if the manager
    /// stops first.
    async fn retry<T, E, F, Fut>(&self, what: &'static str, mut op: F) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = self.config.retry_initial;
        loop {
            if self.cancel.is_cancelled() {
                return None;
            }
            match op().await {
                Ok(v) => {
                    self.note_success();
                    return Some(v);
                }
                Err(e) => {
                    self.note_failure(what, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(backoff)) => {}
                        _ = self.cancel.cancelled() => return None,
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    fn note_failure(&self, what: &str, e: &dyn std::fmt::Display) {
        let n = self.counters.retries.fetch_add(1, Ordering::Relaxed);
        let mut stall = lock(&self.stall);
        let since = *stall.0.get_or_insert_with(Instant::now);
        stall.1 = Some(format!("{what}: {e}"));
        drop(stall);
        // Loud at first, then once in a while, so a long outage stays
        // visible without flooding the log.
        if n.is_multiple_of(20) {
            tracing::warn!(
                what,
                error = %e,
                stalled_for_s = since.elapsed().as_secs(),
                "object store request failed; retrying"
            );
        }
    }

    fn note_success(&self) {
        let mut stall = lock(&self.stall);
        if let Some(since) = stall.0.take() {
            tracing::info!(
                stalled_for_ms = since.elapsed().as_millis() as u64,
                "object store requests succeed again"
            );
        }
    }

    fn collect_later(&self, key: BlockKey) {
        self.enqueue_gc(Instant::now() + self.config.gc_grace, key);
    }

    /// A file whose inode is gone from metadata (purged: by this host's
    /// reaper, or by another host of a shared volume) has bytes nobody
    /// will read: they leave the cache, and a Remove record keeps a
    /// replay from bringing them back. Without this an upload of such
    /// bytes would fail and be planned again forever.
    fn forget_gone_file(&self, file: FileId) {
        if self.persister.is_enabled()
            && let Err(e) = self.persister.append_remove(file)
        {
            tracing::debug!(error = %e, ?file, "remove record for a gone file");
            return;
        }
        self.cache.remove(file);
    }

    fn collect_now(&self, key: BlockKey) {
        self.enqueue_gc(Instant::now(), key);
    }

    fn enqueue_gc(&self, due: Instant, key: BlockKey) {
        let item = GcItem {
            queued: Instant::now(),
            due,
            key,
        };
        match self.gc_tx.try_send(item) {
            Ok(()) => {
                self.counters.gc_pending.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.gc_deferred.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%key, "deletion queue full; the object is deleted at the next start");
            }
        }
    }

    /// Deletes replaced objects once their grace period is over, and
    /// once the metadata change that dropped them is durable: a block map
    /// that a power loss brings back must never point at a deleted
    /// object. One metadata sync covers every object queued before it.
    /// Waits until metadata changes up to `seq` are durable (made so by
    /// [`Inner::meta_syncer`], in groups). `false` if the manager stopped
    /// first.
    async fn meta_made_durable(&self, seq: u64) -> bool {
        if self.meta.is_durable(seq) {
            return true;
        }
        self.meta_want.fetch_max(seq, Ordering::AcqRel);
        self.meta_wake.notify_one();
        let mut rx = self.meta_durable.subscribe();
        tokio::select! {
            r = rx.wait_for(|&d| d >= seq) => r.is_ok(),
            _ = self.cancel.cancelled() => false,
        }
    }

    /// Makes block commits durable in groups: after a request, waits
    /// [`TransferConfig::meta_sync_window`] for more, then one metadata sync (one log sync
    /// and one fsync of the metadata) covers every commit so far.
    /// Failures are retried with backoff (uploads wait meanwhile).
    async fn meta_syncer(self: Arc<Self>) {
        let mut backoff = self.config.retry_initial;
        loop {
            tokio::select! {
                _ = self.meta_wake.notified() => {}
                _ = self.cancel.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.meta_sync_window) => {}
                _ = self.cancel.cancelled() => return,
            }
            loop {
                let target = self.meta_want.load(Ordering::Acquire);
                if !self.meta.is_durable(target) {
                    let meta = self.meta.clone();
                    match tokio::task::spawn_blocking(move || meta.sync()).await {
                        Ok(Ok(())) => backoff = self.config.retry_initial,
                        Ok(Err(e)) => {
                            self.note_failure("metadata sync", &e);
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = self.cancel.cancelled() => return,
                            }
                            backoff = (backoff * 2).min(self.config.retry_max);
                            continue;
                        }
                        Err(_) => return,
                    }
                }
                self.meta_durable.send_replace(target);
                break;
            }
        }
    }

    /// Deletes dropped objects: first what the doomed list (in metadata)
    /// still holds from an earlier run, which a stop or crash left
    /// undeleted; then each object queued by this run once its grace
    /// period is over. An object is deleted only once the metadata change
    /// that dropped it is durable (a block map that a power loss brings
    /// back must never point at a deleted object), and leaves the doomed
    /// list once deleted. An object that cannot be deleted stays on the
    /// list for the next start.
    async fn collector(self: Arc<Self>, mut rx: mpsc::Receiver<GcItem>) {
        if !self.resumed().await {
            return;
        }
        let mut synced_at: Option<Instant> = None;
        let mut deleted = Vec::new();
        let meta = self.meta.clone();
        match tokio::task::spawn_blocking(move || meta.doomed()).await {
            Ok(Ok(keys)) => {
                if !keys.is_empty() {
                    tracing::info!(
                        objects = keys.len(),
                        "deleting objects dropped before the last stop"
                    );
                }
                for key in keys {
                    let Some(ok) = self
                        .delete_dropped(key, Instant::now(), &mut synced_at)
                        .await
                    else {
                        return;
                    };
                    if ok {
                        deleted.push(key);
                        if deleted.len() >= FORGET_BATCH {
                            self.forget_deleted(&mut deleted).await;
                        }
                    }
                }
                self.forget_deleted(&mut deleted).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read the doomed list; its objects are deleted at the next start");
            }
            Err(_) => return,
        }
        loop {
            let GcItem { queued, due, key } = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = self.cancel.cancelled() => return,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = self.cancel.cancelled() => return,
            }
            let Some(ok) = self.delete_dropped(key, queued, &mut synced_at).await else {
                return;
            };
            self.counters.gc_pending.fetch_sub(1, Ordering::Relaxed);
            if ok {
                deleted.push(key);
            }
            if rx.is_empty() || deleted.len() >= FORGET_BATCH {
                self.forget_deleted(&mut deleted).await;
            }
        }
    }

    /// Deletes dropped object `key` (queued at `queued`) after making
    /// metadata durable unless a sync since `queued` already did. `None`:
    /// the manager stopped. `Some(false)`: not deleted (left on the
    /// doomed list).
    async fn delete_dropped(
        &self,
        key: BlockKey,
        queued: Instant,
        synced_at: &mut Option<Instant>,
    ) -> Option<bool> {
        if synced_at.is_none_or(|t| t <= queued) {
            let started = Instant::now();
            let meta = self.meta.clone();
            match tokio::task::spawn_blocking(move || meta.sync()).await {
                Ok(Ok(())) => *synced_at = Some(started),
                Ok(Err(e)) => {
                    tracing::warn!(%key, error = %e, "metadata sync before a deletion failed; the object is deleted at the next start");
                    self.counters.gc_deferred.fetch_add(1, Ordering::Relaxed);
                    return Some(false);
                }
                Err(_) => return None,
            }
        }
        lock(&self.block_cache).remove(&Fetch::whole(key));
        for attempt in 0..5u32 {
            match self.store.delete(&key).await {
                Ok(()) => {
                    self.counters.gc_deleted.fetch_add(1, Ordering::Relaxed);
                    return Some(true);
                }
                Err(e) => {
                    tracing::debug!(%key, error = %e, attempt, "delete failed");
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(self.config.retry_initial * 2u32.pow(attempt))) => {}
                        _ = self.cancel.cancelled() => return None,
                    }
                }
            }
        }
        self.counters.gc_deferred.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%key, "could not delete a dropped block; it is deleted at the next start");
        Some(false)
    }

    /// Takes `deleted` off the doomed list (one metadata transaction) and
    /// clears it. A failure only means deleting those objects again at
    /// the next start (a missing object deletes fine).
    async fn forget_deleted(&self, deleted: &mut Vec<BlockKey>) {
        if deleted.is_empty() {
            return;
        }
        let keys = std::mem::take(deleted);
        let meta = self.meta.clone();
        match tokio::task::spawn_blocking(move || meta.forget_doomed(&keys)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not update the doomed list; deleted again at the next start");
            }
            Err(_) => {}
        }
    }
}

/// `d` scaled by a random factor in `[0.5, 1.0)` ("equal jitter").
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

//! Transfer manager against `memory://` wrapped in a fault-injecting
//! store: nothing lost, everything uploaded, reads always right; crashes
//! between the upload steps; garbage collection; shared downloads and
//! read-ahead.

mod rig;

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slicefs::blockstore::{BlockStore, FaultConfig, FaultyStore};
use slicefs::meta::{BlockMap, MetaStore};
use slicefs::transfer::{CrashPoint, PACK_MEMBER_MAX, TransferError};
use slicefs_cache::{BLOCK_SIZE, CacheConfig, CacheError};
use slicefs_wal::{FileId, NullPersister};

use rig::{Rig, fast_config, mmap_persister};

fn faulty_memory(config: FaultConfig) -> (Arc<FaultyStore>, BlockStore) {
    let inner = Arc::new(object_store::memory::InMemory::new());
    let faulty = Arc::new(FaultyStore::new(inner, config));
    let store = BlockStore::from_store(faulty.clone(), "fs", "memory://fs");
    (faulty, store)
}

/// Objects in the store that the block map references.
async fn referenced(store: &BlockStore, meta: &MetaStore) -> usize {
    let mut n = 0;
    for (key, _) in store.list(None).await.unwrap() {
        if meta.is_referenced(&key).unwrap() {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_ops_through_a_failing_store_lose_nothing() {
    let (faulty, store) = faulty_memory(FaultConfig {
        put_failure: 0.3,
        get_failure: 0.3,
        latency: Duration::from_millis(1),
    });
    let meta = Arc::new(MetaStore::memory(0, 0));
    let cache = CacheConfig {
        capacity_bytes: 24 << 20,
        dirty_max_bytes: 16 << 20,
        dirty_wait: Duration::from_secs(30),
    };
    let rig = Rig::new(
        cache.clone(),
        Arc::new(NullPersister::new()),
        meta.clone(),
        store.clone(),
        fast_config(),
    );
    let mut rng = StdRng::seed_from_u64(0x51ce);
    let files = [FileId(1), FileId(2), FileId(3)];
    for step in 0..400 {
        let f = files[rng.random_range(0..files.len())];
        match rng.random_range(0..100) {
            0..70 => {
                let max = 3 * BLOCK_SIZE as usize;
                let off = rng.random_range(0..max) as u64;
                let len = rng.random_range(1..=256 << 10);
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                rig.write(f, off, &data).await.unwrap();
            }
            70..90 => {
                let off = rng.random_range(0..4 * BLOCK_SIZE);
                let len = rng.random_range(1..=2 << 20);
                rig.check_read(f, off, len).await;
            }
            90..95 => {
                let size = rng.random_range(0..3 * BLOCK_SIZE);
                rig.truncate(f, size).await;
            }
            _ => {
                // Let the flusher catch up and the cache evict, so reads
                // must come from the store.
                rig.tm.drain(Duration::from_secs(60)).await.unwrap();
                rig.cache.evict_if_needed();
            }
        }
        if step % 50 == 0 {
            rig.check_all().await;
        }
    }
    rig.tm.drain(Duration::from_secs(120)).await.unwrap();
    assert_eq!(rig.cache.dirty_bytes(), 0);
    assert!(faulty.injected_failures() > 0, "faults were injected");
    assert!(rig.tm.stats().retries > 0);
    rig.check_all().await;
    let model = rig.model();
    rig.tm.shutdown().await;

    // Everything is in the store: a fresh cache reads it all back.
    faulty.set_config(FaultConfig::default());
    let fresh = Rig::with_model(
        cache,
        Arc::new(NullPersister::new()),
        meta,
        store,
        fast_config(),
        model,
    );
    fresh.check_all().await;
    assert_eq!(fresh.cache.stats().memory_bytes, 0, "read from the store");
    fresh.tm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_store_gives_back_pressure_and_resumes() {
    let (faulty, store) = faulty_memory(FaultConfig::default());
    let cache = CacheConfig {
        capacity_bytes: 16 << 20,
        dirty_max_bytes: 8 << 20,
        dirty_wait: Duration::from_millis(300),
    };
    let rig = Rig::new(
        cache,
        Arc::new(NullPersister::new()),
        Arc::new(MetaStore::memory(0, 0)),
        store,
        fast_config(),
    );
    faulty.set_offline(true);
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0u64;
    let full = loop {
        match rig.write(FileId(9), written, &chunk).await {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written <= 64 << 20, "the dirty limit never pushed back");
    };
    assert!(matches!(full, CacheError::CacheFull { .. }), "{full}");
    assert!(written >= 7 << 20, "writers ran until the dirty limit");
    let stats = rig.tm.stats();
    assert!(stats.stalled_for.is_some(), "the stall shows in stats");
    assert!(stats.last_error.is_some());
    assert_eq!(stats.uploads, 0);

    faulty.set_offline(false);
    rig.tm.drain(Duration::from_secs(60)).await.unwrap();
    assert!(rig.tm.stats().stalled_for.is_none());
    rig.write(FileId(9), written, &chunk).await.unwrap();
    rig.check_all().await;
    // A graceful close uploads what is left before it stops.
    assert!(rig.cache.dirty_bytes() > 0);
    rig.tm.close(Duration::from_secs(60)).await.unwrap();
    assert_eq!(rig.cache.dirty_bytes(), 0);
}

/// Crash at `point` during the upload of a synced write; restart from the
/// log, the metadata and the store; check nothing is lost and the orphan
/// (if any) is swept.
async fn crash_and_restart(point: CrashPoint) {
    let dir = tempfile::tempdir().unwrap();
    let (_faulty, store) = faulty_memory(FaultConfig::default());
    let meta = Arc::new(MetaStore::memory(0, 0));
    let cache = CacheConfig::default();
    let mut config = fast_config();
    config.crash_at = Some(point);

    // A block committed before, so the crashed upload merges over it.
    let first = {
        let rig = Rig::new(
            cache.clone(),
            mmap_persister(dir.path()),
            meta.clone(),
            store.clone(),
            fast_config(),
        );
        let base: Vec<u8> = (0..BLOCK_SIZE as usize).map(|i| (i % 251) as u8).collect();
        rig.write(FileId(5), 0, &base).await.unwrap();
        rig.tm.flush_file(FileId(5)).await.unwrap();
        rig.persister.sync().unwrap();
        rig.tm.shutdown().await;
        rig.persister.close().unwrap();
        rig.model()
    };
    let model = {
        let rig = Rig::with_model(
            cache.clone(),
            mmap_persister(dir.path()),
            meta.clone(),
            store.clone(),
            config,
            first,
        );
        // Both inside block 0: the upload that crashes merges over the
        // committed block.
        rig.write(FileId(5), 1000, &[0xAB; 5000]).await.unwrap();
        rig.write(FileId(5), 100_000, &[0xCD; 300]).await.unwrap();
        rig.persister.sync().unwrap();
        let r = rig.tm.flush_file(FileId(5)).await;
        assert!(matches!(r, Err(TransferError::Shutdown)), "{r:?}");
        assert!(rig.tm.crashed());
        rig.tm.shutdown().await;
        // The process dies: nothing more is written; the log is as synced.
        rig.model()
    };
    let objects_at_crash = store.list(None).await.unwrap().len();
    let referenced_at_crash = referenced(&store, &meta).await;

    let (rig, report) = Rig::recover(
        cache,
        mmap_persister(dir.path()),
        meta.clone(),
        store.clone(),
        fast_config(),
        model,
    );
    assert!(report.pending_bytes > 0, "the log replayed pending data");
    // Recovered data is uploaded with no new write.
    rig.tm.drain(Duration::from_secs(30)).await.unwrap();
    assert!(rig.tm.stats().uploads > 0);
    rig.check_all().await;
    // A cold cache reads the same from the store.
    let model = rig.model();
    rig.tm.shutdown().await;
    let cold = Rig::cold(meta.clone(), store.clone(), model);
    cold.check_all().await;
    let report = cold.tm.sweep_orphans(Duration::ZERO).await.unwrap();
    let referenced = referenced(&store, &meta).await as u64;
    assert_eq!(report.listed - report.deleted, referenced);
    if point == CrashPoint::AfterUpload {
        assert!(objects_at_crash > referenced_at_crash, "an orphan was left");
        assert!(report.deleted >= 1, "the orphan of the crash is swept");
    }
    cold.check_all().await;
    cold.tm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_upload_and_metadata_commit_loses_nothing() {
    crash_and_restart(CrashPoint::AfterUpload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_metadata_commit_and_flushed_marker_loses_nothing() {
    crash_and_restart(CrashPoint::AfterMetaCommit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_blocks_merge_and_truncate_hides_old_bytes() {
    let (_f, store) = faulty_memory(FaultConfig::default());
    let meta = Arc::new(MetaStore::memory(0, 0));
    let rig = Rig::new(
        CacheConfig::default(),
        Arc::new(NullPersister::new()),
        meta.clone(),
        store.clone(),
        fast_config(),
    );
    let f = FileId(3);
    rig.write(f, 0, &vec![1u8; BLOCK_SIZE as usize])
        .await
        .unwrap();
    rig.tm.drain(Duration::from_secs(10)).await.unwrap();
    // A small overwrite is merged over the committed block.
    rig.write(f, 4096, &[2u8; 100]).await.unwrap();
    rig.tm.drain(Duration::from_secs(10)).await.unwrap();
    // The merged object, read cold from the store.
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let cold_tm = Rig::cold(meta.clone(), store.clone(), rig.model());
    cold_tm.tm.read(f, 0, &mut block).await.unwrap();
    assert!(block[..4096].iter().all(|&b| b == 1));
    assert!(block[4096..4196].iter().all(|&b| b == 2));
    assert!(block[4196..].iter().all(|&b| b == 1));
    cold_tm.tm.shutdown().await;
    // Truncate into the block, then extend past the old bytes: they read
    // as zeros, from the cache and from the store.
    rig.truncate(f, 100).await;
    rig.write(f, 200_000, &[3u8; 10]).await.unwrap();
    rig.check_all().await;
    rig.tm.drain(Duration::from_secs(10)).await.unwrap();
    let model = rig.model();
    rig.tm.shutdown().await;
    let cold = Rig::cold(meta.clone(), store.clone(), model);
    cold.check_all().await;
    let mut buf = vec![0xFFu8; 1000];
    cold.tm.read(f, 100, &mut buf).await.unwrap();
    assert!(buf.iter().all(|&b| b == 0), "old bytes past a truncate");
    cold.tm.shutdown().await;
}

/// Waits (at most 10 s) until the store holds `n` objects: the
/// collector deleted the rest.
async fn wait_for_objects(store: &BlockStore, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let objects = store.list(None).await.unwrap().len();
        if objects == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{objects} objects left, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A rig over memory metadata and a fault-free store, with no log and a
/// 50 ms garbage collection grace period.
fn quick_gc_rig() -> (Rig, BlockStore, Arc<MetaStore>) {
    let (_f, store) = faulty_memory(FaultConfig::default());
    let meta = Arc::new(MetaStore::memory(0, 0));
    let mut config = fast_config();
    config.gc_grace = Duration::from_millis(50);
    let rig = Rig::new(
        CacheConfig::default(),
        Arc::new(NullPersister::new()),
        meta.clone(),
        store.clone(),
        config,
    );
    (rig, store, meta)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_blocks_are_collected_after_the_grace_period() {
    let (rig, store, _meta) = quick_gc_rig();
    // Never zeros: an all-zero block is committed as a hole, no object.
    for round in 1..=5u8 {
        rig.write(FileId(1), 0, &vec![round; 2 * BLOCK_SIZE as usize])
            .await
            .unwrap();
        rig.write(FileId(2), 0, &[round; 10]).await.unwrap();
        rig.tm.drain(Duration::from_secs(10)).await.unwrap();
    }
    rig.remove(FileId(2)).await;
    wait_for_objects(&store, 2).await;
    let stats = rig.tm.stats();
    assert_eq!(stats.gc_deleted, 4 * 2 + 5);
    assert_eq!(stats.gc_pending, 0);
    rig.check_all().await;
    rig.tm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_a_download_and_sequential_reads_prefetch() {
    let (_f, store) = faulty_memory(FaultConfig {
        latency: Duration::from_millis(30),
        ..FaultConfig::default()
    });
    let meta = Arc::new(MetaStore::memory(0, 0));
    let writer = Rig::new(
        CacheConfig::default(),
        Arc::new(NullPersister::new()),
        meta.clone(),
        store.clone(),
        fast_config(),
    );
    let data: Vec<u8> = (0..12 * BLOCK_SIZE as usize)
        .map(|i| (i / 4096) as u8)
        .collect();
    writer.write(FileId(4), 0, &data).await.unwrap();
    writer.tm.drain(Duration::from_secs(30)).await.unwrap();
    let model = writer.model();
    writer.tm.shutdown().await;

    // Eight concurrent readers of one cold block, no read-ahead: one
    // download.
    let mut config = fast_config();
    config.readahead_blocks = 0;
    let cold = Rig::with_model(
        CacheConfig::default(),
        Arc::new(NullPersister::new()),
        meta.clone(),
        store.clone(),
        config,
        model.clone(),
    );
    let reads = (0..8).map(|_| {
        let tm = cold.tm.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            tm.read(FileId(4), 5 * BLOCK_SIZE, &mut buf).await.unwrap();
            buf
        })
    });
    for r in futures::future::join_all(reads).await {
        assert_eq!(r.unwrap()[..], data[5 * BLOCK_SIZE as usize..][..4096]);
    }
    let s = cold.tm.stats();
    assert_eq!(s.downloads, 1, "one download for eight readers: {s:?}");
    assert_eq!(s.downloads_shared + s.block_cache_hits, 7, "{s:?}");
    assert_eq!(s.prefetches, 0);
    cold.tm.shutdown().await;

    // A sequential reader from the start gets blocks read ahead, which
    // later reads find downloaded or in flight.
    let mut config = fast_config();
    config.readahead_blocks = 4;
    let cold = Rig::with_model(
        CacheConfig::default(),
        Arc::new(NullPersister::new()),
        meta.clone(),
        store.clone(),
        config,
        model,
    );
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..32u64 {
        cold.tm.read(FileId(4), i << 20, &mut buf).await.unwrap();
        assert_eq!(buf[..], data[(i << 20) as usize..][..1 << 20]);
    }
    let s = cold.tm.stats();
    assert!(s.prefetches >= 4, "{s:?}");
    // Blocks 0..8 read, up to 4 past them read ahead; none twice.
    assert!((8..=12).contains(&s.downloads), "{s:?}");
    cold.check_all().await;
    cold.tm.shutdown().await;
}

/// A committed object that vanished from the store (deleted behind
/// slicefs's back, or lost by the store) is never merged as zeros: the
/// upload of a partial write over it waits with its bytes in the log,
/// nothing is committed, and reading the lost bytes fails instead of
/// returning zeros.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_committed_object_is_never_merged_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let (_f, store) = faulty_memory(FaultConfig::default());
    let meta = Arc::new(MetaStore::memory(0, 0));
    let mut config = fast_config();
    config.read_retry_for = Duration::from_millis(300);
    let rig = Rig::new(
        CacheConfig::default(),
        mmap_persister(dir.path()),
        meta.clone(),
        store.clone(),
        config,
    );
    let f = FileId(7);
    rig.write(f, 0, &[0xAA; 8192]).await.unwrap();
    rig.tm.flush_file(f).await.unwrap();
    let lost = store.list(Some(f)).await.unwrap();
    assert_eq!(lost.len(), 1);
    store.delete(&lost[0].0).await.unwrap();
    let uploads = rig.tm.stats().uploads;

    // A partial write over the lost block: its upload would need the
    // lost bytes around it.
    rig.write(f, 100, &[0xBB; 10]).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), rig.tm.flush_file(f)).await;
    assert!(r.is_err(), "the upload must wait, not commit zeros: {r:?}");
    assert_eq!(rig.tm.stats().uploads, uploads, "nothing committed");
    assert!(
        store.list(Some(f)).await.unwrap().is_empty(),
        "no object with zeros in place of the lost bytes"
    );
    // Reading the lost bytes from the store fails (EIO above).
    let mut old = [0u8; 100];
    assert!(rig.tm.read(f, 0, &mut old).await.is_err());
    rig.tm.shutdown().await;
}

/// A log whose disk is full for flushed markers only (what `full`
/// says); everything else goes to a [`NullPersister`], and it claims to
/// be enabled so uploads write their markers.
struct FullForMarkers {
    inner: NullPersister,
    full: std::sync::atomic::AtomicBool,
}

impl slicefs_wal::Persister for FullForMarkers {
    fn append_slice(
        &self,
        w: &slicefs_wal::SliceWrite<'_>,
    ) -> slicefs_wal::Result<slicefs_wal::Lsn> {
        self.inner.append_slice(w)
    }
    fn append_remove(&self, f: FileId) -> slicefs_wal::Result<slicefs_wal::Lsn> {
        self.inner.append_remove(f)
    }
    fn append_truncate(&self, f: FileId, size: u64) -> slicefs_wal::Result<slicefs_wal::Lsn> {
        self.inner.append_truncate(f, size)
    }
    fn append_flushed(
        &self,
        m: &slicefs_wal::FlushedMarker,
    ) -> slicefs_wal::Result<slicefs_wal::Lsn> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(slicefs_wal::WalError::Io {
                op: "fallocate",
                file: "segment".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        self.inner.append_flushed(m)
    }
    fn sync(&self) -> slicefs_wal::Result<slicefs_wal::Lsn> {
        self.inner.sync()
    }
    fn durable_lsn(&self) -> slicefs_wal::Lsn {
        self.inner.durable_lsn()
    }
    fn next_lsn(&self) -> slicefs_wal::Lsn {
        self.inner.next_lsn()
    }
    fn recover(&self) -> slicefs_wal::Result<slicefs_wal::Recovery<'_>> {
        self.inner.recover()
    }
    fn reclaim(&self) -> slicefs_wal::Result<slicefs_wal::ReclaimStats> {
        self.inner.reclaim()
    }
    fn close(&self) -> slicefs_wal::Result<()> {
        self.inner.close()
    }
    fn is_enabled(&self) -> bool {
        true
    }
}

/// Regression: `ENOSPC` while appending a flushed marker stopped the
/// transfer manager for good. Now the bytes stay pending and uploads go
/// on once the disk has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_for_flushed_markers_does_not_stop_uploads() {
    let (_f, store) = faulty_memory(FaultConfig::default());
    let log = Arc::new(FullForMarkers {
        inner: NullPersister::new(),
        full: std::sync::atomic::AtomicBool::new(true),
    });
    let mut config = fast_config();
    config.upload_delay = Duration::from_millis(50);
    let rig = Rig::new(
        CacheConfig::default(),
        log.clone(),
        Arc::new(MetaStore::memory(0, 0)),
        store,
        config,
    );
    let f = FileId(3);
    rig.write(f, 0, &[5u8; 1000]).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), rig.tm.flush_file(f)).await;
    assert!(
        r.is_err(),
        "not clean while the marker cannot be logged: {r:?}"
    );
    assert!(rig.cache.dirty_bytes() > 0, "the bytes stay pending");
    log.full.store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(20), rig.tm.flush_file(f))
        .await
        .expect("uploads resume once the disk has room")
        .unwrap();
    assert_eq!(rig.cache.dirty_bytes(), 0);
    rig.check_all().await;
    rig.tm.shutdown().await;
}

/// The manager's per-file state follows dirty files: once everything is
/// uploaded, it keeps none (its planning walks only what it keeps), and a
/// file written again is tracked and uploaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_file_state_is_dropped_once_a_file_is_uploaded() {
    let (_f, store) = faulty_memory(FaultConfig::default());
    let meta = Arc::new(MetaStore::memory(0, 0));
    let rig = Rig::new(
        CacheConfig::default(),
        Arc::new(NullPersister::new()),
        meta.clone(),
        store.clone(),
        fast_config(),
    );
    for f in 1..=200u64 {
        rig.write(FileId(f), 0, &[f as u8; 300]).await.unwrap();
    }
    assert!(rig.tm.stats().tracked_files > 0);
    rig.tm.drain(Duration::from_secs(30)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rig.tm.stats().tracked_files > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rig.tm.stats().tracked_files, 0);
    rig.write(FileId(7), 100, &[9u8; 50]).await.unwrap();
    assert_eq!(rig.tm.stats().tracked_files, 1);
    rig.tm.drain(Duration::from_secs(30)).await.unwrap();
    rig.check_all().await;
    let model = rig.model();
    rig.tm.shutdown().await;
    let cold = Rig::cold(meta.clone(), store.clone(), model);
    cold.check_all().await;
    cold.tm.shutdown().await;
}

/// Small files are uploaded several to an object (packs): fewer objects
/// than files, every byte reads back cold, and a merge over a packed
/// block, a truncate and a removal keep the right bytes. Once every file
/// is gone the collector deletes every pack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_share_pack_objects_that_go_with_their_last_member() {
    let (rig, store, meta) = quick_gc_rig();
    let mut rng = StdRng::seed_from_u64(0x9ac);
    let files: Vec<FileId> = (100..300).map(FileId).collect();
    // Some above PACK_MEMBER_MAX: objects of their own. Made first, so
    // that the files are written in one burst and come due together.
    let data: Vec<Vec<u8>> = files
        .iter()
        .map(|_| {
            let len = rng.random_range(1..=80 << 10);
            (0..len).map(|_| rng.random()).collect()
        })
        .collect();
    let seq = meta.commit_seq();
    for (&f, data) in files.iter().zip(&data) {
        rig.write(f, 0, data).await.unwrap();
    }
    rig.tm.drain(Duration::from_secs(60)).await.unwrap();
    let objects = store.list(None).await.unwrap().len();
    assert!(rig.tm.stats().packs > 0, "nothing was packed");
    assert!(
        objects < files.len() / 2,
        "{objects} objects for {} small files",
        files.len()
    );
    // A pack's rows are committed in one transaction.
    let commits = meta.commit_seq() - seq;
    assert!(
        commits < files.len() as u64 / 2,
        "{commits} metadata commits for {} small files",
        files.len()
    );
    // A cold read of one small file fetches its bytes, not its pack.
    let (small, bytes) = files
        .iter()
        .zip(&data)
        .find(|(_, d)| d.len() <= PACK_MEMBER_MAX)
        .unwrap();
    let cold = Rig::cold(meta.clone(), store.clone(), rig.model());
    assert_eq!(cold.read(*small, 0, bytes.len()).await, *bytes);
    assert_eq!(cold.tm.stats().download_bytes, bytes.len() as u64);
    cold.check_all().await;
    cold.tm.shutdown().await;

    for (i, &f) in files.iter().enumerate() {
        match i % 4 {
            // Merged over the packed block, uploaded again.
            0 => rig.write(f, 10, &[0xEE; 300]).await.unwrap(),
            1 => rig.truncate(f, 5).await,
            2 => rig.remove(f).await,
            _ => {}
        }
    }
    rig.tm.drain(Duration::from_secs(60)).await.unwrap();
    rig.check_all().await;
    let cold = Rig::cold(meta.clone(), store.clone(), rig.model());
    cold.check_all().await;
    cold.tm.shutdown().await;

    for (i, &f) in files.iter().enumerate() {
        if i % 4 != 2 {
            rig.remove(f).await;
        }
    }
    wait_for_objects(&store, 0).await;
    rig.tm.shutdown().await;
}

/// A crash after a pack is put and before its members commit: the log
/// replays every member's bytes, they are uploaded again, and the sweep
/// deletes the pack no row references.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_pack_upload_and_commits_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_faulty, store) = faulty_memory(FaultConfig::default());
    let meta = Arc::new(MetaStore::memory(0, 0));
    let cache = CacheConfig::default();
    let mut config = fast_config();
    config.crash_at = Some(CrashPoint::AfterUpload);
    let model = {
        let rig = Rig::new(
            cache.clone(),
            mmap_persister(dir.path()),
            meta.clone(),
            store.clone(),
            config,
        );
        for f in 10..30 {
            rig.write(FileId(f), 0, &vec![f as u8; 1000 + f as usize])
                .await
                .unwrap();
        }
        rig.persister.sync().unwrap();
        let r = rig.tm.drain(Duration::from_secs(30)).await;
        assert!(r.is_err(), "{r:?}");
        assert!(rig.tm.crashed());
        rig.tm.shutdown().await;
        rig.model()
    };
    assert!(
        rig_packs_only(&store, &meta).await,
        "a pack was put, none committed"
    );
    let (rig, report) = Rig::recover(
        cache,
        mmap_persister(dir.path()),
        meta.clone(),
        store.clone(),
        fast_config(),
        model,
    );
    assert!(report.pending_bytes > 0, "the log replayed pending data");
    rig.tm.drain(Duration::from_secs(30)).await.unwrap();
    rig.check_all().await;
    let model = rig.model();
    rig.tm.shutdown().await;
    let cold = Rig::cold(meta.clone(), store.clone(), model);
    cold.check_all().await;
    let report = cold.tm.sweep_orphans(Duration::ZERO).await.unwrap();
    assert!(report.deleted >= 1, "the crashed pack is swept");
    assert_eq!(
        report.listed - report.deleted,
        referenced(&store, &meta).await as u64
    );
    cold.check_all().await;
    cold.tm.shutdown().await;
}

/// Whether the store holds objects and the block map references none.
async fn rig_packs_only(store: &BlockStore, meta: &MetaStore) -> bool {
    !store.list(None).await.unwrap().is_empty() && referenced(store, meta).await == 0
}

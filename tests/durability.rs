//! The durable order between the log and the metadata, and what the VFS
//! does when the log fails part-way, checked with a log that records its
//! syncs and fails on command (over a [`NullPersister`]), beside real
//! SQLite metadata. Power loss itself is tested in `tests/power_loss.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use slicefs::blockstore::{BlockStore, StoreConfig};
use slicefs::meta::{BlockAddr, BlockMap, BlockRef, Ino, MetaStore};
use slicefs::transfer::{TransferConfig, TransferManager};
use slicefs::vfs::{Creds, OpenFlags, Vfs, VfsConfig};
use slicefs_cache::{CHUNK_SIZE, CacheConfig, RecoveryReport, SliceCache};
use slicefs_wal::{
    ChunkIndex, FileId, FlushedMarker, Lsn, NullPersister, Persister, ReclaimStats, Recovery,
    SliceWrite, WalError,
};

/// A log that keeps nothing, counts syncs, and fails appends after
/// `appends_left` of them, and syncs while `fail_sync` is set. It claims
/// to be enabled, so the VFS and the metadata treat it as a real log.
struct FaultyLog {
    inner: NullPersister,
    appends_left: AtomicU64,
    fail_sync: AtomicBool,
    syncs: AtomicU64,
}

impl FaultyLog {
    fn new() -> Arc<FaultyLog> {
        Arc::new(FaultyLog {
            inner: NullPersister::new(),
            appends_left: AtomicU64::new(u64::MAX),
            fail_sync: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
        })
    }

    fn append(&self) -> Result<(), WalError> {
        let ok = self
            .appends_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if ok {
            Ok(())
        } else {
            Err(WalError::Io {
                op: "pwrite",
                file: "segment".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            })
        }
    }
}

impl Persister for FaultyLog {
    fn append_slice(&self, write: &SliceWrite<'_>) -> Result<Lsn, WalError> {
        self.append()?;
        self.inner.append_slice(write)
    }
    fn append_remove(&self, file: FileId) -> Result<Lsn, WalError> {
        self.append()?;
        self.inner.append_remove(file)
    }
    fn append_truncate(&self, file: FileId, size: u64) -> Result<Lsn, WalError> {
        self.append()?;
        self.inner.append_truncate(file, size)
    }
    fn append_flushed(&self, marker: &FlushedMarker) -> Result<Lsn, WalError> {
        self.append()?;
        self.inner.append_flushed(marker)
    }
    fn sync(&self) -> Result<Lsn, WalError> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(WalError::Poisoned {
                cause: "injected fdatasync failure".into(),
            });
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync()
    }
    fn durable_lsn(&self) -> Lsn {
        self.inner.durable_lsn()
    }
    fn next_lsn(&self) -> Lsn {
        self.inner.next_lsn()
    }
    fn recover(&self) -> Result<Recovery<'_>, WalError> {
        self.inner.recover()
    }
    fn reclaim(&self) -> Result<ReclaimStats, WalError> {
        self.inner.reclaim()
    }
    fn close(&self) -> Result<(), WalError> {
        self.inner.close()
    }
    fn is_enabled(&self) -> bool {
        true
    }
}

struct Setup {
    vfs: Vfs,
    meta: MetaStore,
    log: Arc<FaultyLog>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// A VFS over SQLite metadata in a temporary directory, a memory store
/// and `log`.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log = FaultyLog::new();
    let meta = MetaStore::open_sqlite(&dir.path().join("meta.db"), 0, 0).unwrap();
    let cache = Arc::new(SliceCache::new(CacheConfig::default()).unwrap());
    let store = BlockStore::open(&StoreConfig::new("memory:///")).unwrap();
    let persister: Arc<dyn Persister> = log.clone();
    let tm = {
        let _g = rt.enter();
        TransferManager::start_paused(
            cache.clone(),
            persister.clone(),
            Arc::new(meta.clone()),
            store,
            TransferConfig::default(),
        )
    };
    let (vfs, _) = Vfs::new(
        meta.clone(),
        cache,
        persister,
        tm,
        rt.handle().clone(),
        VfsConfig::default(),
        &RecoveryReport::default(),
    )
    .unwrap();
    Setup {
        vfs,
        meta,
        log,
        _rt: rt,
        _dir: dir,
    }
}

const RW: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
    cache_fill: false,
};

/// Nothing in metadata becomes durable before the log: every durable
/// metadata commit (an fsync of a directory, a block map commit) syncs
/// the log first, and fails, committing nothing durable, if that fails.
/// Regression: sizes and truncates in metadata could become durable
/// before the log records they depend on (a file that reads zeros up to
/// its size after a power loss, in modes `none` and `batch`).
#[test]
fn metadata_becomes_durable_only_after_the_log() {
    let s = setup();
    let root = Creds::root();
    let before = s.log.syncs.load(Ordering::SeqCst);
    s.vfs.fsyncdir(Ino::ROOT).unwrap();
    assert!(
        s.log.syncs.load(Ordering::SeqCst) > before,
        "fsync of a directory syncs the log first"
    );

    let (a, fh) = s
        .vfs
        .create(&root, Ino::ROOT, b"f", 0o644, RW, true)
        .unwrap();
    s.vfs.write(&root, fh, 0, b"data").unwrap();
    let version = s.meta.allocate_version().unwrap();
    s.log.fail_sync.store(true, Ordering::SeqCst);
    assert_eq!(s.vfs.fsync(fh, false).unwrap_err().errno(), libc::EIO);
    assert_eq!(s.vfs.fsyncdir(Ino::ROOT).unwrap_err().errno(), libc::EIO);
    let addr = BlockAddr {
        file: a.ino.file(),
        chunk: ChunkIndex(0),
        block: 0,
    };
    s.meta
        .commit_block(addr, BlockRef::own(version, 4))
        .unwrap();
    let seq = BlockMap::commit_seq(&s.meta);
    assert!(
        !BlockMap::is_durable(&s.meta, seq),
        "a block commit alone is not durable"
    );
    assert!(
        BlockMap::sync(&s.meta).is_err(),
        "making a block commit durable needs the log synced first"
    );
    assert!(!BlockMap::is_durable(&s.meta, seq));
    s.log.fail_sync.store(false, Ordering::SeqCst);
    BlockMap::sync(&s.meta).unwrap();
    assert!(BlockMap::is_durable(&s.meta, seq));
    s.vfs.release(fh).unwrap();
}

/// Regression: a write crossing a chunk boundary is logged in two parts;
/// when the second append failed, the caller got an error for a write
/// whose first part was applied. Now the write is short.
#[test]
fn a_write_cut_at_a_chunk_boundary_is_short_not_failed() {
    let s = setup();
    let root = Creds::root();
    let (a, fh) = s
        .vfs
        .create(&root, Ino::ROOT, b"f", 0o644, RW, true)
        .unwrap();
    s.log.appends_left.store(1, Ordering::SeqCst);
    let data: Vec<u8> = (0..100u8).collect();
    let n = s.vfs.write(&root, fh, CHUNK_SIZE - 40, &data).unwrap();
    assert_eq!(n, 40, "the part before the boundary");
    assert_eq!(s.vfs.getattr(a.ino).unwrap().size, CHUNK_SIZE);
    assert_eq!(s.vfs.read(fh, CHUNK_SIZE - 40, 100).unwrap(), &data[..40]);
    // A write that fails at its first part is an error (ENOSPC here).
    let e = s.vfs.write(&root, fh, CHUNK_SIZE, &data).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC);
    s.log.appends_left.store(u64::MAX, Ordering::SeqCst);
    s.vfs.release(fh).unwrap();
}

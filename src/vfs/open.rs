//! [`FsOptions`] and [`open_fs`]: the start-up sequence that builds a
//! [`Vfs`] from a data directory and options, as `slicefs mount` runs it:
//! validate options and the block store, lock and recover the log,
//! settle recovery against metadata, resume uploads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use slicefs_cache::{CacheConfig, RecoveryReport, SliceCache, recover_with_progress};
use slicefs_wal::{MmapPersister, NullPersister, Persister, RecoveryMode, WalConfig};

use super::{Vfs, VfsConfig, VfsRecovery, volume};
use crate::blockstore::{BlockStore, StoreConfig};
use crate::error::FsError;
use crate::meta::MetaStore;
use crate::transfer::{TransferConfig, TransferManager};

/// Which persister keeps the write-ahead log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersisterKind {
    /// The mmap log in `<data dir>/wal`.
    Mmap,
    /// No log: nothing survives a crash (tests, scratch mounts).
    Null,
}

/// Which metadata store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaKind {
    /// SQLite in `<data dir>/meta.db`.
    Sqlite,
    /// SQLite in this file (`--meta sqlite:///path`), for a database on
    /// another disk than the log. One host, as [`MetaKind::Sqlite`]; the
    /// database records its volume's UUID and the log it depends on, so
    /// opening it with another data directory is refused at start
    /// ([`volume::bind_meta`](super::volume::bind_meta)).
    SqliteAt(PathBuf),
    /// In memory: nothing survives the process.
    Memory,
    /// A PostgreSQL database (`postgres://...`) made by `slicefs format`
    /// and shared with other hosts: the volume's store comes from it, the
    /// VFS runs shared ([`VfsConfig::shared`](super::VfsConfig::shared)),
    /// and this data directory keeps only this host's log, cache and
    /// host id (`<data dir>/host-id`).
    Postgres(String),
}

/// Everything a file system is opened with.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Where the log, the metadata database and (by default) the blocks
    /// live. Created if missing.
    pub data_dir: PathBuf,
    /// The block store. Default: the one the data directory remembers
    /// (`volume.json`, see [`volume`](super::volume)), else
    /// `file://<data dir>/blocks`. Another store than the remembered one
    /// is refused.
    pub store: Option<StoreConfig>,
    /// Options for the store the volume names when `store` is not given
    /// (a shared volume's store: its secrets are not recorded, each host
    /// gives them). Ignored when `store` is set.
    pub store_options: Vec<(String, String)>,
    /// The persister. Default: mmap.
    pub persister: PersisterKind,
    /// The metadata store. Default: SQLite.
    pub meta: MetaKind,
    /// Log settings (durability mode...).
    pub wal: WalConfig,
    /// Cache sizes.
    pub cache: CacheConfig,
    /// Upload and download settings.
    pub transfer: TransferConfig,
    /// VFS settings.
    pub vfs: VfsConfig,
    /// Owner of the root directory of a new file system.
    pub root_uid: u32,
    /// Group of the root directory of a new file system.
    pub root_gid: u32,
}

impl FsOptions {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> FsOptions {
        FsOptions {
            data_dir: data_dir.into(),
            store: None,
            store_options: Vec::new(),
            persister: PersisterKind::Mmap,
            meta: MetaKind::Sqlite,
            wal: WalConfig::default(),
            cache: CacheConfig::default(),
            transfer: TransferConfig::default(),
            vfs: VfsConfig::default(),
            root_uid: 0,
            root_gid: 0,
        }
    }
}

/// An opened file system and what its start-up found.
pub struct OpenedFs {
    /// The VFS.
    pub vfs: Arc<Vfs>,
    /// The log's persister (to close it at the end).
    pub persister: Arc<dyn Persister>,
    /// The log replay.
    pub replay: RecoveryReport,
    /// What was settled against metadata.
    pub recovery: VfsRecovery,
}

/// Opens the file system: creates the data directory, opens and checks the
/// block store (a bad URL, a missing bucket or wrong credentials fail
/// here, before anything else), opens the metadata store and the log
/// (which locks the data directory against a second process), replays the
/// log into the cache, settles it against metadata, and starts the
/// transfer manager on `rt`, which uploads what the log held.
///
/// # Errors
/// [`FsError::Io`] with the step that failed.
pub async fn open_fs(
    options: &FsOptions,
    rt: &tokio::runtime::Handle,
) -> Result<OpenedFs, FsError> {
    open_fs_with_progress(options, rt, |_, _| {}).await
}

/// [`open_fs`], calling `progress(records_done, records_total)` while the
/// log is replayed (for a progress bar on large logs).
///
/// # Errors
/// As [`open_fs`].
pub async fn open_fs_with_progress(
    options: &FsOptions,
    rt: &tokio::runtime::Handle,
    mut progress: impl FnMut(u64, u64) + Send + 'static,
) -> Result<OpenedFs, FsError> {
    create_dir_durably(&options.data_dir)
        .map_err(|e| FsError::io("create the data directory", e))?;
    // A shared volume: its metadata names its store (and is opened first).
    let shared = match &options.meta {
        MetaKind::Postgres(url) => {
            let host = volume::host_id(&options.data_dir)?;
            let meta = MetaStore::open_postgres(url, host, options.root_uid, options.root_gid)?;
            let vol = volume::shared(&options.data_dir, &meta)?;
            Some((meta, vol))
        }
        _ => None,
    };
    // The store the data directory remembers, unless one was given (and
    // then it must be that one).
    let vol = match &shared {
        Some((_, v)) => Some(v.clone()),
        None => volume::load(&options.data_dir)?,
    };
    let chosen = volume::choose_store(&options.data_dir, options.store.as_ref(), vol.as_ref())?;
    let store_config = match &chosen {
        Some(s) => {
            let mut s = s.clone();
            if options.store.is_none() {
                for (k, v) in &options.store_options {
                    s.options.retain(|(have, _)| have != k);
                    s.options.push((k.clone(), v.clone()));
                }
            }
            s
        }
        None => {
            let dir = options.data_dir.join("blocks");
            create_dir_durably(&dir).map_err(|e| FsError::io("create the block directory", e))?;
            let abs = dir
                .canonicalize()
                .map_err(|e| FsError::io("resolve the block directory", e))?;
            let url = url::Url::from_directory_path(&abs)
                .map_err(|()| FsError::io("block directory URL", format!("{}", abs.display())))?;
            StoreConfig::new(url.as_str())
        }
    };
    let store = BlockStore::open(&store_config).map_err(|e| FsError::io("block store", e))?;
    store
        .check()
        .await
        .map_err(|e| FsError::io("block store", e))?;
    let vol = volume::bind(
        &options.data_dir,
        vol,
        chosen.as_ref(),
        &store,
        slicefs_cache::BLOCK_SIZE,
    )
    .await?;
    let sqlite_path = match &options.meta {
        MetaKind::SqliteAt(p) => p.clone(),
        _ => options.data_dir.join("meta.db"),
    };
    let is_sqlite = matches!(options.meta, MetaKind::Sqlite | MetaKind::SqliteAt(_));
    let meta = match (&options.meta, shared) {
        (_, Some((meta, _))) => meta,
        (MetaKind::Sqlite | MetaKind::SqliteAt(_), None) => {
            MetaStore::open_sqlite(&sqlite_path, options.root_uid, options.root_gid)?
        }
        (_, None) => MetaStore::memory(options.root_uid, options.root_gid),
    };
    if is_sqlite {
        volume::bind_meta(&meta, &vol, &sqlite_path)?;
    }
    let store = store.with_layout(meta.store_layout()?);
    // The database file and its WAL were just created, or exist: their
    // entries in the directory are made durable (SQLite syncs the
    // directory for a new WAL, not for the database file).
    if is_sqlite {
        let dir = match sqlite_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        sync_dir(dir).map_err(|e| FsError::io("fsync the metadata database's directory", e))?;
    }
    let persister: Arc<dyn Persister> = match options.persister {
        PersisterKind::Mmap => {
            create_dir_durably(&options.data_dir.join("wal"))
                .map_err(|e| FsError::io("create the log directory", e))?;
            let dir = options.data_dir.join("wal");
            let mut wal = options.wal.clone();
            // A log created anew (wiped after a clean drain) starts past
            // every LSN metadata still refers to.
            wal.first_lsn = wal.first_lsn.max(meta.max_lsn()? + 1);
            let reserve = options.data_dir.join("reserve");
            let p = tokio::task::spawn_blocking(move || {
                match MmapPersister::open(&dir, wal.clone()) {
                    // A start on a full disk: the log needs a new segment.
                    // The reserve is there for this (the VFS takes it
                    // again once the disk has room).
                    Err(e) if crate::error::is_no_space(&e) && give_back_reserve(&reserve) => {
                        MmapPersister::open(&dir, wal)
                    }
                    r => r,
                }
            })
            .await
            .map_err(|e| FsError::io("open the write-ahead log", e))?
            .map_err(|e| {
                if crate::error::is_no_space(&e) {
                    FsError::NoSpace(format!(
                        "open the write-ahead log: {e} (free some space on the data directory's disk)"
                    ))
                } else {
                    FsError::io("open the write-ahead log", e)
                }
            })?;
            Arc::new(p)
        }
        PersisterKind::Null => Arc::new(NullPersister::new()),
    };
    // After the log's lock: a second process on this data directory stops
    // there, before it could drop the holds of the first.
    meta.begin_session()?;
    let lost_after = check_log_identity(&meta, persister.as_ref(), options.wal.recovery_mode)?;
    let mut vfs_config = options.vfs.clone();
    vfs_config.shared |= matches!(options.meta, MetaKind::Postgres(_));
    if vfs_config.reserve_path.is_none() && (is_sqlite || options.persister == PersisterKind::Mmap)
    {
        vfs_config.reserve_path = Some(options.data_dir.join("reserve"));
    }
    let cache = Arc::new(
        SliceCache::new(options.cache.clone()).map_err(|e| FsError::io("cache settings", e))?,
    );
    let (p, c) = (persister.clone(), cache.clone());
    let replay =
        tokio::task::spawn_blocking(move || recover_with_progress(p.as_ref(), &c, &mut progress))
            .await
            .map_err(|e| FsError::io("replay the write-ahead log", e))?
            .map_err(|e| FsError::io("replay the write-ahead log", e))?;
    // Held until Vfs::new has settled recovery against metadata.
    let mut transfer = options.transfer.clone();
    if vfs_config.shared {
        // `close` waits for the upload and its durable commit.
        transfer.meta_sync_window = Duration::ZERO;
        // PostgreSQL schema 1 stores no offset in an object.
        transfer.pack_bytes = 0;
    }
    let tm = TransferManager::start_paused(
        cache.clone(),
        persister.clone(),
        Arc::new(meta.clone()),
        store,
        transfer,
    );
    let (vfs, recovery) = Vfs::new(
        meta,
        cache,
        persister.clone(),
        tm,
        rt.clone(),
        vfs_config,
        &replay,
    )?;
    if let Some(lsn) = lost_after {
        vfs.list_files_that_lost_data(lsn)?;
    }
    if vfs.is_shared() && !replay.files_with_pending.is_empty() {
        // Other hosts read the store: what this host's log held goes
        // there (and its sizes with the block commits) before this host
        // serves anything.
        tracing::info!(
            files = replay.files_with_pending.len(),
            "uploading what the log held before serving the shared volume"
        );
        for file in &replay.files_with_pending {
            vfs.transfer()
                .flush_file(*file)
                .await
                .map_err(|e| FsError::io("upload what the log held", e))?;
        }
    }
    Ok(OpenedFs {
        vfs: Arc::new(vfs),
        persister,
        replay,
        recovery,
    })
}

/// Empties the reserve file at `path` (see `space.rs`) if it holds
/// anything; whether it did.
fn give_back_reserve(path: &Path) -> bool {
    let held = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
    if held
        && std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(0))
            .is_ok()
    {
        tracing::warn!(path = %path.display(),
            "the data directory's disk is full: gave back the reserve so the log can start");
        return true;
    }
    false
}

/// fsync of a directory: its entries (files created, renamed or removed
/// in it) are durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `mkdir -p`, with each directory it creates made durable in its parent
/// (a power loss right after start-up must not lose the data directory,
/// or the `wal/` and `blocks/` entries in it).
fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(dir)?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// Refuses a log that is not the one metadata depends on: another log id
/// (the `wal/` directory was replaced or recreated empty) or one that ends
/// before the LSN metadata was last made durable with (records missing).
/// Files whose data only the missing log held would read as zeros, or as
/// older bytes; with [`RecoveryMode::TolerateCorruption`] the start goes
/// on, says so, and returns the LSN after which records were lost (0: the
/// whole log), for [`Vfs::list_files_that_lost_data`].
///
/// # Errors
/// [`FsError::Io`] naming both logs.
fn check_log_identity(
    meta: &MetaStore,
    persister: &dyn Persister,
    mode: RecoveryMode,
) -> Result<Option<u64>, FsError> {
    let Some((id, lsn)) = meta.log_dependency()? else {
        return Ok(None);
    };
    let have_id = persister.log_id();
    let have_lsn = persister.next_lsn().0.saturating_sub(1);
    if have_id == id && have_lsn >= lsn {
        return Ok(None);
    }
    let what = if have_id != id {
        format!(
            "metadata depends on log {id:016x} up to LSN {lsn}, but the log directory holds log {have_id:016x} (missing, replaced or recreated)"
        )
    } else {
        format!("metadata depends on the log up to LSN {lsn}, but the log ends at LSN {have_lsn}")
    };
    if mode == RecoveryMode::TolerateCorruption {
        tracing::error!(
            "{what}; going on as asked (--tolerate-corruption): data that only that log held is lost, and files read what the object store has"
        );
        return Ok(Some(if have_id == id { have_lsn } else { 0 }));
    }
    Err(FsError::io(
        "open the write-ahead log",
        format!(
            "{what}; restore that log, or start with --tolerate-corruption to go on without it"
        ),
    ))
}

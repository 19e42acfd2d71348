//! The VFS core: POSIX semantics over the metadata store, the log, the
//! slice cache and the transfer manager. It knows no protocol; the FUSE
//! and NFS front ends call it with inode numbers and map [`FsError`] to
//! errno (or nfsstat3) through [`FsError::errno`].
//!
//! Locking: a namespace change is one metadata transaction that checks
//! permissions itself (a [`crate::meta::Policy`]), so the VFS holds no
//! lock around it. Then one node's state mutex (writes, attribute changes
//! of an open file) -> the cache's and the log's own locks. Reads take
//! no VFS lock but the node's for the size.
//!
//! Calls block (the log's group commit, reads from the object store); a
//! front end calls them from its own threads (FUSE) or through
//! `spawn_blocking` (async servers), never from a Tokio worker.

mod copy;
mod holes;
mod open;
mod perm;
mod reaper;
mod space;
mod stateless;
pub mod volume;
pub use holes::Seek;
mod xattr;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use slicefs_cache::{CHUNK_SIZE, CacheError, SliceCache, chunk_ranges};
use slicefs_wal::{Persister, SliceWrite, WalError};

use crate::error::FsError;
use crate::meta::{
    Check, DirEntry, FileKind, Ino, Inode, MetaStore, NewNode, RenameFlags, SetAttr, Timespec,
    Usage,
};
use crate::transfer::TransferManager;
pub use open::{FsOptions, MetaKind, OpenedFs, PersisterKind, open_fs, open_fs_with_progress};
pub use perm::{Access, Creds};
pub use stateless::Stability;

type Result<T> = std::result::Result<T, FsError>;

/// The capacity reported for a store that has none (S3, GCS, Azure,
/// memory): 1 PiB.
pub const REMOTE_CAPACITY_BYTES: u64 = 1 << 50;

/// What [`Vfs::capacity`] reports.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Bytes in all.
    pub total_bytes: u64,
    /// Bytes free for writes.
    pub avail_bytes: u64,
    /// Inodes and bytes of all files.
    pub usage: Usage,
}

/// Largest file size: 2^50 bytes (1 PiB), far inside the chunk index.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// The end of `len` bytes at `offset`.
///
/// # Errors
/// `EFBIG` past [`MAX_FILE_SIZE`].
fn range_end(offset: u64, len: u64) -> Result<u64> {
    offset
        .checked_add(len)
        .filter(|&e| e <= MAX_FILE_SIZE)
        .ok_or(FsError::TooBig)
}

/// Per-mount settings of the VFS.
#[derive(Clone, Debug)]
pub struct VfsConfig {
    /// `fsync` also waits until the file's data is in the object store
    /// (not only durable in the log). Default: false.
    pub fsync_upload: bool,
    /// How long an unlinked file waits, at most, before its unlink is made
    /// durable (one metadata sync for every file unlinked meanwhile) and
    /// its data is freed. Default: 1 s. Minimum: 1 ms.
    pub reap_interval: Duration,
    /// A file kept allocated (`reserve_bytes`) on the data directory's
    /// disk and given back when that disk is full, so that deletes, which
    /// need a little metadata and log space themselves, still run and
    /// free space; taken again once the disk has room. Default: none
    /// ([`open_fs`] sets `<data dir>/reserve` for a data directory).
    pub reserve_path: Option<std::path::PathBuf>,
    /// Size of the reserve file. Default: 16 MiB.
    pub reserve_bytes: u64,
    /// Fraction of the reserve file's disk (the data directory's) kept
    /// free for other programs: a write that would take the free space
    /// below it waits for uploads and log compaction to make room (up to
    /// the cache's `dirty_wait`), then fails with `ENOSPC`. 0: off (the
    /// default). Needs `reserve_path`.
    pub free_space_ratio: f64,
    /// Other hosts change the same metadata (a shared namespace,
    /// PostgreSQL): close-to-open consistency. [`Vfs::flush`] (each
    /// `close`) uploads the file's data and commits its blocks before it
    /// writes the size, and the first open on this host reads the
    /// attributes from metadata and drops the bytes this host cached of
    /// the file (another host may have rewritten them). Default: false.
    pub shared: bool,
    /// In a shared namespace: how long another host may stay silent (no
    /// heartbeat) before this host takes it for dead, drops what it
    /// held open and frees its unlinked files. Heartbeats go every sixth
    /// of it. Default: 60 s.
    pub session_timeout: Duration,
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            fsync_upload: false,
            reap_interval: Duration::from_secs(1),
            reserve_path: None,
            reserve_bytes: 16 << 20,
            free_space_ratio: 0.0,
            shared: false,
            session_timeout: Duration::from_secs(60),
        }
    }
}

/// How a file is opened (the `O_*` flags that matter here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// `O_APPEND`: every write goes to the end.
    pub append: bool,
    /// `O_TRUNC`: cut to 0 at open.
    pub truncate: bool,
    /// The kernel's write-back page cache may read through this handle
    /// to fill a partly written page, even if it is write-only; open
    /// checks only the permissions `read` and `write` ask for.
    pub cache_fill: bool,
}

impl OpenFlags {
    /// From Linux `open(2)` flags.
    pub fn from_libc(flags: i32) -> OpenFlags {
        let acc = flags & libc::O_ACCMODE;
        OpenFlags {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            truncate: flags & libc::O_TRUNC != 0,
            cache_fill: false,
        }
    }

    /// The flags for a handle under the kernel's write-back cache
    /// (`FUSE_WRITEBACK_CACHE`): a writable handle also serves the
    /// kernel's page fills (`cache_fill`), and `O_APPEND` is dropped
    /// because the kernel picks the end-of-file offset of every write
    /// itself and writes whole pages back at their own offsets.
    pub fn for_kernel_writeback(self) -> OpenFlags {
        OpenFlags {
            append: false,
            cache_fill: self.write,
            ..self
        }
    }
}

/// Attribute changes requested by `setattr` (`utimensat` semantics for
/// times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttrRequest {
    /// chmod: permission bits.
    pub perm: Option<u16>,
    /// chown: owner.
    pub uid: Option<u32>,
    /// chown: group.
    pub gid: Option<u32>,
    /// truncate: size.
    pub size: Option<u64>,
    /// atime.
    pub atime: Option<TimeSet>,
    /// mtime.
    pub mtime: Option<TimeSet>,
    /// Clear setuid, and setgid of a group-executable regular file (the
    /// FUSE kernel's `FATTR_KILL_SUIDGID`, sent when a writer without
    /// `CAP_FSETID` is about to write).
    pub kill_suidgid: bool,
}

/// A time to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// `UTIME_NOW`.
    Now,
    /// An explicit time.
    At(Timespec),
}

/// One open file or directory handle.
struct Handle {
    node: Arc<Node>,
    flags: OpenFlags,
}

/// An inode with open handles: its size and times are kept here while
/// writes change them, and written to metadata on fsync and last close.
struct Node {
    ino: Ino,
    state: Mutex<NodeState>,
}

struct NodeState {
    attr: Inode,
    /// `attr` has changes metadata does not have yet.
    dirty: bool,
    opens: u32,
    /// Of `opens`, the handles open for writing.
    writers: u32,
    /// The metadata commits (see [`MetaStore::commit_seq`]) up to which
    /// this inode's metadata must be durable for an `fdatasync` to need
    /// nothing but the log: its creation, and every change that is not
    /// the size or times a write implies (chmod, chown, truncate).
    meta_seq: u64,
}

/// How long a `close`, `fsync` or `syncfs` on a shared volume waits for
/// its upload before it fails with `EIO` (the bytes stay in the log).
pub const SHARED_UPLOAD_WAIT: Duration = Duration::from_secs(60);

/// Permission bits without setuid, and without setgid if the group may
/// execute (a setgid bit without group execute means mandatory locking,
/// and stays): what a write, truncate or chown leaves (Linux
/// `setattr_should_drop_suidgid`).
fn without_suidgid(perm: u16) -> u16 {
    let mut p = perm & !0o4000;
    if p & 0o010 != 0 {
        p &= !0o2000;
    }
    p
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wal_err(e: WalError) -> FsError {
    match e {
        WalError::Io { ref source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            FsError::NoSpace(e.to_string())
        }
        e => FsError::io("write-ahead log", e),
    }
}

fn cache_err(e: CacheError) -> FsError {
    match e {
        e @ CacheError::CacheFull { .. } => FsError::NoSpace(e.to_string()),
        e => FsError::io("slice cache", e),
    }
}

/// What [`Vfs::new`] settled at start-up, after the log replay.
#[derive(Clone, Debug, Default)]
pub struct VfsRecovery {
    /// Files whose size grew to cover writes the log still had.
    pub sizes_fixed: u64,
    /// Truncates found in the log that metadata lacked, applied.
    pub truncates_applied: u64,
    /// Files in the log that metadata does not know (created but not
    /// synced before a power loss): their data is dropped.
    pub unknown_files: u64,
    /// Unlinked inodes freed (open when the process stopped).
    pub orphans_freed: u64,
    /// Files whose size or truncate in metadata depended on log records a
    /// power loss took: settled back to what survived.
    pub sizes_settled: u64,
}

/// The file system. Cheap to share (`Arc<Vfs>`).
pub struct Vfs {
    meta: MetaStore,
    cache: Arc<SliceCache>,
    persister: Arc<dyn Persister>,
    tm: TransferManager,
    rt: tokio::runtime::Handle,
    config: VfsConfig,
    nodes: Arc<Mutex<HashMap<Ino, Arc<Node>>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Handles that stateless calls keep open between calls
    /// ([`stateless`]).
    kept: Mutex<stateless::Kept>,
    /// Whether any inode may have an extended attribute (false only
    /// while none ever had one: see [`Vfs::getxattr`]).
    xattrs_exist: AtomicBool,
    parts: reaper::Parts,
    reaper: reaper::Reaper,
}

impl Vfs {
    /// Joins the parts. The cache must already hold what the log
    /// recovered (`slicefs_cache::recover`), and `report` is that
    /// recovery's report: sizes, truncates, unknown files and orphans are
    /// settled against metadata here, before any request; then the
    /// transfer manager is resumed (it may be started paused, see
    /// [`TransferManager::start_paused`]), so that no upload runs on
    /// unsettled state. The metadata store is tied to the log
    /// ([`MetaStore::attach_log`]). `rt` runs the transfer manager's
    /// reads.
    ///
    /// # Errors
    /// Metadata or log errors while settling recovery.
    pub fn new(
        meta: MetaStore,
        cache: Arc<SliceCache>,
        persister: Arc<dyn Persister>,
        tm: TransferManager,
        rt: tokio::runtime::Handle,
        config: VfsConfig,
        report: &slicefs_cache::RecoveryReport,
    ) -> Result<(Vfs, VfsRecovery)> {
        // One durable order (doc/DESIGN.md): metadata is durable only
        // after the log, and the log drops no record before the metadata
        // that justifies it is durable.
        meta.attach_log(&persister);
        let m = meta.clone();
        persister.set_reclaim_barrier(Box::new(move || m.sync().map_err(|e| e.to_string())));
        let nodes = Arc::new(Mutex::new(HashMap::new()));
        let space = Arc::new(space::Space::new(
            config.reserve_path.clone(),
            config.reserve_bytes,
            Some(space::Floor {
                ratio: config.free_space_ratio,
                wait: cache.config().dirty_wait,
            }),
            persister.clone(),
        ));
        let parts = reaper::Parts {
            space,
            meta: meta.clone(),
            cache: cache.clone(),
            persister: persister.clone(),
            tm: tm.clone(),
            nodes: nodes.clone(),
            session_timeout: config.shared.then_some(config.session_timeout),
        };
        let interval = config.reap_interval.max(Duration::from_millis(1));
        // Another host may set the first extended attribute at any time.
        let xattrs_exist = AtomicBool::new(config.shared || meta.any_xattr()?);
        let vfs = Vfs {
            reaper: reaper::Reaper::start(parts.clone(), interval)?,
            parts,
            meta,
            cache,
            persister,
            tm,
            rt,
            config,
            nodes,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            kept: Mutex::new(stateless::Kept::default()),
            xattrs_exist,
        };
        let rec = vfs.recover(report)?;
        vfs.tm.resume();
        Ok((vfs, rec))
    }

    /// Settles the log's replay against metadata, in this order: the log
    /// is ahead of metadata for truncates and sizes (applied, each
    /// truncate in LSN order); files metadata does not know lose their
    /// log data (their creation was lost); metadata is made durable (with
    /// the log before it); then orphans are freed. See doc/DESIGN.md,
    /// "Recovery".
    fn recover(&self, report: &slicefs_cache::RecoveryReport) -> Result<VfsRecovery> {
        let mut rec = VfsRecovery::default();
        // The log's end as recovered, before this function appends.
        let log_end = self.persister.next_lsn().0.saturating_sub(1);
        // A shared volume's metadata commits are durable when they return,
        // each after the log (PostgreSQL): a truncate in the log is in
        // metadata already, or its call never returned. And sizes grow
        // only with committed blocks there (other hosts read the store):
        // `open_fs` uploads what the log held before serving.
        let truncates: &[_] = if self.config.shared {
            &[]
        } else {
            &report.truncates
        };
        for &(file, lsn, size) in truncates {
            let ino = Ino(file.0);
            match self.meta.getattr(ino) {
                Ok(a) if a.truncate_lsn < lsn.0 => {
                    let set = SetAttr {
                        size: Some(size),
                        truncate_lsn: Some(lsn.0),
                        ..SetAttr::default()
                    };
                    self.tm
                        .change_blocks(file, false, || self.meta.truncate(ino, &set))?;
                    rec.truncates_applied += 1;
                }
                _ => {}
            }
        }
        // A file whose creation metadata lost may still have data in the
        // log: its number must not be handed out again.
        if let Some(max) = report.files_with_pending.iter().max() {
            self.meta.reserve_inos(Ino(max.0))?;
        }
        for file in &report.files_with_pending {
            let ino = Ino(file.0);
            match self.meta.getattr(ino) {
                Ok(a) => {
                    let end = self.cache.cached_end(*file);
                    if end > a.size && !self.config.shared {
                        self.meta.setattr(
                            ino,
                            &SetAttr {
                                size: Some(end),
                                ..SetAttr::default()
                            },
                        )?;
                        rec.sizes_fixed += 1;
                    }
                }
                Err(FsError::NotFound) => {
                    tracing::warn!(
                        ino = ino.0,
                        "the log has data of a file metadata does not know; dropped"
                    );
                    // Metadata never durably had this file, so dropping
                    // its data contradicts nothing durable.
                    self.persister.append_remove(*file).map_err(wal_err)?;
                    self.cache.remove(*file);
                    rec.unknown_files += 1;
                }
                Err(e) => return Err(e),
            }
        }
        rec.sizes_settled = self.settle_sizes_past_the_log(log_end)?;
        // What recovery read may be only in the page cache (a crash of
        // the process, not of the machine): the unlinks are made durable
        // before any orphan's data is dropped.
        self.meta.sync()?;
        for ino in self.meta.orphans()? {
            self.parts.free(ino)?;
            rec.orphans_freed += 1;
        }
        Ok(rec)
    }

    /// Metadata commits reach the disk in page write-back too, without
    /// an fsync, so a power loss may keep a size (or a truncate) whose log
    /// records it lost. Such a file is brought back to the state right
    /// after the last record the log kept: a truncate the log lost cuts
    /// the replayed bytes before it, and the size is what survived (the
    /// size at the last fsync or truncate, the replayed bytes, the
    /// committed blocks), never more than metadata had. Only for the log
    /// metadata depends on (LSNs of another log mean nothing here).
    /// Returns the number of files settled.
    fn settle_sizes_past_the_log(&self, last: u64) -> Result<u64> {
        // A shared volume syncs the log before every metadata commit, so
        // no size or truncate of this host's is past its durable log; and
        // an inode's other LSN field may be another host's (meaningless
        // against this log).
        if !self.persister.is_enabled() || self.config.shared {
            return Ok(0);
        }
        match self.meta.log_dependency()? {
            Some((id, _)) if id == self.persister.log_id() => {}
            _ => return Ok(0),
        }
        let mut n = 0;
        let past = self.meta.inodes_past(last)?;
        tracing::info!(
            log_end = last,
            files = past.len(),
            "files whose metadata is ahead of the log"
        );
        for ino in past {
            let a = self.meta.getattr(ino)?;
            let file = ino.file();
            if a.truncate_lsn > last {
                // Every replayed record of the file is older than it.
                self.cache.truncate(file, a.synced_size);
            }
            let survived = a
                .synced_size
                .max(self.cache.cached_end(file))
                .max(self.meta.blocks_end(ino)?);
            let s = self.meta.settle_size(ino, survived, last)?;
            if s.size != a.size {
                tracing::warn!(
                    ino = ino.0,
                    from = a.size,
                    to = s.size,
                    "size covered writes the log lost (not fsynced before a power loss); cut back"
                );
            }
            n += 1;
        }
        Ok(n)
    }

    /// After a start that went on without records the metadata depends on
    /// (`--tolerate-corruption`): logs, one error line each, the files
    /// that lost data with them, so the user knows what to restore. With
    /// `after` > 0 (the log ends there), every file whose metadata refers
    /// to a later record; with 0 (another log), every file that is longer
    /// than what the object store holds for it. Returns them.
    ///
    /// Not found: overwrites inside what the object store holds that only
    /// the lost records had (the store's older bytes read back); the
    /// metadata does not record them.
    ///
    /// # Errors
    /// `EIO` from metadata.
    pub fn list_files_that_lost_data(&self, after: u64) -> Result<Vec<Ino>> {
        const MAX_LINES: usize = 1000;
        let mut lost = Vec::new();
        for ino in self.meta.inodes_past(after)? {
            let a = self.meta.getattr(ino)?;
            if a.kind != FileKind::Regular {
                continue;
            }
            let stored = self.meta.blocks_end(ino)?;
            if after == 0 && a.size <= stored {
                continue;
            }
            lost.push(ino);
            if lost.len() <= MAX_LINES {
                tracing::error!(
                    ino = ino.0,
                    size = a.size,
                    object_store_holds = stored,
                    "file lost data the missing log records held (find it with `find MOUNTPOINT -inum {}`)",
                    ino.0
                );
            }
        }
        tracing::error!(
            files = lost.len(),
            after_lsn = after,
            "files that lost data with the log records that are gone{}",
            if lost.len() > MAX_LINES {
                format!(" (the first {MAX_LINES} are listed above)")
            } else {
                String::new()
            }
        );
        Ok(lost)
    }

    /// The metadata store.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// The transfer manager.
    pub fn transfer(&self) -> &TransferManager {
        &self.tm
    }

    /// Whether other hosts share this namespace ([`VfsConfig::shared`]).
    pub fn is_shared(&self) -> bool {
        self.config.shared
    }

    /// Whether the file system may hold extended attributes: it held one
    /// at start or one was set since, or it is shared (another host may
    /// set one).
    pub fn xattrs_exist(&self) -> bool {
        self.xattrs_exist.load(Ordering::Acquire)
    }

    /// The slice cache.
    pub fn cache(&self) -> &Arc<SliceCache> {
        &self.cache
    }

    fn node(&self, ino: Ino) -> Option<Arc<Node>> {
        lock(&self.nodes).get(&ino).cloned()
    }

    /// Attributes, with the in-memory size and times of an open file.
    fn attr(&self, ino: Ino) -> Result<Inode> {
        if let Some(n) = self.node(ino) {
            let mut a = lock(&n.state).attr.clone();
            a.alloc = a.alloc.max(a.size);
            return Ok(a);
        }
        Ok(self.overlay(self.meta.getattr(ino)?))
    }

    /// Writes an open node's changed attributes to metadata; with
    /// `synced` (an fsync: the log is durable up to now), its size is
    /// also the least a power loss may leave (`synced_size`).
    fn persist(&self, n: &Node, synced: bool) -> Result<()> {
        let mut st = lock(&n.state);
        let synced = synced && st.attr.synced_size != st.attr.size;
        if !st.dirty && !synced {
            return Ok(());
        }
        let a = &st.attr;
        // Size only grows here (a truncate goes to metadata at once), and
        // a committed block may already have grown it further: one
        // transaction takes the larger. The size carries the LSN of the
        // newest write it covers, so that recovery can tell a size whose
        // data a power loss took from the log.
        let set = SetAttr {
            perm: Some(a.perm),
            grow_size: Some(a.size),
            size_lsn: Some(a.size_lsn),
            synced_size: synced.then_some(a.size),
            mtime: Some(a.mtime),
            ctime: Some(a.ctime),
            ..SetAttr::default()
        };
        let stored = self.meta.setattr(n.ino, &set)?;
        st.attr.size = stored.size;
        st.attr.synced_size = stored.synced_size;
        st.dirty = false;
        Ok(())
    }

    /// `lookup`: the inode of `name` in `parent`.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`, `EACCES` (no search permission),
    /// `ENAMETOOLONG`.
    pub fn lookup(&self, creds: &Creds, parent: Ino, name: &[u8]) -> Result<Inode> {
        let f = self.meta.lookup_as(parent, name, &policy(creds))?;
        Ok(self.overlay(f))
    }

    /// `a` as metadata has it, with the in-memory size and times if the
    /// inode is open (its node is newer).
    ///
    /// `alloc` (what `st_blocks` reports) is exact only for a file at
    /// rest: an open file, or one with bytes still waiting for upload,
    /// reports at least its size (the block map does not know the bytes
    /// in the log yet), never less than it holds.
    fn overlay(&self, a: Inode) -> Inode {
        let mut a = match self.node(a.ino) {
            Some(n) => {
                let mut a = lock(&n.state).attr.clone();
                a.alloc = a.alloc.max(a.size);
                return a;
            }
            None => a,
        };
        if a.kind == FileKind::Regular && self.cache.oldest_pending_lsn(a.ino.file()).is_some() {
            a.alloc = a.alloc.max(a.size);
        }
        a
    }

    /// `getattr`.
    ///
    /// # Errors
    /// `ENOENT`.
    pub fn getattr(&self, ino: Ino) -> Result<Inode> {
        self.attr(ino)
    }

    /// `access(2)`: whether `creds` may access `ino` as `mask` says.
    ///
    /// # Errors
    /// `EACCES`, `ENOENT`.
    pub fn access(&self, creds: &Creds, ino: Ino, mask: Access) -> Result<()> {
        perm::check(creds, &self.attr(ino)?, mask)
    }

    /// `setattr`: chmod, chown, truncate, utimes, with POSIX permission
    /// rules (owner or root; setuid/setgid cleared by chown, by a truncate
    /// of a non-root caller, on `kill_suidgid`, and by a chmod of a
    /// non-member's group; times need ownership, or write permission
    /// for `UTIME_NOW`).
    ///
    /// # Errors
    /// `EPERM`, `EACCES`, `EISDIR` (size of a directory), `EFBIG`,
    /// `ENOENT`, `EIO`.
    pub fn setattr(&self, creds: &Creds, ino: Ino, req: &SetAttrRequest) -> Result<Inode> {
        let cur = self.attr(ino)?;
        let now = Timespec::now();
        let mut set = SetAttr::default();
        let owner = creds.uid == 0 || creds.uid == cur.uid;
        if let Some(p) = req.perm {
            if !owner {
                return Err(FsError::NotPermitted);
            }
            let mut p = p & 0o7777;
            if creds.uid != 0 && !creds.in_group(cur.gid) {
                p &= !0o2000;
            }
            set.perm = Some(p);
        }
        let uid_change = req.uid.is_some_and(|u| u != cur.uid);
        let gid_change = req.gid.is_some_and(|g| g != cur.gid);
        if req.uid.is_some() || req.gid.is_some() {
            if creds.uid != 0 {
                // Only the owner, and only to itself and to a group it
                // is in (Linux `chown_ok`, `chgrp_ok`): also a chown to
                // the owner the file has is the owner's alone.
                if uid_change || creds.uid != cur.uid {
                    return Err(FsError::NotPermitted);
                }
                if gid_change && !creds.in_group(req.gid.unwrap_or(cur.gid)) {
                    return Err(FsError::NotPermitted);
                }
            }
            set.uid = req.uid;
            set.gid = req.gid;
            if cur.kind != FileKind::Directory && (uid_change || gid_change || creds.uid != 0) {
                // chown clears setuid, and setgid of group-executable files.
                set.perm = Some(without_suidgid(set.perm.unwrap_or(cur.perm)));
            }
        }
        // Set-id bits go on the FUSE kernel's request, and on a truncate
        // by a non-root caller (as truncate(2) on ext4 without CAP_FSETID).
        let kill = req.kill_suidgid || (req.size.is_some() && creds.uid != 0);
        if kill && cur.kind == FileKind::Regular {
            let p = set.perm.unwrap_or(cur.perm);
            if without_suidgid(p) != p {
                set.perm = Some(without_suidgid(p));
            }
        }
        for (t, slot) in [(req.atime, &mut set.atime), (req.mtime, &mut set.mtime)] {
            match t {
                None => {}
                Some(TimeSet::Now) => {
                    if !owner {
                        perm::check(creds, &cur, Access::WRITE).map_err(|_| FsError::Access)?;
                    }
                    *slot = Some(now);
                }
                Some(TimeSet::At(ts)) => {
                    if !owner {
                        return Err(FsError::NotPermitted);
                    }
                    *slot = Some(ts);
                }
            }
        }
        if req.perm.is_none()
            && req.uid.is_none()
            && req.gid.is_none()
            && req.size.is_none()
            && !kill
            && set.atime.is_none()
            && let Some(mtime) = set.mtime
            && let Some(a) = self.absorb_times(ino, &cur, mtime, now)
        {
            return Ok(a);
        }
        if (req.uid.is_some() || req.gid.is_some())
            && !uid_change
            && !gid_change
            && req.perm.is_none()
            && req.size.is_none()
            && !kill
            && set.atime.is_none()
            && set.mtime.is_none()
            && set.perm.is_none_or(|p| p == cur.perm)
            && !self.config.shared
            && let Some(n) = self.node(ino).filter(|_| cur.kind == FileKind::Regular)
        {
            // A chown to the owner it has (tar and `cp -a` restore the
            // owner of every file they write, through its descriptor):
            // only the ctime changes, and an open file's node keeps it
            // with its size and times until its flush, fsync or release
            // (a shared volume's node publishes its bytes at release
            // when dirty, so it takes the transaction instead).
            let mut st = lock(&n.state);
            st.attr.ctime = now;
            st.dirty = true;
            return Ok(st.attr.clone());
        }
        if let Some(size) = req.size {
            if cur.kind == FileKind::Directory {
                return Err(FsError::IsDir);
            }
            if cur.kind != FileKind::Regular {
                return Err(FsError::Invalid("truncate of a special file"));
            }
            perm::check(creds, &cur, Access::WRITE)?;
            self.truncate(ino, size, now, &mut set)?;
        }
        set.ctime = Some(now);
        let n = self.node(ino);
        // The node stays locked from the metadata write to its own update:
        // a `persist` (a release) in between would write the node's older
        // times over these (a utime lost to the release of the write
        // before it).
        let mut st = n.as_ref().map(|n| lock(&n.state));
        // An open file's size and times not yet in metadata ride in this
        // transaction (as `persist` would write them), so that its flush
        // or release finds nothing left: a `chmod` after writes (tar, `cp
        // -a`) costs one metadata transaction, not two. Not on a shared
        // volume, where a size reaches metadata only after its bytes
        // reached the store (`publish`).
        let fold =
            !self.config.shared && st.as_ref().is_some_and(|st| st.dirty) && req.size.is_none();
        if let Some(st) = st.as_ref().filter(|_| fold) {
            set.grow_size = Some(st.attr.size);
            set.size_lsn = Some(st.attr.size_lsn);
            set.mtime = set.mtime.or(Some(st.attr.mtime));
            set.perm = set.perm.or(Some(st.attr.perm));
        }
        let stored = self.meta.setattr(ino, &set)?;
        if let Some(st) = st.as_mut() {
            st.meta_seq = self.meta.commit_seq();
            let (size, mtime, dirty) = (st.attr.size, st.attr.mtime, st.dirty);
            let size_lsn = st.attr.size_lsn;
            st.attr = stored.clone();
            // Writes newer than metadata keep their LSN with their size.
            st.attr.size_lsn = st.attr.size_lsn.max(size_lsn);
            if dirty && req.size.is_none() {
                // Writes newer than metadata stay.
                st.attr.size = st.attr.size.max(size);
                if req.mtime.is_none() {
                    st.attr.mtime = mtime;
                }
            }
            if fold {
                st.dirty = false;
            }
            return Ok(st.attr.clone());
        }
        Ok(stored)
    }

    /// A `setattr` of the modification time only (permission already
    /// checked), without a metadata transaction where none is needed; the
    /// FUSE kernel's write-back cache sends one after every write, and
    /// one for the inode of every rename, link and unlink (to flush the
    /// ctime it keeps). `None`: it needs a transaction.
    ///
    /// - An open file: the node takes it, and the next flush, fsync or
    ///   release persists it with the size (as it does for writes).
    /// - A file with no link left (being freed): nothing to keep.
    /// - An unchanged mtime: the VFS set the ctime itself in the change
    ///   that made the kernel send this (the rename, link or unlink);
    ///   the kernel's own ctime differs from it by microseconds.
    fn absorb_times(&self, ino: Ino, cur: &Inode, mtime: Timespec, now: Timespec) -> Option<Inode> {
        if let Some(n) = self.node(ino).filter(|_| cur.kind == FileKind::Regular) {
            let mut st = lock(&n.state);
            st.attr.mtime = mtime;
            st.attr.ctime = now;
            st.dirty = true;
            return Some(st.attr.clone());
        }
        (cur.nlink == 0 || mtime == cur.mtime).then(|| cur.clone())
    }

    /// Truncates `ino` to `size`: log, cache, then metadata (size,
    /// truncate LSN and block map in one transaction).
    fn truncate(&self, ino: Ino, size: u64, now: Timespec, set: &mut SetAttr) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        let n = self.node(ino);
        let mut st = n.as_ref().map(|n| lock(&n.state));
        // No sync here: metadata, which cuts the block map below, becomes
        // durable only after the log (MetaStore::attach_log), so the
        // truncate record is durable before the cut is; the objects the
        // cut drops are deleted only once it is durable (the transfer
        // manager's collector), and the log keeps the record until then
        // (reclaim barrier).
        let lsn = self
            .persister
            .append_truncate(ino.file(), size)
            .map_err(wal_err)?;
        self.cache.truncate(ino.file(), size);
        let mut t = set.clone();
        t.size = Some(size);
        t.truncate_lsn = Some(lsn.0);
        t.synced_size = Some(size);
        t.mtime = Some(set.mtime.unwrap_or(now));
        t.ctime = Some(now);
        let (a, ()) = self.tm.change_blocks(ino.file(), false, || {
            self.meta.truncate(ino, &t).map(|(a, d)| ((a, ()), d))
        })?;
        if let Some(st) = st.as_mut() {
            st.attr = a;
            st.dirty = false;
        }
        set.mtime = t.mtime;
        Ok(())
    }

    /// Creates a node of any type (`mknod`, `mkdir`, `symlink`, `create`)
    /// with POSIX ownership: the caller's uid; the directory's gid in a
    /// setgid directory (and a new directory inherits setgid), else the
    /// caller's gid.
    ///
    /// # Errors
    /// `EEXIST`, `EACCES`, `ENOTDIR`, `ENOENT`, `ENAMETOOLONG`, `EPERM`
    /// (device nodes by non-root).
    pub fn mknod(
        &self,
        creds: &Creds,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        rdev: u32,
    ) -> Result<Inode> {
        if kind == FileKind::Symlink {
            return Err(FsError::Invalid("mknod of a symlink"));
        }
        self.make(creds, parent, name, kind, perm, rdev, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        creds: &Creds,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> Result<Inode> {
        if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) && creds.uid != 0 {
            return Err(FsError::NotPermitted);
        }
        let node = |p: &Inode| {
            let sgid_dir = p.perm & 0o2000 != 0;
            let gid = if sgid_dir { p.gid } else { creds.gid };
            let mut perm = perm & 0o7777;
            if kind == FileKind::Directory && sgid_dir {
                perm |= 0o2000;
            }
            if kind == FileKind::Symlink {
                perm = 0o777;
            }
            if kind != FileKind::Directory && creds.uid != 0 && !creds.in_group(gid) {
                perm &= !0o2000;
            }
            Ok(NewNode {
                kind,
                perm,
                uid: creds.uid,
                gid,
                rdev,
                target,
            })
        };
        self.meta
            .create_as(parent, name, &node, Timespec::now(), &policy(creds))
    }

    /// `mkdir`.
    ///
    /// # Errors
    /// As [`Vfs::mknod`].
    pub fn mkdir(&self, creds: &Creds, parent: Ino, name: &[u8], perm: u16) -> Result<Inode> {
        self.make(creds, parent, name, FileKind::Directory, perm, 0, None)
    }

    /// `symlink`.
    ///
    /// # Errors
    /// As [`Vfs::mknod`]; `ENAMETOOLONG` for a target over 4095 bytes.
    pub fn symlink(&self, creds: &Creds, parent: Ino, name: &[u8], target: &[u8]) -> Result<Inode> {
        if target.len() >= libc::PATH_MAX as usize {
            return Err(FsError::NameTooLong);
        }
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        self.make(
            creds,
            parent,
            name,
            FileKind::Symlink,
            0o777,
            0,
            Some(target),
        )
    }

    /// `readlink`.
    ///
    /// # Errors
    /// `EINVAL` for a non-symlink, `ENOENT`.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.meta.readlink(ino)
    }

    /// `create` (`open` with `O_CREAT`): creates a regular file and opens
    /// it; with `exclusive` (`O_EXCL`) an existing name is `EEXIST`,
    /// without it the existing file is opened.
    ///
    /// # Errors
    /// As [`Vfs::mknod`] and [`Vfs::open`].
    pub fn create(
        &self,
        creds: &Creds,
        parent: Ino,
        name: &[u8],
        perm: u16,
        flags: OpenFlags,
        exclusive: bool,
    ) -> Result<(Inode, u64)> {
        match self.make(creds, parent, name, FileKind::Regular, perm, 0, None) {
            Ok(a) => {
                // A new file: the creator may write it whatever the mode.
                let fh = self.open_node(
                    &a,
                    OpenFlags {
                        truncate: false,
                        ..flags
                    },
                )?;
                Ok((self.attr(a.ino)?, fh))
            }
            Err(FsError::Exists) if !exclusive => {
                let a = self.meta.lookup(parent, name)?;
                let fh = self.open(creds, a.ino, flags)?;
                Ok((self.attr(a.ino)?, fh))
            }
            Err(e) => Err(e),
        }
    }

    /// `open`: checks permissions, applies `O_TRUNC`, returns a handle.
    ///
    /// # Errors
    /// `EACCES`, `EISDIR` (a directory for writing), `ELOOP` (a symlink),
    /// `ENOENT`.
    pub fn open(&self, creds: &Creds, ino: Ino, flags: OpenFlags) -> Result<u64> {
        let a = self.attr(ino)?;
        match a.kind {
            FileKind::Directory if flags.write => return Err(FsError::IsDir),
            FileKind::Symlink => return Err(FsError::Loop),
            _ => {}
        }
        let mut mask = Access::empty();
        if flags.read {
            mask |= Access::READ;
        }
        if flags.write || flags.truncate {
            mask |= Access::WRITE;
        }
        perm::check(creds, &a, mask)?;
        let fh = self.open_node(&a, flags)?;
        if flags.truncate && a.kind == FileKind::Regular && a.size > 0 {
            let r = self.setattr(
                creds,
                ino,
                &SetAttrRequest {
                    size: Some(0),
                    ..SetAttrRequest::default()
                },
            );
            if let Err(e) = r {
                self.release(fh)?;
                return Err(e);
            }
        }
        Ok(fh)
    }

    /// A file's content changed through its block map alone (a punch, a
    /// clone): mtime and ctime, set-id bits cleared as a write clears them
    /// (`kill_suidgid`), and `meta_seq`, since the log does not hold the
    /// change and `fdatasync` must then sync metadata too.
    fn changed_in_block_map(&self, st: &mut NodeState, kill_suidgid: bool) {
        let now = Timespec::now();
        st.attr.mtime = now;
        st.attr.ctime = now;
        if kill_suidgid {
            st.attr.perm = without_suidgid(st.attr.perm);
        }
        st.dirty = true;
        st.meta_seq = self.meta.commit_seq();
    }

    fn open_node(&self, a: &Inode, flags: OpenFlags) -> Result<u64> {
        let node = {
            let mut nodes = lock(&self.nodes);
            if self.config.shared && !nodes.contains_key(&a.ino) {
                // Held from now until the last release (under the nodes
                // lock, which orders it with that release's drop): an
                // unlink on another host keeps the data meanwhile.
                self.meta.hold_open(a.ino, true)?;
            }
            let existed = nodes.contains_key(&a.ino);
            let n = nodes.entry(a.ino).or_insert_with(|| {
                // The first open here: another host may have rewritten the
                // bytes this host still caches (close-to-open). Bytes not
                // yet uploaded stay (they are this host's newest).
                if self.config.shared && self.cache.oldest_pending_lsn(a.ino.file()).is_none() {
                    self.cache.remove(a.ino.file());
                }
                Arc::new(Node {
                    ino: a.ino,
                    state: Mutex::new(NodeState {
                        attr: a.clone(),
                        dirty: false,
                        opens: 0,
                        writers: 0,
                        // Its creation, or anything before this open.
                        meta_seq: self.meta.commit_seq(),
                    }),
                })
            });
            let mut st = lock(&n.state);
            st.opens += 1;
            st.writers += u32::from(flags.write);
            drop(st);
            let n = n.clone();
            drop(nodes);
            if self.config.shared && existed {
                // Best effort: the open counted already, and the node's
                // own attributes are still valid ones.
                if let Err(e) = self.revalidate(&n) {
                    tracing::debug!(ino = n.ino.0, error = %e, "revalidate at open");
                }
            }
            n
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Handle { node, flags });
        Ok(fh)
    }

    /// In a shared namespace, another open of a file already open here
    /// reads it again (close-to-open): the attributes from metadata and,
    /// unless this host has bytes of it still to upload, the bytes from
    /// the store. A node with changes of its own keeps them.
    fn revalidate(&self, n: &Node) -> Result<()> {
        let fresh = self.meta.getattr(n.ino)?;
        let mut st = lock(&n.state);
        if st.dirty || self.cache.oldest_pending_lsn(n.ino.file()).is_some() {
            return Ok(());
        }
        st.attr = fresh;
        self.cache.remove(n.ino.file());
        Ok(())
    }

    fn handle(&self, fh: u64) -> Result<(Arc<Node>, OpenFlags)> {
        lock(&self.handles)
            .get(&fh)
            .map(|h| (h.node.clone(), h.flags))
            .ok_or(FsError::BadHandle)
    }

    /// `read`: up to `len` bytes at `offset` (short at the end of the
    /// file). Cached bytes, then committed blocks from the object store;
    /// holes read as zeros. Access times are not updated (`noatime`).
    ///
    /// # Errors
    /// `EBADF` (not open for reading), `EISDIR`, `EIO` (the object store
    /// failed past its retries, or the only copy of pending bytes is a
    /// log page the disk cannot read).
    pub fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        let (node, flags) = self.handle(fh)?;
        if !flags.read && !flags.cache_fill {
            return Err(FsError::BadHandle);
        }
        let (size, kind) = {
            let st = lock(&node.state);
            (st.attr.size, st.attr.kind)
        };
        if kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        if offset >= size {
            return Ok(Vec::new());
        }
        let n = (size - offset).min(u64::from(len)) as usize;
        let mut out = vec![0u8; n];
        let file = node.ino.file();
        let missing = self.cache.read(file, offset, &mut out).map_err(|e| {
            tracing::error!(ino = node.ino.0, offset, len, "read: {e}");
            FsError::io("read from the log", e)
        })?;
        for m in missing {
            let from = (m.start - offset) as usize;
            let to = (m.end - offset) as usize;
            self.rt
                .block_on(self.tm.read(file, m.start, &mut out[from..to]))
                .map_err(|e| FsError::io("read from the object store", e))?;
        }
        if let Some(m) = crate::metrics::global() {
            m.read_bytes.inc_by(out.len() as u64);
        }
        Ok(out)
    }

    /// `write`: logs the bytes (durable per the log's mode), caches them,
    /// and returns the count. Clears setuid/setgid as ext4 does when a
    /// non-root caller writes.
    ///
    /// # Errors
    /// `EBADF` (not open for writing), `EFBIG`, `ENOSPC` (the dirty cache
    /// stayed full for its wait, or the log's disk is full; nothing was
    /// written), `EIO`.
    pub fn write(&self, creds: &Creds, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        self.write_kill_suidgid(fh, offset, data, creds.uid != 0)
    }

    /// `write` with the set-id rule decided by the caller: `kill_suidgid`
    /// clears setuid, and setgid of a group-executable file (the FUSE
    /// kernel's `FUSE_WRITE_KILL_SUIDGID`, sent when the writer lacks
    /// `CAP_FSETID`). Otherwise as [`Vfs::write`].
    ///
    /// # Errors
    /// As [`Vfs::write`].
    pub fn write_kill_suidgid(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Result<u32> {
        let (node, flags) = self.handle(fh)?;
        if !flags.write {
            return Err(FsError::BadHandle);
        }
        if data.is_empty() {
            return Ok(0);
        }
        if self.persister.is_enabled() {
            self.parts
                .space
                .room_for_write(data.len() as u64)
                .map_err(FsError::NoSpace)?;
        }
        let file = node.ino.file();
        let mut st = lock(&node.state);
        let offset = if flags.append { st.attr.size } else { offset };
        let end = range_end(offset, data.len() as u64)?;
        let mut res = self.cache.reserve(data.len() as u64).map_err(cache_err)?;
        // A write that crosses a chunk boundary is logged in parts: if a
        // later part fails, the parts before it are applied and the write
        // is short (as write(2) may be), never an error for a write that
        // is half applied.
        let mut done = 0usize;
        for r in chunk_ranges(offset, data.len() as u64) {
            let bytes = &data[r.buf.clone()];
            let w = SliceWrite {
                file,
                chunk: r.chunk,
                slice: self.cache.next_slice_id(),
                offset: r.offset,
                data: bytes,
            };
            let appended = match self.persister.append_slice_logged(&w) {
                Err(e) if e.is_disk_full() => {
                    // Flushed and removed records may hold the space.
                    self.parts.space.relieve(false);
                    self.persister.append_slice_logged(&w)
                }
                r => r,
            };
            let (lsn, logged) = match appended {
                Ok(a) => a,
                Err(e) if done == 0 => return Err(wal_err(e)),
                Err(e) => {
                    tracing::warn!(ino = node.ino.0, error = %e, done, "write cut short at a chunk boundary");
                    break;
                }
            };
            let at = u64::from(r.chunk.0) * CHUNK_SIZE + u64::from(r.offset);
            // The cache keeps the log's copy when it lends one: the data
            // is then copied once, into the log.
            match logged {
                Some(b) => self.cache.insert_logged(file, at, &b, lsn, Some(&mut res)),
                None => self.cache.insert(file, at, bytes, lsn, Some(&mut res)),
            }
            done = r.buf.end;
            st.attr.size_lsn = lsn.0;
        }
        drop(res);
        let end = end - (data.len() - done) as u64;
        let now = Timespec::now();
        st.attr.size = st.attr.size.max(end);
        st.attr.mtime = now;
        st.attr.ctime = now;
        if kill_suidgid {
            st.attr.perm = without_suidgid(st.attr.perm);
        }
        st.dirty = true;
        drop(st);
        self.tm.notify_write(file, offset, done as u64);
        if let Some(m) = crate::metrics::global() {
            m.written_bytes.inc_by(done as u64);
        }
        Ok(done as u32)
    }

    /// `flush` (each `close` of a descriptor): writes the size and times
    /// to metadata, so other clients see them. In a shared namespace
    /// ([`VfsConfig::shared`]) a descriptor open for writing first
    /// uploads the file's data and commits its blocks, so that an `open`
    /// on another host after this `close` reads the data, not only the
    /// size (close-to-open consistency).
    ///
    /// # Errors
    /// `EBADF`, `EIO` (also: the upload failed past its retries).
    pub fn flush(&self, fh: u64) -> Result<()> {
        let (node, flags) = self.handle(fh)?;
        if self.config.shared && flags.write {
            self.publish(&node)?;
        }
        self.persist(&node, false)
    }

    /// In a shared namespace: uploads the file's pending bytes and
    /// commits their blocks (what other hosts read), waiting at most
    /// [`SHARED_UPLOAD_WAIT`]; then `EIO` (the bytes stay in the log and
    /// are uploaded later).
    fn publish(&self, node: &Node) -> Result<()> {
        let file = node.ino.file();
        self.rt
            .block_on(async {
                tokio::time::timeout(SHARED_UPLOAD_WAIT, self.tm.flush_file(file)).await
            })
            .map_err(|_| {
                FsError::io(
                    "upload for other hosts",
                    format!(
                        "not done after {SHARED_UPLOAD_WAIT:?} (is the object store reachable?); \
                         the bytes stay in the log and are uploaded later"
                    ),
                )
            })?
            .map_err(|e| FsError::io("upload for other hosts", e))
    }

    /// `fsync`/`fdatasync`: returns once every write to the file that
    /// returned before is durable in the log, and its size and times (and
    /// the names leading to it, as far as this store has them) are durable
    /// in metadata. With `fsync_upload`, also once the data is in the
    /// object store; in a shared namespace ([`VfsConfig::shared`]) the
    /// data is uploaded and committed first, then the size written (what
    /// another host reads after this `fsync` is there).
    ///
    /// `fdatasync` of a file whose inode is durable in metadata and has no
    /// change since but what writes imply (size, times) syncs the log
    /// alone: one device flush instead of two. Its data and size are
    /// durable (the log holds the writes); its times, and a rename since
    /// the last metadata sync, are not (as ext4's `fdatasync`).
    ///
    /// # Errors
    /// `EBADF`, `EIO` (a failed log sync: the log refuses further work).
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let (node, _) = self.handle(fh)?;
        self.persister.sync().map_err(wal_err)?;
        if self.config.shared {
            // Other hosts read the store, not this log: the data goes
            // there before the size that makes it visible.
            self.publish(&node)?;
            self.persist(&node, true)?;
            return self.meta.sync();
        }
        if datasync
            && self.persister.is_enabled()
            && !self.config.fsync_upload
            && self.meta.is_durable(lock(&node.state).meta_seq)
        {
            // One device flush: the log holds every write, so the size
            // they imply (recovery grows a file to the end of the bytes
            // the log holds); the inode and its name were durable already.
            // Its times and size reach metadata with the next commit.
            return Ok(());
        }
        self.persist(&node, true)?;
        self.meta.sync()?;
        if self.config.fsync_upload {
            self.rt
                .block_on(self.tm.flush_file(node.ino.file()))
                .map_err(|e| FsError::io("upload for fsync", e))?;
        }
        Ok(())
    }

    /// `fsync` of a directory: its entries are durable.
    ///
    /// # Errors
    /// `EIO`.
    pub fn fsyncdir(&self, _ino: Ino) -> Result<()> {
        self.meta.sync()
    }

    /// `release`: the last close of a handle. On the last handle of a
    /// file, its attributes go to metadata, and an unlinked file is freed.
    ///
    /// # Errors
    /// `EBADF`, `EIO`.
    pub fn release(&self, fh: u64) -> Result<()> {
        let h = lock(&self.handles).remove(&fh).ok_or(FsError::BadHandle)?;
        let node = h.node;
        let last = {
            let mut st = lock(&node.state);
            st.opens -= 1;
            st.writers -= u32::from(h.flags.write);
            st.opens == 0
        };
        if !last {
            return Ok(());
        }
        if self.config.shared && lock(&node.state).dirty {
            // Writes that came after the last FLUSH (a shared writable
            // mmap's write-back): their bytes before their size.
            self.publish(&node)?;
        }
        self.persist(&node, false)?;
        let mut nodes = lock(&self.nodes);
        if lock(&node.state).opens > 0 {
            return Ok(());
        }
        nodes.remove(&node.ino);
        let nlink = if self.config.shared {
            self.meta.hold_open(node.ino, false)?;
            drop(nodes);
            // Another host may have dropped the last link meanwhile.
            match self.meta.getattr(node.ino) {
                Ok(a) => a.nlink,
                Err(FsError::NotFound) => return Ok(()),
                Err(e) => return Err(e),
            }
        } else {
            drop(nodes);
            // The node's link count follows unlink, rmdir, rename and link.
            lock(&node.state).attr.nlink
        };
        if nlink == 0 {
            self.orphaned(node.ino)?;
        }
        Ok(())
    }

    /// Runs a namespace change that frees space (unlink, rmdir, rename
    /// over a name); if the disk is too full for even that, gives back
    /// the reserve, compacts the log, and tries once more.
    fn room_for_delete<T>(&self, mut change: impl FnMut() -> Result<T>) -> Result<T> {
        match change() {
            Err(FsError::NoSpace(_)) => {
                self.parts.space.relieve(true);
                change()
            }
            r => r,
        }
    }

    /// An inode lost its last link and has no handle: it is freed once
    /// the change is durable (the orphan reaper), or at once when the log
    /// keeps nothing (nothing it says could outlive metadata).
    fn orphaned(&self, ino: Ino) -> Result<()> {
        if self.persister.is_enabled() {
            self.reaper.queue(ino);
            Ok(())
        } else {
            self.parts.free(ino)
        }
    }

    /// `syncfs`/`sync`: everything written and every namespace change so
    /// far is durable (log, then metadata), and unlinked files waiting
    /// for that are freed.
    ///
    /// # Errors
    /// `EIO` (a failed sync: the store that failed refuses further
    /// writes), `ENOSPC`.
    pub fn syncfs(&self) -> Result<()> {
        for n in lock(&self.nodes).values().cloned().collect::<Vec<_>>() {
            if self.config.shared {
                // As `fsync`: the data first, then the size.
                self.publish(&n)?;
            }
            self.persist(&n, false)?;
        }
        self.meta.sync()?;
        self.reaper.reap_now()
    }

    /// `unlink`. A file still open stays readable and writable through its
    /// handles and is freed at its last release.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR`, `EACCES`, `EPERM` (sticky directory).
    pub fn unlink(&self, creds: &Creds, parent: Ino, name: &[u8]) -> Result<()> {
        let a = self.room_for_delete(|| {
            self.meta
                .unlink_as(parent, name, Timespec::now(), &policy(creds))
        })?;
        if let Some(n) = self.node(a.ino) {
            {
                let mut st = lock(&n.state);
                st.attr.nlink = a.nlink;
                st.attr.ctime = a.ctime;
            }
            if a.nlink == 0 {
                // Its last handle may be one a stateless call kept.
                self.drop_kept(a.ino);
            }
            return Ok(());
        }
        if a.nlink == 0 {
            self.orphaned(a.ino)?;
        }
        Ok(())
    }

    /// `rmdir`.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`, `ENOTEMPTY`, `EACCES`, `EPERM`, `EINVAL`.
    pub fn rmdir(&self, creds: &Creds, parent: Ino, name: &[u8]) -> Result<()> {
        let d = self.room_for_delete(|| {
            self.meta
                .rmdir_as(parent, name, Timespec::now(), &policy(creds))
        })?;
        match self.node(d.ino) {
            Some(n) => lock(&n.state).attr.nlink = 0,
            None => self.orphaned(d.ino)?,
        }
        Ok(())
    }

    /// `rename`/`renameat2` (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    ///
    /// # Errors
    /// `ENOENT`, `EEXIST`, `ENOTDIR`, `EISDIR`, `ENOTEMPTY`, `EINVAL`,
    /// `EACCES`, `EPERM` (sticky directories). Never `EXDEV`.
    pub fn rename(
        &self,
        creds: &Creds,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        let replaced = self.room_for_delete(|| {
            self.meta.rename_as(
                parent,
                name,
                new_parent,
                new_name,
                flags,
                Timespec::now(),
                &policy(creds),
            )
        })?;
        if let Some(old) = replaced {
            if let Some(n) = self.node(old.ino) {
                lock(&n.state).attr.nlink = old.nlink;
                if old.nlink == 0 {
                    self.drop_kept(old.ino);
                }
            } else if old.nlink == 0 {
                self.orphaned(old.ino)?;
            }
        }
        Ok(())
    }

    /// `link`.
    ///
    /// # Errors
    /// `EPERM` (a directory), `EEXIST`, `EMLINK`, `EACCES`, `ENOENT`.
    pub fn link(&self, creds: &Creds, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Inode> {
        let a = self
            .meta
            .link_as(ino, new_parent, new_name, Timespec::now(), &policy(creds))?;
        if let Some(n) = self.node(ino) {
            let mut st = lock(&n.state);
            st.attr.nlink = a.nlink;
            st.attr.ctime = a.ctime;
        }
        self.attr(ino)
    }

    /// `opendir`: checks read permission and returns a handle.
    ///
    /// # Errors
    /// `ENOTDIR`, `EACCES`, `ENOENT`.
    pub fn opendir(&self, creds: &Creds, ino: Ino) -> Result<u64> {
        let a = self.attr(ino)?;
        if a.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        perm::check(creds, &a, Access::READ)?;
        self.open_node(
            &a,
            OpenFlags {
                read: true,
                ..OpenFlags::default()
            },
        )
    }

    /// `readdir`: entries after `offset` (0: from the start), `.` and `..`
    /// first (offsets 1 and 2). Each entry's `cookie` is the offset to
    /// continue from; offsets stay valid while entries are added and
    /// removed.
    ///
    /// # Errors
    /// `ENOTDIR`, `ENOENT`.
    pub fn readdir(&self, ino: Ino, offset: u64, limit: usize) -> Result<Vec<DirEntry>> {
        self.readdir_checked(None, ino, offset, limit)
    }

    /// [`Vfs::readdir`] for `creds`, who must have read permission on the
    /// directory: for a front end that lists without an open handle
    /// ([`Vfs::opendir`] checks it otherwise).
    ///
    /// # Errors
    /// As [`Vfs::readdir`], and `EACCES`.
    pub fn readdir_as(
        &self,
        creds: &Creds,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<DirEntry>> {
        self.readdir_checked(Some(creds), ino, offset, limit)
    }

    fn readdir_checked(
        &self,
        creds: Option<&Creds>,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<DirEntry>> {
        let a = self.attr(ino)?;
        if a.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        if let Some(c) = creds {
            perm::check(c, &a, Access::READ)?;
        }
        let mut out = dot_entries(ino, &a, offset);
        let after = offset.saturating_sub(2);
        let want = limit.saturating_sub(out.len());
        for mut e in self.meta.readdir(ino, after, want)? {
            e.cookie += 2;
            out.push(e);
        }
        out.truncate(limit);
        Ok(out)
    }

    /// `readdirplus`: [`Vfs::readdir`] with each entry's attributes (an
    /// open file's as its node has them), so that `ls -l` costs no lookup
    /// per entry.
    ///
    /// # Errors
    /// As [`Vfs::readdir`].
    pub fn readdirplus(
        &self,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, Inode)>> {
        self.readdirplus_checked(None, ino, offset, limit)
    }

    /// [`Vfs::readdirplus`] for `creds`, as [`Vfs::readdir_as`].
    ///
    /// # Errors
    /// As [`Vfs::readdir`], and `EACCES`.
    pub fn readdirplus_as(
        &self,
        creds: &Creds,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, Inode)>> {
        self.readdirplus_checked(Some(creds), ino, offset, limit)
    }

    fn readdirplus_checked(
        &self,
        creds: Option<&Creds>,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, Inode)>> {
        // `.` and `..` are positions 1 and 2; one transaction reads the
        // directory, its parent if `..` is due, and the entries.
        let dots = 2u64.saturating_sub(offset) as usize;
        let page = self.meta.readdir_plus_dots(
            ino,
            offset.saturating_sub(2),
            limit.saturating_sub(dots),
            dots > 0,
        )?;
        let a = self.overlay(page.dir);
        if let Some(c) = creds {
            perm::check(c, &a, Access::READ)?;
        }
        let mut out = Vec::with_capacity(dots + page.entries.len());
        for e in dot_entries(ino, &a, offset) {
            let attr = match (&page.parent, e.ino == ino) {
                (Some(p), false) => self.overlay(p.clone()),
                _ => a.clone(),
            };
            out.push((e, attr));
        }
        for (mut e, i) in page.entries {
            e.cookie += 2;
            out.push((e, self.overlay(i)));
        }
        out.truncate(limit);
        Ok(out)
    }

    /// `releasedir`.
    ///
    /// # Errors
    /// `EBADF`.
    pub fn releasedir(&self, fh: u64) -> Result<()> {
        self.release(fh)
    }

    /// `statfs`: inodes and bytes in use (the store has no fixed size; a
    /// capacity of 1 PiB is reported).
    ///
    /// # Errors
    /// `EIO`.
    pub fn statfs(&self) -> Result<Usage> {
        self.meta.usage()
    }

    /// The write-ahead log's next LSN (for metrics).
    pub fn log_next_lsn(&self) -> u64 {
        self.persister.next_lsn().0
    }

    /// Space as `df` should show it, in bytes: with a `file://` store,
    /// the size and free space of the disk that holds it (`statvfs`); with
    /// a remote store, which has no size, [`REMOTE_CAPACITY_BYTES`] less the
    /// bytes of all files.
    ///
    /// # Errors
    /// Metadata errors.
    pub fn capacity(&self) -> Result<Capacity> {
        let u = self.meta.usage()?;
        if let Some(dir) = self.tm.store_local_dir()
            && let Ok(st) = nix::sys::statvfs::statvfs(&dir)
        {
            let frsize = st.fragment_size();
            return Ok(Capacity {
                total_bytes: st.blocks() * frsize,
                avail_bytes: st.blocks_available() * frsize,
                usage: u,
            });
        }
        Ok(Capacity {
            total_bytes: REMOTE_CAPACITY_BYTES,
            avail_bytes: REMOTE_CAPACITY_BYTES.saturating_sub(u.bytes),
            usage: u,
        })
    }
}

/// `.` and `..` of directory `ino` (attributes `a`) for a listing resumed
/// after `offset`: cookies 1 and 2, before the stored entries.
fn dot_entries(ino: Ino, a: &Inode, offset: u64) -> Vec<DirEntry> {
    [(b".".as_slice(), ino, 1), (b"..".as_slice(), a.parent, 2)]
        .into_iter()
        .filter(|&(_, _, cookie)| offset < cookie)
        .map(|(name, ino, cookie)| DirEntry {
            name: name.to_vec(),
            ino,
            kind: FileKind::Directory,
            cookie,
        })
        .collect()
}

/// The permission policy of `creds` for namespace changes, checked by
/// metadata inside the change's transaction (see [`crate::meta::Check`]):
/// search and write permission on directories, the sticky bit (only the
/// owner of the directory or of the victim, or root, may remove an
/// entry), and write permission on a directory moved to another parent.
fn policy(creds: &Creds) -> impl Fn(Check<'_>) -> Result<()> + '_ {
    move |c| match c {
        Check::Search(d) => perm::check(creds, d, Access::EXEC),
        Check::Modify(d) => perm::check(creds, d, Access::WRITE | Access::EXEC),
        Check::Remove { dir, victim } => {
            if dir.perm & 0o1000 != 0
                && creds.uid != 0
                && creds.uid != dir.uid
                && creds.uid != victim.uid
            {
                return Err(FsError::NotPermitted);
            }
            Ok(())
        }
        Check::Reparent(d) => perm::check(creds, d, Access::WRITE),
    }
}

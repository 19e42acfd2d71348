//! The FUSE front end: a thin adapter from `fuser` requests to [`Vfs`]
//! calls, with errno from [`FsError::errno`](crate::error::FsError::errno).
//!
//! Choices (see `doc/SEMANTICS.md`):
//! - attribute and entry TTL 60 s: this mount is the only writer of its
//!   file system, and every change of attributes comes through the kernel,
//!   which updates or drops what it cached;
//! - open files keep the kernel page cache (`FOPEN_KEEP_CACHE`): it is the
//!   re-read cache above the VFS;
//! - `max_write` 1 MiB; `st_blksize` 1 MiB so that tools write in large
//!   pieces;
//! - the VFS checks permissions on every request, with the groups read
//!   from `/proc/<pid>/status`; `slicefs mount` adds the kernel's
//!   `default_permissions` when users other than root can reach the mount;
//! - `FLUSH` is answered `ENOSYS`, so `close` costs no round trip;
//! - without other writers `OPENDIR` is answered `ENOSYS`: no directory
//!   handles, and the kernel caches listings (see
//!   [`FuseFs::with_other_writers`]);
//! - extended attributes may be turned off ([`FuseFs::with_xattr`]): the
//!   kernel caches none, so each `ls -l` entry and each file's first
//!   write costs a `GETXATTR` round trip while they are on;
//! - FUSE threads block only on the log's sync and on reads that need the
//!   object store; uploads run on the Tokio runtime;
//! - optionally the kernel's write-back page cache
//!   ([`FuseFs::with_writeback_cache`]): `write(2)` returns once the bytes
//!   are in the kernel's page cache, and the kernel sends them here later,
//!   at the latest at `fsync`, `close` or memory pressure. An `fsync` that
//!   returned still has its bytes in the log.

mod bdi;

pub use bdi::{READ_AHEAD_KB, raise_read_ahead};

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags as FuseOpenFlags,
    RenameFlags as FuseRenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::error::FsError;
use crate::meta::{FileKind, Ino, Inode, RenameFlags, Timespec, XattrFlags};
use crate::vfs::{Access, Creds, OpenFlags, Seek, SetAttrRequest, TimeSet, Vfs};

/// Attribute time to live: how long the kernel trusts a file's
/// attributes without a `GETATTR`. Long for the reasons of [`ENTRY_TTL`]:
/// every attribute change (write, truncate, chmod, link count) is a request
/// the kernel sent, and it updates or drops its copy with the reply (with
/// a 1 s TTL, a `stat` or `open` of a file looked up more than a second
/// before cost a round trip and a metadata read: `open` + `read` of 10,000
/// small files ran at 6,300/s, `ls -lR` took 12 times the local disk's).
/// Nothing in the VFS changes attributes behind the kernel (no atime:
/// `noatime`); a front end that does must invalidate or shorten this.
pub const TTL: Duration = Duration::from_secs(60);
/// Entry time to live, positive and negative: how long the kernel trusts
/// a name's lookup. Long because the mount is the only writer of its
/// namespace and the kernel updates its entries itself on every create,
/// rename and unlink it sends. A front end that changes names behind the
/// kernel (a shared namespace, an NFS server in the same process) must
/// invalidate them or shorten this.
pub const ENTRY_TTL: Duration = Duration::from_secs(60);
/// Attribute and entry time to live when another front end in the process
/// changes the file system too ([`FuseFs::with_other_writers`]): a change
/// made over NFS shows through the mount within this time.
pub const SHARED_TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends, in bytes.
pub const MAX_WRITE: u32 = 1 << 20;
/// `st_blksize` reported for every file.
pub const BLKSIZE: u32 = 1 << 20;
/// The capacity `statfs` reports for a store without a size (see
/// [`Vfs::capacity`]): 1 PiB.
pub const CAPACITY_BYTES: u64 = crate::vfs::REMOTE_CAPACITY_BYTES;

thread_local! {
    /// Whether the request this thread runs has been answered with an
    /// error (set by `errno`, read by [`OpTimer`]).
    static FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Times one request for [`crate::metrics`]: made at the start of each
/// handler, recorded when the handler returns (`fuser` runs a handler on
/// one thread, start to end).
struct OpTimer {
    op: &'static str,
    start: Instant,
}

impl OpTimer {
    fn start(op: &'static str) -> OpTimer {
        FAILED.with(|f| f.set(false));
        OpTimer {
            op,
            start: Instant::now(),
        }
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        let ok = !FAILED.with(std::cell::Cell::get);
        crate::metrics::observe("fuse", self.op, self.start, ok);
    }
}

/// The `fuser` file system over a [`Vfs`].
pub struct FuseFs {
    vfs: Arc<Vfs>,
    groups: Mutex<HashMap<u32, (Instant, Vec<u32>)>>,
    writeback_cache: bool,
    killpriv_v2: bool,
    /// Attribute and entry TTLs ([`TTL`], [`ENTRY_TTL`], or
    /// [`SHARED_TTL`] with other writers).
    ttl: Duration,
    entry_ttl: Duration,
    /// Opens keep the kernel's page cache (`FOPEN_KEEP_CACHE`).
    keep_cache: bool,
    /// Extended attribute requests are served ([`FuseFs::with_xattr`]).
    xattr: bool,
    /// `OPENDIR` makes a handle; otherwise it is answered `ENOSYS` and the
    /// kernel lists directories without handles, and caches listings
    /// (only without other writers, see [`FuseFs::with_other_writers`]).
    dir_handles: bool,
    /// Set once mounted ([`FuseFs::notifier_slot`]): with other writers,
    /// an `open` drops the kernel's cached attributes of the file.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Per open directory handle: what its last listing reply told
    /// ([`FuseFs::fill_listing`]).
    listings: Mutex<HashMap<u64, Listing>>,
}

/// What a directory handle's last listing reply told (see
/// [`FuseFs::fill_listing`]).
#[derive(Clone, Copy, Debug, Default)]
struct Listing {
    /// Entries that filled the last reply whose buffer filled up.
    fill: Option<usize>,
    /// The position after which the last read found no more entries.
    end: Option<u64>,
}

impl FuseFs {
    fn listing(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Listing>> {
        self.listings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills one directory listing reply of handle `fh` from position
    /// `offset`. `add(at, limit)` reads up to `limit` entries after
    /// position `at` into the reply and returns the positions of those
    /// it took, how many it read, and whether the reply filled up.
    ///
    /// The kernel asks again after every reply until one is empty: a
    /// handle whose last read reached the end of the directory at
    /// `offset` answers that request empty without reading metadata
    /// (POSIX leaves entries added after `opendir` or `rewinddir`
    /// unspecified; a rewind reads again). A handle whose reply filled
    /// up reads about as many rows as fitted next time instead of 512
    /// (the kernel's buffer is 4 KiB to 128 KiB), and reads more in the
    /// same call while the reply has room. An error after some entries
    /// were taken ends the reply there.
    ///
    /// Handle 0 (no `OPENDIR`, see [`FuseFs::with_other_writers`]) is every
    /// listing's at once, so it keeps no state.
    fn fill_listing(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, usize) -> Result<(Vec<u64>, usize, bool), FsError>,
    ) -> Result<(), FsError> {
        let remember = |l: Listing| {
            if fh != 0 {
                self.listing().insert(fh, l);
            }
        };
        let state = if fh == 0 {
            Listing::default()
        } else {
            self.listing().get(&fh).copied().unwrap_or_default()
        };
        if state.end == Some(offset) {
            return Ok(());
        }
        let mut limit = state.fill.map_or(512, |n| n + 4);
        let mut at = offset;
        let mut taken = 0;
        loop {
            let (added, got, full) = match add(at, limit) {
                Ok(r) => r,
                Err(e) if taken == 0 => return Err(e),
                Err(_) => return Ok(()),
            };
            taken += added.len();
            if let Some(&last) = added.last() {
                at = last;
            }
            if full {
                remember(Listing {
                    fill: Some(taken),
                    end: None,
                });
                return Ok(());
            }
            if got < limit {
                remember(Listing {
                    fill: state.fill,
                    end: Some(at),
                });
                return Ok(());
            }
            limit = (limit * 2).min(4096);
        }
    }
}

/// Background requests (write-back and read-ahead) the kernel keeps in
/// flight at once (the kernel's default is 12).
pub const MAX_BACKGROUND: u16 = 64;

impl FuseFs {
    /// An adapter for `vfs`, without the kernel's write-back cache.
    pub fn new(vfs: Arc<Vfs>) -> FuseFs {
        FuseFs {
            vfs,
            groups: Mutex::new(HashMap::new()),
            writeback_cache: false,
            killpriv_v2: false,
            ttl: TTL,
            entry_ttl: ENTRY_TTL,
            keep_cache: true,
            xattr: true,
            dir_handles: false,
            notifier: Arc::default(),
            listings: Mutex::new(HashMap::new()),
        }
    }

    /// Where the mount's notifier goes once mounted (the notifier exists
    /// only then): with other writers ([`FuseFs::with_other_writers`])
    /// each `open` uses it to drop the kernel's cached attributes of the
    /// file, so a size another writer changed within the attribute time
    /// to live is read again (close-to-open: `open` revalidates).
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Declares that another front end in this process (the NFS server)
    /// changes the same VFS behind the kernel's back: attributes and
    /// entries, found or not, are trusted for [`SHARED_TTL`] only, and an
    /// open drops the file's page cache (close-to-open consistency, as NFS
    /// clients have it). Use it without the write-back cache, which makes
    /// the kernel the owner of sizes and times.
    ///
    /// Directories then get handles at `OPENDIR`, whose replies ask the
    /// kernel to cache nothing. Without other writers `OPENDIR` is
    /// answered `ENOSYS` (`FUSE_NO_OPENDIR_SUPPORT`, Linux 5.1): the
    /// kernel sends no `OPENDIR` or `RELEASEDIR` again (two round trips
    /// per directory listed), keeps each directory's listing in its page
    /// cache (dropped when a change through this mount touches the
    /// directory), and `READDIR`s carry handle 0, so each checks the
    /// caller's read permission itself. A listing the kernel cached is
    /// served without asking, as cached entries are looked up: a mount
    /// that users other than its owner can reach needs the kernel's
    /// `default_permissions` (which `slicefs mount` adds then).
    pub fn with_other_writers(mut self, on: bool) -> FuseFs {
        if on {
            self.ttl = SHARED_TTL;
            self.entry_ttl = SHARED_TTL;
            self.keep_cache = false;
            self.dir_handles = true;
        }
        self
    }

    fn open_reply_flags(&self) -> FopenFlags {
        if self.keep_cache {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Inode, FsError>) {
        match r {
            Ok(a) => {
                reply.entry_with_ttls(&self.ttl, &self.entry_ttl, &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn attr(&self, reply: ReplyAttr, r: Result<Inode, FsError>) {
        match r {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Asks the kernel for its write-back page cache (`FUSE_WRITEBACK_CACHE`)
    /// when `on`. Writes then return at page-cache speed and reach the
    /// log when the kernel writes its dirty pages back: at `fsync` (which
    /// still returns only once the bytes are durable in the log), at
    /// `close`, under memory pressure, or after the kernel's dirty expiry
    /// (30 s by default). Bytes written without `fsync` can be lost if
    /// this process dies, as with any local file system when the machine
    /// crashes. A kernel without the capability gets the plain mode (a
    /// log line says so).
    ///
    /// In this mode the kernel owns the file size, modification times and
    /// `O_APPEND` offsets, and may read through a write-only handle to
    /// fill a partly written page; the adapter opens handles accordingly.
    /// A write-back from the page cache carries no caller, so set-id bits
    /// are cleared on the kernel's request (`FUSE_HANDLE_KILLPRIV_V2`), or
    /// by the kernel itself where that is missing.
    pub fn with_writeback_cache(mut self, on: bool) -> FuseFs {
        self.writeback_cache = on;
        self
    }

    /// Extended attributes on (the default) or off. Off, `GETXATTR`,
    /// `LISTXATTR`, `SETXATTR` and `REMOVEXATTR` are answered `ENOSYS`:
    /// the kernel then fails every xattr call with `EOPNOTSUPP` without
    /// asking again, as on a file system without them, and stops the
    /// `GETXATTR`s it sends by itself (`security.selinux` for each entry
    /// `ls -l` lists, `security.capability` at a file's first write),
    /// each a round trip since FUSE caches no xattrs. Attributes already
    /// stored are kept, and are there again when mounted with them on.
    pub fn with_xattr(mut self, on: bool) -> FuseFs {
        self.xattr = on;
        self
    }

    /// `open(2)` flags as the VFS should see them in this mode.
    fn open_flags(&self, flags: i32) -> OpenFlags {
        let f = OpenFlags::from_libc(flags);
        if self.writeback_cache {
            f.for_kernel_writeback()
        } else {
            f
        }
    }

    fn creds(&self, req: &Request) -> Creds {
        Creds {
            uid: req.uid(),
            gid: req.gid(),
            groups: if req.uid() == 0 {
                Vec::new()
            } else {
                self.supplementary_groups(req.pid())
            },
        }
    }

    /// The caller's supplementary groups, from `/proc`, cached for 1 s
    /// per process.
    fn supplementary_groups(&self, pid: u32) -> Vec<u32> {
        let mut cache = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, g)) = cache.get(&pid)
            && t.elapsed() < Duration::from_secs(1)
        {
            return g.clone();
        }
        let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("Groups:")).map(|l| {
                    l[7..]
                        .split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                })
            })
            .unwrap_or_default();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(pid, (Instant::now(), groups));
        cache[&pid].1.clone()
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nsec))
    }
}

fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timespec { sec, nsec }
        }
    }
}

/// The attributes of a negative entry: node id 0, nothing else read.
fn negative_attr() -> FileAttr {
    let epoch = SystemTime::UNIX_EPOCH;
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: epoch,
        mtime: epoch,
        ctime: epoch,
        crtime: epoch,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// The `stat` view of an inode.
pub fn file_attr(a: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.stat_size(),
        blocks: a.stat_alloc().div_ceil(512),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn errno(e: &FsError) -> Errno {
    FAILED.with(|f| f.set(true));
    if let FsError::Io { .. } = e {
        tracing::error!(error = %e, "I/O error returned to the kernel");
    }
    Errno::from_i32(e.errno())
}

fn empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn kind_of_mode(mode: u32) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::Regular,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        _ => return None,
    })
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(s) => TimeSet::At(timespec(s)),
    })
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            tracing::info!(max, "kernel limits max_write");
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        if let Err(min) = config.set_max_background(MAX_BACKGROUND) {
            let _ = config.set_max_background(min);
        }
        // This adapter clears set-id bits on write, truncate and chown
        // itself, so the kernel need not ask for `security.capability`
        // (a GETXATTR round trip) before every write: it sets `SB_NOSEC`
        // and asks once per inode.
        self.killpriv_v2 = config
            .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            .is_ok();
        // Lookups and readdirs of one directory may run in parallel: the
        // VFS needs no per-directory lock (each request is one metadata
        // transaction). Symlink targets are cached by the kernel (a
        // symlink's target never changes). Both are only hints: a kernel
        // without them works as before.
        // READDIRPLUS: a listing carries each entry's attributes (`ls -l`
        // costs no lookup per entry); AUTO lets the kernel use it only
        // where attributes are wanted (a plain `ls` reads names alone).
        for flag in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            if let Err(missing) = config.add_capabilities(flag) {
                tracing::debug!(?missing, "the kernel lacks a FUSE capability");
            }
        }
        // Before Linux 5.1 an ENOSYS to OPENDIR fails the open instead.
        if !self.dir_handles
            && let Err(missing) = config.add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
        {
            tracing::debug!(?missing, "the kernel needs directory handles");
            self.dir_handles = true;
        }
        if self.writeback_cache
            && let Err(missing) = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
        {
            tracing::warn!(
                ?missing,
                "the kernel has no FUSE write-back cache; writes go through"
            );
            self.writeback_cache = false;
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = OpTimer::start("lookup");
        match self
            .vfs
            .lookup(&self.creds(req), Ino(parent.0), name.as_bytes())
        {
            // A negative entry (node id 0) that the kernel caches for
            // `ENTRY_TTL`, so that a create's own lookup, or a program probing
            // for a missing file again, is not a round trip. Safe while
            // the kernel sees every change to the tree (a single-host
            // mount: the kernel drops the entry when it creates the name).
            Err(FsError::NotFound) => {
                reply.entry_with_ttls(&self.ttl, &self.entry_ttl, &negative_attr(), Generation(0))
            }
            r => self.entry(reply, r),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = OpTimer::start("getattr");
        self.attr(reply, self.vfs.getattr(Ino(ino.0)))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = OpTimer::start("setattr");
        // Under `FUSE_HANDLE_KILLPRIV_V2` the kernel asks for set-id bits
        // to go before a write by sending a setattr whose only flag is
        // `FATTR_KILL_SUIDGID`; `fuser` does not pass that flag on, but
        // such a setattr changes nothing else, so an empty one means it.
        let empty = mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none()
            && ctime.is_none();
        let r = SetAttrRequest {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: time_set(atime),
            mtime: time_set(mtime),
            kill_suidgid: self.killpriv_v2 && empty,
        };
        self.attr(reply, self.vfs.setattr(&self.creds(req), Ino(ino.0), &r))
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = OpTimer::start("readlink");
        match self.vfs.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = OpTimer::start("mknod");
        let Some(k) = kind_of_mode(mode) else {
            return reply.error(Errno::from_i32(libc::EINVAL));
        };
        let perm = (mode & !umask & 0o7777) as u16;
        self.entry(
            reply,
            self.vfs.mknod(
                &self.creds(req),
                Ino(parent.0),
                name.as_bytes(),
                k,
                perm,
                rdev,
            ),
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _t = OpTimer::start("mkdir");
        let perm = (mode & !umask & 0o7777) as u16;
        self.entry(
            reply,
            self.vfs
                .mkdir(&self.creds(req), Ino(parent.0), name.as_bytes(), perm),
        )
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = OpTimer::start("unlink");
        empty(
            reply,
            self.vfs
                .unlink(&self.creds(req), Ino(parent.0), name.as_bytes()),
        )
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = OpTimer::start("rmdir");
        empty(
            reply,
            self.vfs
                .rmdir(&self.creds(req), Ino(parent.0), name.as_bytes()),
        )
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _t = OpTimer::start("symlink");
        self.entry(
            reply,
            self.vfs.symlink(
                &self.creds(req),
                Ino(parent.0),
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
            ),
        )
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: FuseRenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = OpTimer::start("rename");
        if flags.contains(FuseRenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let f = RenameFlags {
            noreplace: flags.contains(FuseRenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(FuseRenameFlags::RENAME_EXCHANGE),
        };
        empty(
            reply,
            self.vfs.rename(
                &self.creds(req),
                Ino(parent.0),
                name.as_bytes(),
                Ino(newparent.0),
                newname.as_bytes(),
                f,
            ),
        )
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _t = OpTimer::start("link");
        self.entry(
            reply,
            self.vfs.link(
                &self.creds(req),
                Ino(ino.0),
                Ino(newparent.0),
                newname.as_bytes(),
            ),
        )
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        let _t = OpTimer::start("open");
        let opened = self
            .vfs
            .open(&self.creds(req), Ino(ino.0), self.open_flags(flags.0));
        if opened.is_ok()
            && !self.keep_cache
            && let Some(n) = self.notifier.get()
        {
            // Attributes only (offset -1): the kernel asks again before
            // it trusts the size; its page cache goes at this open anyway
            // (no FOPEN_KEEP_CACHE). No lock of the kernel's is taken for
            // this, so it is safe before the reply.
            let _ = n.inval_inode(ino, -1, 0);
        }
        match opened {
            // A read-only handle has nothing to flush at close (the kernel
            // skips the FLUSH request unless its write-back cache is on).
            Ok(fh) if flags.0 & libc::O_ACCMODE == libc::O_RDONLY => reply.opened(
                FileHandle(fh),
                self.open_reply_flags() | FopenFlags::FOPEN_NOFLUSH,
            ),
            Ok(fh) => reply.opened(FileHandle(fh), self.open_reply_flags()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _t = OpTimer::start("read");
        match self.vfs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = OpTimer::start("write");
        // With `FUSE_HANDLE_KILLPRIV_V2` the kernel says when set-id bits
        // go. Without it the kernel clears them itself (a setattr at
        // write(2) time), and a write-back from the page cache carries no
        // caller to judge by.
        let kill = if self.killpriv_v2 {
            write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
        } else {
            !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) && req.uid() != 0
        };
        match self.vfs.write_kill_suidgid(fh.0, offset, data, kill) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = OpTimer::start("fallocate");
        empty(
            reply,
            self.vfs
                .fallocate(&self.creds(req), fh.0, offset, length, mode),
        )
    }

    /// Answered `ENOSYS`, after which the kernel sends no `FLUSH` again
    /// (`fc->no_flush`): a `close` costs no round trip. Nothing is lost:
    /// under the write-back cache the kernel still writes the file's dirty
    /// pages here and reports their errors before `close` returns; the
    /// size and times reach metadata at the last `RELEASE` (and recovery
    /// takes sizes from the log); no POSIX locks are held here.
    ///
    /// In a shared namespace ([`Vfs::is_shared`]) `close` waits here
    /// until the file's data is uploaded and its size committed
    /// ([`Vfs::flush`]): close-to-open consistency across hosts.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _t = OpTimer::start("flush");
        if self.vfs.is_shared() {
            return empty(reply, self.vfs.flush(fh.0));
        }
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = OpTimer::start("release");
        empty(reply, self.vfs.release(fh.0))
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = OpTimer::start("fsync");
        empty(reply, self.vfs.fsync(fh.0, datasync))
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        let _t = OpTimer::start("opendir");
        if !self.dir_handles {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        match self.vfs.opendir(&self.creds(req), Ino(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _t = OpTimer::start("readdir");
        let creds = (fh.0 == 0).then(|| self.creds(req));
        let r = self.fill_listing(fh.0, offset, |at, limit| {
            let entries = match &creds {
                Some(c) => self.vfs.readdir_as(c, Ino(ino.0), at, limit)?,
                None => self.vfs.readdir(Ino(ino.0), at, limit)?,
            };
            let got = entries.len();
            let mut added = Vec::new();
            for e in entries {
                if reply.add(
                    INodeNo(e.ino.0),
                    e.cookie,
                    kind(e.kind),
                    OsStr::from_bytes(&e.name),
                ) {
                    return Ok((added, got, true));
                }
                added.push(e.cookie);
            }
            Ok((added, got, false))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _t = OpTimer::start("readdirplus");
        let creds = (fh.0 == 0).then(|| self.creds(req));
        let r = self.fill_listing(fh.0, offset, |at, limit| {
            let entries = match &creds {
                Some(c) => self.vfs.readdirplus_as(c, Ino(ino.0), at, limit)?,
                None => self.vfs.readdirplus(Ino(ino.0), at, limit)?,
            };
            let got = entries.len();
            let mut added = Vec::new();
            for (e, a) in entries {
                if reply.add(
                    INodeNo(e.ino.0),
                    e.cookie,
                    OsStr::from_bytes(&e.name),
                    &self.ttl,
                    &file_attr(&a),
                    Generation(0),
                ) {
                    return Ok((added, got, true));
                }
                added.push(e.cookie);
            }
            Ok((added, got, false))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = OpTimer::start("releasedir");
        self.listing().remove(&fh.0);
        empty(reply, self.vfs.releasedir(fh.0))
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = OpTimer::start("fsyncdir");
        empty(reply, self.vfs.fsyncdir(Ino(ino.0)))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = OpTimer::start("statfs");
        match self.vfs.capacity() {
            Ok(c) => {
                let bsize = 4096u64;
                let blocks = c.total_bytes / bsize;
                let avail = (c.avail_bytes / bsize).min(blocks);
                let files = 1u64 << 32;
                reply.statfs(
                    blocks,
                    avail,
                    avail,
                    files,
                    files.saturating_sub(c.usage.inodes),
                    bsize as u32,
                    crate::meta::NAME_MAX as u32,
                    bsize as u32,
                );
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = OpTimer::start("setxattr");
        if !self.xattr {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        let f = XattrFlags {
            create: flags & libc::XATTR_CREATE != 0,
            replace: flags & libc::XATTR_REPLACE != 0,
        };
        empty(
            reply,
            self.vfs
                .setxattr(&self.creds(req), Ino(ino.0), name.as_bytes(), value, f),
        )
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = OpTimer::start("getxattr");
        if !self.xattr {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        match self
            .vfs
            .getxattr(&self.creds(req), Ino(ino.0), name.as_bytes())
        {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = OpTimer::start("listxattr");
        if !self.xattr {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        match self.vfs.listxattr(&self.creds(req), Ino(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32);
                } else if buf.len() > size as usize {
                    reply.error(Errno::from_i32(libc::ERANGE));
                } else {
                    reply.data(&buf);
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = OpTimer::start("removexattr");
        if !self.xattr {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        empty(
            reply,
            self.vfs
                .removexattr(&self.creds(req), Ino(ino.0), name.as_bytes()),
        )
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _t = OpTimer::start("access");
        empty(
            reply,
            self.vfs
                .access(&self.creds(req), Ino(ino.0), Access::from_mask(mask.bits())),
        )
    }

    /// No ioctl is implemented: `ENOTTY`, as a local file system answers
    /// an ioctl it does not know (Python asks `TCGETS` at every text-mode
    /// `open`; `fuser`'s default logged a warning for each).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _t = OpTimer::start("ioctl");
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    /// `ENOSYS`, quietly: the kernel stops asking and treats files as
    /// always ready, as for a local file.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        let _t = OpTimer::start("poll");
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    /// `SEEK_DATA`/`SEEK_HOLE` from the block map and the slice cache
    /// ([`Vfs::seek`]), so `cp --sparse` and `tar --sparse` skip holes
    /// without reading them.
    ///
    /// The kernel sends no write-back of its dirty pages before
    /// `FUSE_LSEEK` (under the write-back cache, or of a shared writable
    /// mmap), and it alone knows the size such pages imply. So a query on
    /// a file open for writing (where they may be) is answered `ENOSYS`:
    /// from then on the kernel answers every
    /// query of this mount itself, from its own size, with the whole file
    /// as data (what POSIX allows a file system that does not track
    /// holes). Wrong answers there would make `cp --sparse` or
    /// `qemu-img convert` skip written bytes; a lost optimisation loses
    /// nothing.
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        let _t = OpTimer::start("lseek");
        let ino = Ino(ino.0);
        let whence = match whence {
            libc::SEEK_DATA => Seek::Data,
            libc::SEEK_HOLE => Seek::Hole,
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::from_i32(libc::ENXIO));
        };
        if self.vfs.open_for_writing(ino) {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        match self.vfs.seek(ino, offset, whence) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// A copy inside the mount ([`Vfs::copy_file_range`]): whole aligned
    /// blocks are cloned, the rest copied without crossing into the
    /// kernel. The kernel writes back the dirty pages of both ranges
    /// before, and drops the destination's cached pages after.
    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _t = OpTimer::start("copy_file_range");
        if flags.bits() != 0 {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        // The reply counts bytes in 32 bits: whole blocks below 4 GiB.
        let len =
            len.min(u64::from(u32::MAX) / slicefs_cache::BLOCK_SIZE * slicefs_cache::BLOCK_SIZE);
        match self.vfs.copy_file_range(
            &self.creds(req),
            fh_in.0,
            offset_in,
            fh_out.0,
            offset_out,
            len,
        ) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = OpTimer::start("create");
        let perm = (mode & !umask & 0o7777) as u16;
        match self.vfs.create(
            &self.creds(req),
            Ino(parent.0),
            name.as_bytes(),
            perm,
            self.open_flags(flags),
            flags & libc::O_EXCL != 0,
        ) {
            Ok((a, fh)) => reply.created(
                &self.ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                self.open_reply_flags(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_including_before_the_epoch() {
        for t in [
            Timespec { sec: 0, nsec: 0 },
            Timespec {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Timespec {
                sec: -5,
                nsec: 250_000_000,
            },
        ] {
            assert_eq!(timespec(time(t)), t);
        }
    }

    #[test]
    fn modes_map_to_kinds() {
        assert_eq!(kind_of_mode(libc::S_IFIFO | 0o644), Some(FileKind::Fifo));
        assert_eq!(kind_of_mode(0o644), Some(FileKind::Regular));
        assert_eq!(kind_of_mode(libc::S_IFCHR), Some(FileKind::CharDevice));
        assert_eq!(kind_of_mode(0o170000), None);
    }
}

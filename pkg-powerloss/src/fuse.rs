//! The FUSE adapter: each request locks the state, runs one operation and
//! replies. No permission checks (the simulator serves root's tests).
//!
//! The kernel keeps its page cache coherent by itself: there is no
//! write-back cache (the simulator does not ask for it) and no direct I/O,
//! so `pwrite` goes through the page cache to the simulator at once, and
//! shared mappings see it. Files open with `FOPEN_KEEP_CACHE`: nothing
//! changes a file behind the kernel's back within one mount. POSIX and BSD
//! locks are left to the kernel (the simulator asks for neither
//! `FUSE_POSIX_LOCKS` nor `FUSE_FLOCK_LOCKS`, so the kernel handles them
//! locally).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::state::{DirEntry, Kind, Stat, State};

/// How long the kernel may cache attributes and entries. Every change
/// goes through this kernel, so caching is safe; a power loss remounts.
const TTL: Duration = Duration::from_secs(1);

/// The shared state: the power-loss handle and the session both hold it.
pub(crate) type Shared = Arc<Mutex<State>>;

/// Locks the state, recovering it if a request thread panicked.
pub(crate) fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// One mount's file system.
pub(crate) struct PowerLossFuse {
    state: Shared,
    /// Directory listings taken at `opendir`, by handle.
    listings: Mutex<(u64, HashMap<u64, Vec<DirEntry>>)>,
}

impl PowerLossFuse {
    pub(crate) fn new(state: Shared) -> PowerLossFuse {
        PowerLossFuse {
            state,
            listings: Mutex::new((1, HashMap::new())),
        }
    }

    /// Runs `f` on the state, or `EIO` once a power loss froze it.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, i32>) -> Result<T, Errno> {
        let mut s = lock(&self.state);
        if s.frozen {
            return Err(Errno::EIO);
        }
        f(&mut s).map_err(Errno::from_i32)
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.ino),
        size: st.size,
        blocks: st.size.div_ceil(512),
        atime: st.meta.atime,
        mtime: st.meta.mtime,
        ctime: st.meta.ctime,
        crtime: st.meta.ctime,
        kind: file_type(st.kind),
        perm: (st.meta.mode & 0o7777) as u16,
        nlink: st.nlink,
        uid: st.meta.uid,
        gid: st.meta.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn entry(reply: ReplyEntry, r: Result<Stat, Errno>) {
    match r {
        Ok(st) => reply.entry(&TTL, &attr(&st), Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowerLossFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.with(|s| s.lookup(parent.0, name)));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // A frozen state is no longer served: nothing to count.
        let _ = self.with(|s| {
            s.forget(ino.0, nlookup);
            Ok(())
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|s| s.stat(ino.0)) {
            Ok(st) => reply.attr(&TTL, &attr(&st)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.with(|s| {
            if let Some(size) = size {
                s.set_size(ino.0, size)?;
            }
            s.set_meta(ino.0, |m| {
                if let Some(mode) = mode {
                    m.mode = mode;
                }
                if let Some(uid) = uid {
                    m.uid = uid;
                }
                if let Some(gid) = gid {
                    m.gid = gid;
                }
                if let Some(t) = atime {
                    m.atime = time(t);
                }
                if let Some(t) = mtime {
                    m.mtime = time(t);
                }
            })?;
            s.stat(ino.0)
        });
        match r {
            Ok(st) => reply.attr(&TTL, &attr(&st)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.with(|s| s.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let owner = (req.uid(), req.gid());
        entry(
            reply,
            self.with(|s| s.create(parent.0, name, Kind::File, mode, owner, None)),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let owner = (req.uid(), req.gid());
        entry(
            reply,
            self.with(|s| s.create(parent.0, name, Kind::Dir, mode, owner, None)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.with(|s| s.unlink(parent.0, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.with(|s| s.rmdir(parent.0, name)));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let owner = (req.uid(), req.gid());
        let target = target.as_os_str().as_bytes();
        entry(
            reply,
            self.with(|s| {
                s.create(
                    parent.0,
                    link_name,
                    Kind::Symlink,
                    0o777,
                    owner,
                    Some(target),
                )
            }),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(
            reply,
            self.with(|s| s.rename(parent.0, name, newparent.0, newname, noreplace)),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(reply, self.with(|s| s.link(ino.0, newparent.0, newname)));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| s.stat(ino.0)) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|s| s.read(ino.0, offset, u64::from(size))) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|s| s.write(ino.0, offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.with(|s| s.fsync(ino.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| s.list(ino.0)) {
            Ok(list) => {
                let mut l = self.listings.lock().unwrap_or_else(|e| e.into_inner());
                let fh = l.0;
                l.0 += 1;
                l.1.insert(fh, list);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let l = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = l.1.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut l = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        l.1.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.with(|s| s.fsync(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.with(|s| Ok(s.space())) {
            Ok(sp) => {
                let bsize = 4096u64;
                let files = 1u64 << 32;
                reply.statfs(
                    sp.total / bsize,
                    sp.free / bsize,
                    sp.free / bsize,
                    files,
                    files.saturating_sub(sp.inodes),
                    bsize as u32,
                    255,
                    bsize as u32,
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.with(|s| s.stat(ino.0).map(|_| ())));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let owner = (req.uid(), req.gid());
        match self.with(|s| s.create(parent.0, name, Kind::File, mode, owner, None)) {
            Ok(st) => reply.created(
                &TTL,
                &attr(&st),
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|s| s.fallocate(ino.0, offset, length, mode)),
        );
    }
}

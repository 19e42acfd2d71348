//! The NFS version 3 procedures (RFC 1813), each a thin adapter: decode
//! the arguments (a decoding failure is `GARBAGE_ARGS`), call the
//! [`Vfs`], encode the results.
//!
//! Attributes: every result that can carry post-operation attributes
//! does (one `getattr` after the change); pre-operation attributes
//! (`wcc_data.before`) are never sent, because they would have to be
//! read atomically with the change, which the VFS does not offer.
//!
//! Status: a handle that does not decode is `NFS3ERR_BADHANDLE`; a
//! handle whose inode is gone (`ENOENT` from the VFS for the handle's own
//! inode, or for a directory handle whose directory is gone) is
//! `NFS3ERR_STALE`; a name that is not there is `NFS3ERR_NOENT`; every
//! other error goes through [`nfs_status`].

use nfs3_types::nfs3::{
    ACCESS3_DELETE, ACCESS3_EXECUTE, ACCESS3_EXTEND, ACCESS3_LOOKUP, ACCESS3_MODIFY, ACCESS3_READ,
    ACCESS3res, ACCESS3resfail, ACCESS3resok, COMMIT3res, COMMIT3resfail, COMMIT3resok, CREATE3res,
    CREATE3resfail, CREATE3resok, FSF3_CANSETTIME, FSF3_HOMOGENEOUS, FSF3_LINK, FSF3_SYMLINK,
    FSINFO3res, FSINFO3resfail, FSINFO3resok, FSSTAT3res, FSSTAT3resfail, FSSTAT3resok,
    GETATTR3res, GETATTR3resok, LINK3res, LINK3resfail, LINK3resok, LOOKUP3res, LOOKUP3resfail,
    LOOKUP3resok, MKDIR3res, MKDIR3resfail, MKDIR3resok, MKNOD3res, MKNOD3resfail, MKNOD3resok,
    NFS3_FHSIZE, Nfs3Option, PATHCONF3res, PATHCONF3resfail, PATHCONF3resok, READ3res,
    READ3resfail, READ3resok, READDIR3res, READDIR3resfail, READDIR3resok, READDIRPLUS3res,
    READDIRPLUS3resfail, READDIRPLUS3resok, READLINK3res, READLINK3resfail, READLINK3resok,
    REMOVE3res, REMOVE3resfail, REMOVE3resok, RENAME3res, RENAME3resfail, RENAME3resok, RMDIR3res,
    RMDIR3resfail, RMDIR3resok, SETATTR3res, SETATTR3resfail, SETATTR3resok, SYMLINK3res,
    SYMLINK3resfail, SYMLINK3resok, WRITE3res, WRITE3resfail, WRITE3resok, cookieverf3, dirlist3,
    dirlistplus3, entry3, entryplus3, fattr3, filename3, ftype3, nfspath3, nfsstat3, nfstime3,
    post_op_attr, sattr3, set_atime, set_mtime, specdata3, stable_how, wcc_data, writeverf3,
};
use nfs3_types::xdr_codec::{List, Opaque, Pack, Void};

use super::Shared;
use super::handle::{FSID, handle_ino, nfs_fh};
use super::rpc::{Refusal, put};
use super::xdr::{Garbage, Xdr};
use crate::error::FsError;
use crate::meta::{FileKind, Ino, Inode, LINK_MAX, NAME_MAX, RenameFlags, Timespec};
use crate::vfs::{Access, Creds, MAX_FILE_SIZE, SetAttrRequest, Stability, TimeSet, Vfs};

/// The most directory entries one READDIR or READDIRPLUS asks the VFS
/// for (the byte budget usually stops earlier).
const MAX_DIR_ENTRIES: usize = 4096;

/// Default permission bits of a file created without a mode.
const DEFAULT_FILE_MODE: u16 = 0o644;
/// Default permission bits of a directory created without a mode.
const DEFAULT_DIR_MODE: u16 = 0o755;
/// Permission bits of a file made by an EXCLUSIVE create, until the
/// client's SETATTR that follows it.
const EXCLUSIVE_MODE: u16 = 0o600;

type Res<T> = Result<T, nfsstat3>;

/// The `nfsstat3` of a VFS error, through its errno:
///
/// | errno | nfsstat3 |
/// |---|---|
/// | `EPERM` | `NFS3ERR_PERM` |
/// | `ENOENT` | `NFS3ERR_NOENT` (for a handle's own inode the adapter answers `NFS3ERR_STALE`) |
/// | `EIO` | `NFS3ERR_IO` |
/// | `ENXIO` | `NFS3ERR_NXIO` |
/// | `EACCES` | `NFS3ERR_ACCES` |
/// | `EEXIST` | `NFS3ERR_EXIST` |
/// | `EXDEV` | `NFS3ERR_XDEV` |
/// | `ENODEV` | `NFS3ERR_NODEV` |
/// | `ENOTDIR` | `NFS3ERR_NOTDIR` |
/// | `EISDIR` | `NFS3ERR_ISDIR` |
/// | `EINVAL`, `ERANGE`, `ELOOP` | `NFS3ERR_INVAL` (NFSv3 has no `ELOOP`; the VFS returns it only for `open` of a symlink, which READ and WRITE answer `EINVAL` anyway) |
/// | `EFBIG` | `NFS3ERR_FBIG` |
/// | `ENOSPC` | `NFS3ERR_NOSPC` (also a write-back cache that stayed full) |
/// | `EROFS` | `NFS3ERR_ROFS` |
/// | `EMLINK` | `NFS3ERR_MLINK` |
/// | `ENAMETOOLONG` | `NFS3ERR_NAMETOOLONG` |
/// | `ENOTEMPTY` | `NFS3ERR_NOTEMPTY` |
/// | `EDQUOT` | `NFS3ERR_DQUOT` |
/// | `ESTALE` | `NFS3ERR_STALE` |
/// | `EOPNOTSUPP` (= `ENOTSUP`) | `NFS3ERR_NOTSUPP` |
/// | anything else (`EBADF`, `ENODATA`, ...) | `NFS3ERR_SERVERFAULT` |
///
/// `EBADF` is a server fault, not `NFS3ERR_BADHANDLE`: the VFS returns it
/// for its own open handles, which the stateless calls manage
/// themselves; a file handle that does not decode is refused before the
/// VFS is called.
pub fn nfs_status(e: &FsError) -> nfsstat3 {
    match e.errno() {
        libc::EPERM => nfsstat3::NFS3ERR_PERM,
        libc::ENOENT => nfsstat3::NFS3ERR_NOENT,
        libc::EIO => nfsstat3::NFS3ERR_IO,
        libc::ENXIO => nfsstat3::NFS3ERR_NXIO,
        libc::EACCES => nfsstat3::NFS3ERR_ACCES,
        libc::EEXIST => nfsstat3::NFS3ERR_EXIST,
        libc::EXDEV => nfsstat3::NFS3ERR_XDEV,
        libc::ENODEV => nfsstat3::NFS3ERR_NODEV,
        libc::ENOTDIR => nfsstat3::NFS3ERR_NOTDIR,
        libc::EISDIR => nfsstat3::NFS3ERR_ISDIR,
        libc::EINVAL | libc::ERANGE | libc::ELOOP => nfsstat3::NFS3ERR_INVAL,
        libc::EFBIG => nfsstat3::NFS3ERR_FBIG,
        libc::ENOSPC => nfsstat3::NFS3ERR_NOSPC,
        libc::EROFS => nfsstat3::NFS3ERR_ROFS,
        libc::EMLINK => nfsstat3::NFS3ERR_MLINK,
        libc::ENAMETOOLONG => nfsstat3::NFS3ERR_NAMETOOLONG,
        libc::ENOTEMPTY => nfsstat3::NFS3ERR_NOTEMPTY,
        libc::EDQUOT => nfsstat3::NFS3ERR_DQUOT,
        libc::ESTALE => nfsstat3::NFS3ERR_STALE,
        libc::EOPNOTSUPP => nfsstat3::NFS3ERR_NOTSUPP,
        _ => nfsstat3::NFS3ERR_SERVERFAULT,
    }
}

/// [`nfs_status`], logging I/O errors (they mean a component failed).
fn status(e: &FsError) -> nfsstat3 {
    if let FsError::Io { .. } = e {
        tracing::error!(error = %e, "I/O error returned to an NFS client");
    }
    nfs_status(e)
}

/// The status of an error about a handle's own inode: gone is stale.
fn obj_status(e: &FsError) -> nfsstat3 {
    match e {
        FsError::NotFound => nfsstat3::NFS3ERR_STALE,
        e => status(e),
    }
}

/// The NFS type of a file kind.
fn ftype(k: FileKind) -> ftype3 {
    match k {
        FileKind::Regular => ftype3::NF3REG,
        FileKind::Directory => ftype3::NF3DIR,
        FileKind::Symlink => ftype3::NF3LNK,
        FileKind::Fifo => ftype3::NF3FIFO,
        FileKind::Socket => ftype3::NF3SOCK,
        FileKind::CharDevice => ftype3::NF3CHR,
        FileKind::BlockDevice => ftype3::NF3BLK,
    }
}

/// A time as NFS carries it: unsigned 32-bit seconds, so times before
/// 1970 read as 1970 and times after 2106 as 2106.
fn nfstime(t: Timespec) -> nfstime3 {
    if t.sec < 0 {
        return nfstime3::default();
    }
    nfstime3 {
        seconds: u32::try_from(t.sec).unwrap_or(u32::MAX),
        nseconds: t.nsec,
    }
}

/// A time a client sets.
///
/// # Errors
/// `NFS3ERR_INVAL` for nanoseconds of a second or more.
fn client_time(t: nfstime3) -> Res<Timespec> {
    if t.nseconds >= 1_000_000_000 {
        return Err(nfsstat3::NFS3ERR_INVAL);
    }
    Ok(Timespec {
        sec: i64::from(t.seconds),
        nsec: t.nseconds,
    })
}

/// Major and minor of a device number as the VFS stores it (Linux's
/// 32-bit `new_encode_dev`: 12 bits of major, 20 of minor).
fn dev_split(rdev: u32) -> specdata3 {
    specdata3 {
        specdata1: (rdev & 0xfff00) >> 8,
        specdata2: (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    }
}

/// The stored device number of `major`, `minor`.
///
/// # Errors
/// `NFS3ERR_INVAL` past 12 bits of major or 20 of minor.
fn dev_join(s: &specdata3) -> Res<u32> {
    let (major, minor) = (s.specdata1, s.specdata2);
    if major > 0xfff || minor > 0xf_ffff {
        return Err(nfsstat3::NFS3ERR_INVAL);
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// The NFS attributes of an inode. `used` is the size (the data lives in
/// the object store; there is no local block count).
pub(super) fn fattr(a: &Inode) -> fattr3 {
    fattr3 {
        type_: ftype(a.kind),
        mode: u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.stat_size(),
        used: a.stat_alloc(),
        rdev: dev_split(a.rdev),
        fsid: FSID,
        fileid: a.ino.0,
        atime: nfstime(a.atime),
        mtime: nfstime(a.mtime),
        ctime: nfstime(a.ctime),
    }
}

/// The VFS request of an NFS `sattr3` (mode: permission bits only).
///
/// # Errors
/// `NFS3ERR_INVAL` for a client time with nanoseconds of a second or
/// more.
fn set_request(s: &sattr3) -> Res<SetAttrRequest> {
    let opt = |o: &Nfs3Option<u32>| match o {
        Nfs3Option::Some(v) => Some(*v),
        Nfs3Option::None => None,
    };
    let atime = match s.atime {
        set_atime::DONT_CHANGE => None,
        set_atime::SET_TO_SERVER_TIME => Some(TimeSet::Now),
        set_atime::SET_TO_CLIENT_TIME(t) => Some(TimeSet::At(client_time(t)?)),
    };
    let mtime = match s.mtime {
        set_mtime::DONT_CHANGE => None,
        set_mtime::SET_TO_SERVER_TIME => Some(TimeSet::Now),
        set_mtime::SET_TO_CLIENT_TIME(t) => Some(TimeSet::At(client_time(t)?)),
    };
    Ok(SetAttrRequest {
        perm: opt(&s.mode).map(|m| (m & 0o7777) as u16),
        uid: opt(&s.uid),
        gid: opt(&s.gid),
        size: match s.size {
            Nfs3Option::Some(v) => Some(v),
            Nfs3Option::None => None,
        },
        atime,
        mtime,
        kill_suidgid: false,
    })
}

// ---- argument decoding ----

/// An `nfs_fh3` (at most 64 bytes), undecoded.
fn fh<'a>(a: &mut Xdr<'a>) -> Result<&'a [u8], Garbage> {
    a.opaque(NFS3_FHSIZE)
}

/// A `filename3` or `nfspath3`: unbounded by XDR, bounded by the record
/// (the VFS checks lengths).
fn name<'a>(a: &mut Xdr<'a>) -> Result<&'a [u8], Garbage> {
    a.opaque(usize::MAX)
}

/// A `diropargs3`: directory handle and name.
fn dirop<'a>(a: &mut Xdr<'a>) -> Result<(&'a [u8], &'a [u8]), Garbage> {
    Ok((fh(a)?, name(a)?))
}

fn time(a: &mut Xdr<'_>) -> Result<nfstime3, Garbage> {
    Ok(nfstime3 {
        seconds: a.u32()?,
        nseconds: a.u32()?,
    })
}

fn opt_u32(a: &mut Xdr<'_>) -> Result<Nfs3Option<u32>, Garbage> {
    Ok(if a.bool()? {
        Nfs3Option::Some(a.u32()?)
    } else {
        Nfs3Option::None
    })
}

fn sattr(a: &mut Xdr<'_>) -> Result<sattr3, Garbage> {
    let mode = opt_u32(a)?;
    let uid = opt_u32(a)?;
    let gid = opt_u32(a)?;
    let size = if a.bool()? {
        Nfs3Option::Some(a.u64()?)
    } else {
        Nfs3Option::None
    };
    let atime = match a.u32()? {
        0 => set_atime::DONT_CHANGE,
        1 => set_atime::SET_TO_SERVER_TIME,
        2 => set_atime::SET_TO_CLIENT_TIME(time(a)?),
        _ => return Err(Garbage),
    };
    let mtime = match a.u32()? {
        0 => set_mtime::DONT_CHANGE,
        1 => set_mtime::SET_TO_SERVER_TIME,
        2 => set_mtime::SET_TO_CLIENT_TIME(time(a)?),
        _ => return Err(Garbage),
    };
    Ok(sattr3 {
        mode,
        uid,
        gid,
        size,
        atime,
        mtime,
    })
}

fn stable(a: &mut Xdr<'_>) -> Result<stable_how, Garbage> {
    Ok(match a.u32()? {
        0 => stable_how::UNSTABLE,
        1 => stable_how::DATA_SYNC,
        2 => stable_how::FILE_SYNC,
        _ => return Err(Garbage),
    })
}

/// `createhow3`.
enum How {
    Unchecked(sattr3),
    Guarded(sattr3),
    Exclusive([u8; 8]),
}

/// What MKNOD makes.
enum NodeType {
    Device(FileKind, sattr3, specdata3),
    Special(FileKind, sattr3),
    /// A regular file, directory, symlink or unknown type: `NFS3ERR_BADTYPE`.
    Bad,
}

/// Runs NFS procedure `proc` for `creds` with the XDR arguments `args`,
/// appending its results to `out` (a reply whose RPC header says
/// `SUCCESS`).
///
/// # Errors
/// [`Refusal::ProcUnavail`] for a procedure number over 21,
/// [`Refusal::GarbageArgs`] for arguments that do not decode.
pub(super) fn call(
    s: &Shared,
    proc: u32,
    creds: &Creds,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let n = Nfs {
        s,
        vfs: &s.vfs,
        creds,
    };
    let mut a = Xdr::new(args);
    let a = &mut a;
    match proc {
        0 => Ok(()),
        1 => n.getattr(a, out),
        2 => n.setattr(a, out),
        3 => n.lookup(a, out),
        4 => n.access(a, out),
        5 => n.readlink(a, out),
        6 => n.read(a, out),
        7 => n.write(a, out),
        8 => n.create(a, out),
        9 => n.mkdir(a, out),
        10 => n.symlink(a, out),
        11 => n.mknod(a, out),
        12 => n.remove(a, out),
        13 => n.rmdir(a, out),
        14 => n.rename(a, out),
        15 => n.link(a, out),
        16 => n.readdir(a, out),
        17 => n.readdirplus(a, out),
        18 => n.fsstat(a, out),
        19 => n.fsinfo(a, out),
        20 => n.pathconf(a, out),
        21 => n.commit(a, out),
        _ => Err(Refusal::ProcUnavail),
    }
}

/// READ (`args`) answered from the slice cache alone, its results
/// appended to `out`; `None` (nothing appended) when some bytes are not
/// cached and the call must go to the blocking pool
/// ([`crate::vfs::Vfs::read_at_cached`]).
pub(super) fn read_cached(
    s: &Shared,
    creds: &Creds,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Option<Result<(), Refusal>> {
    let n = Nfs {
        s,
        vfs: &s.vfs,
        creds,
    };
    let mut a = Xdr::new(args);
    n.read_with(&mut a, out, |ino, offset, count| {
        n.vfs.read_at_cached(creds, ino, offset, count)
    })
}

/// One call's context.
struct Nfs<'s> {
    s: &'s Shared,
    vfs: &'s Vfs,
    creds: &'s Creds,
}

impl Nfs<'_> {
    /// Attributes of a handle's inode (gone: stale).
    fn attr(&self, ino: Ino) -> Res<Inode> {
        self.vfs.getattr(ino).map_err(|e| obj_status(&e))
    }

    /// Post-operation attributes of `ino`, if it can be read.
    fn post(&self, ino: Ino) -> post_op_attr {
        match self.vfs.getattr(ino) {
            Ok(a) => Nfs3Option::Some(fattr(&a)),
            Err(_) => Nfs3Option::None,
        }
    }

    /// [`Nfs::post`] of an inode that may not have decoded.
    fn post_of(&self, ino: Res<Ino>) -> post_op_attr {
        ino.map_or(Nfs3Option::None, |i| self.post(i))
    }

    /// Weak cache consistency data of `ino`: after-attributes only.
    fn wcc(&self, ino: Res<Ino>) -> wcc_data {
        wcc_data {
            before: Nfs3Option::None,
            after: self.post_of(ino),
        }
    }

    /// The status of an error of an operation in directories `dirs` (the
    /// handles of the call): `ENOENT` is stale if one of them is gone,
    /// else the name is missing.
    fn dir_status(&self, dirs: &[Ino], e: &FsError) -> nfsstat3 {
        if let FsError::NotFound = e
            && dirs
                .iter()
                .any(|&d| matches!(self.vfs.getattr(d), Err(FsError::NotFound)))
        {
            return nfsstat3::NFS3ERR_STALE;
        }
        status(e)
    }

    /// Applies to a node just made the attributes of `req` that its
    /// creation did not already give it (mode excluded: it was given at
    /// creation). The node stays if this fails, and the error is the
    /// call's.
    fn finish_new(&self, a: Inode, req: &SetAttrRequest, with_size: bool) -> Res<Inode> {
        let rest = SetAttrRequest {
            perm: None,
            uid: req.uid.filter(|&u| u != a.uid),
            gid: req.gid.filter(|&g| g != a.gid),
            size: req.size.filter(|&s| with_size && s != a.size),
            atime: req.atime,
            mtime: req.mtime,
            kill_suidgid: false,
        };
        if rest == SetAttrRequest::default() {
            return Ok(a);
        }
        self.vfs
            .setattr(self.creds, a.ino, &rest)
            .map_err(|e| obj_status(&e))
    }

    /// GETATTR: the attributes of a handle.
    fn getattr(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let obj = fh(a)?;
        let r = handle_ino(obj).and_then(|ino| self.attr(ino));
        put(
            out,
            &match r {
                Ok(at) => GETATTR3res::Ok(GETATTR3resok {
                    obj_attributes: fattr(&at),
                }),
                Err(st) => GETATTR3res::Err((st, Void)),
            },
        )
    }

    /// SETATTR: chmod, chown, truncate, utimes; with a guard, only if the
    /// ctime is the guard's (else `NFS3ERR_NOT_SYNC`). The guard is
    /// checked just before the change, not atomically with it.
    fn setattr(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let obj = fh(a)?;
        let new = sattr(a)?;
        let guard = if a.bool()? { Some(time(a)?) } else { None };
        let ino = handle_ino(obj);
        let r = ino.and_then(|ino| {
            let req = set_request(&new)?;
            if let Some(g) = guard
                && nfstime(self.attr(ino)?.ctime) != g
            {
                return Err(nfsstat3::NFS3ERR_NOT_SYNC);
            }
            self.vfs
                .setattr(self.creds, ino, &req)
                .map_err(|e| obj_status(&e))
        });
        put(
            out,
            &match r {
                Ok(at) => SETATTR3res::Ok(SETATTR3resok {
                    obj_wcc: wcc_data {
                        before: Nfs3Option::None,
                        after: Nfs3Option::Some(fattr(&at)),
                    },
                }),
                Err(st) => SETATTR3res::Err((
                    st,
                    SETATTR3resfail {
                        obj_wcc: self.wcc(ino),
                    },
                )),
            },
        )
    }

    /// LOOKUP: a name in a directory (`.` and `..` included), with search
    /// permission.
    fn lookup(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let (dfh, nm) = dirop(a)?;
        let dir = handle_ino(dfh);
        let r = dir.and_then(|d| {
            self.vfs
                .lookup(self.creds, d, nm)
                .map_err(|e| self.dir_status(&[d], &e))
        });
        put(
            out,
            &match r {
                Ok(at) => LOOKUP3res::Ok(LOOKUP3resok {
                    object: nfs_fh(at.ino),
                    obj_attributes: Nfs3Option::Some(fattr(&at)),
                    dir_attributes: self.post_of(dir),
                }),
                Err(st) => LOOKUP3res::Err((
                    st,
                    LOOKUP3resfail {
                        dir_attributes: self.post_of(dir),
                    },
                )),
            },
        )
    }

    /// ACCESS: which of the asked rights the caller has, each through
    /// [`Vfs::access`] as knfsd maps them. A directory: READ is read,
    /// LOOKUP is search, MODIFY, EXTEND and DELETE are write and search;
    /// EXECUTE is never granted. Another file: READ is read, MODIFY and
    /// EXTEND are write, EXECUTE is execute; LOOKUP and DELETE are never
    /// granted. The owner's right to read and write whatever the mode
    /// (see [`Vfs::read_at`]) is not reported here.
    fn access(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let obj = fh(a)?;
        let want = a.u32()?;
        let ino = handle_ino(obj);
        let r = ino.and_then(|ino| {
            let at = self.attr(ino)?;
            let change = Access::WRITE | Access::EXEC;
            let dir_rights = [
                (ACCESS3_READ, Access::READ),
                (ACCESS3_LOOKUP, Access::EXEC),
                (ACCESS3_MODIFY, change),
                (ACCESS3_EXTEND, change),
                (ACCESS3_DELETE, change),
            ];
            let file_rights = [
                (ACCESS3_READ, Access::READ),
                (ACCESS3_MODIFY, Access::WRITE),
                (ACCESS3_EXTEND, Access::WRITE),
                (ACCESS3_EXECUTE, Access::EXEC),
            ];
            let table: &[(u32, Access)] = if at.kind == FileKind::Directory {
                &dir_rights
            } else {
                &file_rights
            };
            let mut known: Vec<(Access, bool)> = Vec::new();
            let mut granted = 0;
            for &(bit, mask) in table {
                if want & bit == 0 {
                    continue;
                }
                let ok = match known.iter().find(|(m, _)| *m == mask) {
                    Some(&(_, ok)) => ok,
                    None => {
                        let ok = match self.vfs.access(self.creds, ino, mask) {
                            Ok(()) => true,
                            Err(FsError::Access | FsError::NotPermitted) => false,
                            Err(e) => return Err(obj_status(&e)),
                        };
                        known.push((mask, ok));
                        ok
                    }
                };
                if ok {
                    granted |= bit;
                }
            }
            Ok((at, granted))
        });
        put(
            out,
            &match r {
                Ok((at, access)) => ACCESS3res::Ok(ACCESS3resok {
                    obj_attributes: Nfs3Option::Some(fattr(&at)),
                    access,
                }),
                Err(st) => ACCESS3res::Err((
                    st,
                    ACCESS3resfail {
                        obj_attributes: self.post_of(ino),
                    },
                )),
            },
        )
    }

    /// READLINK: a symlink's target (`NFS3ERR_INVAL` for another file).
    fn readlink(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let obj = fh(a)?;
        let ino = handle_ino(obj);
        let r = ino.and_then(|ino| self.vfs.readlink(ino).map_err(|e| obj_status(&e)));
        match r {
            Ok(target) => put(
                out,
                &READLINK3res::Ok(READLINK3resok {
                    symlink_attributes: self.post_of(ino),
                    data: nfspath3(Opaque::borrowed(&target)),
                }),
            ),
            Err(st) => put(
                out,
                &READLINK3res::Err((
                    st,
                    READLINK3resfail {
                        symlink_attributes: self.post_of(ino),
                    },
                )),
            ),
        }
    }

    /// READ: up to `count` bytes (capped at `max_io`) of a regular file,
    /// with read permission (the owner always may); `eof` when they reach
    /// the end of the file.
    fn read(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        self.read_with(a, out, |ino, offset, count| {
            Some(self.vfs.read_at(self.creds, ino, offset, count))
        })
        .unwrap_or(Err(Refusal::SystemErr))
    }

    /// READ through `read`, which may decline (`None`): then nothing is
    /// written to `out` and this returns `None`.
    fn read_with(
        &self,
        a: &mut Xdr<'_>,
        out: &mut Vec<u8>,
        read: impl FnOnce(Ino, u64, u32) -> Option<Result<(Vec<u8>, bool), FsError>>,
    ) -> Option<Result<(), Refusal>> {
        let args = (|| Ok::<_, Refusal>((fh(a)?, a.u64()?, a.u32()?)))();
        let (obj, offset, count) = match args {
            Ok(v) => v,
            Err(r) => return Some(Err(r)),
        };
        let count = count.min(self.s.config.max_io);
        let ino = handle_ino(obj);
        let r = match ino {
            Ok(i) => match read(i, offset, count)? {
                Ok(v) => Ok(v),
                Err(e) => Err(obj_status(&e)),
            },
            Err(st) => Err(st),
        };
        Some(match r {
            Ok((data, eof)) => put(
                out,
                &READ3res::Ok(READ3resok {
                    file_attributes: self.post_of(ino),
                    count: u32::try_from(data.len()).unwrap_or(u32::MAX),
                    eof,
                    data: Opaque::borrowed(&data),
                }),
            ),
            Err(st) => put(
                out,
                &READ3res::Err((
                    st,
                    READ3resfail {
                        file_attributes: self.post_of(ino),
                    },
                )),
            ),
        })
    }

    /// WRITE: the data sent (its length must be `count`, else
    /// `GARBAGE_ARGS`; at most `max_io` bytes of it are written, and the
    /// reply's `count` says how many) at `offset`, as durable as `stable`
    /// asks: UNSTABLE writes are in the log but not synced (a COMMIT makes
    /// them durable, and a server restart changes the verifier so the
    /// client sends them again); DATA_SYNC and FILE_SYNC return once the
    /// data (and for FILE_SYNC every attribute) is durable. `committed` is
    /// the level asked, the verifier the server's.
    fn write(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let obj = fh(a)?;
        let offset = a.u64()?;
        let count = a.u32()?;
        let how = stable(a)?;
        let data = name(a)?;
        // As knfsd: a count that is not the length of the data sent is
        // garbage.
        if usize::try_from(count).ok() != Some(data.len()) {
            return Err(Refusal::GarbageArgs);
        }
        let n = usize::try_from(self.s.config.max_io).unwrap_or(usize::MAX);
        let data = data.get(..n).unwrap_or(data);
        let stability = match how {
            stable_how::UNSTABLE => Stability::Unstable,
            stable_how::DATA_SYNC => Stability::DataSync,
            stable_how::FILE_SYNC => Stability::FileSync,
        };
        let ino = handle_ino(obj);
        let r = ino.and_then(|ino| {
            self.vfs
                .write_at(self.creds, ino, offset, data, stability)
                .map_err(|e| obj_status(&e))
        });
        put(
            out,
            &match r {
                Ok(count) => WRITE3res::Ok(WRITE3resok {
                    file_wcc: self.wcc(ino),
                    count,
                    committed: how,
                    verf: writeverf3(self.s.verifier),
                }),
                Err(st) => WRITE3res::Err((
                    st,
                    WRITE3resfail {
                        file_wcc: self.wcc(ino),
                    },
                )),
            },
        )
    }

    /// CREATE: a regular file.
    ///
    /// - UNCHECKED: made with the mode given (default 0644) and the rest
    ///   of the attributes applied; an existing regular file is kept, and
    ///   only the size given (a truncate, usually to 0) is applied to it
    ///   (as knfsd does); an existing file of another type is
    ///   `NFS3ERR_EXIST`.
    /// - GUARDED: as UNCHECKED, but an existing name is `NFS3ERR_EXIST`.
    /// - EXCLUSIVE: made with mode 0600, and the client's verifier stored
    ///   in its access and modification times (seconds; as knfsd does), so
    ///   that a retransmitted CREATE finds the file it made and succeeds;
    ///   another file of that name is `NFS3ERR_EXIST`. The client then
    ///   sets the real mode and times with SETATTR (RFC 1813).
    fn create(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let (dfh, nm) = dirop(a)?;
        let how = match a.u32()? {
            0 => How::Unchecked(sattr(a)?),
            1 => How::Guarded(sattr(a)?),
            2 => How::Exclusive(a.fixed::<8>()?),
            _ => return Err(Refusal::GarbageArgs),
        };
        let dir = handle_ino(dfh);
        let r = dir.and_then(|d| self.create_in(d, nm, &how));
        put(
            out,
            &match r {
                Ok(at) => CREATE3res::Ok(CREATE3resok {
                    obj: Nfs3Option::Some(nfs_fh(at.ino)),
                    obj_attributes: Nfs3Option::Some(fattr(&at)),
                    dir_wcc: self.wcc(dir),
                }),
                Err(st) => CREATE3res::Err((
                    st,
                    CREATE3resfail {
                        dir_wcc: self.wcc(dir),
                    },
                )),
            },
        )
    }

    fn create_in(&self, d: Ino, nm: &[u8], how: &How) -> Res<Inode> {
        let (s, guarded) = match how {
            How::Unchecked(s) => (s, false),
            How::Guarded(s) => (s, true),
            How::Exclusive(verf) => return self.create_exclusive(d, nm, verf),
        };
        let req = set_request(s)?;
        let perm = req.perm.unwrap_or(DEFAULT_FILE_MODE);
        match self
            .vfs
            .mknod(self.creds, d, nm, FileKind::Regular, perm, 0)
        {
            Ok(at) => self.finish_new(at, &req, true),
            Err(FsError::Exists) if !guarded => {
                let at = self
                    .vfs
                    .lookup(self.creds, d, nm)
                    .map_err(|e| self.dir_status(&[d], &e))?;
                if at.kind != FileKind::Regular {
                    return Err(nfsstat3::NFS3ERR_EXIST);
                }
                match req.size {
                    None => Ok(at),
                    Some(size) => {
                        let trunc = SetAttrRequest {
                            size: Some(size),
                            ..SetAttrRequest::default()
                        };
                        self.vfs
                            .setattr(self.creds, at.ino, &trunc)
                            .map_err(|e| obj_status(&e))
                    }
                }
            }
            Err(e) => Err(self.dir_status(&[d], &e)),
        }
    }

    fn create_exclusive(&self, d: Ino, nm: &[u8], verf: &[u8; 8]) -> Res<Inode> {
        let [a0, a1, a2, a3, m0, m1, m2, m3] = *verf;
        let stamp = |b: [u8; 4]| Timespec {
            sec: i64::from(u32::from_be_bytes(b)),
            nsec: 0,
        };
        let (atime, mtime) = (stamp([a0, a1, a2, a3]), stamp([m0, m1, m2, m3]));
        match self
            .vfs
            .mknod(self.creds, d, nm, FileKind::Regular, EXCLUSIVE_MODE, 0)
        {
            Ok(at) => {
                let req = SetAttrRequest {
                    atime: Some(TimeSet::At(atime)),
                    mtime: Some(TimeSet::At(mtime)),
                    ..SetAttrRequest::default()
                };
                self.vfs
                    .setattr(self.creds, at.ino, &req)
                    .map_err(|e| obj_status(&e))
            }
            Err(FsError::Exists) => {
                let at = self
                    .vfs
                    .lookup(self.creds, d, nm)
                    .map_err(|e| self.dir_status(&[d], &e))?;
                if at.kind == FileKind::Regular && at.atime == atime && at.mtime == mtime {
                    Ok(at)
                } else {
                    Err(nfsstat3::NFS3ERR_EXIST)
                }
            }
            Err(e) => Err(self.dir_status(&[d], &e)),
        }
    }

    /// MKDIR: mode from the attributes (default 0755), the rest applied.
    fn mkdir(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let (dfh, nm) = dirop(a)?;
        let s = sattr(a)?;
        let dir = handle_ino(dfh);
        let r = dir.and_then(|d| {
            let req = set_request(&s)?;
            let perm = req.perm.unwrap_or(DEFAULT_DIR_MODE);
            let at = self
                .vfs
                .mkdir(self.creds, d, nm, perm)
                .map_err(|e| self.dir_status(&[d], &e))?;
            self.finish_new(at, &req, false)
        });
        put(
            out,
            &match r {
                Ok(at) => MKDIR3res::Ok(MKDIR3resok {
                    obj: Nfs3Option::Some(nfs_fh(at.ino)),
                    obj_attributes: Nfs3Option::Some(fattr(&at)),
                    dir_wcc: self.wcc(dir),
                }),
                Err(st) => MKDIR3res::Err((
                    st,
                    MKDIR3resfail {
                        dir_wcc: self.wcc(dir),
                    },
                )),
            },
        )
    }

    /// SYMLINK: a symlink to the target given (mode always 0777; owner and
    /// times from the attributes are applied).
    fn symlink(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let (dfh, nm) = dirop(a)?;
        let s = sattr(a)?;
        let target = name(a)?;
        let dir = handle_ino(dfh);
        let r = dir.and_then(|d| {
            let req = set_request(&s)?;
            let at = self
                .vfs
                .symlink(self.creds, d, nm, target)
                .map_err(|e| self.dir_status(&[d], &e))?;
            self.finish_new(at, &req, false)
        });
        put(
            out,
            &match r {
                Ok(at) => SYMLINK3res::Ok(SYMLINK3resok {
                    obj: Nfs3Option::Some(nfs_fh(at.ino)),
                    obj_attributes: Nfs3Option::Some(fattr(&at)),
                    dir_wcc: self.wcc(dir),
                }),
                Err(st) => SYMLINK3res::Err((
                    st,
                    SYMLINK3resfail {
                        dir_wcc: self.wcc(dir),
                    },
                )),
            },
        )
    }

    /// MKNOD: a character or block device (root only, as the VFS rules),
    /// a FIFO or a socket; mode default 0644. Other types are
    /// `NFS3ERR_BADTYPE`.
    fn mknod(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let (dfh, nm) = dirop(a)?;
        let what = match a.u32()? {
            t @ (3 | 4) => {
                let kind = if t == 4 {
                    FileKind::CharDevice
                } else {
                    FileKind::BlockDevice
                };
                let s = sattr(a)?;
                let spec = specdata3 {
                    specdata1: a.u32()?,
                    specdata2: a.u32()?,
                };
                NodeType::Device(kind, s, spec)
            }
            6 => NodeType::Special(FileKind::Socket, sattr(a)?),
            7 => NodeType::Special(FileKind::Fifo, sattr(a)?),
            _ => NodeType::Bad,
        };
        let dir = handle_ino(dfh);
        let r = dir.and_then(|d| {
            let (kind, s, rdev) = match &what {
                NodeType::Device(k, s, spec) => (*k, s, dev_join(spec)?),
                NodeType::Special(k, s) => (*k, s, 0),
                NodeType::Bad => return Err(nfsstat3::NFS3ERR_BADTYPE),
            };
            let req = set_request(s)?;
            let perm = req.perm.unwrap_or(DEFAULT_FILE_MODE);
            let at = self
                .vfs
                .mknod(self.creds, d, nm, kind, perm, rdev)
                .map_err(|e| self.dir_status(&[d], &e))?;
            self.finish_new(at, &req, false)
        });
        put(
            out,
            &match r {
                Ok(at) => MKNOD3res::Ok(MKNOD3resok {
                    obj: Nfs3Option::Some(nfs_fh(at.ino)),
                    obj_attributes: Nfs3Option::Some(fattr(&at)),
                    dir_wcc: self.wcc(dir),
                }),
                Err(st) => MKNOD3res::Err((
                    st,
                    MKNOD3resfail {
                        dir_wcc: self.wcc(dir),
                    },
                )),
            },
        )
    }

    /// REMOVE: unlinks a non-directory.
    fn remove(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let (dfh, nm) = dirop(a)?;
        let dir = handle_ino(dfh);
        let r = dir.and_then(|d| {
            self.vfs
                .unlink(self.creds, d, nm)
                .map_err(|e| self.dir_status(&[d], &e))
        });
        let dir_wcc = self.wcc(dir);
        put(
            out,
            &match r {
                Ok(()) => REMOVE3res::Ok(REMOVE3resok { dir_wcc }),
                Err(st) => REMOVE3res::Err((st, REMOVE3resfail { dir_wcc })),
            },
        )
    }

    /// RMDIR: removes an empty directory.
    fn rmdir(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let (dfh, nm) = dirop(a)?;
        let dir = handle_ino(dfh);
        let r = dir.and_then(|d| {
            self.vfs
                .rmdir(self.creds, d, nm)
                .map_err(|e| self.dir_status(&[d], &e))
        });
        let dir_wcc = self.wcc(dir);
        put(
            out,
            &match r {
                Ok(()) => RMDIR3res::Ok(RMDIR3resok { dir_wcc }),
                Err(st) => RMDIR3res::Err((st, RMDIR3resfail { dir_wcc })),
            },
        )
    }

    /// RENAME: POSIX `rename` (replaces the target).
    fn rename(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let (from_fh, from) = dirop(a)?;
        let (to_fh, to) = dirop(a)?;
        let (from_dir, to_dir) = (handle_ino(from_fh), handle_ino(to_fh));
        let r = from_dir.and_then(|fd| {
            let td = to_dir?;
            self.vfs
                .rename(self.creds, fd, from, td, to, RenameFlags::default())
                .map_err(|e| self.dir_status(&[fd, td], &e))
        });
        let (fromdir_wcc, todir_wcc) = (self.wcc(from_dir), self.wcc(to_dir));
        put(
            out,
            &match r {
                Ok(()) => RENAME3res::Ok(RENAME3resok {
                    fromdir_wcc,
                    todir_wcc,
                }),
                Err(st) => RENAME3res::Err((
                    st,
                    RENAME3resfail {
                        fromdir_wcc,
                        todir_wcc,
                    },
                )),
            },
        )
    }

    /// LINK: a new name for a non-directory.
    fn link(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let file_fh = fh(a)?;
        let (dfh, nm) = dirop(a)?;
        let (file, dir) = (handle_ino(file_fh), handle_ino(dfh));
        let r = file.and_then(|f| {
            let d = dir?;
            self.vfs
                .link(self.creds, f, d, nm)
                .map_err(|e| self.dir_status(&[f, d], &e))
        });
        let linkdir_wcc = self.wcc(dir);
        put(
            out,
            &match r {
                Ok(at) => LINK3res::Ok(LINK3resok {
                    file_attributes: Nfs3Option::Some(fattr(&at)),
                    linkdir_wcc,
                }),
                Err(st) => LINK3res::Err((
                    st,
                    LINK3resfail {
                        file_attributes: self.post_of(file),
                        linkdir_wcc,
                    },
                )),
            },
        )
    }

    /// The directory of a READDIR(PLUS), checked readable.
    fn listable(&self, ino: Ino) -> Res<Inode> {
        let at = self.attr(ino)?;
        if at.kind != FileKind::Directory {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        self.vfs
            .access(self.creds, ino, Access::READ)
            .map_err(|e| obj_status(&e))?;
        Ok(at)
    }

    /// The cookie verifier of every listing: the server's write verifier.
    /// Cookies are the VFS's directory positions, which stay valid while
    /// entries come and go (and across restarts), so any verifier a
    /// client sends back is accepted and `NFS3ERR_BAD_COOKIE` is never
    /// returned.
    fn cookieverf(&self) -> cookieverf3 {
        cookieverf3(self.s.verifier)
    }

    /// READDIR: entries after `cookie` (0: from the start; `.` and `..`
    /// first) while the reply fits in `count` bytes (capped at
    /// `max_io`); `NFS3ERR_TOOSMALL` if not even one fits.
    fn readdir(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let dfh = fh(a)?;
        let cookie = a.u64()?;
        let _verf = a.fixed::<8>()?;
        let count = a.u32()?.min(self.s.config.max_io);
        let dir = handle_ino(dfh);
        let r = dir.and_then(|d| {
            let at = self.listable(d)?;
            let dir_attributes = Nfs3Option::Some(fattr(&at));
            // Status, attributes, verifier, end of list, eof.
            let fixed = 4 + dir_attributes.packed_size() + 8 + 4 + 4;
            let budget = usize::try_from(count)
                .unwrap_or(usize::MAX)
                .checked_sub(fixed)
                .ok_or(nfsstat3::NFS3ERR_TOOSMALL)?;
            // The smallest entry: list flag, fileid, empty name, cookie.
            let limit = (budget / 24).clamp(1, MAX_DIR_ENTRIES);
            let found = self
                .vfs
                .readdir(d, cookie, limit)
                .map_err(|e| obj_status(&e))?;
            let mut used = 0;
            let mut entries = Vec::with_capacity(found.len());
            let mut eof = found.len() < limit;
            for e in &found {
                let entry = entry3 {
                    fileid: e.ino.0,
                    name: filename3(Opaque::borrowed(&e.name)),
                    cookie: e.cookie,
                };
                let size = 4 + entry.packed_size();
                if used + size > budget {
                    eof = false;
                    break;
                }
                used += size;
                entries.push(entry);
            }
            if entries.is_empty() && !found.is_empty() {
                return Err(nfsstat3::NFS3ERR_TOOSMALL);
            }
            let res = READDIR3res::Ok(READDIR3resok {
                dir_attributes,
                cookieverf: self.cookieverf(),
                reply: dirlist3 {
                    entries: List(entries),
                    eof,
                },
            });
            Ok(put(out, &res))
        });
        match r {
            Ok(done) => done,
            Err(st) => put(
                out,
                &READDIR3res::Err((
                    st,
                    READDIR3resfail {
                        dir_attributes: self.post_of(dir),
                    },
                )),
            ),
        }
    }

    /// READDIRPLUS: READDIR with each entry's attributes and handle,
    /// while the reply fits in `maxcount` bytes (capped at `max_io`) and
    /// the names, cookies and file ids in `dircount` (when not 0; at
    /// least one entry is always sent).
    fn readdirplus(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let dfh = fh(a)?;
        let cookie = a.u64()?;
        let _verf = a.fixed::<8>()?;
        let dircount = usize::try_from(a.u32()?).unwrap_or(usize::MAX);
        let maxcount = a.u32()?.min(self.s.config.max_io);
        let dir = handle_ino(dfh);
        let r = dir.and_then(|d| {
            let at = self.listable(d)?;
            let dir_attributes = Nfs3Option::Some(fattr(&at));
            let fixed = 4 + dir_attributes.packed_size() + 8 + 4 + 4;
            let budget = usize::try_from(maxcount)
                .unwrap_or(usize::MAX)
                .checked_sub(fixed)
                .ok_or(nfsstat3::NFS3ERR_TOOSMALL)?;
            // The smallest entry: list flag, fileid, empty name, cookie,
            // attributes (flag + 84), handle (flag, length, 16 bytes).
            let mut limit = budget / (4 + 8 + 4 + 8 + 88 + 24);
            if dircount > 0 {
                // fileid, empty name, cookie.
                limit = limit.min(dircount / 20 + 1);
            }
            let limit = limit.clamp(1, MAX_DIR_ENTRIES);
            let found = self
                .vfs
                .readdirplus(d, cookie, limit)
                .map_err(|e| obj_status(&e))?;
            let (mut used, mut dir_used) = (0, 0);
            let mut entries = Vec::with_capacity(found.len());
            let mut eof = found.len() < limit;
            for (e, attr) in &found {
                let entry = entryplus3 {
                    fileid: e.ino.0,
                    name: filename3(Opaque::borrowed(&e.name)),
                    cookie: e.cookie,
                    name_attributes: Nfs3Option::Some(fattr(attr)),
                    name_handle: Nfs3Option::Some(nfs_fh(e.ino)),
                };
                let size = 4 + entry.packed_size();
                let dir_size = 8 + entry.name.0.packed_size() + 8;
                let over_dircount = dircount > 0 && dir_used + dir_size > dircount;
                if used + size > budget || (over_dircount && !entries.is_empty()) {
                    eof = false;
                    break;
                }
                used += size;
                dir_used += dir_size;
                entries.push(entry);
            }
            if entries.is_empty() && !found.is_empty() {
                return Err(nfsstat3::NFS3ERR_TOOSMALL);
            }
            let res = READDIRPLUS3res::Ok(READDIRPLUS3resok {
                dir_attributes,
                cookieverf: self.cookieverf(),
                reply: dirlistplus3 {
                    entries: List(entries),
                    eof,
                },
            });
            Ok(put(out, &res))
        });
        match r {
            Ok(done) => done,
            Err(st) => put(
                out,
                &READDIRPLUS3res::Err((
                    st,
                    READDIRPLUS3resfail {
                        dir_attributes: self.post_of(dir),
                    },
                )),
            ),
        }
    }

    /// FSSTAT: bytes total and free from [`Vfs::capacity`] (the disk of
    /// a `file://` store; otherwise 1 PiB less the sum of file sizes); 2^32
    /// inodes, free = 2^32 - inodes in use. `invarsec` 0 (the numbers
    /// change with every write).
    fn fsstat(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let obj = fh(a)?;
        let ino = handle_ino(obj);
        let r = ino.and_then(|ino| {
            let at = self.attr(ino)?;
            let c = self.vfs.capacity().map_err(|e| status(&e))?;
            let tbytes = c.total_bytes;
            let fbytes = c.avail_bytes;
            let tfiles = 1u64 << 32;
            let ffiles = tfiles.saturating_sub(c.usage.inodes);
            Ok(FSSTAT3resok {
                obj_attributes: Nfs3Option::Some(fattr(&at)),
                tbytes,
                fbytes,
                abytes: fbytes,
                tfiles,
                ffiles,
                afiles: ffiles,
                invarsec: 0,
            })
        });
        put(
            out,
            &match r {
                Ok(ok) => FSSTAT3res::Ok(ok),
                Err(st) => FSSTAT3res::Err((
                    st,
                    FSSTAT3resfail {
                        obj_attributes: self.post_of(ino),
                    },
                )),
            },
        )
    }

    /// FSINFO: read and write sizes `max_io` (maximum and preferred,
    /// multiples of 4 KiB), directory reads `max_io`, largest file
    /// [`MAX_FILE_SIZE`], times to the nanosecond, hard links, symlinks,
    /// the same answers for every file (PATHCONF), times settable.
    fn fsinfo(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let obj = fh(a)?;
        let ino = handle_ino(obj);
        let max_io = self.s.config.max_io;
        let r = ino.and_then(|ino| {
            let at = self.attr(ino)?;
            Ok(FSINFO3resok {
                obj_attributes: Nfs3Option::Some(fattr(&at)),
                rtmax: max_io,
                rtpref: max_io,
                rtmult: 4096,
                wtmax: max_io,
                wtpref: max_io,
                wtmult: 4096,
                dtpref: max_io,
                maxfilesize: MAX_FILE_SIZE,
                time_delta: nfstime3 {
                    seconds: 0,
                    nseconds: 1,
                },
                properties: FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
            })
        });
        put(
            out,
            &match r {
                Ok(ok) => FSINFO3res::Ok(ok),
                Err(st) => FSINFO3res::Err((
                    st,
                    FSINFO3resfail {
                        obj_attributes: self.post_of(ino),
                    },
                )),
            },
        )
    }

    /// PATHCONF: [`LINK_MAX`] links, [`NAME_MAX`]-byte names (longer ones
    /// are refused, not cut), `chown` restricted to root, names
    /// case-sensitive and case-preserving.
    fn pathconf(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let obj = fh(a)?;
        let ino = handle_ino(obj);
        let r = ino.and_then(|ino| {
            let at = self.attr(ino)?;
            Ok(PATHCONF3resok {
                obj_attributes: Nfs3Option::Some(fattr(&at)),
                linkmax: LINK_MAX,
                name_max: u32::try_from(NAME_MAX).unwrap_or(u32::MAX),
                no_trunc: true,
                chown_restricted: true,
                case_insensitive: false,
                case_preserving: true,
            })
        });
        put(
            out,
            &match r {
                Ok(ok) => PATHCONF3res::Ok(ok),
                Err(st) => PATHCONF3res::Err((
                    st,
                    PATHCONF3resfail {
                        obj_attributes: self.post_of(ino),
                    },
                )),
            },
        )
    }

    /// COMMIT: every write to the file that returned before is durable
    /// (with its size and times) when this returns; the whole file, what
    /// range is asked. The reply carries the server's verifier: a client
    /// that sees it differ from its writes' resends them.
    fn commit(&self, a: &mut Xdr<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let obj = fh(a)?;
        let _offset = a.u64()?;
        let _count = a.u32()?;
        let ino = handle_ino(obj);
        let r = ino.and_then(|ino| self.vfs.commit(ino).map_err(|e| obj_status(&e)));
        let file_wcc = self.wcc(ino);
        put(
            out,
            &match r {
                Ok(()) => COMMIT3res::Ok(COMMIT3resok {
                    file_wcc,
                    verf: writeverf3(self.s.verifier),
                }),
                Err(st) => COMMIT3res::Err((st, COMMIT3resfail { file_wcc })),
            },
        )
    }
}

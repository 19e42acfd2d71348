//! I/O by inode number, without an open handle: what a stateless front end
//! (an NFSv3 server: READ, WRITE and COMMIT carry a file handle, never an
//! open) asks of the VFS.
//!
//! Each call checks the caller's permission itself, as an NFS server must
//! on every request (there is no `open` to check once). As Linux's knfsd
//! does, the file's owner may read and write it whatever its mode: a
//! client that opened a file and then made it read-only still writes
//! through its open descriptor, and the server cannot tell.
//!
//! Inode numbers are never reused (their counter only grows), so an inode
//! number names one file for the life of the file system; a freed inode
//! answers `ENOENT`, which an NFS server turns into `NFS3ERR_STALE`.
//!
//! Calls go through an ordinary handle, so size, times and set-id rules
//! are those of `write(2)`. As knfsd's file cache does, the handle is kept
//! open between calls (one for reading, one for writing, per inode) and
//! released once idle ([`Vfs::release_idle`], which the front end calls
//! about every second): a stream of WRITEs then costs no metadata
//! transaction each (the size and times reach metadata at COMMIT, at a
//! stable write, or when the handle is released; a size is recovered from
//! the log after a crash anyway). The last unlink of a file drops its
//! kept handles, so it is freed as if no handle had been kept; calls on
//! an unlinked file that no open handle holds answer `ENOENT`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Access, Creds, FileKind, FsError, Ino, OpenFlags, Result, Vfs, lock, perm};

/// How much of a write must be durable before [`Vfs::write_at`] returns:
/// NFSv3's `stable_how` (RFC 1813, WRITE3args).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stability {
    /// In the log, not yet synced: a later [`Vfs::commit`] (or `fsync`)
    /// makes it durable; a crash of the machine before may lose it.
    Unstable,
    /// The data and what is needed to read it back (the size) are
    /// durable: `fdatasync`.
    DataSync,
    /// Data and every attribute are durable: `fsync`.
    FileSync,
}

/// The handles stateless calls keep, by inode and whether it writes.
#[derive(Default)]
pub(super) struct Kept {
    handles: HashMap<(Ino, bool), KeptHandle>,
}

struct KeptHandle {
    fh: u64,
    /// Calls running on it: it is released only when none is.
    busy: u32,
    /// When the last call on it ended.
    used: Instant,
    /// The file lost its last link while a call ran on it: released
    /// when that call ends.
    doomed: bool,
}

impl Vfs {
    /// A handle on regular file `ino` for `creds`, checked for `flags`
    /// (the owner passes), run through `f`: the one kept for `ino` (for
    /// writing, if `flags` write), or a new one, kept afterwards.
    fn with_kept<T>(
        &self,
        creds: &Creds,
        ino: Ino,
        flags: OpenFlags,
        f: impl FnOnce(u64) -> Result<T>,
    ) -> Result<T> {
        let a = self.attr(ino)?;
        check_io(creds, &a, flags)?;
        if a.nlink == 0 && self.node(ino).is_none() {
            // Unlinked and held by no handle: an orphan about to be freed
            // (an NFS client renames a file it still has open instead of
            // removing it), not to be kept alive by calls.
            return Err(FsError::NotFound);
        }
        let key = (ino, flags.write);
        let fh = {
            let mut kept = lock(&self.kept);
            match kept.handles.get_mut(&key) {
                Some(k) => {
                    k.busy += 1;
                    k.fh
                }
                None => {
                    let fh = self.open_node(
                        &a,
                        OpenFlags {
                            read: true,
                            write: flags.write,
                            ..OpenFlags::default()
                        },
                    )?;
                    // `a` may predate an unlink that found no node (and
                    // queued an orphan the reaper now skips while this
                    // node lives): the node takes the link count from
                    // metadata, so its last release frees the file.
                    if !self.config.shared {
                        match self.meta.getattr(ino) {
                            Ok(now) => self.set_nlink(fh, now.nlink),
                            Err(e) => {
                                drop(kept);
                                let _ = self.release(fh);
                                return Err(e);
                            }
                        }
                    }
                    kept.handles.insert(
                        key,
                        KeptHandle {
                            fh,
                            busy: 1,
                            used: Instant::now(),
                            doomed: false,
                        },
                    );
                    fh
                }
            }
        };
        let r = f(fh);
        let doomed = {
            let mut kept = lock(&self.kept);
            let done = kept.handles.get_mut(&key).is_some_and(|k| {
                k.busy -= 1;
                k.used = Instant::now();
                k.doomed && k.busy == 0
            });
            done.then(|| kept.handles.remove(&key)).flatten()
        };
        self.release_unlinked(ino, doomed.map(|k| k.fh));
        r
    }

    /// Releases the kept handles `fhs` of `ino`, which lost its last link.
    /// The unlink is done: a failure to release (metadata full or
    /// failing) is logged, not returned, and the file is then freed at
    /// the next start.
    fn release_unlinked(&self, ino: Ino, fhs: impl IntoIterator<Item = u64>) {
        for fh in fhs {
            if let Err(e) = self.release(fh) {
                tracing::warn!(ino = ino.0, error = %e, "releasing a kept handle of an unlinked file");
            }
        }
    }

    /// Releases the handles stateless calls kept that no call has used for
    /// `idle` (all that no call is using, for `Duration::ZERO`): their
    /// sizes and times go to metadata, and a file unlinked meanwhile is
    /// freed. A front end calls this about every second, and with
    /// `Duration::ZERO` when it stops.
    ///
    /// # Errors
    /// The first failure to release one (`EIO` from metadata); the others
    /// are released all the same.
    pub fn release_idle(&self, idle: Duration) -> Result<()> {
        let now = Instant::now();
        let gone: Vec<u64> = {
            let mut kept = lock(&self.kept);
            let mut gone = Vec::new();
            kept.handles.retain(|_, k| {
                let keep = k.busy > 0 || now.duration_since(k.used) < idle;
                if !keep {
                    gone.push(k.fh);
                }
                keep
            });
            gone
        };
        let mut first = Ok(());
        for fh in gone {
            if let Err(e) = self.release(fh)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Sets the link count of the node handle `fh` is on.
    fn set_nlink(&self, fh: u64, nlink: u32) {
        if let Ok((node, _)) = self.handle(fh) {
            lock(&node.state).attr.nlink = nlink;
        }
    }

    /// Handles stateless calls keep open now.
    pub fn kept_handles(&self) -> usize {
        lock(&self.kept).handles.len()
    }

    /// `ino` lost its last link: its kept handles go now (or, if a call
    /// runs on one, when that call ends), so that it is freed as if none
    /// had been kept ([`Vfs::release_unlinked`]).
    pub(super) fn drop_kept(&self, ino: Ino) {
        let gone: Vec<u64> = {
            let mut kept = lock(&self.kept);
            let mut gone = Vec::new();
            for w in [false, true] {
                if let Some(k) = kept.handles.get_mut(&(ino, w)) {
                    if k.busy > 0 {
                        k.doomed = true;
                    } else if let Some(k) = kept.handles.remove(&(ino, w)) {
                        gone.push(k.fh);
                    }
                }
            }
            gone
        };
        self.release_unlinked(ino, gone);
    }

    /// Reads up to `len` bytes of regular file `ino` at `offset` without
    /// an open handle; returns them and whether they reach the end of the
    /// file (NFS READ's `eof`).
    ///
    /// # Errors
    /// `ENOENT` (no such inode: a freed one), `EISDIR`, `EINVAL` (not a
    /// regular file), `EACCES`, `EIO` (as [`Vfs::read`]).
    pub fn read_at(
        &self,
        creds: &Creds,
        ino: Ino,
        offset: u64,
        len: u32,
    ) -> Result<(Vec<u8>, bool)> {
        let flags = OpenFlags {
            read: true,
            ..OpenFlags::default()
        };
        self.with_kept(creds, ino, flags, |fh| {
            let data = self.read(fh, offset, len)?;
            let size = self.attr(ino)?.size;
            let eof = offset.saturating_add(data.len() as u64) >= size;
            Ok((data, eof))
        })
    }

    /// [`Vfs::read_at`] when every byte asked for is in the slice cache
    /// (written lately, or read lately and not evicted): never waits for
    /// the object store or a log sync, so a front end may run it where
    /// blocking is costly. `None`: some bytes are not cached; call
    /// [`Vfs::read_at`].
    pub fn read_at_cached(
        &self,
        creds: &Creds,
        ino: Ino,
        offset: u64,
        len: u32,
    ) -> Option<Result<(Vec<u8>, bool)>> {
        let read = || -> Result<Option<(Vec<u8>, bool)>> {
            let a = self.attr(ino)?;
            check_io(
                creds,
                &a,
                OpenFlags {
                    read: true,
                    ..OpenFlags::default()
                },
            )?;
            if offset >= a.size {
                return Ok(Some((Vec::new(), true)));
            }
            let n = (a.size - offset).min(u64::from(len)) as usize;
            let mut out = vec![0u8; n];
            let missing = self
                .cache
                .read(ino.file(), offset, &mut out)
                .map_err(|e| FsError::io("read from the log", e))?;
            if !missing.is_empty() {
                return Ok(None);
            }
            if let Some(m) = crate::metrics::global() {
                m.read_bytes.inc_by(n as u64);
            }
            Ok(Some((out, offset + n as u64 >= a.size)))
        };
        read().transpose()
    }

    /// Writes `data` to regular file `ino` at `offset` without an open
    /// handle, and returns once it is as durable as `stability` asks. A
    /// caller other than root clears setuid and setgid as `write(2)` does.
    /// Returns the bytes written (short only where [`Vfs::write`] is).
    ///
    /// # Errors
    /// As [`Vfs::read_at`], and as [`Vfs::write`] (`EFBIG`, `ENOSPC`) and
    /// [`Vfs::fsync`] for a stable write.
    pub fn write_at(
        &self,
        creds: &Creds,
        ino: Ino,
        offset: u64,
        data: &[u8],
        stability: Stability,
    ) -> Result<u32> {
        let flags = OpenFlags {
            write: true,
            ..OpenFlags::default()
        };
        self.with_kept(creds, ino, flags, |fh| {
            let n = self.write_kill_suidgid(fh, offset, data, creds.uid != 0)?;
            match stability {
                Stability::Unstable => {}
                Stability::DataSync => self.fsync(fh, true)?,
                Stability::FileSync => self.fsync(fh, false)?,
            }
            Ok(n)
        })
    }

    /// Makes every write to `ino` that returned before durable, with its
    /// size and times (NFS COMMIT; `fsync` without a handle). Needs no
    /// permission (COMMIT only follows the caller's own writes).
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR`, `EINVAL`, and as [`Vfs::fsync`].
    pub fn commit(&self, ino: Ino) -> Result<()> {
        self.with_kept(&Creds::root(), ino, OpenFlags::default(), |fh| {
            self.fsync(fh, false)
        })
    }
}

/// Whether `creds` may do `flags`' I/O on `a` without an open handle: a
/// regular file, with the permission `flags` need (the owner always may,
/// as knfsd allows).
fn check_io(creds: &Creds, a: &super::Inode, flags: OpenFlags) -> Result<()> {
    match a.kind {
        FileKind::Regular => {}
        FileKind::Directory => return Err(FsError::IsDir),
        _ => return Err(FsError::Invalid("not a regular file")),
    }
    let mut mask = Access::empty();
    if flags.read {
        mask |= Access::READ;
    }
    if flags.write {
        mask |= Access::WRITE;
    }
    if creds.uid != a.uid {
        perm::check(creds, a, mask)?;
    }
    Ok(())
}

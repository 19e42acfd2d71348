//! Holes: `fallocate` (grow, punch a hole, zero a range) and `lseek`'s
//! `SEEK_DATA`/`SEEK_HOLE`.
//!
//! A file's bytes live in three places: committed blocks in the object
//! store (a block holds `len` valid bytes; past them, and where no block
//! is, the file reads zeros: a hole), the slice cache (written bytes,
//! pending or already uploaded), and the log (the durable copy of the
//! pending bytes). A punched range must read zeros from all three, also
//! after a crash and replay:
//! - the cached bytes in the range, and the parts of blocks the range only
//!   overlaps, are overwritten with zeros through the ordinary write path
//!   (logged, so a replay of the older writes cannot bring them back);
//! - blocks wholly inside the range are dropped from the block map in one
//!   metadata change ([`crate::transfer::TransferManager::punch`]), which
//!   also discards uploads of the file that were in flight.
//!
//! The zeros written there are uploaded like any write, and a block that
//! is all zeros is committed as a hole, not stored (see the transfer
//! manager), so a punch frees the space of every block it covers.
//!
//! Durability is that of a write: a punch or zero-range is durable once
//! `fsync` returns; a crash before may undo it, or part of it.

use super::{FsError, Ino, Result, SetAttrRequest, Vfs, lock, range_end};
use crate::vfs::Creds;
use slicefs_cache::BLOCK_SIZE;

/// Zeros written at a time by a punch (at most this much memory).
const ZEROS: usize = 1 << 20;

/// `lseek`'s `whence` for the two hole queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// `SEEK_DATA`: the first byte of data at or after the offset.
    Data,
    /// `SEEK_HOLE`: the first byte of a hole at or after the offset (the
    /// end of the file counts as a hole).
    Hole,
}

impl Vfs {
    /// `fallocate` on an open handle.
    /// - Mode 0 (`posix_fallocate`) grows the file to `offset + len` if it
    ///   is shorter (the new bytes read as zeros); with
    ///   `FALLOC_FL_KEEP_SIZE` alone it changes nothing. Space is not
    ///   reserved: data lives in the object store, and the local log
    ///   refuses a write with `ENOSPC` when its disk is full.
    /// - `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: the range (cut at
    ///   the end of the file) reads zeros, and the blocks it covers are
    ///   freed in the object store.
    /// - `FALLOC_FL_ZERO_RANGE` (with or without `KEEP_SIZE`): as a punch,
    ///   and without `KEEP_SIZE` the file grows to `offset + len`.
    ///
    /// Both change the file's mtime and ctime, and a caller other than
    /// root clears setuid and setgid, as a write does.
    ///
    /// # Errors
    /// `EBADF` (not open for writing), `EOPNOTSUPP` (another mode:
    /// collapse or insert range, unshare), `EFBIG`, `ENOSPC` (the zeros
    /// did not fit in the log), `EACCES`, `EIO`.
    pub fn fallocate(
        &self,
        creds: &Creds,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<()> {
        let (node, flags) = self.handle(fh)?;
        if !flags.write {
            return Err(FsError::BadHandle);
        }
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        let end = range_end(offset, len)?;
        match mode {
            0 => {}
            KEEP => return Ok(()),
            PUNCH | ZERO => self.zero_range(creds, fh, node.ino, offset, end)?,
            m if m == ZERO | KEEP => self.zero_range(creds, fh, node.ino, offset, end)?,
            _ => return Err(FsError::NotSupported("this fallocate mode")),
        }
        if mode & KEEP != 0 || end <= lock(&node.state).attr.size {
            return Ok(());
        }
        let req = SetAttrRequest {
            size: Some(end),
            ..SetAttrRequest::default()
        };
        self.setattr(creds, node.ino, &req).map(|_| ())
    }

    /// Makes `offset..end` of `ino` (cut at its size) read zeros: zeros
    /// written over its cached bytes and over the blocks it only
    /// overlaps, and the blocks it covers dropped (see the module doc).
    fn zero_range(&self, creds: &Creds, fh: u64, ino: Ino, offset: u64, end: u64) -> Result<()> {
        let (node, _) = self.handle(fh)?;
        let end = end.min(lock(&node.state).attr.size);
        if offset >= end {
            return Ok(());
        }
        let kill = creds.uid != 0;
        let whole_from = offset.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let whole_to = end / BLOCK_SIZE * BLOCK_SIZE;
        if whole_from >= whole_to {
            return self.write_zeros(fh, offset, end, kill);
        }
        self.write_zeros(fh, offset, whole_from, kill)?;
        self.write_zeros(fh, whole_to, end, kill)?;
        let file = ino.file();
        for r in self
            .cache
            .cached_ranges(file, whole_from, whole_to - whole_from)
        {
            self.write_zeros(fh, r.start, r.end, kill)?;
        }
        self.tm
            .punch(file, whole_from, whole_to)
            .map_err(|e| FsError::io("punch a hole in the block map", e))?;
        // The content changed even where no zeros were written.
        self.changed_in_block_map(&mut lock(&node.state), kill);
        Ok(())
    }

    /// Writes zeros over `from..to` through handle `fh`.
    fn write_zeros(&self, fh: u64, from: u64, to: u64, kill_suidgid: bool) -> Result<()> {
        static ZERO_PAGE: [u8; ZEROS] = [0; ZEROS];
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZEROS as u64) as usize;
            let done = self.write_kill_suidgid(fh, at, &ZERO_PAGE[..n], kill_suidgid)?;
            if done == 0 {
                return Err(FsError::io(
                    "punch a hole",
                    "a write of zeros made no progress",
                ));
            }
            at += u64::from(done);
        }
        Ok(())
    }

    /// `lseek(SEEK_DATA | SEEK_HOLE)` on regular file `ino` from `offset`:
    /// where the next data or hole starts. Data is the valid bytes of
    /// committed blocks and the pending bytes of the slice cache (zeros
    /// written there count as data until their block is uploaded and
    /// committed as a hole); everything else below the size is a hole,
    /// and the end of the file is one.
    ///
    /// A front end whose kernel may hold written bytes the VFS has not
    /// seen yet (FUSE: the kernel sends no write-back before `FUSE_LSEEK`,
    /// and dirty pages of the write-back cache or of a shared writable
    /// mmap may wait) must not trust the answer for a file open for
    /// writing: see [`Vfs::open_for_writing`].
    ///
    /// # Errors
    /// `ENXIO` (`offset` at or past the end of the file, or no data after
    /// it for `SEEK_DATA`), `ENOENT`, `EIO`.
    pub fn seek(&self, ino: Ino, offset: u64, whence: Seek) -> Result<u64> {
        let size = self.attr(ino)?.size;
        if offset >= size {
            return Err(FsError::NoSuchOffset);
        }
        // Clean cached bytes are in committed blocks already (or were
        // committed as a hole): only pending ones add data. Pending bytes
        // first: an upload commits its block before its bytes turn
        // clean, so a byte not pending now is in the block map read next.
        let mut data = self.cache.pending_ranges(ino.file(), offset, size - offset);
        data.extend(
            self.meta
                .block_ranges(ino)?
                .into_iter()
                .filter(|r| r.end > offset && r.start < r.end),
        );
        data.sort_unstable_by_key(|r| r.start);
        match whence {
            Seek::Data => data
                .iter()
                .find(|r| r.end > offset && r.start < size)
                .map(|r| r.start.max(offset))
                .ok_or(FsError::NoSuchOffset),
            Seek::Hole => {
                let mut pos = offset;
                for r in &data {
                    if r.start > pos {
                        break;
                    }
                    pos = pos.max(r.end);
                }
                Ok(pos.min(size))
            }
        }
    }

    /// Whether some handle has `ino` open for writing (a FUSE kernel may
    /// then hold bytes not yet sent: the write-back cache, a shared
    /// writable mmap).
    pub fn open_for_writing(&self, ino: Ino) -> bool {
        lock(&self.nodes)
            .get(&ino)
            .is_some_and(|n| lock(&n.state).writers > 0)
    }
}

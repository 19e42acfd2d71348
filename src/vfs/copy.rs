//! `copy_file_range`: a copy inside the file system, as a clone of
//! committed blocks where it can be, and a copy of the bytes elsewhere.
//!
//! A 4 MiB block of the source is cloned (the destination's block map
//! entry references the source's object; no byte moves) when both offsets
//! are block-aligned, the range covers the whole block, the files differ,
//! the source has no bytes of that block waiting for upload (they are not
//! in its object yet), and the destination holds no cached bytes there
//! (pending ones would be read over the clone, clean ones are a stale
//! copy). The check and the block map change run under the destination's
//! upload gate ([`crate::transfer::TransferManager::change_blocks`]), so
//! no upload of the destination commits between them; uploads of it that
//! were in flight are discarded and go again. Every other byte is read
//! and written through the ordinary paths (the log, the cache).
//!
//! An object stays in the store while any block references it (the block
//! map counts references per version, and a version names one object),
//! so deleting or overwriting either file leaves the other intact.
//!
//! Durability is that of a write: the clone is in metadata at once and
//! durable at the next `fsync` (or metadata sync); a crash before may lose
//! it, as it may lose unsynced writes.

use super::{FileKind, FsError, Result, Timespec, Vfs, lock, range_end};
use crate::vfs::Creds;
use slicefs_cache::BLOCK_SIZE;

/// Bytes copied through read and write per call at most (the caller, the
/// kernel, asks again for the rest): one request never holds a FUSE
/// thread for long. Clones are not counted.
const COPY_BUDGET: u64 = 64 << 20;

/// Bytes per read/write round of a byte copy.
const PIECE: u64 = 1 << 20;

impl Vfs {
    /// Copies up to `len` bytes of the file open as `fh_in` at `off_in` to
    /// the file open as `fh_out` at `off_out`; returns the bytes copied
    /// (short at the end of the source, or when the byte-copy budget of one
    /// call is spent; 0 at or past the source's end). Whole aligned blocks
    /// are cloned (see the module doc). The destination grows as a write
    /// makes it; its mtime and ctime change and, for a caller other than
    /// root, setuid and setgid are cleared.
    ///
    /// # Errors
    /// `EBADF` (not open for reading, resp. writing), `EISDIR`, `EINVAL`
    /// (not regular files; overlapping ranges of one file), `EFBIG`,
    /// `ENOSPC`, `EIO`.
    pub fn copy_file_range(
        &self,
        creds: &Creds,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        let (src, fin) = self.handle(fh_in)?;
        let (dst, fout) = self.handle(fh_out)?;
        if !fin.read || !fout.write {
            return Err(FsError::BadHandle);
        }
        let (size_in, kind_in) = {
            let st = lock(&src.state);
            (st.attr.size, st.attr.kind)
        };
        let kind_out = lock(&dst.state).attr.kind;
        for k in [kind_in, kind_out] {
            match k {
                FileKind::Regular => {}
                FileKind::Directory => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("not a regular file")),
            }
        }
        if off_in >= size_in || len == 0 {
            return Ok(0);
        }
        let len = len.min(size_in - off_in);
        range_end(off_out, len)?;
        let same = src.ino == dst.ino;
        if same && off_in < off_out + len && off_out < off_in + len {
            return Err(FsError::Invalid("overlapping ranges of one file"));
        }
        let kill = creds.uid != 0;
        let whole =
            if !same && off_in.is_multiple_of(BLOCK_SIZE) && off_out.is_multiple_of(BLOCK_SIZE) {
                len / BLOCK_SIZE
            } else {
                0
            };
        let cloned = self.clone_whole_blocks(src.ino, off_in, dst.ino, off_out, whole)?;
        // The rest, in order, through read and write.
        let mut done = 0u64;
        let mut copied = 0u64;
        while done < len {
            let k = done / BLOCK_SIZE;
            if done.is_multiple_of(BLOCK_SIZE) && k < whole && cloned[k as usize] {
                done += BLOCK_SIZE;
                continue;
            }
            if copied >= COPY_BUDGET {
                break;
            }
            let end = if k < whole { (k + 1) * BLOCK_SIZE } else { len };
            let n = (end - done).min(PIECE);
            let data = self.read(fh_in, off_in + done, n as u32)?;
            if data.is_empty() {
                break;
            }
            let w = u64::from(self.write_kill_suidgid(fh_out, off_out + done, &data, kill)?);
            done += w;
            copied += w;
            if w < data.len() as u64 {
                break;
            }
        }
        if cloned.iter().any(|&c| c) {
            // Writes set these for the bytes they copied; clones write
            // nothing.
            let now = Timespec::now();
            let mut st = lock(&dst.state);
            st.attr.size = st.attr.size.max(off_out + done);
            st.attr.mtime = now;
            st.attr.ctime = now;
            if kill {
                st.attr.perm = super::without_suidgid(st.attr.perm);
            }
            st.dirty = true;
        }
        Ok(done)
    }

    /// Clones blocks `0..n` of `src` from `src_at` to `dst` from `dst_at`
    /// where the module doc allows; says per block whether it did.
    fn clone_whole_blocks(
        &self,
        src: super::Ino,
        src_at: u64,
        dst: super::Ino,
        dst_at: u64,
        n: u64,
    ) -> Result<Vec<bool>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let (sf, df) = (src.file(), dst.file());
        self.tm.change_blocks(df, false, || {
            let ok: Vec<bool> = (0..n)
                .map(|k| {
                    let (s, d) = (src_at + k * BLOCK_SIZE, dst_at + k * BLOCK_SIZE);
                    self.cache.pending_ranges(sf, s, BLOCK_SIZE).is_empty()
                        && self.cache.cached_ranges(df, d, BLOCK_SIZE).is_empty()
                })
                .collect();
            let which: Vec<u64> = (0..n).filter(|&k| ok[k as usize]).collect();
            let dropped = if which.is_empty() {
                Vec::new()
            } else {
                self.meta.clone_blocks(src, src_at, dst, dst_at, &which)?
            };
            Ok::<_, FsError>((ok, dropped))
        })
    }
}

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

use super::{FileKind, FsError, Result, Vfs, lock, range_end};
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
        let aligned =
            !same && off_in.is_multiple_of(BLOCK_SIZE) && off_out.is_multiple_of(BLOCK_SIZE);
        let whole = if aligned { len / BLOCK_SIZE } else { 0 };
        // Which whole blocks may be clones (checked again under the gate),
        // and how far this call goes: each block that is not one costs a
        // byte copy against the budget. Clones past that point would be
        // done ahead of the count this call returns.
        let (sf, df) = (src.ino.file(), dst.ino.file());
        let candidate = |k: u64| {
            let (s, d) = (off_in + k * BLOCK_SIZE, off_out + k * BLOCK_SIZE);
            self.cache.pending_ranges(sf, s, BLOCK_SIZE).is_empty()
                && self.cache.cached_ranges(df, d, BLOCK_SIZE).is_empty()
        };
        let mut reach = 0;
        let mut cost = 0;
        let mut which = Vec::new();
        while reach < whole {
            if candidate(reach) {
                which.push(reach);
            } else if cost >= COPY_BUDGET {
                break;
            } else {
                cost += BLOCK_SIZE;
            }
            reach += 1;
        }
        let cloned =
            self.clone_blocks_checked(src.ino, off_in, dst.ino, off_out, &which, candidate)?;
        let is_clone = |k: u64| cloned.binary_search(&k).is_ok();
        if let Some(&last) = cloned.last() {
            // Metadata grew the size to cover the clones; so does the
            // node (its size is what readers see while it is open).
            let mut st = lock(&dst.state);
            st.attr.size = st
                .attr
                .size
                .max(off_out + ((last + 1) * BLOCK_SIZE).min(len));
            self.changed_in_block_map(&mut st, kill);
        }
        // The rest, in order, through read and write.
        let mut done = 0u64;
        let mut copied = 0u64;
        while done < len {
            let k = done / BLOCK_SIZE;
            if done.is_multiple_of(BLOCK_SIZE) && k < whole && is_clone(k) {
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
        Ok(done)
    }

    /// Clones the blocks `which` (indexes from `src_at` and `dst_at`) that
    /// `candidate` still allows under the destination's upload gate;
    /// returns those cloned, in order. Takes no gate when `which` is
    /// empty (the gate discards the destination's uploads in flight).
    fn clone_blocks_checked(
        &self,
        src: super::Ino,
        src_at: u64,
        dst: super::Ino,
        dst_at: u64,
        which: &[u64],
        candidate: impl Fn(u64) -> bool,
    ) -> Result<Vec<u64>> {
        if which.is_empty() {
            return Ok(Vec::new());
        }
        self.tm.change_blocks(dst.file(), false, || {
            let ok: Vec<u64> = which.iter().copied().filter(|&k| candidate(k)).collect();
            let dropped = if ok.is_empty() {
                Vec::new()
            } else {
                self.meta.clone_blocks(src, src_at, dst, dst_at, &ok)?
            };
            Ok::<_, FsError>((ok, dropped))
        })
    }
}

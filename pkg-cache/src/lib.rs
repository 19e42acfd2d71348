//! The slicefs slice cache: the in-memory write-back cache between the
//! file system and the object store, and the routine that rebuilds it from
//! the persister after a restart.
//!
//! Shape: files (by [`FileId`]) -> 64 MiB chunks ([`CHUNK_SIZE`]) ->
//! slices. A write becomes a slice with the LSN the persister gave its log
//! record; where writes overlap, the newest LSN wins byte by byte. Bytes
//! are *pending* until a [`BlockSnapshot`] of their 4 MiB block is uploaded
//! and [`SliceCache::mark_flushed`] makes them *clean*; only clean bytes are
//! ever evicted.
//!
//! This crate does no I/O and has no async: the transfer manager drives
//! snapshots and uploads, the file system drives writes and reads.

mod buf;
mod cache;
mod chunk;
mod recover;

use std::ops::Range;

pub use buf::SnapBytes;
pub use cache::{CacheConfig, CacheStats, LEND_MIN, Reservation, SliceCache};
pub use chunk::{BlockSnapshot, SnapshotOptions};
pub use recover::{RecoveryReport, recover, recover_with_progress};
pub use slicefs_wal::{CHUNK_SIZE, ChunkIndex, FileId, LoggedBytes, Lsn, SliceId};

/// Bytes of a block, the unit uploaded to the object store: 4 MiB.
pub const BLOCK_SIZE: u64 = 4 << 20;
/// Blocks in a chunk.
pub const BLOCKS_PER_CHUNK: u64 = CHUNK_SIZE / BLOCK_SIZE;
pub(crate) const CHUNK: u64 = CHUNK_SIZE;

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The dirty limit stayed full for the whole wait: uploads are not
    /// keeping up (or the object store is unreachable). Nothing was
    /// dropped; the write was not taken.
    #[error(
        "write cache full: {dirty_bytes} bytes pending of {dirty_max_bytes} allowed, \
         no room after waiting {waited:?} for uploads"
    )]
    CacheFull {
        /// Pending bytes (and reservations) when giving up.
        dirty_bytes: u64,
        /// The configured limit.
        dirty_max_bytes: u64,
        /// How long the writer waited.
        waited: std::time::Duration,
    },
    /// A configuration value is out of range.
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(String),
    /// The persister failed during recovery.
    #[error("recovery from the log failed: {0}")]
    Wal(#[from] slicefs_wal::WalError),
}

/// The part of a write that falls in one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRange {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// Offset within the chunk.
    pub offset: u32,
    /// Bytes in this chunk.
    pub len: u32,
    /// The matching range of the caller's buffer.
    pub buf: Range<usize>,
}

impl ChunkRange {
    /// End offset within the chunk.
    pub fn end(&self) -> u32 {
        self.offset + self.len
    }
}

/// Splits the file range `offset..offset + len` at chunk boundaries.
///
/// ```
/// use slicefs_cache::{chunk_ranges, CHUNK_SIZE};
/// let parts: Vec<_> = chunk_ranges(CHUNK_SIZE - 10, 30).collect();
/// assert_eq!(parts.len(), 2);
/// assert_eq!((parts[0].chunk.0, parts[0].offset, parts[0].len), (0, (CHUNK_SIZE - 10) as u32, 10));
/// assert_eq!((parts[1].chunk.0, parts[1].offset, parts[1].len, parts[1].buf.clone()), (1, 0, 20, 10..30));
/// ```
pub fn chunk_ranges(offset: u64, len: u64) -> impl Iterator<Item = ChunkRange> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let chunk = pos / CHUNK;
        let in_chunk = pos % CHUNK;
        let n = (end - pos).min(CHUNK - in_chunk);
        let r = ChunkRange {
            chunk: ChunkIndex(chunk as u32),
            offset: in_chunk as u32,
            len: n as u32,
            buf: (pos - offset) as usize..(pos - offset + n) as usize,
        };
        pos += n;
        Some(r)
    })
}

//! Ids and the logical content of log records.

use std::fmt;

/// Size of a chunk, the fixed range of a file's address space that a slice
/// lives in: 64 MiB (as in JuiceFS). A slice never crosses a chunk.
pub const CHUNK_SIZE: u64 = 64 << 20;

/// Log sequence number: strictly increasing per persister, starting at 1.
/// `Lsn(0)` means "no record".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identity of a file in the log. The file system uses the inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u64);

/// Index of a chunk within a file: byte offset / [`CHUNK_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkIndex(pub u32);

/// Identity of a slice, chosen by the cache (unique per cache instance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceId(pub u64);

/// One contiguous write inside one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceWrite<'a> {
    /// The file written.
    pub file: FileId,
    /// The chunk written.
    pub chunk: ChunkIndex,
    /// The slice this write belongs to.
    pub slice: SliceId,
    /// Byte offset of `data` within the chunk; `offset + data.len()` is at
    /// most [`CHUNK_SIZE`].
    pub offset: u32,
    /// The bytes written.
    pub data: &'a [u8],
}

/// Which bytes reached the object store: the bytes of
/// `offset..offset + len` within chunk `chunk` of `file` that were written
/// by records with LSN <= `upto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushedMarker {
    /// The file.
    pub file: FileId,
    /// The chunk.
    pub chunk: ChunkIndex,
    /// Start of the flushed range within the chunk, in bytes.
    pub offset: u32,
    /// Length of the flushed range, in bytes; `offset + len <= CHUNK_SIZE`.
    pub len: u32,
    /// The highest LSN whose bytes in the range are covered.
    pub upto: Lsn,
}

/// The content of a record, as appended and as recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind<'a> {
    /// A slice write.
    Slice(SliceWrite<'a>),
    /// Removal of a file.
    Remove {
        /// The file removed.
        file: FileId,
    },
    /// Truncate of a file.
    Truncate {
        /// The file truncated.
        file: FileId,
        /// New size in bytes.
        size: u64,
    },
    /// Bytes that reached the object store.
    Flushed(FlushedMarker),
}

impl RecordKind<'_> {
    /// The file the record is about.
    pub fn file(&self) -> FileId {
        match self {
            RecordKind::Slice(w) => w.file,
            RecordKind::Remove { file } | RecordKind::Truncate { file, .. } => *file,
            RecordKind::Flushed(m) => m.file,
        }
    }
}

/// A recovered record: its LSN and content. `Slice` data borrows from the
/// log's mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's LSN.
    pub lsn: Lsn,
    /// What the record says.
    pub kind: RecordKind<'a>,
}

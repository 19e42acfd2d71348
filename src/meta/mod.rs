//! Metadata: inodes, directory entries, symlink targets, extended
//! attributes and the block map (which object holds each block of each
//! file).
//!
//! [`MetaStore`] is the store, over SQLite (the embedded default) or
//! memory; the namespace rules are written once (`ops`) over a
//! transaction trait both backends implement. The transfer manager sees
//! only [`BlockMap`]: it commits a block reference after the object is in
//! the store and before the persister is told the bytes are flushed.

mod fsck;
mod memstore;
pub mod ops;
mod postgres;
mod sqlite;
mod store;
pub mod types;

use slicefs_wal::{ChunkIndex, FileId};

use crate::blockstore::BlockKey;

pub use fsck::{LOST_AND_FOUND, NamespaceCheck, Problem};
pub use ops::{Check, LINK_MAX, NAME_MAX, Policy, XattrFlags};
pub use postgres::{MAX_ATTEMPTS, PG_SCHEMA_VERSION, RECONNECT_WAIT};
pub use sqlite::SCHEMA_VERSION;
pub use store::MetaStore;
pub use types::{
    DIR_SIZE, DirEntry, DirPage, FileKind, Ino, Inode, NewNode, RenameFlags, SetAttr, Timespec,
    Usage,
};

/// Address of one block of one file: 4 MiB at
/// `chunk * 64 MiB + block * 4 MiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockAddr {
    /// The file (inode number).
    pub file: FileId,
    /// The chunk.
    pub chunk: ChunkIndex,
    /// The block inside the chunk, `0..16`.
    pub block: u32,
}

impl BlockAddr {
    /// The object key of version `version` of this block.
    pub fn key(&self, version: u64) -> BlockKey {
        BlockKey {
            file: self.file,
            chunk: self.chunk,
            block: self.block,
            version,
        }
    }

    /// Byte offset of the block in its file.
    pub fn file_offset(&self) -> u64 {
        u64::from(self.chunk.0) * slicefs_cache::CHUNK_SIZE
            + u64::from(self.block) * slicefs_cache::BLOCK_SIZE
    }

    /// The block of `file` that holds byte `offset`.
    pub fn at(file: FileId, offset: u64) -> BlockAddr {
        BlockAddr {
            file,
            chunk: ChunkIndex((offset / slicefs_cache::CHUNK_SIZE) as u32),
            block: ((offset % slicefs_cache::CHUNK_SIZE) / slicefs_cache::BLOCK_SIZE) as u32,
        }
    }
}

/// The committed version of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// The object's version (see [`BlockKey`]). Versions are unique for
    /// the life of the filesystem, so a version names one object; several
    /// blocks may reference it (clones: `copy_file_range`).
    pub version: u64,
    /// Valid bytes from the block's start, at most 4 MiB. Bytes past it
    /// read as zeros (a truncate shortens it without rewriting the object).
    pub len: u32,
    /// For a clone or a pack member, the block the object was uploaded
    /// for (its key names that block; a pack's leader names its own
    /// block here); `None`: the object is this block's own. A block with
    /// an origin is read with a ranged `GET` of its bytes.
    pub origin: Option<BlockAddr>,
    /// Where this block's bytes start in the object, in bytes: 0 for an
    /// object of one block; a pack (several small blocks uploaded as one
    /// object, see `TransferConfig::pack_bytes`) holds its members one
    /// after another. The block's `len` bytes are `offset..offset + len`
    /// of the object.
    pub offset: u32,
}

impl BlockRef {
    /// A block's own object: version `version`, `len` valid bytes.
    pub fn own(version: u64, len: u32) -> BlockRef {
        BlockRef {
            version,
            len,
            origin: None,
            offset: 0,
        }
    }

    /// The key of the object this reference names, for the block at
    /// `addr` that holds it.
    pub fn key(&self, addr: BlockAddr) -> BlockKey {
        self.origin.unwrap_or(addr).key(self.version)
    }
}

/// One item of [`BlockMap::commit_over_many`]: the arguments of
/// [`BlockMap::commit_over`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCommit {
    /// The block.
    pub addr: BlockAddr,
    /// The reference the upload merged its bytes over.
    pub base: Option<BlockRef>,
    /// The new reference; `None`: a hole of `len` bytes.
    pub new: Option<BlockRef>,
    /// Valid bytes of the block.
    pub len: u32,
}

/// Errors of a metadata store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The file was removed (its inode purged): nothing was committed,
    /// and the object meant for it is garbage.
    #[error("file {file:?} is gone")]
    FileGone {
        /// The file.
        file: FileId,
    },
    /// The block is no longer the one the upload merged its bytes over
    /// (another host committed or cut it meanwhile): nothing was
    /// committed; merge again over the new block.
    #[error("block {addr:?} changed since the upload read it")]
    Conflict {
        /// The block.
        addr: BlockAddr,
    },
    /// The backend failed; nothing was committed by the failed call.
    #[error("metadata {op} failed: {source}")]
    Backend {
        /// The operation.
        op: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The per-block map of committed object versions.
///
/// Durability: a block commit is durable only once [`BlockMap::sync`]
/// (or another durable commit) covers it (see [`BlockMap::is_durable`]);
/// the other mutating calls return once their change is durable (it
/// survives a crash of the process and of the machine).
pub trait BlockMap: Send + Sync {
    /// The committed version of `addr`, if any.
    fn block(&self, addr: BlockAddr) -> Result<Option<BlockRef>, MetaError>;

    /// A version number never handed out before by this filesystem (also
    /// not after a restart), for a new object.
    fn allocate_version(&self) -> Result<u64, MetaError>;

    /// Makes `new` the committed version of `addr` and returns the version
    /// it replaced if no other block references its object (the object is
    /// then garbage once this commit is durable; a clone may still use it).
    /// Not durable on return: a power loss may undo it until
    /// [`BlockMap::is_durable`] says so for a [`BlockMap::commit_seq`] read
    /// after this returned; callers that need it durable batch many
    /// commits under one [`BlockMap::sync`].
    /// [`MetaError::FileGone`] if the file was removed meanwhile.
    fn commit_block(&self, addr: BlockAddr, new: BlockRef) -> Result<Option<BlockRef>, MetaError>;

    /// [`BlockMap::commit_block`] for a block whose `len` bytes are all
    /// zeros: it becomes a hole (no object; reads give zeros) and the
    /// version it replaces is returned as garbage. Same durability.
    fn commit_hole(&self, addr: BlockAddr, len: u32) -> Result<Option<BlockRef>, MetaError>;

    /// [`BlockMap::commit_block`] of `new` (or, for `None`,
    /// [`BlockMap::commit_hole`] of `len` bytes) only if the block is
    /// still `base`, the reference the upload merged its bytes over (a
    /// compare-and-set: with several hosts on one volume, a block another
    /// host committed or cut since is never overwritten with a merge of
    /// older bytes). [`MetaError::Conflict`] otherwise, with nothing
    /// committed. Same durability.
    fn commit_over(
        &self,
        addr: BlockAddr,
        base: Option<BlockRef>,
        new: Option<BlockRef>,
        len: u32,
    ) -> Result<Option<BlockRef>, MetaError>;

    /// [`BlockMap::commit_over`] of several blocks in one transaction (the
    /// members of a pack). Each item commits, or fails alone with
    /// [`MetaError::FileGone`] or [`MetaError::Conflict`] and nothing
    /// written for it; results are in `items` order. The outer error:
    /// nothing was committed. This default commits one by one (an item
    /// may then also fail with [`MetaError::Backend`] while others
    /// committed). Same durability.
    fn commit_over_many(
        &self,
        items: &[BlockCommit],
    ) -> Result<Vec<Result<Option<BlockRef>, MetaError>>, MetaError> {
        Ok(items
            .iter()
            .map(|c| self.commit_over(c.addr, c.base, c.new, c.len))
            .collect())
    }

    /// The sequence number of the newest committed change (0: none); a
    /// change committed before this call has at most this number.
    fn commit_seq(&self) -> u64;

    /// Whether every change up to sequence number `seq` is durable.
    fn is_durable(&self, seq: u64) -> bool;

    /// Cuts the block map of `file` to `size` bytes: blocks starting at or
    /// past `size` are dropped, the block holding `size` is shortened.
    /// Returns the objects no longer referenced.
    fn truncate_blocks(&self, file: FileId, size: u64) -> Result<Vec<BlockKey>, MetaError>;

    /// Drops the blocks of `file` that lie wholly inside `from..to` bytes
    /// (a punched hole; blocks it only overlaps stay). Returns the objects
    /// no longer referenced.
    fn punch_blocks(&self, file: FileId, from: u64, to: u64) -> Result<Vec<BlockKey>, MetaError>;

    /// Drops every block of `file`; returns the objects no longer
    /// referenced.
    fn remove_blocks(&self, file: FileId) -> Result<Vec<BlockKey>, MetaError>;

    /// Makes every change so far durable against power loss (after the
    /// log it depends on). Called before the log may forget the bytes of
    /// committed blocks, and before an object dropped by a truncate or
    /// removal is deleted, so that no durable block map can point at a
    /// deleted object.
    fn sync(&self) -> Result<(), MetaError>;

    /// The doomed list: objects dropped from the block map (by a
    /// truncate, a removal or a newer version) and not yet deleted from
    /// the store. An object joins it in the transaction that drops it,
    /// so the list is exactly as durable as the drop; it leaves once
    /// deleted ([`BlockMap::forget_doomed`]). After a restart the
    /// transfer manager deletes what is left on it, so no deletion is
    /// lost with a stop or a crash. Versions are never reused, so a
    /// doomed object is never referenced again.
    fn doomed(&self) -> Result<Vec<BlockKey>, MetaError>;

    /// Takes `keys` (deleted from the store) off the doomed list, in one
    /// transaction, not durable on return (a lost removal only means one
    /// more delete of a missing object).
    fn forget_doomed(&self, keys: &[BlockKey]) -> Result<(), MetaError>;

    /// Whether some block references `key`'s object: its own block, or a
    /// clone of it.
    fn is_referenced(&self, key: &BlockKey) -> Result<bool, MetaError>;
}

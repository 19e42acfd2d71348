//! [`MemBlockMap`]: the block map in memory, for ephemeral runs and tests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use slicefs_wal::{ChunkIndex, FileId};

use super::{BlockAddr, BlockMap, BlockRef, MetaError};
use crate::blockstore::BlockKey;
use slicefs_cache::{BLOCK_SIZE, CHUNK_SIZE};

/// A [`BlockMap`] in memory. Nothing survives the process; versions start
/// at the current time in nanoseconds so that a new map over an old store
/// does not hand out a version an older run used.
pub struct MemBlockMap {
    blocks: Mutex<BTreeMap<BlockAddr, BlockRef>>,
    next_version: AtomicU64,
}

impl Default for MemBlockMap {
    fn default() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        MemBlockMap {
            blocks: Mutex::new(BTreeMap::new()),
            next_version: AtomicU64::new(now.max(1)),
        }
    }
}

impl MemBlockMap {
    /// An empty map.
    pub fn new() -> MemBlockMap {
        MemBlockMap::default()
    }

    /// Every committed block, for tests.
    pub fn snapshot(&self) -> Vec<(BlockAddr, BlockRef)> {
        self.lock().iter().map(|(a, r)| (*a, *r)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<BlockAddr, BlockRef>> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn file_range(file: FileId) -> std::ops::RangeInclusive<BlockAddr> {
    BlockAddr {
        file,
        chunk: ChunkIndex(0),
        block: 0,
    }..=BlockAddr {
        file,
        chunk: ChunkIndex(u32::MAX),
        block: u32::MAX,
    }
}

impl BlockMap for MemBlockMap {
    fn block(&self, addr: BlockAddr) -> Result<Option<BlockRef>, MetaError> {
        Ok(self.lock().get(&addr).copied())
    }

    fn allocate_version(&self) -> Result<u64, MetaError> {
        Ok(self.next_version.fetch_add(1, Ordering::Relaxed))
    }

    fn commit_block(&self, addr: BlockAddr, new: BlockRef) -> Result<Option<BlockRef>, MetaError> {
        Ok(self.lock().insert(addr, new))
    }

    fn truncate_blocks(&self, file: FileId, size: u64) -> Result<Vec<BlockKey>, MetaError> {
        let mut map = self.lock();
        let mut dropped = Vec::new();
        let mut gone = Vec::new();
        for (addr, r) in map.range_mut(file_range(file)) {
            let start = u64::from(addr.chunk.0) * CHUNK_SIZE + u64::from(addr.block) * BLOCK_SIZE;
            if start >= size {
                gone.push(*addr);
                dropped.push(addr.key(r.version));
            } else if start + u64::from(r.len) > size {
                r.len = (size - start) as u32;
            }
        }
        for a in gone {
            map.remove(&a);
        }
        Ok(dropped)
    }

    fn remove_blocks(&self, file: FileId) -> Result<Vec<BlockKey>, MetaError> {
        self.truncate_blocks(file, 0)
    }

    fn is_referenced(&self, key: &BlockKey) -> Result<bool, MetaError> {
        let addr = BlockAddr {
            file: key.file,
            chunk: key.chunk,
            block: key.block,
        };
        Ok(self
            .lock()
            .get(&addr)
            .is_some_and(|r| r.version == key.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(file: u64, chunk: u32, block: u32) -> BlockAddr {
        BlockAddr {
            file: FileId(file),
            chunk: ChunkIndex(chunk),
            block,
        }
    }

    #[test]
    fn commit_replaces_and_reports_the_old_version() {
        let m = MemBlockMap::new();
        let a = addr(1, 0, 0);
        let v1 = m.allocate_version().unwrap();
        let v2 = m.allocate_version().unwrap();
        assert!(v2 > v1);
        assert_eq!(
            m.commit_block(
                a,
                BlockRef {
                    version: v1,
                    len: 10
                }
            )
            .unwrap(),
            None
        );
        assert!(m.is_referenced(&a.key(v1)).unwrap());
        let old = m
            .commit_block(
                a,
                BlockRef {
                    version: v2,
                    len: 20,
                },
            )
            .unwrap();
        assert_eq!(
            old,
            Some(BlockRef {
                version: v1,
                len: 10
            })
        );
        assert!(!m.is_referenced(&a.key(v1)).unwrap());
        assert_eq!(
            m.block(a).unwrap(),
            Some(BlockRef {
                version: v2,
                len: 20
            })
        );
    }

    #[test]
    fn truncate_drops_later_blocks_and_shortens_the_cut_one() {
        let m = MemBlockMap::new();
        let full = BLOCK_SIZE as u32;
        for (c, b) in [(0, 0), (0, 1), (0, 15), (1, 0)] {
            m.commit_block(
                addr(7, c, b),
                BlockRef {
                    version: u64::from(c * 100 + b),
                    len: full,
                },
            )
            .unwrap();
        }
        m.commit_block(
            addr(8, 0, 0),
            BlockRef {
                version: 999,
                len: full,
            },
        )
        .unwrap();
        let dropped = m.truncate_blocks(FileId(7), BLOCK_SIZE + 10).unwrap();
        assert_eq!(
            dropped,
            vec![addr(7, 0, 15).key(15), addr(7, 1, 0).key(100)]
        );
        assert_eq!(m.block(addr(7, 0, 1)).unwrap().unwrap().len, 10);
        assert_eq!(m.block(addr(7, 0, 0)).unwrap().unwrap().len, full);
        assert_eq!(m.remove_blocks(FileId(7)).unwrap().len(), 2);
        assert_eq!(m.snapshot().len(), 1, "other files untouched");
    }
}

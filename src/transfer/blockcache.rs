//! [`BlockCache`]: downloaded objects (or the ranges of them that hold
//! one block: [`Fetch`]), least recently used out first, bounded in
//! bytes. Keys name immutable object versions, so an entry is never
//! stale; it only becomes unreachable.

use bytes::Bytes;
use lru::LruCache;

use crate::blockstore::BlockKey;

/// What one download fetches: a whole object, or the bytes
/// `offset..offset + len` of it (`range`, for a block in a shared
/// object: a pack member or a clone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Fetch {
    pub key: BlockKey,
    pub range: Option<(u32, u32)>,
}

impl Fetch {
    /// The whole object `key`.
    pub(crate) fn whole(key: BlockKey) -> Fetch {
        Fetch { key, range: None }
    }
}

pub(crate) struct BlockCache {
    map: LruCache<Fetch, Bytes>,
    bytes: u64,
    capacity: u64,
}

impl BlockCache {
    pub(crate) fn new(capacity: u64) -> BlockCache {
        BlockCache {
            map: LruCache::unbounded(),
            bytes: 0,
            capacity,
        }
    }

    pub(crate) fn get(&mut self, key: &Fetch) -> Option<Bytes> {
        self.map.get(key).cloned()
    }

    pub(crate) fn contains(&self, key: &Fetch) -> bool {
        self.map.contains(key)
    }

    pub(crate) fn insert(&mut self, key: Fetch, data: Bytes) {
        if data.len() as u64 > self.capacity {
            return;
        }
        self.bytes += data.len() as u64;
        if let Some(old) = self.map.put(key, data) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > self.capacity {
            match self.map.pop_lru() {
                Some((_, b)) => self.bytes -= b.len() as u64,
                None => break,
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &Fetch) {
        if let Some(b) = self.map.pop(key) {
            self.bytes -= b.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slicefs_wal::{ChunkIndex, FileId};

    fn k(v: u64) -> Fetch {
        Fetch::whole(BlockKey {
            file: FileId(1),
            chunk: ChunkIndex(0),
            block: 0,
            version: v,
        })
    }

    #[test]
    fn evicts_least_recently_used_past_capacity() {
        let mut c = BlockCache::new(10);
        c.insert(k(1), Bytes::from(vec![1; 4]));
        c.insert(k(2), Bytes::from(vec![2; 4]));
        assert!(c.get(&k(1)).is_some());
        c.insert(k(3), Bytes::from(vec![3; 4]));
        assert!(c.contains(&k(1)) && c.contains(&k(3)));
        assert!(!c.contains(&k(2)));
        c.insert(k(4), Bytes::from(vec![0; 11]));
        assert!(!c.contains(&k(4)), "larger than the cache: not kept");
        c.remove(&k(1));
        assert_eq!(c.bytes, 4);
    }
}

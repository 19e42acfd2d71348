//! The in-memory backend of [`MetaStore`](super::MetaStore): maps under
//! one mutex; a failed transaction is rolled back from an undo log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use super::ops::Tx;
use super::store::{Backend, Barrier, TxMode};
use super::types::{DirEntry, FileKind, Ino, Inode, Usage};
use super::{BlockAddr, BlockRef};
use crate::blockstore::BlockKey;
use crate::error::FsError;
use slicefs_wal::{ChunkIndex, FileId};

type Result<T> = std::result::Result<T, FsError>;

#[derive(Default)]
struct State {
    inodes: HashMap<Ino, Inode>,
    /// (parent, name) -> (ino, kind, cookie)
    dentries: BTreeMap<(Ino, Vec<u8>), (Ino, FileKind, u64)>,
    /// (parent, cookie) -> name
    by_cookie: BTreeMap<(Ino, u64), Vec<u8>>,
    symlinks: HashMap<Ino, Vec<u8>>,
    xattrs: BTreeMap<(Ino, Vec<u8>), Vec<u8>>,
    blocks: BTreeMap<BlockAddr, BlockRef>,
    /// The blocks holding each object version (clones share one).
    version_refs: HashMap<u64, BTreeSet<BlockAddr>>,
    doomed: BTreeSet<BlockKey>,
    counters: HashMap<&'static str, u64>,
}

impl State {
    /// Sets (or with `None` removes) the block at `addr`, keeping the
    /// per-version reference counts; returns what was there.
    fn set_block(&mut self, addr: BlockAddr, r: Option<BlockRef>) -> Option<BlockRef> {
        let old = match r {
            Some(r) => self.blocks.insert(addr, r),
            None => self.blocks.remove(&addr),
        };
        if let Some(o) = old
            && let Some(set) = self.version_refs.get_mut(&o.version)
        {
            set.remove(&addr);
            if set.is_empty() {
                self.version_refs.remove(&o.version);
            }
        }
        if let Some(r) = r {
            self.version_refs.entry(r.version).or_default().insert(addr);
        }
        old
    }
}

enum Undo {
    Inode(Ino, Option<Inode>),
    Dentry((Ino, Vec<u8>), Option<(Ino, FileKind, u64)>),
    Symlink(Ino, Option<Vec<u8>>),
    Xattr((Ino, Vec<u8>), Option<Vec<u8>>),
    Block(BlockAddr, Option<BlockRef>),
    /// A doomed key and whether it was on the list before.
    Doomed(BlockKey, bool),
    Counter(&'static str, Option<u64>),
}

/// The memory backend.
pub(crate) struct MemBackend {
    state: Mutex<State>,
}

impl Default for MemBackend {
    /// Block versions start at the clock in nanoseconds, so that a new
    /// memory store over an old block store does not hand out a version
    /// an earlier run used.
    fn default() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut state = State::default();
        state.counters.insert("version", now);
        MemBackend {
            state: Mutex::new(state),
        }
    }
}

struct MemTx<'a> {
    s: &'a mut State,
    undo: Vec<Undo>,
}

impl MemTx<'_> {
    fn set_dentry(&mut self, key: (Ino, Vec<u8>), v: Option<(Ino, FileKind, u64)>) {
        let old = match v {
            Some(v) => self.s.dentries.insert(key.clone(), v),
            None => self.s.dentries.remove(&key),
        };
        if let Some((_, _, c)) = old {
            self.s.by_cookie.remove(&(key.0, c));
        }
        if let Some((_, _, c)) = v {
            self.s.by_cookie.insert((key.0, c), key.1.clone());
        }
        self.undo.push(Undo::Dentry(key, old));
    }

    fn rollback(mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Inode(k, v) => {
                    match v {
                        Some(v) => self.s.inodes.insert(k, v),
                        None => self.s.inodes.remove(&k),
                    };
                }
                Undo::Dentry(k, v) => {
                    let cur = match v {
                        Some(v) => self.s.dentries.insert(k.clone(), v),
                        None => self.s.dentries.remove(&k),
                    };
                    if let Some((_, _, c)) = cur {
                        self.s.by_cookie.remove(&(k.0, c));
                    }
                    if let Some((_, _, c)) = v {
                        self.s.by_cookie.insert((k.0, c), k.1.clone());
                    }
                }
                Undo::Symlink(k, v) => {
                    match v {
                        Some(v) => self.s.symlinks.insert(k, v),
                        None => self.s.symlinks.remove(&k),
                    };
                }
                Undo::Xattr(k, v) => {
                    match v {
                        Some(v) => self.s.xattrs.insert(k, v),
                        None => self.s.xattrs.remove(&k),
                    };
                }
                Undo::Block(k, v) => {
                    self.s.set_block(k, v);
                }
                Undo::Doomed(k, was) => {
                    if was {
                        self.s.doomed.insert(k);
                    } else {
                        self.s.doomed.remove(&k);
                    }
                }
                Undo::Counter(k, v) => {
                    match v {
                        Some(v) => self.s.counters.insert(k, v),
                        None => self.s.counters.remove(k),
                    };
                }
            }
        }
    }
}

fn file_blocks(ino: Ino) -> std::ops::RangeInclusive<BlockAddr> {
    BlockAddr {
        file: FileId(ino.0),
        chunk: ChunkIndex(0),
        block: 0,
    }..=BlockAddr {
        file: FileId(ino.0),
        chunk: ChunkIndex(u32::MAX),
        block: u32::MAX,
    }
}

impl Tx for MemTx<'_> {
    fn inode(&mut self, ino: Ino) -> Result<Option<Inode>> {
        Ok(self.s.inodes.get(&ino).cloned())
    }

    fn put_inode(&mut self, inode: &Inode) -> Result<()> {
        let old = self.s.inodes.insert(inode.ino, inode.clone());
        self.undo.push(Undo::Inode(inode.ino, old));
        Ok(())
    }

    fn delete_inode(&mut self, ino: Ino) -> Result<()> {
        let old = self.s.inodes.remove(&ino);
        self.undo.push(Undo::Inode(ino, old));
        let old = self.s.symlinks.remove(&ino);
        self.undo.push(Undo::Symlink(ino, old));
        for name in self.xattr_names(ino)? {
            self.delete_xattr(ino, &name)?;
        }
        let addrs: Vec<BlockAddr> = self
            .s
            .blocks
            .range(file_blocks(ino))
            .map(|(a, _)| *a)
            .collect();
        for a in addrs {
            self.delete_block(a)?;
        }
        Ok(())
    }

    fn dentry(&mut self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, FileKind)>> {
        Ok(self
            .s
            .dentries
            .get(&(parent, name.to_vec()))
            .map(|(i, k, _)| (*i, *k)))
    }

    fn put_dentry(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileKind,
        cookie: u64,
    ) -> Result<()> {
        self.set_dentry((parent, name.to_vec()), Some((ino, kind, cookie)));
        Ok(())
    }

    fn delete_dentry(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        self.set_dentry((parent, name.to_vec()), None);
        Ok(())
    }

    fn dir_has_entries(&mut self, dir: Ino) -> Result<bool> {
        Ok(self
            .s
            .by_cookie
            .range((dir, 0)..=(dir, u64::MAX))
            .next()
            .is_some())
    }

    fn list_dir(&mut self, dir: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        let start = after.saturating_add(1);
        Ok(self
            .s
            .by_cookie
            .range((dir, start)..=(dir, u64::MAX))
            .take(limit)
            .map(|((_, cookie), name)| {
                let (ino, kind, _) = self.s.dentries[&(dir, name.clone())];
                DirEntry {
                    name: name.clone(),
                    ino,
                    kind,
                    cookie: *cookie,
                }
            })
            .collect())
    }

    fn next(&mut self, counter: &'static str) -> Result<u64> {
        let old = self.s.counters.get(counter).copied();
        let v = old.unwrap_or(0) + 1;
        self.s.counters.insert(counter, v);
        self.undo.push(Undo::Counter(counter, old));
        Ok(v)
    }

    fn counter(&mut self, counter: &'static str) -> Result<u64> {
        Ok(self.s.counters.get(counter).copied().unwrap_or(0))
    }

    fn set_counter(&mut self, counter: &'static str, value: u64) -> Result<()> {
        let old = self.s.counters.insert(counter, value);
        self.undo.push(Undo::Counter(counter, old));
        Ok(())
    }

    fn symlink(&mut self, ino: Ino) -> Result<Option<Vec<u8>>> {
        Ok(self.s.symlinks.get(&ino).cloned())
    }

    fn put_symlink(&mut self, ino: Ino, target: &[u8]) -> Result<()> {
        let old = self.s.symlinks.insert(ino, target.to_vec());
        self.undo.push(Undo::Symlink(ino, old));
        Ok(())
    }

    fn xattr(&mut self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.s.xattrs.get(&(ino, name.to_vec())).cloned())
    }

    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()> {
        let k = (ino, name.to_vec());
        let old = self.s.xattrs.insert(k.clone(), value.to_vec());
        self.undo.push(Undo::Xattr(k, old));
        Ok(())
    }

    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> Result<bool> {
        let k = (ino, name.to_vec());
        let old = self.s.xattrs.remove(&k);
        let existed = old.is_some();
        self.undo.push(Undo::Xattr(k, old));
        Ok(existed)
    }

    fn xattr_names(&mut self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .s
            .xattrs
            .range((ino, Vec::new())..)
            .take_while(|((i, _), _)| *i == ino)
            .map(|((_, n), _)| n.clone())
            .collect())
    }

    fn any_xattr(&mut self) -> Result<bool> {
        Ok(!self.s.xattrs.is_empty())
    }

    fn block(&mut self, addr: BlockAddr) -> Result<Option<BlockRef>> {
        Ok(self.s.blocks.get(&addr).copied())
    }

    fn put_block(&mut self, addr: BlockAddr, r: BlockRef) -> Result<()> {
        let old = self.s.set_block(addr, Some(r));
        self.undo.push(Undo::Block(addr, old));
        Ok(())
    }

    fn delete_block(&mut self, addr: BlockAddr) -> Result<()> {
        let old = self.s.set_block(addr, None);
        self.undo.push(Undo::Block(addr, old));
        Ok(())
    }

    fn version_refs(&mut self, version: u64) -> Result<u64> {
        Ok(self
            .s
            .version_refs
            .get(&version)
            .map_or(0, |s| s.len() as u64))
    }

    fn version_rows(&mut self, version: u64) -> Result<Vec<(BlockAddr, BlockRef)>> {
        Ok(self
            .s
            .version_refs
            .get(&version)
            .into_iter()
            .flatten()
            .filter_map(|a| Some((*a, *self.s.blocks.get(a)?)))
            .collect())
    }

    fn doom(&mut self, key: BlockKey) -> Result<()> {
        let was = !self.s.doomed.insert(key);
        self.undo.push(Undo::Doomed(key, was));
        Ok(())
    }

    fn doomed(&mut self) -> Result<Vec<BlockKey>> {
        Ok(self.s.doomed.iter().copied().collect())
    }

    fn forget_doomed(&mut self, key: BlockKey) -> Result<()> {
        let was = self.s.doomed.remove(&key);
        self.undo.push(Undo::Doomed(key, was));
        Ok(())
    }

    fn file_blocks(&mut self, ino: Ino) -> Result<Vec<(BlockAddr, BlockRef)>> {
        Ok(self
            .s
            .blocks
            .range(file_blocks(ino))
            .map(|(a, r)| (*a, *r))
            .collect())
    }

    fn inodes_past(&mut self, lsn: u64) -> Result<Vec<Ino>> {
        let mut v: Vec<Ino> = self
            .s
            .inodes
            .values()
            .filter(|i| i.size_lsn > lsn || i.truncate_lsn > lsn)
            .map(|i| i.ino)
            .collect();
        v.sort();
        Ok(v)
    }

    fn max_inode_lsn(&mut self) -> Result<u64> {
        Ok(self
            .s
            .inodes
            .values()
            .map(|i| i.size_lsn.max(i.truncate_lsn))
            .max()
            .unwrap_or(0))
    }

    fn all_inodes(&mut self) -> Result<Vec<Inode>> {
        Ok(self.s.inodes.values().cloned().collect())
    }

    fn all_dentries(&mut self) -> Result<Vec<(Ino, DirEntry)>> {
        Ok(self
            .s
            .dentries
            .iter()
            .map(|((parent, name), (ino, kind, cookie))| {
                (
                    *parent,
                    DirEntry {
                        name: name.clone(),
                        ino: *ino,
                        kind: *kind,
                        cookie: *cookie,
                    },
                )
            })
            .collect())
    }

    fn all_blocks(&mut self) -> Result<Vec<(BlockAddr, BlockRef)>> {
        Ok(self.s.blocks.iter().map(|(a, r)| (*a, *r)).collect())
    }

    fn orphans(&mut self) -> Result<Vec<Ino>> {
        let mut v: Vec<Ino> = self
            .s
            .inodes
            .values()
            .filter(|i| i.nlink == 0)
            .map(|i| i.ino)
            .collect();
        v.sort();
        Ok(v)
    }

    fn usage(&mut self) -> Result<Usage> {
        Ok(Usage {
            inodes: self.s.inodes.len() as u64,
            bytes: self
                .s
                .inodes
                .values()
                .filter(|i| i.kind == FileKind::Regular)
                .map(|i| i.size)
                .sum(),
        })
    }
}

impl Backend for MemBackend {
    fn run(
        &self,
        mode: TxMode,
        _barrier: Barrier<'_>,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut tx = MemTx {
            s: &mut s,
            undo: Vec::new(),
        };
        let r = f(&mut tx);
        if r.is_err() || mode == TxMode::Read {
            tx.rollback();
        }
        r
    }
}

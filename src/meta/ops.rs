//! The namespace rules, written once over `Tx` (one transaction of a
//! backend): every operation here runs inside one transaction, so it
//! applies whole or not at all. Backends (`sqlite`, `memory`) only store
//! rows.

use super::types::{
    DirEntry, DirPage, FileKind, Ino, Inode, NewNode, RenameFlags, SetAttr, Timespec, Usage,
};
use super::{BlockAddr, BlockRef};
use crate::blockstore::BlockKey;
use crate::error::FsError;
use slicefs_wal::FileId;

/// Longest name of a directory entry, in bytes (as ext4).
pub const NAME_MAX: usize = 255;
/// Most hard links of one file.
pub const LINK_MAX: u32 = 65_000;

type Result<T> = std::result::Result<T, FsError>;

/// Row access inside one transaction.
pub(crate) trait Tx {
    fn inode(&mut self, ino: Ino) -> Result<Option<Inode>>;
    fn put_inode(&mut self, inode: &Inode) -> Result<()>;
    /// Deletes the inode, its symlink target, xattrs and block map rows.
    fn delete_inode(&mut self, ino: Ino) -> Result<()>;
    fn dentry(&mut self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, FileKind)>>;
    fn put_dentry(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileKind,
        cookie: u64,
    ) -> Result<()>;
    fn delete_dentry(&mut self, parent: Ino, name: &[u8]) -> Result<()>;
    fn dir_has_entries(&mut self, dir: Ino) -> Result<bool>;
    fn list_dir(&mut self, dir: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>>;
    /// [`Tx::list_dir`] with each entry's inode (for `readdirplus`).
    fn list_dir_plus(
        &mut self,
        dir: Ino,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, Inode)>> {
        let mut out = Vec::new();
        for e in self.list_dir(dir, after, limit)? {
            let i = get(self, e.ino)?;
            out.push((e, i));
        }
        Ok(out)
    }
    /// The next value of a named counter (`ino`, `version`, `cookie`).
    fn next(&mut self, counter: &'static str) -> Result<u64>;
    /// The value of a named counter (0 if never set).
    fn counter(&mut self, counter: &'static str) -> Result<u64>;
    /// Sets a named counter.
    fn set_counter(&mut self, counter: &'static str, value: u64) -> Result<()>;
    fn symlink(&mut self, ino: Ino) -> Result<Option<Vec<u8>>>;
    fn put_symlink(&mut self, ino: Ino, target: &[u8]) -> Result<()>;
    fn xattr(&mut self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()>;
    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> Result<bool>;
    fn xattr_names(&mut self, ino: Ino) -> Result<Vec<Vec<u8>>>;
    /// Whether any inode has an extended attribute.
    fn any_xattr(&mut self) -> Result<bool>;
    fn block(&mut self, addr: BlockAddr) -> Result<Option<BlockRef>>;
    fn put_block(&mut self, addr: BlockAddr, r: BlockRef) -> Result<()>;
    fn delete_block(&mut self, addr: BlockAddr) -> Result<()>;
    /// How many blocks reference object version `version` (clones share
    /// one object).
    fn version_refs(&mut self, version: u64) -> Result<u64>;
    /// The blocks that reference object version `version`.
    fn version_rows(&mut self, version: u64) -> Result<Vec<(BlockAddr, BlockRef)>>;
    fn file_blocks(&mut self, ino: Ino) -> Result<Vec<(BlockAddr, BlockRef)>>;
    /// Records that object `key` is no longer referenced and must be
    /// deleted from the store (the doomed list).
    fn doom(&mut self, key: BlockKey) -> Result<()>;
    /// The doomed list: objects dropped and not yet deleted.
    fn doomed(&mut self) -> Result<Vec<BlockKey>>;
    /// Takes `key` off the doomed list (its object is deleted).
    fn forget_doomed(&mut self, key: BlockKey) -> Result<()>;
    fn orphans(&mut self) -> Result<Vec<Ino>>;
    /// Every inode (fsck).
    fn all_inodes(&mut self) -> Result<Vec<Inode>>;
    /// Every dentry as (parent, entry) (fsck).
    fn all_dentries(&mut self) -> Result<Vec<(Ino, DirEntry)>>;
    /// Every block map row (fsck).
    fn all_blocks(&mut self) -> Result<Vec<(BlockAddr, BlockRef)>>;
    /// Inodes whose size or last truncate depends on a log record past
    /// `lsn` (`size_lsn` or `truncate_lsn` above it).
    fn inodes_past(&mut self, lsn: u64) -> Result<Vec<Ino>>;
    /// The largest `size_lsn` or `truncate_lsn` of any inode (0: none).
    fn max_inode_lsn(&mut self) -> Result<u64>;
    fn usage(&mut self) -> Result<Usage>;
    /// Whether another host's session holds `ino` open (a shared volume;
    /// see `meta/postgres.rs`): its data must stay until that host
    /// closes it or its session is cleaned up.
    fn held_elsewhere(&mut self, _ino: Ino) -> Result<bool> {
        Ok(false)
    }
    /// Records (`on`) or drops that this host holds `ino` open.
    fn hold(&mut self, _ino: Ino, _on: bool) -> Result<()> {
        Ok(())
    }
    /// Starts this host's session: registered with a heartbeat, and the
    /// holds of an earlier run of this host (which crashed) dropped.
    fn session_begin(&mut self) -> Result<()> {
        Ok(())
    }
    /// Refreshes this host's heartbeat and, with `clean`, cleans up after
    /// every other session silent for `timeout`: its holds are dropped
    /// and its orphans become this host's to free. Returns the sessions
    /// cleaned, and whether this host's own session was gone (another
    /// host took it for dead: its holds must be made again).
    fn session_tick(&mut self, _timeout: std::time::Duration, _clean: bool) -> Result<(u64, bool)> {
        Ok((0, false))
    }
    /// Ends this host's session (a clean stop): its row and holds go.
    fn session_end(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a namespace operation asks of the caller's permission policy,
/// inside its transaction (so the check and the change see the same
/// rows, with no lock around two transactions). The order of the calls
/// follows Linux's: `ENOTDIR` of the directory first, then the
/// directory's permission, then `ENOENT`, then the sticky bit, then the
/// victim's type.
#[derive(Debug, Clone, Copy)]
pub enum Check<'a> {
    /// Looking a name up in `dir` (search permission).
    Search(&'a Inode),
    /// Adding or removing entries of `dir` (write and search).
    Modify(&'a Inode),
    /// Removing or replacing `victim`'s entry in `dir` (the sticky bit).
    Remove {
        /// The directory.
        dir: &'a Inode,
        /// The inode whose entry goes.
        victim: &'a Inode,
    },
    /// Moving directory `moved` to another parent (its `..` changes:
    /// write permission on it).
    Reparent(&'a Inode),
}

/// A permission policy: `Err` refuses the operation, and its transaction
/// changes nothing.
pub type Policy<'a> = &'a dyn Fn(Check<'_>) -> Result<()>;

/// The policy that allows everything (internal callers, tests).
pub fn allow_all(_: Check<'_>) -> Result<()> {
    Ok(())
}

/// Checks a name for a new directory entry.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." {
        return Err(FsError::Invalid("empty, '.' or '..' as a new name"));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid("'/' or NUL in a name"));
    }
    Ok(())
}

fn get<T: Tx + ?Sized>(tx: &mut T, ino: Ino) -> Result<Inode> {
    tx.inode(ino)?.ok_or(FsError::NotFound)
}

fn dir(tx: &mut dyn Tx, ino: Ino) -> Result<Inode> {
    let d = get(tx, ino)?;
    if d.kind != FileKind::Directory {
        return Err(FsError::NotDir);
    }
    Ok(d)
}

/// Creates the root directory if the store is empty.
pub(crate) fn init_root(tx: &mut dyn Tx, uid: u32, gid: u32, now: Timespec) -> Result<()> {
    if tx.inode(Ino::ROOT)?.is_some() {
        return Ok(());
    }
    // A new filesystem names its objects in the current layout; one made
    // before the counter existed has none (layout 1).
    tx.set_counter(
        "store_layout",
        crate::blockstore::KeyLayout::default().number(),
    )?;
    // Counter `ino` starts at 1: the root takes it.
    let ino = tx.next("ino")?;
    debug_assert_eq!(ino, Ino::ROOT.0);
    tx.put_inode(&Inode {
        ino: Ino::ROOT,
        kind: FileKind::Directory,
        perm: 0o755,
        uid,
        gid,
        size: 0,
        nlink: 2,
        atime: now,
        mtime: now,
        ctime: now,
        rdev: 0,
        parent: Ino::ROOT,
        truncate_lsn: 0,
        size_lsn: 0,
        synced_size: 0,
        alloc: 0,
    })
}

pub(crate) fn lookup(
    tx: &mut dyn Tx,
    parent: Ino,
    name: &[u8],
    policy: Policy<'_>,
) -> Result<Inode> {
    let p = dir(tx, parent)?;
    policy(Check::Search(&p))?;
    if name == b"." {
        return Ok(p);
    }
    if name == b".." {
        return get(tx, p.parent);
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    match tx.dentry(parent, name)? {
        Some((ino, _)) => get(tx, ino),
        None => Err(FsError::NotFound),
    }
}

fn touch_dir(tx: &mut dyn Tx, d: &mut Inode, now: Timespec) -> Result<()> {
    d.mtime = now;
    d.ctime = now;
    tx.put_inode(d)
}

/// Creates `name` in `parent`; `node` gives the new inode's settings
/// from the parent (after the policy allowed the change: set-group-id
/// directories pass on their group).
pub(crate) fn create<'t>(
    tx: &mut dyn Tx,
    parent: Ino,
    name: &[u8],
    node: &dyn Fn(&Inode) -> Result<NewNode<'t>>,
    now: Timespec,
    policy: Policy<'_>,
) -> Result<Inode> {
    check_name(name)?;
    let mut p = dir(tx, parent)?;
    policy(Check::Modify(&p))?;
    if p.nlink == 0 {
        return Err(FsError::NotFound);
    }
    if tx.dentry(parent, name)?.is_some() {
        return Err(FsError::Exists);
    }
    let node = &node(&p)?;
    let ino = Ino(tx.next("ino")?);
    let is_dir = node.kind == FileKind::Directory;
    let size = node.target.map_or(0, |t| t.len() as u64);
    let inode = Inode {
        ino,
        kind: node.kind,
        perm: node.perm & 0o7777,
        uid: node.uid,
        gid: node.gid,
        size,
        nlink: if is_dir { 2 } else { 1 },
        atime: now,
        mtime: now,
        ctime: now,
        rdev: node.rdev,
        parent: if is_dir { parent } else { Ino(0) },
        truncate_lsn: 0,
        size_lsn: 0,
        synced_size: 0,
        alloc: 0,
    };
    tx.put_inode(&inode)?;
    if let Some(t) = node.target {
        tx.put_symlink(ino, t)?;
    }
    let cookie = tx.next("cookie")?;
    tx.put_dentry(parent, name, ino, node.kind, cookie)?;
    if is_dir {
        p.nlink += 1;
    }
    touch_dir(tx, &mut p, now)?;
    Ok(inode)
}

pub(crate) fn link(
    tx: &mut dyn Tx,
    ino: Ino,
    parent: Ino,
    name: &[u8],
    now: Timespec,
    policy: Policy<'_>,
) -> Result<Inode> {
    check_name(name)?;
    let mut p = dir(tx, parent)?;
    policy(Check::Modify(&p))?;
    let mut f = get(tx, ino)?;
    if f.kind == FileKind::Directory {
        return Err(FsError::NotPermitted);
    }
    if f.nlink >= LINK_MAX {
        return Err(FsError::TooManyLinks);
    }
    if p.nlink == 0 {
        return Err(FsError::NotFound);
    }
    if tx.dentry(parent, name)?.is_some() {
        return Err(FsError::Exists);
    }
    let cookie = tx.next("cookie")?;
    tx.put_dentry(parent, name, ino, f.kind, cookie)?;
    f.nlink += 1;
    f.ctime = now;
    tx.put_inode(&f)?;
    touch_dir(tx, &mut p, now)?;
    Ok(f)
}

/// The directory `parent` and the inode of its entry `name`, once the
/// policy allowed removing that entry (write permission on the
/// directory, then the sticky bit).
fn victim(tx: &mut dyn Tx, parent: Ino, name: &[u8], policy: Policy<'_>) -> Result<(Inode, Inode)> {
    let p = dir(tx, parent)?;
    policy(Check::Modify(&p))?;
    let (ino, _) = tx.dentry(parent, name)?.ok_or(FsError::NotFound)?;
    let v = get(tx, ino)?;
    policy(Check::Remove {
        dir: &p,
        victim: &v,
    })?;
    Ok((p, v))
}

/// Removes a non-directory entry; returns the inode with its new link
/// count (0: the caller frees it once no handle is open).
pub(crate) fn unlink(
    tx: &mut dyn Tx,
    parent: Ino,
    name: &[u8],
    now: Timespec,
    policy: Policy<'_>,
) -> Result<Inode> {
    let (mut p, mut f) = victim(tx, parent, name, policy)?;
    if f.kind == FileKind::Directory {
        return Err(FsError::IsDir);
    }
    tx.delete_dentry(parent, name)?;
    f.nlink = f.nlink.saturating_sub(1);
    f.ctime = now;
    tx.put_inode(&f)?;
    touch_dir(tx, &mut p, now)?;
    Ok(f)
}

/// Removes an empty directory; returns it (link count 0).
pub(crate) fn rmdir(
    tx: &mut dyn Tx,
    parent: Ino,
    name: &[u8],
    now: Timespec,
    policy: Policy<'_>,
) -> Result<Inode> {
    if name == b"." {
        return Err(FsError::Invalid("rmdir of '.'"));
    }
    if name == b".." {
        return Err(FsError::NotEmpty);
    }
    let (mut p, mut d) = victim(tx, parent, name, policy)?;
    if d.kind != FileKind::Directory {
        return Err(FsError::NotDir);
    }
    let ino = d.ino;
    if tx.dir_has_entries(ino)? {
        return Err(FsError::NotEmpty);
    }
    tx.delete_dentry(parent, name)?;
    d.nlink = 0;
    d.ctime = now;
    tx.put_inode(&d)?;
    p.nlink = p.nlink.saturating_sub(1);
    touch_dir(tx, &mut p, now)?;
    Ok(d)
}

/// Whether `dir` is `ancestor` or below it.
fn is_within(tx: &mut dyn Tx, mut dir: Ino, ancestor: Ino) -> Result<bool> {
    // Bounded by the tree's depth; a cycle would be corruption.
    for _ in 0..100_000 {
        if dir == ancestor {
            return Ok(true);
        }
        if dir == Ino::ROOT {
            return Ok(false);
        }
        dir = get(tx, dir)?.parent;
    }
    Err(FsError::io(
        "rename",
        "directory tree deeper than 100000 or cyclic",
    ))
}

/// Renames `parent/name` to `new_parent/new_name`. Returns the inode the
/// target name held before (its link count already lowered; 0: free it
/// once unused), if any and not exchanged.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rename(
    tx: &mut dyn Tx,
    parent: Ino,
    name: &[u8],
    new_parent: Ino,
    new_name: &[u8],
    flags: RenameFlags,
    now: Timespec,
    policy: Policy<'_>,
) -> Result<Option<Inode>> {
    if flags.noreplace && flags.exchange {
        return Err(FsError::Invalid("RENAME_NOREPLACE with RENAME_EXCHANGE"));
    }
    let p = dir(tx, parent)?;
    let np = if new_parent == parent {
        p.clone()
    } else {
        dir(tx, new_parent)?
    };
    policy(Check::Modify(&p))?;
    policy(Check::Modify(&np))?;
    if name == b"." || name == b".." {
        return Err(FsError::Invalid("rename of '.' or '..'"));
    }
    check_name(new_name)?;
    let (src_ino, src_kind) = tx.dentry(parent, name)?.ok_or(FsError::NotFound)?;
    let src = get(tx, src_ino)?;
    policy(Check::Remove {
        dir: &p,
        victim: &src,
    })?;
    let dst = tx.dentry(new_parent, new_name)?;
    if let Some((dst_ino, _)) = dst {
        let victim = get(tx, dst_ino)?;
        policy(Check::Remove {
            dir: &np,
            victim: &victim,
        })?;
    }
    if src_kind == FileKind::Directory && parent != new_parent {
        policy(Check::Reparent(&src))?;
    }
    if src_kind == FileKind::Directory && is_within(tx, new_parent, src_ino)? {
        return Err(FsError::Invalid("a directory moved below itself"));
    }
    if flags.exchange {
        let (dst_ino, dst_kind) = dst.ok_or(FsError::NotFound)?;
        if dst_ino == src_ino {
            return Ok(None);
        }
        if dst_kind == FileKind::Directory && is_within(tx, parent, dst_ino)? {
            return Err(FsError::Invalid("a directory moved below itself"));
        }
        let c1 = tx.next("cookie")?;
        let c2 = tx.next("cookie")?;
        tx.put_dentry(parent, name, dst_ino, dst_kind, c1)?;
        tx.put_dentry(new_parent, new_name, src_ino, src_kind, c2)?;
        for (ino, new_dir) in [(src_ino, new_parent), (dst_ino, parent)] {
            let mut f = get(tx, ino)?;
            if f.kind == FileKind::Directory {
                f.parent = new_dir;
            }
            f.ctime = now;
            tx.put_inode(&f)?;
        }
        let src_dir = src_kind == FileKind::Directory;
        let dst_dir = dst_kind == FileKind::Directory;
        if parent != new_parent && src_dir != dst_dir {
            let (gain, lose) = if src_dir {
                (new_parent, parent)
            } else {
                (parent, new_parent)
            };
            let mut g = get(tx, gain)?;
            g.nlink += 1;
            tx.put_inode(&g)?;
            let mut l = get(tx, lose)?;
            l.nlink = l.nlink.saturating_sub(1);
            tx.put_inode(&l)?;
        }
        for d in [parent, new_parent] {
            let mut d = get(tx, d)?;
            touch_dir(tx, &mut d, now)?;
        }
        return Ok(None);
    }
    let mut replaced = None;
    if let Some((dst_ino, dst_kind)) = dst {
        if flags.noreplace {
            return Err(FsError::Exists);
        }
        if dst_ino == src_ino {
            // Two links to one file, or the same name: nothing to do.
            return Ok(None);
        }
        match (
            src_kind == FileKind::Directory,
            dst_kind == FileKind::Directory,
        ) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            (true, true) if tx.dir_has_entries(dst_ino)? => return Err(FsError::NotEmpty),
            _ => {}
        }
        let mut old = get(tx, dst_ino)?;
        tx.delete_dentry(new_parent, new_name)?;
        if old.kind == FileKind::Directory {
            old.nlink = 0;
            let mut np = get(tx, new_parent)?;
            np.nlink = np.nlink.saturating_sub(1);
            tx.put_inode(&np)?;
        } else {
            old.nlink = old.nlink.saturating_sub(1);
        }
        old.ctime = now;
        tx.put_inode(&old)?;
        replaced = Some(old);
    }
    tx.delete_dentry(parent, name)?;
    let cookie = tx.next("cookie")?;
    tx.put_dentry(new_parent, new_name, src_ino, src_kind, cookie)?;
    let mut f = get(tx, src_ino)?;
    f.ctime = now;
    if f.kind == FileKind::Directory && parent != new_parent {
        f.parent = new_parent;
        let mut op = get(tx, parent)?;
        op.nlink = op.nlink.saturating_sub(1);
        tx.put_inode(&op)?;
        let mut np = get(tx, new_parent)?;
        np.nlink += 1;
        tx.put_inode(&np)?;
    }
    tx.put_inode(&f)?;
    for d in [parent, new_parent] {
        let mut d = get(tx, d)?;
        touch_dir(tx, &mut d, now)?;
    }
    Ok(replaced)
}

pub(crate) fn setattr(tx: &mut dyn Tx, ino: Ino, set: &SetAttr) -> Result<Inode> {
    let mut f = get(tx, ino)?;
    if let Some(p) = set.perm {
        f.perm = p & 0o7777;
    }
    if let Some(u) = set.uid {
        f.uid = u;
    }
    if let Some(g) = set.gid {
        f.gid = g;
    }
    if let Some(s) = set.size {
        if f.kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        f.size = s;
    }
    if let Some(g) = set.grow_size {
        f.size = f.size.max(g);
    }
    if let Some(t) = set.atime {
        f.atime = t;
    }
    if let Some(t) = set.mtime {
        f.mtime = t;
    }
    if let Some(t) = set.ctime {
        f.ctime = t;
    }
    if let Some(l) = set.truncate_lsn {
        f.truncate_lsn = f.truncate_lsn.max(l);
    }
    if let Some(l) = set.size_lsn {
        f.size_lsn = f.size_lsn.max(l);
    }
    if let Some(s) = set.synced_size {
        f.synced_size = s;
    }
    tx.put_inode(&f)?;
    Ok(f)
}

/// Cuts the block map of `ino` to `size`; returns the objects dropped.
pub(crate) fn truncate_blocks(tx: &mut dyn Tx, ino: Ino, size: u64) -> Result<Vec<BlockKey>> {
    let mut dropped = Vec::new();
    let mut freed = 0u64;
    for (addr, mut r) in tx.file_blocks(ino)? {
        let start = addr.file_offset();
        if start >= size {
            tx.delete_block(addr)?;
            dropped.extend(released(tx, addr, r)?);
            freed += u64::from(r.len);
        } else if start + u64::from(r.len) > size {
            let len = (size - start) as u32;
            freed += u64::from(r.len - len);
            r.len = len;
            tx.put_block(addr, r)?;
        }
    }
    if freed > 0
        && let Some(mut f) = tx.inode(ino)?
    {
        f.alloc = f.alloc.saturating_sub(freed);
        tx.put_inode(&f)?;
    }
    Ok(dropped)
}

/// Drops the blocks of `ino` that lie wholly inside `from..to` (a hole
/// punched there); returns the objects dropped. Blocks that the range
/// only overlaps are left alone (the caller zeroes their part).
pub(crate) fn punch_blocks(tx: &mut dyn Tx, ino: Ino, from: u64, to: u64) -> Result<Vec<BlockKey>> {
    let mut dropped = Vec::new();
    let mut freed = 0u64;
    for (addr, r) in tx.file_blocks(ino)? {
        let start = addr.file_offset();
        if start >= from && start + slicefs_cache::BLOCK_SIZE <= to {
            tx.delete_block(addr)?;
            dropped.extend(released(tx, addr, r)?);
            freed += u64::from(r.len);
        }
    }
    if freed > 0
        && let Some(mut f) = tx.inode(ino)?
    {
        f.alloc = f.alloc.saturating_sub(freed);
        tx.put_inode(&f)?;
    }
    Ok(dropped)
}

/// The object `r` named for the block at `addr`, whose reference the
/// transaction just deleted or replaced: put on the doomed list and
/// returned if no block references it any more (a clone may).
pub(crate) fn released(tx: &mut dyn Tx, addr: BlockAddr, r: BlockRef) -> Result<Option<BlockKey>> {
    if tx.version_refs(r.version)? > 0 {
        return Ok(None);
    }
    let k = r.key(addr);
    tx.doom(k)?;
    Ok(Some(k))
}

/// Makes block `k` of `dst` from `dst_at` reference the object of block
/// `k` of `src` from `src_at`, for each `k` in `which` (both offsets
/// 4 MiB-aligned; a block `src` does not have becomes a hole in `dst`):
/// `copy_file_range` as a clone, no bytes moved. `dst`'s size grows to
/// cover what it now references, as a commit's does. Returns the objects
/// no longer referenced.
pub(crate) fn clone_blocks(
    tx: &mut dyn Tx,
    src: Ino,
    src_at: u64,
    dst: Ino,
    dst_at: u64,
    which: &[u64],
) -> Result<Vec<BlockKey>> {
    let block = slicefs_cache::BLOCK_SIZE;
    let Some(mut f) = tx.inode(dst)? else {
        return Err(FsError::NotFound);
    };
    let before = (f.size, f.alloc);
    let mut dropped = Vec::new();
    for &k in which {
        let sa = BlockAddr::at(FileId(src.0), src_at + k * block);
        let da = BlockAddr::at(FileId(dst.0), dst_at + k * block);
        let new = tx.block(sa)?.map(|r| BlockRef {
            origin: Some(r.origin.unwrap_or(sa)),
            ..r
        });
        let old = tx.block(da)?;
        match new {
            Some(n) => {
                tx.put_block(da, n)?;
                f.size = f.size.max(da.file_offset() + u64::from(n.len));
                f.alloc += u64::from(n.len);
            }
            None if old.is_some() => tx.delete_block(da)?,
            None => {}
        }
        if let Some(o) = old {
            f.alloc = f.alloc.saturating_sub(u64::from(o.len));
            dropped.extend(released(tx, da, o)?);
        }
    }
    if (f.size, f.alloc) != before {
        tx.put_inode(&f)?;
    }
    Ok(dropped)
}

/// Commits a block; a file's size grows to cover it (the size of data
/// that reached the store is never lost with a lost attribute update).
pub(crate) fn commit_block(
    tx: &mut dyn Tx,
    addr: BlockAddr,
    new: BlockRef,
) -> Result<Option<BlockRef>> {
    commit(tx, addr, Some(new), new.len)
}

/// Commits a block of `len` bytes that are all zeros as a hole: no object,
/// and the version it replaces is dropped. The size grows as for
/// [`commit_block`].
pub(crate) fn commit_hole(tx: &mut dyn Tx, addr: BlockAddr, len: u32) -> Result<Option<BlockRef>> {
    commit(tx, addr, None, len)
}

fn commit(
    tx: &mut dyn Tx,
    addr: BlockAddr,
    new: Option<BlockRef>,
    len: u32,
) -> Result<Option<BlockRef>> {
    // An inode this store handed out and purged since: its upload is
    // stale, and a row for it would be a leak (numbers are not reused).
    // Numbers never handed out (test rigs that address raw file ids) pass.
    let ino = Ino(addr.file.0);
    if tx.inode(ino)?.is_none() && ino.0 <= tx.counter("ino")? {
        return Err(FsError::NotFound);
    }
    let old = tx.block(addr)?;
    match new {
        Some(n) => tx.put_block(addr, n)?,
        None if old.is_some() => tx.delete_block(addr)?,
        None => {}
    }
    let dropped = match old {
        Some(o) => released(tx, addr, o)?.map(|_| o),
        None => None,
    };
    if let Some(mut f) = tx.inode(ino)? {
        let end = addr.file_offset() + u64::from(len);
        let before = (f.size, f.alloc);
        f.size = f.size.max(end);
        let held = new.map_or(0, |n| u64::from(n.len));
        f.alloc = (f.alloc + held).saturating_sub(old.map_or(0, |o| u64::from(o.len)));
        if (f.size, f.alloc) != before {
            tx.put_inode(&f)?;
        }
    }
    Ok(dropped)
}

pub(crate) fn readdir(
    tx: &mut dyn Tx,
    dir_ino: Ino,
    after: u64,
    limit: usize,
) -> Result<Vec<DirEntry>> {
    dir(tx, dir_ino)?;
    tx.list_dir(dir_ino, after, limit)
}

/// [`readdir`] with each entry's inode, the directory's inode and, with
/// `parent`, its parent's (the attributes of `.` and `..`).
pub(crate) fn readdir_plus_dots(
    tx: &mut dyn Tx,
    dir_ino: Ino,
    after: u64,
    limit: usize,
    parent: bool,
) -> Result<DirPage> {
    let d = dir(tx, dir_ino)?;
    let parent = if parent {
        Some(get(tx, d.parent)?)
    } else {
        None
    };
    let entries = tx.list_dir_plus(dir_ino, after, limit)?;
    Ok(DirPage {
        dir: d,
        parent,
        entries,
    })
}

pub(crate) fn readlink(tx: &mut dyn Tx, ino: Ino) -> Result<Vec<u8>> {
    let f = get(tx, ino)?;
    if f.kind != FileKind::Symlink {
        return Err(FsError::Invalid("not a symbolic link"));
    }
    tx.symlink(ino)?
        .ok_or_else(|| FsError::io("readlink", "symlink without a target"))
}

/// Deletes an inode whose link count is 0 (no handle open); returns its
/// block objects for garbage collection, also put on the doomed list.
pub(crate) fn purge(tx: &mut dyn Tx, ino: Ino) -> Result<Vec<BlockKey>> {
    let Some(f) = tx.inode(ino)? else {
        return Ok(Vec::new());
    };
    if f.nlink > 0 {
        return Err(FsError::Invalid("purge of a linked inode"));
    }
    // Open on another host: that host frees it at its last close (or
    // whoever cleans up after its session).
    if tx.held_elsewhere(ino)? {
        return Ok(Vec::new());
    }
    let blocks = tx.file_blocks(ino)?;
    tx.delete_inode(ino)?;
    let mut keys = Vec::new();
    for (a, r) in blocks {
        keys.extend(released(tx, a, r)?);
    }
    Ok(keys)
}

/// Extended attribute set modes (`XATTR_CREATE`, `XATTR_REPLACE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrFlags {
    /// Fail with `EEXIST` if the attribute exists.
    pub create: bool,
    /// Fail with `ENODATA` if it does not.
    pub replace: bool,
}

pub(crate) fn set_xattr(
    tx: &mut dyn Tx,
    ino: Ino,
    name: &[u8],
    value: &[u8],
    flags: XattrFlags,
    now: Timespec,
) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(if name.is_empty() {
            FsError::Invalid("empty attribute name")
        } else {
            FsError::Range
        });
    }
    if value.len() > 65_536 {
        return Err(FsError::TooBig);
    }
    let mut f = get(tx, ino)?;
    let exists = tx.xattr(ino, name)?.is_some();
    if flags.create && exists {
        return Err(FsError::Exists);
    }
    if flags.replace && !exists {
        return Err(FsError::NoAttr);
    }
    tx.put_xattr(ino, name, value)?;
    f.ctime = now;
    tx.put_inode(&f)
}

pub(crate) fn remove_xattr(tx: &mut dyn Tx, ino: Ino, name: &[u8], now: Timespec) -> Result<()> {
    let mut f = get(tx, ino)?;
    if !tx.delete_xattr(ino, name)? {
        return Err(FsError::NoAttr);
    }
    f.ctime = now;
    tx.put_inode(&f)
}

pub(crate) fn get_xattr(tx: &mut dyn Tx, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
    get(tx, ino)?;
    tx.xattr(ino, name)?.ok_or(FsError::NoAttr)
}

pub(crate) fn list_xattr(tx: &mut dyn Tx, ino: Ino) -> Result<Vec<Vec<u8>>> {
    get(tx, ino)?;
    tx.xattr_names(ino)
}

pub(crate) fn getattr(tx: &mut dyn Tx, ino: Ino) -> Result<Inode> {
    get(tx, ino)
}

//! The file system as the simulator keeps it: inodes with a live and a
//! durable state, and the crash image built from the durable states.
//!
//! Every operation changes only live states. `fsync` of a file copies its
//! live bytes, size and attributes into its durable state; `fsync` of a
//! directory copies its live entries into its durable entries. The crash
//! image is the tree reachable from the root through durable entries,
//! each inode in its durable state.
//!
//! Errors are errno values (`libc::E*`), as the FUSE adapter replies them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use crate::data::{Data, Dirty};
use crate::tear::{DataOp, Rng, torn};
use crate::{Crash, PowerLossReport, Unsynced};

/// An inode number. The root is [`ROOT`].
pub(crate) type Ino = u64;

/// The root directory's inode number (FUSE's).
pub(crate) const ROOT: Ino = 1;

/// Longest name, bytes.
const NAME_MAX: usize = 255;

/// Largest file, bytes (1 TiB): keeps a stray `ftruncate` from asking for
/// absurd sizes.
const FILE_SIZE_MAX: u64 = 1 << 40;

/// An errno value.
pub(crate) type Errno = i32;

type Result<T> = std::result::Result<T, Errno>;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
}

/// Attributes that `fsync` makes durable along with the bytes.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    /// Permission bits with set-id and sticky bits (no file type).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) atime: SystemTime,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
}

/// An inode's attributes as `stat` reports them.
#[derive(Clone, Debug)]
pub(crate) struct Stat {
    pub(crate) ino: Ino,
    pub(crate) kind: Kind,
    pub(crate) size: u64,
    pub(crate) nlink: u32,
    pub(crate) meta: Meta,
}

#[derive(Clone, Debug, Default)]
struct FileBody {
    live: Data,
    durable: Data,
    /// Pages changed since the last sync.
    dirty: Dirty,
    /// Data operations since the last sync, in order.
    pending: Vec<DataOp>,
    /// Bytes written by `pending`.
    pending_bytes: u64,
}

#[derive(Clone, Debug)]
struct DirBody {
    live: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
    /// The live parent (the root is its own).
    parent: Ino,
    /// Live entries changed since the last sync.
    changed: bool,
}

#[derive(Clone, Debug)]
enum Body {
    File(FileBody),
    Dir(DirBody),
    Symlink(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Inode {
    body: Body,
    meta: Meta,
    durable_meta: Meta,
    meta_changed: bool,
    /// Live link count (directories: 2 + subdirectories).
    nlink: u32,
    /// References the kernel holds (lookups not yet forgotten).
    nlookup: u64,
    /// Durable entries naming this inode.
    durable_refs: u32,
    /// No live name and no kernel reference: only the durable state is
    /// left (it comes back if a durable entry still names the inode).
    live_gone: bool,
}

impl Inode {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
            Body::Symlink(_) => Kind::Symlink,
        }
    }

    fn size(&self) -> u64 {
        match &self.body {
            Body::File(f) => f.live.size(),
            Body::Dir(d) => d.live.len() as u64,
            Body::Symlink(t) => t.len() as u64,
        }
    }
}

/// One entry of a directory listing.
pub(crate) struct DirEntry {
    pub(crate) ino: Ino,
    pub(crate) kind: Kind,
    pub(crate) name: OsString,
}

/// Space figures for `statfs`, bytes.
pub(crate) struct Space {
    pub(crate) total: u64,
    pub(crate) free: u64,
    pub(crate) inodes: u64,
}

/// The whole file system.
#[derive(Debug)]
pub(crate) struct State {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    /// Sum of the live sizes of regular files that are still live, bytes.
    used: u64,
    capacity: Option<u64>,
    /// Set by a power loss: every later request fails with `EIO`.
    pub(crate) frozen: bool,
    /// `fsync` of a file with a live name ending in this fails with `EIO`
    /// and makes nothing durable.
    pub(crate) fail_fsync: Option<OsString>,
    /// Reads of files named with this suffix fail with `EIO`.
    pub(crate) fail_reads: Option<OsString>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn check_name(name: &OsStr) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

impl State {
    /// An empty file system: a root directory owned by `uid`:`gid`,
    /// mode 0755, durable as it is.
    pub(crate) fn new(capacity: Option<u64>, uid: u32, gid: u32) -> State {
        let t = now();
        let meta = Meta {
            mode: 0o755,
            uid,
            gid,
            atime: t,
            mtime: t,
            ctime: t,
        };
        let root = Inode {
            body: Body::Dir(DirBody {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent: ROOT,
                changed: false,
            }),
            durable_meta: meta.clone(),
            meta,
            meta_changed: false,
            nlink: 2,
            nlookup: 0,
            durable_refs: 0,
            live_gone: false,
        };
        State {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            used: 0,
            capacity,
            frozen: false,
            fail_fsync: None,
            fail_reads: None,
        }
    }

    /// Whether a live entry naming `ino` ends with `suffix`.
    fn named_with_suffix(&self, ino: Ino, suffix: &OsString) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.inodes.values().any(|i| match &i.body {
            Body::Dir(d) => d
                .live
                .iter()
                .any(|(n, &c)| c == ino && n.as_bytes().ends_with(suffix.as_bytes())),
            _ => false,
        })
    }

    pub(crate) fn set_capacity(&mut self, capacity: Option<u64>) {
        self.capacity = capacity;
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    fn node(&self, ino: Ino) -> Result<&Inode> {
        match self.inodes.get(&ino) {
            Some(i) if !i.live_gone => Ok(i),
            _ => Err(libc::ENOENT),
        }
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        match self.inodes.get_mut(&ino) {
            Some(i) if !i.live_gone => Ok(i),
            _ => Err(libc::ENOENT),
        }
    }

    fn dir(&self, ino: Ino) -> Result<&DirBody> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirBody> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut FileBody> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
            Body::Symlink(_) => Err(libc::EINVAL),
        }
    }

    fn touch(&mut self, ino: Ino, mtime: bool) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            let t = now();
            i.meta.ctime = t;
            if mtime {
                i.meta.mtime = t;
            }
            i.meta_changed = true;
        }
    }

    /// Checks that a live file growing from `old` to `new` bytes fits the
    /// capacity.
    fn reserve(&self, old: u64, new: u64) -> Result<()> {
        if new > FILE_SIZE_MAX {
            return Err(libc::EFBIG);
        }
        match self.capacity {
            Some(cap) if new > old && self.used - old + new > cap => Err(libc::ENOSPC),
            _ => Ok(()),
        }
    }

    pub(crate) fn stat(&self, ino: Ino) -> Result<Stat> {
        let i = self.node(ino)?;
        Ok(Stat {
            ino,
            kind: i.kind(),
            size: i.size(),
            nlink: i.nlink,
            meta: i.meta.clone(),
        })
    }

    /// `lookup`: the kernel now holds one more reference to the inode.
    pub(crate) fn lookup(&mut self, parent: Ino, name: &OsStr) -> Result<Stat> {
        check_name(name)?;
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        let st = self.stat(ino)?;
        self.node_mut(ino)?.nlookup += 1;
        Ok(st)
    }

    /// `forget`: the kernel dropped `n` references.
    pub(crate) fn forget(&mut self, ino: Ino, n: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.nlookup = i.nlookup.saturating_sub(n);
        }
        self.release_if_unused(ino);
    }

    /// Drops the live state of an inode with no name and no kernel
    /// reference, and the whole inode once no durable entry names it
    /// either (then its durable entries no longer count for its children).
    fn release_if_unused(&mut self, ino: Ino) {
        let mut work = vec![ino];
        while let Some(ino) = work.pop() {
            if ino == ROOT {
                continue;
            }
            let Some(i) = self.inodes.get_mut(&ino) else {
                continue;
            };
            if !i.live_gone && i.nlink == 0 && i.nlookup == 0 {
                i.live_gone = true;
                if let Body::File(f) = &mut i.body {
                    self.used -= f.live.size();
                    f.live = Data::default();
                }
            }
            if i.live_gone
                && i.durable_refs == 0
                && let Some(gone) = self.inodes.remove(&ino)
                && let Body::Dir(d) = gone.body
            {
                for child in d.durable.values() {
                    if let Some(c) = self.inodes.get_mut(child) {
                        c.durable_refs = c.durable_refs.saturating_sub(1);
                        work.push(*child);
                    }
                }
            }
        }
    }

    /// Creates a file, directory or symlink named `name` in `parent`;
    /// the kernel holds one reference to it.
    pub(crate) fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        owner: (u32, u32),
        target: Option<&[u8]>,
    ) -> Result<Stat> {
        check_name(name)?;
        if self.dir(parent)?.live.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let t = now();
        let meta = Meta {
            mode: mode & 0o7777,
            uid: owner.0,
            gid: owner.1,
            atime: t,
            mtime: t,
            ctime: t,
        };
        let (body, nlink) = match kind {
            Kind::File => (Body::File(FileBody::default()), 1),
            Kind::Dir => (
                Body::Dir(DirBody {
                    live: BTreeMap::new(),
                    durable: BTreeMap::new(),
                    parent,
                    changed: false,
                }),
                2,
            ),
            Kind::Symlink => (Body::Symlink(target.unwrap_or_default().to_vec()), 1),
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                body,
                durable_meta: meta.clone(),
                meta,
                meta_changed: false,
                nlink,
                nlookup: 1,
                durable_refs: 0,
                live_gone: false,
            },
        );
        let d = self.dir_mut(parent)?;
        d.live.insert(name.to_os_string(), ino);
        d.changed = true;
        if kind == Kind::Dir {
            self.node_mut(parent)?.nlink += 1;
        }
        self.touch(parent, true);
        self.stat(ino)
    }

    /// Removes the entry `name` of `parent` (checked by the caller).
    fn remove_entry(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Result<()> {
        let d = self.dir_mut(parent)?;
        d.live.remove(name);
        d.changed = true;
        let child = self.node_mut(ino)?;
        if matches!(child.body, Body::Dir(_)) {
            child.nlink = 0;
            self.node_mut(parent)?.nlink -= 1;
        } else {
            child.nlink -= 1;
        }
        self.touch(ino, false);
        self.touch(parent, true);
        self.release_if_unused(ino);
        Ok(())
    }

    pub(crate) fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<()> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.remove_entry(parent, name, ino)
    }

    pub(crate) fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<()> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        if !self.dir(ino)?.live.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.remove_entry(parent, name, ino)
    }

    /// `link`: a new name for a file or symlink.
    pub(crate) fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> Result<Stat> {
        check_name(name)?;
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(libc::EPERM);
        }
        let d = self.dir_mut(parent)?;
        if d.live.contains_key(name) {
            return Err(libc::EEXIST);
        }
        d.live.insert(name.to_os_string(), ino);
        d.changed = true;
        let i = self.node_mut(ino)?;
        i.nlink += 1;
        i.nlookup += 1;
        self.touch(ino, false);
        self.touch(parent, true);
        self.stat(ino)
    }

    /// `rename` and `renameat2` with `RENAME_NOREPLACE` (`noreplace`);
    /// `RENAME_EXCHANGE` is refused by the caller.
    pub(crate) fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        noreplace: bool,
    ) -> Result<()> {
        check_name(newname)?;
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        let target = self.dir(newparent)?.live.get(newname).copied();
        let is_dir = self.node(ino)?.kind() == Kind::Dir;
        if let Some(t) = target {
            if noreplace {
                return Err(libc::EEXIST);
            }
            if t == ino {
                return Ok(());
            }
            match (is_dir, self.node(t)?.kind() == Kind::Dir) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.dir(t)?.live.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if is_dir {
            // No directory into its own subtree.
            let mut at = newparent;
            loop {
                if at == ino {
                    return Err(libc::EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.dir(at)?.parent;
            }
        }
        if let Some(t) = target {
            self.remove_entry(newparent, newname, t)?;
        }
        let d = self.dir_mut(parent)?;
        d.live.remove(name);
        d.changed = true;
        let d = self.dir_mut(newparent)?;
        d.live.insert(newname.to_os_string(), ino);
        d.changed = true;
        if is_dir {
            self.dir_mut(ino)?.parent = newparent;
            self.node_mut(parent)?.nlink -= 1;
            self.node_mut(newparent)?.nlink += 1;
        }
        self.touch(ino, false);
        self.touch(parent, true);
        self.touch(newparent, true);
        Ok(())
    }

    pub(crate) fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match &self.node(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(libc::EINVAL),
        }
    }

    /// The live entries of a directory, `.` and `..` first.
    pub(crate) fn list(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let d = self.dir(ino)?;
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: d.parent,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        for (name, &child) in &d.live {
            if let Ok(c) = self.node(child) {
                out.push(DirEntry {
                    ino: child,
                    kind: c.kind(),
                    name: name.clone(),
                });
            }
        }
        Ok(out)
    }

    pub(crate) fn read(&self, ino: Ino, off: u64, len: u64) -> Result<Vec<u8>> {
        if let Some(suffix) = &self.fail_reads
            && self.named_with_suffix(ino, suffix)
        {
            return Err(libc::EIO);
        }
        match &self.node(ino)?.body {
            Body::File(f) => Ok(f.live.read(off, len)),
            Body::Dir(_) => Err(libc::EISDIR),
            Body::Symlink(_) => Err(libc::EINVAL),
        }
    }

    pub(crate) fn write(&mut self, ino: Ino, off: u64, buf: &[u8]) -> Result<()> {
        let old = self.file_mut(ino)?.live.size();
        let end = off.checked_add(buf.len() as u64).ok_or(libc::EFBIG)?;
        self.reserve(old, old.max(end))?;
        let f = self.file_mut(ino)?;
        f.live.write(off, buf, &mut f.dirty);
        f.pending.push(DataOp::Write {
            off,
            bytes: buf.to_vec(),
        });
        f.pending_bytes += buf.len() as u64;
        let new = f.live.size();
        self.used = self.used - old + new;
        self.touch(ino, true);
        Ok(())
    }

    /// Sets a file's size: cut, or grown with zeros.
    pub(crate) fn set_size(&mut self, ino: Ino, size: u64) -> Result<()> {
        let old = self.file_mut(ino)?.live.size();
        self.reserve(old, size)?;
        let f = self.file_mut(ino)?;
        f.live.set_size(size, &mut f.dirty);
        f.pending.push(DataOp::SetSize(size));
        self.used = self.used - old + size;
        self.touch(ino, true);
        Ok(())
    }

    /// `fallocate`: mode 0 grows the file with zeros to `off + len` bytes;
    /// `FALLOC_FL_KEEP_SIZE` alone changes nothing; other modes are
    /// `EOPNOTSUPP`.
    pub(crate) fn fallocate(&mut self, ino: Ino, off: u64, len: u64, mode: i32) -> Result<()> {
        let end = off.checked_add(len).ok_or(libc::EFBIG)?;
        let size = self.file_mut(ino)?.live.size();
        match mode {
            0 if end > size => self.set_size(ino, end),
            0 => Ok(()),
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    /// `setattr` of the attributes (the size goes through `set_size`).
    pub(crate) fn set_meta(&mut self, ino: Ino, f: impl FnOnce(&mut Meta)) -> Result<()> {
        let i = self.node_mut(ino)?;
        f(&mut i.meta);
        i.meta.mode &= 0o7777;
        i.meta.ctime = now();
        i.meta_changed = true;
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file (or `fsync` of any inode): its live
    /// bytes, size and attributes become durable. A directory's entries
    /// too.
    pub(crate) fn fsync(&mut self, ino: Ino) -> Result<()> {
        if let Some(suffix) = &self.fail_fsync
            && self.named_with_suffix(ino, suffix)
        {
            return Err(libc::EIO);
        }
        let i = self.node_mut(ino)?;
        i.durable_meta = i.meta.clone();
        i.meta_changed = false;
        let (old, new) = match &mut i.body {
            Body::File(f) => {
                f.durable.sync_from(&f.live, &f.dirty);
                f.dirty.clear();
                f.pending.clear();
                f.pending_bytes = 0;
                return Ok(());
            }
            Body::Dir(d) => {
                d.changed = false;
                let new = d.live.clone();
                (std::mem::replace(&mut d.durable, new.clone()), new)
            }
            Body::Symlink(_) => return Ok(()),
        };
        for child in new.values() {
            if let Some(c) = self.inodes.get_mut(child) {
                c.durable_refs += 1;
            }
        }
        for child in old.values() {
            if let Some(c) = self.inodes.get_mut(child) {
                c.durable_refs = c.durable_refs.saturating_sub(1);
            }
            self.release_if_unused(*child);
        }
        Ok(())
    }

    pub(crate) fn space(&self) -> Space {
        let total = self.capacity.unwrap_or(1 << 44);
        Space {
            total,
            free: total.saturating_sub(self.used),
            inodes: self.inodes.len() as u64,
        }
    }

    /// What a power loss now would drop (or tear).
    pub(crate) fn unsynced(&self) -> Unsynced {
        let mut u = Unsynced::default();
        for i in self.inodes.values().filter(|i| !i.live_gone) {
            match &i.body {
                Body::File(f) if !f.pending.is_empty() || i.meta_changed => {
                    u.files += 1;
                    u.ops += f.pending.len() as u64;
                    u.bytes += f.pending_bytes;
                }
                Body::Dir(d) if d.changed => u.dirs += 1,
                _ => {}
            }
        }
        u
    }

    /// The file system after a power loss now: the tree reachable from
    /// the root through durable entries, each inode in its durable state
    /// (plus, with `crash.tear`, a prefix of its unsynced data ops), all of
    /// it durable. A directory reached through a second durable entry
    /// (a rename across directories that both were synced at different
    /// times) keeps only its first entry in breadth-first, name order.
    pub(crate) fn crash_image(&self, crash: Crash) -> (State, PowerLossReport) {
        let mut report = PowerLossReport {
            unsynced: self.unsynced(),
            ..PowerLossReport::default()
        };
        // Breadth-first over durable entries.
        let mut entries: HashMap<Ino, (Ino, BTreeMap<OsString, Ino>)> = HashMap::new();
        let mut reached: HashSet<Ino> = HashSet::from([ROOT]);
        let mut queue = VecDeque::from([(ROOT, ROOT)]);
        while let Some((dir, parent)) = queue.pop_front() {
            let Some(Inode {
                body: Body::Dir(d), ..
            }) = self.inodes.get(&dir)
            else {
                continue;
            };
            let mut kept = BTreeMap::new();
            for (name, &child) in &d.durable {
                let Some(c) = self.inodes.get(&child) else {
                    continue;
                };
                if c.kind() == Kind::Dir {
                    if !reached.insert(child) {
                        report.entries_dropped += 1;
                        continue;
                    }
                    queue.push_back((child, dir));
                } else {
                    reached.insert(child);
                }
                kept.insert(name.clone(), child);
            }
            entries.insert(dir, (parent, kept));
        }
        let mut links: HashMap<Ino, u32> = HashMap::new();
        for (_, kept) in entries.values() {
            for child in kept.values() {
                *links.entry(*child).or_default() += 1;
            }
        }
        let mut inodes = HashMap::new();
        let mut used = 0;
        for &ino in &reached {
            let old = &self.inodes[&ino];
            let (body, nlink) = match &old.body {
                Body::File(f) => {
                    let data = if crash.tear && !f.pending.is_empty() {
                        let mut rng =
                            Rng::new(crash.seed ^ ino.wrapping_mul(0x2545_F491_4F6C_DD1D));
                        let (data, changed) = torn(&f.durable, &f.pending, &mut rng);
                        report.files_torn += u64::from(changed);
                        data
                    } else {
                        f.durable.clone()
                    };
                    used += data.size();
                    report.files += 1;
                    let body = FileBody {
                        live: data.clone(),
                        durable: data,
                        ..FileBody::default()
                    };
                    (Body::File(body), links.get(&ino).copied().unwrap_or(1))
                }
                Body::Dir(_) => {
                    let (parent, kept) = entries.remove(&ino).unwrap_or_default();
                    let subdirs = kept
                        .values()
                        .filter(|c| matches!(self.inodes[c].body, Body::Dir(_)))
                        .count() as u32;
                    report.dirs += 1;
                    let body = DirBody {
                        live: kept.clone(),
                        durable: kept,
                        parent,
                        changed: false,
                    };
                    (Body::Dir(body), 2 + subdirs)
                }
                Body::Symlink(t) => {
                    report.files += 1;
                    (
                        Body::Symlink(t.clone()),
                        links.get(&ino).copied().unwrap_or(1),
                    )
                }
            };
            inodes.insert(
                ino,
                Inode {
                    body,
                    meta: old.durable_meta.clone(),
                    durable_meta: old.durable_meta.clone(),
                    meta_changed: false,
                    nlink,
                    nlookup: 0,
                    durable_refs: links.get(&ino).copied().unwrap_or(0),
                    live_gone: false,
                },
            );
        }
        let state = State {
            inodes,
            next_ino: self.next_ino,
            used,
            capacity: self.capacity,
            frozen: false,
            fail_fsync: None,
            fail_reads: None,
        };
        (state, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &State, dir: Ino) -> Vec<String> {
        s.list(dir).unwrap()[2..]
            .iter()
            .map(|e| e.name.to_string_lossy().into_owned())
            .collect()
    }

    fn crash(s: &State) -> State {
        s.crash_image(Crash::default()).0
    }

    #[test]
    fn only_synced_entries_and_bytes_survive() {
        let mut s = State::new(None, 0, 0);
        let f = s
            .create(ROOT, "f".as_ref(), Kind::File, 0o644, (0, 0), None)
            .unwrap()
            .ino;
        s.write(f, 0, b"hello").unwrap();
        // Neither synced: nothing.
        assert!(names(&crash(&s), ROOT).is_empty());
        s.fsync(ROOT).unwrap();
        let c = crash(&s);
        assert_eq!(names(&c, ROOT), ["f"]);
        assert_eq!(c.read(f, 0, 100).unwrap(), b"");
        s.fsync(f).unwrap();
        s.write(f, 5, b" world").unwrap();
        assert_eq!(crash(&s).read(f, 0, 100).unwrap(), b"hello");
        // An unsynced unlink comes back.
        s.forget(f, 1);
        s.unlink(ROOT, "f".as_ref()).unwrap();
        assert!(s.lookup(ROOT, "f".as_ref()).is_err());
        assert_eq!(crash(&s).read(f, 0, 100).unwrap(), b"hello");
        s.fsync(ROOT).unwrap();
        assert!(names(&crash(&s), ROOT).is_empty());
        assert!(!s.inodes.contains_key(&f), "freed once no name is left");
    }

    #[test]
    fn a_directory_with_two_durable_parents_keeps_one() {
        let mut s = State::new(None, 0, 0);
        let a = s
            .create(ROOT, "a".as_ref(), Kind::Dir, 0o755, (0, 0), None)
            .unwrap()
            .ino;
        let b = s
            .create(ROOT, "b".as_ref(), Kind::Dir, 0o755, (0, 0), None)
            .unwrap()
            .ino;
        let c = s
            .create(a, "c".as_ref(), Kind::Dir, 0o755, (0, 0), None)
            .unwrap()
            .ino;
        s.fsync(a).unwrap();
        s.fsync(ROOT).unwrap();
        s.rename(a, "c".as_ref(), b, "c".as_ref(), false).unwrap();
        s.fsync(b).unwrap();
        let (img, report) = s.crash_image(Crash::default());
        assert_eq!(report.entries_dropped, 1);
        assert_eq!(names(&img, a), ["c"]);
        assert!(names(&img, b).is_empty());
        assert_eq!(img.stat(c).unwrap().nlink, 2);
    }

    #[test]
    fn capacity_counts_live_bytes_and_unlink_gives_them_back() {
        let mut s = State::new(Some(10_000), 0, 0);
        let f = s
            .create(ROOT, "f".as_ref(), Kind::File, 0o644, (0, 0), None)
            .unwrap()
            .ino;
        s.write(f, 0, &[1; 8000]).unwrap();
        assert_eq!(s.write(f, 8000, &[1; 4000]), Err(libc::ENOSPC));
        s.write(f, 0, &[2; 8000]).unwrap();
        s.unlink(ROOT, "f".as_ref()).unwrap();
        assert_eq!(s.used(), 8000, "still referenced by the kernel");
        s.forget(f, 1);
        assert_eq!(s.used(), 0);
    }
}

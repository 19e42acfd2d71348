//! Reference-model property test of the VFS: random sequences of create,
//! write, read, truncate, rename, link, unlink, mkdir, rmdir and chmod
//! against a plain model (a map of names and a `Vec<u8>` per file); after
//! every step the whole tree and every file's bytes are compared. Runs with
//! the null log + memory metadata + memory store, and with the mmap log +
//! SQLite + `file://` store, where a `Remount` step (a crash: no drain, no
//! release) reopens everything from the data directory.
//!
//! `PROPTEST_CASES` sets the number of cases (default 24).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use slicefs::blockstore::StoreConfig;
use slicefs::error::FsError;
use slicefs::meta::{FileKind, Ino, RenameFlags};
use slicefs::transfer::TransferConfig;
use slicefs::vfs::{Creds, FsOptions, MetaKind, OpenFlags, PersisterKind, SetAttrRequest, Vfs};
use slicefs_cache::CacheConfig;
use slicefs_wal::Persister;

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug)]
enum Op {
    Create(usize, usize),
    Mkdir(usize, usize),
    Write(usize, u32, u16, u8),
    Truncate(usize, u32),
    Rename(usize, usize, usize, usize),
    Link(usize, usize, usize),
    Unlink(usize, usize),
    Rmdir(usize, usize),
    Chmod(usize, u16),
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0..NAMES.len();
    prop_oneof![
        3 => (0..8usize, n.clone()).prop_map(|(d, n)| Op::Create(d, n)),
        2 => (0..8usize, n.clone()).prop_map(|(d, n)| Op::Mkdir(d, n)),
        5 => (0..8usize, 0..(9u32 << 20), 1..20_000u16, any::<u8>())
            .prop_map(|(f, o, l, b)| Op::Write(f, o, l, b)),
        1 => (0..8usize, 0..(9u32 << 20)).prop_map(|(f, s)| Op::Truncate(f, s)),
        2 => (0..8usize, n.clone(), 0..8usize, n.clone()).prop_map(|(a, b, c, d)| Op::Rename(a, b, c, d)),
        1 => (0..8usize, 0..8usize, n.clone()).prop_map(|(f, d, n)| Op::Link(f, d, n)),
        2 => (0..8usize, n.clone()).prop_map(|(d, n)| Op::Unlink(d, n)),
        1 => (0..8usize, n).prop_map(|(d, n)| Op::Rmdir(d, n)),
        1 => (0..8usize, 0..0o7777u16).prop_map(|(f, p)| Op::Chmod(f, p)),
        1 => Just(Op::Remount),
    ]
}

/// Model inode ids: 0 is the root.
#[derive(Clone, Debug)]
enum MNode {
    Dir,
    File { data: Vec<u8>, perm: u16 },
}

#[derive(Default)]
struct Model {
    nodes: HashMap<u64, MNode>,
    /// (dir, name) -> node
    entries: BTreeMap<(u64, String), u64>,
    next: u64,
    /// model id -> real inode
    real: HashMap<u64, Ino>,
}

impl Model {
    fn new() -> Model {
        let mut m = Model::default();
        m.nodes.insert(0, MNode::Dir);
        m.real.insert(0, Ino::ROOT);
        m.next = 1;
        m
    }
    fn dirs(&self) -> Vec<u64> {
        let mut d: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n, MNode::Dir))
            .map(|(k, _)| *k)
            .collect();
        d.sort();
        d
    }
    fn files(&self) -> Vec<u64> {
        let mut f: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n, MNode::File { .. }))
            .map(|(k, _)| *k)
            .collect();
        f.sort();
        f
    }
    fn children(&self, dir: u64) -> Vec<(&String, u64)> {
        self.entries
            .range((dir, String::new())..)
            .take_while(|((d, _), _)| *d == dir)
            .map(|((_, n), i)| (n, *i))
            .collect()
    }
    fn parent_of(&self, dir: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, i)| **i == dir)
            .map(|((p, _), _)| *p)
    }
    fn within(&self, mut dir: u64, anc: u64) -> bool {
        loop {
            if dir == anc {
                return true;
            }
            match self.parent_of(dir) {
                Some(p) => dir = p,
                None => return false,
            }
        }
    }
    fn links(&self, id: u64) -> usize {
        self.entries.values().filter(|i| **i == id).count()
    }
    fn drop_if_unlinked(&mut self, id: u64) {
        if id != 0 && self.links(id) == 0 {
            self.nodes.remove(&id);
            self.real.remove(&id);
        }
    }
}

struct Fs {
    vfs: Arc<Vfs>,
    rt: tokio::runtime::Runtime,
    persister: Arc<dyn Persister>,
}

fn open_fs(dir: Option<&Path>) -> Fs {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut o = FsOptions::new(dir.unwrap_or(scratch.path()));
    if dir.is_none() {
        o.persister = PersisterKind::Null;
        o.meta = MetaKind::Memory;
        o.store = Some(StoreConfig::new("memory:///"));
    }
    // A small cache, so that clean bytes are evicted and reads go to the
    // block store.
    o.cache = CacheConfig {
        capacity_bytes: 8 << 20,
        dirty_max_bytes: 64 << 20,
        dirty_wait: Duration::from_secs(30),
    };
    o.transfer = TransferConfig {
        upload_delay: Duration::from_millis(5),
        tick: Duration::from_millis(5),
        ..TransferConfig::default()
    };
    let opened = rt.block_on(slicefs::vfs::open_fs(&o, rt.handle())).unwrap();
    Fs {
        vfs: opened.vfs,
        rt,
        persister: opened.persister,
    }
}

impl Fs {
    fn crash(self) {
        self.rt.block_on(self.vfs.transfer().shutdown());
        self.persister.close().unwrap();
    }
}

const RW: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
    cache_fill: false,
};

fn errno<T>(r: &Result<T, FsError>) -> i32 {
    r.as_ref().err().map_or(0, |e| e.errno())
}

fn pick(v: &[u64], i: usize) -> Option<u64> {
    (!v.is_empty()).then(|| v[i % v.len()])
}

/// Applies `op` to the model and the file system; asserts they agree.
fn step(m: &mut Model, fs: &Fs, op: &Op) -> Result<(), TestCaseError> {
    let c = Creds::root();
    let v = &fs.vfs;
    let dirs = m.dirs();
    let files = m.files();
    match *op {
        Op::Create(d, n) | Op::Mkdir(d, n) => {
            let dir = dirs[d % dirs.len()];
            let name = NAMES[n];
            let exists = m.entries.contains_key(&(dir, name.to_string()));
            let real_dir = m.real[&dir];
            let r = if matches!(op, Op::Create(..)) {
                v.create(&c, real_dir, name.as_bytes(), 0o644, RW, true)
                    .map(|(a, fh)| {
                        v.release(fh).unwrap();
                        a
                    })
            } else {
                v.mkdir(&c, real_dir, name.as_bytes(), 0o755)
            };
            if exists {
                prop_assert_eq!(errno(&r), libc::EEXIST);
            } else {
                let a = r.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                let id = m.next;
                m.next += 1;
                m.nodes.insert(
                    id,
                    if a.kind == FileKind::Directory {
                        MNode::Dir
                    } else {
                        MNode::File {
                            data: Vec::new(),
                            perm: 0o644,
                        }
                    },
                );
                m.entries.insert((dir, name.to_string()), id);
                m.real.insert(id, a.ino);
            }
        }
        Op::Write(f, off, len, byte) => {
            let Some(id) = pick(&files, f) else {
                return Ok(());
            };
            let fh = v.open(&c, m.real[&id], RW).unwrap();
            let data = vec![byte; len as usize];
            v.write(&c, fh, u64::from(off), &data).unwrap();
            v.release(fh).unwrap();
            if let Some(MNode::File { data: d, .. }) = m.nodes.get_mut(&id) {
                let end = off as usize + len as usize;
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[off as usize..end].copy_from_slice(&data);
            }
        }
        Op::Truncate(f, size) => {
            let Some(id) = pick(&files, f) else {
                return Ok(());
            };
            v.setattr(
                &c,
                m.real[&id],
                &SetAttrRequest {
                    size: Some(u64::from(size)),
                    ..SetAttrRequest::default()
                },
            )
            .unwrap();
            if let Some(MNode::File { data, .. }) = m.nodes.get_mut(&id) {
                data.resize(size as usize, 0);
            }
        }
        Op::Chmod(f, p) => {
            let Some(id) = pick(&files, f) else {
                return Ok(());
            };
            v.setattr(
                &c,
                m.real[&id],
                &SetAttrRequest {
                    perm: Some(p),
                    ..SetAttrRequest::default()
                },
            )
            .unwrap();
            if let Some(MNode::File { perm, .. }) = m.nodes.get_mut(&id) {
                *perm = p;
            }
        }
        Op::Link(f, d, n) => {
            let Some(id) = pick(&files, f) else {
                return Ok(());
            };
            let dir = dirs[d % dirs.len()];
            let r = v.link(&c, m.real[&id], m.real[&dir], NAMES[n].as_bytes());
            match m.entries.entry((dir, NAMES[n].to_string())) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    prop_assert_eq!(errno(&r), libc::EEXIST);
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    r.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                    e.insert(id);
                }
            }
        }
        Op::Unlink(d, n) | Op::Rmdir(d, n) => {
            let dir = dirs[d % dirs.len()];
            let key = (dir, NAMES[n].to_string());
            let rmdir = matches!(op, Op::Rmdir(..));
            let r = if rmdir {
                v.rmdir(&c, m.real[&dir], NAMES[n].as_bytes())
            } else {
                v.unlink(&c, m.real[&dir], NAMES[n].as_bytes())
            };
            let want = match m.entries.get(&key).map(|id| (*id, &m.nodes[id])) {
                None => libc::ENOENT,
                Some((_, MNode::Dir)) if !rmdir => libc::EISDIR,
                Some((_, MNode::File { .. })) if rmdir => libc::ENOTDIR,
                Some((id, MNode::Dir)) if !m.children(id).is_empty() => libc::ENOTEMPTY,
                Some(_) => 0,
            };
            prop_assert_eq!(errno(&r), want, "{:?}", op);
            if want == 0 {
                let id = m.entries.remove(&key).unwrap();
                m.drop_if_unlinked(id);
            }
        }
        Op::Rename(sd, sn, dd, dn) => {
            let (sdir, ddir) = (dirs[sd % dirs.len()], dirs[dd % dirs.len()]);
            let (skey, dkey) = ((sdir, NAMES[sn].to_string()), (ddir, NAMES[dn].to_string()));
            let r = v.rename(
                &c,
                m.real[&sdir],
                NAMES[sn].as_bytes(),
                m.real[&ddir],
                NAMES[dn].as_bytes(),
                RenameFlags::default(),
            );
            let src = m.entries.get(&skey).copied();
            let dst = m.entries.get(&dkey).copied();
            let want = match (src, dst) {
                (None, _) => libc::ENOENT,
                (Some(s), _) if matches!(m.nodes[&s], MNode::Dir) && m.within(ddir, s) => {
                    libc::EINVAL
                }
                (Some(s), Some(d)) if s == d => -1,
                (Some(s), Some(d)) => match (&m.nodes[&s], &m.nodes[&d]) {
                    (MNode::Dir, MNode::File { .. }) => libc::ENOTDIR,
                    (MNode::File { .. }, MNode::Dir) => libc::EISDIR,
                    (MNode::Dir, MNode::Dir) if !m.children(d).is_empty() => libc::ENOTEMPTY,
                    _ => 0,
                },
                _ => 0,
            };
            if want == -1 {
                prop_assert_eq!(errno(&r), 0);
            } else {
                prop_assert_eq!(errno(&r), want, "{:?}", op);
                if want == 0 {
                    let id = m.entries.remove(&skey).unwrap();
                    if let Some(old) = m.entries.insert(dkey, id) {
                        m.drop_if_unlinked(old);
                    }
                }
            }
        }
        Op::Remount => {}
    }
    Ok(())
}

/// The whole tree and every file's bytes equal the model.
fn compare(m: &Model, fs: &Fs) -> Result<(), TestCaseError> {
    let v = &fs.vfs;
    for dir in m.dirs() {
        let mut want: Vec<(String, Ino)> = m
            .children(dir)
            .into_iter()
            .map(|(n, i)| (n.clone(), m.real[&i]))
            .collect();
        want.sort();
        let mut got: Vec<(String, Ino)> = v
            .readdir(m.real[&dir], 2, 1000)
            .unwrap()
            .into_iter()
            .map(|e| (String::from_utf8(e.name).unwrap(), e.ino))
            .collect();
        got.sort();
        prop_assert_eq!(got, want, "directory {}", dir);
    }
    for id in m.files() {
        let MNode::File { data, perm } = &m.nodes[&id] else {
            unreachable!()
        };
        let ino = m.real[&id];
        let a = v.getattr(ino).unwrap();
        prop_assert_eq!(a.size, data.len() as u64, "size of {}", id);
        prop_assert_eq!(a.perm, *perm);
        prop_assert_eq!(a.nlink as usize, m.links(id));
        let fh = v
            .open(
                &Creds::root(),
                ino,
                OpenFlags {
                    read: true,
                    ..OpenFlags::default()
                },
            )
            .unwrap();
        let got = v.read(fh, 0, data.len() as u32 + 10).unwrap();
        v.release(fh).unwrap();
        if &got != data {
            let at = got
                .iter()
                .zip(data.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(data.len()));
            return Err(TestCaseError::fail(format!(
                "file {id}: {} bytes, want {}, first difference at {at}",
                got.len(),
                data.len()
            )));
        }
    }
    Ok(())
}

fn run(ops: &[Op], persistent: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = persistent.then(|| dir.path());
    let mut fs = open_fs(path);
    let mut m = Model::new();
    for op in ops {
        if let Op::Remount = op {
            if persistent {
                // Make every write durable, then crash and reopen.
                fs.persister.sync().unwrap();
                for f in m.files() {
                    let fh = fs.vfs.open(&Creds::root(), m.real[&f], RW).unwrap();
                    fs.vfs.fsync(fh, false).unwrap();
                    fs.vfs.release(fh).unwrap();
                }
                fs.crash();
                fs = open_fs(path);
            }
            continue;
        }
        step(&mut m, &fs, op)?;
        compare(&m, &fs)?;
    }
    fs.rt
        .block_on(fs.vfs.transfer().drain(Duration::from_secs(60)))
        .unwrap();
    compare(&m, &fs)?;
    fs.crash();
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn vfs_matches_the_model_ephemeral(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops, false)?;
    }

    #[test]
    fn vfs_matches_the_model_persistent(ops in proptest::collection::vec(op(), 1..30)) {
        run(&ops, true)?;
    }
}

//! Conformance of the metadata store: every test runs against the SQLite
//! backend, the memory backend and the PostgreSQL backend (a throwaway
//! server, one database per test), which must behave the same.

mod common;

use slicefs::error::FsError;
use slicefs::meta::{
    BlockAddr, BlockCommit, BlockMap, BlockRef, FileKind, Ino, MetaError, MetaStore, NewNode,
    RenameFlags, SetAttr, Timespec, XattrFlags,
};
use slicefs_wal::{ChunkIndex, FileId};

fn stores() -> Vec<(&'static str, MetaStore, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = MetaStore::open_sqlite(&dir.path().join("meta.db"), 0, 0).unwrap();
    vec![
        ("sqlite", sqlite, dir),
        (
            "memory",
            MetaStore::memory(0, 0),
            tempfile::tempdir().unwrap(),
        ),
        ("postgres", postgres_store(1), tempfile::tempdir().unwrap()),
    ]
}

/// A new formatted PostgreSQL volume, opened as host `host`.
fn postgres_store(host: u64) -> MetaStore {
    let url = common::postgres::Postgres::shared().database();
    MetaStore::format_postgres(&url, "{}").unwrap();
    MetaStore::open_postgres(&url, host, 0, 0).unwrap()
}

fn t(sec: i64) -> Timespec {
    Timespec { sec, nsec: 7 }
}

fn node(kind: FileKind) -> NewNode<'static> {
    NewNode {
        kind,
        perm: 0o644,
        uid: 1000,
        gid: 100,
        rdev: 0,
        target: None,
    }
}

fn errno(r: Result<impl std::fmt::Debug, FsError>) -> i32 {
    r.unwrap_err().errno()
}

#[test]
fn create_lookup_and_parent_times() {
    for (name, m, _d) in stores() {
        let root = m.getattr(Ino::ROOT).unwrap();
        assert_eq!((root.kind, root.nlink), (FileKind::Directory, 2), "{name}");
        let f = m
            .create(Ino::ROOT, b"a", &node(FileKind::Regular), t(10))
            .unwrap();
        assert_eq!(m.lookup(Ino::ROOT, b"a").unwrap(), f, "{name}");
        assert_eq!((f.nlink, f.perm, f.uid, f.gid), (1, 0o644, 1000, 100));
        let root = m.getattr(Ino::ROOT).unwrap();
        assert_eq!((root.mtime, root.ctime), (t(10), t(10)), "{name}");
        let d = m
            .create(Ino::ROOT, b"d", &node(FileKind::Directory), t(11))
            .unwrap();
        assert_eq!(d.nlink, 2);
        assert_eq!(
            m.getattr(Ino::ROOT).unwrap().nlink,
            3,
            "{name}: subdir counts"
        );
        assert_eq!(m.lookup(d.ino, b"..").unwrap().ino, Ino::ROOT);
        assert_eq!(m.lookup(d.ino, b".").unwrap().ino, d.ino);
        assert_eq!(
            errno(m.create(Ino::ROOT, b"a", &node(FileKind::Regular), t(12))),
            libc::EEXIST
        );
        assert_eq!(errno(m.lookup(Ino::ROOT, b"nope")), libc::ENOENT);
        assert_eq!(errno(m.lookup(f.ino, b"x")), libc::ENOTDIR);
        assert_eq!(
            errno(m.create(f.ino, b"x", &node(FileKind::Regular), t(12))),
            libc::ENOTDIR
        );
        let long = vec![b'x'; 256];
        assert_eq!(
            errno(m.create(Ino::ROOT, &long, &node(FileKind::Regular), t(12))),
            libc::ENAMETOOLONG
        );
        assert!(
            m.create(Ino::ROOT, &long[..255], &node(FileKind::Regular), t(12))
                .is_ok()
        );
        assert_eq!(
            errno(m.create(Ino::ROOT, b"a/b", &node(FileKind::Regular), t(12))),
            libc::EINVAL
        );
        let s = m
            .create(
                Ino::ROOT,
                b"s",
                &NewNode {
                    target: Some(b"a/target"),
                    ..node(FileKind::Symlink)
                },
                t(13),
            )
            .unwrap();
        assert_eq!(m.readlink(s.ino).unwrap(), b"a/target");
        assert_eq!(s.size, 8);
        assert_eq!(errno(m.readlink(f.ino)), libc::EINVAL);
        let dev = m
            .create(
                Ino::ROOT,
                b"dev",
                &NewNode {
                    rdev: 0x0103,
                    ..node(FileKind::CharDevice)
                },
                t(14),
            )
            .unwrap();
        assert_eq!(m.getattr(dev.ino).unwrap().rdev, 0x0103, "{name}");
    }
}

#[test]
fn unlink_rmdir_link_and_orphans() {
    for (name, m, _d) in stores() {
        let f = m
            .create(Ino::ROOT, b"f", &node(FileKind::Regular), t(1))
            .unwrap();
        let d = m
            .create(Ino::ROOT, b"d", &node(FileKind::Directory), t(1))
            .unwrap();
        let l = m.link(f.ino, d.ino, b"g", t(2)).unwrap();
        assert_eq!((l.nlink, l.ctime), (2, t(2)), "{name}");
        assert_eq!(errno(m.link(d.ino, Ino::ROOT, b"d2", t(2))), libc::EPERM);
        assert_eq!(errno(m.rmdir(Ino::ROOT, b"d", t(3))), libc::ENOTEMPTY);
        assert_eq!(errno(m.unlink(Ino::ROOT, b"d", t(3))), libc::EISDIR);
        assert_eq!(errno(m.rmdir(Ino::ROOT, b"f", t(3))), libc::ENOTDIR);
        assert_eq!(m.unlink(Ino::ROOT, b"f", t(3)).unwrap().nlink, 1);
        let last = m.unlink(d.ino, b"g", t(4)).unwrap();
        assert_eq!(last.nlink, 0, "{name}");
        // Unlinked but not purged: an orphan until its last handle closes.
        assert_eq!(m.orphans().unwrap(), vec![f.ino], "{name}");
        assert_eq!(m.getattr(f.ino).unwrap().nlink, 0);
        m.purge(f.ino).unwrap();
        assert!(m.orphans().unwrap().is_empty());
        assert_eq!(errno(m.getattr(f.ino)), libc::ENOENT);
        m.rmdir(Ino::ROOT, b"d", t(5)).unwrap();
        assert_eq!(m.getattr(Ino::ROOT).unwrap().nlink, 2, "{name}");
        assert_eq!(errno(m.rmdir(Ino::ROOT, b".", t(5))), libc::EINVAL);
    }
}

#[test]
fn rename_rules() {
    for (name, m, _d) in stores() {
        let a = m
            .create(Ino::ROOT, b"a", &node(FileKind::Directory), t(1))
            .unwrap();
        let b = m
            .create(Ino::ROOT, b"b", &node(FileKind::Directory), t(1))
            .unwrap();
        let f = m
            .create(a.ino, b"f", &node(FileKind::Regular), t(1))
            .unwrap();
        let g = m
            .create(b.ino, b"g", &node(FileKind::Regular), t(1))
            .unwrap();
        let none = RenameFlags::default();
        // Into its own subtree.
        assert_eq!(
            errno(m.rename(Ino::ROOT, b"a", a.ino, b"x", none, t(2))),
            libc::EINVAL
        );
        // Dir over a non-empty dir, file over dir, dir over file.
        assert_eq!(
            errno(m.rename(Ino::ROOT, b"a", Ino::ROOT, b"b", none, t(2))),
            libc::ENOTEMPTY
        );
        let e = m
            .create(Ino::ROOT, b"e", &node(FileKind::Directory), t(2))
            .unwrap();
        assert_eq!(
            errno(m.rename(a.ino, b"f", Ino::ROOT, b"e", none, t(2))),
            libc::EISDIR
        );
        assert_eq!(
            errno(m.rename(Ino::ROOT, b"e", a.ino, b"f", none, t(2))),
            libc::ENOTDIR
        );
        // Nothing changed after the failures.
        assert_eq!(m.lookup(a.ino, b"f").unwrap().ino, f.ino, "{name}");
        // Replace a file: the old one loses its link.
        let old = m
            .rename(a.ino, b"f", b.ino, b"g", none, t(3))
            .unwrap()
            .unwrap();
        assert_eq!((old.ino, old.nlink), (g.ino, 0), "{name}");
        assert_eq!(m.lookup(b.ino, b"g").unwrap().ino, f.ino);
        assert_eq!(errno(m.lookup(a.ino, b"f")), libc::ENOENT);
        // Move a directory: link counts and `..` follow.
        m.rename(Ino::ROOT, b"e", a.ino, b"e2", none, t(4)).unwrap();
        assert_eq!(m.getattr(a.ino).unwrap().nlink, 3, "{name}");
        assert_eq!(m.getattr(Ino::ROOT).unwrap().nlink, 4, "{name}");
        assert_eq!(m.lookup(e.ino, b"..").unwrap().ino, a.ino);
        // NOREPLACE and EXCHANGE.
        let h = m
            .create(a.ino, b"h", &node(FileKind::Regular), t(5))
            .unwrap();
        let noreplace = RenameFlags {
            noreplace: true,
            exchange: false,
        };
        assert_eq!(
            errno(m.rename(a.ino, b"h", b.ino, b"g", noreplace, t(5))),
            libc::EEXIST
        );
        let exchange = RenameFlags {
            noreplace: false,
            exchange: true,
        };
        assert_eq!(
            m.rename(a.ino, b"h", b.ino, b"g", exchange, t(6)).unwrap(),
            None
        );
        assert_eq!(m.lookup(a.ino, b"h").unwrap().ino, f.ino, "{name}");
        assert_eq!(m.lookup(b.ino, b"g").unwrap().ino, h.ino, "{name}");
        assert_eq!(
            errno(m.rename(a.ino, b"h", b.ino, b"zz", exchange, t(6))),
            libc::ENOENT
        );
        // Exchanging a directory with a file across parents moves a link.
        m.rename(a.ino, b"e2", b.ino, b"g", exchange, t(7)).unwrap();
        assert_eq!(m.getattr(a.ino).unwrap().nlink, 2, "{name}");
        assert_eq!(m.getattr(b.ino).unwrap().nlink, 3, "{name}");
        assert_eq!(m.lookup(e.ino, b"..").unwrap().ino, b.ino);
    }
}

#[test]
fn readdir_positions_survive_changes() {
    for (name, m, _d) in stores() {
        for i in 0..10 {
            m.create(
                Ino::ROOT,
                format!("f{i}").as_bytes(),
                &node(FileKind::Regular),
                t(1),
            )
            .unwrap();
        }
        let first = m.readdir(Ino::ROOT, 0, 4).unwrap();
        assert_eq!(first.len(), 4);
        // Remove an entry already listed and one not yet, add one.
        m.unlink(Ino::ROOT, &first[0].name, t(2)).unwrap();
        m.unlink(Ino::ROOT, b"f7", t(2)).unwrap();
        m.create(Ino::ROOT, b"new", &node(FileKind::Regular), t(2))
            .unwrap();
        let rest = m.readdir(Ino::ROOT, first[3].cookie, 100).unwrap();
        let names: Vec<String> = first
            .iter()
            .chain(&rest)
            .map(|e| String::from_utf8(e.name.clone()).unwrap())
            .collect();
        let want: Vec<String> = (0..10)
            .filter(|&i| i != 7)
            .map(|i| format!("f{i}"))
            .chain(["new".to_string()])
            .collect();
        assert_eq!(
            names, want,
            "{name}: no repeat, no skip of entries that stayed"
        );
        assert_eq!(errno(m.readdir(first[1].ino, 0, 10)), libc::ENOTDIR);
    }
}

#[test]
fn xattrs_and_setattr() {
    for (name, m, _d) in stores() {
        let f = m
            .create(Ino::ROOT, b"f", &node(FileKind::Regular), t(1))
            .unwrap();
        let create = XattrFlags {
            create: true,
            replace: false,
        };
        let replace = XattrFlags {
            create: false,
            replace: true,
        };
        assert_eq!(
            errno(m.set_xattr(f.ino, b"user.a", b"1", replace, t(2))),
            libc::ENODATA
        );
        m.set_xattr(f.ino, b"user.a", b"1", create, t(2)).unwrap();
        assert_eq!(
            errno(m.set_xattr(f.ino, b"user.a", b"2", create, t(2))),
            libc::EEXIST
        );
        m.set_xattr(f.ino, b"user.b", b"", XattrFlags::default(), t(3))
            .unwrap();
        assert_eq!(m.get_xattr(f.ino, b"user.a").unwrap(), b"1");
        assert_eq!(
            m.list_xattr(f.ino).unwrap(),
            vec![b"user.a".to_vec(), b"user.b".to_vec()]
        );
        assert_eq!(m.getattr(f.ino).unwrap().ctime, t(3), "{name}");
        m.remove_xattr(f.ino, b"user.a", t(4)).unwrap();
        assert_eq!(errno(m.get_xattr(f.ino, b"user.a")), libc::ENODATA);
        assert_eq!(errno(m.remove_xattr(f.ino, b"user.a", t(4))), libc::ENODATA);
        assert_eq!(
            errno(m.set_xattr(f.ino, &[b'x'; 256], b"", XattrFlags::default(), t(4))),
            libc::ERANGE
        );

        let set = SetAttr {
            perm: Some(0o4755),
            uid: Some(5),
            gid: Some(6),
            mtime: Some(t(9)),
            ..SetAttr::default()
        };
        let a = m.setattr(f.ino, &set).unwrap();
        assert_eq!(
            (a.perm, a.uid, a.gid, a.mtime),
            (0o4755, 5, 6, t(9)),
            "{name}"
        );
        assert_eq!(
            errno(m.setattr(
                Ino::ROOT,
                &SetAttr {
                    size: Some(1),
                    ..SetAttr::default()
                }
            )),
            libc::EISDIR
        );
    }
}

#[test]
fn block_map_commit_grows_size_and_truncate_cuts() {
    for (name, m, _d) in stores() {
        let f = m
            .create(Ino::ROOT, b"f", &node(FileKind::Regular), t(1))
            .unwrap();
        let addr = |chunk, block| BlockAddr {
            file: FileId(f.ino.0),
            chunk: ChunkIndex(chunk),
            block,
        };
        let v1 = m.allocate_version().unwrap();
        let v2 = m.allocate_version().unwrap();
        assert!(v2 > v1);
        m.commit_block(addr(0, 1), BlockRef::own(v1, 100)).unwrap();
        assert_eq!(m.getattr(f.ino).unwrap().size, (4 << 20) + 100, "{name}");
        m.commit_block(addr(1, 0), BlockRef::own(v2, 4 << 20))
            .unwrap();
        assert!(m.is_referenced(&addr(1, 0).key(v2)).unwrap());
        let (a, dropped) = m
            .truncate(
                f.ino,
                &SetAttr {
                    size: Some((4 << 20) + 50),
                    truncate_lsn: Some(77),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        assert_eq!((a.size, a.truncate_lsn), ((4 << 20) + 50, 77), "{name}");
        assert_eq!(dropped, vec![addr(1, 0).key(v2)]);
        assert_eq!(m.block(addr(0, 1)).unwrap(), Some(BlockRef::own(v1, 50)));
        // Purge returns the file's objects.
        m.unlink(Ino::ROOT, b"f", t(2)).unwrap();
        assert_eq!(m.purge(f.ino).unwrap(), vec![addr(0, 1).key(v1)], "{name}");
        assert_eq!(m.block(addr(0, 1)).unwrap(), None);
    }
}

/// A clone references the source's object: the object is doomed (and
/// the sweep may delete it) only once no block references it.
#[test]
fn a_cloned_object_lives_until_its_last_reference_goes() {
    for (name, m, _d) in stores() {
        let file = |n: &[u8]| {
            m.create(Ino::ROOT, n, &node(FileKind::Regular), t(1))
                .unwrap()
                .ino
        };
        let (src, dst) = (file(b"src"), file(b"dst"));
        let at = |ino: Ino, block| BlockAddr {
            file: FileId(ino.0),
            chunk: ChunkIndex(0),
            block,
        };
        let v = m.allocate_version().unwrap();
        let key = at(src, 1).key(v);
        m.commit_block(at(src, 1), BlockRef::own(v, 1000)).unwrap();
        // Block 0 of src is a hole: cloning it drops dst's own block 0.
        let w = m.allocate_version().unwrap();
        m.commit_block(at(dst, 0), BlockRef::own(w, 10)).unwrap();
        let dropped = m.clone_blocks(src, 0, dst, 0, &[0, 1]).unwrap();
        assert_eq!(dropped, vec![at(dst, 0).key(w)], "{name}");
        let cloned = m.block(at(dst, 1)).unwrap().unwrap();
        assert_eq!((cloned.version, cloned.len), (v, 1000), "{name}");
        assert_eq!(cloned.key(at(dst, 1)), key, "{name}");
        assert_eq!(m.block(at(dst, 0)).unwrap(), None, "{name}");
        let d = m.getattr(dst).unwrap();
        assert_eq!((d.size, d.alloc), ((4 << 20) + 1000, 1000), "{name}");
        // The source lets go: the object stays.
        let (_, dropped) = m
            .truncate(
                src,
                &SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        assert!(dropped.is_empty(), "{name}: {dropped:?}");
        assert!(m.is_referenced(&key).unwrap(), "{name}");
        assert!(!m.doomed().unwrap().contains(&key), "{name}");
        // The clone lets go: now it is garbage.
        m.unlink(Ino::ROOT, b"dst", t(2)).unwrap();
        assert_eq!(m.purge(dst).unwrap(), vec![key], "{name}");
        assert!(!m.is_referenced(&key).unwrap(), "{name}");
        assert!(m.doomed().unwrap().contains(&key), "{name}");
    }
}

/// Block 0 of a new regular file `name` in the root.
fn first_block_of_new_file(m: &MetaStore, name: &[u8]) -> BlockAddr {
    let f = m
        .create(Ino::ROOT, name, &node(FileKind::Regular), t(1))
        .unwrap();
    BlockAddr {
        file: FileId(f.ino.0),
        chunk: ChunkIndex(0),
        block: 0,
    }
}

/// Pack members (small blocks of several files uploaded as one object)
/// reference the object at their offsets; the offsets survive a reopen,
/// and the object is doomed only when the last member goes. PostgreSQL
/// (shared volumes, which do not pack) refuses an offset it cannot store.
#[test]
fn pack_members_keep_their_offsets_and_the_object_lives_until_the_last_goes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    for (name, m, _d) in stores() {
        let m = if name == "sqlite" {
            drop(m);
            MetaStore::open_sqlite(&path, 0, 0).unwrap()
        } else {
            m
        };
        let at = |n: &[u8]| first_block_of_new_file(&m, n);
        let (a, b, c, d) = (at(b"a"), at(b"b"), at(b"c"), at(b"d"));
        let v = m.allocate_version().unwrap();
        let key = a.key(v);
        let member = |offset, len| BlockRef {
            version: v,
            len,
            origin: Some(a),
            offset,
        };
        if name == "postgres" {
            let r = m.commit_block(b, member(100, 50));
            assert!(r.is_err(), "postgres stored an offset: {r:?}");
            continue;
        }
        m.commit_block(a, BlockRef::own(v, 100)).unwrap();
        m.commit_block(b, member(100, 50)).unwrap();
        m.commit_block(c, member(150, 7)).unwrap();
        assert_eq!(m.block(b).unwrap(), Some(member(100, 50)), "{name}");
        assert_eq!(m.block(c).unwrap().unwrap().key(c), key, "{name}");
        let m = if name == "sqlite" {
            m.sync().unwrap();
            drop(m);
            MetaStore::open_sqlite(&path, 0, 0).unwrap()
        } else {
            m
        };
        assert_eq!(m.block(c).unwrap(), Some(member(150, 7)), "{name}");
        assert_eq!(m.getattr(Ino(b.file.0)).unwrap().size, 50, "{name}");
        // A clone of a member references the same bytes of the pack.
        m.clone_blocks(Ino(c.file.0), 0, Ino(d.file.0), 0, &[0])
            .unwrap();
        assert_eq!(m.block(d).unwrap(), Some(member(150, 7)), "{name}");
        m.unlink(Ino::ROOT, b"d", t(2)).unwrap();
        assert!(m.purge(Ino(d.file.0)).unwrap().is_empty(), "{name}");
        // The leader's file and one member go: the object stays.
        for (n, f) in [(b"a", a), (b"b", b)] {
            m.unlink(Ino::ROOT, n, t(2)).unwrap();
            assert!(m.purge(Ino(f.file.0)).unwrap().is_empty(), "{name}");
        }
        assert!(m.is_referenced(&key).unwrap(), "{name}");
        // The last member goes: now it is garbage.
        m.unlink(Ino::ROOT, b"c", t(2)).unwrap();
        assert_eq!(m.purge(Ino(c.file.0)).unwrap(), vec![key], "{name}");
        assert!(m.doomed().unwrap().contains(&key), "{name}");
    }
}

/// `commit_over_many` (a pack's members in one transaction): each item
/// commits or fails alone, in order; a gone file and a changed block
/// fail without keeping the others from committing.
#[test]
fn commit_over_many_commits_each_item_or_fails_it_alone() {
    for (name, m, _d) in stores() {
        let at = |n: &[u8]| first_block_of_new_file(&m, n);
        let (a, gone, moved, b) = (at(b"a"), at(b"gone"), at(b"moved"), at(b"b"));
        m.unlink(Ino::ROOT, b"gone", t(2)).unwrap();
        m.purge(Ino(gone.file.0)).unwrap();
        let v0 = m.allocate_version().unwrap();
        m.commit_block(moved, BlockRef::own(v0, 10)).unwrap();
        let v = m.allocate_version().unwrap();
        let item = |addr, len| BlockCommit {
            addr,
            base: None,
            new: Some(BlockRef::own(v, len)),
            len,
        };
        let r = m
            .commit_over_many(&[item(a, 5), item(gone, 6), item(moved, 7), item(b, 8)])
            .unwrap();
        assert!(matches!(r[0], Ok(None)), "{name}: {r:?}");
        assert!(
            matches!(r[1], Err(MetaError::FileGone { .. })),
            "{name}: {r:?}"
        );
        assert!(
            matches!(r[2], Err(MetaError::Conflict { .. })),
            "{name}: {r:?}"
        );
        assert!(matches!(r[3], Ok(None)), "{name}: {r:?}");
        assert_eq!(m.block(a).unwrap(), Some(BlockRef::own(v, 5)), "{name}");
        assert_eq!(
            m.block(moved).unwrap(),
            Some(BlockRef::own(v0, 10)),
            "{name}"
        );
        assert_eq!(m.block(b).unwrap(), Some(BlockRef::own(v, 8)), "{name}");
        assert_eq!(m.getattr(Ino(b.file.0)).unwrap().size, 8, "{name}");
    }
}

#[test]
fn sqlite_store_persists_and_refuses_other_schema_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let f = {
        let m = MetaStore::open_sqlite(&path, 0, 0).unwrap();
        let f = m
            .create(Ino::ROOT, b"kept", &node(FileKind::Regular), t(1))
            .unwrap();
        m.set_xattr(f.ino, b"user.k", b"v", XattrFlags::default(), t(1))
            .unwrap();
        m.sync().unwrap();
        f
    };
    let m = MetaStore::open_sqlite(&path, 0, 0).unwrap();
    assert_eq!(
        m.lookup(Ino::ROOT, b"kept").unwrap(),
        m.getattr(f.ino).unwrap()
    );
    assert_eq!(m.get_xattr(f.ino, b"user.k").unwrap(), b"v");
    let g = m
        .create(Ino::ROOT, b"next", &node(FileKind::Regular), t(2))
        .unwrap();
    assert!(g.ino > f.ino, "inode numbers are not reused across opens");
    drop(m);

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE info SET value = 99 WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = MetaStore::open_sqlite(&path, 0, 0).err().expect("refused");
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("schema"), "{err}");
}

/// A version 1 database (before `size_lsn` and `synced_size`, the
/// doomed list and `alloc` of version 3, the clone columns of version 4
/// and the pack offset of version 5) is upgraded in place at open,
/// keeping everything.
#[test]
fn sqlite_store_upgrades_schema_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let f = {
        let m = MetaStore::open_sqlite(&path, 0, 0).unwrap();
        let f = m
            .create(Ino::ROOT, b"kept", &node(FileKind::Regular), t(1))
            .unwrap();
        m.sync().unwrap();
        f
    };
    // Back to what version 1 had.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP INDEX inodes_size_lsn; DROP INDEX inodes_truncate_lsn;
         ALTER TABLE inodes DROP COLUMN size_lsn;
         ALTER TABLE inodes DROP COLUMN synced_size;
         ALTER TABLE inodes DROP COLUMN alloc;
         DROP TABLE doomed;
         DROP INDEX blocks_version;
         ALTER TABLE blocks DROP COLUMN ofile;
         ALTER TABLE blocks DROP COLUMN ochunk;
         ALTER TABLE blocks DROP COLUMN oblock;
         ALTER TABLE blocks DROP COLUMN obyte;
         UPDATE info SET value = 1 WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(conn);
    let m = MetaStore::open_sqlite(&path, 0, 0).unwrap();
    let a = m.lookup(Ino::ROOT, b"kept").unwrap();
    assert_eq!((a.ino, a.size_lsn, a.synced_size), (f.ino, 0, 0));
    drop(m);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row(
            "SELECT value FROM info WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, slicefs::meta::SCHEMA_VERSION);
}

/// Regression: `commit_block` inserted block-map rows for inodes that no
/// longer existed (an upload that raced the file's removal). Now it is
/// refused as `FileGone`, and nothing is committed.
#[test]
fn a_block_commit_for_a_removed_file_is_refused() {
    for (name, m, _dir) in stores() {
        let f = m
            .create(Ino::ROOT, b"f", &node(FileKind::Regular), t(1))
            .unwrap();
        m.unlink(Ino::ROOT, b"f", t(2)).unwrap();
        m.purge(f.ino).unwrap();
        let addr = BlockAddr {
            file: FileId(f.ino.0),
            chunk: ChunkIndex(0),
            block: 0,
        };
        let version = m.allocate_version().unwrap();
        let r = m.commit_block(addr, BlockRef::own(version, 10));
        assert!(
            matches!(r, Err(MetaError::FileGone { file }) if file == addr.file),
            "{name}: {r:?}"
        );
        assert_eq!(m.block(addr).unwrap(), None, "{name}");
    }
}

/// `usage` (what `statfs` reports) is counted once and then kept by every
/// commit: after creates, size changes, a failed transaction, unlinks and
/// purges it equals a fresh count of the reopened store.
#[test]
fn usage_counters_follow_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let kept = {
        let m = MetaStore::open_sqlite(&path, 0, 0).unwrap();
        assert_eq!(m.usage().unwrap().inodes, 1, "the root");
        let mut files = Vec::new();
        for i in 0..20u64 {
            let f = m
                .create(
                    Ino::ROOT,
                    format!("f{i}").as_bytes(),
                    &node(FileKind::Regular),
                    t(1),
                )
                .unwrap();
            let set = SetAttr {
                size: Some(1000 * i),
                ..SetAttr::default()
            };
            m.setattr(f.ino, &set).unwrap();
            files.push(f.ino);
        }
        m.create(Ino::ROOT, b"d", &node(FileKind::Directory), t(2))
            .unwrap();
        // A failed transaction changes nothing.
        assert!(
            m.create(Ino::ROOT, b"d", &node(FileKind::Regular), t(3))
                .is_err()
        );
        for i in 0..10u64 {
            let f = m
                .unlink(Ino::ROOT, format!("f{i}").as_bytes(), t(4))
                .unwrap();
            assert_eq!(f.nlink, 0);
            m.purge(f.ino).unwrap();
        }
        let u = m.usage().unwrap();
        assert_eq!(u.inodes, 1 + 10 + 1);
        assert_eq!(u.bytes, (10..20).map(|i| 1000 * i).sum::<u64>());
        u
    };
    let m = MetaStore::open_sqlite(&path, 0, 0).unwrap();
    assert_eq!(m.usage().unwrap(), kept, "a fresh count agrees");
}

/// `readdir_plus` gives `readdir`'s entries, paged the same way, each with
/// its inode (SQLite answers with one join).
#[test]
fn readdir_plus_matches_readdir_and_getattr() {
    for (name, m, _d) in stores() {
        let d = m
            .create(Ino::ROOT, b"d", &node(FileKind::Directory), t(1))
            .unwrap();
        for i in 0..9 {
            let kind = if i % 3 == 0 {
                FileKind::Directory
            } else {
                FileKind::Regular
            };
            m.create(d.ino, format!("e{i}").as_bytes(), &node(kind), t(2))
                .unwrap();
        }
        m.unlink(d.ino, b"e4", t(3)).unwrap();
        let mut after = 0;
        let mut n = 0;
        loop {
            let plain = m.readdir(d.ino, after, 3).unwrap();
            let plus = m.readdir_plus(d.ino, after, 3).unwrap();
            assert_eq!(
                plus.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(),
                plain,
                "{name}"
            );
            for (e, i) in &plus {
                assert_eq!(*i, m.getattr(e.ino).unwrap(), "{name}");
                assert_eq!(e.kind, i.kind, "{name}");
            }
            let Some(last) = plain.last() else { break };
            after = last.cookie;
            n += plain.len();
        }
        assert_eq!(n, 8, "{name}");
        assert_eq!(
            errno(m.readdir_plus(Ino(9999), 0, 3)),
            libc::ENOENT,
            "{name}"
        );
    }
}

/// Block commits from many threads at once share durable transactions
/// (a group commit) and each still gets its own outcome: every commit of
/// a live file lands (with the size it implies), and the commits for a
/// purged file are refused as `FileGone` without failing the others.
#[test]
fn concurrent_block_commits_each_get_their_own_outcome() {
    for (name, m, _dir) in stores() {
        let mut files = Vec::new();
        for i in 0..8u64 {
            let f = m
                .create(
                    Ino::ROOT,
                    format!("f{i}").as_bytes(),
                    &node(FileKind::Regular),
                    t(1),
                )
                .unwrap();
            files.push(f.ino);
        }
        let gone = m
            .create(Ino::ROOT, b"gone", &node(FileKind::Regular), t(1))
            .unwrap()
            .ino;
        m.unlink(Ino::ROOT, b"gone", t(2)).unwrap();
        m.purge(gone).unwrap();
        let threads: Vec<_> = files
            .iter()
            .copied()
            .chain([gone])
            .map(|ino| {
                let m = m.clone();
                std::thread::spawn(move || {
                    (0..10u32)
                        .map(|block| {
                            let addr = BlockAddr {
                                file: FileId(ino.0),
                                chunk: ChunkIndex(0),
                                block,
                            };
                            let version = m.allocate_version().unwrap();
                            (
                                addr,
                                version,
                                m.commit_block(addr, BlockRef::own(version, 100)),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (k, th) in threads.into_iter().enumerate() {
            for (addr, version, r) in th.join().unwrap() {
                if k == files.len() {
                    assert!(
                        matches!(r, Err(MetaError::FileGone { .. })),
                        "{name}: {r:?}"
                    );
                    assert_eq!(m.block(addr).unwrap(), None, "{name}");
                } else {
                    assert!(matches!(r, Ok(None)), "{name}: {r:?}");
                    assert_eq!(
                        m.block(addr).unwrap(),
                        Some(BlockRef::own(version, 100)),
                        "{name}"
                    );
                }
            }
        }
        for ino in files {
            // Block 9 of chunk 0 ends at 9 * 4 MiB + 100.
            assert_eq!(m.getattr(ino).unwrap().size, 9 * (4 << 20) + 100, "{name}");
        }
    }
}

/// A new filesystem records the sharded object layout; one made before the
/// record existed keeps the per-file layout its objects were written in;
/// an unknown layout is refused, not guessed.
#[test]
fn the_store_layout_is_recorded_and_old_filesystems_keep_theirs() {
    use slicefs::blockstore::KeyLayout;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    {
        let m = MetaStore::open_sqlite(&path, 0, 0).unwrap();
        assert_eq!(m.store_layout().unwrap(), KeyLayout::Sharded);
        assert_eq!(
            MetaStore::memory(0, 0).store_layout().unwrap(),
            KeyLayout::Sharded
        );
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("DELETE FROM counters WHERE name = 'store_layout'", [])
        .unwrap();
    drop(conn);
    {
        let m = MetaStore::open_sqlite(&path, 0, 0).unwrap();
        assert_eq!(m.store_layout().unwrap(), KeyLayout::PerFile);
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO counters(name, value) VALUES ('store_layout', 9)",
        [],
    )
    .unwrap();
    drop(conn);
    let m = MetaStore::open_sqlite(&path, 0, 0).unwrap();
    let err = m.store_layout().unwrap_err().to_string();
    assert!(err.contains("layout 9"), "{err}");
}

/// Two hosts on one PostgreSQL volume: what belongs to one host's log
/// (its log counters, the LSNs of sizes it wrote, the unlinked files it
/// holds open) stays its own, so that one host's recovery never settles
/// or frees another's files; inode numbers stay unique.
#[test]
fn postgres_hosts_keep_their_own_log_state_and_orphans() {
    let url = common::postgres::Postgres::shared().database();
    MetaStore::format_postgres(&url, "{}").unwrap();
    let a = MetaStore::open_postgres(&url, 1, 0, 0).unwrap();
    let b = MetaStore::open_postgres(&url, 2, 0, 0).unwrap();
    let fa = a
        .create(Ino::ROOT, b"a", &node(FileKind::Regular), t(1))
        .unwrap();
    let fb = b
        .create(Ino::ROOT, b"b", &node(FileKind::Regular), t(1))
        .unwrap();
    assert_ne!(fa.ino, fb.ino);
    // Host a writes a size depending on its log's LSN 500.
    a.setattr(
        fa.ino,
        &SetAttr {
            grow_size: Some(10),
            size_lsn: Some(500),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(a.inodes_past(100).unwrap(), vec![fa.ino]);
    assert_eq!(a.max_lsn().unwrap(), 500);
    assert!(
        b.inodes_past(100).unwrap().is_empty(),
        "b must not see a's LSNs"
    );
    assert_eq!(b.max_lsn().unwrap(), 0);
    // b changes a's file without an LSN: it stays a's.
    b.setattr(
        fa.ino,
        &SetAttr {
            perm: Some(0o600),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(a.inodes_past(100).unwrap(), vec![fa.ino]);
    assert!(b.inodes_past(100).unwrap().is_empty());
    // Each host's orphans are its own.
    a.unlink(Ino::ROOT, b"a", t(2)).unwrap();
    assert_eq!(a.orphans().unwrap(), vec![fa.ino]);
    assert!(b.orphans().unwrap().is_empty());
    // Log counters are per host.
    assert_eq!(a.log_dependency().unwrap(), None);
    b.forget_log().unwrap();
    assert_eq!(a.log_dependency().unwrap(), None);
}

/// Three hosts creating in one directory at once (serializable
/// transactions, retried on conflicts): every create lands once, under a
/// distinct inode number, and each name exists once.
#[test]
fn postgres_hosts_create_in_one_directory_at_once() {
    let url = common::postgres::Postgres::shared().database();
    MetaStore::format_postgres(&url, "{}").unwrap();
    let hosts: Vec<MetaStore> = (1..=3)
        .map(|h| MetaStore::open_postgres(&url, h, 0, 0).unwrap())
        .collect();
    creates_at_once(&hosts);
}

/// The same from three threads of one host, while two more read the
/// directory: the writes take turns on one connection of the host's pool,
/// the reads run on others beside them.
#[test]
fn postgres_threads_of_one_host_create_in_one_directory_at_once() {
    let url = common::postgres::Postgres::shared().database();
    MetaStore::format_postgres(&url, "{}").unwrap();
    let m = MetaStore::open_postgres(&url, 1, 0, 0).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        m.getattr(Ino::ROOT).unwrap();
                        if let Ok(d) = m.lookup(Ino::ROOT, b"d") {
                            m.readdir(d.ino, 0, 1000).unwrap();
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        creates_at_once(&[m.clone(), m.clone(), m.clone()]);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        readers.into_iter().map(|r| r.join().unwrap()).sum::<u64>()
    });
    assert!(reads > 0);
    // The readers ran on connections of their own.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let conns: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'slicefs'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        conns >= 2,
        "{conns} connection(s) for 2 readers and 3 writers"
    );
    drop(m);
}

fn creates_at_once(hosts: &[MetaStore]) {
    let d = hosts[0]
        .create(Ino::ROOT, b"d", &node(FileKind::Directory), t(1))
        .unwrap();
    let made: Vec<Vec<(Vec<u8>, Ino)>> = std::thread::scope(|s| {
        let runs: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(h, m)| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..60 {
                        // Half the names are taken by every host: one wins.
                        let name = if i % 2 == 0 {
                            format!("shared-{i}")
                        } else {
                            format!("h{h}-{i}")
                        };
                        match m.create(d.ino, name.as_bytes(), &node(FileKind::Regular), t(2)) {
                            Ok(f) => out.push((name.into_bytes(), f.ino)),
                            Err(e) => assert_eq!(e.errno(), libc::EEXIST, "{name}: {e}"),
                        }
                    }
                    out
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let all: Vec<(Vec<u8>, Ino)> = made.into_iter().flatten().collect();
    // 30 own names per host, and each shared name made by exactly one.
    assert_eq!(all.len(), 3 * 30 + 30);
    let mut inos: Vec<Ino> = all.iter().map(|(_, i)| *i).collect();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), all.len(), "inode numbers must be unique");
    let listed = hosts[2].readdir(d.ino, 0, 1000).unwrap();
    assert_eq!(listed.len(), all.len());
    for (name, ino) in &all {
        assert_eq!(hosts[1].lookup(d.ino, name).unwrap().ino, *ino);
    }
    assert_eq!(hosts[0].getattr(d.ino).unwrap().nlink, 2);
}

/// `commit_over` commits only over the block the upload merged over
/// (compare-and-set), and a commit run again after its answer was lost
/// (a dropped connection) finds its own block and succeeds, dropping
/// nothing twice.
#[test]
fn commit_over_sets_only_over_the_block_it_read() {
    for (name, m, _d) in stores() {
        let f = m
            .create(Ino::ROOT, b"f", &node(FileKind::Regular), t(1))
            .unwrap();
        let addr = BlockAddr {
            file: FileId(f.ino.0),
            chunk: ChunkIndex(0),
            block: 0,
        };
        let (v1, v2) = (m.allocate_version().unwrap(), m.allocate_version().unwrap());
        let r1 = BlockRef::own(v1, 100);
        assert_eq!(m.commit_over(addr, None, Some(r1), 100).unwrap(), None);
        // Run again (its answer lost): its own block is there, no conflict.
        assert_eq!(
            m.commit_over(addr, None, Some(r1), 100).unwrap(),
            None,
            "{name}"
        );
        // An upload that merged over "no block" meanwhile conflicts.
        let r2 = BlockRef::own(v2, 200);
        assert!(
            matches!(
                m.commit_over(addr, None, Some(r2), 200),
                Err(MetaError::Conflict { .. })
            ),
            "{name}"
        );
        assert_eq!(
            m.block(addr).unwrap(),
            Some(r1),
            "{name}: nothing committed"
        );
        // Over the block it read: committed, and the old one is returned.
        assert_eq!(
            m.commit_over(addr, Some(r1), Some(r2), 200).unwrap(),
            Some(r1),
            "{name}"
        );
        // A hole over a block another host cut meanwhile (its length
        // changed): conflict.
        m.truncate(
            f.ino,
            &SetAttr {
                size: Some(50),
                ..SetAttr::default()
            },
        )
        .unwrap();
        assert!(matches!(
            m.commit_over(addr, Some(r2), None, 200),
            Err(MetaError::Conflict { .. })
        ));
    }
}

/// A sync with nothing left to make durable commits nothing (a database's
/// `fsync` of its journal and then of its directory pays one metadata
/// flush, not two), yet still makes the attached log durable; a sync after
/// any write commits durably.
#[test]
fn a_sync_with_nothing_undurable_commits_nothing_but_syncs_the_log() {
    use slicefs_wal::{Durability, MmapPersister, Persister, WalConfig};
    use std::sync::Arc;
    for (name, m, d) in stores() {
        let log: Arc<dyn Persister> = Arc::new(
            MmapPersister::open(
                d.path().join("wal"),
                WalConfig {
                    durability: Durability::None,
                    ..WalConfig::default()
                },
            )
            .unwrap(),
        );
        m.attach_log(&log);
        m.create(Ino::ROOT, b"a", &node(FileKind::Regular), t(1))
            .unwrap();
        let before = m.commit_seq();
        assert!(!m.is_durable(before), "{name}");
        m.sync().unwrap();
        let synced = m.commit_seq();
        assert!(synced > before && m.is_durable(synced), "{name}");
        let lsn = log.append_truncate(FileId(7), 0).unwrap();
        assert!(
            log.durable_lsn() < lsn,
            "{name}: a log that syncs on its own"
        );
        m.sync().unwrap();
        assert_eq!(m.commit_seq(), synced, "{name}: a second sync committed");
        assert!(log.durable_lsn() >= lsn, "{name}: the log was not synced");
        m.create(Ino::ROOT, b"b", &node(FileKind::Regular), t(2))
            .unwrap();
        m.sync().unwrap();
        assert!(m.commit_seq() > synced + 1, "{name}: no durable commit");
        assert!(m.is_durable(m.commit_seq()), "{name}");
    }
}

//! The VFS core: POSIX behaviour (both metadata backends), permissions,
//! open-unlinked files, and restarts from the data directory (SQLite
//! metadata, mmap log, `file://` block store).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use slicefs::blockstore::StoreConfig;
use slicefs::error::FsError;
use slicefs::meta::{FileKind, Ino, RenameFlags, XattrFlags};
use slicefs::vfs::{
    Creds, FsOptions, MetaKind, OpenFlags, PersisterKind, Seek, SetAttrRequest, Stability, TimeSet,
    Vfs, VfsConfig, VfsRecovery,
};
use slicefs_wal::{ChunkIndex, FileId, Persister, SliceId, SliceWrite};

/// A VFS with its runtime. `dir` is `None` for an ephemeral one (memory
/// metadata, null log, memory store).
struct Fs {
    vfs: Arc<Vfs>,
    rt: tokio::runtime::Runtime,
    persister: Arc<dyn Persister>,
    recovery: VfsRecovery,
}

fn open_fs(dir: Option<&Path>) -> Fs {
    open_fs_with(dir, VfsConfig::default())
}

fn open_fs_with(dir: Option<&Path>, vfs: VfsConfig) -> Fs {
    open_fs_tuned(dir, |o| o.vfs = vfs)
}

/// [`open_fs`] with `tune` applied to the options last.
fn open_fs_tuned(dir: Option<&Path>, tune: impl FnOnce(&mut FsOptions)) -> Fs {
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
    o.transfer.upload_delay = Duration::from_millis(200);
    tune(&mut o);
    if std::env::var("SLICEFS_TEST_META").as_deref() == Ok("postgres") {
        on_postgres(&mut o, dir.is_some());
    }
    let opened = rt.block_on(slicefs::vfs::open_fs(&o, rt.handle())).unwrap();
    Fs {
        vfs: opened.vfs,
        rt,
        persister: opened.persister,
        recovery: opened.recovery,
    }
}

/// With `SLICEFS_TEST_META=postgres` (scripts/test.sh runs this suite
/// twice) every file system of these tests is a shared volume on a
/// throwaway PostgreSQL: a data directory keeps its database (named in
/// `<dir>/test-meta-url`) and its `file://` store across reopens, as a
/// SQLite one keeps `meta.db`.
fn on_postgres(o: &mut FsOptions, keep: bool) {
    std::fs::create_dir_all(&o.data_dir).unwrap();
    let marker = o.data_dir.join("test-meta-url");
    let url = match std::fs::read_to_string(&marker) {
        Ok(u) if keep => u,
        _ => {
            let url = common::postgres::Postgres::shared().database();
            let store = o.data_dir.join("shared-blocks");
            std::fs::create_dir_all(&store).unwrap();
            let store = url::Url::from_directory_path(&store).unwrap().to_string();
            let vol = slicefs::vfs::volume::describe_new(
                "test",
                &StoreConfig::new(store),
                slicefs_cache::BLOCK_SIZE,
            );
            slicefs::meta::MetaStore::format_postgres(&url, &serde_json::to_string(&vol).unwrap())
                .unwrap();
            std::fs::write(&marker, &url).unwrap();
            url
        }
    };
    o.meta = MetaKind::Postgres(url);
    o.store = None;
}

/// Whether this run is on PostgreSQL (`SLICEFS_TEST_META=postgres`), where
/// the tests of single-host mechanics do not apply: a truncate or size
/// replayed from the log into metadata, sizes cut back to what a lost log
/// kept, data left only in the log at a crash, SQLite's journal, and the
/// NFS server's cache-only reads (a shared volume uploads at the last
/// close and drops cached bytes at the next first open; NFS does not
/// serve shared volumes).
/// A shared volume's commits are durable after the log when they return,
/// and its data reaches the store at close and fsync (doc/DESIGN.md,
/// "Shared volumes"). Says so on stderr.
fn single_host_only(test: &str) -> bool {
    let pg = std::env::var("SLICEFS_TEST_META").as_deref() == Ok("postgres");
    if pg {
        eprintln!("{test}: single-host mechanics, not run on a shared volume");
    }
    pg
}

impl Fs {
    /// Stops like a crash after the last sync: no drain, no release.
    fn crash(self) {
        self.rt.block_on(self.vfs.transfer().shutdown());
        self.persister.close().unwrap();
    }

    /// A clean stop: everything uploaded.
    fn unmount(self) {
        self.rt
            .block_on(self.vfs.transfer().close(Duration::from_secs(60)))
            .unwrap();
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

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.unwrap_err().errno()
}

fn write_file(fs: &Fs, c: &Creds, parent: Ino, name: &str, data: &[u8]) -> Ino {
    let (a, fh) = fs
        .vfs
        .create(c, parent, name.as_bytes(), 0o644, RW, true)
        .unwrap();
    assert_eq!(fs.vfs.write(c, fh, 0, data).unwrap() as usize, data.len());
    fs.vfs.fsync(fh, false).unwrap();
    fs.vfs.release(fh).unwrap();
    a.ino
}

fn read_all(fs: &Fs, ino: Ino) -> Vec<u8> {
    let fh = fs
        .vfs
        .open(
            &Creds::root(),
            ino,
            OpenFlags {
                read: true,
                ..OpenFlags::default()
            },
        )
        .unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = fs.vfs.read(fh, out.len() as u64, 1 << 20).unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend(chunk);
    }
    fs.vfs.release(fh).unwrap();
    out
}

fn both(test: impl Fn(&Fs)) {
    test(&open_fs(None));
    let dir = tempfile::tempdir().unwrap();
    let fs = open_fs(Some(dir.path()));
    test(&fs);
    fs.unmount();
}

#[test]
fn files_directories_links_and_names() {
    both(|fs| {
        let root = Creds::root();
        let v = &fs.vfs;
        let d = v.mkdir(&root, Ino::ROOT, b"d", 0o755).unwrap();
        let f = write_file(fs, &root, d.ino, "f", b"hello world");
        assert_eq!(v.getattr(f).unwrap().size, 11);
        assert_eq!(read_all(fs, f), b"hello world");
        // O_APPEND writes at the end whatever the offset.
        let fh = v.open(&root, f, OpenFlags { append: true, ..RW }).unwrap();
        v.write(&root, fh, 0, b"!").unwrap();
        v.release(fh).unwrap();
        assert_eq!(read_all(fs, f), b"hello world!");
        // O_EXCL on an existing name; without it the file is opened.
        assert_eq!(
            errno(v.create(&root, d.ino, b"f", 0o644, RW, true)),
            libc::EEXIST
        );
        let (_, fh) = v.create(&root, d.ino, b"f", 0o644, RW, false).unwrap();
        v.release(fh).unwrap();
        // O_TRUNC.
        let fh = v
            .open(
                &root,
                f,
                OpenFlags {
                    truncate: true,
                    ..RW
                },
            )
            .unwrap();
        assert_eq!(v.getattr(f).unwrap().size, 0);
        v.write(&root, fh, 3, b"xy").unwrap();
        v.release(fh).unwrap();
        assert_eq!(read_all(fs, f), b"\0\0\0xy", "a hole reads as zeros");
        // Links, symlinks, rename.
        v.link(&root, f, Ino::ROOT, b"hard").unwrap();
        assert_eq!(v.getattr(f).unwrap().nlink, 2);
        let s = v.symlink(&root, Ino::ROOT, b"sym", b"d/f").unwrap();
        assert_eq!(v.readlink(s.ino).unwrap(), b"d/f");
        assert_eq!(errno(v.open(&root, s.ino, RW)), libc::ELOOP);
        v.rename(
            &root,
            Ino::ROOT,
            b"hard",
            d.ino,
            b"f",
            RenameFlags::default(),
        )
        .unwrap();
        // Both names are links of one file: POSIX makes it a no-op.
        assert_eq!(v.getattr(f).unwrap().nlink, 2);
        assert_eq!(v.lookup(&root, Ino::ROOT, b"hard").unwrap().ino, f);
        assert_eq!(errno(v.rmdir(&root, Ino::ROOT, b"d")), libc::ENOTEMPTY);
        assert_eq!(errno(v.open(&root, d.ino, RW)), libc::EISDIR);
        // readdir: `.` and `..` first, positions survive a removal.
        let dh = v.opendir(&root, Ino::ROOT).unwrap();
        let all = v.readdir(Ino::ROOT, 0, 100).unwrap();
        let names: Vec<&[u8]> = all.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, vec![&b"."[..], b"..", b"d", b"hard", b"sym"]);
        let rest = v.readdir(Ino::ROOT, all[2].cookie, 100).unwrap();
        assert_eq!(rest.len(), 2);
        v.releasedir(dh).unwrap();
        // Special files.
        let fifo = v
            .mknod(&root, Ino::ROOT, b"fifo", FileKind::Fifo, 0o600, 0)
            .unwrap();
        assert_eq!(fifo.kind, FileKind::Fifo);
        let dev = v
            .mknod(
                &root,
                Ino::ROOT,
                b"null",
                FileKind::CharDevice,
                0o666,
                0x0103,
            )
            .unwrap();
        assert_eq!(v.getattr(dev.ino).unwrap().rdev, 0x0103);
        // Extended attributes.
        v.setxattr(&root, f, b"user.k", b"v", XattrFlags::default())
            .unwrap();
        assert_eq!(v.getxattr(&root, f, b"user.k").unwrap(), b"v");
        assert_eq!(v.listxattr(&root, f).unwrap(), vec![b"user.k".to_vec()]);
        v.removexattr(&root, f, b"user.k").unwrap();
        assert_eq!(errno(v.getxattr(&root, f, b"user.k")), libc::ENODATA);
        assert!(v.statfs().unwrap().inodes >= 5);
        // Names.
        assert_eq!(
            errno(v.mkdir(&root, Ino::ROOT, &[b'n'; 256], 0o755)),
            libc::ENAMETOOLONG
        );
        assert_eq!(errno(v.lookup(&root, f, b"x")), libc::ENOTDIR);
    });
}

#[test]
fn open_unlinked_files_live_until_the_last_release() {
    both(|fs| {
        let root = Creds::root();
        let v = &fs.vfs;
        let (a, fh) = v.create(&root, Ino::ROOT, b"tmp", 0o600, RW, true).unwrap();
        v.write(&root, fh, 0, &vec![7u8; 5 << 20]).unwrap();
        v.unlink(&root, Ino::ROOT, b"tmp").unwrap();
        assert_eq!(errno(v.lookup(&root, Ino::ROOT, b"tmp")), libc::ENOENT);
        // Still readable and writable through the handle.
        v.write(&root, fh, 5 << 20, b"tail").unwrap();
        assert_eq!(v.read(fh, (5 << 20) - 2, 10).unwrap(), b"\x07\x07tail");
        assert_eq!(v.getattr(a.ino).unwrap().nlink, 0);
        v.release(fh).unwrap();
        // Freed once the unlink is durable: at the reaper's next round,
        // or at once on syncfs.
        v.syncfs().unwrap();
        assert_eq!(
            errno(v.getattr(a.ino)),
            libc::ENOENT,
            "freed at the last release"
        );
        assert!(v.meta().orphans().unwrap().is_empty());
    });
}

#[test]
fn permissions_as_ext4() {
    both(|fs| {
        let root = Creds::root();
        let alice = Creds::user(1000, 1000);
        let bob = Creds::user(1001, 1001);
        let v = &fs.vfs;
        // No write permission in a root-owned 0755 directory.
        assert_eq!(
            errno(v.create(&alice, Ino::ROOT, b"a", 0o644, RW, true)),
            libc::EACCES
        );
        // A sticky, world-writable directory: only owners may remove.
        let tmp = v.mkdir(&root, Ino::ROOT, b"tmp", 0o1777).unwrap();
        let (af, fh) = v
            .create(&alice, tmp.ino, b"alice", 0o644, RW, true)
            .unwrap();
        v.release(fh).unwrap();
        assert_eq!(af.uid, 1000);
        assert_eq!(errno(v.unlink(&bob, tmp.ino, b"alice")), libc::EPERM);
        assert_eq!(
            errno(v.rename(
                &bob,
                tmp.ino,
                b"alice",
                tmp.ino,
                b"bob",
                RenameFlags::default()
            )),
            libc::EPERM
        );
        // Reading needs the read bit.
        let fh = v
            .open(
                &bob,
                af.ino,
                OpenFlags {
                    read: true,
                    ..OpenFlags::default()
                },
            )
            .unwrap();
        v.release(fh).unwrap();
        assert_eq!(errno(v.open(&bob, af.ino, RW)), libc::EACCES);
        // chmod and chown: owner or root.
        let chmod = |p| SetAttrRequest {
            perm: Some(p),
            ..SetAttrRequest::default()
        };
        assert_eq!(errno(v.setattr(&bob, af.ino, &chmod(0o777))), libc::EPERM);
        v.setattr(&alice, af.ino, &chmod(0o4755)).unwrap();
        let chown = SetAttrRequest {
            uid: Some(1001),
            ..SetAttrRequest::default()
        };
        assert_eq!(errno(v.setattr(&alice, af.ino, &chown)), libc::EPERM);
        // Not even to the owner and group it has, by another user (Linux
        // `chown_ok`/`chgrp_ok`); the owner may.
        let same = SetAttrRequest {
            uid: Some(1000),
            gid: Some(1000),
            ..SetAttrRequest::default()
        };
        assert_eq!(errno(v.setattr(&bob, af.ino, &same)), libc::EPERM);
        let same_group = SetAttrRequest {
            gid: Some(1000),
            ..SetAttrRequest::default()
        };
        assert_eq!(errno(v.setattr(&bob, af.ino, &same_group)), libc::EPERM);
        v.setattr(&alice, af.ino, &same).unwrap();
        // A write by a non-root caller clears setuid.
        let fh = v.open(&alice, af.ino, RW).unwrap();
        v.write(&alice, fh, 0, b"x").unwrap();
        v.release(fh).unwrap();
        assert_eq!(v.getattr(af.ino).unwrap().perm, 0o755);
        // chown by root clears setuid too.
        v.setattr(&alice, af.ino, &chmod(0o4755)).unwrap();
        v.setattr(&root, af.ino, &chown).unwrap();
        let a = v.getattr(af.ino).unwrap();
        assert_eq!((a.uid, a.perm), (1001, 0o755));
        // Times: explicit times need ownership; UTIME_NOW write permission.
        let (bf, fh) = v.create(&bob, tmp.ino, b"bobs", 0o666, RW, true).unwrap();
        v.release(fh).unwrap();
        let at = SetAttrRequest {
            mtime: Some(TimeSet::At(slicefs::meta::Timespec { sec: 5, nsec: 0 })),
            ..SetAttrRequest::default()
        };
        assert_eq!(errno(v.setattr(&alice, bf.ino, &at)), libc::EPERM);
        let now = SetAttrRequest {
            mtime: Some(TimeSet::Now),
            ..SetAttrRequest::default()
        };
        v.setattr(&alice, bf.ino, &now).unwrap();
        // Setgid directories pass their group (and setgid to subdirs).
        let shared = v.mkdir(&root, Ino::ROOT, b"shared", 0o777).unwrap();
        v.setattr(
            &root,
            shared.ino,
            &SetAttrRequest {
                gid: Some(50),
                perm: Some(0o2777),
                ..SetAttrRequest::default()
            },
        )
        .unwrap();
        let sub = v.mkdir(&alice, shared.ino, b"sub", 0o755).unwrap();
        assert_eq!((sub.gid, sub.perm & 0o2000), (50, 0o2000));
        // Devices only by root.
        assert_eq!(
            errno(v.mknod(&alice, tmp.ino, b"dev", FileKind::BlockDevice, 0o600, 1)),
            libc::EPERM
        );
        // Search permission on the parent for lookup.
        let private = v.mkdir(&alice, tmp.ino, b"private", 0o700).unwrap();
        assert_eq!(errno(v.lookup(&bob, private.ino, b"x")), libc::EACCES);
        assert_eq!(errno(v.lookup(&alice, private.ino, b"x")), libc::ENOENT);
    });
}

#[test]
fn restart_from_the_data_directory_keeps_tree_and_data() {
    if single_host_only("restart_from_the_data_directory_keeps_tree_and_data") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let big: Vec<u8> = (0..(9 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    let (d, small, large) = {
        let fs = open_fs(Some(dir.path()));
        let d = fs.vfs.mkdir(&root, Ino::ROOT, b"dir", 0o750).unwrap().ino;
        let small = write_file(&fs, &root, d, "small", b"kept after a crash");
        let large = write_file(&fs, &root, Ino::ROOT, "large", &big);
        fs.vfs.fsyncdir(Ino::ROOT).unwrap();
        // A crash: nothing drained, the log holds what fsync made durable.
        assert!(
            fs.vfs.cache().dirty_bytes() > 0,
            "data still only in the log"
        );
        fs.crash();
        (d, small, large)
    };
    {
        let fs = open_fs(Some(dir.path()));
        assert_eq!(fs.vfs.lookup(&root, Ino::ROOT, b"dir").unwrap().ino, d);
        assert_eq!(fs.vfs.getattr(d).unwrap().perm, 0o750);
        assert_eq!(read_all(&fs, small), b"kept after a crash");
        assert_eq!(read_all(&fs, large), big);
        fs.unmount();
    }
    // Everything drained: a fresh start reads it from the block store.
    let fs = open_fs(Some(dir.path()));
    assert_eq!(fs.vfs.cache().dirty_bytes(), 0);
    assert_eq!(read_all(&fs, large), big);
    assert_eq!(read_all(&fs, small), b"kept after a crash");
    fs.unmount();
}

#[test]
fn a_crash_before_the_size_reaches_metadata_keeps_the_logged_size() {
    if single_host_only("a_crash_before_the_size_reaches_metadata_keeps_the_logged_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let ino = {
        let fs = open_fs(Some(dir.path()));
        let (a, fh) = fs
            .vfs
            .create(&root, Ino::ROOT, b"f", 0o644, RW, true)
            .unwrap();
        fs.vfs.write(&root, fh, 0, b"0123456789").unwrap();
        fs.vfs.fsyncdir(Ino::ROOT).unwrap();
        // The log is synced; the size is only in memory (no flush, no
        // release, no fsync of the file).
        fs.persister.sync().unwrap();
        assert_eq!(fs.vfs.meta().getattr(a.ino).unwrap().size, 0);
        fs.crash();
        a.ino
    };
    let fs = open_fs(Some(dir.path()));
    assert_eq!(fs.recovery.sizes_fixed, 1);
    assert_eq!(fs.vfs.getattr(ino).unwrap().size, 10);
    assert_eq!(read_all(&fs, ino), b"0123456789");
    fs.unmount();
}

#[test]
fn a_file_open_at_a_crash_and_unlinked_is_freed_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let ino = {
        let fs = open_fs(Some(dir.path()));
        let (a, fh) = fs
            .vfs
            .create(&root, Ino::ROOT, b"f", 0o644, RW, true)
            .unwrap();
        fs.vfs.write(&root, fh, 0, b"data").unwrap();
        fs.vfs.unlink(&root, Ino::ROOT, b"f").unwrap();
        fs.vfs.fsyncdir(Ino::ROOT).unwrap();
        fs.persister.sync().unwrap();
        fs.crash();
        a.ino
    };
    let fs = open_fs(Some(dir.path()));
    assert_eq!(fs.recovery.orphans_freed, 1);
    assert_eq!(errno(fs.vfs.getattr(ino)), libc::ENOENT);
    assert_eq!(fs.vfs.cache().dirty_bytes(), 0);
    fs.unmount();
}

#[test]
fn a_truncate_logged_but_not_in_metadata_is_applied_at_restart() {
    if single_host_only("a_truncate_logged_but_not_in_metadata_is_applied_at_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let ino = {
        let fs = open_fs(Some(dir.path()));
        let ino = write_file(&fs, &root, Ino::ROOT, "f", &vec![9u8; 6 << 20]);
        // Uploaded and committed, so the block map holds the old bytes.
        fs.rt
            .block_on(fs.vfs.transfer().drain(Duration::from_secs(60)))
            .unwrap();
        // The crash falls between the log's truncate record and the
        // metadata update.
        fs.persister.append_truncate(ino.file(), 3).unwrap();
        fs.persister.sync().unwrap();
        fs.crash();
        ino
    };
    let fs = open_fs(Some(dir.path()));
    assert_eq!(fs.recovery.truncates_applied, 1);
    assert_eq!(fs.vfs.getattr(ino).unwrap().size, 3);
    assert_eq!(read_all(&fs, ino), vec![9u8; 3]);
    // Growing the file again shows zeros, not the cut bytes.
    let fh = fs.vfs.open(&root, ino, RW).unwrap();
    fs.vfs.write(&root, fh, 5 << 20, b"end").unwrap();
    fs.vfs.release(fh).unwrap();
    let all = read_all(&fs, ino);
    assert_eq!(&all[..3], &[9, 9, 9]);
    assert!(all[3..5 << 20].iter().all(|&b| b == 0));
    fs.unmount();
}

/// Regression: recovery kept only the last truncate of a file, so a write
/// between two truncates that metadata lost was cut by the later one
/// alone, and bytes the first truncate had dropped came back from the
/// store.
#[test]
fn every_truncate_the_log_has_is_applied_in_order_at_restart() {
    if single_host_only("every_truncate_the_log_has_is_applied_in_order_at_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let ino = {
        let fs = open_fs(Some(dir.path()));
        let ino = write_file(&fs, &root, Ino::ROOT, "f", &[b'A'; 100]);
        fs.rt
            .block_on(fs.vfs.transfer().drain(Duration::from_secs(60)))
            .unwrap();
        // The log has truncate(0), write "B" x 10, truncate(50); metadata
        // has none of them (the crash came before its updates).
        fs.persister.append_truncate(ino.file(), 0).unwrap();
        fs.persister
            .append_slice(&SliceWrite {
                file: ino.file(),
                chunk: ChunkIndex(0),
                slice: SliceId(1 << 40),
                offset: 0,
                data: &[b'B'; 10],
            })
            .unwrap();
        fs.persister.append_truncate(ino.file(), 50).unwrap();
        fs.persister.sync().unwrap();
        fs.crash();
        ino
    };
    let fs = open_fs(Some(dir.path()));
    assert_eq!(fs.recovery.truncates_applied, 2);
    let mut want = vec![b'B'; 10];
    want.resize(50, 0);
    assert_eq!(read_all(&fs, ino), want);
    fs.unmount();
}

/// Regression: a file whose creation metadata lost (not fsynced before a
/// power loss) while the log kept its data: the data is dropped and its
/// inode number is never handed out again (a new file with that number
/// would otherwise meet the old file's log records or blocks).
#[test]
fn a_file_metadata_never_had_is_dropped_and_its_number_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let lost = {
        let fs = open_fs(Some(dir.path()));
        let last = write_file(&fs, &root, Ino::ROOT, "f", b"kept");
        let lost = FileId(last.0 + 3);
        fs.persister
            .append_slice(&SliceWrite {
                file: lost,
                chunk: ChunkIndex(0),
                slice: SliceId(1 << 40),
                offset: 0,
                data: b"orphaned bytes",
            })
            .unwrap();
        fs.persister.sync().unwrap();
        fs.crash();
        lost
    };
    let fs = open_fs(Some(dir.path()));
    assert_eq!(fs.recovery.unknown_files, 1);
    assert_eq!(fs.vfs.cache().cached_end(lost), 0, "its data is dropped");
    for i in 0..5 {
        let ino = write_file(&fs, &root, Ino::ROOT, &format!("new{i}"), b"x");
        assert!(ino.0 > lost.0, "inode {} handed out again", ino.0);
    }
    fs.unmount();
}

#[test]
fn fsync_with_upload_returns_after_the_data_is_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let fs = open_fs_with(
        Some(dir.path()),
        VfsConfig {
            fsync_upload: true,
            ..VfsConfig::default()
        },
    );
    let (a, fh) = fs
        .vfs
        .create(&root, Ino::ROOT, b"f", 0o644, RW, true)
        .unwrap();
    fs.vfs.write(&root, fh, 0, &vec![1u8; 100_000]).unwrap();
    assert!(fs.vfs.cache().oldest_pending_lsn(a.ino.file()).is_some());
    fs.vfs.fsync(fh, false).unwrap();
    assert_eq!(fs.vfs.cache().oldest_pending_lsn(a.ino.file()), None);
    assert!(fs.vfs.transfer().stats().uploads >= 1);
    fs.vfs.release(fh).unwrap();
    fs.unmount();
}

#[test]
fn a_bad_store_fails_at_open_before_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut o = FsOptions::new(dir.path());
    o.store = Some(StoreConfig::new("ftp://nowhere/x"));
    let err = rt
        .block_on(slicefs::vfs::open_fs(&o, rt.handle()))
        .err()
        .expect("refused");
    assert_eq!(err.errno(), libc::EIO);
    assert!(!dir.path().join("wal").exists(), "the log was not touched");
}

#[test]
fn fallocate_grows_the_file_with_zeros_and_refuses_other_modes() {
    both(|fs| {
        let root = Creds::root();
        let v = &fs.vfs;
        let (a, fh) = v.create(&root, Ino::ROOT, b"pre", 0o644, RW, true).unwrap();
        v.write(&root, fh, 0, b"head").unwrap();
        // posix_fallocate: the size grows, the new bytes read as zeros.
        v.fallocate(&root, fh, 4096, 8192, 0).unwrap();
        assert_eq!(v.getattr(a.ino).unwrap().size, 12288);
        // Inside the file, or with KEEP_SIZE: nothing changes.
        v.fallocate(&root, fh, 0, 100, 0).unwrap();
        v.fallocate(&root, fh, 0, 1 << 20, libc::FALLOC_FL_KEEP_SIZE)
            .unwrap();
        assert_eq!(v.getattr(a.ino).unwrap().size, 12288);
        let collapse = libc::FALLOC_FL_COLLAPSE_RANGE;
        assert_eq!(
            errno(v.fallocate(&root, fh, 0, 4096, collapse)),
            libc::EOPNOTSUPP
        );
        assert_eq!(
            errno(v.fallocate(&root, fh, u64::MAX - 1, 4, 0)),
            libc::EFBIG
        );
        v.fsync(fh, false).unwrap();
        v.release(fh).unwrap();
        let mut want = b"head".to_vec();
        want.resize(12288, 0);
        assert_eq!(read_all(fs, a.ino), want);
        // A read-only handle may not allocate.
        let ro = v
            .open(
                &root,
                a.ino,
                OpenFlags {
                    read: true,
                    ..OpenFlags::default()
                },
            )
            .unwrap();
        assert_eq!(errno(v.fallocate(&root, ro, 0, 1 << 20, 0)), libc::EBADF);
        v.release(ro).unwrap();
    });
}

const BLOCK: u64 = 4 << 20;

/// Bytes that are never zero, so a zero read back is a hole.
fn nonzero(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

#[test]
fn punch_and_zero_range_read_zeros_free_blocks_and_seek_finds_the_holes() {
    both(|fs| {
        let root = Creds::root();
        let v = &fs.vfs;
        let len = 3 * BLOCK + 1000;
        let mut want = nonzero(len);
        let (a, fh) = v.create(&root, Ino::ROOT, b"img", 0o644, RW, true).unwrap();
        v.write(&root, fh, 0, &want).unwrap();
        v.fsync(fh, false).unwrap();
        let drain = || {
            fs.rt
                .block_on(v.transfer().drain(Duration::from_secs(60)))
                .unwrap()
        };
        drain();
        let alloc = || v.meta().getattr(a.ino).unwrap().alloc;
        assert_eq!(alloc(), len);
        let seek = |at, whence| v.seek(a.ino, at, whence);
        assert_eq!(seek(0, Seek::Hole).unwrap(), len, "no hole yet");

        // The second half of block 0, all of block 1, 100 bytes of block 2.
        v.fallocate(&root, fh, BLOCK / 2, BLOCK + BLOCK / 2 + 100, PUNCH)
            .unwrap();
        want[(BLOCK / 2) as usize..(2 * BLOCK + 100) as usize].fill(0);
        // Zeros inside block 2, keeping the size.
        let zero_keep = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        v.fallocate(&root, fh, 2 * BLOCK + 5000, 3000, zero_keep)
            .unwrap();
        want[(2 * BLOCK + 5000) as usize..(2 * BLOCK + 8000) as usize].fill(0);
        // Zeros across the end: the file grows.
        v.fallocate(&root, fh, len - 10, 100, libc::FALLOC_FL_ZERO_RANGE)
            .unwrap();
        want.truncate((len - 10) as usize);
        want.resize((len + 90) as usize, 0);
        assert_eq!(v.getattr(a.ino).unwrap().size, len + 90);
        // A punch past the end changes nothing.
        v.fallocate(&root, fh, len + 90, BLOCK, PUNCH).unwrap();
        assert_eq!(read_all(fs, a.ino), want);

        v.fsync(fh, false).unwrap();
        drain();
        assert_eq!(read_all(fs, a.ino), want);
        // Block 1 is a hole now: its zeros were committed as no object.
        assert_eq!(alloc(), len - BLOCK);
        // Data: block 0 (half zeros, still one object), blocks 2 and 3
        // up to the old end; holes: block 1 and the grown tail.
        assert_eq!(seek(0, Seek::Data).unwrap(), 0);
        assert_eq!(seek(0, Seek::Hole).unwrap(), BLOCK);
        assert_eq!(seek(BLOCK + 7, Seek::Hole).unwrap(), BLOCK + 7);
        assert_eq!(seek(BLOCK, Seek::Data).unwrap(), 2 * BLOCK);
        assert_eq!(seek(2 * BLOCK, Seek::Hole).unwrap(), len);
        assert_eq!(errno(seek(len, Seek::Data)), libc::ENXIO);
        assert_eq!(errno(seek(len + 90, Seek::Hole)), libc::ENXIO);
        v.release(fh).unwrap();
    });
}

/// The zeros a punch writes over pending bytes are logged after them, so
/// a replay of the log cannot bring the punched bytes back.
#[test]
fn a_punched_hole_survives_a_crash_after_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let data = nonzero(2 * BLOCK);
    let ino = {
        // Uploads held back: the bytes are only in the log at the crash.
        let fs = open_fs_tuned(Some(dir.path()), |o| {
            o.transfer.upload_delay = Duration::from_secs(3600)
        });
        let (a, fh) = fs
            .vfs
            .create(&root, Ino::ROOT, b"f", 0o644, RW, true)
            .unwrap();
        fs.vfs.write(&root, fh, 0, &data).unwrap();
        fs.vfs.fsync(fh, false).unwrap();
        fs.vfs.fallocate(&root, fh, 0, BLOCK + 10, PUNCH).unwrap();
        fs.vfs.fsync(fh, false).unwrap();
        fs.crash();
        a.ino
    };
    let fs = open_fs(Some(dir.path()));
    let mut want = data;
    want[..(BLOCK + 10) as usize].fill(0);
    assert_eq!(read_all(&fs, ino), want);
    fs.unmount();
}

/// `copy_file_range` clones whole committed blocks (the destination
/// references the source's objects: no bytes stored twice), copies the
/// rest, and the clone outlives the source.
#[test]
fn copy_file_range_clones_whole_blocks_and_the_clone_outlives_its_source() {
    both(|fs| {
        let root = Creds::root();
        let v = &fs.vfs;
        let drain = || {
            fs.rt
                .block_on(v.transfer().drain(Duration::from_secs(60)))
                .unwrap()
        };
        let objects = || fs.rt.block_on(v.transfer().list_objects()).unwrap().len();
        let len = 3 * BLOCK + 1000;
        let data = nonzero(len);
        let (_, sfh) = v.create(&root, Ino::ROOT, b"src", 0o644, RW, true).unwrap();
        v.write(&root, sfh, 0, &data).unwrap();
        v.fsync(sfh, false).unwrap();
        drain();
        assert_eq!(objects(), 4);
        let (dst, dfh) = v.create(&root, Ino::ROOT, b"dst", 0o644, RW, true).unwrap();
        assert_eq!(
            v.copy_file_range(&root, sfh, 0, dfh, 0, u64::MAX).unwrap(),
            len
        );
        // Three blocks are clones at once (in metadata); the tail was
        // written.
        assert_eq!(v.meta().getattr(dst.ino).unwrap().alloc, 3 * BLOCK);
        assert_eq!(v.getattr(dst.ino).unwrap().size, len);
        assert_eq!(read_all(fs, dst.ino), data);
        drain();
        assert_eq!(objects(), 5, "only the tail is stored again");

        // Misaligned, and from a source with bytes not yet uploaded: a
        // plain copy, same result.
        v.write(&root, sfh, 10, b"fresh").unwrap();
        let mut want = data.clone();
        want[10..15].copy_from_slice(b"fresh");
        let (other, ofh) = v
            .create(&root, Ino::ROOT, b"other", 0o644, RW, true)
            .unwrap();
        assert_eq!(
            v.copy_file_range(&root, sfh, 0, ofh, 0, 2 * BLOCK).unwrap(),
            2 * BLOCK
        );
        assert_eq!(
            v.copy_file_range(&root, sfh, 7, ofh, 2 * BLOCK + 3, 100)
                .unwrap(),
            100
        );
        let got = read_all(fs, other.ino);
        assert_eq!(&got[..(2 * BLOCK) as usize], &want[..(2 * BLOCK) as usize]);
        assert_eq!(&got[(2 * BLOCK + 3) as usize..], &want[7..107]);
        // Past the source's end: nothing; one file's overlapping ranges:
        // refused.
        assert_eq!(v.copy_file_range(&root, sfh, len, dfh, 0, 10).unwrap(), 0);
        assert_eq!(
            errno(v.copy_file_range(&root, sfh, 0, sfh, 100, 1000)),
            libc::EINVAL
        );
        v.release(ofh).unwrap();

        // The source goes away entirely; the clone's objects stay, also
        // through an orphan sweep with no grace.
        v.release(sfh).unwrap();
        v.unlink(&root, Ino::ROOT, b"src").unwrap();
        v.syncfs().unwrap();
        drain();
        fs.rt
            .block_on(v.transfer().sweep_orphans(Duration::ZERO))
            .unwrap();
        v.release(dfh).unwrap();
        assert_eq!(read_all(fs, dst.ino), data);
    });
}

#[test]
fn set_id_bits_go_on_truncate_and_on_a_kill_suidgid_write_as_on_ext4() {
    both(|fs| {
        let root = Creds::root();
        let alice = Creds::user(1000, 1000);
        let v = &fs.vfs;
        let (a, fh) = v
            .create(&root, Ino::ROOT, b"tool", 0o666, RW, true)
            .unwrap();
        v.release(fh).unwrap();
        let set = |c: &Creds, r: SetAttrRequest| v.setattr(c, a.ino, &r).unwrap().perm;
        let chmod = |p| SetAttrRequest {
            perm: Some(p),
            ..SetAttrRequest::default()
        };
        let truncate = SetAttrRequest {
            size: Some(0),
            ..SetAttrRequest::default()
        };
        // A truncate by a caller other than root clears setuid, and setgid
        // of a group-executable file.
        set(&root, chmod(0o6776));
        assert_eq!(set(&alice, truncate), 0o0776);
        // Setgid without group execute (mandatory locking) stays.
        set(&root, chmod(0o6766));
        assert_eq!(set(&alice, truncate), 0o2766);
        // Root keeps both.
        set(&root, chmod(0o6776));
        assert_eq!(set(&root, truncate), 0o6776);
        // The FUSE kernel decides for writes (FUSE_WRITE_KILL_SUIDGID).
        let fh = v.open(&root, a.ino, RW).unwrap();
        v.write_kill_suidgid(fh, 0, b"x", false).unwrap();
        assert_eq!(v.getattr(a.ino).unwrap().perm, 0o6776);
        v.write_kill_suidgid(fh, 1, b"y", true).unwrap();
        assert_eq!(v.getattr(a.ino).unwrap().perm, 0o0776);
        v.release(fh).unwrap();
    });
}

#[test]
fn a_write_back_handle_serves_page_fills_and_writes_at_the_given_offset() {
    both(|fs| {
        let root = Creds::root();
        let v = &fs.vfs;
        let wo_append = OpenFlags::from_libc(libc::O_WRONLY | libc::O_APPEND);
        let (a, fh) = v
            .create(&root, Ino::ROOT, b"log", 0o644, wo_append, true)
            .unwrap();
        v.write(&root, fh, 0, b"0123456789").unwrap();
        // A plain O_APPEND handle appends whatever the offset, and a
        // write-only one may not read.
        v.write(&root, fh, 0, b"ab").unwrap();
        assert_eq!(errno(v.read(fh, 0, 4)), libc::EBADF);
        v.release(fh).unwrap();
        assert_eq!(read_all(fs, a.ino), b"0123456789ab");
        // Under the kernel's write-back cache the kernel picks offsets
        // (it rewrites whole pages) and fills pages through the handle.
        let wb = wo_append.for_kernel_writeback();
        assert!(wb.write && !wb.read && !wb.append && wb.cache_fill);
        let fh = v.open(&root, a.ino, wb).unwrap();
        assert_eq!(v.read(fh, 0, 4).unwrap(), b"0123");
        v.write(&root, fh, 0, b"XY").unwrap();
        v.release(fh).unwrap();
        assert_eq!(read_all(fs, a.ino), b"XY23456789ab");
        // A read-only handle gains nothing.
        let ro = OpenFlags::from_libc(libc::O_RDONLY).for_kernel_writeback();
        assert!(ro.read && !ro.write && !ro.cache_fill);
    });
}

/// Regression: with `wal/` moved aside after a crash, the mount came up
/// without a word and files read back as zeros. Metadata records which
/// log it depends on; another log is refused, unless corruption is
/// tolerated (then the start goes on and says so).
#[test]
fn a_missing_log_is_refused_unless_tolerated() {
    if single_host_only("a_missing_log_is_refused_unless_tolerated") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let f = {
        let fs = open_fs(Some(dir.path()));
        // `u` is in the object store; `f` only in the log.
        write_file(&fs, &root, Ino::ROOT, "u", &[4u8; 7000]);
        fs.rt
            .block_on(fs.vfs.transfer().drain(Duration::from_secs(60)))
            .unwrap();
        let f = write_file(&fs, &root, Ino::ROOT, "f", &[3u8; 5000]);
        fs.crash();
        f
    };
    std::fs::rename(dir.path().join("wal"), dir.path().join("wal.aside")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut o = FsOptions::new(dir.path());
    let err = match rt.block_on(slicefs::vfs::open_fs(&o, rt.handle())) {
        Ok(_) => panic!("a start without the log it needs must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("tolerate-corruption"), "{err}");
    assert!(err.contains("missing, replaced or recreated"), "{err}");
    // Put back, it starts and the data is there.
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    std::fs::rename(dir.path().join("wal.aside"), dir.path().join("wal")).unwrap();
    {
        let opened = rt.block_on(slicefs::vfs::open_fs(&o, rt.handle())).unwrap();
        let fs = Fs {
            vfs: opened.vfs,
            rt: tokio::runtime::Runtime::new().unwrap(),
            persister: opened.persister,
            recovery: opened.recovery,
        };
        let ino = fs.vfs.lookup(&root, Ino::ROOT, b"f").unwrap().ino;
        assert_eq!(read_all(&fs, ino), vec![3u8; 5000]);
        rt.block_on(fs.vfs.transfer().shutdown());
        fs.persister.close().unwrap();
    }
    // Without it again, tolerated: starts, and names the file that lost
    // data (`f`, not `u`).
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    o.wal.recovery_mode = slicefs_wal::RecoveryMode::TolerateCorruption;
    let opened = rt.block_on(slicefs::vfs::open_fs(&o, rt.handle())).unwrap();
    assert_eq!(opened.vfs.list_files_that_lost_data(0).unwrap(), vec![f]);
    rt.block_on(opened.vfs.transfer().shutdown());
    opened.persister.close().unwrap();
}

#[test]
fn a_sqlite_database_outside_the_data_dir_keeps_the_namespace_and_refuses_another_volume() {
    if single_host_only(
        "a_sqlite_database_outside_the_data_dir_keeps_the_namespace_and_refuses_another_log",
    ) {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let (data, other) = (top.path().join("data"), top.path().join("other"));
    let db = top.path().join("fast-disk/meta.db");
    std::fs::create_dir(db.parent().unwrap()).unwrap();
    let at = |o: &mut FsOptions| o.meta = MetaKind::SqliteAt(db.clone());
    let root = Creds::root();
    let f = {
        let fs = open_fs_tuned(Some(&data), at);
        let f = write_file(&fs, &root, Ino::ROOT, "f", b"metadata elsewhere");
        fs.vfs.fsyncdir(Ino::ROOT).unwrap();
        fs.crash();
        f
    };
    assert!(db.exists() && !data.join("meta.db").exists());
    {
        let fs = open_fs_tuned(Some(&data), at);
        assert_eq!(fs.vfs.lookup(&root, Ino::ROOT, b"f").unwrap().ino, f);
        assert_eq!(read_all(&fs, f), b"metadata elsewhere");
        fs.unmount();
    }
    // The database belongs to the first data directory's volume (and
    // depends on its log): with another data directory it is refused,
    // and left as it was.
    let refused = |what: &str| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut o = FsOptions::new(&other);
        at(&mut o);
        match rt.block_on(slicefs::vfs::open_fs(&o, rt.handle())) {
            Ok(_) => panic!("a database of another data directory must be refused"),
            Err(e) => assert!(e.to_string().contains(what), "{e}"),
        }
    };
    refused("they do not belong together");
    // Also after a clean stop, when no log is needed (as `slicefs
    // umount` leaves it): the first data directory's store holds the
    // blocks the database names.
    let fs = open_fs_tuned(Some(&data), at);
    fs.vfs.meta().forget_log().unwrap();
    fs.unmount();
    refused("they do not belong together");
    let fs = open_fs_tuned(Some(&data), at);
    assert_eq!(read_all(&fs, f), b"metadata elsewhere");
    fs.unmount();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A power loss that kept metadata's newer size (SQLite's pages reached
/// the disk in write-back) but lost the log's records behind it: the log
/// directory is rolled back to a copy taken at the last fsync. With
/// `truncate_first`, a truncate (also lost from the log) came before the
/// write.
fn metadata_ahead_of_a_torn_log(truncate_first: bool) -> (Vec<u8>, VfsRecovery) {
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let ino = {
        let fs = open_fs(Some(dir.path()));
        let ino = write_file(&fs, &root, Ino::ROOT, "f", &[b'A'; 1000]);
        fs.persister.sync().unwrap();
        copy_dir(&dir.path().join("wal"), &dir.path().join("wal.synced"));
        let fh = fs.vfs.open(&root, ino, RW).unwrap();
        if truncate_first {
            let req = SetAttrRequest {
                size: Some(500),
                ..SetAttrRequest::default()
            };
            fs.vfs.setattr(&root, ino, &req).unwrap();
        }
        fs.vfs.write(&root, fh, 2000, &[b'B'; 5000]).unwrap();
        fs.vfs.release(fh).unwrap();
        fs.crash();
        ino
    };
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    std::fs::rename(dir.path().join("wal.synced"), dir.path().join("wal")).unwrap();
    let fs = open_fs(Some(dir.path()));
    let got = read_all(&fs, ino);
    let rec = fs.recovery.clone();
    fs.unmount();
    (got, rec)
}

/// Regression (found by the randomized power-loss test with torn
/// writes): a size in metadata covering writes the log lost read as
/// zeros up to that size. Now the file is as it was after the last
/// record the log kept.
#[test]
fn a_size_whose_writes_the_log_lost_is_cut_back() {
    if single_host_only("a_size_whose_writes_the_log_lost_is_cut_back") {
        return;
    }
    let (got, rec) = metadata_ahead_of_a_torn_log(false);
    assert_eq!(rec.sizes_settled, 1);
    assert_eq!(got, vec![b'A'; 1000]);
}

/// As above, with a truncate before the lost write: the file is as it
/// was right after the truncate.
#[test]
fn a_truncate_the_log_lost_still_cuts_what_the_log_replays() {
    if single_host_only("a_truncate_the_log_lost_still_cuts_what_the_log_replays") {
        return;
    }
    let (got, rec) = metadata_ahead_of_a_torn_log(true);
    assert_eq!(rec.sizes_settled, 1);
    assert_eq!(got, vec![b'A'; 500]);
}

/// A log recreated after a clean drain (the `wal/` directory wiped)
/// starts past every LSN metadata refers to, so that a truncate it logs
/// is newer than the file's recorded truncate LSN and is applied after a
/// crash. Before, the new log started at LSN 1 and such a truncate was
/// taken for an old one.
#[test]
fn a_recreated_log_starts_past_the_lsns_metadata_holds() {
    if single_host_only("a_recreated_log_starts_past_the_lsns_metadata_holds") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let (ino, old_lsn) = {
        let fs = open_fs(Some(dir.path()));
        let ino = write_file(&fs, &root, Ino::ROOT, "f", &[7u8; 3000]);
        let req = SetAttrRequest {
            size: Some(2000),
            ..SetAttrRequest::default()
        };
        fs.vfs.setattr(&root, ino, &req).unwrap();
        let lsn = fs.vfs.getattr(ino).unwrap().truncate_lsn;
        assert!(lsn > 0);
        fs.rt
            .block_on(fs.vfs.transfer().drain(Duration::from_secs(60)))
            .unwrap();
        fs.vfs.meta().forget_log().unwrap();
        fs.unmount();
        (ino, lsn)
    };
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    {
        let fs = open_fs(Some(dir.path()));
        assert!(fs.persister.next_lsn().0 > old_lsn);
        // A truncate in the new log, lost from metadata by a crash, is
        // applied at the next start.
        fs.persister.append_truncate(ino.file(), 10).unwrap();
        fs.persister.sync().unwrap();
        fs.crash();
    }
    let fs = open_fs(Some(dir.path()));
    assert_eq!(fs.recovery.truncates_applied, 1);
    assert_eq!(read_all(&fs, ino), vec![7u8; 10]);
    fs.unmount();
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Regression: only sealed segments were compacted, so uploaded data in
/// the active segment (up to 64 MiB) stayed on the log's disk for good
/// when writes stopped. Once nothing is dirty, the reaper compacts the
/// whole log.
#[test]
fn the_log_gives_back_uploaded_data_once_everything_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let fs = open_fs(Some(dir.path()));
    write_file(&fs, &root, Ino::ROOT, "f", &vec![5u8; 24 << 20]);
    let wal = dir.path().join("wal");
    assert!(dir_bytes(&wal) >= 24 << 20);
    fs.rt
        .block_on(fs.vfs.transfer().drain(Duration::from_secs(60)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dir_bytes(&wal) >= 12 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log still holds {} bytes 20 s after everything was uploaded",
            dir_bytes(&wal)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fs.unmount();
}

/// The FUSE write-back cache sends a setattr of the mtime alone after
/// writes and for the inode of every rename and unlink. On an open file
/// it goes to the node (no metadata transaction) and reaches metadata
/// when the file is released; on a closed file whose mtime it does not
/// change (a rename's ctime flush) it changes nothing.
#[test]
fn an_mtime_only_setattr_is_kept_without_a_transaction_of_its_own() {
    let fs = open_fs(None);
    let root = Creds::root();
    let (a, fh) = fs
        .vfs
        .create(&root, Ino::ROOT, b"f", 0o644, RW, true)
        .unwrap();
    let t = slicefs::meta::Timespec {
        sec: 1_000_000,
        nsec: 5,
    };
    let req = SetAttrRequest {
        mtime: Some(TimeSet::At(t)),
        ..SetAttrRequest::default()
    };
    assert_eq!(fs.vfs.setattr(&root, a.ino, &req).unwrap().mtime, t);
    assert_eq!(fs.vfs.getattr(a.ino).unwrap().mtime, t);
    assert_ne!(fs.vfs.meta().getattr(a.ino).unwrap().mtime, t, "not yet");
    fs.vfs.release(fh).unwrap();
    assert_eq!(fs.vfs.meta().getattr(a.ino).unwrap().mtime, t);
    // Closed, same mtime: nothing changes.
    let before = fs.vfs.getattr(a.ino).unwrap();
    fs.vfs
        .rename(
            &root,
            Ino::ROOT,
            b"f",
            Ino::ROOT,
            b"g",
            RenameFlags::default(),
        )
        .unwrap();
    let renamed = fs.vfs.getattr(a.ino).unwrap();
    assert!(renamed.ctime >= before.ctime);
    let after = fs.vfs.setattr(&root, a.ino, &req).unwrap();
    assert_eq!(after, renamed);
    assert_eq!(fs.vfs.meta().getattr(a.ino).unwrap(), renamed);
    // Another user may not set it (not the owner).
    let other = Creds {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    };
    assert!(fs.vfs.setattr(&other, a.ino, &req).is_err());
}

/// What tar and `cp -a` do to every file they write, through its
/// descriptor before closing it: set its mtime, chown it to the owner it
/// has, chmod it. The chown changes only the ctime and makes no metadata
/// transaction; the chmod's transaction carries the file's size and times
/// too, so the release finds nothing left to write. A chown that changes
/// the owner is still a transaction of its own.
#[test]
fn a_same_owner_chown_and_a_chmod_of_an_open_written_file_cost_one_transaction() {
    // A shared volume's node publishes its bytes before its size reaches
    // metadata, so these go to metadata at once there.
    if single_host_only(
        "a_same_owner_chown_and_a_chmod_of_an_open_written_file_cost_one_transaction",
    ) {
        return;
    }
    // No upload (and so no block commit) during the test.
    let fs = open_fs_tuned(None, |o| {
        o.transfer.upload_delay = Duration::from_secs(3600);
        o.transfer.max_dirty_age = Duration::from_secs(3600);
    });
    let root = Creds::root();
    let (a, fh) = fs
        .vfs
        .create(&root, Ino::ROOT, b"f", 0o600, RW, true)
        .unwrap();
    assert_eq!(fs.vfs.write(&root, fh, 0, b"hello").unwrap(), 5);
    let t = slicefs::meta::Timespec {
        sec: 1_000_000,
        nsec: 5,
    };
    let utime = SetAttrRequest {
        mtime: Some(TimeSet::At(t)),
        ..SetAttrRequest::default()
    };
    fs.vfs.setattr(&root, a.ino, &utime).unwrap();
    let seq = fs.vfs.meta().commit_seq();
    let before = fs.vfs.getattr(a.ino).unwrap();
    let same_owner = SetAttrRequest {
        uid: Some(a.uid),
        gid: Some(a.gid),
        ..SetAttrRequest::default()
    };
    let chowned = fs.vfs.setattr(&root, a.ino, &same_owner).unwrap();
    assert!(chowned.ctime >= before.ctime);
    assert_eq!((chowned.uid, chowned.gid, chowned.mtime), (a.uid, a.gid, t));
    assert_eq!(
        fs.vfs.meta().commit_seq(),
        seq,
        "the chown made a transaction"
    );
    let chmod = SetAttrRequest {
        perm: Some(0o644),
        ..SetAttrRequest::default()
    };
    fs.vfs.setattr(&root, a.ino, &chmod).unwrap();
    assert_eq!(fs.vfs.meta().commit_seq(), seq + 1);
    let stored = fs.vfs.meta().getattr(a.ino).unwrap();
    assert_eq!((stored.perm, stored.size, stored.mtime), (0o644, 5, t));
    assert!(stored.ctime >= chowned.ctime);
    fs.vfs.release(fh).unwrap();
    assert_eq!(
        fs.vfs.meta().commit_seq(),
        seq + 1,
        "the release wrote again"
    );
    assert_eq!(fs.vfs.meta().getattr(a.ino).unwrap(), stored);
    assert_eq!(read_all(&fs, a.ino), b"hello");
    // Another owner: a transaction, on an open file too.
    let fh = fs.vfs.open(&root, a.ino, RW).unwrap();
    let other_owner = SetAttrRequest {
        uid: Some(1000),
        ..SetAttrRequest::default()
    };
    fs.vfs.setattr(&root, a.ino, &other_owner).unwrap();
    assert_eq!(fs.vfs.meta().getattr(a.ino).unwrap().uid, 1000);
    fs.vfs.release(fh).unwrap();
}

/// `readdirplus` lists what `readdir` lists, page by page, each entry
/// with the attributes `getattr` gives (an open file's newer size
/// included).
#[test]
fn readdirplus_pages_match_readdir_with_attributes() {
    let fs = open_fs(None);
    let root = Creds::root();
    let d = fs.vfs.mkdir(&root, Ino::ROOT, b"d", 0o755).unwrap();
    for i in 0..25 {
        write_file(&fs, &root, d.ino, &format!("f{i}"), &vec![1u8; i * 10]);
    }
    fs.vfs.mkdir(&root, d.ino, b"sub", 0o700).unwrap();
    let (open, fh) = fs
        .vfs
        .create(&root, d.ino, b"open", 0o644, RW, true)
        .unwrap();
    fs.vfs.write(&root, fh, 0, &[7u8; 4321]).unwrap();
    let mut plain = Vec::new();
    let mut plus = Vec::new();
    let (mut off_a, mut off_b) = (0, 0);
    loop {
        let a = fs.vfs.readdir(d.ino, off_a, 7).unwrap();
        let b = fs.vfs.readdirplus(d.ino, off_b, 7).unwrap();
        if a.is_empty() && b.is_empty() {
            break;
        }
        off_a = a.last().map_or(off_a, |e| e.cookie);
        off_b = b.last().map_or(off_b, |(e, _)| e.cookie);
        plain.extend(a);
        plus.extend(b);
    }
    assert_eq!(plain.len(), 2 + 25 + 2);
    assert_eq!(
        plus.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(),
        plain
    );
    for (e, a) in &plus {
        assert_eq!(e.ino, a.ino, "{:?}", e.name);
        assert_eq!(*a, fs.vfs.getattr(e.ino).unwrap(), "{:?}", e.name);
    }
    let (_, a) = plus.iter().find(|(e, _)| e.name == b"open").unwrap();
    assert_eq!((a.ino, a.size), (open.ino, 4321), "the open file's size");
    fs.vfs.release(fh).unwrap();
    assert!(matches!(
        fs.vfs.readdirplus(open.ino, 0, 10),
        Err(FsError::NotDir)
    ));
}

/// A listing without a directory handle (the FUSE mount answers OPENDIR
/// `ENOSYS`) checks the caller's read permission on every call, as
/// `opendir` does once: the owner and root list, others get EACCES
/// until the mode lets them read.
#[test]
fn listings_without_a_handle_check_read_permission() {
    let fs = open_fs(None);
    let root = Creds::root();
    let owner = Creds {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    };
    let other = Creds {
        uid: 1001,
        gid: 1001,
        groups: vec![],
    };
    let d = fs.vfs.mkdir(&root, Ino::ROOT, b"d", 0o700).unwrap();
    fs.vfs.mkdir(&root, d.ino, b"x", 0o755).unwrap();
    let req = SetAttrRequest {
        uid: Some(owner.uid),
        gid: Some(owner.gid),
        ..SetAttrRequest::default()
    };
    fs.vfs.setattr(&root, d.ino, &req).unwrap();
    for c in [&root, &owner] {
        assert_eq!(fs.vfs.readdir_as(c, d.ino, 0, 10).unwrap().len(), 3);
        assert_eq!(fs.vfs.readdirplus_as(c, d.ino, 2, 10).unwrap().len(), 1);
    }
    let denied = |r: Result<usize, FsError>| matches!(r, Err(FsError::Access));
    assert!(denied(
        fs.vfs.readdir_as(&other, d.ino, 0, 10).map(|v| v.len())
    ));
    assert!(denied(
        fs.vfs.readdirplus_as(&other, d.ino, 2, 10).map(|v| v.len())
    ));
    // Search permission alone does not list.
    let chmod = |mode| SetAttrRequest {
        perm: Some(mode),
        ..SetAttrRequest::default()
    };
    fs.vfs.setattr(&owner, d.ino, &chmod(0o711)).unwrap();
    assert!(denied(
        fs.vfs.readdir_as(&other, d.ino, 0, 10).map(|v| v.len())
    ));
    fs.vfs.setattr(&owner, d.ino, &chmod(0o755)).unwrap();
    assert_eq!(
        fs.vfs.readdirplus_as(&other, d.ino, 0, 10).unwrap().len(),
        3
    );
    // A file is not a directory, whoever asks.
    let (f, fh) = fs.vfs.create(&root, d.ino, b"f", 0o644, RW, true).unwrap();
    fs.vfs.release(fh).unwrap();
    for c in [&root, &other] {
        assert!(matches!(
            fs.vfs.readdir_as(c, f.ino, 0, 10),
            Err(FsError::NotDir)
        ));
        assert!(matches!(
            fs.vfs.readdirplus_as(c, f.ino, 0, 10),
            Err(FsError::NotDir)
        ));
    }
}

/// The reaper frees orphans in batches (one metadata transaction per 256):
/// every unlinked closed file goes, with its uploaded blocks; a file still
/// open, and one still linked under another name, stay intact.
#[test]
fn unlinked_files_are_freed_in_batches_and_open_or_linked_ones_stay() {
    both(|fs| {
        let root = Creds::root();
        let v = &fs.vfs;
        let mut inos = Vec::new();
        for i in 0..300 {
            inos.push(write_file(
                fs,
                &root,
                Ino::ROOT,
                &format!("f{i}"),
                &[i as u8; 300],
            ));
        }
        fs.rt
            .block_on(v.transfer().drain(Duration::from_secs(60)))
            .unwrap();
        let (kept, fh) = v
            .create(&root, Ino::ROOT, b"open", 0o644, RW, true)
            .unwrap();
        v.write(&root, fh, 0, b"still here").unwrap();
        v.link(&root, inos[7], Ino::ROOT, b"other-name").unwrap();
        for i in 0..300 {
            v.unlink(&root, Ino::ROOT, format!("f{i}").as_bytes())
                .unwrap();
        }
        v.unlink(&root, Ino::ROOT, b"open").unwrap();
        v.syncfs().unwrap();
        for (i, &ino) in inos.iter().enumerate() {
            if i == 7 {
                assert_eq!(read_all(fs, ino), vec![7u8; 300]);
            } else {
                assert_eq!(errno(v.getattr(ino)), libc::ENOENT, "f{i} not freed");
            }
        }
        assert_eq!(v.meta().orphans().unwrap(), vec![kept.ino]);
        assert_eq!(v.read(fh, 0, 100).unwrap(), b"still here");
        v.release(fh).unwrap();
        v.syncfs().unwrap();
        assert!(v.meta().orphans().unwrap().is_empty());
        assert_eq!(errno(v.getattr(kept.ino)), libc::ENOENT);
    });
}

/// The SQLite WAL is checkpointed (and cut back) in the background while
/// nothing syncs: before, only a sync emptied it, and 30,000 namespace
/// operations without one left a 900 MB WAL (8,000 mkdirs here: about
/// 140 MB).
#[test]
fn the_metadata_journal_stays_bounded_without_syncs() {
    if single_host_only("the_metadata_journal_stays_bounded_without_syncs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = open_fs(Some(dir.path()));
    let root = Creds::root();
    let wal = dir.path().join("meta.db-wal");
    let n = 8000;
    for i in 0..n {
        fs.vfs
            .mkdir(&root, Ino::ROOT, format!("d{i}").as_bytes(), 0o755)
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fs.vfs.meta().checkpoint_due() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint 20 s after {n} commits"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fewer than 1000 commits since the last checkpoint, and the WAL was
    // cut back to 16 MiB when it restarted.
    let size = std::fs::metadata(&wal).unwrap().len();
    assert!(size <= 64 << 20, "WAL of {size} bytes after {n} mkdirs");
    assert_eq!(fs.vfs.readdir(Ino::ROOT, 0, 10_000).unwrap().len(), n + 2);
    fs.unmount();
}

/// I/O by inode number (what an NFS server asks): each call checks
/// permission itself, the owner may write whatever the mode (as knfsd),
/// `eof` says whether the bytes reach the end, and what is not a regular
/// file or no longer exists is refused.
#[test]
fn io_by_inode_checks_each_call_and_reports_eof() {
    if single_host_only("io_by_inode_checks_each_call_and_reports_eof") {
        return;
    }
    both(|fs| {
        let root = Creds::root();
        let owner = Creds::user(1000, 1000);
        let other = Creds::user(2000, 2000);
        let v = &fs.vfs;
        let ino = write_file(fs, &root, Ino::ROOT, "f", b"");
        let set = |perm: u16| {
            v.setattr(
                &root,
                ino,
                &SetAttrRequest {
                    perm: Some(perm),
                    uid: Some(1000),
                    gid: Some(1000),
                    ..SetAttrRequest::default()
                },
            )
            .unwrap()
        };
        set(0o444);
        assert_eq!(
            v.write_at(&owner, ino, 0, b"0123456789", Stability::Unstable)
                .unwrap(),
            10
        );
        assert_eq!(
            errno(v.write_at(&other, ino, 0, b"x", Stability::Unstable)),
            libc::EACCES
        );
        assert_eq!(
            v.read_at(&other, ino, 0, 4).unwrap(),
            (b"0123".to_vec(), false)
        );
        assert_eq!(
            v.read_at(&other, ino, 6, 100).unwrap(),
            (b"6789".to_vec(), true)
        );
        assert_eq!(v.read_at(&other, ino, 50, 10).unwrap(), (Vec::new(), true));
        // Just written, so cached: the cache-only read answers the same.
        assert_eq!(
            v.read_at_cached(&other, ino, 6, 100).unwrap().unwrap(),
            (b"6789".to_vec(), true)
        );
        assert_eq!(
            v.read_at_cached(&other, ino, 50, 10).unwrap().unwrap(),
            (Vec::new(), true)
        );
        set(0o400);
        assert_eq!(errno(v.read_at(&other, ino, 0, 4)), libc::EACCES);
        assert_eq!(
            errno(v.read_at_cached(&other, ino, 0, 4).unwrap()),
            libc::EACCES
        );
        // A write past the end grows the file; a non-root writer clears
        // setuid.
        set(0o4755);
        v.write_at(&owner, ino, 20, b"end", Stability::FileSync)
            .unwrap();
        let a = v.getattr(ino).unwrap();
        assert_eq!((a.size, a.perm), (23, 0o755));
        assert_eq!(read_all(fs, ino)[8..], *b"89\0\0\0\0\0\0\0\0\0\0end");
        v.commit(ino).unwrap();
        assert_eq!(errno(v.read_at(&root, Ino::ROOT, 0, 1)), libc::EISDIR);
        v.unlink(&root, Ino::ROOT, b"f").unwrap();
        v.syncfs().unwrap();
        assert_eq!(errno(v.read_at(&root, ino, 0, 1)), libc::ENOENT);
        assert_eq!(errno(v.commit(ino)), libc::ENOENT);
    });
}

/// I/O by inode keeps one handle per file and direction between calls:
/// released when idle (their size then in metadata) or at the file's last
/// unlink; a crash before either loses no size (it is in the log).
#[test]
fn handles_kept_for_io_by_inode_go_when_idle_or_unlinked() {
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let (ino, other) = {
        let fs = open_fs(Some(dir.path()));
        let v = &fs.vfs;
        let ino = write_file(&fs, &root, Ino::ROOT, "f", b"");
        for i in 0..3u64 {
            v.write_at(&root, ino, i * 4, b"abcd", Stability::Unstable)
                .unwrap();
        }
        assert_eq!(v.kept_handles(), 1, "one handle for the writes");
        v.read_at(&root, ino, 0, 4).unwrap();
        assert_eq!(v.kept_handles(), 2, "and one for reading");
        v.release_idle(Duration::from_secs(3600)).unwrap();
        assert_eq!(v.kept_handles(), 2, "not idle for an hour yet");
        v.release_idle(Duration::ZERO).unwrap();
        assert_eq!(v.kept_handles(), 0);
        assert_eq!(v.getattr(ino).unwrap().size, 12);
        // Unlinked: its kept handle goes, and the file is freed.
        let gone = write_file(&fs, &root, Ino::ROOT, "g", b"");
        v.write_at(&root, gone, 0, b"x", Stability::Unstable)
            .unwrap();
        assert_eq!(v.kept_handles(), 1);
        v.unlink(&root, Ino::ROOT, b"g").unwrap();
        assert_eq!(v.kept_handles(), 0);
        // An orphan no handle holds is gone for I/O by inode at once.
        assert_eq!(errno(v.read_at(&root, gone, 0, 1)), libc::ENOENT);
        assert_eq!(v.kept_handles(), 0);
        v.syncfs().unwrap();
        assert_eq!(errno(v.read_at(&root, gone, 0, 1)), libc::ENOENT);
        // Written and still kept at the crash.
        let other = write_file(&fs, &root, Ino::ROOT, "h", b"");
        v.write_at(&root, other, 0, b"kept at the crash", Stability::Unstable)
            .unwrap();
        assert_eq!(v.kept_handles(), 1);
        fs.crash();
        (ino, other)
    };
    let fs = open_fs(Some(dir.path()));
    assert_eq!(read_all(&fs, ino), b"abcdabcdabcd");
    assert_eq!(read_all(&fs, other), b"kept at the crash");
    fs.unmount();
}

/// A stable write, and unstable writes followed by a commit, are in the
/// file after a crash, size included.
#[test]
fn committed_writes_by_inode_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = Creds::root();
    let ino = {
        let fs = open_fs(Some(dir.path()));
        let ino = write_file(&fs, &root, Ino::ROOT, "f", b"");
        fs.vfs
            .write_at(&root, ino, 0, b"unstable,", Stability::Unstable)
            .unwrap();
        fs.vfs.commit(ino).unwrap();
        fs.vfs
            .write_at(&root, ino, 9, b"data-sync,", Stability::DataSync)
            .unwrap();
        fs.vfs
            .write_at(&root, ino, 19, b"file-sync", Stability::FileSync)
            .unwrap();
        fs.crash();
        ino
    };
    let fs = open_fs(Some(dir.path()));
    assert_eq!(read_all(&fs, ino), b"unstable,data-sync,file-sync");
    fs.unmount();
}

/// A data directory remembers its block store and volume: a start without
/// a store uses it, a start with another store is refused, and a new data
/// directory cannot take over a store that holds another volume.
#[test]
fn the_data_dir_remembers_its_store_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = |d: &Path| url::Url::from_directory_path(d).unwrap().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let open = |data: &Path, store: Option<String>| {
        let mut o = FsOptions::new(data);
        o.store = store.map(StoreConfig::new);
        rt.block_on(slicefs::vfs::open_fs(&o, rt.handle()))
    };
    let close = |fs: slicefs::vfs::OpenedFs| {
        rt.block_on(fs.vfs.transfer().close(Duration::from_secs(60)))
            .unwrap();
        fs.persister.close().unwrap();
    };
    let root = Creds::root();
    let fs = open(dir.path(), Some(url(s1.path()))).unwrap();
    let (a, fh) = fs
        .vfs
        .create(&root, Ino::ROOT, b"f", 0o644, RW, true)
        .unwrap();
    fs.vfs.write(&root, fh, 0, b"in store one").unwrap();
    fs.vfs.release(fh).unwrap();
    fs.vfs.syncfs().unwrap();
    close(fs);
    assert!(
        std::fs::read_dir(s1.path().join("blocks")).unwrap().count() > 0,
        "uploaded to store one"
    );
    // No --store: the remembered one (the log is empty after the drain,
    // so the bytes come from store one).
    let fs = open(dir.path(), None).unwrap();
    let fh = fs
        .vfs
        .open(
            &root,
            a.ino,
            OpenFlags {
                read: true,
                ..OpenFlags::default()
            },
        )
        .unwrap();
    assert_eq!(fs.vfs.read(fh, 0, 100).unwrap(), b"in store one");
    fs.vfs.release(fh).unwrap();
    close(fs);
    let e = open(dir.path(), Some(url(s2.path())))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("belongs to volume") && e.contains(&url(s2.path())),
        "{e}"
    );
    let other = tempfile::tempdir().unwrap();
    let e = open(other.path(), Some(url(s1.path())))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already holds volume"), "{e}");
    // The same URL with a trailing slash difference is the same store.
    let fs = open(
        dir.path(),
        Some(url(s1.path()).trim_end_matches('/').to_string()),
    )
    .unwrap();
    close(fs);
}

/// With no extended attribute anywhere, reads of `security.*` and
/// `trusted.*` names answer `ENODATA` at once (the kernel asks for
/// `security.capability` at each first write and `ls -l` for
/// `security.selinux` of every entry), in Linux's order of errors: a bad
/// namespace first, `user.*` still checked for permission. Once one is
/// set, reads find it.
#[test]
fn xattr_reads_before_any_xattr_exists_follow_linux() {
    both(|fs| {
        let root = Creds::root();
        let v = &fs.vfs;
        let f = write_file(fs, &root, Ino::ROOT, "f", b"x");
        let chmod = SetAttrRequest {
            perm: Some(0o600),
            ..SetAttrRequest::default()
        };
        v.setattr(&root, f, &chmod).unwrap();
        let other = Creds {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        };
        for (c, name, want) in [
            (&root, &b"security.capability"[..], libc::ENODATA),
            (&other, b"security.selinux", libc::ENODATA),
            (&other, b"trusted.t", libc::ENODATA),
            (&other, b"user.k", libc::EACCES),
            (&root, b"user.k", libc::ENODATA),
            (&other, b"system.posix_acl_access", libc::EOPNOTSUPP),
            (&root, b"bogus.x", libc::EOPNOTSUPP),
        ] {
            let name_s = String::from_utf8_lossy(name);
            assert_eq!(errno(v.getxattr(c, f, name)), want, "{name_s}");
        }
        v.setxattr(&root, f, b"security.s", b"1", XattrFlags::default())
            .unwrap();
        assert_eq!(v.getxattr(&other, f, b"security.s").unwrap(), b"1");
        assert_eq!(errno(v.getxattr(&other, f, b"trusted.t")), libc::ENODATA);
    });
}

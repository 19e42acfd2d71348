//! `slicefs gc` on a real data directory: unreferenced block objects
//! older than the grace period go (or are only counted with `--dry-run`),
//! referenced ones and young ones stay, and the files still read back;
//! deletions pending at a stop finish at the next start; `slicefs fsck`
//! finds and repairs a damaged namespace and names files whose objects
//! are missing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use slicefs::meta::Ino;
use slicefs::vfs::{Creds, FsOptions, OpenFlags};

const BIN: &str = env!("CARGO_BIN_EXE_slicefs");

/// `slicefs <command> --data-dir data <extra>`: (exit code, stdout).
fn offline(command: &str, data: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg(command)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some_and(|c| c < 3),
        "slicefs {command}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), stdout)
}

fn gc(data: &Path, extra: &[&str]) -> String {
    let (code, out) = offline("gc", data, extra);
    assert_eq!(code, 0, "{out}");
    out
}

/// An object named like a block of `file` (layout 2), with `age`.
fn plant(data: &Path, file: u64, age: Duration) -> std::path::PathBuf {
    let dir = data.join(format!("blocks/blocks/{:013x}", file / 1024));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{file:016x}-{:08x}-{:02x}-{:016x}", 0, 0, 1));
    std::fs::write(&p, b"nobody's block").unwrap();
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
    p
}

/// The file system in `data`, opened.
fn open_data(rt: &tokio::runtime::Runtime, data: &Path) -> slicefs::vfs::OpenedFs {
    rt.block_on(slicefs::vfs::open_fs(&FsOptions::new(data), rt.handle()))
        .unwrap()
}

/// A runtime, root's credentials and read-write open flags.
fn setup() -> (tokio::runtime::Runtime, Creds, OpenFlags) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rw = OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    };
    (rt, Creds::root(), rw)
}

#[test]
fn gc_deletes_old_unreferenced_objects_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (rt, root, rw) = setup();
    let ino = {
        let fs = rt
            .block_on(slicefs::vfs::open_fs(&FsOptions::new(&data), rt.handle()))
            .unwrap();
        let (a, fh) = fs
            .vfs
            .create(&root, Ino::ROOT, b"f", 0o644, rw, true)
            .unwrap();
        fs.vfs.write(&root, fh, 0, b"kept by gc").unwrap();
        fs.vfs.release(fh).unwrap();
        fs.vfs.syncfs().unwrap();
        rt.block_on(fs.vfs.transfer().close(Duration::from_secs(60)))
            .unwrap();
        fs.persister.close().unwrap();
        a.ino
    };
    let old = plant(&data, 0xffff, Duration::from_secs(7200));
    let young = plant(&data, 0xfffe, Duration::ZERO);
    let out = gc(&data, &["--dry-run"]);
    assert!(out.contains("would delete 1 unreferenced"), "{out}");
    assert!(old.exists());
    let out = gc(&data, &[]);
    assert!(
        out.contains("deleted 1 unreferenced") && out.contains("kept 1"),
        "{out}"
    );
    assert!(!old.exists() && young.exists());
    let fs = rt
        .block_on(slicefs::vfs::open_fs(&FsOptions::new(&data), rt.handle()))
        .unwrap();
    let fh = fs
        .vfs
        .open(
            &root,
            ino,
            OpenFlags {
                read: true,
                ..OpenFlags::default()
            },
        )
        .unwrap();
    assert_eq!(fs.vfs.read(fh, 0, 100).unwrap(), b"kept by gc");
    fs.vfs.release(fh).unwrap();
    rt.block_on(fs.vfs.transfer().close(Duration::from_secs(60)))
        .unwrap();
    fs.persister.close().unwrap();
}

/// Block objects under `data`'s `file://` store.
fn block_objects(data: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { walk(&p) } else { 1 }
                })
                .sum()
        })
    }
    walk(&data.join("blocks/blocks"))
}

/// A file deleted just before a stop (within the 30 s grace period of
/// its objects) has its objects deleted at the next start: the doomed
/// list in metadata holds them. Before, the deletion queue was only in
/// memory and the objects stayed forever.
#[test]
fn deletions_queued_at_a_stop_finish_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (rt, root, rw) = setup();
    let open = || open_data(&rt, &data);
    let fs = open();
    for name in [&b"a"[..], b"b", b"kept"] {
        let (_, fh) = fs
            .vfs
            .create(&root, Ino::ROOT, name, 0o644, rw, true)
            .unwrap();
        fs.vfs.write(&root, fh, 0, &vec![7u8; 100_000]).unwrap();
        fs.vfs.release(fh).unwrap();
    }
    fs.vfs.syncfs().unwrap();
    rt.block_on(fs.vfs.transfer().drain(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(block_objects(&data), 3);
    fs.vfs.unlink(&root, Ino::ROOT, b"a").unwrap();
    fs.vfs.unlink(&root, Ino::ROOT, b"b").unwrap();
    // The files are freed (their blocks dropped and queued for deletion
    // after the grace period) by the reaper, soon after the unlink.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fs.vfs.transfer().stats().gc_pending < 2 {
        assert!(std::time::Instant::now() < deadline, "never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(fs.vfs.transfer().close(Duration::from_secs(60)))
        .unwrap();
    fs.persister.close().unwrap();
    drop(fs);
    assert_eq!(block_objects(&data), 3, "deleted before the grace period");

    // Well before the grace period (30 s) that a fresh deletion waits.
    let fs = open();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while block_objects(&data) > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(block_objects(&data), 1, "the deleted files' objects stayed");
    let a = fs.vfs.lookup(&root, Ino::ROOT, b"kept").unwrap();
    assert_eq!(a.size, 100_000);
    rt.block_on(fs.vfs.transfer().close(Duration::from_secs(60)))
        .unwrap();
    fs.persister.close().unwrap();
}

/// `slicefs fsck` on a namespace damaged by hand: a dentry naming no
/// inode, a file that lost its only name, a wrong link count and allocated size, and a
/// missing object. Without `--repair` it reports them (exit 2); with it,
/// it repairs the first four (the nameless file goes to /lost+found)
/// and names the file whose object is gone, which no repair brings back.
#[test]
fn fsck_finds_and_repairs_a_damaged_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (rt, root, rw) = setup();
    let open = || open_data(&rt, &data);
    let close = |fs: slicefs::vfs::OpenedFs| {
        rt.block_on(fs.vfs.transfer().close(Duration::from_secs(60)))
            .unwrap();
        fs.persister.close().unwrap();
    };
    let fs = open();
    let d = fs.vfs.mkdir(&root, Ino::ROOT, b"d", 0o755).unwrap();
    let mut inos = Vec::new();
    for (dir, name) in [(d.ino, &b"a"[..]), (Ino::ROOT, b"b"), (Ino::ROOT, b"c")] {
        let (a, fh) = fs.vfs.create(&root, dir, name, 0o644, rw, true).unwrap();
        // d/a too large for a pack: its object is its own.
        let data = if name == b"a" {
            vec![b'a'; slicefs::transfer::PACK_MEMBER_MAX + 1]
        } else {
            name.to_vec()
        };
        fs.vfs.write(&root, fh, 0, &data).unwrap();
        fs.vfs.release(fh).unwrap();
        inos.push(a.ino);
    }
    fs.vfs.syncfs().unwrap();
    close(fs);
    let (code, out) = offline("fsck", &data, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no problems"), "{out}");

    let db = rusqlite::Connection::open(data.join("meta.db")).unwrap();
    db.execute_batch(&format!(
        "INSERT INTO dentries(parent, name, ino, kind, cookie) VALUES (1, CAST('ghost' AS BLOB), 999999, 1, 999999);
         DELETE FROM dentries WHERE parent = 1 AND name = CAST('b' AS BLOB);
         UPDATE inodes SET nlink = 5, alloc = 77 WHERE ino = {};",
        inos[2].0
    ))
    .unwrap();
    drop(db);
    let a_object = std::fs::read_dir(data.join("blocks/blocks"))
        .unwrap()
        .flat_map(|e| std::fs::read_dir(e.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&format!("{:016x}-", inos[0].0))
        })
        .expect("d/a's object");
    std::fs::remove_file(a_object).unwrap();

    let (code, out) = offline("fsck", &data, &[]);
    assert_eq!(code, 2, "{out}");
    for want in [
        "problem: /ghost: names inode 999999, which does not exist",
        &format!(
            "problem: inode {} (Regular): has links but no name",
            inos[1].0
        ),
        "problem: /c: link count 5, counted 1",
        "problem: /c: 77 bytes allocated recorded, its blocks hold 1",
        "problem: /d/a: block at byte 0 missing from the store",
        "run with --repair",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }

    let (code, out) = offline("fsck", &data, &["--repair"]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(out.matches("repaired: ").count(), 4, "{out}");
    assert!(
        out.contains("problem: /d/a: block at byte 0 missing"),
        "{out}"
    );
    assert!(out.contains("5 problems, 1 not repairable"), "{out}");

    let (code, out) = offline("fsck", &data, &[]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(out.matches("problem: ").count(), 1, "{out}");
    let fs = open();
    let lf = fs.vfs.lookup(&root, Ino::ROOT, b"lost+found").unwrap();
    let b = fs
        .vfs
        .lookup(&root, lf.ino, format!("#{}", inos[1].0).as_bytes())
        .unwrap();
    assert_eq!((b.ino, b.nlink, b.size), (inos[1], 1, 1));
    let c = fs.vfs.getattr(inos[2]).unwrap();
    assert_eq!((c.nlink, c.alloc), (1, 1));
    assert!(fs.vfs.lookup(&root, Ino::ROOT, b"ghost").is_err());
    // The file whose object is gone: an error, never zeros.
    let fh = fs.vfs.open(&root, inos[0], rw).unwrap();
    let err = fs.vfs.read(fh, 0, 10).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    fs.vfs.release(fh).unwrap();
    close(fs);
}

//! `slicefs gc` on a real data directory: unreferenced block objects
//! older than the grace period go (or are only counted with `--dry-run`),
//! referenced ones and young ones stay, and the files still read back.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use slicefs::meta::Ino;
use slicefs::vfs::{Creds, FsOptions, OpenFlags};

const BIN: &str = env!("CARGO_BIN_EXE_slicefs");

fn gc(data: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("gc")
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "slicefs gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

#[test]
fn gc_deletes_old_unreferenced_objects_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = Creds::root();
    let rw = OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    };
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

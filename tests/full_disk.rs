//! A full disk under the data dir, on a real small file system: a 96 MiB
//! ext4 image, loop-mounted, holding the log, the metadata and the
//! `file://` block store. Writers must get `ENOSPC` (never `EIO`), reads
//! must keep working, deletes must free space, the mount must work again
//! once space is freed, without a restart, and nothing fsynced may be
//! lost. Runs as root (mount(2), losetup); skipped otherwise.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::powerloss::{Slicefs, fsync_dir, pattern, unmount};

/// The loop-mounted image; unmounted on drop.
struct LoopDisk {
    mountpoint: PathBuf,
}

impl LoopDisk {
    fn new(dir: &Path, mib: u64) -> Option<LoopDisk> {
        let img = dir.join("disk.img");
        let mountpoint = dir.join("disk");
        std::fs::create_dir_all(&mountpoint).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        // No blocks reserved for root: slicefs runs as root here.
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img)
            .status();
        if !mkfs.is_ok_and(|s| s.success()) {
            eprintln!("skipped: mkfs.ext4 is not available");
            return None;
        }
        let mnt = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mountpoint)
            .status();
        if !mnt.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot loop-mount an image here");
            return None;
        }
        Some(LoopDisk { mountpoint })
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        unmount(&self.mountpoint);
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Writes `data` to `path` and fsyncs it and its directory.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::File::open(path.parent().unwrap())?.sync_all()
}

const FILE_BYTES: usize = 1 << 20;

#[test]
fn a_full_disk_gives_enospc_keeps_fsynced_data_and_recovers_when_space_is_freed() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = LoopDisk::new(tmp.path(), 96) else {
        return;
    };
    let data_dir = disk.mountpoint.join("data");
    let mnt = tmp.path().join("mnt");
    let log = tmp.path().join("slicefs.log");
    let args = ["--upload-delay", "200ms", "--writeback-cache=false"].map(String::from);
    let mut fs = Slicefs::spawn(&mnt, &data_dir, &log, &args);
    fs.wait_mounted();
    let print_log = || {
        eprintln!(
            "---- slicefs log ----\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };

    // Fill it: every file fsynced, with its directory, until ENOSPC.
    let dir = mnt.join("d");
    std::fs::create_dir(&dir).unwrap();
    fsync_dir(&mnt);
    let mut synced = Vec::new();
    let mut failure = None;
    for i in 0..400u64 {
        match write_synced(&dir.join(format!("f{i}")), &pattern(i, FILE_BYTES)) {
            Ok(()) => synced.push(i),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let Some(e) = failure else {
        print_log();
        panic!("400 MiB fit on a 96 MiB disk");
    };
    if errno(&e) != libc::ENOSPC {
        print_log();
        panic!("a full disk must give ENOSPC, got {e}");
    }
    assert!(synced.len() >= 5, "only {} files fit", synced.len());

    // Reads keep working on the full disk.
    for &i in &synced {
        let got = std::fs::read(dir.join(format!("f{i}"))).unwrap();
        assert!(got == pattern(i, FILE_BYTES), "f{i} differs while full");
    }

    // A crash and a restart while the disk is still full: it mounts (the
    // start-up needs no room it does not have) and reads work.
    fs.kill9();
    let log2 = tmp.path().join("slicefs-restart.log");
    let mut fs = Slicefs::spawn(&mnt, &data_dir, &log2, &args);
    fs.wait_mounted();
    for &i in &synced {
        let got = std::fs::read(dir.join(format!("f{i}"))).unwrap();
        assert!(
            got == pattern(i, FILE_BYTES),
            "f{i} differs after a full-disk restart"
        );
    }

    // Deletes work and free space: the mount takes writes again, without
    // a restart.
    let (gone, kept) = synced.split_at(synced.len() / 2);
    for &i in gone {
        if let Err(e) = std::fs::remove_file(dir.join(format!("f{i}"))) {
            print_log();
            panic!("rm f{i} on a full disk: {e}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0;
    let again = loop {
        let p = dir.join(format!("again{n}"));
        match write_synced(&p, &pattern(1000, FILE_BYTES)) {
            Ok(()) => break p,
            Err(e) if errno(&e) == libc::ENOSPC && Instant::now() < deadline => {
                let _ = std::fs::remove_file(&p);
                n += 1;
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => {
                print_log();
                panic!("no write succeeded within 120 s of freeing space: {e}");
            }
        }
    };

    // Nothing fsynced is lost, across a crash too.
    fs.kill9();
    let mut fs = Slicefs::spawn(&mnt, &data_dir, &log, &args);
    fs.wait_mounted();
    for &i in kept {
        let got = std::fs::read(dir.join(format!("f{i}"))).unwrap();
        assert!(got == pattern(i, FILE_BYTES), "f{i} differs after restart");
    }
    for &i in gone {
        assert!(!dir.join(format!("f{i}")).exists(), "f{i} came back");
    }
    assert!(std::fs::read(&again).unwrap() == pattern(1000, FILE_BYTES));
    fs.kill9();
    drop(disk);
}

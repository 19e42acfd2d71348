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

/// With `--free-space-ratio`, the log does not take the data directory's
/// disk below the kept fraction: writers wait while uploads (to a store on
/// another disk) and log compaction make room, and all of their data
/// arrives. Without it the same writes take the disk down to a few MiB.
#[test]
fn a_free_space_ratio_keeps_the_disk_from_filling() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = LoopDisk::new(tmp.path(), 96) else {
        return;
    };
    let free_total = || {
        let s = nix::sys::statvfs::statvfs(&disk.mountpoint).unwrap();
        (
            s.blocks_available() * s.fragment_size(),
            s.blocks() * s.fragment_size(),
        )
    };
    let (_, total) = free_total();
    let keep = total / 2;
    let store = tmp.path().join("store");
    let mnt = tmp.path().join("mnt");
    let log = tmp.path().join("slicefs.log");
    let args = [
        "--upload-delay",
        "200ms",
        "--free-space-ratio",
        "0.5",
        "--store",
        store.to_str().unwrap(),
    ]
    .map(String::from);
    let mut fs = Slicefs::spawn(&mnt, &disk.mountpoint.join("data"), &log, &args);
    fs.wait_mounted();
    // The lowest free space seen while the writer runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let dir = disk.mountpoint.clone();
        std::thread::spawn(move || {
            let mut low = u64::MAX;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = nix::sys::statvfs::statvfs(&dir).unwrap();
                low = low.min(s.blocks_available() * s.fragment_size());
                std::thread::sleep(Duration::from_millis(5));
            }
            low
        })
    };
    let n = 48u64;
    for i in 0..n {
        if let Err(e) = write_synced(&mnt.join(format!("f{i}")), &pattern(i, FILE_BYTES)) {
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
            panic!("f{i}: {e}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let low = sampler.join().unwrap();
    for i in 0..n {
        let got = std::fs::read(mnt.join(format!("f{i}"))).unwrap();
        assert!(got == pattern(i, FILE_BYTES), "f{i} differs");
    }
    // Slack: the log grows its file in 4 MiB steps, and a compaction
    // writes the live records before it removes what they replace.
    let slack = 12 << 20;
    assert!(
        low + slack >= keep,
        "free space fell to {} MiB; the ratio keeps {} MiB",
        low >> 20,
        keep >> 20
    );
    fs.kill9();
    drop(disk);
}

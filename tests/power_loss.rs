//! Power-loss scenarios: slicefs's data directory lives on the power-loss
//! simulator (`slicefs-powerloss`), which keeps only what was fsynced
//! (file bytes by `fsync` of the file, directory entries by `fsync` of the
//! directory). Each scenario mounts the simulator in a temporary
//! directory, runs `slicefs mount <mnt> --data-dir <sim>/data` (default
//! `file://` store under the data dir, default durability), works through
//! the slicefs mount, then kill -9s slicefs, unmounts its dead mount,
//! pulls the simulator's plug and starts slicefs again on the same data
//! dir to check what POSIX promises after a power loss.
//!
//! The data directory itself is created and synced before slicefs starts
//! (as a package or an administrator would create it); everything inside
//! it is slicefs's to make durable. Every scenario also writes a
//! *baseline* file (fsynced, directory fsynced) that must survive, so an
//! "absent is allowed" outcome can never pass because everything was lost.
//!
//! Needs root and `/dev/fuse`; skips with a printed reason otherwise.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::powerloss::*;
use slicefs_powerloss::Crash;

// ---- 1-8: namespace and data operations around a power loss ----

#[test]
fn unlinked_durable_file_is_absent_or_intact_after_power_loss() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    let g = pattern(1, 100_000);
    write_synced(&r.p("g"), &g);
    fsync_dir(&r.mnt);
    std::fs::remove_file(r.p("g")).unwrap();
    r.crash(Crash::default());
    r.start();
    match std::fs::read(r.p("g")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!("g: absent"),
        Err(e) => panic!("g: {e}"),
        Ok(got) => {
            assert_same(&got, &g, "g came back after its unsynced unlink");
            eprintln!("g: back, intact");
        }
    }
    r.check_baseline();
}

#[test]
fn rename_over_durable_file_without_dir_fsync_gives_old_or_new() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    let (a, b) = (vec![b'A'; 100_000], vec![b'B'; 100_000]);
    write_synced(&r.p("f"), &a);
    fsync_dir(&r.mnt);
    write_synced(&r.p("tmp"), &b);
    fsync_dir(&r.mnt);
    std::fs::rename(r.p("tmp"), r.p("f")).unwrap();
    r.crash(Crash::default());
    r.start();
    let f = std::fs::read(r.p("f")).unwrap_or_else(|e| panic!("f is gone: {e}"));
    let tmp = std::fs::read(r.p("tmp")).ok();
    eprintln!("f: {}", if f == a { "A (rename lost)" } else { "not A" });
    if f == a {
        // The rename was lost: tmp is still there, whole.
        let tmp = tmp.expect("rename lost but tmp is gone");
        assert_same(&tmp, &b, "tmp after the rename was lost");
    } else {
        assert_same(&f, &b, "f is neither all A nor all B");
        assert!(tmp.is_none(), "rename kept but tmp still there");
    }
    r.check_baseline();
}

#[test]
fn truncate_of_durable_file_without_fsync_keeps_either_size() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    let data = pattern(3, 100_000);
    write_synced(&r.p("t"), &data);
    fsync_dir(&r.mnt);
    OpenOptions::new()
        .write(true)
        .open(r.p("t"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    r.crash(Crash::default());
    r.start();
    let got = std::fs::read(r.p("t")).unwrap_or_else(|e| panic!("t is gone: {e}"));
    assert!(
        got.len() == 1000 || got.len() == 100_000,
        "t has size {}",
        got.len()
    );
    assert_same(&got, &data[..got.len()], "t after the unsynced truncate");
    eprintln!("t: {} bytes", got.len());
    r.check_baseline();
}

#[test]
fn overwrite_in_place_without_fsync_gives_old_or_new_bytes_per_page() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    const LEN: usize = 256 << 10;
    let old = pattern(4, LEN);
    write_synced(&r.p("o"), &old);
    fsync_dir(&r.mnt);
    let (from, to) = (10_000usize, 150_000usize);
    let patch = pattern(44, to - from);
    let f = OpenOptions::new().write(true).open(r.p("o")).unwrap();
    f.write_all_at(&patch, from as u64).unwrap();
    drop(f);
    let mut new = old.clone();
    new[from..to].copy_from_slice(&patch);
    r.crash(Crash::default());
    r.start();
    let got = std::fs::read(r.p("o")).unwrap_or_else(|e| panic!("o is gone: {e}"));
    assert_eq!(got.len(), LEN, "size of o: {}", describe(&got));
    for (i, page) in got.chunks(4096).enumerate() {
        let range = i * 4096..(i * 4096 + page.len());
        assert!(
            page == &old[range.clone()] || page == &new[range.clone()],
            "page {i} of o is neither old nor new: {}",
            describe(page)
        );
    }
    r.check_baseline();
}

#[test]
fn append_fsync_loop_keeps_every_fsynced_prefix() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    const TOTAL: usize = 16 << 20;
    let stream = pattern(5, TOTAL);
    let path = r.p("log");
    File::create(&path).unwrap().sync_all().unwrap();
    fsync_dir(&r.mnt);
    // (bytes fsynced, bytes written) as the writer goes.
    let progress = std::sync::Arc::new(std::sync::Mutex::new((0usize, 0usize)));
    let writer = {
        let (progress, stream, path) = (progress.clone(), stream.clone(), path.clone());
        std::thread::spawn(move || {
            let Ok(mut f) = OpenOptions::new().append(true).open(&path) else {
                return;
            };
            let mut at = 0usize;
            let mut n = 1usize;
            while at < TOTAL {
                let len = (1 + (n * 7919) % (64 << 10)).min(TOTAL - at);
                if f.write_all(&stream[at..at + len]).is_err() {
                    return;
                }
                at += len;
                progress.lock().unwrap().1 = at;
                if f.sync_all().is_err() {
                    return;
                }
                progress.lock().unwrap().0 = at;
                n += 1;
            }
        })
    };
    // Let it write for a while, then pull the plug under it.
    let started = Instant::now();
    wait_for(Duration::from_secs(20), || {
        progress.lock().unwrap().0 >= (1 << 20) && started.elapsed() > Duration::from_secs(1)
    });
    r.kill9();
    writer.join().unwrap();
    let (synced, written) = *progress.lock().unwrap();
    assert!(synced > 0, "the writer fsynced nothing");
    r.sim.power_loss(Crash::default()).unwrap();
    r.start();
    let got = std::fs::read(&path).unwrap_or_else(|e| panic!("log is gone: {e}"));
    assert!(
        got.len() >= synced,
        "log has {} bytes, {synced} were fsynced",
        got.len()
    );
    assert!(
        got.len() <= written,
        "log has {} bytes, {written} written",
        got.len()
    );
    assert_same(&got, &stream[..got.len()], "log");
    r.check_baseline();
}

#[test]
fn mkdir_chain_with_dir_fsyncs_keeps_the_tree() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    std::fs::create_dir(r.p("a")).unwrap();
    fsync_dir(&r.mnt);
    std::fs::create_dir(r.p("a/b")).unwrap();
    fsync_dir(&r.p("a"));
    std::fs::create_dir(r.p("a/b/c")).unwrap();
    fsync_dir(&r.p("a/b"));
    let data = pattern(6, 50_000);
    write_synced(&r.p("a/b/c/f"), &data);
    fsync_dir(&r.p("a/b/c"));
    r.crash(Crash::default());
    r.start();
    for d in ["a", "a/b", "a/b/c"] {
        assert!(r.p(d).is_dir(), "{d} is gone");
    }
    let got = std::fs::read(r.p("a/b/c/f")).unwrap_or_else(|e| panic!("a/b/c/f: {e}"));
    assert_same(&got, &data, "a/b/c/f");
    r.check_baseline();
}

#[test]
fn hard_link_keeps_the_data_after_the_original_is_unlinked() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    let data = pattern(7, 200_000);
    write_synced(&r.p("orig"), &data);
    fsync_dir(&r.mnt);
    std::fs::hard_link(r.p("orig"), r.p("link")).unwrap();
    std::fs::remove_file(r.p("orig")).unwrap();
    fsync_dir(&r.mnt);
    r.crash(Crash::default());
    r.start();
    assert!(
        !r.p("orig").exists(),
        "orig came back after a synced unlink"
    );
    let got = std::fs::read(r.p("link")).unwrap_or_else(|e| panic!("link: {e}"));
    assert_same(&got, &data, "link");
    r.check_baseline();
}

#[test]
fn renamed_directory_tree_is_under_the_new_name() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    std::fs::create_dir_all(r.p("d/sub")).unwrap();
    let (x, y) = (pattern(8, 30_000), pattern(88, 70_000));
    write_synced(&r.p("d/x"), &x);
    write_synced(&r.p("d/sub/y"), &y);
    fsync_dir(&r.p("d/sub"));
    fsync_dir(&r.p("d"));
    fsync_dir(&r.mnt);
    std::fs::rename(r.p("d"), r.p("e")).unwrap();
    fsync_dir(&r.mnt);
    r.crash(Crash::default());
    r.start();
    assert!(!r.p("d").exists(), "d is still there after a synced rename");
    let got = std::fs::read(r.p("e/x")).unwrap_or_else(|e| panic!("e/x: {e}"));
    assert_same(&got, &x, "e/x");
    let got = std::fs::read(r.p("e/sub/y")).unwrap_or_else(|e| panic!("e/sub/y: {e}"));
    assert_same(&got, &y, "e/sub/y");
    r.check_baseline();
}

// ---- 9-12: large files, uploads, reclaim, recovery ----

#[test]
fn large_fsynced_file_survives_byte_identical() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    let data = write_large_synced(&r.p("big"), 9, 64 << 20);
    r.crash(Crash::torn(9));
    r.start();
    let got = std::fs::read(r.p("big")).unwrap_or_else(|e| panic!("big: {e}"));
    assert_same(&got, &data, "big");
    r.check_baseline();
}

#[test]
fn overwrite_after_upload_and_log_reclaim_survives() {
    let Some(mut r) = Rig::new(&["--upload-delay", "100ms"]) else {
        return;
    };
    r.start();
    r.baseline();
    let mut f_data = write_large_synced(&r.p("f"), 10, 8 << 20);
    // The log reclaims when it starts a new 64 MiB segment and the sealed
    // ones hold at least a segment's worth of dead (uploaded) bytes: write
    // 8 MiB files (each uploaded 100 ms after its last write) until the
    // log holds clearly less than what went through it.
    let wal = r.data.join("wal");
    let mut written: u64 = 8 << 20;
    let mut fillers = 0u64;
    while dir_bytes(&wal) + (32 << 20) > written {
        assert!(
            fillers < 32,
            "the log was not reclaimed after {written} bytes: it holds {}",
            dir_bytes(&wal)
        );
        write_large_synced(&r.p(&format!("filler{fillers}")), 1000 + fillers, 8 << 20);
        fillers += 1;
        written += 8 << 20;
    }
    eprintln!(
        "reclaimed after {fillers} filler files: the log holds {} of {written} bytes",
        dir_bytes(&wal)
    );
    let uploaded = wait_for(Duration::from_secs(120), || {
        r.status().is_some_and(|s| {
            s["dirty_bytes"].as_u64() == Some(0)
                && s["uploads_in_flight"].as_u64() == Some(0)
                && s["uploads"].as_u64().unwrap_or(0) > 0
        })
    });
    assert!(uploaded, "uploads not done in 120 s: {:?}", r.status());
    // Overwrite part of f, fsynced; and another part, not synced.
    let synced_patch = pattern(100, 1 << 20);
    let loose_patch = pattern(101, 1 << 20);
    let f = OpenOptions::new().write(true).open(r.p("f")).unwrap();
    f.write_all_at(&synced_patch, 1 << 20).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(&loose_patch, 5 << 20).unwrap();
    drop(f);
    f_data[1 << 20..2 << 20].copy_from_slice(&synced_patch);
    let mut f_new = f_data.clone();
    f_new[5 << 20..6 << 20].copy_from_slice(&loose_patch);
    r.crash(Crash::torn(10));
    r.start();
    let got = std::fs::read(r.p("f")).unwrap_or_else(|e| panic!("f: {e}"));
    assert_eq!(got.len(), 8 << 20, "size of f");
    for (i, page) in got.chunks(4096).enumerate() {
        let range = i * 4096..(i + 1) * 4096;
        assert!(
            page == &f_data[range.clone()] || page == &f_new[range.clone()],
            "page {i} of f (byte {}) is neither the synced nor the later content: {}",
            i * 4096,
            describe(page)
        );
    }
    for k in [0, fillers - 1] {
        let name = format!("filler{k}");
        let got = std::fs::read(r.p(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same(&got, &pattern(1000 + k, 8 << 20), &name);
    }
    r.check_baseline();
}

#[test]
fn power_loss_during_recovery_twice_keeps_fsynced_data() {
    let Some(mut r) = Rig::new(&[]) else { return };
    r.start();
    r.baseline();
    let a = write_large_synced(&r.p("a"), 11, 12 << 20);
    // Unsynced data for recovery to chew on.
    let mut f = File::create(r.p("b")).unwrap();
    for chunk in pattern(12, 12 << 20).chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    drop(f);
    let c = OpenOptions::new().write(true).open(r.p("a")).unwrap();
    c.set_len(16 << 20).unwrap();
    drop(c);
    // Fsynced after all that: the new size, zeros past the old end.
    let a_file = OpenOptions::new().write(true).open(r.p("a")).unwrap();
    a_file.sync_all().unwrap();
    drop(a_file);
    let mut a_want = a.clone();
    a_want.resize(16 << 20, 0);
    r.crash(Crash::torn(11));
    for (round, delay_ms) in [(0u64, 150u64), (1, 600)] {
        r.spawn();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let was_mounted = r.kill9();
        eprintln!("recovery crash {round}: killed after {delay_ms} ms, mounted: {was_mounted}");
        r.sim.power_loss(Crash::torn(100 + round)).unwrap();
    }
    r.start();
    let got = std::fs::read(r.p("a")).unwrap_or_else(|e| panic!("a: {e}"));
    assert_same(&got, &a_want, "a after two crashes during recovery");
    r.check_baseline();
}

#[test]
fn power_loss_during_upload_keeps_fsynced_data() {
    let Some(mut r) = Rig::new(&["--upload-delay", "100ms"]) else {
        return;
    };
    r.start();
    r.baseline();
    let blocks = r.data.join("blocks");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for round in 0..2u64 {
        let name = format!("up{round}");
        let before = count_files(&blocks);
        let data = write_large_synced(&r.p(&name), 20 + round, 16 << 20);
        files.push((name, data));
        // Crash as soon as the first new block object shows up.
        let started = wait_for(Duration::from_secs(30), || count_files(&blocks) > before);
        eprintln!("upload round {round}: blocks appeared before the crash: {started}");
        r.crash(Crash::torn(12 + round));
        r.start();
        for (name, data) in &files {
            let got = std::fs::read(r.p(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_same(&got, data, name);
        }
        r.check_baseline();
    }
}

/// Regression (fsyncgate): a failed SQLite commit or fsync was retried.
/// Now a durable metadata commit that fails with an I/O error poisons the
/// metadata store: the fsync fails, later namespace changes and syncs
/// fail too, even once the disk works again, and reads go on. The
/// simulator fails the fsync of SQLite's WAL on command.
#[test]
fn a_failed_metadata_fsync_is_never_retried() {
    let Some(mut r) = Rig::new(&[]) else {
        return;
    };
    r.start();
    std::fs::create_dir(r.p("a")).unwrap();
    r.sim.fail_fsync(Some("meta.db-wal"));
    let dir = std::fs::File::open(r.p("")).unwrap();
    let e = dir.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    r.sim.fail_fsync(None);
    let e = dir.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "retried: {e}");
    let e = std::fs::create_dir(r.p("b")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(r.p("a").is_dir(), "reads go on");
    drop(dir);
    r.kill9();
}

/// Regression: the log is read through a memory map, and a media error
/// under it was `SIGBUS`, killing the mount (and `slicefs wal verify`).
/// Now the disk's read error is an error: with every log segment
/// unreadable (the simulator fails reads of `*.wal` with `EIO`, after the
/// kernel's cached pages are dropped), the start is refused with one line
/// naming the media error, `wal verify` calls the log corrupt (exit 2),
/// neither dies of a signal, and once the disk reads again the fsynced
/// file is whole.
#[test]
fn a_media_error_under_the_log_is_an_error_not_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    let Some(mut r) = Rig::new(&["--upload-delay", "1h"]) else {
        return;
    };
    r.start();
    let a = write_large_synced(&r.p("a"), 41, 3 << 20);
    r.kill9();
    r.sim.fail_reads(Some(".wal"));
    std::fs::write("/proc/sys/vm/drop_caches", "1").expect("drop the page cache");

    let out = std::process::Command::new(bin())
        .args(["wal", "verify"])
        .arg(r.data.join("wal"))
        .output()
        .expect("run wal verify");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "wal verify died: {text}");
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("media error"), "{text}");

    r.spawn();
    let st = r
        .slicefs
        .as_mut()
        .unwrap()
        .wait_exit(MOUNT_TIMEOUT)
        .expect("the start is refused, not served");
    let log = std::fs::read_to_string(r.log_path(r.starts)).unwrap();
    assert_eq!(st.signal(), None, "slicefs died of a signal: {log}");
    assert!(!st.success(), "{log}");
    assert!(log.contains("media error"), "{log}");
    eprintln!(
        "refused: {}",
        log.lines()
            .filter(|l| l.contains("media"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    r.kill9();

    r.sim.fail_reads(None);
    r.start();
    let got = std::fs::read(r.p("a")).unwrap();
    assert_same(&got, &a, "a once the disk reads again");
}

/// `fdatasync` of a file whose inode is durable syncs the log alone (one
/// device flush, no metadata commit). Appends, each followed by
/// `fdatasync`, keep every synced byte and the size they make across a
/// power loss; the unsynced tail after the last one may come back in
/// part, never as other bytes. Then the same after the file's blocks
/// were uploaded (the size past the object store comes from the log).
#[test]
fn fdatasync_appends_keep_every_synced_byte() {
    let Some(mut r) = Rig::new(&["--upload-delay", "100ms"]) else {
        return;
    };
    r.start();
    r.baseline();
    let p = r.p("db");
    write_synced(&p, b"header");
    fsync_dir(&r.p(""));
    let mut want = b"header".to_vec();
    for round in 0..2u64 {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        for i in 0..40u64 {
            let chunk = pattern(round * 100 + i, 3000 + i as usize * 17);
            f.write_all(&chunk).unwrap();
            f.sync_data().unwrap();
            want.extend_from_slice(&chunk);
        }
        let tail = pattern(999, 5000);
        f.write_all(&tail).unwrap();
        drop(f);
        r.crash(Crash::torn(31 + round));
        r.start();
        let got = std::fs::read(&p).unwrap();
        assert!(
            got.len() >= want.len() && got.len() <= want.len() + tail.len(),
            "round {round}: size {} for {} synced bytes",
            got.len(),
            want.len()
        );
        assert_same(&got[..want.len()], &want, "the fdatasynced bytes");
        assert_same(
            &got[want.len()..],
            &tail[..got.len() - want.len()],
            "the tail",
        );
        want = got;
        r.check_baseline();
        // Let the blocks reach the object store before the next round.
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// A punch over uploaded blocks and a clone into an existing file change
/// only the block map (no bytes reach the log), so `fdatasync` must make
/// metadata durable too: after a power loss the punched range still reads
/// zeros and the copy still equals its source.
#[test]
fn fdatasync_keeps_a_punch_and_a_clone_of_uploaded_blocks() {
    use std::os::fd::AsRawFd;
    let Some(mut r) = Rig::new(&["--upload-delay", "2s"]) else {
        return;
    };
    r.start();
    r.baseline();
    let block = 4usize << 20;
    let data = pattern(77, 2 * block);
    write_synced(&r.p("img"), &data);
    write_synced(&r.p("src"), &data);
    write_synced(&r.p("dst"), b"old");
    fsync_dir(&r.mnt);
    let uploaded = wait_for(Duration::from_secs(60), || {
        r.status()
            .is_some_and(|s| s["dirty_bytes"].as_u64() == Some(0))
    });
    assert!(uploaded, "never uploaded");
    // A clean restart leaves the uploaded blocks out of the cache: the
    // punch and the clone below then write nothing to the log.
    let clean_restart = |r: &mut Rig| {
        unmount(&r.mnt);
        let log = r.log_path(r.starts);
        let done = wait_for(Duration::from_secs(60), || {
            std::fs::read_to_string(&log)
                .is_ok_and(|t| t.contains("everything is in the object store"))
        });
        assert!(done, "no clean stop");
        r.kill9();
        r.start();
    };
    clean_restart(&mut r);
    // Bytes waiting for upload keep the mount from compacting its idle
    // log, whose metadata sync would make the change durable anyway.
    std::fs::write(r.p("busy"), b"pending").unwrap();
    let img = OpenOptions::new().write(true).open(r.p("img")).unwrap();
    // Everything durable before: fdatasync may then take its one-flush
    // path, which is what must not lose the block map change.
    fsync_dir(&r.mnt);
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a descriptor this function owns.
    let rc = unsafe { libc::fallocate(img.as_raw_fd(), mode, 0, block as libc::off_t) };
    assert_eq!(rc, 0, "punch: {}", std::io::Error::last_os_error());
    img.sync_data().unwrap();
    drop(img);
    r.crash(Crash::default());
    r.start();
    let mut want = data.clone();
    want[..block].fill(0);
    assert_same(
        &std::fs::read(r.p("img")).unwrap(),
        &want,
        "the punched file",
    );
    clean_restart(&mut r);

    std::fs::write(r.p("busy"), b"pending").unwrap();
    let src = File::open(r.p("src")).unwrap();
    let dst = OpenOptions::new().write(true).open(r.p("dst")).unwrap();
    fsync_dir(&r.mnt);
    let (mut off_in, mut off_out) = (0i64, 0i64);
    // SAFETY: both descriptors are open; the offsets are this function's.
    let n = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            2 * block,
            0,
        )
    };
    assert_eq!(
        n,
        2 * block as isize,
        "copy: {}",
        std::io::Error::last_os_error()
    );
    dst.sync_data().unwrap();
    drop((src, dst));
    r.crash(Crash::default());
    r.start();
    assert_same(&std::fs::read(r.p("dst")).unwrap(), &data, "the clone");
    r.check_baseline();
}

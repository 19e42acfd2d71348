//! The simulator on a real FUSE mount: what survives a power loss, torn
//! writes, mmap and locks, a full disk, and SQLite in WAL mode on top.
//! Each test skips (with the reason printed) unless run as root with
//! `/dev/fuse`; each mount is unmounted when its test ends, failed or not.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use slicefs_powerloss::{Crash, Options, PowerLossFs, fuse_available};

/// A simulator mounted in a temporary directory; unmounted (then the
/// directory removed) on drop.
struct Sim {
    fs: PowerLossFs,
    _tmp: tempfile::TempDir,
}

impl Sim {
    fn path(&self, rel: &str) -> PathBuf {
        self.fs.mountpoint().join(rel)
    }

    fn crash(&mut self) {
        self.fs.power_loss(Crash::default()).expect("power loss");
    }
}

fn sim_with(options: Options) -> Option<Sim> {
    if let Err(why) = fuse_available() {
        eprintln!("skipped: {why}");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fs = PowerLossFs::mount(tmp.path(), options).expect("mount the simulator");
    Some(Sim { fs, _tmp: tmp })
}

fn sim() -> Option<Sim> {
    sim_with(Options::default())
}

fn fsync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

/// Writes `data` to a new file at `p` and fsyncs it (not its directory).
fn write_synced(p: &Path, data: &[u8]) {
    let mut f = File::create(p).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn write_and_fsync_survive() {
    let Some(mut s) = sim() else { return };
    write_synced(&s.path("f"), b"durable");
    fsync_dir(&s.path(""));
    s.crash();
    assert_eq!(std::fs::read(s.path("f")).unwrap(), b"durable");
}

#[test]
fn write_without_fsync_is_lost() {
    let Some(mut s) = sim() else { return };
    // A name made durable, the bytes never synced: an empty file.
    std::fs::write(s.path("empty"), b"never synced").unwrap();
    // Synced bytes, then more not synced: the synced ones.
    write_synced(&s.path("f"), b"old bytes");
    fsync_dir(&s.path(""));
    let f = OpenOptions::new().write(true).open(s.path("f")).unwrap();
    f.write_all_at(b"NEW", 0).unwrap();
    f.write_all_at(b"appended", 9).unwrap();
    drop(f);
    let u = s.fs.unsynced();
    assert_eq!((u.files, u.ops, u.bytes), (2, 3, 12 + 11), "{u:?}");
    assert_eq!(std::fs::read(s.path("f")).unwrap(), b"NEW bytesappended");
    s.crash();
    assert_eq!(std::fs::read(s.path("f")).unwrap(), b"old bytes");
    assert_eq!(std::fs::read(s.path("empty")).unwrap(), b"");
    assert_eq!(s.fs.unsynced().files, 0);
}

#[test]
fn create_without_dir_fsync_is_lost() {
    let Some(mut s) = sim() else { return };
    write_synced(&s.path("f"), b"synced file, unsynced name");
    s.crash();
    assert!(!s.path("f").exists());
}

#[test]
fn rename_without_dir_fsync_is_lost_and_with_it_kept() {
    let Some(mut s) = sim() else { return };
    write_synced(&s.path("a"), b"A");
    write_synced(&s.path("tmp"), b"B");
    fsync_dir(&s.path(""));
    std::fs::rename(s.path("tmp"), s.path("a")).unwrap();
    s.crash();
    assert_eq!(std::fs::read(s.path("a")).unwrap(), b"A");
    assert_eq!(std::fs::read(s.path("tmp")).unwrap(), b"B");
    std::fs::rename(s.path("tmp"), s.path("a")).unwrap();
    fsync_dir(&s.path(""));
    s.crash();
    assert_eq!(std::fs::read(s.path("a")).unwrap(), b"B");
    assert!(!s.path("tmp").exists());
}

#[test]
fn rename_across_directories_with_only_the_target_synced_keeps_both_names() {
    let Some(mut s) = sim() else { return };
    std::fs::create_dir(s.path("d1")).unwrap();
    std::fs::create_dir(s.path("d2")).unwrap();
    write_synced(&s.path("d1/f"), b"x");
    fsync_dir(&s.path("d1"));
    fsync_dir(&s.path("d2"));
    fsync_dir(&s.path(""));
    std::fs::rename(s.path("d1/f"), s.path("d2/f")).unwrap();
    fsync_dir(&s.path("d2"));
    s.crash();
    let (a, b) = (
        std::fs::metadata(s.path("d1/f")).unwrap(),
        std::fs::metadata(s.path("d2/f")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
}

#[test]
fn unlink_without_dir_fsync_is_undone() {
    let Some(mut s) = sim() else { return };
    write_synced(&s.path("g"), &[7u8; 100_000]);
    fsync_dir(&s.path(""));
    // Written after the sync and then unlinked: the synced bytes return.
    let f = OpenOptions::new().write(true).open(s.path("g")).unwrap();
    f.write_all_at(&[9u8; 10], 0).unwrap();
    drop(f);
    std::fs::remove_file(s.path("g")).unwrap();
    s.crash();
    assert_eq!(std::fs::read(s.path("g")).unwrap(), vec![7u8; 100_000]);
    std::fs::remove_file(s.path("g")).unwrap();
    fsync_dir(&s.path(""));
    s.crash();
    assert!(!s.path("g").exists());
}

#[test]
fn a_directory_not_synced_in_its_parent_is_lost_with_its_subtree() {
    let Some(mut s) = sim() else { return };
    std::fs::create_dir_all(s.path("a/b")).unwrap();
    write_synced(&s.path("a/b/f"), b"deep");
    fsync_dir(&s.path("a/b"));
    fsync_dir(&s.path("a"));
    s.crash();
    assert!(!s.path("a").exists());
    // With every parent synced, top-down: all there.
    std::fs::create_dir_all(s.path("a/b")).unwrap();
    write_synced(&s.path("a/b/f"), b"deep");
    fsync_dir(&s.path("a/b"));
    fsync_dir(&s.path("a"));
    fsync_dir(&s.path(""));
    // An unsynced rmdir of an empty directory is undone too.
    std::fs::create_dir(s.path("e")).unwrap();
    fsync_dir(&s.path(""));
    std::fs::remove_dir(s.path("e")).unwrap();
    s.crash();
    assert_eq!(std::fs::read(s.path("a/b/f")).unwrap(), b"deep");
    assert!(s.path("e").is_dir());
}

#[test]
fn links_symlinks_truncate_fallocate_and_attributes() {
    let Some(mut s) = sim() else { return };
    write_synced(&s.path("f"), &[1u8; 10_000]);
    std::fs::hard_link(s.path("f"), s.path("l")).unwrap();
    std::os::unix::fs::symlink("f", s.path("sym")).unwrap();
    assert_eq!(std::fs::metadata(s.path("f")).unwrap().nlink(), 2);
    fsync_dir(&s.path(""));
    // Unsynced: a truncate and a chmod.
    let f = OpenOptions::new().write(true).open(s.path("f")).unwrap();
    f.set_len(10).unwrap();
    drop(f);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.path("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    s.crash();
    assert_eq!(std::fs::read(s.path("l")).unwrap(), vec![1u8; 10_000]);
    assert_eq!(std::fs::read_link(s.path("sym")).unwrap(), Path::new("f"));
    assert_eq!(std::fs::read(s.path("sym")).unwrap().len(), 10_000);
    let m = std::fs::metadata(s.path("f")).unwrap();
    assert_eq!((m.nlink(), m.mode() & 0o7777), (2, 0o644));
    // fallocate: mode 0 grows with zeros, KEEP_SIZE changes nothing,
    // punching a hole is not supported.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.path("f"))
        .unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: a valid descriptor; fallocate only reads its arguments.
    unsafe {
        assert_eq!(libc::fallocate(fd, 0, 0, 20_000), 0);
        assert_eq!(libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 50_000), 0);
        assert_eq!(
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096
            ),
            -1
        );
    }
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    assert_eq!(f.metadata().unwrap().len(), 20_000);
    let mut want = vec![1u8; 10_000];
    want.resize(20_000, 0);
    let mut got = Vec::new();
    (&f).read_to_end(&mut got).unwrap();
    assert_eq!(got, want);
    f.sync_data().unwrap();
    drop(f);
    s.crash();
    assert_eq!(std::fs::read(s.path("f")).unwrap(), want);
    // renameat2 flags.
    let noreplace = |from: &str, to: &str, flags: u32| {
        let (a, b) = (
            std::ffi::CString::new(s.path(from).into_os_string().into_encoded_bytes()).unwrap(),
            std::ffi::CString::new(s.path(to).into_os_string().into_encoded_bytes()).unwrap(),
        );
        // SAFETY: two NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                flags,
            )
        };
        (rc == 0)
            .then_some(())
            .ok_or(std::io::Error::last_os_error().raw_os_error())
    };
    assert_eq!(
        noreplace("f", "l", libc::RENAME_NOREPLACE),
        Err(Some(libc::EEXIST))
    );
    assert_eq!(
        noreplace("f", "sym", libc::RENAME_EXCHANGE),
        Err(Some(libc::EINVAL))
    );
    assert_eq!(noreplace("f", "g", libc::RENAME_NOREPLACE), Ok(()));
}

#[test]
fn torn_mode_keeps_a_prefix_of_the_writes() {
    let Some(mut s) = sim() else { return };
    const BASE: usize = 64 << 10;
    const CHUNK: usize = 16 << 10;
    const WRITES: usize = 16;
    let mut partial = 0;
    let mut cut = 0;
    for seed in 0..8u64 {
        let p = s.path(&format!("t{seed}"));
        write_synced(&p, &vec![b'a'; BASE]);
        fsync_dir(&s.path(""));
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        for i in 0..WRITES {
            f.write_all_at(&vec![i as u8 + 1; CHUNK], (BASE + i * CHUNK) as u64)
                .unwrap();
        }
        drop(f);
        assert_eq!(s.fs.unsynced().ops, WRITES as u64);
        let report = s.fs.power_loss(Crash::torn(seed)).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert!(got.len() >= BASE && got.len() % 4096 == 0, "{}", got.len());
        assert!(got[..BASE].iter().all(|&b| b == b'a'));
        for (k, chunk) in got[BASE..].chunks(CHUNK).enumerate() {
            assert!(
                chunk.iter().all(|&b| b == k as u8 + 1),
                "seed {seed}: write {k} holds other bytes"
            );
        }
        let kept = got.len() - BASE;
        partial += usize::from(kept > 0 && kept < WRITES * CHUNK);
        cut += usize::from(!kept.is_multiple_of(CHUNK));
        assert_eq!(report.files_torn, u64::from(kept > 0));
        // The same seed and the same ops give the same image.
    }
    assert!(partial > 0, "no seed kept a strict prefix");
    assert!(cut > 0, "no seed tore a write");
}

/// `mmap` of a file
fn map(f: &File, len: usize, prot: libc::c_int) -> *mut u8 {
    // SAFETY: a fresh shared mapping of a valid descriptor; the callers
    // only touch it within `len` and the file's size, then unmap it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    p.cast()
}

#[test]
fn mmap_reads_see_pwritten_bytes_and_shared_writes_reach_the_file() {
    let Some(mut s) = sim() else { return };
    // The log's pattern: a read-only map larger than the file, the file
    // grown with fallocate and written with pwritev.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(s.path("seg"))
        .unwrap();
    const CAP: usize = 4 << 20;
    // SAFETY: a valid descriptor.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0);
    let m = map(&f, CAP, libc::PROT_READ);
    // SAFETY: the mapping is CAP bytes long; reads stay below the size.
    let view = |off: usize, len: usize| unsafe { std::slice::from_raw_parts(m.add(off), len) };
    assert!(view(0, 4096).iter().all(|&b| b == 0));
    let parts = [b"hello ".as_slice(), b"mmap".as_slice()];
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: the iovecs point into live slices.
    let n = unsafe { libc::pwritev(f.as_raw_fd(), iov.as_ptr(), 2, 12_345) };
    assert_eq!(n, 10);
    assert_eq!(view(12_345, 10), b"hello mmap");
    // Grown past the old size, through another descriptor: seen too.
    let g = OpenOptions::new().write(true).open(s.path("seg")).unwrap();
    g.write_all_at(&[5u8; 100_000], (2 << 20) + 7).unwrap();
    assert!(view((2 << 20) + 7, 100_000).iter().all(|&b| b == 5));
    f.sync_data().unwrap();
    // SAFETY: unmapping what `map` mapped.
    unsafe { libc::munmap(m.cast(), CAP) };

    // SQLite's -shm pattern: a read-write shared map, stores through it.
    let h = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(s.path("shm"))
        .unwrap();
    h.set_len(32 << 10).unwrap();
    let w = map(&h, 32 << 10, libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: within the 32 KiB mapping and file.
    unsafe {
        std::ptr::copy_nonoverlapping(b"stored".as_ptr(), w.add(8192), 6);
        assert_eq!(libc::msync(w.cast(), 32 << 10, libc::MS_SYNC), 0);
    }
    let mut buf = [0u8; 6];
    h.read_exact_at(&mut buf, 8192).unwrap();
    assert_eq!(&buf, b"stored");
    h.sync_all().unwrap();
    // SAFETY: unmapping what `map` mapped.
    unsafe { libc::munmap(w.cast(), 32 << 10) };
    fsync_dir(&s.path(""));
    drop((f, g, h));
    s.crash();
    let seg = std::fs::read(s.path("seg")).unwrap();
    assert_eq!(&seg[12_345..12_355], b"hello mmap");
    assert_eq!(seg.len(), (2 << 20) + 100_007);
    assert_eq!(
        &std::fs::read(s.path("shm")).unwrap()[8192..8198],
        b"stored"
    );
}

#[test]
fn flock_and_fcntl_locks_are_handled_by_the_kernel() {
    let Some(s) = sim() else { return };
    let p = s.path("lock");
    let a = File::create(&p).unwrap();
    let b = File::open(&p).unwrap();
    // SAFETY: valid descriptors.
    unsafe {
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(
            libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
    }
    // A POSIX lock held here blocks another process.
    // SAFETY: an all-zero flock is valid; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    // SAFETY: a valid descriptor and a valid flock.
    assert_eq!(unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETLK, &fl) }, 0);
    let out = Command::new("python3")
        .args([
            "-c",
            "import fcntl, sys\nf = open(sys.argv[1], 'r+')\ntry:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('got')\nexcept OSError:\n    print('blocked')",
        ])
        .arg(&p)
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "blocked");
}

#[test]
fn capacity_gives_enospc_and_freeing_gives_space_back() {
    let Some(s) = sim_with(Options::default().with_capacity(Some(1 << 20))) else {
        return;
    };
    // SAFETY: an all-zero statvfs is valid; statvfs fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(s.path("").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a valid buffer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_blocks * st.f_frsize, 1 << 20);
    std::fs::write(s.path("a"), vec![1u8; 800 << 10]).unwrap();
    let e = std::fs::write(s.path("b"), vec![1u8; 400 << 10]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    let f = OpenOptions::new().write(true).open(s.path("a")).unwrap();
    f.set_len(100 << 10).unwrap();
    drop(f);
    // The kernel sends a file's last release after close(2) returns, on
    // its own time; an unlinked file's space comes back at that release
    // (as on ext4). So space freed by the steps above may come back a
    // moment later: each write may wait for it, up to a second.
    let write_when_room = |name: &str, len: usize| {
        let mut tries = 0;
        while let Err(e) = std::fs::write(s.path(name), vec![1u8; len]) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            tries += 1;
            assert!(
                tries < 50,
                "no room 1 s after freeing: used {}",
                s.fs.used_bytes()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    write_when_room("b", 400 << 10);
    std::fs::remove_file(s.path("b")).unwrap();
    write_when_room("c", 800 << 10);
    assert_eq!(s.fs.used_bytes(), 900 << 10);
}

#[test]
fn a_busy_mount_is_detached_and_old_descriptors_fail() {
    let Some(mut s) = sim() else { return };
    write_synced(&s.path("f"), b"x");
    fsync_dir(&s.path(""));
    let held = OpenOptions::new().write(true).open(s.path("f")).unwrap();
    s.crash();
    // Writes go through to the simulator at once: the frozen one refuses.
    assert!(held.write_all_at(b"late", 0).is_err());
    assert_eq!(std::fs::read(s.path("f")).unwrap(), b"x");
}

/// Commits rows `start..start+n` one transaction each in a WAL database
/// at argv[1] with `synchronous=argv[2]`, printing each key once its
/// commit returned, and exits without closing (the WAL stays). The table
/// is created with `synchronous=FULL` and the directory synced after, so
/// that the database's names are durable.
const SQL_WRITE: &str = r#"
import os, sqlite3, sys
path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = sqlite3.connect(path, isolation_level=None)
db.execute("pragma journal_mode=wal")
db.execute("pragma synchronous=FULL")
db.execute("create table if not exists t(k integer primary key, v blob)")
fd = os.open(os.path.dirname(path), os.O_RDONLY)
os.fsync(fd)
os.close(fd)
db.execute("pragma synchronous=" + mode)
start = db.execute("select count(*) from t").fetchone()[0]
for k in range(start, start + n):
    db.execute("begin")
    db.execute("insert into t values (?, ?)", (k, os.urandom(3000)))
    db.execute("commit")
    print(k, flush=True)
os._exit(0)
"#;

/// Prints `integrity_check`, the row count, and whether the keys are
/// exactly 0..count.
const SQL_CHECK: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
ok = db.execute("pragma integrity_check").fetchone()[0]
keys = [r[0] for r in db.execute("select k from t order by k")]
print(ok, len(keys), keys == list(range(len(keys))))
"#;

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `n` commits, power loss, checks; returns (committed, kept).
fn sqlite_round(s: &mut Sim, mode: &str, n: usize, crash: Crash) -> (usize, usize) {
    let db = s.path("db/test.db");
    let db = db.to_str().unwrap();
    let out = python(SQL_WRITE, &[db, mode, &n.to_string()]);
    let committed = out
        .lines()
        .last()
        .map_or(0, |k| k.parse::<usize>().unwrap() + 1);
    s.fs.power_loss(crash).unwrap();
    let out = python(SQL_CHECK, &[db]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f[0], "ok", "integrity_check after {crash:?}: {out}");
    assert_eq!(f[2], "True", "keys are not a prefix: {out}");
    (committed, f[1].parse().unwrap())
}

#[test]
fn sqlite_wal_with_synchronous_full_keeps_every_commit() {
    let Some(mut s) = sim() else { return };
    std::fs::create_dir(s.path("db")).unwrap();
    fsync_dir(&s.path(""));
    for round in 0..3 {
        let (committed, kept) = sqlite_round(&mut s, "FULL", 400, Crash::torn(round));
        assert_eq!(kept, committed, "round {round}");
    }
}

#[test]
fn sqlite_wal_with_synchronous_normal_may_lose_commits_but_is_never_corrupt() {
    let Some(mut s) = sim() else { return };
    std::fs::create_dir(s.path("db")).unwrap();
    fsync_dir(&s.path(""));
    let mut lost = 0;
    for round in 0..6 {
        let crash = Crash {
            tear: round % 2 == 1,
            seed: round,
        };
        let (committed, kept) = sqlite_round(&mut s, "NORMAL", 600, crash);
        assert!(kept <= committed, "round {round}: {kept} > {committed}");
        lost += committed - kept;
    }
    assert!(lost > 0, "NORMAL never lost a commit: is fsync simulated?");
}

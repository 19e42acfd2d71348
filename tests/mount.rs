//! The main job, end to end, on a real FUSE mount (the suite runs as
//! root): a real tree copied in and compared, a git repository and an
//! SQLite database inside, unmount and remount; the kill -9 crash test
//! with a manifest of fsynced files; the same against SeaweedFS S3.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::{BIN, Mount, SQL_CHECK, posix_check_as_nobody, run};
use common::powerloss::mounted;
use common::seaweed::Seaweed;

fn diff_r(a: &Path, b: &Path) {
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b));
}

/// The real tree copied in: `/usr/include` (thousands of files).
fn source_tree() -> PathBuf {
    let p = PathBuf::from("/usr/include");
    assert!(p.is_dir(), "/usr/include is missing");
    p
}

fn main_job(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let dd = tmp.path().join("data");
    let src = source_tree();
    let m = Mount::start(&mp, &dd, extra);
    run(Command::new("cp").arg("-a").arg(&src).arg(mp.join("tree")));
    diff_r(&src, &mp.join("tree"));
    // A git repository inside.
    let repo = mp.join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&repo))
    };
    git(&["init", "-q"]);
    run(Command::new("cp")
        .arg("-a")
        .arg(src.join("linux"))
        .arg(repo.join("linux")));
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one"]);
    std::fs::write(repo.join("linux/extra.h"), "#define X 1\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "two"]);
    git(&["fsck", "--full", "--strict"]);
    // An SQLite database inside.
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(SQL_CHECK)
        .arg(mp.join("db.sqlite"))
        .arg("create"));
    assert_eq!(out.trim(), "ok 1334");
    m.stop();

    // Remounted: all still equal.
    let m = Mount::start(&mp, &dd, extra);
    diff_r(&src, &mp.join("tree"));
    git(&["fsck", "--full", "--strict"]);
    assert_eq!(git(&["rev-list", "--count", "HEAD"]).trim(), "2");
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(SQL_CHECK)
        .arg(mp.join("db.sqlite"))
        .arg("check"));
    assert_eq!(out.trim(), "ok 1334");
    // statfs answers as df expects.
    let df = run(Command::new("df").arg("-k").arg(&mp));
    assert!(df.lines().count() == 2, "{df}");
    m.stop();
}

#[test]
fn main_job_on_the_embedded_default() {
    main_job(&[]);
}

#[test]
fn main_job_on_seaweedfs_s3() {
    let sw = Seaweed::start().expect("start SeaweedFS");
    sw.create_bucket("slicefs").expect("bucket");
    let opts = sw.mount_args();
    let mut extra: Vec<&str> = vec!["--store", "s3://slicefs/fs"];
    extra.extend(opts.iter().map(String::as_str));
    main_job(&extra);
}

/// Writes files through the mount, fsyncing each file and its directory,
/// and records each in `manifest` (outside the mount) only after that.
/// Stops at the first error (the mount died).
fn writer(dir: PathBuf, manifest: PathBuf, start: usize) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut man = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&manifest)
            .unwrap();
        let mut n = 0;
        for i in start.. {
            let name = format!("f{i:06}");
            let len = 1 + (i * 7919) % (3 << 20);
            let data: Vec<u8> = (0..len)
                .map(|j| (j as u32).wrapping_mul(i as u32 | 1) as u8)
                .collect();
            let ok = (|| -> std::io::Result<()> {
                let mut f = std::fs::File::create(dir.join(&name))?;
                f.write_all(&data)?;
                f.sync_all()?;
                std::fs::File::open(&dir)?.sync_all()?;
                Ok(())
            })();
            if ok.is_err() {
                break;
            }
            writeln!(man, "{name} {len}").unwrap();
            man.sync_all().unwrap();
            n += 1;
        }
        n
    })
}

fn check_manifest(dir: &Path, manifest: &Path) -> usize {
    let text = std::fs::read_to_string(manifest).unwrap_or_default();
    let mut n = 0;
    for line in text.lines() {
        let (name, len) = line.split_once(' ').unwrap();
        let i: usize = name[1..].parse().unwrap();
        let len: usize = len.parse().unwrap();
        let got = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name} lost: {e}"));
        assert_eq!(got.len(), len, "{name}: length");
        let want: Vec<u8> = (0..len)
            .map(|j| (j as u32).wrapping_mul(i as u32 | 1) as u8)
            .collect();
        assert!(got == want, "{name}: bytes differ");
        n += 1;
    }
    n
}

#[test]
fn kill9_loses_no_fsynced_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let dd = tmp.path().join("data");
    let manifest = tmp.path().join("manifest");
    // Uploads are slowed down (long delay), so the log holds pending data
    // at every kill.
    let extra = ["--upload-delay", "1h", "--durability", "batch"];
    let mut next = 0;
    for round in 0..10 {
        let m = Mount::start(&mp, &dd, &extra);
        assert_eq!(
            check_manifest(&mp.join("w"), &manifest),
            next,
            "round {round}: after restart"
        );
        std::fs::create_dir_all(mp.join("w")).unwrap();
        let w = writer(mp.join("w"), manifest.clone(), next);
        // At least one file done before the kill (a loaded machine can take
        // longer than the round's delay for one 3 MiB file and its fsyncs),
        // then the kill lands in the middle of the next ones.
        let lines = || {
            std::fs::read_to_string(&manifest)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines() <= next && Instant::now() < deadline && !w.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300 + 97 * round as u64));
        let log = m.kill9();
        let written = w.join().unwrap();
        assert!(
            written > 0,
            "round {round}: the writer wrote nothing:\n{log}"
        );
        next += written;
        // The log held the data: the next mount replays it.
        let m = Mount::start(&mp, &dd, &extra);
        let replay = m.log_text();
        let pending: u64 = replay
            .split("pending_bytes=")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(
            pending > 0,
            "round {round}: the log replayed nothing:\n{replay}"
        );
        assert_eq!(check_manifest(&mp.join("w"), &manifest), next);
        m.kill9();
    }
    // Drain everything, wipe the log, and read it all from the store.
    let m = Mount::start(&mp, &dd, &["--upload-delay", "100ms"]);
    m.stop();
    std::fs::remove_dir_all(dd.join("wal")).unwrap();
    let m = Mount::start(&mp, &dd, &[]);
    assert_eq!(check_manifest(&mp.join("w"), &manifest), next);
    m.stop();
}

#[test]
fn background_mount_status_and_umount_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let dd = tmp.path().join("data");
    std::fs::create_dir_all(&mp).unwrap();
    let out = run(Command::new(BIN)
        .arg("mount")
        .arg(&mp)
        .arg("--data-dir")
        .arg(&dd)
        .args(["--background", "--upload-delay", "1h"]));
    assert!(out.contains("mounted"), "{out}");
    assert!(mounted(&mp));
    let guard = scopeguard(&mp);
    std::fs::write(mp.join("f"), vec![3u8; 3 << 20]).unwrap();
    // The status file is written every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = run(Command::new(BIN).arg("status").arg("--json").arg(&mp));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        if v["dirty_bytes"].as_u64().unwrap_or(0) > 0 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed dirty data: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let pid = status["pid"].as_u64().unwrap();
    let out = run(Command::new(BIN).arg("umount").arg("--flush").arg(&mp));
    assert!(out.contains("everything uploaded"), "{out}");
    assert!(!mounted(&mp));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the mount process ended"
    );
    drop(guard);
    // Everything was uploaded: the log replays nothing.
    let m = Mount::start(&mp, &dd, &[]);
    assert!(m.log_text().contains("pending_bytes=0"), "{}", m.log_text());
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), vec![3u8; 3 << 20]);
    m.stop();
}

/// Regression (operations issue): `umount --flush` printed "everything
/// uploaded" and exited 0 when the drain timed out with data only in the
/// local log. Now it exits non-zero and says how much is left and that it
/// is safe; the next mount uploads it.
#[test]
fn umount_flush_reports_a_drain_that_timed_out() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let dd = tmp.path().join("data");
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&mp).unwrap();
    let url = format!("file://{}/", store.display());
    let out = run(Command::new(BIN)
        .arg("mount")
        .arg(&mp)
        .arg("--data-dir")
        .arg(&dd)
        .args(["--store", &url, "--background", "--upload-delay", "1h"])
        .args(["--drain-timeout", "2s"]));
    assert!(out.contains("mounted"), "{out}");
    let guard = scopeguard(&mp);
    std::fs::write(mp.join("f"), vec![5u8; 3 << 20]).unwrap();
    // Every upload fails from now on: where the block objects go is a file.
    std::fs::write(store.join("blocks"), b"in the way").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run(Command::new(BIN).arg("status").arg("--json").arg(&mp))
        .contains("\"dirty_bytes\": 3145728")
    {
        assert!(
            Instant::now() < deadline,
            "status never showed the dirty data"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = Command::new(BIN)
        .arg("umount")
        .arg("--flush")
        .arg(&mp)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("everything uploaded"), "{stdout}");
    assert!(
        stderr.contains("3.0 MiB remain only in the local log") && stderr.contains("safe"),
        "{stderr}"
    );
    assert!(!mounted(&mp));
    drop(guard);
    // The next mount uploads it.
    std::fs::remove_file(store.join("blocks")).unwrap();
    let m = Mount::start(&mp, &dd, &["--store", &url]);
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), vec![5u8; 3 << 20]);
    let log = m.stop();
    assert!(log.contains("everything is in the object store"), "{log}");
}

/// Regressions (operations issue): a regular file, a non-empty directory
/// and a path that already is a mount were mounted over; `mount
/// --background` reported "mounted" when its child failed (data directory
/// locked) because some FUSE mount was at the path.
#[test]
fn unsuitable_mountpoints_are_refused_and_background_reports_the_child() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = tmp.path().join("data");
    let mount = |mp: &Path, dd: &Path, extra: &[&str]| {
        Command::new(BIN)
            .arg("mount")
            .arg(mp)
            .arg("--data-dir")
            .arg(dd)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = |out: std::process::Output, want: &str| {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(want), "want {want:?}: {err}");
    };
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    refused(mount(&file, &dd, &[]), "is not a directory");
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("kept"), b"x").unwrap();
    refused(mount(&full, &dd, &["--background"]), "--allow-non-empty");

    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let out = run(Command::new(BIN)
        .arg("mount")
        .arg(&mp)
        .arg("--data-dir")
        .arg(&dd)
        .arg("--background"));
    assert!(out.contains("mounted"), "{out}");
    let guard = scopeguard(&mp);
    refused(
        mount(&mp, &tmp.path().join("other"), &["--background"]),
        "already a mount point",
    );
    // The same data directory at another path: the child fails (locked),
    // and the parent says so although a slicefs mount exists.
    let mp2 = tmp.path().join("mnt2");
    std::fs::create_dir(&mp2).unwrap();
    refused(mount(&mp2, &dd, &["--background"]), "exited");
    assert!(!mounted(&mp2));
    // Over a non-empty directory when asked: its file is hidden, then back.
    run(Command::new(BIN).arg("umount").arg(&mp));
    drop(guard);
    let out = run(Command::new(BIN)
        .arg("mount")
        .arg(&full)
        .arg("--data-dir")
        .arg(&dd)
        .args(["--background", "--allow-non-empty"]));
    assert!(out.contains("mounted"), "{out}");
    let guard = scopeguard(&full);
    assert!(!full.join("kept").exists());
    run(Command::new(BIN).arg("umount").arg("--flush").arg(&full));
    drop(guard);
    assert!(full.join("kept").exists());

    // A mount whose process was killed: refused with what to do.
    let out = run(Command::new(BIN)
        .arg("mount")
        .arg(&mp)
        .arg("--data-dir")
        .arg(&dd)
        .arg("--background"));
    let guard = scopeguard(&mp);
    let pid: i32 = out
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out}"));
    run(Command::new("kill").args(["-9", &pid.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the mount process did not die");
        std::thread::sleep(Duration::from_millis(50));
    }
    refused(mount(&mp, &dd, &[]), "unmount it first");
    drop(guard);
    assert!(!mounted(&mp));
}

/// Detaches the mount if the test fails before its own unmount.
fn scopeguard(mp: &Path) -> impl Drop + '_ {
    struct G<'a>(&'a Path);
    impl Drop for G<'_> {
        fn drop(&mut self) {
            if mounted(self.0) {
                let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    G(mp)
}

/// Field `n` (0 source, 2 type, 3 options) of the topmost mount at
/// `mp` in `/proc/self/mounts`.
fn mount_field(mp: &Path, n: usize) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let target = mp.to_str().unwrap();
    let line = mounts
        .lines()
        .rfind(|l| l.split(' ').nth(1) == Some(target))
        .unwrap_or_else(|| panic!("{target} not in /proc/self/mounts"));
    line.split(' ').nth(n).unwrap().to_string()
}

/// The options of the mount at `mp`, from `/proc/self/mounts`.
fn mount_options(mp: &Path) -> Vec<String> {
    mount_field(mp, 3).split(',').map(String::from).collect()
}

fn write_back_semantics(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let dd = tmp.path().join("data");
    // The unprivileged user must reach the mountpoint.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut args = vec!["--allow-other"];
    args.extend_from_slice(extra);
    let m = Mount::start(&mp, &dd, &args);
    // Other users reach it: the kernel checks permission bits too.
    assert!(mount_options(&mp).contains(&"default_permissions".to_string()));
    // Named as libfuse file systems are (`df -T`, `findmnt -t`), with the
    // data directory as its source.
    assert_eq!(mount_field(&mp, 2), "fuse.slicefs");
    assert_eq!(Path::new(&mount_field(&mp, 0)), dd.canonicalize().unwrap());
    let dir = mp.join("nobody");
    posix_check_as_nobody(&dir);
    // Root's write keeps setuid.
    let r = mp.join("rootsuid");
    std::fs::write(&r, b"x").unwrap();
    run(Command::new("chmod").arg("4755").arg(&r));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&r)
        .unwrap()
        .write_all(b"y")
        .unwrap();
    m.stop();
    let m = Mount::start(&mp, &dd, extra);
    // Root alone reaches it; the VFS checks every request.
    assert!(!mount_options(&mp).contains(&"default_permissions".to_string()));
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::metadata(dir.join("f")).unwrap();
    assert_eq!((f.len(), f.mtime()), (10004, 1_000_000_000));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir.join("suid")), 0o2745);
    assert_eq!(mode(&r), 0o4755);
    assert_eq!(std::fs::read(&r).unwrap(), b"xy");
    m.stop();
}

#[test]
fn write_back_cache_keeps_posix_semantics() {
    write_back_semantics(&[]);
}

#[test]
fn write_through_keeps_posix_semantics() {
    write_back_semantics(&["--writeback-cache=false"]);
}

/// Waits (bounded) for the mount process to exit after the kernel ended
/// its session; returns its log.
fn wait_exit(mut m: Mount) -> String {
    let mut child = m.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "mount exited with {st}:\n{}", m.log_text());
            return m.log_text();
        }
        assert!(Instant::now() < deadline, "no exit:\n{}", m.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain `umount` ends the mount process cleanly, with no attempt to
/// unmount again (fuser's "Unmount failed: Invalid argument" warning);
/// an aborted FUSE connection leaves a dead mount, which the process
/// unmounts itself (it is its own).
#[test]
fn a_umount_or_an_aborted_connection_ends_the_mount_cleanly() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let dd = tmp.path().join("data");
    let m = Mount::start(&mp, &dd, &[]);
    std::fs::write(mp.join("f"), b"kept").unwrap();
    run(Command::new("umount").arg(&mp));
    let log = wait_exit(m);
    assert!(!log.contains("Unmount failed"), "{log}");
    assert!(!mounted(&mp));

    let m = Mount::start(&mp, &dd, &[]);
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"kept");
    let dev = std::fs::metadata(&mp).unwrap().dev();
    let minor = nix::sys::stat::minor(dev);
    std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1").unwrap();
    let log = wait_exit(m);
    assert!(!mounted(&mp), "the dead mount is left:\n{log}");
    assert!(!log.contains("Unmount failed"), "{log}");
    let m = Mount::start(&mp, &dd, &[]);
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"kept");
    m.stop();
}

/// Everyday calls the mount does not implement (ioctl `TCGETS` at each
/// Python text-mode open, poll, `SEEK_DATA`/`SEEK_HOLE`, `copy_file_range`)
/// get the answer a local file system gives, and nothing in the log
/// (before: a warning each, 13,927 lines in one session).
#[test]
fn unimplemented_everyday_calls_are_answered_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &[]);
    let script = r#"
import os, select, sys
d = sys.argv[1]
for i in range(20):
    with open(os.path.join(d, f"t{i}.txt"), "w") as f:
        f.write("line\n" * 100)
    with open(os.path.join(d, f"t{i}.txt")) as f:
        assert f.read().count("\n") == 100
fd = os.open(os.path.join(d, "t0.txt"), os.O_RDWR)
assert os.lseek(fd, 0, os.SEEK_DATA) == 0
assert os.lseek(fd, 0, os.SEEK_HOLE) == 500
p = select.poll(); p.register(fd, select.POLLIN | select.POLLOUT)
assert p.poll(1000)
out = os.open(os.path.join(d, "copy.txt"), os.O_CREAT | os.O_WRONLY, 0o644)
assert os.copy_file_range(fd, out, 500, 0, 0) == 500
os.close(out); os.close(fd)
assert open(os.path.join(d, "copy.txt")).read() == "line\n" * 100
print("ok")
"#;
    let out = run(Command::new("python3").args(["-c", script]).arg(&mp));
    assert_eq!(out.trim(), "ok");
    let log = m.stop();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(noisy.is_empty(), "{}", noisy.join("\n"));
}

/// An everyday session (a source tree copied in and listed, a git
/// repository made of it, python file I/O, editor-style saves through a
/// swap file and rename, vim itself) logs no WARN or ERROR line.
#[test]
fn an_everyday_session_logs_no_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &[]);
    let sh = r#"
set -e
cd "$1"
cp -r /usr/include/linux inc
ls -lR inc > /dev/null
cd inc
git init -q
git add .
git -c user.email=t@t -c user.name=t commit -qm tree
cd ..
python3 - <<'PY'
import os
for i in range(100):
    with open("py%d.txt" % i, "w") as f:
        f.write("hello, " * 100)
    with open("py%d.txt" % i) as f:
        assert f.read() == "hello, " * 100
for i in range(20):
    with open(".doc.swp", "w") as f:
        f.write("x" * 1000)
        f.flush()
        os.fsync(f.fileno())
    os.rename(".doc.swp", "doc.txt")
    fd = os.open(".", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
PY
if command -v vim > /dev/null; then vim -es -c 'normal ihello' -c wq vim.txt; fi
echo ok
"#;
    let out = run(Command::new("sh").args(["-c", sh, "sh"]).arg(&mp));
    assert_eq!(out.lines().last(), Some("ok"), "{out}");
    let log = m.stop();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(noisy.is_empty(), "{}", noisy.join("\n"));
}

/// `slicefs stats MP --count 2` while a writer runs: a header and two
/// lines, the write rate moving; `| head -1` ends quietly.
#[test]
fn stats_shows_the_counters_moving() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, mp) = (stop.clone(), mp.clone());
        std::thread::spawn(move || {
            let piece = vec![7u8; 1 << 20];
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                std::fs::write(mp.join(format!("f{}", i % 8)), &piece).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out =
        run(Command::new(BIN)
            .arg("stats")
            .arg(&mp)
            .args(["--count", "2", "--interval", "1500ms"]));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("write/s"), "{out}");
    let writes: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert!(writes.iter().any(|w| *w != "0"), "{out}");
    let out = run(Command::new("bash").arg("-c").arg(format!(
        "{BIN} stats {} | head -1; echo rc=${{PIPESTATUS[0]}}",
        mp.display()
    )));
    assert!(out.contains("ops/s") && out.contains("rc=0"), "{out}");
    m.stop();
}

/// `st_blocks` (`du`) counts the bytes a file's blocks hold once it is
/// uploaded, as on ext4: a 100 MiB sparse file with 4 KiB of data shows
/// 4 KiB, `truncate -s 1G` shows nothing. Before, every file showed its
/// size.
#[test]
fn du_of_a_sparse_file_counts_only_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &[]);
    let script = r#"
import os, sys
d = sys.argv[1]
fd = os.open(os.path.join(d, "sparse"), os.O_CREAT | os.O_WRONLY, 0o644)
os.pwrite(fd, b"x" * 4096, 100 << 20)
os.fsync(fd); os.close(fd)
with open(os.path.join(d, "dense"), "wb") as f:
    f.write(b"y" * (1 << 20))
with open(os.path.join(d, "empty"), "wb") as f:
    f.truncate(1 << 30)
"#;
    run(Command::new("python3").args(["-c", script]).arg(&mp));
    let blocks = |name: &str| -> u64 {
        run(Command::new("stat").args(["-c", "%b"]).arg(mp.join(name)))
            .trim()
            .parse()
            .unwrap()
    };
    // Exact once uploaded (the mount uploads after 1 s here); until then
    // a file reports its size.
    let deadline = Instant::now() + Duration::from_secs(60);
    while blocks("sparse") > 8 || blocks("dense") > 2048 {
        assert!(Instant::now() < deadline, "st_blocks never settled");
        std::thread::sleep(Duration::from_millis(200));
    }
    let du = |name: &str| -> String {
        run(Command::new("du").arg("-k").arg(mp.join(name)))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(du("sparse"), "4");
    assert_eq!(du("dense"), "1024");
    assert_eq!(du("empty"), "0");
    assert_eq!(
        std::fs::metadata(mp.join("sparse")).unwrap().len(),
        (100 << 20) + 4096
    );
    m.stop();
}

/// `fallocate --punch-hole` and `--zero-range` through the kernel read
/// zeros, free the blocks they cover (`du`), and `SEEK_DATA`/`SEEK_HOLE`
/// find the hole; a query on a file open for writing under the write-back
/// cache falls back to the kernel's whole-file answer. Before, both modes
/// answered EOPNOTSUPP and every file was all data.
#[test]
fn punched_holes_read_zeros_free_space_and_seek_finds_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &[]);
    let f = mp.join("img");
    let mib = 1u64 << 20;
    run(Command::new("python3")
        .args([
            "-c",
            "import os,sys\nfd=os.open(sys.argv[1],os.O_CREAT|os.O_WRONLY,0o644)\n\
             os.write(fd,bytes((i%251)+1 for i in range(12<<20)))\nos.fsync(fd)\nos.close(fd)",
        ])
        .arg(&f));
    run(Command::new("fallocate")
        .args(["--punch-hole", "--offset", "4MiB", "--length", "4MiB"])
        .arg(&f));
    run(Command::new("fallocate")
        .args([
            "--zero-range",
            "--keep-size",
            "--offset",
            "9MiB",
            "--length",
            "4096",
        ])
        .arg(&f));
    let check = r#"
import os, sys
data = bytearray((i % 251) + 1 for i in range(12 << 20))
data[4 << 20:8 << 20] = bytes(4 << 20)
data[9 << 20:(9 << 20) + 4096] = bytes(4096)
with open(sys.argv[1], "rb") as f:
    assert f.read() == data, "content"
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 4 << 20, os.SEEK_DATA))
"#;
    // The punched block's zeros are committed as a hole once uploaded
    // (about a second here); until then they count as data. `stat`
    // opens nothing (an open file reports at least its size).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(Command::new("stat").args(["-c", "%b"]).arg(&f));
        if out.trim().parse::<u64>().unwrap() * 512 <= 8 * mib {
            break;
        }
        assert!(Instant::now() < deadline, "the hole never freed: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run(Command::new("python3").args(["-c", check]).arg(&f));
    assert_eq!(out.trim(), format!("{} {}", 4 * mib, 8 * mib));
    // Open for writing under the write-back cache: the kernel answers
    // (the whole file as data), never a hole the daemon cannot vouch for.
    let writer = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"z", 5 << 20)
print(os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 4 << 20, os.SEEK_DATA))
"#;
    let out = run(Command::new("python3").args(["-c", writer]).arg(&f));
    assert_eq!(out.trim(), format!("{} {}", 12 * mib, 4 * mib));
    m.stop();
}

/// `cp` and `copy_file_range` inside the mount clone uploaded blocks: the
/// copy reads back equal, also after the source is deleted and the page
/// cache dropped, and the store holds the cloned blocks once.
#[test]
fn cp_inside_the_mount_clones_and_the_copy_outlives_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let dd = tmp.path().join("data");
    let m = Mount::start(&mp, &dd, &[]);
    let make = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
os.write(fd, bytes((i % 251) + 1 for i in range((9 << 20) + 123)))
os.fsync(fd); os.close(fd)
"#;
    run(Command::new("python3")
        .args(["-c", make])
        .arg(mp.join("src")));
    // Uploaded (clean) blocks are what a clone takes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = run(Command::new(BIN).arg("status").arg("--json").arg(&mp));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        // All three blocks uploaded (a status written before the write
        // also shows nothing dirty).
        if v["dirty_bytes"].as_u64() == Some(0) && v["uploads"].as_u64() >= Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "never uploaded: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    run(Command::new("cp").arg(mp.join("src")).arg(mp.join("cp")));
    let copy = r#"
import os, sys
i = os.open(sys.argv[1], os.O_RDONLY)
o = os.open(sys.argv[2], os.O_CREAT | os.O_WRONLY, 0o644)
n = 0
while True:
    k = os.copy_file_range(i, o, 1 << 30)
    if k == 0:
        break
    n += k
print(n)
"#;
    let n = run(Command::new("python3")
        .args(["-c", copy])
        .arg(mp.join("src"))
        .arg(mp.join("pycopy")));
    assert_eq!(n.trim(), ((9u64 << 20) + 123).to_string());
    std::fs::remove_file(mp.join("src")).unwrap();
    run(Command::new("sync").arg("-f").arg(&mp));
    std::fs::write("/proc/sys/vm/drop_caches", b"3").unwrap();
    let check = r#"
import sys
want = bytes((i % 251) + 1 for i in range((9 << 20) + 123))
for p in sys.argv[1:]:
    assert open(p, "rb").read() == want, p
print("ok")
"#;
    let out = run(Command::new("python3")
        .args(["-c", check])
        .arg(mp.join("cp"))
        .arg(mp.join("pycopy")));
    assert_eq!(out.trim(), "ok");
    m.stop();
    // Blocks 0 and 1 are stored once, shared by both copies; each copy
    // stored its partial block 2 anew. The source's own block 2 may still
    // wait for the GC grace period. Copies of the bytes would have stored
    // 3 objects per copy.
    let blocks = dd.join("blocks").join("blocks");
    let count = run(Command::new("find").arg(&blocks).args(["-type", "f"]))
        .lines()
        .count();
    assert!(
        (4..=5).contains(&count),
        "{count} objects in {}",
        blocks.display()
    );
}

/// `find -printf` of every entry below `dir`: mode, owner, group, size,
/// mtime, type, links and path, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let out = run(Command::new("find")
        .arg(dir)
        .arg("-mindepth")
        .arg("1")
        .args(["-printf", "%m %u %g %s %T@ %y %n %P\n"]));
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Extended attributes follow ext4's namespace rules, and POSIX ACLs
/// answer EOPNOTSUPP so that `cp -a` falls back to chmod: before, the
/// ACL was stored opaquely and every copied file kept the mode it was
/// created with (600, directories 700).
#[test]
fn cp_a_keeps_modes_owners_and_times_and_xattrs_follow_ext4() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let modes: [(&str, u32); 6] = [
        ("a.txt", 0o644),
        ("b.sh", 0o755),
        ("secret", 0o600),
        ("group", 0o640),
        ("setuid", 0o4755),
        ("ro", 0o444),
    ];
    for d in ["", "sub", "sub/deep"] {
        let dir = src.join(d);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, mode) in modes {
            let f = dir.join(name);
            std::fs::write(&f, name.repeat(100)).unwrap();
            run(Command::new("chmod").arg(format!("{mode:o}")).arg(&f));
        }
        std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
    }
    run(Command::new("chmod").arg("750").arg(src.join("sub")));
    std::fs::create_dir(src.join("sticky")).unwrap();
    run(Command::new("chmod").arg("1777").arg(src.join("sticky")));
    run(Command::new("chown")
        .arg("1000:1000")
        .arg(src.join("a.txt")));
    run(Command::new("chown")
        .arg("-h")
        .arg("1000:100")
        .arg(src.join("sub/link")));
    run(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06.789"])
        .arg(src.join("ro")));

    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &["--xattr"]);
    run(Command::new("cp").arg("-a").arg(&src).arg(mp.join("copy")));
    assert_eq!(listing(&mp.join("copy")), listing(&src));
    let moved = tmp.path().join("moved");
    run(Command::new("cp").arg("-a").arg(&src).arg(&moved));
    run(Command::new("mv").arg(&moved).arg(mp.join("moved")));
    assert_eq!(listing(&mp.join("moved")), listing(&src));

    let script = r#"
import errno, os, sys
d = sys.argv[1]
f = os.path.join(d, "copy", "a.txt")
def err(fn, *a, **k):
    try:
        fn(*a, **k)
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"
print(err(os.setxattr, f, "bogus.x", b"1"))
print(err(os.setxattr, f, "system.posix_acl_access", b"\x02\x00\x00\x00"))
print(err(os.getxattr, f, "system.posix_acl_access"))
print(err(os.setxattr, f, "user.k", b"v"), os.getxattr(f, "user.k"))
print(err(os.setxattr, os.path.join(d, "copy", "link"), "user.k", b"v", follow_symlinks=False))
print(err(os.setxattr, f, "trusted.t", b"1"), sorted(os.listxattr(f)))
"#;
    let out = run(Command::new("python3").args(["-c", script]).arg(&mp));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "ENOTSUP",
            "ENOTSUP",
            "ENOTSUP",
            "ok b'v'",
            "EPERM",
            "ok ['trusted.t', 'user.k']",
        ],
        "{out}"
    );
    m.stop();
}

/// Extended attributes are off on a new file system: every call fails
/// with EOPNOTSUPP and `cp -a` still copies modes and times. A file
/// system that holds one mounts with them on, and `--xattr=false` turns
/// them off again without losing it.
#[test]
fn xattrs_are_off_until_asked_for_and_on_where_one_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let (mp, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    run(Command::new("chmod").arg("640").arg(src.join("f")));
    run(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(src.join("f")));
    let script = r#"
import errno, os, sys
f = sys.argv[1]
def err(fn, *a):
    try:
        r = fn(*a)
    except OSError as e:
        return errno.errorcode[e.errno]
    return repr(r)
if len(sys.argv) > 2:
    print(err(os.setxattr, f, "user.k", b"v"))
print(err(os.getxattr, f, "user.k"), err(os.listxattr, f), err(os.removexattr, f, "user.x"))
"#;
    let py = |f: &Path, set: bool| {
        let mut c = Command::new("python3");
        c.args(["-c", script]).arg(f);
        if set {
            c.arg("set");
        }
        run(&mut c).trim().to_string()
    };

    let m = Mount::start(&mp, &data, &[]);
    run(Command::new("cp").arg("-a").arg(&src).arg(mp.join("copy")));
    assert_eq!(listing(&mp.join("copy")), listing(&src));
    let f = mp.join("copy/f");
    assert_eq!(py(&f, true), "ENOTSUP\nENOTSUP ENOTSUP ENOTSUP");
    m.stop();

    let m = Mount::start(&mp, &data, &["--xattr"]);
    assert_eq!(py(&f, true), "None\nb'v' ['user.k'] ENODATA");
    m.stop();

    // One exists now: on without asking.
    let m = Mount::start(&mp, &data, &[]);
    assert_eq!(py(&f, false), "b'v' ['user.k'] ENODATA");
    m.stop();

    let m = Mount::start(&mp, &data, &["--xattr=false"]);
    assert_eq!(py(&f, false), "ENOTSUP ENOTSUP ENOTSUP");
    m.stop();
    let m = Mount::start(&mp, &data, &[]);
    assert_eq!(py(&f, false), "b'v' ['user.k'] ENODATA", "kept while off");
    m.stop();
}

/// Without directory handles the kernel keeps each directory's listing
/// (`FOPEN_CACHE_DIR`); every change made through the mount must show in
/// the next listing: create, unlink, rename within and across
/// directories, mkdir, rmdir, symlink, hard link.
#[test]
fn cached_directory_listings_follow_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &[]);
    let script = r#"
import os, sys
d = sys.argv[1]
a, b = os.path.join(d, "a"), os.path.join(d, "b")
os.mkdir(a); os.mkdir(b)
def ls(p):
    return sorted(os.listdir(p))
def check(want_a, want_b):
    # Twice: the second listing is the kernel's cached one.
    for _ in range(2):
        got = (ls(a), ls(b))
        if got != (sorted(want_a), sorted(want_b)):
            print("want", want_a, want_b, "got", got)
            sys.exit(1)
names = ["f%03d" % i for i in range(300)]
for n in names:
    open(os.path.join(a, n), "w").close()
check(names, [])
os.unlink(os.path.join(a, "f007")); names.remove("f007")
check(names, [])
os.rename(os.path.join(a, "f008"), os.path.join(a, "g008")); names.remove("f008"); names.append("g008")
check(names, [])
os.rename(os.path.join(a, "f009"), os.path.join(b, "f009")); names.remove("f009")
check(names, ["f009"])
os.mkdir(os.path.join(b, "sub")); os.symlink("x", os.path.join(b, "ln"))
os.link(os.path.join(a, "f010"), os.path.join(b, "hard"))
check(names, ["f009", "sub", "ln", "hard"])
os.rmdir(os.path.join(b, "sub"))
check(names, ["f009", "ln", "hard"])
# A listing in progress: scandir started, then a change, then a new listing.
it = os.scandir(a); next(it)
open(os.path.join(a, "late"), "w").close(); names.append("late")
it.close()
check(names, ["f009", "ln", "hard"])
print("ok")
"#;
    let out = run(Command::new("python3").args(["-c", script]).arg(&mp));
    assert_eq!(out.trim(), "ok", "{out}");
    m.stop();
}

/// `cmd` (`slicefs serve` with a store and environment) on an ephemeral
/// port: waits until it serves, then stops it with SIGTERM and
/// returns its log. `Err(log)` if it exited first.
fn serve_then_stop(cmd: &mut Command, dir: &Path) -> Result<String, String> {
    let log = dir.join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    cmd.args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("over NFSv3 on") {
            break text;
        }
        if child.try_wait().unwrap().is_some() {
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("not serving after 60 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let st = child.wait().unwrap();
    assert!(st.success(), "{text}");
    Ok(text)
}

/// `slicefs serve` with no `AWS_*` variable and `HOME` in `home`.
fn without_aws_env(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home);
    cmd
}

/// The standard AWS environment alone (endpoint, keys, region,
/// `AWS_ALLOW_HTTP=true`) reaches an S3 store: before, the client options
/// slicefs set replaced the environment's, and plain HTTP was refused.
#[test]
fn the_aws_environment_alone_reaches_the_store() {
    let sw = Seaweed::start().expect("start SeaweedFS");
    sw.create_bucket("slicefs").expect("bucket");
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = without_aws_env(tmp.path());
    cmd.args(["--store", "s3://slicefs/env"]);
    for (k, v) in sw.store_options() {
        cmd.env(k.to_ascii_uppercase(), v);
    }
    serve_then_stop(&mut cmd, tmp.path()).unwrap();
}

/// `AWS_PROFILE` with `~/.aws/credentials` (keys) and `~/.aws/config`
/// (region and `endpoint_url`) reaches the store, as every AWS tool
/// does; before, profiles were not read at all.
#[test]
fn an_aws_profile_reaches_the_store() {
    let sw = Seaweed::start().expect("start SeaweedFS");
    sw.create_bucket("slicefs").expect("bucket");
    let tmp = tempfile::tempdir().unwrap();
    let opt = |k: &str| sw.store_option(k);
    let aws = tmp.path().join(".aws");
    std::fs::create_dir(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [seaweed]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            opt("aws_access_key_id"),
            opt("aws_secret_access_key")
        ),
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile seaweed]\nregion = {}\nendpoint_url = {}\n",
            opt("aws_region"),
            opt("aws_endpoint")
        ),
    )
    .unwrap();
    let mut cmd = without_aws_env(tmp.path());
    cmd.args(["--store", "s3://slicefs/profile"])
        .env("AWS_PROFILE", "seaweed")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false");
    serve_then_stop(&mut cmd, tmp.path()).unwrap();
}

/// With no credentials anywhere, one line says what to set (not an error
/// about the instance metadata address).
#[test]
fn no_aws_credentials_anywhere_is_one_clear_error() {
    let sw = Seaweed::start().expect("start SeaweedFS");
    let tmp = tempfile::tempdir().unwrap();
    let opt = |k: &str| sw.store_option(k);
    let mut cmd = without_aws_env(tmp.path());
    cmd.args(["--store", "s3://slicefs/none"])
        .env("AWS_ENDPOINT", opt("aws_endpoint"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", opt("aws_region"))
        // Not on EC2: skip the instance metadata service's timeouts.
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let log = serve_then_stop(&mut cmd, tmp.path()).expect_err("served without credentials");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("no AWS credentials found: set AWS_ACCESS_KEY_ID"),
        "{log}"
    );
    assert!(!log.contains("169.254"), "{log}");
}

/// `df` of a mount on the default `file://` store shows the disk that
/// holds the blocks (before: 1 PiB whatever the disk).
#[test]
fn df_shows_the_disk_of_a_file_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &[]);
    let on_mount = nix::sys::statvfs::statvfs(&mp).unwrap();
    let on_disk = nix::sys::statvfs::statvfs(tmp.path()).unwrap();
    let total = |s: &nix::sys::statvfs::Statvfs| s.blocks() * s.fragment_size();
    let (a, b) = (total(&on_mount), total(&on_disk));
    assert!(a.abs_diff(b) < 1 << 20, "mount {a} bytes, disk {b} bytes");
    m.stop();
}

/// The kernel caps a FUSE mount's read-ahead at 128 KiB whatever the
/// file system asks for at INIT; `slicefs mount` raises its backing
/// device's `read_ahead_kb` to 1 MiB (sequential cold reads 800 -> 1,100
/// MB/s here). A file bigger than the cache reads back byte-exact
/// through it.
#[test]
fn a_mount_reads_ahead_a_megabyte() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &["--cache-size", "64MiB"]);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = mp.canonicalize().unwrap();
    let dev = info
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4).map(Path::new) == Some(target.as_path()))
        .find_map(|l| l.split(' ').nth(2))
        .expect("the mount is in mountinfo");
    let kb = std::fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
    assert_eq!(kb.trim(), slicefs::fuse::READ_AHEAD_KB.to_string());
    let data: Vec<u8> = (0..96u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(mp.join("big"), &data).unwrap();
    let back = std::fs::read(mp.join("big")).unwrap();
    assert!(back == data, "read back differs");
    m.stop();
}

/// A second process on a data directory in use is told which process
/// holds it and how to stop it (before: "metadata database: database is
/// locked").
#[test]
fn a_data_dir_in_use_names_its_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let data = tmp.path().join("data");
    let m = Mount::start(&mp, &data, &[]);
    let out = Command::new(BIN)
        .args(["gc", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let pid = m.child.as_ref().unwrap().id();
    assert!(
        err.contains(&format!("in use by slicefs pid {pid}")) && err.contains("slicefs umount"),
        "{err}"
    );
    m.stop();
}

/// The two store mistakes a new user makes first each end in one error
/// line with the fix in it: a bucket that does not exist, and an
/// `http://` endpoint without `aws_allow_http`.
#[test]
fn store_mistakes_end_in_a_hint() {
    let sw = Seaweed::start().expect("start SeaweedFS");
    let tmp = tempfile::tempdir().unwrap();
    let env = |cmd: &mut Command, skip: &str| {
        for (k, v) in sw.store_options() {
            if k != skip {
                cmd.env(k.to_ascii_uppercase(), v);
            }
        }
    };
    let one_error = |log: &str| -> String {
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("rror")).collect();
        assert_eq!(errors.len(), 1, "{log}");
        errors[0].to_string()
    };

    let mut cmd = without_aws_env(tmp.path());
    cmd.args(["--store", "s3://no-such-bucket/x"]);
    env(&mut cmd, "");
    let log = serve_then_stop(&mut cmd, tmp.path()).expect_err("served without a bucket");
    let line = one_error(&log);
    assert!(line.contains("create the bucket no-such-bucket"), "{line}");

    sw.create_bucket("slicefs").expect("bucket");
    let mut cmd = without_aws_env(tmp.path());
    cmd.args(["--store", "s3://slicefs/x"]);
    env(&mut cmd, "aws_allow_http");
    let log = serve_then_stop(&mut cmd, tmp.path()).expect_err("served over http unasked");
    let line = one_error(&log);
    assert!(line.contains("AWS_ALLOW_HTTP=true"), "{line}");
}

/// Listings of a large directory through the kernel (getdents in
/// buffers of a few dozen entries, READDIRPLUS and READDIR) give every
/// name once, with names of every length, also while the directory
/// changes between two listings.
#[test]
fn a_large_directory_lists_every_entry_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&mp, &tmp.path().join("data"), &[]);
    let script = r#"
import os, subprocess, sys
d = os.path.join(sys.argv[1], "big")
os.mkdir(d)
want = set()
for i in range(3000):
    name = f"{i}-" + "n" * (i % 200)
    open(os.path.join(d, name), "w").close()
    want.add(name)
for round in range(3):
    got = os.listdir(d)
    assert len(got) == len(set(got)), "a name listed twice"
    assert set(got) == want, (len(got), len(want))
    ls = subprocess.run(["ls", "-l", d], capture_output=True, text=True, check=True).stdout
    assert len(ls.splitlines()) == len(want) + 1, len(ls.splitlines())
    with os.scandir(d) as it:
        sizes = {e.name: e.stat().st_size for e in it}
    assert set(sizes) == want
    for name in sorted(want)[:500]:
        os.unlink(os.path.join(d, name))
        want.discard(name)
# One open directory listed twice (the second time rewound): the second
# listing sees a file made in between.
fd = os.open(d, os.O_RDONLY)
assert set(os.listdir(fd)) == want
open(os.path.join(d, "late"), "w").close()
want.add("late")
assert set(os.listdir(fd)) == want
os.close(fd)
print("ok")
"#;
    let out = run(Command::new("python3").args(["-c", script]).arg(&mp));
    assert_eq!(out.trim(), "ok");
    m.stop();
}

//! A `slicefs mount` process for the FUSE tests (the suite runs as
//! root): started and waited for, stopped cleanly, killed with -9, and
//! always unmounted and killed on drop (also when a test panics).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::powerloss::mounted;

/// The slicefs binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_slicefs");

/// A `slicefs mount` process; unmounted and killed on drop.
pub struct Mount {
    pub child: Option<Child>,
    pub mountpoint: PathBuf,
    pub log: PathBuf,
}

impl Mount {
    pub fn start(mountpoint: &Path, data_dir: &Path, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(mountpoint).unwrap();
        let log = data_dir.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("mount")
            .arg(mountpoint)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--log-level", "info"])
            .args(if extra.contains(&"--upload-delay") {
                &[][..]
            } else {
                &["--upload-delay", "1s"][..]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start slicefs mount");
        let mut m = Mount {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !mounted(mountpoint) {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mount exited ({st}):\n{}", m.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "not mounted in 60 s:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A clean unmount: SIGTERM, then wait for the drain and exit.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "mount exited with {st}:\n{}", self.log_text());
                break;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!mounted(&self.mountpoint));
        self.log_text()
    }

    /// kill -9, then detach the dead mount.
    pub fn kill9(mut self) -> String {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        self.log_text()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            if std::thread::panicking() {
                eprintln!("---- slicefs log ----\n{}", self.log_text());
            }
        }
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A python script that makes (`create`) or checks (`check`) an SQLite
/// database at `argv[1]` with 2,000 rows, a third deleted.
pub const SQL_CHECK: &str = "
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
if sys.argv[2] == 'create':
    db.execute('create table t(k integer primary key, v text)')
    for i in range(2000):
        db.execute('insert into t(v) values (?)', ('value %d' % i * 10,))
    db.commit()
    db.execute('delete from t where k % 3 = 0')
    db.commit()
r = db.execute('pragma integrity_check').fetchone()[0]
n = db.execute('select count(*) from t').fetchone()[0]
print(r, n)
";

/// POSIX behaviour the kernel's write-back cache (on by default) must not
/// change: partial-page writes through a write-only handle (the kernel
/// reads the page through it first), `O_APPEND`, set-id bits cleared by a
/// write of an unprivileged user and kept by root's, sizes and times after
/// a remount; and the same with the cache off.
pub const WRITE_BACK_CHECK: &str = r##"
import os, stat, sys, time
d = sys.argv[1]
p = os.path.join(d, "f")
with open(p, "wb") as f:
    f.write(b"a" * 10000)
fd = os.open(p, os.O_WRONLY)
os.pwrite(fd, b"XY", 4095)
os.close(fd)
fd = os.open(p, os.O_WRONLY | os.O_APPEND)
os.write(fd, b"tail")
os.close(fd)
want = b"a" * 4095 + b"XY" + b"a" * 5903 + b"tail"
assert open(p, "rb").read() == want, "content"
os.utime(p, (1_000_000_000, 1_000_000_000))
assert os.stat(p).st_mtime == 1_000_000_000, "utime"
s = os.path.join(d, "suid")
with open(s, "wb") as f:
    f.write(b"#!/bin/sh\n")
os.chmod(s, 0o6755)
with open(s, "ab") as f:
    f.write(b"true\n")
assert stat.S_IMODE(os.stat(s).st_mode) == 0o755, oct(os.stat(s).st_mode)
os.chmod(s, 0o2745)
with open(s, "ab") as f:
    f.write(b"true\n")
assert stat.S_IMODE(os.stat(s).st_mode) == 0o2745, oct(os.stat(s).st_mode)
print("ok")
"##;

/// Runs [`WRITE_BACK_CHECK`] as user nobody (65534) in a new directory
/// `dir` of a mount (made by root and given to nobody): the mount must
/// let other users in (`--allow-other`).
pub fn posix_check_as_nobody(dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    run(Command::new("chown").arg("65534:65534").arg(dir));
    let out = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", WRITE_BACK_CHECK])
        .arg(dir));
    assert_eq!(out.trim(), "ok");
}

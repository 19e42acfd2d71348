//! The power-loss rig shared by `tests/power_loss.rs` and
//! `tests/power_loss_random.rs`: the simulator (`slicefs-powerloss`) with
//! slicefs's data dir under it, the `slicefs mount` process on top, and
//! helpers to write, sync and compare data.
//!
//! Extra `slicefs mount` arguments for every start can be given in
//! `POWERLOSS_SLICEFS_ARGS` (split at spaces), e.g.
//! `--writeback-cache=false` or `--durability always`; another `slicefs`
//! binary (a release build, an older version) in `POWERLOSS_SLICEFS_BIN`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slicefs_powerloss::{Crash, Options, PowerLossFs, PowerLossReport, fuse_available};

/// The `slicefs` binary: `POWERLOSS_SLICEFS_BIN`, else this build's.
pub fn bin() -> PathBuf {
    std::env::var_os("POWERLOSS_SLICEFS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_slicefs")))
}

/// Longest wait for a mount to appear, and for anything else awaited.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether something is mounted at `mountpoint`.
pub fn mounted(mountpoint: &Path) -> bool {
    let mp = mountpoint
        .canonicalize()
        .unwrap_or(mountpoint.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| Path::new(m) == mp))
}

/// Unmounts `mp` if mounted: a plain unmount, lazily if busy.
pub fn unmount(mp: &Path) {
    if mounted(mp) && nix::mount::umount2(mp, nix::mount::MntFlags::empty()).is_err() {
        let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A `slicefs mount` process; killed (-9) and its mount detached on drop.
pub struct Slicefs {
    child: Option<Child>,
    mountpoint: PathBuf,
}

impl Slicefs {
    pub fn spawn(mountpoint: &Path, data_dir: &Path, log: &Path, extra: &[String]) -> Slicefs {
        std::fs::create_dir_all(mountpoint).unwrap();
        let out = File::create(log).unwrap();
        let child = Command::new(bin())
            .arg("mount")
            .arg(mountpoint)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start slicefs mount");
        Slicefs {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    /// Waits until mounted; panics if the process exits or time runs out.
    pub fn wait_mounted(&mut self) {
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        while !mounted(&self.mountpoint) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("slicefs exited before mounting ({st})");
            }
            assert!(Instant::now() < deadline, "slicefs not mounted in 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its
    /// status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// kill -9, reap, and unmount the dead mount. Returns whether it was
    /// mounted at the kill.
    pub fn kill9(&mut self) -> bool {
        let was = mounted(&self.mountpoint);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount(&self.mountpoint);
        was
    }
}

impl Drop for Slicefs {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The simulator, slicefs on top, and their directories. Dropping it
/// kills slicefs, detaches its mount, unmounts the simulator and removes
/// the directories, in that order; on a panic it prints slicefs's logs.
pub struct Rig {
    pub slicefs: Option<Slicefs>,
    pub sim: PowerLossFs,
    pub tmp: tempfile::TempDir,
    pub mnt: PathBuf,
    pub data: PathBuf,
    pub extra: Vec<String>,
    pub starts: u32,
}

impl Rig {
    /// Mounts the simulator and creates the (synced) data dir; `None`
    /// when FUSE tests cannot run here.
    pub fn new(extra: &[&str]) -> Option<Rig> {
        if let Err(why) = fuse_available() {
            eprintln!("skipped: {why}");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let simdir = tmp.path().join("sim");
        std::fs::create_dir(&simdir).unwrap();
        let sim = PowerLossFs::mount(&simdir, Options::default()).expect("mount the simulator");
        let data = sim.mountpoint().join("data");
        std::fs::create_dir(&data).unwrap();
        fsync_dir(sim.mountpoint());
        Some(Rig {
            slicefs: None,
            sim,
            mnt: tmp.path().join("mnt"),
            tmp,
            data,
            extra: extra
                .iter()
                .map(|s| s.to_string())
                .chain(
                    std::env::var("POWERLOSS_SLICEFS_ARGS")
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(String::from),
                )
                .collect(),
            starts: 0,
        })
    }

    pub fn log_path(&self, n: u32) -> PathBuf {
        self.tmp.path().join(format!("slicefs-{n}.log"))
    }

    /// Starts slicefs (not waiting for the mount).
    pub fn spawn(&mut self) {
        assert!(self.slicefs.is_none(), "slicefs already running");
        self.starts += 1;
        let log = self.log_path(self.starts);
        self.slicefs = Some(Slicefs::spawn(&self.mnt, &self.data, &log, &self.extra));
    }

    /// Starts slicefs and waits for its mount.
    pub fn start(&mut self) {
        self.spawn();
        self.slicefs.as_mut().unwrap().wait_mounted();
    }

    /// kill -9 of slicefs (if running) and its mount detached; returns
    /// whether it was mounted.
    pub fn kill9(&mut self) -> bool {
        self.slicefs.take().is_some_and(|mut s| s.kill9())
    }

    /// kill -9 of slicefs, then the power loss.
    pub fn crash(&mut self, crash: Crash) -> PowerLossReport {
        self.kill9();
        self.sim.power_loss(crash).expect("power loss")
    }

    /// Prints the last lines of each slicefs start's log to stderr.
    pub fn print_logs(&self) {
        for n in 1..=self.starts {
            let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("---- slicefs log, start {n} ----\n{}", tail.join("\n"));
        }
    }

    /// A path in the slicefs mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `status.json` of the running mount.
    pub fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.data.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The durable file every scenario must find again.
    pub fn baseline(&self) {
        write_synced(&self.p("baseline"), &pattern(0xBA5E, 10_000));
        fsync_dir(&self.mnt);
    }

    pub fn check_baseline(&self) {
        let got = std::fs::read(self.p("baseline"))
            .unwrap_or_else(|e| panic!("the fsynced baseline file is gone: {e}"));
        assert!(
            got == pattern(0xBA5E, 10_000),
            "the fsynced baseline file changed: {}",
            describe(&got)
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

/// `len` pseudo-random bytes from `seed`, never zero (so lost data that
/// reads back as zeros is told from data).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend(x.to_le_bytes().map(|b| b.max(1)));
    }
    out.truncate(len);
    out
}

/// A short description of file content for failure messages.
pub fn describe(b: &[u8]) -> String {
    let zeros = b.iter().filter(|&&x| x == 0).count();
    let first_zero = b.iter().position(|&x| x == 0);
    format!(
        "{} bytes, {zeros} zero bytes (first at {first_zero:?}), starts {:?}",
        b.len(),
        &b[..b.len().min(16)]
    )
}

pub fn fsync_dir(p: &Path) {
    File::open(p)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync of directory {}: {e}", p.display()));
}

/// Creates `p` with `data` and fsyncs it (not its directory).
pub fn write_synced(p: &Path, data: &[u8]) {
    let mut f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Writes `len` bytes of `pattern(seed)` in 1 MiB writes, then fsyncs the
/// file and its directory.
pub fn write_large_synced(p: &Path, seed: u64, len: usize) -> Vec<u8> {
    let data = pattern(seed, len);
    let mut f = File::create(p).unwrap();
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
    fsync_dir(p.parent().unwrap());
    data
}

pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: differs (got {}; want {} bytes; first difference at {first:?})",
            describe(got),
            want.len()
        );
    }
}

/// Waits, bounded, until `f` holds; returns whether it did.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Bytes in the files of `dir` (not recursive).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Files under `dir`, recursively.
pub fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

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

//! slicefs against its peers, in one run, on the same disk and the same
//! SeaweedFS (S3 on 127.0.0.1): the raw local file system, slicefs
//! (`--store s3://`), JuiceFS (`--writeback`, SQLite metadata) and rclone
//! mount (`--vfs-cache-mode writes`). Needs root, /dev/fuse, `fio`,
//! `juicefs`, `rclone` and `weed` (`scripts/bench-peers.sh` installs them
//! and runs this). Prints a markdown table.
//!
//! Per target: `fio` sequential write of 2 GiB in 1 MiB blocks with
//! `end_fsync=1`; random 4 KiB writes for 20 s; sequential read of a cold
//! 1 GiB file (page cache dropped, or the mount restarted with an empty
//! cache); `cp -r /usr/include` then `sync`. `PEERS_BENCH_SCALE` (default
//! 1.0) scales the sizes and the random-write time down for a quick run;
//! `PEERS_BENCH_ONLY=slicefs,raw` picks targets.

#[path = "../tests/common/seaweed.rs"]
#[allow(dead_code)]
mod seaweed;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLICEFS: &str = env!("CARGO_BIN_EXE_slicefs");

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mounted(mp: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| Path::new(m) == mp))
}

fn wait_mounted(mp: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mounted(mp) {
        assert!(Instant::now() < deadline, "{what} did not mount");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_unmounted(mp: &Path) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while mounted(mp) {
        assert!(
            Instant::now() < deadline,
            "{} did not unmount",
            mp.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Raw,
    Slicefs,
    JuiceFs,
    Rclone,
}

struct Target {
    kind: Kind,
    dir: PathBuf,
    work: PathBuf,
    sw_endpoint: String,
    key: String,
    secret: String,
    slicefs_store_args: Vec<String>,
    child: Option<Child>,
    generation: u32,
}

impl Target {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Raw => "raw local file system",
            Kind::Slicefs => "slicefs (s3, batch)",
            Kind::JuiceFs => "JuiceFS (--writeback, sqlite)",
            Kind::Rclone => "rclone mount (writes)",
        }
    }

    fn start(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        self.generation += 1;
        match self.kind {
            Kind::Raw => {}
            Kind::Slicefs => {
                let log = std::fs::File::create(self.work.join("slicefs.log")).unwrap();
                let child = Command::new(SLICEFS)
                    .arg("mount")
                    .arg(&self.dir)
                    .arg("--data-dir")
                    .arg(self.work.join("slicefs-data"))
                    .args(["--store", "s3://slicefs/fs"])
                    .args(&self.slicefs_store_args)
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                self.child = Some(child);
                wait_mounted(&self.dir, "slicefs");
            }
            Kind::JuiceFs => {
                let meta = format!("sqlite3://{}", self.work.join("jfs.db").display());
                if self.generation == 1 {
                    sh(Command::new("juicefs")
                        .args(["format", "--storage", "s3", "--bucket"])
                        .arg(format!("{}/jfs", self.sw_endpoint))
                        .args(["--access-key", &self.key, "--secret-key", &self.secret])
                        .arg(&meta)
                        .arg("jfs"));
                }
                let cache = self.work.join(format!("jfs-cache-{}", self.generation));
                sh(Command::new("juicefs")
                    .args(["mount", "-d", "--writeback", "--log"])
                    .arg(self.work.join("jfs.log"))
                    .arg("--cache-dir")
                    .arg(&cache)
                    .arg(&meta)
                    .arg(&self.dir));
                wait_mounted(&self.dir, "juicefs");
            }
            Kind::Rclone => {
                let cache = self.work.join(format!("rclone-cache-{}", self.generation));
                let log = std::fs::File::create(self.work.join("rclone.log")).unwrap();
                let child = Command::new("rclone")
                    .args(["mount", "sw:rclone"])
                    .arg(&self.dir)
                    // --links: symlinks as .rclonelink files (cp -r copies
                    // symlinks).
                    .args(["--vfs-cache-mode", "writes", "--links", "--cache-dir"])
                    .arg(&cache)
                    .env("RCLONE_CONFIG_SW_TYPE", "s3")
                    .env("RCLONE_CONFIG_SW_PROVIDER", "SeaweedFS")
                    .env("RCLONE_CONFIG_SW_ACCESS_KEY_ID", &self.key)
                    .env("RCLONE_CONFIG_SW_SECRET_ACCESS_KEY", &self.secret)
                    .env("RCLONE_CONFIG_SW_ENDPOINT", &self.sw_endpoint)
                    .env("RCLONE_CONFIG_SW_REGION", "us-east-1")
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap();
                self.child = Some(child);
                wait_mounted(&self.dir, "rclone");
            }
        }
    }

    /// Unmounts after everything written is stored (what each tool does
    /// at a clean unmount).
    fn stop(&mut self) {
        match self.kind {
            Kind::Raw => {}
            Kind::Slicefs | Kind::Rclone => {
                if let Some(mut c) = self.child.take() {
                    sh(Command::new("kill").args(["-TERM", &c.id().to_string()]));
                    let _ = c.wait();
                }
                if mounted(&self.dir) {
                    let _ = Command::new("umount").arg(&self.dir).status();
                }
                wait_unmounted(&self.dir);
            }
            Kind::JuiceFs => {
                let _ = Command::new("juicefs")
                    .args(["umount", "--flush"])
                    .arg(&self.dir)
                    .status();
                if mounted(&self.dir) {
                    let _ = Command::new("juicefs")
                        .arg("umount")
                        .arg(&self.dir)
                        .status();
                }
                wait_unmounted(&self.dir);
            }
        }
    }

    /// Nothing of the file's data left in any cache.
    fn make_cold(&mut self) {
        if self.kind == Kind::Raw {
            sh(&mut Command::new("sync"));
            std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        } else {
            self.stop();
            sh(&mut Command::new("sync"));
            std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
            self.start();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.kind != Kind::Raw && mounted(&self.dir) {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn fio(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = sh(Command::new("fio")
        .arg(format!("--directory={}", dir.display()))
        .args(["--ioengine=psync", "--output-format=json"])
        .args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("fio output: {e}\n{out}"))
}

struct Row {
    name: &'static str,
    seq_mb_s: f64,
    rand_iops: f64,
    cold_mb_s: f64,
    cp_s: f64,
}

fn measure(t: &mut Target, scale: f64) -> Row {
    let seq = format!("--size={}M", (2048.0 * scale) as u64);
    let cold = format!("--size={}M", (1024.0 * scale) as u64);
    let runtime = format!("--runtime={}", (20.0 * scale).max(2.0) as u64);
    t.start();
    let v = fio(
        &t.dir,
        &["--name=seq", "--rw=write", "--bs=1M", &seq, "--end_fsync=1"],
    );
    let seq_mb_s = v["jobs"][0]["write"]["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6;
    std::fs::remove_file(t.dir.join("seq.0.0")).ok();
    let v = fio(
        &t.dir,
        &[
            "--name=rand",
            "--rw=randwrite",
            "--bs=4k",
            "--size=256M",
            "--time_based",
            &runtime,
        ],
    );
    let rand_iops = v["jobs"][0]["write"]["iops"].as_f64().unwrap_or(0.0);
    std::fs::remove_file(t.dir.join("rand.0.0")).ok();
    fio(
        &t.dir,
        &[
            "--name=cold",
            "--rw=write",
            "--bs=1M",
            &cold,
            "--end_fsync=1",
        ],
    );
    t.make_cold();
    let v = fio(&t.dir, &["--name=cold", "--rw=read", "--bs=1M", &cold]);
    let cold_mb_s = v["jobs"][0]["read"]["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6;
    let start = Instant::now();
    sh(Command::new("cp")
        .arg("-r")
        .arg("/usr/include")
        .arg(t.dir.join("inc")));
    sh(&mut Command::new("sync"));
    let cp_s = start.elapsed().as_secs_f64();
    t.stop();
    Row {
        name: t.name(),
        seq_mb_s,
        rand_iops,
        cold_mb_s,
        cp_s,
    }
}

fn main() {
    let scale: f64 = std::env::var("PEERS_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let only =
        std::env::var("PEERS_BENCH_ONLY").unwrap_or_else(|_| "raw,slicefs,juicefs,rclone".into());
    let sw = seaweed::Seaweed::start().expect("start SeaweedFS");
    for b in ["slicefs", "jfs", "rclone"] {
        sw.create_bucket(b).expect("bucket");
    }
    let work = tempfile::Builder::new()
        .prefix("slicefs-peers-")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    let mut rows = Vec::new();
    for (kind, key) in [
        (Kind::Raw, "raw"),
        (Kind::Slicefs, "slicefs"),
        (Kind::JuiceFs, "juicefs"),
        (Kind::Rclone, "rclone"),
    ] {
        if !only.split(',').any(|o| o == key) {
            continue;
        }
        let w = work.path().join(key);
        std::fs::create_dir_all(&w).unwrap();
        let mut t = Target {
            kind,
            dir: w.join("mnt"),
            work: w.clone(),
            sw_endpoint: sw.s3_endpoint.clone(),
            key: sw.access_key.clone(),
            secret: sw.secret_key.clone(),
            slicefs_store_args: sw.mount_args(),
            child: None,
            generation: 0,
        };
        eprintln!("measuring {key} ...");
        rows.push(measure(&mut t, scale));
    }
    println!("Same disk (/var/tmp), same SeaweedFS on 127.0.0.1; scale {scale}\n");
    println!(
        "| target | fio seq write 1 MiB, end_fsync (MB/s) | fio random 4 KiB write (IOPS) | cold sequential read (MB/s) | cp -r /usr/include + sync (s) |"
    );
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.1} |",
            r.name, r.seq_mb_s, r.rand_iops, r.cold_mb_s, r.cp_s
        );
    }
}

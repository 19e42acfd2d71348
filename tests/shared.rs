//! A shared volume: PostgreSQL metadata (a throwaway server), SeaweedFS
//! blocks, and two or three `slicefs mount` processes ("hosts"), each
//! with its own data directory and mountpoint, on one machine. Checks
//! close-to-open visibility, concurrent creates and renames from several
//! hosts, a kill -9 of one host while the other goes on, and a
//! PostgreSQL restart during writes.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mount::{BIN, Mount, SQL_CHECK, posix_check_as_nobody, run};
use common::postgres::Postgres;
use common::seaweed::Seaweed;

/// How long another host's attributes and names may be cached by the
/// kernel (`SHARED_TTL`), plus a margin.
const TTL: Duration = Duration::from_millis(1500);

struct Volume {
    pg: Postgres,
    sw: Seaweed,
    url: String,
    tmp: tempfile::TempDir,
}

impl Volume {
    /// A formatted volume on a new PostgreSQL and SeaweedFS.
    fn new() -> Volume {
        let pg = Postgres::start().expect("start PostgreSQL");
        let sw = Seaweed::start().expect("start SeaweedFS");
        sw.create_bucket("shared").expect("bucket");
        let url = pg.database();
        let out = run(Command::new(BIN)
            .args(["format", "--meta", &url, "--store", "s3://shared/vol"])
            .args(sw.mount_args())
            .arg("vol"));
        assert!(out.contains("formatted volume vol"), "{out}");
        Volume {
            pg,
            sw,
            url,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// Host `name`'s mountpoint and data directory.
    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.tmp.path().join(format!("mp-{name}")),
            self.tmp.path().join(format!("data-{name}")),
        )
    }

    /// Mounts host `name` (its store comes from the volume; the secrets
    /// are given on the command line).
    fn mount(&self, name: &str) -> Mount {
        self.mount_with(name, &[])
    }

    fn mount_with(&self, name: &str, more: &[&str]) -> Mount {
        let (mp, data) = self.paths(name);
        let mut extra = vec!["--meta".to_string(), self.url.clone()];
        extra.extend(self.sw.mount_args());
        extra.extend(more.iter().map(|s| s.to_string()));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Mount::start(&mp, &data, &extra)
    }

    /// Whether inode `ino` is still in the volume's metadata.
    fn inode_exists(&self, ino: u64) -> bool {
        let mut c = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM inodes WHERE ino = $1",
                &[&(ino as i64)],
            )
            .unwrap()
            .get(0);
        n == 1
    }

    /// Waits up to `limit` for inode `ino` to be freed.
    fn wait_freed(&self, ino: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.inode_exists(ino) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

/// Retries `f` for up to `TTL` (another host's name or size may be
/// cached that long), then asserts its last result.
fn eventually<T: PartialEq + std::fmt::Debug>(want: T, mut f: impl FnMut() -> T) {
    let deadline = Instant::now() + TTL;
    loop {
        let got = f();
        if got == want {
            return;
        }
        if Instant::now() >= deadline {
            assert_eq!(got, want);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn two_hosts_see_each_others_files_after_close() {
    let v = Volume::new();
    let a = v.mount("a");
    let b = v.mount("b");
    let (ma, mb) = (a.mountpoint.clone(), b.mountpoint.clone());

    // A small file and a 9 MiB one (three blocks, one partial), written
    // on a and read on b right after close.
    std::fs::write(ma.join("hello"), b"hi from a").unwrap();
    assert_eq!(read(&mb.join("hello")), b"hi from a");
    let big = common::payload(9 << 20 | 12345, 7);
    std::fs::write(ma.join("big"), &big).unwrap();
    assert!(read(&mb.join("big")) == big, "b reads a's 9 MiB file");

    // b rewrites in place and appends; a sees the new bytes and size at
    // its next open (which drops the kernel's cached attributes), though
    // a read the file's attributes just before.
    assert_eq!(
        std::fs::metadata(ma.join("big")).unwrap().len(),
        big.len() as u64
    );
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mb.join("big"))
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"REWRITTEN-BY-B", 5 << 20).unwrap();
        f.write_all_at(b"TAIL", big.len() as u64).unwrap();
    }
    let mut want = big.clone();
    want[5 << 20..(5 << 20) + 14].copy_from_slice(b"REWRITTEN-BY-B");
    want.extend_from_slice(b"TAIL");
    assert!(
        read(&ma.join("big")) == want,
        "a's next open sees b's bytes and size"
    );

    // Directories, symlinks, xattrs-free metadata: made on b, seen on a.
    std::fs::create_dir_all(mb.join("d/e")).unwrap();
    std::os::unix::fs::symlink("../hello", mb.join("d/link")).unwrap();
    std::fs::write(mb.join("d/e/f"), b"deep").unwrap();
    eventually(true, || ma.join("d/e/f").exists());
    assert_eq!(read(&ma.join("d/e/f")), b"deep");
    assert_eq!(
        std::fs::read_link(ma.join("d/link")).unwrap(),
        Path::new("../hello")
    );
    assert_eq!(read(&ma.join("d/link")), b"hi from a");

    // An fsync on a (no close) is enough too.
    let mut f = std::fs::File::create(ma.join("synced")).unwrap();
    f.write_all(b"fsynced on a").unwrap();
    f.sync_all().unwrap();
    eventually(b"fsynced on a".to_vec(), || {
        std::fs::read(mb.join("synced")).unwrap_or_default()
    });
    drop(f);

    // Removal on a shows on b.
    std::fs::remove_file(ma.join("hello")).unwrap();
    eventually(false, || mb.join("hello").exists());

    // Inode numbers agree on both hosts.
    assert_eq!(
        std::fs::metadata(ma.join("big")).unwrap().ino(),
        std::fs::metadata(mb.join("big")).unwrap().ino()
    );
    b.stop();
    a.stop();
}

#[test]
fn three_hosts_create_and_rename_in_one_tree_at_once() {
    let v = Volume::new();
    let hosts: Vec<Mount> = ["a", "b", "c"].iter().map(|h| v.mount(h)).collect();
    let mps: Vec<PathBuf> = hosts.iter().map(|m| m.mountpoint.clone()).collect();
    std::fs::create_dir(mps[0].join("dir")).unwrap();
    eventually(true, || mps[2].join("dir").is_dir());

    // Every host creates its own 60 names and races for 30 shared ones
    // with O_EXCL: each shared name is made by exactly one host.
    let made: Vec<(Vec<String>, usize)> = std::thread::scope(|s| {
        let runs: Vec<_> = mps
            .iter()
            .enumerate()
            .map(|(h, mp)| {
                s.spawn(move || {
                    let mut own = Vec::new();
                    let mut won = 0;
                    for i in 0..60 {
                        let name = format!("h{h}-{i}");
                        std::fs::write(mp.join("dir").join(&name), name.as_bytes()).unwrap();
                        own.push(name);
                        if i % 2 == 0 {
                            let shared = mp.join("dir").join(format!("shared-{i}"));
                            match std::fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .open(&shared)
                            {
                                Ok(mut f) => {
                                    f.write_all(format!("{h}").as_bytes()).unwrap();
                                    won += 1;
                                }
                                Err(e) => assert_eq!(
                                    e.kind(),
                                    std::io::ErrorKind::AlreadyExists,
                                    "{}",
                                    shared.display()
                                ),
                            }
                        }
                    }
                    (own, won)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(made.iter().map(|(_, w)| w).sum::<usize>(), 30);
    let mut want: Vec<String> = made.iter().flat_map(|(o, _)| o.clone()).collect();
    want.extend((0..60).step_by(2).map(|i| format!("shared-{i}")));
    want.sort();
    for mp in &mps {
        let mut names: Vec<String> = std::fs::read_dir(mp.join("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, want, "listing on {}", mp.display());
    }
    let mut inos: Vec<u64> = want
        .iter()
        .map(|n| std::fs::metadata(mps[1].join("dir").join(n)).unwrap().ino())
        .collect();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), want.len(), "inode numbers are unique");

    // Two hosts move two directories into each other at once, 10 rounds:
    // never a cycle, never a lost tree.
    for round in 0..10 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        std::fs::create_dir(mps[0].join(&x)).unwrap();
        std::fs::create_dir(mps[0].join(&y)).unwrap();
        std::fs::write(mps[0].join(&x).join("in-x"), b"x").unwrap();
        std::fs::write(mps[0].join(&y).join("in-y"), b"y").unwrap();
        for mp in &mps[1..] {
            eventually(true, || mp.join(&x).is_dir() && mp.join(&y).is_dir());
        }
        let (ra, rb) = std::thread::scope(|s| {
            let a = s.spawn(|| std::fs::rename(mps[1].join(&x), mps[1].join(&y).join("x")));
            let b = s.spawn(|| std::fs::rename(mps[2].join(&y), mps[2].join(&x).join("y")));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(
            ra.is_err() || rb.is_err(),
            "round {round}: both renames succeeded (a cycle)"
        );
        // Both files are still reachable from the root, on every host.
        std::thread::sleep(TTL);
        for mp in &mps {
            let found = run(Command::new("find").arg(mp).args(["-name", "in-*"]));
            // Within the mount: the temporary directory's name may end in
            // the round's digit too (`.tmp87dUb8/` matched every line).
            let root = mp.to_str().unwrap();
            let count = found
                .lines()
                .filter_map(|l| l.strip_prefix(root))
                .filter(|rel| rel.contains(&format!("{round}/")))
                .count();
            assert_eq!(count, 2, "round {round} on {}: {found}", mp.display());
        }
    }
    for h in hosts {
        h.stop();
    }
}

#[test]
fn a_host_killed_mid_write_loses_nothing_fsynced_and_postgres_restarts_are_waited_out() {
    let v = Volume::new();
    let a = v.mount("a");
    let b = v.mount("b");
    let (ma, mb) = (a.mountpoint.clone(), b.mountpoint.clone());
    // a writes and fsyncs; then dies with kill -9.
    let data = common::payload(5 << 20, 3);
    {
        let mut f = std::fs::File::create(ma.join("fsynced")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        // Written, never synced nor closed before the kill.
        let mut g = std::fs::File::create(ma.join("unsynced")).unwrap();
        g.write_all(b"maybe").unwrap();
        a.kill9();
        drop(g);
        drop(f);
    }
    // b goes on: it reads what a fsynced, and writes on.
    eventually(true, || {
        std::fs::read(mb.join("fsynced")).is_ok_and(|d| d == data)
    });
    std::fs::write(mb.join("from-b"), b"b carries on").unwrap();

    // a comes back (replays its log) and sees b's file.
    let a = v.mount("a");
    eventually(b"b carries on".to_vec(), || {
        std::fs::read(ma.join("from-b")).unwrap_or_default()
    });
    assert!(read(&ma.join("fsynced")) == data);
    // a's log held "unsynced" (a kill -9 keeps the page cache): a's start
    // uploaded it before serving, so both hosts read it, never zeros.
    assert_eq!(read(&ma.join("unsynced")), b"maybe");
    assert_eq!(read(&mb.join("unsynced")), b"maybe");

    // PostgreSQL restarts while b writes: the writes wait and go on.
    let writer = std::thread::spawn({
        let mb = mb.clone();
        move || {
            for i in 0..40 {
                std::fs::write(mb.join(format!("w{i}")), format!("write {i}")).unwrap();
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    v.pg.restart()
        .unwrap_or_else(|e| panic!("{e}\n{}", v.pg.log()));
    writer.join().expect("writes during the restart");
    for i in 0..40 {
        assert_eq!(
            read(&ma.join(format!("w{i}"))),
            format!("write {i}").as_bytes(),
            "w{i} on a"
        );
    }
    b.stop();
    a.stop();
}

#[test]
fn a_data_directory_of_another_volume_and_an_unformatted_database_are_refused() {
    let v = Volume::new();
    // A mount on a database that holds no volume.
    let empty = v.pg.database();
    let (mp, data) = v.paths("lonely");
    std::fs::create_dir_all(&mp).unwrap();
    let out = Command::new(BIN)
        .arg("mount")
        .arg(&mp)
        .arg("--data-dir")
        .arg(&data)
        .args(["--meta", &empty])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("slicefs format"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A second format of the same database and store is a no-op; another
    // store is refused.
    let again = run(Command::new(BIN)
        .args(["format", "--meta", &v.url, "--store", "s3://shared/vol"])
        .args(v.sw.mount_args())
        .arg("vol"));
    assert!(again.contains("already formatted"), "{again}");
    let other = Command::new(BIN)
        .args(["format", "--meta", &v.url, "--store", "s3://shared/other"])
        .args(v.sw.mount_args())
        .arg("vol2")
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("holds volume vol"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    // A single-host data directory cannot join the shared volume.
    let (mp1, data1) = v.paths("single");
    drop(Mount::start(&mp1, &data1, &[]));
    let _ = nix::mount::umount2(&mp1, nix::mount::MntFlags::MNT_DETACH);
    let out = Command::new(BIN)
        .arg("mount")
        .arg(&mp1)
        .arg("--data-dir")
        .arg(&data1)
        .args(["--meta", &v.url])
        .args(v.sw.mount_args())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("belongs to volume"), "{err}");
}

/// The main job on a shared volume, across two hosts: a real tree copied
/// in on one host and compared on the other, a git repository committed
/// on the second and checked on the first, an SQLite database made on one
/// and checked on the other; then the POSIX checks of the single-host
/// mount (partial-page writes, O_APPEND, set-id bits, times) as an
/// unprivileged user on an `--allow-other` mount.
#[test]
fn the_main_job_and_the_posix_checks_run_on_a_shared_volume() {
    let v = Volume::new();
    let a = v.mount("a");
    let (mp_b, data_b) = v.paths("b");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(v.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut extra = vec!["--meta".to_string(), v.url.clone(), "--allow-other".into()];
    extra.extend(v.sw.mount_args());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let b = Mount::start(&mp_b, &data_b, &extra);
    let (ma, mb) = (a.mountpoint.clone(), b.mountpoint.clone());

    run(Command::new("cp")
        .args(["-a", "/usr/include/linux"])
        .arg(ma.join("tree")));
    std::thread::sleep(TTL);
    run(Command::new("diff")
        .args(["-r", "--no-dereference", "/usr/include/linux"])
        .arg(mb.join("tree")));

    let git = |dir: &Path, args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.email=t@t", "-c", "user.name=t", "-C"])
            .arg(dir)
            .args(args))
    };
    git(&mb.join("tree"), &["init", "-q"]);
    git(&mb.join("tree"), &["add", "."]);
    git(&mb.join("tree"), &["commit", "-qm", "tree"]);
    std::thread::sleep(TTL);
    let log = git(&ma.join("tree"), &["log", "--oneline"]);
    assert!(log.contains("tree"), "{log}");
    let status = git(&ma.join("tree"), &["status", "--porcelain"]);
    assert_eq!(status.trim(), "", "a sees b's commit and a clean tree");
    git(&ma.join("tree"), &["fsck", "--no-progress"]);

    let out = run(Command::new("python3")
        .args(["-c", SQL_CHECK])
        .arg(ma.join("db.sqlite"))
        .arg("create"));
    assert_eq!(out.trim(), "ok 1334");
    std::thread::sleep(TTL);
    let out = run(Command::new("python3")
        .args(["-c", SQL_CHECK])
        .arg(mb.join("db.sqlite"))
        .arg("check"));
    assert_eq!(out.trim(), "ok 1334");

    let dir = mb.join("nobody");
    posix_check_as_nobody(&dir);
    std::thread::sleep(TTL);
    let f = std::fs::metadata(ma.join("nobody/f")).unwrap();
    assert_eq!((f.len(), f.mtime()), (10004, 1_000_000_000));
    b.stop();
    a.stop();
}

/// An unlinked file that another host holds open keeps its data until
/// that host closes it, or until that host dies and its session times
/// out; then it is freed.
#[test]
fn a_file_open_on_one_host_outlives_an_unlink_on_another() {
    let v = Volume::new();
    let fast = ["--session-timeout", "3s"];
    let a = v.mount_with("a", &fast);
    let b = v.mount_with("b", &fast);
    let (ma, mb) = (a.mountpoint.clone(), b.mountpoint.clone());
    let data = common::payload(6 << 20, 11);
    std::fs::write(ma.join("kept"), &data).unwrap();
    std::fs::write(ma.join("orphaned"), &data).unwrap();
    let kept = std::fs::File::open(ma.join("kept")).unwrap();
    let orphaned = std::fs::File::open(ma.join("orphaned")).unwrap();
    let (ino_kept, ino_orphaned) = (
        kept.metadata().unwrap().ino(),
        orphaned.metadata().unwrap().ino(),
    );
    std::thread::sleep(TTL);
    std::fs::remove_file(mb.join("kept")).unwrap();
    std::fs::remove_file(mb.join("orphaned")).unwrap();
    // b's reaper runs every second and its heartbeat every 0.5 s.
    std::thread::sleep(Duration::from_secs(3));
    let mut got = Vec::new();
    use std::io::Read;
    (&kept).read_to_end(&mut got).unwrap();
    assert!(got == data, "a reads the whole file after b's unlink");
    assert!(v.inode_exists(ino_kept));
    // a's last close frees it.
    drop(kept);
    assert!(
        v.wait_freed(ino_kept, Duration::from_secs(15)),
        "freed after a's close"
    );
    // a dies holding "orphaned": once its session times out, b frees it.
    assert!(v.inode_exists(ino_orphaned));
    a.kill9();
    drop(orphaned);
    assert!(
        v.wait_freed(ino_orphaned, Duration::from_secs(20)),
        "freed after a's session timed out"
    );
    let log = b.stop();
    assert!(log.contains("cleaned up after hosts silent"), "{log}");
}

/// Two hosts write different bytes of one 4 MiB block at once and close:
/// each upload merges its bytes over the block it read and commits only
/// if the block is still that one (compare-and-set), else merges again,
/// so both hosts' bytes are in the file. Overlapping bytes go to the
/// host whose upload committed last.
#[test]
fn writers_on_two_hosts_to_one_block_keep_both_hosts_bytes() {
    let v = Volume::new();
    let a = v.mount("a");
    let b = v.mount("b");
    let (ma, mb) = (a.mountpoint.clone(), b.mountpoint.clone());
    use std::os::unix::fs::FileExt;
    for round in 0..5 {
        let name = format!("f{round}");
        std::fs::write(ma.join(&name), vec![b'.'; 8192]).unwrap();
        eventually(true, || mb.join(&name).exists());
        let fa = std::fs::OpenOptions::new()
            .write(true)
            .open(ma.join(&name))
            .unwrap();
        let fb = std::fs::OpenOptions::new()
            .write(true)
            .open(mb.join(&name))
            .unwrap();
        fa.write_all_at(&[b'a'; 1000], 0).unwrap();
        fb.write_all_at(&[b'b'; 1000], 4000).unwrap();
        // Both closes (each an upload and a commit) at once.
        std::thread::scope(|s| {
            s.spawn(move || drop(fa));
            s.spawn(move || drop(fb));
        });
        let mut want = vec![b'.'; 8192];
        want[..1000].fill(b'a');
        want[4000..5000].fill(b'b');
        for mp in [&ma, &mb] {
            eventually(true, || read(&mp.join(&name)) == want);
        }
    }
    b.stop();
    a.stop();
}

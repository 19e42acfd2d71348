//! NFS front end against the FUSE mount, same VFS setup (the embedded
//! default: SQLite, the mmap log in batch mode, a `file://` store in a
//! temporary directory under `NFS_BENCH_DIR`, default /var/tmp), in one
//! run:
//! - a large file: `NFS_BENCH_MIB` MiB (default 1024) written in 1 MiB
//!   pieces (over NFS: UNSTABLE WRITEs from `NFS_BENCH_CONNS` connections
//!   at once, default 4, as a Linux client keeps several WRITEs in flight,
//!   then one COMMIT; over FUSE: `write(2)` then `fsync`), then read back
//!   in 1 MiB pieces after `sync` and dropping the kernel's page cache
//!   (both sides: `quiesce`);
//! - `NFS_BENCH_FILES` small files (default 10000, 1 KiB each): create +
//!   write (NFS: CREATE + UNSTABLE WRITE; FUSE: open + write + close), stat
//!   (GETATTR / `stat`), read (LOOKUP + READ / open + read + close), one
//!   client, one call at a time. Stat and read run after the small files
//!   are uploaded (at rest) and the page cache is written back and
//!   dropped, on both sides.
//!
//! `NFS_BENCH_ROUNDS` rounds (default 2) alternate which side runs first;
//! the table gives each figure's best and median. It also gives the CPU
//! time the process spent per GiB of the large write (server or daemon,
//! client, kernel work in its threads, uploads): on this shared 2-core VM
//! the throughput swings twofold between runs, and the CPU cost says
//! more about where a difference comes from.
//!
//! `NFS_BENCH_ONLY_NFS=1` runs the NFS side alone, once, and prints its
//! figures (for profiling the server); `NFS_BENCH_SERVER_TIMES=1` prints the
//! server's own mean time per call of each procedure (the rest of a round
//! trip is the transport's and the client's). The client runs on a
//! current-thread runtime of its own, as a client process would.
//!
//! `cargo bench --bench nfs` as root (FUSE mounts with mount(2)). Prints a
//! markdown table with NFS/FUSE ratios. Speed is never asserted.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;
use slicefs::fuse::FuseFs;
use slicefs::nfs::{Server, ServerConfig};
use slicefs::vfs::{FsOptions, OpenedFs, open_fs};

const MIB: usize = 1 << 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open(dir: &Path, rt: &tokio::runtime::Runtime) -> OpenedFs {
    let o = FsOptions::new(dir);
    rt.block_on(open_fs(&o, rt.handle()))
        .expect("open the file system")
}

fn close(fs: OpenedFs, rt: &tokio::runtime::Runtime) {
    rt.block_on(fs.vfs.transfer().close(Duration::from_secs(600)))
        .expect("upload");
    fs.persister.close().expect("close the log");
}

/// Waits until the small files are uploaded, so the stat and read rows
/// of both front ends measure the request path at rest, not how the
/// 2-core machine shares itself with 10,000 uploads (those rows swung
/// 2-5x between runs while uploads ran beside them).
async fn settle(fs: &OpenedFs) {
    fs.vfs
        .transfer()
        .drain(Duration::from_secs(600))
        .await
        .expect("upload the small files");
}

type Conn = nfs3_client::Nfs3Connection<nfs3_client::tokio::TokioIo<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr) -> Conn {
    let cred = opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"bench"),
        uid: 0,
        gid: 0,
        gids: vec![],
    });
    Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), "/")
        .mount_port(addr.port())
        .nfs3_port(addr.port())
        .connect_from_privileged_port(false)
        .credential(cred)
        .mount()
        .await
        .expect("NFS mount")
}

fn ok<T, E: std::fmt::Debug>(r: Nfs3Result<T, E>, what: &str) -> T {
    match r {
        Nfs3Result::Ok(v) => v,
        Nfs3Result::Err((st, _)) => panic!("{what}: {st:?}"),
    }
}

fn dirop<'a>(dir: &nfs_fh3, name: &'a [u8]) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: filename3(Opaque::borrowed(name)),
    }
}

fn new_handle(fh: post_op_fh3) -> nfs_fh3 {
    match fh {
        Nfs3Option::Some(h) => h,
        Nfs3Option::None => panic!("no handle"),
    }
}

/// Prints the server's own mean time per call of each NFS procedure (from
/// the request metrics): what of a round trip the server spends, against
/// the transport and the client.
fn server_times(fs: &OpenedFs, frontend: &str) {
    let text = slicefs::metrics::render(&fs.vfs);
    let value = |kind: &str, op: &str| {
        let key = format!("slicefs_request_seconds_{kind}{{frontend=\"{frontend}\",op=\"{op}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let ops: &[&str] = if frontend == "nfs" {
        &["CREATE", "WRITE", "GETATTR", "LOOKUP", "READ", "COMMIT"]
    } else {
        &[
            "create", "write", "getattr", "lookup", "open", "read", "release", "fsync",
        ]
    };
    for op in ops {
        if let (Some(sum), Some(n)) = (value("sum", op), value("count", op))
            && n > 0.0
        {
            eprintln!(
                "{frontend} server time of {op}: {:.1} us per call ({n} calls)",
                sum / n * 1e6
            );
        }
    }
}

/// Figures of one front end: MB/s for the large file, ops/s for the rest.
#[derive(Default)]
struct Figures {
    write_mbs: f64,
    /// CPU seconds of the whole process (server or daemon, client, and
    /// uploads; user and system) per GiB of the large write.
    write_cpu: f64,
    read_mbs: f64,
    create: f64,
    stat: f64,
    read: f64,
    /// NFS only: NULL calls per second (one round trip, no work).
    null: f64,
}

fn nfs(dir: &Path, mib: usize, conns: usize, files: usize) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fs = open(dir, &rt);
    let server = rt
        .block_on(Server::bind(
            fs.vfs.clone(),
            "127.0.0.1:0".parse().expect("addr"),
            ServerConfig::default(),
        ))
        .expect("bind");
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let mut f = Figures::default();
    // The client on a runtime of its own, as a client process would be:
    // one thread that waits on its sockets itself.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    client_rt.block_on(async {
        let mut c = connect(addr).await;
        let root = c.root_nfs_fh3();
        let big = new_handle(
            ok(
                c.create(&CREATE3args {
                    where_: dirop(&root, b"big"),
                    how: createhow3::UNCHECKED(sattr3::default()),
                })
                .await
                .expect("create"),
                "CREATE",
            )
            .obj,
        );
        let piece = Arc::new(vec![0x6e_u8; MIB]);
        let t = Instant::now();
        let cpu = cpu_seconds();
        let mut tasks = Vec::new();
        for k in 0..conns {
            let (big, piece) = (big.clone(), piece.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = connect(addr).await;
                for i in (k..mib).step_by(conns) {
                    let w = c
                        .write(&WRITE3args {
                            file: big.clone(),
                            offset: (i * MIB) as u64,
                            count: MIB as u32,
                            stable: stable_how::UNSTABLE,
                            data: Opaque::borrowed(&piece),
                        })
                        .await
                        .expect("write");
                    ok(w, "WRITE");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        ok(
            c.commit(&COMMIT3args {
                file: big.clone(),
                offset: 0,
                count: 0,
            })
            .await
            .expect("commit"),
            "COMMIT",
        );
        f.write_mbs = (mib * MIB) as f64 / t.elapsed().as_secs_f64() / 1e6;
        f.write_cpu = (cpu_seconds() - cpu) * 1024.0 / mib as f64;
        quiesce();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..conns {
            let big = big.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = connect(addr).await;
                for i in (k..mib).step_by(conns) {
                    let r = c
                        .read(&READ3args {
                            file: big.clone(),
                            offset: (i * MIB) as u64,
                            count: MIB as u32,
                        })
                        .await
                        .expect("read");
                    assert_eq!(ok(r, "READ").count as usize, MIB);
                }
            }));
        }
        for t in tasks {
            t.await.expect("reader");
        }
        f.read_mbs = (mib * MIB) as f64 / t.elapsed().as_secs_f64() / 1e6;

        let d = new_handle(
            ok(
                c.mkdir(&MKDIR3args {
                    where_: dirop(&root, b"small"),
                    attributes: sattr3::default(),
                })
                .await
                .expect("mkdir"),
                "MKDIR",
            )
            .obj,
        );
        let small = vec![0x73_u8; 1024];
        let names: Vec<Vec<u8>> = (0..files)
            .map(|i| format!("f{i:06}").into_bytes())
            .collect();
        let mut handles = Vec::with_capacity(files);
        let t = Instant::now();
        for n in &names {
            let h = new_handle(
                ok(
                    c.create(&CREATE3args {
                        where_: dirop(&d, n),
                        how: createhow3::GUARDED(sattr3::default()),
                    })
                    .await
                    .expect("create"),
                    "CREATE",
                )
                .obj,
            );
            ok(
                c.write(&WRITE3args {
                    file: h.clone(),
                    offset: 0,
                    count: 1024,
                    stable: stable_how::UNSTABLE,
                    data: Opaque::borrowed(&small),
                })
                .await
                .expect("write"),
                "WRITE",
            );
            handles.push(h);
        }
        f.create = files as f64 / t.elapsed().as_secs_f64();
        settle(&fs).await;
        quiesce();
        let t = Instant::now();
        for h in &handles {
            ok(
                c.getattr(&GETATTR3args { object: h.clone() })
                    .await
                    .expect("getattr"),
                "GETATTR",
            );
        }
        f.stat = files as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for n in &names {
            let h = ok(
                c.lookup(&LOOKUP3args { what: dirop(&d, n) })
                    .await
                    .expect("lookup"),
                "LOOKUP",
            )
            .object;
            let r = ok(
                c.read(&READ3args {
                    file: h,
                    offset: 0,
                    count: 4096,
                })
                .await
                .expect("read"),
                "READ",
            );
            assert_eq!(r.count, 1024);
        }
        f.read = files as f64 / t.elapsed().as_secs_f64();
        // The transport's floor: round trips that do no work.
        let t = Instant::now();
        for _ in 0..files {
            c.null().await.expect("NULL");
        }
        f.null = files as f64 / t.elapsed().as_secs_f64();
    });
    if std::env::var_os("NFS_BENCH_SERVER_TIMES").is_some() {
        server_times(&fs, "nfs");
    }
    let _ = stop.send(());
    rt.block_on(task).expect("server task").expect("server");
    close(fs, &rt);
    f
}

/// Writes back every dirty page and drops the kernel's page cache, on
/// both sides at the same points: before the large read (so neither side
/// reads the big file's pages, or the store's, from memory) and before
/// the small-file stat and read rows (so the writeback of a gigabyte of
/// blocks does not run beside them: over loopback it halved even NULL's
/// rate, and only the FUSE side used to drop the cache).
/// CPU seconds this process has used (every thread, user and system).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is
    // a valid value of it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

fn quiesce() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", b"3");
}

fn fuse(dir: &Path, mib: usize, files: usize) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fs = open(&dir.join("data"), &rt);
    let mp = dir.join("mnt");
    std::fs::create_dir_all(&mp).expect("mountpoint");
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("slicefs-bench".into()),
        fuser::MountOption::NoAtime,
    ];
    config.n_threads = Some(4);
    let session = fuser::spawn_mount(
        FuseFs::new(fs.vfs.clone()).with_writeback_cache(true),
        &mp,
        &config,
    )
    .expect("FUSE mount (run as root)");
    // As `slicefs mount` does: 1 MiB of kernel read-ahead, not 128 KiB.
    if let Err(e) = slicefs::fuse::raise_read_ahead(&mp) {
        eprintln!("read-ahead stays at 128 KiB: {e}");
    }
    let mut f = Figures::default();
    let piece = vec![0x6e_u8; MIB];
    let big = mp.join("big");
    let t = Instant::now();
    let cpu = cpu_seconds();
    let mut w = std::fs::File::create(&big).expect("create");
    for _ in 0..mib {
        w.write_all(&piece).expect("write");
    }
    w.sync_all().expect("fsync");
    drop(w);
    f.write_mbs = (mib * MIB) as f64 / t.elapsed().as_secs_f64() / 1e6;
    f.write_cpu = (cpu_seconds() - cpu) * 1024.0 / mib as f64;
    quiesce();
    let t = Instant::now();
    let mut r = std::fs::File::open(&big).expect("open");
    let mut buf = vec![0u8; MIB];
    let mut n = 0;
    loop {
        let k = r.read(&mut buf).expect("read");
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(n, mib * MIB);
    drop(r);
    f.read_mbs = (mib * MIB) as f64 / t.elapsed().as_secs_f64() / 1e6;

    let d = mp.join("small");
    std::fs::create_dir(&d).expect("mkdir");
    let small = vec![0x73_u8; 1024];
    let paths: Vec<_> = (0..files).map(|i| d.join(format!("f{i:06}"))).collect();
    let t = Instant::now();
    for p in &paths {
        std::fs::write(p, &small).expect("write");
    }
    f.create = files as f64 / t.elapsed().as_secs_f64();
    rt.block_on(settle(&fs));
    quiesce();
    let t = Instant::now();
    for p in &paths {
        std::fs::metadata(p).expect("stat");
    }
    f.stat = files as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in &paths {
        assert_eq!(std::fs::read(p).expect("read").len(), 1024);
    }
    f.read = files as f64 / t.elapsed().as_secs_f64();
    session.umount_and_join().expect("unmount");
    if std::env::var_os("NFS_BENCH_SERVER_TIMES").is_some() {
        server_times(&fs, "fuse");
    }
    close(fs, &rt);
    f
}

impl Figures {
    /// Each figure's best over `runs`: the highest, the lowest CPU time.
    fn best(runs: &[Figures]) -> Figures {
        Figures {
            write_cpu: runs
                .iter()
                .map(|f| f.write_cpu)
                .fold(f64::INFINITY, f64::min),
            ..Self::each(runs, |v| v.iter().copied().fold(0.0, f64::max))
        }
    }

    /// Each figure's median (the lower middle one of an even count).
    fn median(runs: &[Figures]) -> Figures {
        Self::each(runs, |v| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[(v.len() - 1) / 2]
        })
    }

    fn each(runs: &[Figures], pick: impl Fn(&[f64]) -> f64) -> Figures {
        let of = |get: fn(&Figures) -> f64| pick(&runs.iter().map(get).collect::<Vec<_>>());
        Figures {
            write_mbs: of(|f| f.write_mbs),
            write_cpu: of(|f| f.write_cpu),
            read_mbs: of(|f| f.read_mbs),
            create: of(|f| f.create),
            stat: of(|f| f.stat),
            read: of(|f| f.read),
            null: of(|f| f.null),
        }
    }
}

fn main() {
    // `cargo test` runs bench targets with `--bench` absent: do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib = env("NFS_BENCH_MIB", 1024);
    let conns = env("NFS_BENCH_CONNS", 4).max(1);
    let files = env("NFS_BENCH_FILES", 10_000);
    let rounds = env("NFS_BENCH_ROUNDS", 2).max(1);
    let base = std::env::var("NFS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let run_nfs = || {
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        nfs(dir.path(), mib, conns, files)
    };
    if std::env::var_os("NFS_BENCH_ONLY_NFS").is_some() {
        let n = run_nfs();
        println!(
            "NFS only: write {:.0} MB/s ({:.2} CPU s/GiB), read {:.0} MB/s, create {:.0}/s, \
             stat {:.0}/s, lookup+read {:.0}/s, NULL {:.0}/s",
            n.write_mbs, n.write_cpu, n.read_mbs, n.create, n.stat, n.read, n.null
        );
        return;
    }
    let run_fuse = || {
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        fuse(dir.path(), mib, files)
    };
    // Rounds alternate which side goes first: the first gigabyte a run
    // writes lands in guest memory the machine has not touched yet
    // (slower on a VM), and whichever side ran first used to pay for it.
    let (mut n, mut u) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        if round % 2 == 0 {
            n.push(run_nfs());
            u.push(run_fuse());
        } else {
            u.push(run_fuse());
            n.push(run_nfs());
        }
    }
    println!(
        "{mib} MiB file in 1 MiB pieces (NFS: {conns} connections, UNSTABLE + one COMMIT; \
         FUSE: write-back cache, fsync); {files} files of 1 KiB; data dirs in {base}; \
         {rounds} rounds in alternating order, best (median)\n"
    );
    println!("| workload | NFS | FUSE | NFS/FUSE |");
    println!("|---|---|---|---|");
    let (nb, nm, ub, um) = (
        Figures::best(&n),
        Figures::median(&n),
        Figures::best(&u),
        Figures::median(&u),
    );
    let row = |name: &str, unit: &str, get: fn(&Figures) -> f64| {
        println!(
            "| {name} | {:.0} {unit} ({:.0}) | {:.0} {unit} ({:.0}) | {:.2} |",
            get(&nb),
            get(&nm),
            get(&ub),
            get(&um),
            get(&nb) / get(&ub)
        );
    };
    row("large file write + commit/fsync", "MB/s", |f| f.write_mbs);
    // Lower is better here: the ratio is FUSE's over NFS's, as above.
    println!(
        "| large file write: CPU seconds per GiB | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2} |",
        nb.write_cpu,
        nm.write_cpu,
        ub.write_cpu,
        um.write_cpu,
        ub.write_cpu / nb.write_cpu
    );
    row("large file read", "MB/s", |f| f.read_mbs);
    row("create + write 1 KiB", "files/s", |f| f.create);
    row("stat", "files/s", |f| f.stat);
    row("lookup/open + read", "files/s", |f| f.read);
}

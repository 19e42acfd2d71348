//! VFS-level metadata throughput: create + write 4 KiB + close of 10,000
//! files, then a lookup (stat) of each, in files per second, for the
//! ephemeral setup (memory metadata, null log, memory store) and the
//! embedded default (SQLite, mmap log in batch mode, `file://` store).
//!
//! `cargo bench --bench vfs`; `VFS_BENCH_FILES` sets the count. Prints a
//! markdown table.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slicefs::blockstore::StoreConfig;
use slicefs::meta::Ino;
use slicefs::vfs::{Creds, FsOptions, MetaKind, OpenFlags, PersisterKind, Vfs, open_fs};

fn open(dir: Option<&Path>, rt: &tokio::runtime::Runtime) -> Arc<Vfs> {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut o = FsOptions::new(dir.unwrap_or(scratch.path()));
    if dir.is_none() {
        o.persister = PersisterKind::Null;
        o.meta = MetaKind::Memory;
        o.store = Some(StoreConfig::new("memory:///"));
    }
    rt.block_on(open_fs(&o, rt.handle())).expect("open").vfs
}

fn run(name: &str, dir: Option<&Path>, files: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let vfs = open(dir, &rt);
    let root = Creds::root();
    let data = vec![0x5a_u8; 4096];
    let rw = OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    };
    let d = vfs
        .mkdir(&root, Ino::ROOT, b"bench", 0o755)
        .expect("mkdir")
        .ino;
    let t = Instant::now();
    for i in 0..files {
        let (_, fh) = vfs
            .create(&root, d, format!("f{i:06}").as_bytes(), 0o644, rw, true)
            .expect("create");
        vfs.write(&root, fh, 0, &data).expect("write");
        vfs.release(fh).expect("release");
    }
    let create = t.elapsed();
    let t = Instant::now();
    for i in 0..files {
        let a = vfs
            .lookup(&root, d, format!("f{i:06}").as_bytes())
            .expect("lookup");
        assert_eq!(a.size, 4096);
    }
    let stat = t.elapsed();
    println!(
        "| {name} | {:.0} | {:.0} |",
        files as f64 / create.as_secs_f64(),
        files as f64 / stat.as_secs_f64()
    );
    rt.block_on(vfs.transfer().close(Duration::from_secs(120)))
        .expect("drain");
}

fn main() {
    let files: usize = std::env::var("VFS_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    println!("{files} files of 4 KiB\n");
    println!("| setup | create + write + close, files/s | stat, files/s |");
    println!("|---|---|---|");
    run("memory metadata, null log, memory store", None, files);
    let dir = tempfile::tempdir().expect("tempdir");
    run(
        "SQLite, mmap log (batch), file:// store",
        Some(dir.path()),
        files,
    );
}

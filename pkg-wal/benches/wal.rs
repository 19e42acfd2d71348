//! Throughput benchmarks of the [`MmapPersister`], each set against a
//! machine bound measured in the same run (memcpy bandwidth, raw
//! `pwrite` + `fdatasync` rates, reading warm mapped files).
//!
//! Run with `cargo bench -p slicefs-wal --bench wal`. Prints a markdown
//! table. Environment:
//! - `WAL_BENCH_QUICK=1`: small sizes and short runs (a smoke test).
//! - `WAL_BENCH_DIR=/some/dir`: where the temporary files go. Default: the
//!   target directory's `tmp` (on the same disk as the build). Must not be
//!   a tmpfs: the `fdatasync` numbers depend on the disk.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use slicefs_wal::{
    CHUNK_SIZE, ChunkIndex, Durability, FileId, MmapPersister, Persister, RecordKind, SliceId,
    SliceWrite, WalConfig,
};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const SIZES: [usize; 3] = [4 * KIB, 64 * KIB, MIB];
const THREADS: [usize; 3] = [1, 8, 64];

/// Sizes and durations of one run.
struct Cfg {
    /// Bytes appended per record size (mode `None`).
    append_total: usize,
    /// Bytes of slice data in the recovery log.
    recovery_total: usize,
    /// Duration of each timed durable run (raw and WAL).
    durable_run: Duration,
    /// Rounds of each durable comparison; raw and WAL runs alternate so
    /// that both see the same disk (shared machines are noisy).
    rounds: usize,
    /// Destination buffer of the memcpy bound.
    memcpy_buf: usize,
    /// Bytes copied per record size in the memcpy bound.
    memcpy_total: usize,
    /// Preallocated size of the raw `fdatasync` files.
    raw_file: u64,
}

impl Cfg {
    fn new(quick: bool) -> Self {
        if quick {
            Cfg {
                append_total: 64 * MIB,
                recovery_total: 128 * MIB,
                durable_run: Duration::from_millis(500),
                rounds: 1,
                memcpy_buf: 64 * MIB,
                memcpy_total: 256 * MIB,
                raw_file: 256 << 20,
            }
        } else {
            Cfg {
                append_total: GIB,
                recovery_total: GIB,
                durable_run: Duration::from_secs(2),
                rounds: 3,
                memcpy_buf: 512 * MIB,
                memcpy_total: 2 * GIB,
                raw_file: 2 << 30,
            }
        }
    }
}

/// One line of the result table.
struct Row {
    name: String,
    result: String,
    bound: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn bound(name: impl Into<String>, result: impl Into<String>) -> Self {
        Row {
            name: name.into(),
            result: result.into(),
            bound: "(bound)".into(),
            ratio: None,
            target: String::new(),
            met: None,
        }
    }
}

fn main() {
    let quick = std::env::var("WAL_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let cfg = Cfg::new(quick);
    let base = std::env::var_os("WAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create the bench base directory");
    let tmp = tempfile::Builder::new()
        .prefix("wal-bench-")
        .tempdir_in(&base)
        .expect("create the bench directory");
    let dir = tmp.path();
    let fs = fs_type(dir);
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let machine = format!(
        "machine: nproc={nproc}, cpu={}, bench dir {} on {fs}, mode {}",
        cpu_model(),
        dir.display(),
        if quick { "quick" } else { "full" }
    );
    eprintln!("{machine}");
    if fs == "tmpfs" {
        eprintln!("warning: the bench directory is on tmpfs: fdatasync costs nothing there");
    }

    let mut rows = Vec::new();

    // 1. Machine bounds.
    let memcpy: Vec<f64> = SIZES.iter().map(|&s| memcpy_bound(&cfg, s)).collect();
    for (&s, &bw) in SIZES.iter().zip(&memcpy) {
        rows.push(Row::bound(
            format!("memcpy {} records", size_name(s)),
            format!("{} MB/s", num(bw / 1e6)),
        ));
    }
    let read_bw = memread_bound(&cfg);
    rows.push(Row::bound(
        "memory read (sum u64, same buffer)",
        format!("{} MB/s", num(read_bw / 1e6)),
    ));
    let crc_bw = crc_bound(&cfg);
    rows.push(Row::bound(
        "crc32fast, 64 KiB buffers",
        format!("{} MB/s", num(crc_bw / 1e6)),
    ));
    let single = fdatasync_bound(&cfg, dir);
    rows.push(Row::bound(
        "pwrite 4 KiB + fdatasync, 1 writer",
        format!("{} ops/s", num(single)),
    ));
    for mmap in [false, true] {
        let bw = pagecache_write_bound(&cfg, dir, mmap);
        rows.push(Row::bound(
            format!(
                "page cache write, 64 KiB records into a fallocated file, {}",
                if mmap {
                    "via fresh shared mmap"
                } else {
                    "via pwrite"
                }
            ),
            format!("{} MB/s", num(bw / 1e6)),
        ));
    }
    // Durable runs: raw group commit and WAL alternate, `rounds` times.
    let mut durable = Vec::new();
    for &n in &THREADS {
        let (mut raw, mut batch, mut wal) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..cfg.rounds {
            let (rate, b) = group_commit_bound(&cfg, dir, n);
            raw.push(rate);
            batch.push(b);
            wal.push(append_always(&cfg, dir, n));
            eprintln!(
                "durable {n} threads round {r}: raw {:.0}/s (batch {b:.1}), wal {:.0}/s",
                raw[r], wal[r]
            );
        }
        durable.push((n, raw, batch, wal));
    }
    for (n, raw, batch, _) in &durable {
        rows.push(Row::bound(
            format!("group commit pwrite 4 KiB, {n} threads"),
            format!(
                "{} ops/s{} (avg batch {:.1})",
                num(median(raw)),
                spread(raw),
                median(batch)
            ),
        ));
    }

    // 2. Appends without syncs.
    for (&s, &bw) in SIZES.iter().zip(&memcpy) {
        let (ops, bytes) = append_none(&cfg, dir, s);
        let ratio = bytes / bw;
        let (target, met) = match s {
            s if s == 4 * KIB => (">= 1,000,000 appends/s".to_string(), Some(ops >= 1e6)),
            s if s == MIB => (">= 25% of memcpy".to_string(), Some(ratio >= 0.25)),
            _ => (String::new(), None),
        };
        rows.push(Row {
            name: format!("append None, {} records, 1 thread", size_name(s)),
            result: format!("{} appends/s, {} MB/s", num(ops), num(bytes / 1e6)),
            bound: format!("memcpy {} MB/s", num(bw / 1e6)),
            ratio: Some(ratio),
            target,
            met,
        });
    }

    // 3. Durable appends.
    for (n, raw, _, wal) in &durable {
        let (rate, raw_rate) = (median(wal), median(raw));
        let ratio = rate / raw_rate;
        let (target, met) = if *n == 64 {
            (
                ">= 100,000/s and >= 80% of raw".to_string(),
                rate >= 1e5 && ratio >= 0.8,
            )
        } else {
            (">= 80% of raw".to_string(), ratio >= 0.8)
        };
        rows.push(Row {
            name: format!("append Always, 4 KiB, {n} threads"),
            result: format!("{} appends/s{}", num(rate), spread(wal)),
            bound: format!("group commit {} ops/s", num(raw_rate)),
            ratio: Some(ratio),
            target,
            met: Some(met),
        });
    }

    // 4. Recovery.
    let rec = recovery(&cfg, dir);
    rows.push(Row::bound(
        format!(
            "read warm WAL files via fresh mmap ({})",
            size_name(rec.file_bytes as usize)
        ),
        format!("{:.2} GB/s", rec.mmap_read_bw / 1e9),
    ));
    rows.push(Row {
        name: format!(
            "recovery: open + iterate {} of 64 KiB slices (warm)",
            size_name(rec.data_bytes as usize)
        ),
        result: format!(
            "{:.2} GB/s ({:.0} ms: open {:.0} ms [scan+index {:.0} ms], iterate {:.0} ms)",
            rec.data_bytes as f64 / rec.total.as_secs_f64() / 1e9,
            ms(rec.total),
            ms(rec.open),
            ms(rec.scan),
            ms(rec.iterate)
        ),
        bound: format!("mmap read {:.2} GB/s", rec.mmap_read_bw / 1e9),
        ratio: Some(rec.data_bytes as f64 / rec.total.as_secs_f64() / rec.mmap_read_bw),
        target: ">= 4 GB/s".into(),
        met: Some(rec.data_bytes as f64 / rec.total.as_secs_f64() >= 4e9),
    });

    println!();
    println!("{machine}");
    println!();
    println!("| benchmark | result | bound | ratio | target | met? |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            r.result,
            r.bound,
            r.ratio
                .map_or(String::new(), |x| format!("{:.1}%", x * 100.0)),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
    println!();
    println!(
        "recovery log: {} records, {} of segment files, close() after writing took {:.0} ms",
        rec.records,
        size_name(rec.file_bytes as usize),
        ms(rec.close)
    );
}

// ---------------------------------------------------------------------
// Machine bounds

/// Bytes/s of copying `rec`-byte records back to back into a large,
/// already touched buffer.
fn memcpy_bound(cfg: &Cfg, rec: usize) -> f64 {
    let src = pattern(rec, 7);
    let mut dst = vec![0u8; cfg.memcpy_buf];
    touch(&mut dst);
    let slots = cfg.memcpy_buf / rec;
    let n = cfg.memcpy_total / rec;
    let t = Instant::now();
    for i in 0..n {
        let at = (i % slots) * rec;
        dst[at..at + rec].copy_from_slice(&src);
        black_box(&mut dst);
    }
    let el = t.elapsed().as_secs_f64();
    black_box(&dst);
    (n * rec) as f64 / el
}

/// Bytes/s of reading a large buffer (sum of u64 words).
fn memread_bound(cfg: &Cfg) -> f64 {
    let mut buf = vec![0u8; cfg.memcpy_buf];
    touch(&mut buf);
    let passes = (cfg.memcpy_total / cfg.memcpy_buf).max(1);
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..passes {
        sum = sum.wrapping_add(sum_words(black_box(&buf)));
    }
    let el = t.elapsed().as_secs_f64();
    black_box(sum);
    (passes * buf.len()) as f64 / el
}

/// Bytes/s of `crc32fast` over 64 KiB buffers (cache-resident).
fn crc_bound(cfg: &Cfg) -> f64 {
    let buf = pattern(64 * KIB, 3);
    let n = cfg.memcpy_total / buf.len();
    let t = Instant::now();
    let mut acc = 0u32;
    for _ in 0..n {
        acc ^= crc32fast::hash(black_box(&buf));
    }
    let el = t.elapsed().as_secs_f64();
    black_box(acc);
    (n * buf.len()) as f64 / el
}

/// Rate of 4 KiB `pwrite` + `fdatasync`, one writer, sequential, on a
/// fallocated file.
fn fdatasync_bound(cfg: &Cfg, dir: &Path) -> f64 {
    let path = dir.join("raw-single");
    let f = prealloc_file(&path, cfg.raw_file);
    let rec = pattern(4 * KIB, 11);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < cfg.durable_run {
        let at = (n * 4096) % cfg.raw_file;
        f.write_all_at(&rec, at).expect("pwrite");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let el = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).expect("remove the raw file");
    n as f64 / el
}

/// Bytes/s of writing `append_total` bytes as 64 KiB records into a fresh
/// fallocated file, without syncs: through a shared mapping (a page fault
/// per page) or with `pwrite` (the WAL's path).
fn pagecache_write_bound(cfg: &Cfg, dir: &Path, mmap: bool) -> f64 {
    let path = dir.join("raw-pagecache");
    let len = cfg.append_total;
    let f = prealloc_file(&path, len as u64);
    let rec = pattern(64 * KIB, 13);
    let map = memmap2::MmapOptions::new()
        .len(len)
        .map_raw(&f)
        .expect("mmap");
    let t = Instant::now();
    for at in (0..len).step_by(rec.len()) {
        if mmap {
            // SAFETY: `at + rec.len() <= len`, the mapped and allocated
            // length; only this thread touches the mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(rec.as_ptr(), map.as_mut_ptr().add(at), rec.len());
            }
        } else {
            f.write_all_at(&rec, at as u64).expect("pwrite");
        }
    }
    let el = t.elapsed().as_secs_f64();
    drop(map);
    drop(f);
    std::fs::remove_file(&path).expect("remove the raw file");
    len as f64 / el
}

/// One `fdatasync` per batch: who arrives while a sync runs waits for the
/// next one, whose leader is whoever finds no sync running.
struct GroupCommit {
    file: File,
    state: Mutex<GcState>,
    cv: Condvar,
}

#[derive(Default)]
struct GcState {
    /// Syncs started (the number of the newest).
    started: u64,
    /// Number of the newest finished sync.
    done: u64,
    in_progress: bool,
}

impl GroupCommit {
    /// Returns once a sync that started after this call has finished.
    fn commit(&self) {
        let mut st = self.state.lock().expect("gc lock");
        let need = st.started + 1;
        while st.done < need {
            if st.in_progress {
                st = self.cv.wait(st).expect("gc wait");
                continue;
            }
            st.in_progress = true;
            st.started += 1;
            let mine = st.started;
            drop(st);
            self.file.sync_data().expect("fdatasync");
            st = self.state.lock().expect("gc lock");
            st.done = mine;
            st.in_progress = false;
            self.cv.notify_all();
        }
    }
}

/// Durable ops/s and average ops per `fdatasync` with `threads` writers
/// each doing `pwrite` of 4 KiB at distinct offsets, then group commit.
fn group_commit_bound(cfg: &Cfg, dir: &Path, threads: usize) -> (f64, f64) {
    let path = dir.join(format!("raw-group-{threads}"));
    let gc = Arc::new(GroupCommit {
        file: prealloc_file(&path, cfg.raw_file),
        state: Mutex::new(GcState::default()),
        cv: Condvar::new(),
    });
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let raw_file = cfg.raw_file;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (gc, next, stop, start) = (gc.clone(), next.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                let rec = pattern(4 * KIB, i as u64);
                start.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let at = next.fetch_add(4096, Ordering::Relaxed) % raw_file;
                    gc.file.write_all_at(&rec, at).expect("pwrite");
                    gc.commit();
                    n += 1;
                }
                n
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    std::thread::sleep(cfg.durable_run);
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = handles.into_iter().map(|h| h.join().expect("writer")).sum();
    let el = t.elapsed().as_secs_f64();
    let syncs = gc.state.lock().expect("gc lock").done;
    drop(gc);
    std::fs::remove_file(&path).expect("remove the raw file");
    (ops as f64 / el, ops as f64 / syncs.max(1) as f64)
}

// ---------------------------------------------------------------------
// The WAL

fn wal_config(durability: Durability) -> WalConfig {
    WalConfig {
        durability,
        auto_reclaim: false,
        ..WalConfig::default()
    }
}

/// The slice write of the `i`-th record of `len` bytes of a sequential
/// writer of file `file`.
fn slice_at(file: u64, i: u64, data: &[u8]) -> SliceWrite<'_> {
    let pos = i * data.len() as u64;
    SliceWrite {
        file: FileId(file),
        chunk: ChunkIndex((pos / CHUNK_SIZE) as u32),
        slice: SliceId((file << 32) | (pos / CHUNK_SIZE)),
        offset: (pos % CHUNK_SIZE) as u32,
        data,
    }
}

/// Appends/s and bytes/s of `rec`-byte appends in mode `None`, one thread.
fn append_none(cfg: &Cfg, dir: &Path, rec: usize) -> (f64, f64) {
    let wal_dir = dir.join(format!("append-none-{rec}"));
    let data = pattern(rec, 5);
    let n = (cfg.append_total / rec) as u64;
    let p = MmapPersister::open(&wal_dir, wal_config(Durability::None)).expect("open");
    let t = Instant::now();
    for i in 0..n {
        p.append_slice(&slice_at(1, i, &data)).expect("append");
    }
    let el = t.elapsed().as_secs_f64();
    // Dropping without close leaves the pages unsynced; removing the files
    // then discards them instead of writing 1 GiB out.
    drop(p);
    std::fs::remove_dir_all(&wal_dir).expect("remove the WAL");
    (n as f64 / el, (n as usize * rec) as f64 / el)
}

/// Durable appends/s of `threads` writers of 4 KiB in mode `Always`.
fn append_always(cfg: &Cfg, dir: &Path, threads: usize) -> f64 {
    let wal_dir = dir.join(format!("append-always-{threads}"));
    let p = Arc::new(MmapPersister::open(&wal_dir, wal_config(Durability::Always)).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (p, stop, start) = (p.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                let data = pattern(4 * KIB, i as u64);
                start.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    p.append_slice(&slice_at(i as u64 + 1, n, &data))
                        .expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    std::thread::sleep(cfg.durable_run);
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = handles.into_iter().map(|h| h.join().expect("writer")).sum();
    let el = t.elapsed().as_secs_f64();
    drop(p);
    std::fs::remove_dir_all(&wal_dir).expect("remove the WAL");
    ops as f64 / el
}

struct RecoveryResult {
    records: u64,
    data_bytes: u64,
    file_bytes: u64,
    close: Duration,
    open: Duration,
    scan: Duration,
    iterate: Duration,
    total: Duration,
    mmap_read_bw: f64,
}

/// Writes the recovery log, warms the page cache, then times open +
/// iterating every record.
fn recovery(cfg: &Cfg, dir: &Path) -> RecoveryResult {
    let wal_dir = dir.join("recovery");
    let data = pattern(64 * KIB, 9);
    let n = (cfg.recovery_total / data.len()) as u64;
    let p = MmapPersister::open(&wal_dir, wal_config(Durability::None)).expect("open");
    for i in 0..n {
        p.append_slice(&slice_at(1, i, &data)).expect("append");
    }
    let t = Instant::now();
    p.close().expect("close");
    let close = t.elapsed();
    drop(p);

    // Warm the page cache (read(2) of every file), then measure the bound:
    // every byte read once through a fresh mapping of the warm files.
    let files = wal_files(&wal_dir);
    let mut buf = vec![0u8; 4 * MIB];
    let mut file_bytes = 0u64;
    for f in &files {
        let mut fh = File::open(f).expect("open segment");
        loop {
            let got = fh.read(&mut buf).expect("read segment");
            if got == 0 {
                break;
            }
            file_bytes += got as u64;
        }
    }
    let t = Instant::now();
    let mut sum = 0u64;
    for f in &files {
        let fh = File::open(f).expect("open segment");
        if fh.metadata().expect("stat").len() == 0 {
            continue;
        }
        // SAFETY: the files belong to this bench and nothing modifies them
        // while mapped (the log is closed).
        let map = unsafe { memmap2::Mmap::map(&fh) }.expect("mmap");
        sum = sum.wrapping_add(sum_words(&map));
    }
    let mmap_el = t.elapsed();
    black_box(sum);

    let t = Instant::now();
    let p = MmapPersister::open(&wal_dir, wal_config(Durability::None)).expect("reopen");
    let open = t.elapsed();
    let t_it = Instant::now();
    let mut records = 0u64;
    let mut data_bytes = 0u64;
    {
        let mut rec = p.recover().expect("recover");
        while let Some(r) = rec.next_record() {
            let r = r.expect("record");
            if let RecordKind::Slice(w) = r.kind {
                data_bytes += w.data.len() as u64;
            }
            records += 1;
        }
    }
    let iterate = t_it.elapsed();
    let total = t.elapsed();
    assert_eq!(records, n, "recovered every record");
    assert_eq!(data_bytes, n * data.len() as u64);
    let scan = p.open_stats().duration;
    p.close().expect("close");
    drop(p);
    std::fs::remove_dir_all(&wal_dir).expect("remove the WAL");
    RecoveryResult {
        records,
        data_bytes,
        file_bytes,
        close,
        open,
        scan,
        iterate,
        total,
        mmap_read_bw: file_bytes as f64 / mmap_el.as_secs_f64(),
    }
}

// ---------------------------------------------------------------------
// Helpers

/// Segment files of a log directory, sorted.
fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list the WAL")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != slicefs_wal::LOCK_FILE))
        .collect();
    v.sort();
    v
}

/// A file of `len` bytes allocated with `fallocate` (unwritten extents,
/// as the WAL allocates its segments).
fn prealloc_file(path: &Path, len: u64) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create the raw file");
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    f.sync_all().expect("fsync the raw file");
    File::open(path.parent().expect("parent"))
        .and_then(|d| d.sync_all())
        .expect("fsync the directory");
    f
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn touch(buf: &mut [u8]) {
    for i in (0..buf.len()).step_by(4096) {
        buf[i] = 1;
    }
    black_box(buf);
}

fn sum_words(b: &[u8]) -> u64 {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .fold(0u64, u64::wrapping_add)
}

fn fs_type(path: &Path) -> String {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to
    // writable memory of the right type.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return "unknown".into();
    }
    // SAFETY: statfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64;
    match magic {
        0xEF53 => "ext2/3/4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        0x6969 => "nfs".into(),
        0x0100_0000 => "fuse".into(),
        m => format!("fs magic {m:#x}"),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn size_name(s: usize) -> String {
    if s >= GIB && s.is_multiple_of(GIB) {
        format!("{} GiB", s / GIB)
    } else if s >= MIB && s.is_multiple_of(MIB) {
        format!("{} MiB", s / MIB)
    } else if s >= KIB && s.is_multiple_of(KIB) {
        format!("{} KiB", s / KIB)
    } else if s >= MIB {
        format!("{:.1} MiB", s as f64 / MIB as f64)
    } else {
        format!("{s} B")
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// " (min..max of N)" when there were several rounds.
fn spread(v: &[f64]) -> String {
    if v.len() < 2 {
        return String::new();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!(" (median; {}..{})", num(lo), num(hi))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `x` rounded, with thousands separators.
fn num(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

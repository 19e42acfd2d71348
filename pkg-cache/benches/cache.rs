//! Criterion benchmarks of the slice cache, each set against a memcpy
//! bound of the same byte size measured in the same run:
//! - sequential 32 KiB writes into one file (reserve + insert, LSN and
//!   offset increasing; the file is removed every `seq_region` bytes, not
//!   timed, so memory stays bounded), twice: in steady state (the cache's
//!   buffer pool recycles the removed file's buffers) and on first touch
//!   (a new cache per region: every buffer is fresh memory from the
//!   kernel);
//! - random 4 KiB writes at 4 KiB-aligned offsets of a 256 MiB file;
//! - reading a 4 MiB range written by 1, 10 and 50 overlapping writes;
//! - recovery: [`MmapPersister::open`] + [`slicefs_cache::recover`] of
//!   1 GiB of 64 KiB slices (warm page cache) into a fresh cache.
//!
//! Allocator: buffers of 128 KiB and more are the cache's own mappings
//! (recycled by its pool); smaller ones come from malloc, whose reuse of
//! freed memory glibc tunes as the program runs, which made results
//! depend on what ran before. This file pins glibc's static defaults at
//! start.
//!
//! Run with `cargo bench -p slicefs-cache --bench cache`. Criterion prints
//! its own estimates per benchmark; at the end a markdown table sums up
//! the medians of the per-sample rates this file recorded itself (every
//! benchmark uses `iter_custom`, so the timings are the same ones
//! criterion analyses). Criterion's usual arguments work (a name filter,
//! `--quick`, `--profile-time`). Environment:
//! - `CACHE_BENCH_QUICK=1`: small sizes and short runs (a smoke test).
//! - `CACHE_BENCH_DIR=/some/dir`: where the recovery log goes. Default:
//!   the target directory's `tmp` (on the same disk as the build).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use slicefs_cache::{CHUNK_SIZE, CacheConfig, SliceCache, recover};
use slicefs_wal::{
    ChunkIndex, Durability, FileId, Lsn, MmapPersister, Persister, RecordKind, SliceId, SliceWrite,
    WalConfig,
};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// Bytes of one sequential write.
const SEQ_WRITE: usize = 32 * KIB;
/// Bytes of one random write.
const RAND_WRITE: usize = 4 * KIB;
/// Bytes of the range read in the merge benchmarks.
const MERGE_RANGE: usize = 4 * MIB;
/// Overlapping writes under the merged read.
const MERGE_SLICES: [usize; 3] = [1, 10, 50];
/// Bytes of one slice of the recovery log.
const RECOVERY_SLICE: usize = 64 * KIB;

/// Sizes and durations of one run.
struct Cfg {
    /// Criterion warm-up time per benchmark.
    warm_up: Duration,
    /// Criterion measurement time per benchmark.
    measure: Duration,
    /// Criterion samples per benchmark (not recovery).
    samples: usize,
    /// Sequential writes: bytes written into the file before it is removed.
    seq_region: u64,
    /// Random writes: size of the file.
    rand_file: u64,
    /// Slice bytes in the recovery log.
    recovery_total: usize,
    /// Criterion measurement time of the recovery benchmark.
    recovery_measure: Duration,
    /// Destination buffer of the memcpy bounds (records copied back to
    /// back, wrapping around).
    memcpy_buf: usize,
}

impl Cfg {
    fn new(quick: bool) -> Self {
        if quick {
            Cfg {
                warm_up: Duration::from_millis(200),
                measure: Duration::from_millis(600),
                samples: 10,
                seq_region: 64 << 20,
                rand_file: 64 << 20,
                recovery_total: 128 * MIB,
                recovery_measure: Duration::from_secs(1),
                memcpy_buf: 64 * MIB,
            }
        } else {
            Cfg {
                warm_up: Duration::from_secs(1),
                measure: Duration::from_secs(3),
                samples: 30,
                seq_region: 256 << 20,
                rand_file: 256 << 20,
                recovery_total: GIB,
                recovery_measure: Duration::from_secs(8),
                memcpy_buf: 256 * MIB,
            }
        }
    }
}

/// The timings of every call criterion made to one routine:
/// (work units done, elapsed). The last `samples` calls are the
/// measurement phase (the earlier ones are warm-up).
#[derive(Default)]
struct Log {
    calls: Vec<(u64, Duration)>,
    samples: usize,
}

impl Log {
    fn new(samples: usize) -> Self {
        Log {
            calls: Vec::new(),
            samples,
        }
    }

    fn record(&mut self, units: u64, d: Duration) -> Duration {
        self.calls.push((units, d));
        d
    }

    /// Median units per second over the measured samples (`None` if the
    /// benchmark did not run, e.g. filtered out).
    fn rate(&self) -> Option<f64> {
        let n = self.calls.len();
        let mut rates: Vec<f64> = self.calls[n - n.min(self.samples)..]
            .iter()
            .filter(|(_, d)| !d.is_zero())
            .map(|(u, d)| *u as f64 / d.as_secs_f64())
            .collect();
        if rates.is_empty() {
            return None;
        }
        rates.sort_by(f64::total_cmp);
        Some(rates[rates.len() / 2])
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
    let quick = std::env::var("CACHE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let cfg = Cfg::new(quick);
    let base = std::env::var_os("CACHE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create the bench base directory");
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let machine = format!(
        "machine: nproc={nproc}, cpu={}, load average at start {}, mode {}",
        cpu_model(),
        loadavg(),
        if quick { "quick" } else { "full" }
    );
    eprintln!("{machine}");

    malloc_fresh();
    let mut c = Criterion::default()
        .warm_up_time(cfg.warm_up)
        .measurement_time(cfg.measure)
        .sample_size(cfg.samples)
        .without_plots()
        .configure_from_args();
    let mut rows = Vec::new();

    // 1. Memcpy bounds: records copied back to back into a large touched
    // buffer (write sizes), or one buffer into another of the same size
    // (the merged read's 4 MiB).
    let mut g = c.benchmark_group("memcpy");
    let memcpy_32k = memcpy_bench(&mut g, &cfg, SEQ_WRITE, cfg.memcpy_buf);
    let memcpy_4k = memcpy_bench(&mut g, &cfg, RAND_WRITE, cfg.memcpy_buf);
    let memcpy_64k = memcpy_bench(&mut g, &cfg, RECOVERY_SLICE, cfg.memcpy_buf);
    let memcpy_4m = memcpy_bench(&mut g, &cfg, MERGE_RANGE, MERGE_RANGE);
    g.finish();
    for (bw, what) in [
        (
            memcpy_4k,
            format!("memcpy 4 KiB records into {}", size_name(cfg.memcpy_buf)),
        ),
        (
            memcpy_32k,
            format!("memcpy 32 KiB records into {}", size_name(cfg.memcpy_buf)),
        ),
        (
            memcpy_64k,
            format!("memcpy 64 KiB records into {}", size_name(cfg.memcpy_buf)),
        ),
        (memcpy_4m, "memcpy 4 MiB buffer to 4 MiB buffer".to_string()),
    ] {
        if bw.is_finite() {
            rows.push(Row::bound(what, fmt_bw(bw)));
        }
    }

    // 2. Sequential 32 KiB writes, steady state then first touch.
    let mut g = c.benchmark_group("seq_write");
    g.throughput(Throughput::Bytes(SEQ_WRITE as u64));
    for recycled in [true, false] {
        // Set-ups run only if criterion runs the benchmark (not filtered
        // out).
        let mut seq = None;
        let mut log = Log::new(cfg.samples);
        let (id, what) = if recycled {
            (
                "32KiB_steady",
                "steady state, buffers recycled by the cache's pool",
            )
        } else {
            (
                "32KiB_first_touch",
                "first touch, a new cache per region (fresh memory from the kernel)",
            )
        };
        g.bench_function(id, |b| {
            let seq = seq.get_or_insert_with(|| SeqWriter::new(cfg.seq_region, !recycled));
            b.iter_custom(|iters| log.record(iters * SEQ_WRITE as u64, seq.run(iters)))
        });
        let Some(seq) = seq else {
            continue;
        };
        eprintln!(
            "seq_write {id}: {} writes timed, {} file removals (untimed, {:.0} ms in all)",
            seq.writes,
            seq.removals,
            ms(seq.remove_time)
        );
        drop(seq);
        let bw = log.rate();
        let r = ratio(bw, memcpy_32k);
        rows.push(Row {
            name: format!(
                "sequential 32 KiB writes, one file, {what} (reserve + insert; file removed every {}, untimed)",
                size_name(cfg.seq_region as usize)
            ),
            result: bw.map_or("skipped".into(), |bw| {
                format!("{} ({} writes/s)", fmt_bw(bw), num(bw / SEQ_WRITE as f64))
            }),
            bound: format!("memcpy 32 KiB {}", fmt_bw(memcpy_32k)),
            ratio: r,
            target: if recycled {
                ">= 40% of memcpy".into()
            } else {
                "(after a restart)".into()
            },
            met: if recycled {
                r.map(|r| r >= 0.4)
            } else {
                None
            },
        });
    }
    g.finish();

    // 3. Random 4 KiB writes.
    let mut g = c.benchmark_group("rand_write");
    g.throughput(Throughput::Elements(1));
    let mut rnd = None;
    let mut log = Log::new(cfg.samples);
    g.bench_function(format!("4KiB_in_{}MiB", cfg.rand_file >> 20), |b| {
        let rnd = rnd.get_or_insert_with(|| RandWriter::new(cfg.rand_file));
        b.iter_custom(|iters| log.record(iters, rnd.run(iters)))
    });
    g.finish();
    let rnd_ops = log.rate();
    if let Some(rnd) = rnd {
        let st = rnd.cache.stats();
        eprintln!(
            "rand_write: {} extents, {} pending, {} memory at the end",
            st.slices,
            size_name(st.dirty_bytes as usize),
            size_name(st.memory_bytes as usize)
        );
    }
    rows.push(Row {
        name: format!(
            "random 4 KiB writes in a {} file (reserve + insert)",
            size_name(cfg.rand_file as usize)
        ),
        result: rnd_ops.map_or("skipped".into(), |ops| {
            format!(
                "{} writes/s ({})",
                num(ops),
                fmt_bw(ops * RAND_WRITE as f64)
            )
        }),
        bound: format!("memcpy 4 KiB {}", fmt_bw(memcpy_4k)),
        ratio: ratio(rnd_ops.map(|o| o * RAND_WRITE as f64), memcpy_4k),
        target: ">= 1,000,000 writes/s".into(),
        met: rnd_ops.map(|o| o >= 1e6),
    });

    // 4. Merged reads.
    let mut g = c.benchmark_group("read_merge");
    g.throughput(Throughput::Bytes(MERGE_RANGE as u64));
    for n in MERGE_SLICES {
        let mut state = None;
        let mut log = Log::new(cfg.samples);
        g.bench_function(format!("4MiB_{n}_slices"), |b| {
            let (cache, out, _) = state.get_or_insert_with(|| {
                let (cache, extents) = merge_cache(n);
                (cache, vec![0u8; MERGE_RANGE], extents)
            });
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let missing = cache
                        .read(FileId(1), 0, black_box(&mut out[..]))
                        .expect("readable");
                    assert!(missing.is_empty());
                    black_box(&out);
                }
                log.record(iters * MERGE_RANGE as u64, t.elapsed())
            })
        });
        let bw = log.rate();
        let extents = state.map_or(0, |(_, _, e)| e);
        rows.push(Row {
            name: format!("read 4 MiB written by {n} overlapping writes ({extents} extents)"),
            result: bw.map_or("skipped".into(), fmt_bw),
            bound: format!("memcpy 4 MiB {}", fmt_bw(memcpy_4m)),
            ratio: ratio(bw, memcpy_4m),
            target: if n == 50 {
                ">= 2 GB/s".into()
            } else {
                String::new()
            },
            met: if n == 50 { bw.map(|b| b >= 2e9) } else { None },
        });
    }
    g.finish();

    // 5. Upload snapshots: what an upload copies out of the cache.
    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Bytes(MERGE_RANGE as u64));
    let mut state = None;
    let mut log = Log::new(cfg.samples);
    g.bench_function("4MiB_block_of_1MiB_writes", |b| {
        let cache = state.get_or_insert_with(|| {
            let cache = big_cache(1 << 30);
            for i in 0..(MERGE_RANGE / MIB) {
                let data = pattern(MIB, i as u64 + 1);
                cache.insert(FileId(1), (i * MIB) as u64, &data, Lsn(i as u64 + 1), None);
            }
            cache
        });
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let snaps = cache.dirty_blocks(FileId(1));
                assert_eq!(snaps.len(), 1);
                for s in &snaps {
                    cache.abort_snapshot(s);
                }
                black_box(snaps);
            }
            log.record(iters * MERGE_RANGE as u64, t.elapsed())
        })
    });
    g.finish();
    let bw = log.rate();
    rows.push(Row {
        name: "snapshot of a 4 MiB pending block written in 1 MiB pieces (an upload's copy, allocation included)".into(),
        result: bw.map_or("skipped".into(), fmt_bw),
        bound: format!("memcpy 4 MiB {}", fmt_bw(memcpy_4m)),
        ratio: ratio(bw, memcpy_4m),
        target: String::new(),
        met: None,
    });

    // 6. Recovery.
    recovery(&mut c, &cfg, &base, memcpy_64k, &mut rows);

    c.final_summary();

    println!();
    println!("{machine}; load average at end {}", loadavg());
    println!();
    println!("| benchmark | result | bound (memcpy) | ratio | target | met? |");
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
}

// ---------------------------------------------------------------------
// Memcpy

/// Criterion benchmark of copying `rec`-byte records back to back into a
/// touched `dst_len`-byte buffer; returns the median bytes/s.
fn memcpy_bench(
    g: &mut BenchmarkGroup<'_, WallTime>,
    cfg: &Cfg,
    rec: usize,
    dst_len: usize,
) -> f64 {
    let slots = dst_len / rec;
    let mut slot = 0;
    let mut bufs = None;
    let mut log = Log::new(cfg.samples);
    g.throughput(Throughput::Bytes(rec as u64));
    g.bench_function(size_name(rec).replace(' ', ""), |b| {
        let (src, dst) = bufs.get_or_insert_with(|| {
            let mut dst = vec![0u8; dst_len];
            touch(&mut dst);
            (pattern(rec, 7), dst)
        });
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let at = slot * rec;
                dst[at..at + rec].copy_from_slice(black_box(&src[..]));
                black_box(&mut dst[..]);
                slot = (slot + 1) % slots;
            }
            log.record(iters * rec as u64, t.elapsed())
        })
    });
    log.rate().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------
// Writes

fn big_cache(bytes: u64) -> SliceCache {
    SliceCache::new(CacheConfig {
        capacity_bytes: bytes,
        dirty_max_bytes: bytes,
        dirty_wait: Duration::from_secs(1),
    })
    .expect("cache config")
}

/// One file written sequentially in 32 KiB writes, removed every
/// `region` bytes.
struct SeqWriter {
    cache: SliceCache,
    data: Vec<u8>,
    region: u64,
    offset: u64,
    lsn: u64,
    writes: u64,
    removals: u64,
    remove_time: Duration,
    /// A new cache (and buffer pool) after each removal: fresh memory.
    fresh: bool,
}

impl SeqWriter {
    fn new(region: u64, fresh: bool) -> Self {
        SeqWriter {
            cache: big_cache(4 * region),
            data: pattern(SEQ_WRITE, 1),
            region,
            offset: 0,
            lsn: 1,
            writes: 0,
            removals: 0,
            remove_time: Duration::ZERO,
            fresh,
        }
    }

    /// Time of `n` writes (removals excluded).
    fn run(&mut self, n: u64) -> Duration {
        let len = SEQ_WRITE as u64;
        let file = FileId(1);
        let mut left = n;
        let mut el = Duration::ZERO;
        while left > 0 {
            if self.offset + len > self.region {
                let t = Instant::now();
                self.cache.remove(file);
                if self.fresh {
                    self.cache = big_cache(4 * self.region);
                    malloc_trim();
                }
                self.remove_time += t.elapsed();
                self.removals += 1;
                self.offset = 0;
            }
            let batch = left.min((self.region - self.offset) / len);
            let t = Instant::now();
            for _ in 0..batch {
                let mut r = self.cache.reserve(len).expect("dirty room");
                self.cache
                    .insert(file, self.offset, &self.data, Lsn(self.lsn), Some(&mut r));
                self.offset += len;
                self.lsn += 1;
            }
            el += t.elapsed();
            left -= batch;
        }
        self.writes += n;
        el
    }
}

/// One file of `size` bytes written at random 4 KiB-aligned offsets.
struct RandWriter {
    cache: SliceCache,
    data: Vec<u8>,
    blocks: u64,
    rng: u64,
    lsn: u64,
}

impl RandWriter {
    /// The file is pre-filled with `2 * size / 4 KiB` random writes
    /// (untimed) so that measurement starts near the steady state where
    /// most writes replace an older one.
    fn new(size: u64) -> Self {
        let mut w = RandWriter {
            cache: big_cache(4 * size),
            data: pattern(RAND_WRITE, 2),
            blocks: size / RAND_WRITE as u64,
            rng: 0x9E37_79B9_7F4A_7C15,
            lsn: 1,
        };
        w.run(2 * w.blocks);
        w
    }

    fn run(&mut self, n: u64) -> Duration {
        let file = FileId(2);
        let len = RAND_WRITE as u64;
        let t = Instant::now();
        for _ in 0..n {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let offset = (self.rng % self.blocks) * len;
            let mut r = self.cache.reserve(len).expect("dirty room");
            self.cache
                .insert(file, offset, &self.data, Lsn(self.lsn), Some(&mut r));
            self.lsn += 1;
        }
        t.elapsed()
    }
}

// ---------------------------------------------------------------------
// Merged reads

/// A cache whose file 1 has `0..MERGE_RANGE` written by `n` overlapping
/// writes with increasing LSNs: write `i` covers `i * s..(i + 2) * s`
/// (cut at the range end; the last one reaches it), with `s` the range
/// over `n` rounded down to 4 KiB, so each write is partly overwritten by
/// the next. Returns the cache and its extent count.
fn merge_cache(n: usize) -> (SliceCache, usize) {
    let cache = big_cache(1 << 30);
    let s = (MERGE_RANGE / n) & !(4 * KIB - 1);
    for i in 0..n {
        let from = i * s;
        let to = if i + 1 == n {
            MERGE_RANGE
        } else {
            ((i + 2) * s).min(MERGE_RANGE)
        };
        let data = pattern(to - from, i as u64 + 1);
        cache.insert(FileId(1), from as u64, &data, Lsn(i as u64 + 1), None);
    }
    let extents = cache.debug_extents(FileId(1));
    (cache, extents)
}

// ---------------------------------------------------------------------
// Recovery

fn wal_config() -> WalConfig {
    WalConfig {
        durability: Durability::None,
        auto_reclaim: false,
        ..WalConfig::default()
    }
}

/// A log of `total` bytes of 64 KiB slices (one file, written
/// sequentially) in a new directory under `base`, closed.
fn write_log(base: &Path, total: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("cache-bench-")
        .tempdir_in(base)
        .expect("create the bench directory");
    let dir = tmp.path().join("wal");
    let n = total / RECOVERY_SLICE as u64;
    let data = pattern(RECOVERY_SLICE, 9);
    let t = Instant::now();
    let p = MmapPersister::open(&dir, wal_config()).expect("open");
    for i in 0..n {
        let pos = i * RECOVERY_SLICE as u64;
        p.append_slice(&SliceWrite {
            file: FileId(1),
            chunk: ChunkIndex((pos / CHUNK_SIZE) as u32),
            slice: SliceId(i + 1),
            offset: (pos % CHUNK_SIZE) as u32,
            data: &data,
        })
        .expect("append");
    }
    p.close().expect("close");
    eprintln!(
        "recovery: wrote and closed a log of {} in {n} slices of 64 KiB under {} in {:.0} ms",
        size_name(total as usize),
        dir.display(),
        ms(t.elapsed())
    );
    (tmp, dir)
}

/// Bytes/s of the log alone: open + iterating every record (median of 3,
/// after a pass that warms the page cache).
fn wal_only_bound(dir: &Path, total: u64) -> f64 {
    let mut rates = Vec::new();
    for i in 0..4 {
        let t = Instant::now();
        let p = MmapPersister::open(dir, wal_config()).expect("open");
        let mut bytes = 0u64;
        {
            let mut rec = p.recover().expect("recover");
            while let Some(r) = rec.next_record() {
                if let RecordKind::Slice(w) = r.expect("record").kind {
                    bytes += black_box(w.data).len() as u64;
                }
            }
        }
        let el = t.elapsed();
        assert_eq!(bytes, total);
        p.close().expect("close");
        if i > 0 {
            rates.push(total as f64 / el.as_secs_f64());
        }
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Benchmarks open + recover of the log into a fresh cache (after
/// writing the log and measuring the log alone as a bound).
fn recovery(c: &mut Criterion, cfg: &Cfg, base: &Path, memcpy_64k: f64, rows: &mut Vec<Row>) {
    let total = cfg.recovery_total as u64;
    let cap = 2 * total.max(1 << 30);
    let mut g = c.benchmark_group("recovery");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(cfg.recovery_measure)
        .throughput(Throughput::Bytes(total));
    let mut log = Log::new(10);
    let mut prepared = None;
    let (mut open_t, mut replay_t) = (Vec::new(), Vec::new());
    g.bench_function(format!("open_recover_{}MiB", total >> 20), |b| {
        let (_tmp, dir, _) = prepared.get_or_insert_with(|| {
            let (tmp, dir) = write_log(base, total);
            let bound = wal_only_bound(&dir, total);
            (tmp, dir, bound)
        });
        b.iter_custom(|iters| {
            let mut el = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let p = MmapPersister::open(&*dir, wal_config()).expect("open");
                let opened = t.elapsed();
                let cache = big_cache(cap);
                let report = recover(&p, &cache).expect("recover");
                let e = t.elapsed();
                el += e;
                open_t.push(opened);
                replay_t.push(e - opened);
                assert_eq!(report.slice_bytes, total);
                assert_eq!(report.pending_bytes, total);
                // Freeing the cache (and unmapping the log) is not timed;
                // the memory goes back to the kernel so that the next
                // replay starts cold, as after a restart.
                drop(cache);
                p.close().expect("close");
                malloc_trim();
            }
            log.record(iters * total, el)
        })
    });
    g.finish();
    let Some((_tmp, _, wal_bw)) = prepared else {
        return;
    };
    let bw = log.rate();
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let (open_med, replay_med) = (med(&mut open_t), med(&mut replay_t));
    rows.push(Row::bound(
        format!(
            "log alone: open + iterate {} of 64 KiB slices (warm)",
            size_name(total as usize)
        ),
        fmt_bw(wal_bw),
    ));
    rows.push(Row {
        name: format!(
            "recovery: open + recover {} of 64 KiB slices into a fresh cache (warm)",
            size_name(total as usize)
        ),
        result: bw.map_or("skipped".into(), |bw| {
            format!(
                "{} (median open {:.0} ms, recover {:.0} ms)",
                fmt_bw(bw),
                ms(open_med),
                ms(replay_med)
            )
        }),
        bound: format!("memcpy 64 KiB {}", fmt_bw(memcpy_64k)),
        ratio: ratio(bw, memcpy_64k),
        target: ">= 2 GB/s".into(),
        met: bw.map(|b| b >= 2e9),
    });
}

// ---------------------------------------------------------------------
// Helpers

/// Pins glibc's static malloc defaults (128 KiB mmap and trim thresholds,
/// no dynamic adjustment): large buffers are mapped fresh and unmapped on
/// free, whatever ran before.
fn malloc_fresh() {
    malloc_trim();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; valid parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
    }
}

/// Gives the free memory of the heap back to the kernel.
fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn ratio(x: Option<f64>, bound: f64) -> Option<f64> {
    x.filter(|_| bound.is_finite()).map(|x| x / bound)
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn size_name(s: usize) -> String {
    if s >= GIB && s.is_multiple_of(GIB) {
        format!("{} GiB", s / GIB)
    } else if s >= MIB && s.is_multiple_of(MIB) {
        format!("{} MiB", s / MIB)
    } else if s >= KIB && s.is_multiple_of(KIB) {
        format!("{} KiB", s / KIB)
    } else {
        format!("{s} B")
    }
}

fn fmt_bw(bw: f64) -> String {
    if !bw.is_finite() {
        "n/a (filtered out)".into()
    } else if bw >= 1e9 {
        format!("{:.2} GB/s", bw / 1e9)
    } else {
        format!("{} MB/s", num(bw / 1e6))
    }
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

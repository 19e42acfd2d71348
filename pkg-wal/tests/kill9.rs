//! Crash tests with a real `kill -9`: a child process appends to a log in
//! a real directory from several threads and reports every append that
//! returned; the parent kills it at a random instant, opens the log and
//! checks that every reported record came back, byte for byte, and that
//! the recovered LSNs are exactly `1..=n`.
//!
//! The child is this test binary run again with `SLICEFS_KILL9_DIR` set
//! (see [`spawn_child`]); each test function runs the child role when it
//! finds that variable. Set `SLICEFS_KILL9_SEED` to replay the kill delays
//! of a failed run (the seed is printed on stderr).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slicefs_wal::{
    ChunkIndex, Durability, FileId, MmapPersister, Persister, RecordKind, SliceId, SliceWrite,
    WalConfig,
};

/// Directory of the log; set only in the child.
const ENV_DIR: &str = "SLICEFS_KILL9_DIR";
/// `always` or `batch`; set only in the child.
const ENV_MODE: &str = "SLICEFS_KILL9_MODE";
/// Which round of kills on the same directory (file ids differ per round).
const ENV_ROUND: &str = "SLICEFS_KILL9_ROUND";
/// Replays the kill delays of an earlier run.
const ENV_SEED: &str = "SLICEFS_KILL9_SEED";
/// Prefix of the child's report lines: libtest writes to the same stdout.
const MARK: &str = "@@kill9@@ ";

/// Appending threads in the child.
const THREADS: u64 = 4;
/// Kills on the same directory per iteration: the second child recovers
/// what the first left (torn tail and all) and appends after it.
const ROUNDS: u64 = 2;
/// In batch mode, each thread calls `sync` after this many appends.
const SYNC_EVERY: u64 = 8;
/// The child stops on its own after this long (the parent is gone).
const CHILD_MAX_RUN: Duration = Duration::from_secs(30);
/// Longest wait for the child to open the log.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the child's last lines after the kill.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

const ALWAYS_TEST: &str = "kill9_with_durability_always_keeps_every_returned_append";
const BATCH_TEST: &str = "kill9_with_durability_batch_keeps_every_returned_append_and_sync";

fn cfg(durability: Durability) -> WalConfig {
    WalConfig {
        durability,
        // Small segments: the kill often lands around a rotation.
        segment_bytes: 64 << 10,
        grow_bytes: 16 << 10,
        ..WalConfig::default()
    }
}

fn mix(mut z: u64) -> u64 {
    // splitmix64
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The file id of thread `t` of round `round`.
fn file_of(round: u64, t: u64) -> u64 {
    round * THREADS + t + 1
}

/// The bytes the writer of `file` appends as its `seq`-th record. Mostly
/// up to 6000 bytes; one in 64 is larger than a segment.
fn payload(file: u64, seq: u64) -> Vec<u8> {
    let h = mix((file << 40) ^ seq);
    let len = if h.is_multiple_of(64) {
        70_000 + (h >> 8) % 1000
    } else {
        1 + (h >> 8) % 6000
    } as usize;
    let mut out = Vec::with_capacity(len + 8);
    let mut x = h;
    while out.len() < len {
        x = mix(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn chunk_of(file: u64) -> u32 {
    (file % 7) as u32
}

fn offset_of(seq: u64) -> u32 {
    ((seq % 1024) * 4096) as u32
}

// ---------------------------------------------------------------- child --

/// Writes one report line in a single `write` (a kill leaves no half line
/// that parses).
fn emit(line: &str) {
    let s = format!("{MARK}{line}\n");
    let mut out = std::io::stdout().lock();
    if out
        .write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        // The parent is gone.
        std::process::exit(2);
    }
}

/// The child role: appends until killed. Never returns.
fn child_main(dir: &Path) -> ! {
    let mode = std::env::var(ENV_MODE).unwrap_or_default();
    let round: u64 = std::env::var(ENV_ROUND)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let (durability, batch) = match mode.as_str() {
        "always" => (Durability::Always, false),
        "batch" => (
            Durability::Batch {
                max_delay: Duration::from_millis(2),
            },
            true,
        ),
        other => {
            emit(&format!("ERR unknown mode {other:?}"));
            std::process::exit(3);
        }
    };
    let p = match MmapPersister::open(dir, cfg(durability)) {
        Ok(p) => p,
        Err(e) => {
            emit(&format!("ERR open: {e}"));
            std::process::exit(3);
        }
    };
    emit(&format!("READY {}", p.next_lsn().0));
    let stop = Instant::now() + CHILD_MAX_RUN;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let p = &p;
            s.spawn(move || {
                let file = file_of(round, t);
                let mut seq = 0u64;
                while Instant::now() < stop {
                    let data = payload(file, seq);
                    let w = SliceWrite {
                        file: FileId(file),
                        chunk: ChunkIndex(chunk_of(file)),
                        slice: SliceId(seq),
                        offset: offset_of(seq),
                        data: &data,
                    };
                    match p.append_slice(&w) {
                        Ok(lsn) => emit(&format!("LSN {} {file} {seq}", lsn.0)),
                        Err(e) => {
                            emit(&format!("ERR append: {e}"));
                            std::process::exit(3);
                        }
                    }
                    seq += 1;
                    if batch && seq.is_multiple_of(SYNC_EVERY) {
                        match p.sync() {
                            Ok(lsn) => emit(&format!("SYNC {}", lsn.0)),
                            Err(e) => {
                                emit(&format!("ERR sync: {e}"));
                                std::process::exit(3);
                            }
                        }
                    }
                }
            });
        }
    });
    std::process::exit(0)
}

/// Runs the child role if this process is a child.
fn maybe_child() {
    if let Some(dir) = std::env::var_os(ENV_DIR) {
        child_main(Path::new(&dir));
    }
}

// --------------------------------------------------------------- parent --

/// Kills and reaps the child if the parent fails half-way.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns this test binary as a child running `test` on `dir`; returns
/// the child and a channel of its report lines (marker stripped).
fn spawn_child(test: &str, dir: &Path, mode: &str, round: u64) -> (ChildGuard, Receiver<String>) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ENV_DIR, dir)
        .env(ENV_MODE, mode)
        .env(ENV_ROUND, round.to_string())
        .env_remove(ENV_SEED)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // A line without its newline was cut by the kill.
                    if !line.ends_with('\n') {
                        break;
                    }
                    if let Some(i) = line.find(MARK) {
                        let msg = line[i + MARK.len()..].trim_end().to_string();
                        if tx.send(msg).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    (ChildGuard(Some(child)), rx)
}

/// What the child reported in one round.
#[derive(Default)]
struct Reports {
    /// LSN -> (file, seq) of every append that returned.
    appends: HashMap<u64, (u64, u64)>,
    /// Highest LSN a `sync` returned.
    max_sync: u64,
}

impl Reports {
    fn take(&mut self, line: &str, ctx: &str) {
        let mut it = line.split_whitespace();
        let tag = it.next().unwrap_or("");
        let mut num = || -> u64 {
            it.next()
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("{ctx}: malformed child line {line:?}"))
        };
        match tag {
            "LSN" => {
                let (lsn, file, seq) = (num(), num(), num());
                if let Some(prev) = self.appends.insert(lsn, (file, seq)) {
                    panic!(
                        "{ctx}: LSN {lsn} returned twice: {prev:?} and {:?}",
                        (file, seq)
                    );
                }
            }
            "SYNC" => self.max_sync = self.max_sync.max(num()),
            "ERR" => panic!("{ctx}: child failed: {line}"),
            _ => panic!("{ctx}: unexpected child line {line:?}"),
        }
    }
}

/// Totals over a test, for the summary line.
#[derive(Default)]
struct Totals {
    kills: u64,
    /// Appends the children reported.
    reported: u64,
    /// Records found after a kill that were appended but not reported
    /// (the append had not returned, or its line was not written yet).
    unreported_recovered: u64,
    /// Kills after which the open cut a torn tail.
    torn_kills: u64,
    torn_bytes: u64,
    max_sync: u64,
}

/// One child on `dir`, killed `delay` after it opened the log. Returns
/// what it reported.
fn run_round(
    test: &str,
    mode: &str,
    dir: &Path,
    round: u64,
    delay: Duration,
    ctx: &str,
) -> Reports {
    let (mut guard, rx) = spawn_child(test, dir, mode, round);
    let mut reports = Reports::default();
    // Wait for the child to open the log.
    let ready_by = Instant::now() + READY_TIMEOUT;
    loop {
        let left = ready_by.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("READY") => break,
            Ok(l) => reports.take(&l, ctx),
            Err(RecvTimeoutError::Timeout) => panic!("{ctx}: child not ready in {READY_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                let st = guard.0.as_mut().map(|c| c.wait());
                panic!("{ctx}: child exited before it was ready: {st:?}");
            }
        }
    }
    // Let it append for `delay`, then kill -9.
    let kill_at = Instant::now() + delay;
    loop {
        let left = kill_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(l) => reports.take(&l, ctx),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                let st = guard.0.as_mut().map(|c| c.wait());
                panic!("{ctx}: child exited before the kill: {st:?}");
            }
        }
    }
    let mut child = guard.0.take().expect("child");
    // Child::kill is SIGKILL on Unix.
    if let Err(e) = child.kill() {
        let _ = child.wait();
        panic!("{ctx}: kill failed: {e}");
    }
    let status = child.wait().expect("wait for the child");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{ctx}: child ended by itself: {status:?}"
    );
    // Every line it wrote before dying is an append that returned.
    let drain_by = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let left = drain_by.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => reports.take(&l, ctx),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{ctx}: the child's stdout stayed open {DRAIN_TIMEOUT:?} after its death")
            }
        }
    }
    reports
}

/// Opens the log after a kill and checks it against everything reported
/// so far (`reported`: LSN -> (file, seq) over all rounds).
fn verify(
    dir: &Path,
    reported: &HashMap<u64, (u64, u64)>,
    max_sync: u64,
    ctx: &str,
    totals: &mut Totals,
) {
    let p = MmapPersister::open(dir, cfg(Durability::None))
        .unwrap_or_else(|e| panic!("{ctx}: open after kill -9 failed: {e}"));
    let stats = p.open_stats().clone();
    assert_eq!(stats.corruption, None, "{ctx}");
    // (lsn, file, seq) in recovery order.
    let mut got: Vec<(u64, u64, u64)> = Vec::new();
    {
        let mut rec = p.recover().expect("recover");
        while let Some(r) = rec.next_record() {
            let r = r.unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
            let RecordKind::Slice(w) = r.kind else {
                panic!("{ctx}: LSN {} is not a slice: {:?}", r.lsn, r.kind);
            };
            let (file, seq) = (w.file.0, w.slice.0);
            assert_eq!(
                r.lsn.0,
                got.len() as u64 + 1,
                "{ctx}: recovered LSNs are not the gap-free prefix 1..=n"
            );
            assert_eq!(w.chunk, ChunkIndex(chunk_of(file)), "{ctx}: LSN {}", r.lsn);
            assert_eq!(w.offset, offset_of(seq), "{ctx}: LSN {}", r.lsn);
            assert!(
                w.data == payload(file, seq).as_slice(),
                "{ctx}: LSN {} (file {file} seq {seq}): wrong data ({} bytes)",
                r.lsn,
                w.data.len()
            );
            got.push((r.lsn.0, file, seq));
        }
    }
    let n = got.len() as u64;
    assert_eq!(stats.last_lsn, n, "{ctx}");
    assert_eq!(p.next_lsn().0, n + 1, "{ctx}");
    // Every append that returned is there, with the content it had.
    for (&lsn, &(file, seq)) in reported {
        assert!(
            lsn <= n,
            "{ctx}: returned append LSN {lsn} (file {file} seq {seq}) lost; recovered 1..={n}"
        );
        let (_, f, s) = got[(lsn - 1) as usize];
        assert_eq!((f, s), (file, seq), "{ctx}: LSN {lsn} holds another record");
    }
    assert!(
        max_sync <= n,
        "{ctx}: sync returned LSN {max_sync}, recovered only 1..={n}"
    );
    // A writer's appends are sequential, so what survives of each writer
    // is a prefix of its sequence.
    let mut next_seq: HashMap<u64, u64> = HashMap::new();
    for &(lsn, file, seq) in &got {
        let want = next_seq.entry(file).or_insert(0);
        assert_eq!(seq, *want, "{ctx}: LSN {lsn}: file {file} skipped a record");
        *want += 1;
    }
    totals.unreported_recovered += n - reported.len() as u64;
    totals.torn_kills += u64::from(stats.torn_bytes > 0);
    totals.torn_bytes += stats.torn_bytes;
    p.close().expect("close");
}

fn base_seed() -> u64 {
    std::env::var(ENV_SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// `iterations` fresh directories, each killed `ROUNDS` times.
fn kill_loop(test: &str, mode: &str, iterations: u64) {
    let seed = base_seed();
    eprintln!("{test}: seed {seed} (set {ENV_SEED}={seed} to replay the kill delays)");
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut totals = Totals::default();
    for it in 0..iterations {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reported: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut max_sync = 0;
        for round in 0..ROUNDS {
            let delay = Duration::from_millis(rng.random_range(20..=300));
            let ctx = format!("{mode} seed {seed} iteration {it} round {round} delay {delay:?}");
            let r = run_round(test, mode, dir.path(), round, delay, &ctx);
            totals.kills += 1;
            totals.reported += r.appends.len() as u64;
            totals.max_sync = totals.max_sync.max(r.max_sync);
            for (lsn, v) in r.appends {
                if let Some(prev) = reported.insert(lsn, v) {
                    panic!("{ctx}: LSN {lsn} returned in two rounds: {prev:?} and {v:?}");
                }
            }
            max_sync = max_sync.max(r.max_sync);
            verify(dir.path(), &reported, max_sync, &ctx, &mut totals);
        }
    }
    eprintln!(
        "{test}: {} kills in {:.1?}: {} appends reported and recovered, {} more recovered \
         that were not reported, {} torn tails cut ({} bytes), highest sync LSN {}",
        totals.kills,
        t0.elapsed(),
        totals.reported,
        totals.unreported_recovered,
        totals.torn_kills,
        totals.torn_bytes,
        totals.max_sync,
    );
    assert!(totals.reported > 0, "no child ever reported an append");
}

#[test]
fn kill9_with_durability_always_keeps_every_returned_append() {
    maybe_child();
    kill_loop(ALWAYS_TEST, "always", 20);
}

#[test]
fn kill9_with_durability_batch_keeps_every_returned_append_and_sync() {
    maybe_child();
    kill_loop(BATCH_TEST, "batch", 8);
}

//! Limits and bookkeeping of [`SliceCache`]: the dirty limit (waiting,
//! giving up, being released by an upload), eviction of clean bytes only,
//! memory under random overwrites, sequential-write extension, truncate and
//! remove semantics, exact counters, and parallel writers.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slicefs_cache::{
    BLOCK_SIZE, BlockSnapshot, CHUNK_SIZE, CacheConfig, CacheError, FileId, Lsn, SliceCache,
};

const F: FileId = FileId(1);
const MIB: u64 = 1 << 20;

fn cache_with(capacity: u64, dirty_max: u64, wait: Duration) -> SliceCache {
    SliceCache::new(CacheConfig {
        capacity_bytes: capacity,
        dirty_max_bytes: dirty_max,
        dirty_wait: wait,
    })
    .expect("cache")
}

fn put(c: &SliceCache, file: FileId, offset: u64, data: &[u8], lsn: u64) {
    let mut r = c.reserve(data.len() as u64).expect("reserve");
    c.insert(file, offset, data, Lsn(lsn), Some(&mut r));
}

fn read(c: &SliceCache, file: FileId, range: Range<u64>) -> (Vec<u8>, Vec<Range<u64>>) {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    let missing = c.read(file, range.start, &mut buf).expect("readable");
    (buf, missing)
}

fn flush_all(c: &SliceCache, file: FileId) -> Vec<BlockSnapshot> {
    let snaps = c.dirty_blocks(file);
    for s in &snaps {
        c.mark_flushed(s);
    }
    snaps
}

#[test]
fn dirty_limit_waits_then_fails_with_cache_full() {
    let wait = Duration::from_millis(200);
    let c = cache_with(16 * MIB, MIB, wait);
    put(&c, F, 0, &vec![1u8; MIB as usize], 1);
    assert_eq!(c.stats().dirty_bytes, MIB);

    let t = Instant::now();
    let err = c.reserve(4096).err().expect("the limit is full");
    let took = t.elapsed();
    match &err {
        CacheError::CacheFull {
            dirty_bytes,
            dirty_max_bytes,
            waited,
        } => assert_eq!((*dirty_bytes, *dirty_max_bytes, *waited), (MIB, MIB, wait)),
        other => panic!("expected CacheFull, got {other}"),
    }
    assert!(took >= wait, "gave up after {took:?}, before the wait");
    assert!(took < wait + Duration::from_secs(5), "took {took:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("1048576 bytes pending of 1048576"),
        "message without the numbers: {msg}"
    );
    let st = c.stats();
    assert_eq!((st.waits, st.full_errors), (1, 1), "{st:?}");
    // Nothing was dropped.
    assert_eq!(st.dirty_bytes, MIB);
    let (got, missing) = read(&c, F, 0..MIB);
    assert!(missing.is_empty() && got.iter().all(|&b| b == 1));

    // Once uploaded, there is room at once.
    flush_all(&c, F);
    let t = Instant::now();
    let r = c.reserve(4096).expect("room after the upload");
    assert!(t.elapsed() < wait);
    drop(r);
    assert_eq!(c.stats().waits, 1);
}

#[test]
fn reservations_count_against_the_limit_until_used_or_dropped() {
    let c = cache_with(16 * MIB, MIB, Duration::from_millis(50));
    let r1 = c.reserve(512 << 10).expect("fits");
    let err = c
        .reserve(600 << 10)
        .err()
        .expect("512 KiB + 600 KiB > 1 MiB");
    assert!(
        matches!(err, CacheError::CacheFull { dirty_bytes, .. } if dirty_bytes == 512 << 10),
        "{err}"
    );
    drop(r1);
    let r2 = c
        .reserve(600 << 10)
        .expect("room once the first is dropped");
    drop(r2);
    // A write larger than the whole limit goes through on an empty cache.
    let r3 = c.reserve(2 * MIB).expect("an empty cache takes any write");
    assert_eq!(r3.bytes(), 2 * MIB);
    drop(r3);
    // A write of new bytes uses its whole reservation; an overwrite of
    // pending bytes uses none (it adds no pending bytes).
    let mut r = c.reserve(1000).expect("room");
    c.insert(FileId(2), 0, &[1u8; 1000], Lsn(1), Some(&mut r));
    assert_eq!(r.bytes(), 0);
    let mut r = c.reserve(1000).expect("room");
    c.insert(FileId(2), 0, &[2u8; 1000], Lsn(2), Some(&mut r));
    assert_eq!(r.bytes(), 1000);
    drop(r);
    c.remove(FileId(2));
    // A write of new bytes uses its whole reservation; an overwrite of
    // pending bytes uses none (it adds no pending bytes).
    let mut r = c.reserve(1000).expect("room");
    c.insert(FileId(2), 0, &[1u8; 1000], Lsn(1), Some(&mut r));
    assert_eq!(r.bytes(), 0);
    let mut r = c.reserve(1000).expect("room");
    c.insert(FileId(2), 0, &[2u8; 1000], Lsn(2), Some(&mut r));
    assert_eq!(r.bytes(), 1000);
    drop(r);
    c.remove(FileId(2));
    // A reservation larger than the write gives the rest back.
    let mut r = c.reserve(8192).expect("room");
    c.insert(F, 0, &[1u8; 1000], Lsn(1), Some(&mut r));
    assert_eq!(r.bytes(), 7192);
    drop(r);
    let r = c
        .reserve(MIB - 1000)
        .expect("exactly the rest of the limit");
    drop(r);
    assert_eq!(c.stats().full_errors, 1);
}

#[test]
fn truncate_and_remove_make_room_too() {
    let c = cache_with(16 * MIB, MIB, Duration::from_millis(100));
    put(&c, F, 0, &vec![1u8; MIB as usize], 1);
    c.truncate(F, 0);
    let t = Instant::now();
    drop(c.reserve(MIB).expect("room after the truncate"));
    put(&c, FileId(2), 0, &vec![1u8; MIB as usize], 2);
    c.remove(FileId(2));
    drop(c.reserve(MIB).expect("room after the remove"));
    assert!(t.elapsed() < Duration::from_millis(100));
    assert_eq!(c.stats().waits, 0);
}

#[test]
fn a_waiting_writer_proceeds_when_an_upload_makes_room() {
    let c = Arc::new(cache_with(64 * MIB, MIB, Duration::from_secs(30)));
    put(&c, F, 0, &vec![1u8; MIB as usize], 1);
    let (tx, rx) = mpsc::channel();
    let c2 = Arc::clone(&c);
    thread::spawn(move || {
        let t = Instant::now();
        let res = c2
            .reserve(64 << 10)
            .map(|mut r| {
                c2.insert(F, MIB, &[2u8; 64 << 10], Lsn(2), Some(&mut r));
                r.bytes()
            })
            .map_err(|e| e.to_string());
        let _ = tx.send((res, t.elapsed()));
    });
    // The writer waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.stats().waits == 0 {
        assert!(Instant::now() < deadline, "the writer never waited");
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(50));
    assert!(rx.try_recv().is_err(), "the writer did not wait for room");

    // The upload makes room.
    let snaps = flush_all(&c, F);
    assert_eq!(snaps.len(), 1);
    let (res, waited) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the writer was not released by the upload");
    assert_eq!(res, Ok(0));
    assert!(waited < Duration::from_secs(30), "it timed out instead");
    let st = c.stats();
    assert_eq!((st.waits, st.full_errors), (1, 0), "{st:?}");
    assert_eq!(st.dirty_bytes, 64 << 10);
    let (got, missing) = read(&c, F, MIB..MIB + (64 << 10));
    assert!(missing.is_empty() && got.iter().all(|&b| b == 2));
}

#[test]
fn only_clean_bytes_are_evicted() {
    let c = cache_with(MIB, 64 * MIB, Duration::from_secs(5));
    // 8 MiB pending in a 1 MiB cache: all of it stays.
    let w = 64usize << 10;
    for i in 0..128u64 {
        put(&c, F, i * w as u64, &vec![(i % 250) as u8 + 1; w], i + 1);
    }
    c.evict_if_needed();
    let st = c.stats();
    assert_eq!(st.dirty_bytes, 8 * MIB);
    assert!(st.memory_bytes >= 8 * MIB, "{st:?}");
    assert_eq!(st.evicted_bytes, 0);
    let (got, missing) = read(&c, F, 0..8 * MIB);
    assert!(missing.is_empty(), "pending bytes evicted: {missing:?}");
    for (i, part) in got.chunks(w).enumerate() {
        assert!(part.iter().all(|&b| b == (i % 250) as u8 + 1));
    }

    // Block 0 uploaded: it becomes clean and is evicted; block 1 stays.
    let snaps = c.dirty_blocks(F);
    assert_eq!(snaps.len(), 2);
    c.mark_flushed(&snaps[0]);
    let st = c.stats();
    assert_eq!(
        (st.dirty_bytes, st.clean_bytes, st.evicted_bytes),
        (4 * MIB, 0, 4 * MIB),
        "{st:?}"
    );
    let (_, missing) = read(&c, F, 0..8 * MIB);
    assert_eq!(missing, vec![0..BLOCK_SIZE]);

    // More pending bytes: memory grows past the capacity, nothing is lost.
    let g = FileId(2);
    for i in 0..64u64 {
        put(&c, g, i * w as u64, &vec![7u8; w], 200 + i);
    }
    let st = c.stats();
    assert!(st.memory_bytes >= 8 * MIB, "{st:?}");
    assert_eq!(st.dirty_bytes, 8 * MIB);
    let (_, missing) = read(&c, g, 0..4 * MIB);
    assert!(missing.is_empty());
    let (_, missing) = read(&c, F, BLOCK_SIZE..2 * BLOCK_SIZE);
    assert!(missing.is_empty());

    // Everything uploaded: everything may go.
    c.mark_flushed(&snaps[1]);
    flush_all(&c, g);
    let st = c.stats();
    assert_eq!(st.dirty_bytes, 0);
    assert!(st.memory_bytes <= MIB, "{st:?}");
    assert_eq!(st.evicted_bytes + st.clean_bytes, 12 * MIB, "{st:?}");
}

#[test]
fn eviction_takes_the_least_recently_used_chunk_first() {
    let c = cache_with(MIB, 64 * MIB, Duration::from_secs(5));
    let (a, b, d) = (FileId(1), FileId(2), FileId(3));
    put(&c, a, 0, &[1u8; 400_000], 1);
    put(&c, b, 0, &[2u8; 400_000], 2);
    flush_all(&c, a);
    flush_all(&c, b);
    assert_eq!(c.stats().evicted_bytes, 0);
    // `a` is used again; `b` is now the least recently used.
    let _ = read(&c, a, 0..10);
    put(&c, d, 0, &[3u8; 400_000], 3);
    let st = c.stats();
    assert_eq!(st.evicted_bytes, 400_000, "{st:?}");
    assert!(st.memory_bytes <= MIB);
    assert!(read(&c, a, 0..400_000).1.is_empty(), "a was evicted");
    assert_eq!(read(&c, b, 0..400_000).1, vec![0..400_000]);
    assert_eq!((st.files, st.chunks), (2, 2));
}

#[test]
fn random_overwrites_do_not_grow_memory_without_bound() {
    let region = MIB as usize;
    let c = cache_with(64 * MIB, 64 * MIB, Duration::from_secs(5));
    let mut model = vec![0u8; region];
    let mut written = vec![false; region];
    let mut rng = StdRng::seed_from_u64(7);
    let mut max_mem = 0;
    for i in 0..100_000u64 {
        let off = rng.random_range(0..=region - 4096);
        let data = vec![(i % 255) as u8 + 1; 4096];
        c.insert(F, off as u64, &data, Lsn(i + 1), None);
        model[off..off + 4096].copy_from_slice(&data);
        written[off..off + 4096].fill(true);
        max_mem = max_mem.max(c.stats().memory_bytes);
    }
    let st = c.stats();
    assert!(
        max_mem < 4 * MIB,
        "memory reached {max_mem} bytes for a 1 MiB region: {st:?}"
    );
    let covered = written.iter().filter(|&&w| w).count() as u64;
    assert_eq!(st.dirty_bytes, covered);
    let (got, missing) = read(&c, F, 0..MIB);
    assert_eq!(got, model);
    let holes: u64 = missing.iter().map(|m| m.end - m.start).sum();
    assert_eq!(holes, MIB - covered);
    assert_eq!(st.slices, c.debug_extents(F) as u64);
}

#[test]
fn sequential_writes_extend_one_slice() {
    let c = cache_with(64 * MIB, 512 * MIB, Duration::from_secs(5));
    // 1000 writes of 4 KiB inside block 0: one extent.
    let a = FileId(1);
    for i in 0..1000u64 {
        c.insert(a, i * 4096, &[(i % 250) as u8; 4096], Lsn(i + 1), None);
    }
    assert_eq!(c.debug_extents(a), 1);
    let st = c.stats();
    assert_eq!((st.slices, st.dirty_bytes), (1, 4_096_000));
    assert!(st.memory_bytes <= 2 * 4_096_000, "{st:?}");
    let (got, missing) = read(&c, a, 0..4_096_000);
    assert!(missing.is_empty());
    assert!(
        got.chunks(4096)
            .enumerate()
            .all(|(i, p)| p[0] == (i % 250) as u8 && p[4095] == p[0])
    );

    // 1000 writes of 32 KiB: 31.25 MiB over 8 blocks, one extent each.
    let b = FileId(2);
    for i in 0..1000u64 {
        c.insert(
            b,
            i << 15,
            &[(i % 250) as u8; 32 << 10],
            Lsn(2000 + i),
            None,
        );
    }
    assert_eq!(c.debug_extents(b), 8);

    // Writes of 24 KiB straddle block boundaries: still one per block.
    let d = FileId(3);
    for i in 0..1000u64 {
        c.insert(
            d,
            i * (24 << 10),
            &[(i % 250) as u8; 24 << 10],
            Lsn(4000 + i),
            None,
        );
    }
    assert_eq!(c.debug_extents(d), 6);
    let (got, missing) = read(&c, d, 0..1000 * (24 << 10));
    assert!(missing.is_empty());
    assert!(
        got.chunks(24 << 10)
            .enumerate()
            .all(|(i, p)| p.iter().all(|&x| x == (i % 250) as u8))
    );

    // Not at offset 0, in another chunk: one extent.
    let e = FileId(4);
    for i in 0..300u64 {
        c.insert(
            e,
            CHUNK_SIZE + 12_345 + i * 1000,
            &[9u8; 1000],
            Lsn(6000 + i),
            None,
        );
    }
    assert_eq!(c.debug_extents(e), 1);
    assert_eq!(c.stats().slices, 1 + 8 + 6 + 1);
}

#[test]
fn truncate_then_write_is_unaffected() {
    let c = cache_with(64 * MIB, 64 * MIB, Duration::from_secs(5));
    let k = 1024u64;
    put(&c, F, 0, &vec![b'a'; 100 * k as usize], 1);
    c.truncate(F, 50 * k);
    let (got, missing) = read(&c, F, 0..100 * k);
    assert_eq!(missing, vec![50 * k..100 * k]);
    assert!(got[..50 * k as usize].iter().all(|&b| b == b'a'));
    assert_eq!(c.stats().dirty_bytes, 50 * k);

    // A later write past the cut, and one right at the cut.
    put(&c, F, 80 * k, &vec![b'b'; 10 * k as usize], 2);
    put(&c, F, 50 * k, &vec![b'c'; 10 * k as usize], 3);
    let (got, missing) = read(&c, F, 0..100 * k);
    assert_eq!(missing, vec![60 * k..80 * k, 90 * k..100 * k]);
    assert!(got[..50 * k as usize].iter().all(|&b| b == b'a'));
    assert!(
        got[50 * k as usize..60 * k as usize]
            .iter()
            .all(|&b| b == b'c')
    );
    assert!(
        got[80 * k as usize..90 * k as usize]
            .iter()
            .all(|&b| b == b'b')
    );
    assert_eq!(c.stats().dirty_bytes, 70 * k);

    // Extending with a truncate drops nothing.
    c.truncate(F, 200 * k);
    assert_eq!(c.stats().dirty_bytes, 70 * k);

    // To zero, then a write.
    c.truncate(F, 0);
    assert_eq!(c.stats().dirty_bytes, 0);
    assert_eq!((c.stats().files, c.stats().chunks), (0, 0));
    put(&c, F, 10, &[b'd'; 10], 4);
    let (got, missing) = read(&c, F, 0..100);
    assert_eq!(missing, vec![0..10, 20..100]);
    assert_eq!(&got[10..20], &[b'd'; 10]);

    // Across a chunk boundary.
    let g = FileId(2);
    put(&c, g, CHUNK_SIZE - 10, &[b'e'; 20], 5);
    assert_eq!(c.stats().chunks, 3);
    c.truncate(g, CHUNK_SIZE - 5);
    let (got, missing) = read(&c, g, CHUNK_SIZE - 10..CHUNK_SIZE + 10);
    assert_eq!(missing, vec![CHUNK_SIZE - 5..CHUNK_SIZE + 10]);
    assert_eq!(&got[..5], &[b'e'; 5]);
    assert_eq!(c.stats().chunks, 2);

    // A truncate while the block is in flight (the chunk keeps bytes):
    // the later write stays pending after the upload.
    let h = FileId(3);
    put(&c, h, 0, &[b'f'; 1000], 6);
    let snap = c.dirty_blocks(h).remove(0);
    c.truncate(h, 500);
    put(&c, h, 700, &[b'g'; 100], 7);
    assert!(c.dirty_blocks(h).is_empty(), "block in flight");
    let before = c.stats().dirty_bytes;
    c.mark_flushed(&snap);
    assert_eq!(c.stats().dirty_bytes, before - 500);
    let next = c.dirty_blocks(h);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].ranges_copied(), vec![(700, vec![b'g'; 100])]);
}

#[test]
fn remove_then_recreate() {
    let c = cache_with(64 * MIB, 64 * MIB, Duration::from_secs(5));
    put(&c, F, 0, &[b'a'; 1000], 1);
    put(&c, F, CHUNK_SIZE, &[b'a'; 100], 2);
    let old = c.dirty_blocks(F);
    assert_eq!(old.len(), 2);
    c.remove(F);
    let st = c.stats();
    assert_eq!(
        (
            st.files,
            st.chunks,
            st.slices,
            st.dirty_bytes,
            st.clean_bytes,
            st.memory_bytes
        ),
        (0, 0, 0, 0, 0, 0),
        "{st:?}"
    );
    assert_eq!(read(&c, F, 0..1000).1, vec![0..1000]);
    assert!(c.dirty_files().is_empty());
    // Removing again, or an unknown file, does nothing.
    c.remove(F);
    c.remove(FileId(42));

    // Re-created: only the new bytes.
    put(&c, F, 500, &[b'b'; 100], 3);
    let (got, missing) = read(&c, F, 0..1000);
    assert_eq!(missing, vec![0..500, 600..1000]);
    assert_eq!(&got[500..600], &[b'b'; 100]);
    assert_eq!(read(&c, F, CHUNK_SIZE..CHUNK_SIZE + 100).1.len(), 1);
    // The old incarnation's uploads finishing late do not make the new
    // bytes clean.
    for s in &old {
        c.mark_flushed(s);
    }
    assert_eq!(c.stats().dirty_bytes, 100);
    assert_eq!(c.dirty_files(), vec![F]);
    let snaps = flush_all(&c, F);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].ranges_copied(), vec![(500, vec![b'b'; 100])]);
    assert_eq!(c.stats().dirty_bytes, 0);
}

#[test]
fn stats_counts_are_exact_in_a_small_scenario() {
    let c = cache_with(64 * MIB, 64 * MIB, Duration::from_secs(5));
    assert_eq!(c.stats(), Default::default());
    let (a, b) = (FileId(1), FileId(2));
    put(&c, a, 0, &[1; 1000], 1);
    put(&c, a, CHUNK_SIZE, &[1; 500], 2);
    put(&c, b, 0, &[2; 200], 3);
    let st = c.stats();
    assert_eq!(
        (
            st.files,
            st.chunks,
            st.slices,
            st.dirty_bytes,
            st.clean_bytes
        ),
        (2, 3, 3, 1700, 0),
        "{st:?}"
    );
    assert_eq!(st.memory_bytes, 1700);

    // An overwrite in the middle splits one extent in three.
    put(&c, a, 100, &[3; 100], 4);
    let st = c.stats();
    assert_eq!((st.slices, st.dirty_bytes), (5, 1700), "{st:?}");
    assert_eq!(st.memory_bytes, 1800);

    flush_all(&c, b);
    let st = c.stats();
    assert_eq!((st.dirty_bytes, st.clean_bytes), (1500, 200), "{st:?}");
    let mut dirty = c.dirty_files();
    dirty.sort();
    assert_eq!(dirty, vec![a]);

    c.truncate(a, 500);
    let st = c.stats();
    assert_eq!(
        (
            st.files,
            st.chunks,
            st.slices,
            st.dirty_bytes,
            st.clean_bytes
        ),
        (2, 2, 4, 500, 200),
        "{st:?}"
    );
    // The first buffer is still shared by the kept part; chunk 1's is gone.
    assert_eq!(st.memory_bytes, 1300);

    c.remove(b);
    let st = c.stats();
    assert_eq!(
        (
            st.files,
            st.chunks,
            st.slices,
            st.dirty_bytes,
            st.clean_bytes,
            st.memory_bytes
        ),
        (1, 1, 3, 500, 0, 1100),
        "{st:?}"
    );
    assert_eq!((st.evicted_bytes, st.waits, st.full_errors), (0, 0, 0));
}

#[test]
fn invalid_configurations_are_refused() {
    for (cap, dirty) in [(MIB - 1, MIB), (MIB, MIB - 1)] {
        let err = SliceCache::new(CacheConfig {
            capacity_bytes: cap,
            dirty_max_bytes: dirty,
            ..CacheConfig::default()
        })
        .err()
        .expect("below the minimum");
        assert!(matches!(err, CacheError::InvalidConfig(_)), "{err}");
    }
}

/// Eight writers on their own files, each checking what it reads back,
/// while an uploader snapshots and marks flushed (and eviction runs) and
/// two readers read everything.
#[test]
fn parallel_writers_with_readers_and_uploads() {
    const WRITERS: u64 = 8;
    const REGION: u64 = 512 << 10;
    let base = BLOCK_SIZE - REGION / 2;
    let c = Arc::new(cache_with(MIB, 64 * MIB, Duration::from_secs(30)));
    let lsn = Arc::new(AtomicU64::new(1));
    // The object store: bytes of uploaded snapshots, per file.
    let store: Arc<Mutex<HashMap<u64, Vec<u8>>>> = Arc::new(Mutex::new(
        (0..WRITERS)
            .map(|f| (f, vec![0u8; REGION as usize]))
            .collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));

    let upload = move |c: &SliceCache, store: &Mutex<HashMap<u64, Vec<u8>>>, f: u64| {
        for s in c.dirty_blocks(FileId(f)) {
            {
                let mut st = store.lock().unwrap();
                let v = st.get_mut(&f).unwrap();
                for (off, bytes) in &s.ranges {
                    let at = (u64::from(s.chunk.0) * CHUNK_SIZE + u64::from(*off) - base) as usize;
                    v[at..at + bytes.len()].copy_from_slice(bytes);
                }
            }
            c.mark_flushed(&s);
        }
    };

    let uploader = {
        let (c, store, stop) = (c.clone(), store.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for f in 0..WRITERS {
                    upload(&c, &store, f);
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let readers: Vec<_> = (0..2u64)
        .map(|seed| {
            let (c, stop) = (c.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let f = rng.random_range(0..WRITERS);
                    let off = base + rng.random_range(0..REGION);
                    let len = rng.random_range(1..64u64 << 10);
                    let mut buf = vec![0u8; len as usize];
                    let mut cursor = off;
                    for m in c.read(FileId(f), off, &mut buf).expect("readable") {
                        assert!(m.start >= cursor && m.start < m.end && m.end <= off + len);
                        cursor = m.end;
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|f| {
            let (c, store, lsn) = (c.clone(), store.clone(), lsn.clone());
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(100 + f);
                let mut model = vec![0u8; REGION as usize];
                for i in 0..400u64 {
                    let len = rng.random_range(1..16usize << 10);
                    let at = rng.random_range(0..REGION as usize - len);
                    let data = vec![((f * 31 + i) % 255) as u8 + 1; len];
                    let mut r = c.reserve(len as u64).expect("reserve");
                    let l = Lsn(lsn.fetch_add(1, Ordering::Relaxed));
                    c.insert(FileId(f), base + at as u64, &data, l, Some(&mut r));
                    drop(r);
                    model[at..at + len].copy_from_slice(&data);
                    // Read back a range around the write.
                    let from = at.saturating_sub(1000);
                    let to = (at + len + 1000).min(REGION as usize);
                    let mut buf = vec![0u8; to - from];
                    let missing = c
                        .read(FileId(f), base + from as u64, &mut buf)
                        .expect("readable");
                    let st = store.lock().unwrap();
                    for m in missing {
                        let (s, e) = ((m.start - base) as usize, (m.end - base) as usize);
                        buf[s - from..e - from].copy_from_slice(&st[&f][s..e]);
                    }
                    drop(st);
                    assert!(
                        buf == model[from..to],
                        "file {f} write {i}: read back differs"
                    );
                }
                model
            })
        })
        .collect();
    let models: Vec<Vec<u8>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    uploader.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    for f in 0..WRITERS {
        upload(&c, &store, f);
    }
    let st = c.stats();
    assert_eq!(st.dirty_bytes, 0, "{st:?}");
    assert!(st.evicted_bytes > 0, "{st:?}");
    assert!(st.memory_bytes <= MIB, "{st:?}");
    let store = store.lock().unwrap();
    for f in 0..WRITERS {
        let (mut buf, missing) = read(&c, FileId(f), base..base + REGION);
        for m in missing {
            let (s, e) = ((m.start - base) as usize, (m.end - base) as usize);
            buf[s..e].copy_from_slice(&store[&f][s..e]);
        }
        assert!(buf == models[f as usize], "file {f} differs at the end");
    }
}

/// Regression (growth issue): 100-byte files cost about 3 KiB of
/// bookkeeping each that the cache did not count, so eviction never started
/// for them and memory grew with every file ever written; and a file whose
/// bytes were all evicted kept its entry forever.
#[test]
fn small_files_bookkeeping_is_counted_and_evicted_files_leave_no_entry() {
    let c = cache_with(MIB, 64 * MIB, Duration::from_secs(5));
    let n = 20_000u64;
    for i in 0..n {
        put(&c, FileId(100 + i), 0, &[i as u8; 100], i + 1);
        flush_all(&c, FileId(100 + i));
        let st = c.stats();
        assert!(
            st.memory_bytes + st.bookkeeping_bytes <= MIB,
            "after {i} files: {st:?}"
        );
    }
    let st = c.stats();
    assert!(st.evicted_bytes > 0, "{st:?}");
    // Each file's bookkeeping (about 1 KiB) counts, not only its 100
    // bytes (which alone would let about 9,400 files stay).
    assert!(st.files < n / 10, "{st:?}");
    assert_eq!(c.debug_entries(), st.files, "evicted files keep no entry");
    // The newest files are cached, the oldest are missing (never zeros).
    let last = FileId(100 + n - 1);
    let (got, missing) = read(&c, last, 0..100);
    assert!(missing.is_empty());
    assert_eq!(got, vec![(n - 1) as u8; 100]);
    assert_eq!(read(&c, FileId(100), 0..100).1, vec![0..100]);
}

/// Regression (growth issue): eviction walked and sorted every cached
/// file on each call while over capacity, and with uploads behind (the
/// cache full of pending bytes it may not evict) every write paid that
/// walk: 90% of the daemon's CPU at 250,000 small files in a 64 MiB
/// cache. Eviction now pops a queue of chunks that hold clean bytes:
/// pending chunks are not in it, recently read chunks get a second
/// chance, and the queue does not grow with files written and removed.
#[test]
fn eviction_queue_follows_clean_chunks_not_files_written() {
    let c = cache_with(MIB, 64 * MIB, Duration::from_secs(5));
    // Pending small files fill the cache past its capacity: nothing can
    // be evicted, and nothing is queued.
    let pending: Vec<FileId> = (0..3_000u64).map(|i| FileId(10_000 + i)).collect();
    for (i, &f) in pending.iter().enumerate() {
        put(&c, f, 0, &[7u8; 100], i as u64 + 1);
    }
    let st = c.stats();
    assert!(st.memory_bytes + st.bookkeeping_bytes > MIB, "{st:?}");
    assert_eq!(c.debug_lru_len(), 0);
    c.evict_if_needed();
    assert_eq!(c.stats().evicted_bytes, 0);

    // One file uploaded: it is queued and, the cache being over, evicted
    // at once; the pending files all stay.
    let lsn = 1_000_000;
    put(&c, FileId(1), 0, &[1u8; 100], lsn);
    flush_all(&c, FileId(1));
    assert_eq!(c.stats().evicted_bytes, 100);
    assert_eq!(read(&c, FileId(1), 0..100).1, vec![0..100]);
    for &f in &pending {
        assert!(read(&c, f, 0..100).1.is_empty(), "pending {f:?} evicted");
    }

    // Uploaded, read back, then more uploads: the file read since it was
    // queued outlives one that was not.
    for &f in &pending {
        flush_all(&c, f);
    }
    let c = cache_with(4 * MIB, 64 * MIB, Duration::from_secs(5));
    let (old, used) = (FileId(2), FileId(3));
    put(&c, old, 0, &[2u8; 1000], 1);
    put(&c, used, 0, &[3u8; 1000], 2);
    flush_all(&c, old);
    flush_all(&c, used);
    let _ = read(&c, used, 0..10);
    // `cached_ranges` looks without using (a read would count as use).
    let mut i = 0u64;
    while !c.cached_ranges(old, 0, 1000).is_empty() {
        let f = FileId(100 + i);
        put(&c, f, 0, &[9u8; 1000], 10 + i);
        flush_all(&c, f);
        i += 1;
        assert!(i < 100_000, "never evicted");
    }
    assert_eq!(
        c.cached_ranges(used, 0, 1000),
        vec![0..1000],
        "the used file went first"
    );

    // Files written, uploaded and removed without eviction (a big cache):
    // their dead entries are compacted away, the queue stays near the
    // cached chunks' count.
    let c = cache_with(1 << 30, 64 * MIB, Duration::from_secs(5));
    for i in 0..50_000u64 {
        let f = FileId(1_000_000 + i);
        put(&c, f, 0, &[5u8; 100], i + 1);
        flush_all(&c, f);
        c.remove(f);
        c.evict_if_needed();
    }
    assert_eq!(c.stats().files, 0);
    assert!(
        c.debug_lru_len() <= 4096 + 1,
        "{} entries",
        c.debug_lru_len()
    );
}

/// A snapshot's buffers follow the bytes it holds: each range is sized
/// for its own run of adjacent pending bytes, so a block written at every
/// other page (512 ranges) takes about its 2 MiB, not a buffer per range
/// sized for the rest of the block (700 MiB once). Adjacent writes still
/// land in one range with room for all of them.
#[test]
fn snapshot_buffers_are_sized_by_their_runs() {
    let c = cache_with(1 << 30, 1 << 30, Duration::from_secs(5));
    for i in 0..512u64 {
        put(&c, F, i * 8192, &[i as u8; 4096], i + 1);
    }
    let snaps = c.dirty_blocks(F);
    assert_eq!(snaps.len(), 1);
    let s = &snaps[0];
    assert_eq!(s.ranges.len(), 512);
    let held: usize = s.ranges.iter().map(|(_, b)| b.capacity()).sum();
    assert_eq!(held, 512 * 4096, "each range exactly its 4 KiB");
    assert!(s.ranges.iter().all(|(o, b)| b[0] == (o / 8192) as u8));
    c.abort_snapshot(s);

    let g = FileId(2);
    for i in 0..4u64 {
        put(&c, g, i * MIB, &vec![7u8; MIB as usize], i + 1);
    }
    let snaps = c.dirty_blocks(g);
    assert_eq!(snaps[0].ranges.len(), 1);
    let (_, b) = &snaps[0].ranges[0];
    assert_eq!(
        (b.len(), b.capacity()),
        (4 * MIB as usize, 4 * MIB as usize)
    );
}

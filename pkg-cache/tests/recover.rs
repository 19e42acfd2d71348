//! [`recover`] record by record: records are appended directly to a
//! persister on the simulated storage, the process "crashes", and the
//! cache rebuilt from the reopened log must hold exactly the expected
//! bytes, with the expected report.

use std::ops::Range;

use slicefs_cache::{
    BLOCK_SIZE, CHUNK_SIZE, CacheConfig, FileId, Lsn, RecoveryReport, SliceCache, SliceId, recover,
};
use slicefs_wal::sim::SimStorage;
use slicefs_wal::{
    ChunkIndex, Durability, FlushedMarker, MmapPersister, NullPersister, Persister, SliceWrite,
    WalConfig,
};

fn wal_config() -> WalConfig {
    WalConfig {
        durability: Durability::None,
        auto_reclaim: false,
        segment_bytes: 64 << 10,
        ..WalConfig::default()
    }
}

fn cache() -> SliceCache {
    SliceCache::new(CacheConfig {
        capacity_bytes: 64 << 20,
        dirty_max_bytes: 64 << 20,
        ..CacheConfig::default()
    })
    .expect("cache")
}

/// Appends a slice at file offset `offset` (inside one chunk).
fn slice(p: &dyn Persister, file: u64, offset: u64, data: &[u8]) -> Lsn {
    let chunk = offset / CHUNK_SIZE;
    p.append_slice(&SliceWrite {
        file: FileId(file),
        chunk: ChunkIndex(chunk as u32),
        slice: SliceId(offset + 1),
        offset: (offset % CHUNK_SIZE) as u32,
        data,
    })
    .expect("append slice")
}

fn flushed(p: &dyn Persister, file: u64, offset: u64, len: u32, upto: Lsn) -> Lsn {
    p.append_flushed(&FlushedMarker {
        file: FileId(file),
        chunk: ChunkIndex((offset / CHUNK_SIZE) as u32),
        offset: (offset % CHUNK_SIZE) as u32,
        len,
        upto,
    })
    .expect("append flushed")
}

/// Runs `log` against a fresh persister, crashes the process, reopens
/// the log and recovers it into a fresh cache.
fn crash_and_recover(log: impl FnOnce(&dyn Persister)) -> (SliceCache, RecoveryReport) {
    let storage = SimStorage::new();
    {
        let p = MmapPersister::open_on(storage.clone(), wal_config()).expect("open");
        log(&p);
    }
    let p = MmapPersister::open_on(storage.process_crash(), wal_config()).expect("reopen");
    let c = cache();
    let report = recover(&p, &c).expect("recover");
    (c, report)
}

/// Checks `range` of `file`: `want` lists `(range, Some(byte))` for
/// cached bytes and `(range, None)` for missing ones, in order, covering
/// `range`.
fn assert_content(c: &SliceCache, file: u64, range: Range<u64>, want: &[(Range<u64>, Option<u8>)]) {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    let missing = c
        .read(FileId(file), range.start, &mut buf)
        .expect("readable");
    let want_missing: Vec<Range<u64>> = want
        .iter()
        .filter(|(_, b)| b.is_none())
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(missing, want_missing, "file {file}: missing ranges");
    let mut cursor = range.start;
    for (r, b) in want {
        assert_eq!(r.start, cursor, "want must cover the range in order");
        cursor = r.end;
        if let Some(b) = b {
            let part = &buf[(r.start - range.start) as usize..(r.end - range.start) as usize];
            if let Some(i) = part.iter().position(|x| x != b) {
                panic!(
                    "file {file}: byte {} is {}, want {b}",
                    r.start + i as u64,
                    part[i]
                );
            }
        }
    }
    assert_eq!(cursor, range.end, "want must cover the range");
}

/// Report fields except the duration.
fn counts(r: &RecoveryReport) -> (u64, u64, u64, u64, u64, Vec<FileId>) {
    (
        r.records,
        r.slice_bytes,
        r.pending_bytes,
        r.flushed_bytes_dropped,
        r.last_lsn,
        r.files_with_pending.clone(),
    )
}

#[test]
fn the_null_persister_recovers_nothing() {
    let p = NullPersister::new();
    slice(&p, 1, 0, &[1; 100]);
    p.append_remove(FileId(2)).unwrap();
    let c = cache();
    let report = recover(&p, &c).expect("recover");
    assert_eq!(counts(&report), (0, 0, 0, 0, 0, vec![]));
    assert_eq!(c.stats(), Default::default());
}

#[test]
fn an_empty_log_recovers_nothing() {
    let (c, report) = crash_and_recover(|_| {});
    assert_eq!(counts(&report), (0, 0, 0, 0, 0, vec![]));
    assert_eq!(c.stats(), Default::default());
}

#[test]
fn slices_are_replayed_with_their_lsns_and_the_newest_wins() {
    let (c, report) = crash_and_recover(|p| {
        assert_eq!(slice(p, 1, 1000, &[b'a'; 1000]), Lsn(1));
        slice(p, 1, 500, &[b'b'; 1000]);
        slice(p, 2, CHUNK_SIZE + 10, &[b'c'; 300]);
        // A write across a chunk boundary is two records.
        slice(p, 3, CHUNK_SIZE - 100, &[b'd'; 100]);
        slice(p, 3, CHUNK_SIZE, &[b'd'; 50]);
    });
    assert_eq!(
        counts(&report),
        (
            5,
            2450,
            1500 + 300 + 150,
            0,
            5,
            vec![FileId(1), FileId(2), FileId(3)]
        )
    );
    assert_content(
        &c,
        1,
        0..2500,
        &[
            (0..500, None),
            (500..1500, Some(b'b')),
            (1500..2000, Some(b'a')),
            (2000..2500, None),
        ],
    );
    assert_content(
        &c,
        2,
        CHUNK_SIZE..CHUNK_SIZE + 400,
        &[
            (CHUNK_SIZE..CHUNK_SIZE + 10, None),
            (CHUNK_SIZE + 10..CHUNK_SIZE + 310, Some(b'c')),
            (CHUNK_SIZE + 310..CHUNK_SIZE + 400, None),
        ],
    );
    assert_content(
        &c,
        3,
        CHUNK_SIZE - 100..CHUNK_SIZE + 50,
        &[(CHUNK_SIZE - 100..CHUNK_SIZE + 50, Some(b'd'))],
    );
    let st = c.stats();
    assert_eq!(
        (st.files, st.chunks, st.dirty_bytes, st.clean_bytes),
        (3, 4, 1950, 0)
    );
    // The bytes keep their log LSNs: the snapshot covers LSN 2.
    let snaps = c.dirty_blocks(FileId(1));
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].lsn, Lsn(2));
    // Slice ids continue past the recovered ones.
    assert!(c.next_slice_id().0 > CHUNK_SIZE + 1);
}

#[test]
fn a_remove_drops_only_earlier_data_of_its_file() {
    let (c, report) = crash_and_recover(|p| {
        slice(p, 1, 0, &[b'a'; 1000]);
        slice(p, 1, CHUNK_SIZE, &[b'a'; 1000]);
        slice(p, 2, 0, &[b'x'; 100]);
        p.append_remove(FileId(1)).unwrap();
        // Re-created: its new data is kept.
        slice(p, 1, 500, &[b'b'; 100]);
        // Removing a file with nothing cached is harmless.
        p.append_remove(FileId(9)).unwrap();
    });
    assert_eq!(
        counts(&report),
        (6, 2200, 200, 0, 6, vec![FileId(1), FileId(2)])
    );
    assert_content(
        &c,
        1,
        0..1000,
        &[(0..500, None), (500..600, Some(b'b')), (600..1000, None)],
    );
    assert_content(
        &c,
        1,
        CHUNK_SIZE..CHUNK_SIZE + 1000,
        &[(CHUNK_SIZE..CHUNK_SIZE + 1000, None)],
    );
    assert_content(&c, 2, 0..100, &[(0..100, Some(b'x'))]);
    let st = c.stats();
    assert_eq!((st.files, st.chunks, st.dirty_bytes), (2, 2, 200));
}

#[test]
fn a_truncate_cuts_only_earlier_slices() {
    let (c, report) = crash_and_recover(|p| {
        slice(p, 1, 0, &[b'a'; 1000]);
        slice(p, 1, CHUNK_SIZE, &[b'a'; 1000]);
        slice(p, 2, 0, &[b'x'; 1000]);
        p.append_truncate(FileId(1), 300).unwrap();
        slice(p, 1, 600, &[b'b'; 100]);
        // Extending again brings nothing back.
        p.append_truncate(FileId(1), 5000).unwrap();
        // A truncate inside a later chunk keeps the earlier chunk whole.
        slice(p, 3, CHUNK_SIZE - 10, &[b'c'; 10]);
        slice(p, 3, CHUNK_SIZE, &[b'c'; 10]);
        p.append_truncate(FileId(3), CHUNK_SIZE + 4).unwrap();
    });
    assert_eq!(
        counts(&report),
        (
            9,
            3120,
            300 + 100 + 1000 + 14,
            0,
            9,
            vec![FileId(1), FileId(2), FileId(3)]
        )
    );
    assert_content(
        &c,
        1,
        0..1000,
        &[
            (0..300, Some(b'a')),
            (300..600, None),
            (600..700, Some(b'b')),
            (700..1000, None),
        ],
    );
    assert_content(
        &c,
        1,
        CHUNK_SIZE..CHUNK_SIZE + 10,
        &[(CHUNK_SIZE..CHUNK_SIZE + 10, None)],
    );
    assert_content(&c, 2, 0..1000, &[(0..1000, Some(b'x'))]);
    assert_content(
        &c,
        3,
        CHUNK_SIZE - 10..CHUNK_SIZE + 10,
        &[
            (CHUNK_SIZE - 10..CHUNK_SIZE + 4, Some(b'c')),
            (CHUNK_SIZE + 4..CHUNK_SIZE + 10, None),
        ],
    );
    assert_eq!(c.stats().chunks, 4);
}

#[test]
fn a_flushed_marker_drops_covered_bytes_up_to_its_lsn_only() {
    let (c, report) = crash_and_recover(|p| {
        let a = slice(p, 1, 0, &[b'a'; 1000]);
        assert_eq!(a, Lsn(1));
        slice(p, 1, 2000, &[b'b'; 1000]);
        // Newer than the marker's `upto`: stays.
        slice(p, 1, 500, &[b'c'; 100]);
        // Another file's bytes in the same range: untouched.
        slice(p, 2, 0, &[b'x'; 1000]);
        flushed(p, 1, 0, BLOCK_SIZE as u32, Lsn(2));
        // Written after the marker: stays.
        slice(p, 1, 0, &[b'd'; 50]);
        // A marker for part of a range drops only that part.
        slice(p, 3, 0, &[b'e'; 1000]);
        flushed(p, 3, 200, 300, Lsn(7));
        // A marker for a file with nothing cached is harmless.
        flushed(p, 9, 0, 100, Lsn(7));
    });
    assert_eq!(
        counts(&report),
        (
            9,
            4150,
            100 + 50 + 1000 + 700,
            1900 + 300,
            9,
            vec![FileId(1), FileId(2), FileId(3)]
        )
    );
    assert_content(
        &c,
        1,
        0..3000,
        &[
            (0..50, Some(b'd')),
            (50..500, None),
            (500..600, Some(b'c')),
            (600..3000, None),
        ],
    );
    assert_content(&c, 2, 0..1000, &[(0..1000, Some(b'x'))]);
    assert_content(
        &c,
        3,
        0..1000,
        &[
            (0..200, Some(b'e')),
            (200..500, None),
            (500..1000, Some(b'e')),
        ],
    );
    let st = c.stats();
    assert_eq!((st.dirty_bytes, st.clean_bytes), (1850, 0));
}

#[test]
fn a_file_flushed_whole_is_not_pending_after_recovery() {
    let (c, report) = crash_and_recover(|p| {
        slice(p, 1, 0, &[b'a'; 1000]);
        slice(p, 1, BLOCK_SIZE, &[b'a'; 1000]);
        flushed(p, 1, 0, BLOCK_SIZE as u32, Lsn(2));
        flushed(p, 1, BLOCK_SIZE, BLOCK_SIZE as u32, Lsn(2));
    });
    assert_eq!(counts(&report), (4, 2000, 0, 2000, 4, vec![]));
    assert_eq!(c.stats(), Default::default());
    assert!(c.dirty_blocks(FileId(1)).is_empty());
}

/// Recovery replays a write and a sequential write after it as one
/// extended extent with the later LSN; a flushed marker for the first
/// write alone (its block was uploaded before the second write arrived)
/// then drops nothing, so the uploaded bytes are pending again after the
/// restart (uploaded twice, and counted as pending).
#[test]
fn a_flushed_marker_drops_bytes_of_a_slice_that_a_later_write_extended() {
    let (c, report) = crash_and_recover(|p| {
        let a = slice(p, 1, 0, &[b'a'; 1000]);
        slice(p, 1, 1000, &[b'b'; 1000]);
        flushed(p, 1, 0, 1000, a);
    });
    assert_eq!(counts(&report), (3, 2000, 1000, 1000, 3, vec![FileId(1)]));
    assert_content(&c, 1, 0..2000, &[(0..1000, None), (1000..2000, Some(b'b'))]);
}

#[test]
fn many_records_across_segments_are_replayed_in_order() {
    let mut want = vec![0u8; 256 << 10];
    let (c, report) = crash_and_recover(|p| {
        for i in 0..300u64 {
            let off = (i * 7919) % ((256 << 10) - 3000);
            let data = vec![(i % 250) as u8 + 1; 3000];
            slice(p, 1, off, &data);
            want[off as usize..off as usize + 3000].copy_from_slice(&data);
        }
    });
    assert_eq!(report.records, 300);
    assert_eq!(report.slice_bytes, 900_000);
    let mut got = vec![0u8; want.len()];
    let missing = c.read(FileId(1), 0, &mut got).expect("readable");
    let holes: u64 = missing.iter().map(|m| m.end - m.start).sum();
    assert_eq!(report.pending_bytes + holes, want.len() as u64);
    assert!(got == want, "replayed content differs");
}

#[test]
fn progress_is_reported_in_records_up_to_the_total() {
    let storage = SimStorage::new();
    {
        let p = MmapPersister::open_on(storage.clone(), wal_config()).expect("open");
        for i in 0..40_000u64 {
            slice(&p, 1 + i % 3, (i % 1000) * 16, &[i as u8; 16]);
        }
        p.append_truncate(FileId(2), 100).expect("truncate");
    }
    let p = MmapPersister::open_on(storage.process_crash(), wal_config()).expect("reopen");
    let c = cache();
    let mut calls = Vec::new();
    let report =
        slicefs_cache::recover_with_progress(&p, &c, &mut |done, total| calls.push((done, total)))
            .expect("recover");
    assert_eq!(report.records, 40_001);
    assert_eq!(calls.first(), Some(&(16_384, 40_001)));
    assert_eq!(calls.last(), Some(&(40_001, 40_001)));
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
    // The truncate is reported for the metadata store to apply.
    assert_eq!(report.truncates.len(), 1);
    assert_eq!(
        (report.truncates[0].0, report.truncates[0].2),
        (FileId(2), 100)
    );
}

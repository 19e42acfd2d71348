//! A media error under the log (a page of a segment file the disk can no
//! longer read) is an error for the file whose bytes were there: its
//! reads fail and its pending bytes are never uploaded as zeros, while
//! every other file reads and uploads as before, and the process lives.
//!
//! The bad sectors are made by cutting the segment file short under its
//! mapping: a read of a page past the new end faults with `SIGBUS`
//! exactly as a read error does.

use slicefs_cache::{CacheConfig, FileId, LoggedBytes, SliceCache};
use slicefs_wal::{
    ChunkIndex, Durability, MmapPersister, Persister, SliceId, SliceWrite, WalConfig,
};

fn write(wal: &MmapPersister, cache: &SliceCache, file: u64, data: &[u8]) -> u64 {
    let w = SliceWrite {
        file: FileId(file),
        chunk: ChunkIndex(0),
        slice: SliceId(file),
        offset: 0,
        data,
    };
    let (lsn, lent): (_, Option<LoggedBytes>) = wal.append_slice_logged(&w).expect("append");
    let lent = lent.expect("the mmap persister lends its bytes");
    cache.insert_logged(FileId(file), 0, &lent, lsn, None);
    wal.next_lsn().0
}

#[test]
fn a_bad_log_page_fails_reads_and_uploads_of_its_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let wal = MmapPersister::open(
        dir.path(),
        WalConfig {
            durability: Durability::None,
            segment_bytes: 16 << 20,
            auto_reclaim: false,
            ..WalConfig::default()
        },
    )
    .expect("log");
    let cache = SliceCache::new(CacheConfig {
        capacity_bytes: 64 << 20,
        dirty_max_bytes: 64 << 20,
        dirty_wait: std::time::Duration::from_secs(1),
    })
    .expect("cache");
    let good: Vec<u8> = (0..256 << 10).map(|i| (i % 251) as u8 + 1).collect();
    let bad: Vec<u8> = (0..512 << 10).map(|i| (i % 241) as u8 + 1).collect();
    let small = vec![9u8; 4096];
    write(&wal, &cache, 1, &good);
    write(&wal, &cache, 3, &small);
    wal.sync().expect("sync");
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name() != Some(slicefs_wal::LOCK_FILE.as_ref()))
        .expect("a segment file");
    // Everything written so far stays readable; file 2's bytes come
    // after, from the next page on.
    let keep = 512 << 10;
    assert_eq!(wal.next_lsn().0, 3, "files 1 and 3 end well before {keep}");
    write(&wal, &cache, 2, &bad);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(keep)
        .unwrap();

    let mut out = vec![0u8; bad.len()];
    let err = cache.read(FileId(2), 0, &mut out);
    assert!(err.is_err(), "file 2's bytes are gone: {err:?}");
    assert!(
        cache.dirty_blocks(FileId(2)).is_empty(),
        "no snapshot of unreadable pending bytes is uploaded"
    );
    // And again: the poison stays.
    assert!(cache.read(FileId(2), 400 << 10, &mut out[..100]).is_err());
    // Its bytes before the cut still read.
    assert!(cache.read(FileId(2), 0, &mut out[..100]).is_ok());
    assert_eq!(out[..100], bad[..100]);

    let mut out = vec![0u8; good.len()];
    assert!(cache.read(FileId(1), 0, &mut out).unwrap().is_empty());
    assert_eq!(out, good);
    let snaps = cache.dirty_blocks(FileId(1));
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].ranges_copied(), vec![(0, good.clone())]);
    let mut out = vec![0u8; small.len()];
    assert!(cache.read(FileId(3), 0, &mut out).unwrap().is_empty());
    assert_eq!(out, small);
}

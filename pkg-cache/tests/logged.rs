//! Writes whose bytes the log lends (`SliceCache::insert_logged`): large
//! ones are kept in place and dropped once uploaded, small ones are
//! copied and stay cached as clean; reads see the newest bytes either way.

use slicefs_cache::{CacheConfig, FileId, LEND_MIN, LoggedBytes, Lsn, SliceCache};
use slicefs_wal::sim::SimStorage;
use slicefs_wal::{
    ChunkIndex, Durability, MmapPersister, Persister, SliceId, SliceWrite, WalConfig,
};

fn log_on(st: SimStorage) -> MmapPersister<SimStorage> {
    let cfg = WalConfig {
        durability: Durability::None,
        segment_bytes: 4 << 20,
        auto_reclaim: false,
        ..WalConfig::default()
    };
    MmapPersister::open_on(st, cfg).expect("log")
}

fn log() -> MmapPersister<SimStorage> {
    log_on(SimStorage::new())
}

/// A slice write of `data` at `offset` of file 1, chunk 0.
fn slice(offset: u32, data: &[u8]) -> SliceWrite<'_> {
    SliceWrite {
        file: FileId(1),
        chunk: ChunkIndex(0),
        slice: SliceId(u64::from(offset)),
        offset,
        data,
    }
}

fn cache() -> SliceCache {
    SliceCache::new(CacheConfig {
        capacity_bytes: 64 << 20,
        dirty_max_bytes: 64 << 20,
        dirty_wait: std::time::Duration::from_secs(1),
    })
    .expect("cache")
}

/// Logs `data` at `offset` of file 1 (chunk 0) and hands the lent bytes to
/// the cache; returns the LSN.
fn write(wal: &MmapPersister<SimStorage>, cache: &SliceCache, offset: u32, data: &[u8]) -> Lsn {
    let (lsn, lent): (Lsn, Option<LoggedBytes>) = wal
        .append_slice_logged(&slice(offset, data))
        .expect("append");
    let lent = lent.expect("the mmap persister lends its bytes");
    cache.insert_logged(FileId(1), u64::from(offset), &lent, lsn, None);
    lsn
}

fn read(cache: &SliceCache, offset: u64, len: usize) -> (Vec<u8>, Vec<std::ops::Range<u64>>) {
    let mut out = vec![0u8; len];
    let missing = cache.read(FileId(1), offset, &mut out).expect("readable");
    (out, missing)
}

#[test]
fn large_lent_writes_are_kept_in_place_and_dropped_once_uploaded() {
    let (wal, cache) = (log(), cache());
    let big: Vec<u8> = (0..LEND_MIN * 2).map(|i| (i % 251) as u8 + 1).collect();
    let small = vec![0xAB; 4096];
    write(&wal, &cache, 0, &big);
    // A small overwrite inside the big write, and a small write after it.
    write(&wal, &cache, 1000, &small);
    let tail_at = big.len() as u32;
    write(&wal, &cache, tail_at, &small);
    let mut want = big.clone();
    want[1000..1000 + small.len()].copy_from_slice(&small);
    want.extend_from_slice(&small);
    let (got, missing) = read(&cache, 0, want.len());
    assert!(missing.is_empty(), "{missing:?}");
    assert_eq!(got, want);
    assert_eq!(cache.stats().dirty_bytes, want.len() as u64);

    // Upload the block: the lent bytes go, the copied ones stay clean.
    let snaps = cache.dirty_blocks(FileId(1));
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].ranges_copied(), vec![(0, want.clone())]);
    cache.mark_flushed(&snaps[0]);
    let st = cache.stats();
    assert_eq!(st.dirty_bytes, 0);
    assert_eq!(st.clean_bytes, 2 * small.len() as u64, "{st:?}");
    let (got, missing) = read(&cache, 0, want.len());
    assert_eq!(
        missing,
        vec![0..1000, 1000 + small.len() as u64..u64::from(tail_at)]
    );
    assert_eq!(&got[1000..1000 + small.len()], &small[..]);
    assert_eq!(&got[tail_at as usize..], &small[..]);
    // No memory is left behind for the dropped bytes.
    cache.remove(FileId(1));
    assert_eq!(cache.stats().memory_bytes, 0);
}

#[test]
fn lent_bytes_outlive_the_log_that_lent_them() {
    let (wal, cache) = (log(), cache());
    let big = vec![7u8; 3 * LEND_MIN];
    write(&wal, &cache, 0, &big);
    wal.close().expect("close");
    drop(wal);
    let (got, missing) = read(&cache, 0, big.len());
    assert!(missing.is_empty());
    assert_eq!(got, big);
}

/// Recovery lends large replayed records too: after a restart the cache
/// holds the log's bytes (so an upload drops them, as for a live write),
/// and small records are copied.
#[test]
fn recovery_keeps_large_records_in_the_log_and_copies_small_ones() {
    let st = SimStorage::new();
    let big: Vec<u8> = (0..2 * LEND_MIN).map(|i| (i % 249) as u8 + 1).collect();
    let small = vec![0x5A; 4096];
    {
        let wal = log_on(st.clone());
        for (offset, data) in [(0u32, &big[..]), (big.len() as u32, &small[..])] {
            wal.append_slice(&slice(offset, data)).expect("append");
        }
        wal.close().expect("close");
    }
    let wal = log_on(st.process_crash());
    let cache = cache();
    let report = slicefs_cache::recover(&wal, &cache).expect("recover");
    assert_eq!(report.pending_bytes, (big.len() + small.len()) as u64);
    drop(wal);
    let mut want = big.clone();
    want.extend_from_slice(&small);
    let (got, missing) = read(&cache, 0, want.len());
    assert!(missing.is_empty(), "{missing:?}");
    assert_eq!(got, want);
    let snaps = cache.dirty_blocks(FileId(1));
    assert_eq!(snaps.len(), 1);
    cache.mark_flushed(&snaps[0]);
    assert_eq!(
        cache.stats().clean_bytes,
        small.len() as u64,
        "the lent record is dropped, the copied one stays clean"
    );
}

//! Regression tests of [`SliceCache`]: LSN order when extents are cut and
//! extended, flushed marks racing newer writes, and the one-upload-per-block
//! rule across truncates and evictions.

use std::ops::Range;

use slicefs_cache::{BLOCK_SIZE, BlockSnapshot, CacheConfig, FileId, Lsn, SliceCache};

const F: FileId = FileId(7);

fn cache() -> SliceCache {
    SliceCache::new(CacheConfig {
        capacity_bytes: 1 << 20,
        dirty_max_bytes: 256 << 20,
        ..CacheConfig::default()
    })
    .expect("cache")
}

fn put(c: &SliceCache, file: FileId, offset: u64, data: &[u8], lsn: u64) {
    let mut r = c.reserve(data.len() as u64).expect("reserve");
    c.insert(file, offset, data, Lsn(lsn), Some(&mut r));
}

/// Bytes of `range` (0 where missing) and the missing ranges.
fn read(c: &SliceCache, file: FileId, range: Range<u64>) -> (Vec<u8>, Vec<Range<u64>>) {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    let missing = c.read(file, range.start, &mut buf).expect("readable");
    (buf, missing)
}

/// `(len, byte)` runs to a byte vector.
fn runs(parts: &[(usize, u8)]) -> Vec<u8> {
    parts
        .iter()
        .flat_map(|&(n, b)| std::iter::repeat_n(b, n))
        .collect()
}

#[test]
fn regression_coalescing_keeps_lsn_order_newer_write_at_lower_offset_wins() {
    // An older write at a higher offset, a newer one at a lower offset
    // overlapping its start.
    let c = cache();
    put(&c, F, 1000, &[b'a'; 2000], 1);
    put(&c, F, 500, &[b'b'; 1000], 2);
    let (got, missing) = read(&c, F, 0..4000);
    assert_eq!(missing, vec![0..500, 3000..4000]);
    assert_eq!(
        got,
        runs(&[(500, 0), (1000, b'b'), (1500, b'a'), (1000, 0)])
    );
    assert_eq!(c.stats().dirty_bytes, 2500);

    // The older write is a sequential slice extended by a second write;
    // the newer one starts below it and ends inside the extension.
    let g = FileId(8);
    put(&c, g, 1000, &[b'a'; 1000], 3);
    put(&c, g, 2000, &[b'c'; 1000], 4);
    assert_eq!(c.debug_extents(g), 1, "sequential writes extend one slice");
    put(&c, g, 500, &[b'b'; 2000], 5);
    let (got, missing) = read(&c, g, 0..4000);
    assert_eq!(missing, vec![0..500, 3000..4000]);
    assert_eq!(got, runs(&[(500, 0), (2000, b'b'), (500, b'c'), (1000, 0)]));
    // A further sequential write after the newer one does not bring the
    // overwritten bytes back.
    put(&c, g, 2500, &[b'd'; 100], 6);
    put(&c, g, 3000, &[b'e'; 100], 7);
    let (got, _) = read(&c, g, 500..3100);
    assert_eq!(
        got,
        runs(&[(2000, b'b'), (100, b'd'), (400, b'c'), (100, b'e')])
    );

    // The same across a block boundary.
    let h = FileId(9);
    put(&c, h, BLOCK_SIZE - 100, &[b'a'; 200], 8);
    put(&c, h, BLOCK_SIZE + 100, &[b'c'; 100], 9);
    put(&c, h, BLOCK_SIZE - 300, &[b'b'; 350], 10);
    let (got, missing) = read(&c, h, BLOCK_SIZE - 300..BLOCK_SIZE + 200);
    assert!(missing.is_empty(), "{missing:?}");
    assert_eq!(got, runs(&[(350, b'b'), (50, b'a'), (100, b'c')]));

    // The snapshots carry the newest bytes and their LSN.
    let snaps = c.dirty_blocks(g);
    assert_eq!(snaps.len(), 1);
    let s = &snaps[0];
    assert_eq!(s.lsn, Lsn(7));
    assert_eq!(s.ranges.len(), 1);
    assert_eq!(s.ranges[0].0, 500);
    assert_eq!(
        *s.ranges[0].1,
        runs(&[(2000, b'b'), (100, b'd'), (400, b'c'), (100, b'e')])
    );
}

#[test]
fn regression_flush_after_newer_write_keeps_the_newer_write_dirty() {
    let c = cache();
    // 1.5 MiB so that making it clean pushes the cache past its capacity.
    let a_len = 1536u64 << 10;
    put(&c, F, 0, &vec![b'a'; a_len as usize], 1);
    let snaps = c.dirty_blocks(F);
    assert_eq!(snaps.len(), 1);
    let snap = snaps[0].clone();
    assert_eq!(
        (snap.block, snap.lsn, snap.pending_bytes()),
        (0, Lsn(1), a_len)
    );

    // Newer writes into the same block while the upload runs: one inside
    // the snapshot's bytes, one right after them (it must not extend the
    // snapshotted extent).
    put(&c, F, 4096, &[b'b'; 2048], 2);
    put(&c, F, a_len, &[b'c'; 808], 3);
    assert!(
        c.dirty_blocks(F).is_empty(),
        "block 0 is in flight: no second snapshot"
    );

    c.mark_flushed(&snap);
    let st = c.stats();
    assert_eq!(st.dirty_bytes, 2048 + 808, "{st:?}");
    // The older bytes not overwritten became clean, and were evicted (the
    // cache is over its capacity); the newer bytes were not.
    assert_eq!(st.clean_bytes + st.evicted_bytes, a_len - 2048, "{st:?}");
    assert!(st.evicted_bytes > 0, "{st:?}");
    let (got, missing) = read(&c, F, 0..a_len + 1000);
    assert_eq!(
        missing,
        vec![0..4096, 6144..a_len, a_len + 808..a_len + 1000]
    );
    assert!(got[4096..6144].iter().all(|&b| b == b'b'));
    assert!(got[a_len as usize..][..808].iter().all(|&b| b == b'c'));

    // The newer bytes are in the next snapshot, and only they.
    let next = c.dirty_blocks(F);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].lsn, Lsn(3));
    assert_eq!(
        next[0].ranges_copied(),
        vec![(4096, vec![b'b'; 2048]), (a_len as u32, vec![b'c'; 808])]
    );
    c.mark_flushed(&next[0]);
    assert_eq!(c.stats().dirty_bytes, 0);
}

/// The same without eviction: the older bytes stay cached, now clean.
#[test]
fn regression_flush_after_newer_write_leaves_older_bytes_clean_and_cached() {
    let c = cache();
    put(&c, F, 0, &[b'a'; 8192], 1);
    let snap = c.dirty_blocks(F).remove(0);
    put(&c, F, 4096, &[b'b'; 2048], 2);
    c.mark_flushed(&snap);
    let st = c.stats();
    assert_eq!((st.dirty_bytes, st.clean_bytes), (2048, 6144), "{st:?}");
    let (got, missing) = read(&c, F, 0..8192);
    assert!(missing.is_empty());
    assert_eq!(got, runs(&[(4096, b'a'), (2048, b'b'), (2048, b'a')]));
    // A stale mark (the same snapshot again) changes nothing.
    c.mark_flushed(&snap);
    assert_eq!(c.stats().dirty_bytes, 2048);
}

/// Takes the one snapshot of `file` (there must be exactly one).
fn one_snapshot(c: &SliceCache, file: FileId) -> BlockSnapshot {
    let mut s = c.dirty_blocks(file);
    assert_eq!(s.len(), 1, "{s:?}");
    s.remove(0)
}

/// A truncate that empties a chunk drops the chunk, and with it the mark
/// that its block has a snapshot in flight: a second snapshot of the block
/// is handed out while the first upload runs (two uploads of one block
/// that may commit in either order), and the first `mark_flushed` then
/// ends the second one's in-flight state too.
#[test]
fn a_truncate_to_zero_keeps_the_block_in_flight() {
    let c = cache();
    put(&c, F, 0, &[b'a'; 100], 1);
    let s1 = one_snapshot(&c, F);
    c.truncate(F, 0);
    put(&c, F, 0, &[b'b'; 50], 2);
    let again = c.dirty_blocks(F);
    assert!(
        again.is_empty(),
        "block 0 snapshotted again while {s1:?} is in flight: {again:?}"
    );
    c.mark_flushed(&s1);
    // The newer bytes stay pending and are snapshotted next.
    assert_eq!(c.stats().dirty_bytes, 50);
    let s2 = one_snapshot(&c, F);
    assert_eq!(s2.ranges_copied(), vec![(0, vec![b'b'; 50])]);
}

/// The same through eviction: a truncate leaves only clean bytes in a
/// chunk whose block is in flight, eviction then empties and drops it.
#[test]
fn eviction_keeps_the_block_in_flight() {
    let c = cache();
    put(&c, F, 0, &[b'a'; 1000], 1);
    let s0 = one_snapshot(&c, F);
    c.mark_flushed(&s0);
    put(&c, F, 2000, &[b'b'; 1000], 2);
    let s1 = one_snapshot(&c, F);
    // The pending bytes go; the clean ones keep the chunk.
    c.truncate(F, 1500);
    // Another file's clean megabytes push the cache past its capacity: the
    // least recently used chunk (ours) is evicted.
    let g = FileId(99);
    put(&c, g, 0, &vec![b'x'; 2 << 20], 3);
    for s in c.dirty_blocks(g) {
        c.mark_flushed(&s);
    }
    let (_, missing) = read(&c, F, 0..1000);
    assert_eq!(missing, vec![0..1000], "our chunk was evicted");
    put(&c, F, 2000, &[b'c'; 10], 4);
    let again = c.dirty_blocks(F);
    assert!(
        again.is_empty(),
        "block 0 snapshotted again while {s1:?} is in flight: {again:?}"
    );
}

/// A file removed and re-created under the same id: the old incarnation's
/// late flushed mark must not end the new incarnation's upload of the
/// block (nor make its bytes clean).
#[test]
fn a_stale_flushed_mark_does_not_end_a_newer_upload_of_the_block() {
    let c = cache();
    put(&c, F, 0, &[b'a'; 100], 1);
    let old = one_snapshot(&c, F);
    c.remove(F);
    put(&c, F, 0, &[b'b'; 100], 2);
    let new = one_snapshot(&c, F);
    c.mark_flushed(&old);
    assert_eq!(c.stats().dirty_bytes, 100, "the new bytes stay pending");
    let again = c.dirty_blocks(F);
    assert!(
        again.is_empty(),
        "block 0 snapshotted again while {new:?} is in flight: {again:?}"
    );
}

/// A sequential write extends the newest extent and raises its LSN; the
/// oldest pending LSN (what a flush of "everything written before" waits
/// on) must still be the first write's, or `fsync` with upload would
/// return before that write is uploaded.
#[test]
fn regression_extension_keeps_the_oldest_pending_lsn() {
    let c = cache();
    put(&c, F, 0, &[1; 100], 50);
    put(&c, F, 100, &[2; 100], 60);
    assert_eq!(c.debug_extents(F), 1, "extended in place");
    assert_eq!(c.oldest_pending_lsn(F), Some(Lsn(50)));
    assert_eq!(c.cached_end(F), 200);
}

/// `dirty_blocks_with` takes only full blocks when asked, at most the
/// given count, and leaves the others free to be snapshotted later.
#[test]
fn snapshot_options_choose_full_blocks_and_bound_the_count() {
    let c = cache();
    let b = BLOCK_SIZE;
    put(&c, F, 0, &vec![1; b as usize], 1); // block 0 full
    put(&c, F, b, &[2; 10], 2); // block 1 partial
    put(&c, F, 2 * b, &vec![3; b as usize], 3); // block 2 full
    let full = slicefs_cache::SnapshotOptions {
        full_blocks_only: true,
        max_blocks: 1,
    };
    let s = c.dirty_blocks_with(F, &full);
    assert_eq!(s.iter().map(|s| s.block).collect::<Vec<_>>(), vec![0]);
    let s2 = c.dirty_blocks_with(
        F,
        &slicefs_cache::SnapshotOptions {
            max_blocks: 10,
            ..full
        },
    );
    assert_eq!(s2.iter().map(|s| s.block).collect::<Vec<_>>(), vec![2]);
    let rest = c.dirty_blocks(F);
    assert_eq!(rest.iter().map(|s| s.block).collect::<Vec<_>>(), vec![1]);
}

/// A rewrite of exactly one extent is done in place; it must still
/// behave like a newer write: a clean extent becomes pending again, and a
/// snapshot taken before the rewrite does not mark the new bytes clean.
#[test]
fn an_in_place_rewrite_is_a_newer_write() {
    let c = cache();
    put(&c, F, 4096, &[b'a'; 4096], 1);
    let s1 = one_snapshot(&c, F);
    // Rewritten while the snapshot is in flight.
    put(&c, F, 4096, &[b'b'; 4096], 2);
    c.mark_flushed(&s1);
    let st = c.stats();
    assert_eq!((st.dirty_bytes, st.clean_bytes, st.slices), (4096, 0, 1));
    let s2 = one_snapshot(&c, F);
    assert_eq!(s2.ranges_copied(), vec![(4096, vec![b'b'; 4096])]);
    assert_eq!(s2.lsn, Lsn(2));
    c.mark_flushed(&s2);
    let st = c.stats();
    assert_eq!((st.dirty_bytes, st.clean_bytes), (0, 4096));
    // A clean extent rewritten becomes pending again.
    put(&c, F, 4096, &[b'c'; 4096], 3);
    let st = c.stats();
    assert_eq!((st.dirty_bytes, st.clean_bytes, st.slices), (4096, 0, 1));
    assert_eq!(read(&c, F, 4096..8192).0, vec![b'c'; 4096]);
    // An older write (out of order) never overwrites newer bytes.
    c.insert(F, 4096, &[b'z'; 4096], Lsn(1), None);
    assert_eq!(read(&c, F, 4096..8192).0, vec![b'c'; 4096]);
}

/// Replayed records share a buffer; rewriting one of them must not change
/// the bytes of its neighbours, and flushed markers still drop exactly
/// their records.
#[test]
fn replayed_records_share_buffers_without_leaking_rewrites() {
    let c = cache();
    for i in 0..8u64 {
        c.insert_replayed(F, i * 1000, &[b'0' + i as u8; 1000], Lsn(i + 1));
    }
    assert_eq!(c.debug_extents(F), 8, "one extent per replayed record");
    c.insert_replayed(F, 3000, &[b'x'; 1000], Lsn(9));
    c.drop_flushed(F, slicefs_cache::ChunkIndex(0), 0, 2000, Lsn(2));
    let (got, missing) = read(&c, F, 0..8000);
    assert_eq!(missing, vec![0..2000]);
    let mut want = runs(&[(2000, 0)]);
    for i in 2..8u8 {
        want.extend(std::iter::repeat_n(
            if i == 3 { b'x' } else { b'0' + i },
            1000,
        ));
    }
    assert_eq!(got, want);
    assert_eq!(c.stats().dirty_bytes, 6000);
}

/// Freed large buffers are kept for reuse inside the capacity and counted
/// as memory, and a later writer reuses them.
#[test]
fn pooled_buffers_count_as_memory_and_are_reused() {
    let c = cache();
    // Sequential 128 KiB writes: buffers of 128 KiB, then pooled growth.
    for i in 0..4u64 {
        put(&c, F, i << 17, &[i as u8; 128 << 10], i + 1);
    }
    c.remove(F);
    let st = c.stats();
    assert_eq!(st.dirty_bytes, 0);
    assert!(st.pooled_bytes > 0, "{st:?}");
    assert_eq!(st.memory_bytes, st.pooled_bytes, "{st:?}");
    assert!(st.memory_bytes <= 1 << 20, "{st:?}");
    // A second writer reuses them and memory does not grow.
    let g = FileId(8);
    for i in 0..4u64 {
        put(&c, g, i << 17, &[9; 128 << 10], 10 + i);
    }
    assert!(c.stats().memory_bytes <= 1 << 20, "{:?}", c.stats());
    assert_eq!(read(&c, g, 0..512 << 10).0, vec![9; 512 << 10]);
}

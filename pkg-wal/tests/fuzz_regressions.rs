//! Bugs found with the `recover_segment` fuzz target (`fuzz/`) and its
//! seed inputs.
//!
//! - Two LSN overflows: the first LSN of a segment comes from its file
//!   name (and its header) and is trusted up to `u64::MAX`, so opening a
//!   hostile directory panics. It must fail with an error or succeed.
//! - Records lost below the durable watermark go unnoticed when the log
//!   simply ends early (zeros or a short file) instead of failing a check.
//!
//! Fixed; kept as regression tests (`cargo test -p
//! slicefs-wal --test fuzz_regressions`).

use slicefs_wal::format::{EncodedRecord, SegmentHeader};
use slicefs_wal::sim::SimStorage;
use slicefs_wal::{
    ChunkIndex, Durability, FileId, Lsn, MmapPersister, Persister, RecordKind, SliceId, SliceWrite,
    WalConfig, WalError,
};

fn cfg() -> WalConfig {
    WalConfig {
        durability: Durability::None,
        segment_bytes: 64 << 10,
        auto_reclaim: false,
        ..WalConfig::default()
    }
}

fn slice(data: &[u8]) -> SliceWrite<'_> {
    SliceWrite {
        file: FileId(1),
        chunk: ChunkIndex(0),
        slice: SliceId(1),
        offset: 0,
        data,
    }
}

/// The only file is an empty segment named for LSN `u64::MAX`: the scan
/// takes the name's LSN as the next one, cuts the file as a torn tail and
/// the open succeeds with `next_lsn() == u64::MAX`; the first append then
/// overflows `inner.next_lsn += 1` (mmap_persister.rs, `Shared::append`).
/// Fuzz input (hex): `ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff3ffc`.
#[test]

fn a_segment_named_for_the_last_lsn_does_not_make_append_panic() {
    let st = SimStorage::new();
    st.put_file("ffffffffffffffff.wal", b"");
    let Ok(p) = MmapPersister::open_on(st, cfg()) else {
        return; // refusing the directory is fine
    };
    // An error is fine; a panic is not.
    let _ = p.append_slice(&slice(b"x"));
}

/// A valid segment starting at LSN `u64::MAX` holding one record with
/// that LSN: the scan overflows computing the next LSN (`expected = last
/// + 1` in scan.rs, `scan`).
#[test]

fn a_record_with_the_last_lsn_does_not_make_the_scan_panic() {
    let header = SegmentHeader {
        flags: 0,
        wal_id: 1,
        salt: 2,
        first_lsn: Lsn(u64::MAX),
        end_lsn: Lsn(0),
        data_end: 0,
    };
    let mut bytes = header.encode().to_vec();
    let kind = RecordKind::Slice(slice(b"x"));
    let rec = EncodedRecord::new(header.record_seed(), Lsn(u64::MAX), &kind).unwrap();
    bytes.extend_from_slice(rec.head());
    bytes.extend_from_slice(rec.data());
    bytes.extend_from_slice(rec.padding());
    let st = SimStorage::new();
    st.put_file("ffffffffffffffff.wal", &bytes);
    // An error is fine; a panic is not.
    let _ = MmapPersister::open_on(st, cfg());
}

/// Ten records appended with `Durability::Always` (so the header's
/// watermark says LSN 9 is durable), then the disk loses the pages of
/// records 4 and later: they read as zeros, as unwritten space does.
/// DESIGN.md says "`L < W`: acknowledged records are missing or damaged:
/// corruption", so a strict open must refuse. It opens with records 1..=3
/// and no corruption reported: the `L < W` check in `scan` (scan.rs, the
/// end of `scan`) runs only when a record failed a check, and zeros are a
/// clean end (`Stop::End`), not a failure.
#[test]

fn a_log_that_ends_before_the_durable_watermark_is_corrupt() {
    let st = SimStorage::new();
    {
        let p = MmapPersister::open_on(
            st.clone(),
            WalConfig {
                durability: Durability::Always,
                ..cfg()
            },
        )
        .unwrap();
        for i in 0..10u32 {
            p.append_slice(&SliceWrite {
                offset: i * 8,
                ..slice(b"01234567")
            })
            .unwrap();
        }
        assert_eq!(p.durable_lsn(), Lsn(10));
    }
    let name = "0000000000000001.wal";
    let mut bytes = st.process_crash().file_bytes(name).unwrap();
    // Header 128 bytes, then records of 24 + 24 + 8 = 56 bytes each.
    let lost_from = 128 + 3 * 56;
    bytes[lost_from..].fill(0);
    let damaged = SimStorage::new();
    damaged.put_file(name, &bytes);
    match MmapPersister::open_on(damaged, cfg()) {
        Err(WalError::Corrupt { .. }) => {}
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(p) => panic!(
            "opened with acknowledged records 4..=9 missing: {:?}",
            p.open_stats()
        ),
    }
}

/// A compacted segment with a bad record below the watermark, opened with
/// `TolerateCorruption`: the open keeps the valid prefix by rewriting the
/// file with a header whose `end_lsn`/`data_end` describe the prefix
/// (mmap_persister.rs, `open_on` → `copy_prefix` / `write_whole_file`),
/// but under the old name `{first}-{old end}.cwal`. Every later open then
/// fails with `BadHeader` ("header LSN range does not match the file
/// name"), in either mode: the log cannot be opened again.
#[test]

fn a_tolerated_corruption_in_a_compacted_segment_reopens() {
    use slicefs_wal::RecoveryMode;
    use slicefs_wal::storage::Storage;

    let st = SimStorage::new();
    {
        let p = MmapPersister::open_on(st.clone(), cfg()).unwrap();
        // 8 KiB records in 64 KiB segments: several sealed segments.
        let data = vec![5u8; 8192];
        for i in 0..20u32 {
            p.append_slice(&SliceWrite {
                offset: i * 8192,
                ..slice(&data)
            })
            .unwrap();
        }
        assert!(p.reclaim().unwrap().segments_compacted > 1);
        p.sync().unwrap();
    }
    let st = st.process_crash();
    let cwal = st
        .list()
        .unwrap()
        .into_iter()
        .find(|n| n.ends_with(".cwal"))
        .expect("a compacted segment");
    // Flip a data byte of the third record (header 128, records of
    // 24 + 24 + 8192 bytes).
    let mut bytes = st.file_bytes(&cwal).unwrap();
    bytes[128 + 2 * 8240 + 48 + 100] ^= 1;
    st.put_file(&cwal, &bytes);

    let tolerant = WalConfig {
        recovery_mode: RecoveryMode::TolerateCorruption,
        ..cfg()
    };
    {
        let p = MmapPersister::open_on(st.clone(), tolerant.clone()).unwrap();
        assert!(p.open_stats().corruption.is_some());
        assert_eq!(p.open_stats().last_lsn, 2);
        p.close().unwrap();
    }
    let p = MmapPersister::open_on(st.process_crash(), tolerant)
        .unwrap_or_else(|e| panic!("the log cannot be opened again: {e}"));
    assert_eq!(p.open_stats().last_lsn, 2);
}

/// Found by the fuzz target once the watermark check above was added:
/// records lost at the end of a sealed segment, tolerated with
/// `TolerateCorruption`. The open keeps that segment as it is (the failure
/// is reported at the start of the next segment, which is moved aside), so
/// its header keeps a watermark above the new end of the log. Every later
/// open sees `L < W` again: a strict open refuses the log ("the log ends
/// at LSN 4 but LSN 6 was acknowledged durable"), a tolerant one reports
/// the same loss again and moves the new active segment aside, until new
/// appends happen to pass the stale watermark (with LSNs reused from the
/// lost records). The tolerated open should leave no watermark above the
/// last LSN it kept (mmap_persister.rs, `open_on`, the
/// `TolerateCorruption` branch; the watermark comes from scan.rs, `scan`).
///
/// Fuzz input: `fuzz/regressions/recover_segment/tolerated-loss-stale-watermark`.
#[test]
fn a_tolerated_loss_at_the_end_of_a_sealed_segment_reopens_strict() {
    use slicefs_wal::RecoveryMode;

    let st = SimStorage::new();
    {
        let p = MmapPersister::open_on(
            st.clone(),
            WalConfig {
                durability: Durability::Always,
                ..cfg()
            },
        )
        .unwrap();
        // 8 KiB records in 64 KiB segments: LSNs 1..=7 in the first one,
        // whose header says 6 is durable.
        let data = vec![5u8; 8192];
        for i in 0..10u32 {
            p.append_slice(&SliceWrite {
                offset: i * 8192,
                ..slice(&data)
            })
            .unwrap();
        }
    }
    let st = st.process_crash();
    let first = "0000000000000001.wal";
    assert!(st.file_bytes("0000000000000008.wal").is_some());
    // The disk loses records 5..=7 (header 128, records of 8240 bytes).
    let mut bytes = st.file_bytes(first).unwrap();
    bytes[128 + 4 * 8240..].fill(0);
    st.put_file(first, &bytes);

    let tolerant = WalConfig {
        recovery_mode: RecoveryMode::TolerateCorruption,
        ..cfg()
    };
    {
        let p = MmapPersister::open_on(st.clone(), tolerant.clone()).unwrap();
        assert!(p.open_stats().corruption.is_some());
        assert_eq!(p.open_stats().last_lsn, 4);
        p.close().unwrap();
    }
    // The loss was accepted once; the log opens again like any other.
    let p = MmapPersister::open_on(st.process_crash(), cfg())
        .unwrap_or_else(|e| panic!("strict open after a tolerated loss: {e}"));
    assert_eq!(p.open_stats().last_lsn, 4);
    assert_eq!(p.open_stats().corruption, None);
}

//! Fuzzes log recovery with hostile segment files.
//!
//! The input becomes one or two files of a log on the crash-simulating
//! storage ([`SimStorage`]), which is then opened in both recovery modes.
//! Nothing may panic; a log that opens must stream its records without an
//! error, take an append and re-open with the same records plus the new
//! one. The record and header decoders are fuzzed directly too.
//!
//! Input layout: byte 0 selects the layout (see [`Layout`]), bytes 1..3
//! the split point between the two files, the rest is the file bytes.
//! With bit 3 of byte 0 set, header, watermark and record checksums are
//! repaired before use, so the fuzzer gets past them to the checks behind.

#![no_main]

use libfuzzer_sys::fuzz_target;
use slicefs_wal::format::{
    HEADER_LEN, MAX_LSN, RECORD_HEADER_LEN, SegmentHeader, decode_record, decode_watermark,
    encode_watermark, padded, record_seed,
};
use slicefs_wal::scan::{compacted_name, segment_name};
use slicefs_wal::sim::SimStorage;
use slicefs_wal::{
    ChunkIndex, Durability, FileId, Lsn, MmapPersister, Persister, RecordKind, RecoveryMode,
    SliceId, SliceWrite, WalConfig, WalError,
};

/// Which files the input becomes (bits 0..2 of byte 0).
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// One normal segment.
    One,
    /// Two normal segments.
    Two,
    /// A compacted segment and a normal one.
    CompactedThenNormal,
    /// A normal segment and the leftover of an interrupted compaction.
    WithTmp,
}

const FLAG_NAMES_FROM_HEADERS: u8 = 1 << 2;
const FLAG_REPAIR: u8 = 1 << 3;
/// The data appended after a successful open.
const APPENDED: &[u8] = b"after recovery";
/// Seed used for the direct `decode_record` calls.
const DIRECT_SEED: u32 = 0x5eed_1234;

fn le64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn crc(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(bytes);
    h.finalize()
}

/// Rewrites the checksum of each record that `len` fields chain from
/// `start` under `seed`.
fn repair_records(b: &mut [u8], start: usize, seed: u32) {
    let mut at = start;
    while at + RECORD_HEADER_LEN <= b.len() {
        let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        if len < RECORD_HEADER_LEN || len > b.len() - at {
            break;
        }
        let c = crc(seed, &b[at + 4..at + len]);
        b[at..at + 4].copy_from_slice(&c.to_le_bytes());
        at += padded(len);
    }
}

/// Makes a segment file's checksums right: header, watermark, records.
fn repair_segment(b: &mut [u8]) {
    if b.len() < 64 {
        return;
    }
    let c = crc32fast::hash(&b[0..60]);
    b[60..64].copy_from_slice(&c.to_le_bytes());
    let seed = record_seed(le64(b, 16).unwrap_or(0));
    if let Some(w) = le64(b, 64)
        && b.len() >= 76
    {
        b[64..76].copy_from_slice(&encode_watermark(seed, Lsn(w)));
    }
    repair_records(b, HEADER_LEN, seed);
}

/// The name a file would have: from its header's LSN fields, or fixed.
fn name_for(bytes: &[u8], compacted: bool, from_header: bool, fixed_first: u64) -> String {
    let first = if from_header {
        le64(bytes, 24).unwrap_or(fixed_first)
    } else {
        fixed_first
    };
    if compacted {
        let end = if from_header {
            le64(bytes, 32).unwrap_or(first.wrapping_add(1))
        } else {
            first.wrapping_add(1)
        };
        compacted_name(Lsn(first), Lsn(end))
    } else {
        segment_name(Lsn(first))
    }
}

/// A record as recovered, owned.
type Owned = (u64, String);

/// Streams every record; panics on an error (the bytes were checked at
/// open and nothing changed them since).
fn collect(p: &MmapPersister<SimStorage>, input_len: usize, what: &str) -> Vec<Owned> {
    let mut out: Vec<Owned> = Vec::new();
    let mut rec = p.recover().expect("recover after a successful open");
    while let Some(r) = rec.next_record() {
        let r = r.unwrap_or_else(|e| panic!("{what}: record failed after a successful open: {e}"));
        if let RecordKind::Slice(w) = r.kind {
            assert!(
                w.data.len() <= input_len,
                "{what}: slice of {} bytes from {input_len} input bytes",
                w.data.len()
            );
        }
        // A compacted segment may hold several live pieces of one record,
        // each with the record's LSN.
        if let Some(&(last, _)) = out.last() {
            assert!(r.lsn.0 >= last, "{what}: LSN {} after {last}", r.lsn);
        }
        out.push((r.lsn.0, format!("{:?}", r.kind)));
    }
    out
}

fn config(mode: RecoveryMode) -> WalConfig {
    WalConfig {
        durability: Durability::None,
        auto_reclaim: false,
        segment_bytes: 64 << 10,
        recovery_mode: mode,
        ..WalConfig::default()
    }
}

fn open_and_check(files: &[(String, Vec<u8>)], mode: RecoveryMode, input_len: usize) {
    let st = SimStorage::new();
    for (name, bytes) in files {
        st.put_file(name, bytes);
    }
    let p = MmapPersister::open_on(st.clone(), config(mode));
    let debug = std::env::var_os("SLICEFS_FUZZ_DEBUG").is_some();
    if debug {
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        eprintln!("{mode:?} {names:?}: {:?}", p.as_ref().err());
    }
    let Ok(p) = p else {
        return;
    };
    let what = format!("{mode:?} open");
    let recs = collect(&p, input_len, &what);
    let stats = p.open_stats().clone();
    if debug {
        eprintln!("  {} records; {stats:?}", recs.len());
    }
    if let Some(&(last, _)) = recs.last() {
        assert!(last <= stats.last_lsn, "{what}: LSN {last} past {stats:?}");
    }
    let next = p.next_lsn();
    assert_eq!(next.0, stats.last_lsn + 1, "{what}");

    // The recovered log takes appends and re-opens with them, unless it
    // has used up its LSNs.
    let appended = p.append_slice(&SliceWrite {
        file: FileId(7),
        chunk: ChunkIndex(1),
        slice: SliceId(9),
        offset: 100,
        data: APPENDED,
    });
    let lsn = match appended {
        Ok(lsn) => lsn,
        Err(WalError::InvalidArgument(_)) if next.0 >= MAX_LSN => return,
        Err(e) => panic!("{what}: append at LSN {next} after open failed: {e}"),
    };
    assert_eq!(lsn, next, "{what}");
    p.sync()
        .unwrap_or_else(|e| panic!("{what}: sync after open failed: {e}"));
    drop(p);
    let p = match MmapPersister::open_on(st.process_crash(), config(RecoveryMode::Strict)) {
        Ok(p) => p,
        Err(e) => panic!("{what}: strict re-open of a recovered log failed: {e}"),
    };
    let again = collect(&p, input_len.max(APPENDED.len()), "re-open");
    assert_eq!(
        again.len(),
        recs.len() + 1,
        "{what}: re-open found other records"
    );
    assert_eq!(
        again[..recs.len()],
        recs[..],
        "{what}: re-open found other records"
    );
    assert_eq!(again[recs.len()].0, lsn.0, "{what}");
}

fn fuzz_decoders(rest: &[u8], offset: usize, repair: bool) {
    let _ = SegmentHeader::decode(rest);
    let _ = decode_watermark(DIRECT_SEED, rest);
    let mut b = rest.to_vec();
    if repair {
        repair_records(&mut b, 0, DIRECT_SEED);
    }
    for (at, seed) in [(0, DIRECT_SEED), (offset, DIRECT_SEED), (0, 0)] {
        if let Ok((rec, used)) = decode_record(&b, at, seed) {
            assert!(used >= RECORD_HEADER_LEN && used % 8 == 0, "used {used}");
            assert!(
                at + used <= padded(b.len()),
                "used {used} at {at} of {}",
                b.len()
            );
            if let RecordKind::Slice(w) = rec.kind {
                assert!(w.data.len() + RECORD_HEADER_LEN + 24 <= used);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&b0, rest)) = data.split_first() else {
        return;
    };
    let split = rest
        .get(0..2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]) as usize);
    let body = rest.get(2..).unwrap_or(&[]);
    let repair = b0 & FLAG_REPAIR != 0;
    let from_header = b0 & FLAG_NAMES_FROM_HEADERS != 0;

    fuzz_decoders(body, split, repair);

    let layout = match b0 & 3 {
        0 => Layout::One,
        1 => Layout::Two,
        2 => Layout::CompactedThenNormal,
        _ => Layout::WithTmp,
    };
    let (a, b) = match layout {
        Layout::One => (body, &[][..]),
        _ => body.split_at(split.min(body.len())),
    };
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    if repair {
        repair_segment(&mut a);
        repair_segment(&mut b);
    }
    let files: Vec<(String, Vec<u8>)> = match layout {
        Layout::One => vec![(name_for(&a, false, from_header, 1), a)],
        Layout::Two => {
            let second = le64(&a, 24).unwrap_or(1).wrapping_add(1);
            let nb = name_for(&b, false, from_header, second);
            vec![(name_for(&a, false, from_header, 1), a), (nb, b)]
        }
        Layout::CompactedThenNormal => {
            let na = name_for(&a, true, from_header, 1);
            let second = le64(&a, 32).unwrap_or(2);
            let nb = name_for(&b, false, from_header, second);
            vec![(na, a), (nb, b)]
        }
        Layout::WithTmp => {
            let nb = format!("{}.tmp", name_for(&b, true, from_header, 1));
            vec![(name_for(&a, false, from_header, 1), a), (nb, b)]
        }
    };
    for mode in [RecoveryMode::Strict, RecoveryMode::TolerateCorruption] {
        open_and_check(&files, mode, data.len());
    }
});

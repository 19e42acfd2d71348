//! Damaged logs on real directories: what `MmapPersister::open` and
//! `scan::scan` make of a torn tail, a flipped bit in acknowledged
//! records, a zero-filled tail, a segment of another log and damaged
//! segment headers. Every test works on copies of a log written by the
//! code, damaged with plain `std::fs` calls.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use slicefs_wal::format::HEADER_LEN;
use slicefs_wal::scan::scan;
use slicefs_wal::storage::MmapStorage;
use slicefs_wal::{
    Corruption, Durability, LOCK_FILE, Lsn, MmapPersister, Persister, RecoveryMode, WalConfig,
    WalError,
};

// ---------------------------------------------------------------------------
// Helpers

fn cfg(durability: Durability) -> WalConfig {
    WalConfig {
        durability,
        segment_bytes: 64 << 10,
        grow_bytes: 4096,
        auto_reclaim: false,
        ..WalConfig::default()
    }
}

fn tolerant() -> WalConfig {
    WalConfig {
        recovery_mode: RecoveryMode::TolerateCorruption,
        ..cfg(Durability::None)
    }
}

mod common;
use common::{Kind, append, recovered};

impl Kind {
    fn slice(file: u64, offset: u32, len: usize) -> Kind {
        Kind::Slice {
            file,
            chunk: file as u32 % 3,
            slice: file * 100 + u64::from(offset),
            offset,
            data: (0..len).map(|i| (i as u64 * 13 + file) as u8).collect(),
        }
    }
}

/// Where a record sits on disk.
#[derive(Clone, Debug)]
struct Placed {
    lsn: u64,
    kind: Kind,
    segment: String,
    offset: u64,
}

/// Builds a log in `dir` session by session: each inner list is appended
/// in one session, which is closed, or (the last one, when `crash_last`)
/// dropped without close so its records sit only in the page cache, never
/// synced. Every session starts a new segment named after its first LSN.
/// Returns every record with its segment and offset.
fn build(dir: &Path, sessions: &[(Durability, Vec<Kind>)], crash_last: bool) -> Vec<Placed> {
    let mut placed = Vec::new();
    let mut next = 1u64;
    for (i, (durability, kinds)) in sessions.iter().enumerate() {
        let p = MmapPersister::open(dir, cfg(*durability)).expect("open");
        let segment = format!("{next:016x}.wal");
        let mut at = HEADER_LEN as u64;
        for k in kinds {
            assert_eq!(append(&p, k), Lsn(next));
            placed.push(Placed {
                lsn: next,
                kind: k.clone(),
                segment: segment.clone(),
                offset: at,
            });
            at += k.disk_len();
            next += 1;
        }
        if !(crash_last && i + 1 == sessions.len()) {
            p.close().expect("close");
        }
    }
    placed
}

fn expected(placed: &[Placed]) -> Vec<(u64, Kind)> {
    placed.iter().map(|r| (r.lsn, r.kind.clone())).collect()
}

/// Copies the files of `src` into a new temporary directory, without the
/// lock file.
fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().expect("tempdir");
    for e in fs::read_dir(src).expect("read_dir") {
        let e = e.expect("dir entry");
        if e.file_name() != LOCK_FILE {
            fs::copy(e.path(), dst.path().join(e.file_name())).expect("copy");
        }
    }
    dst
}

/// Name and bytes of every file in `dir`; the lock file only if `lock`.
fn snapshot(dir: &Path, lock: bool) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| lock || name != LOCK_FILE)
        .map(|(name, path)| (name, fs::read(path).expect("read")))
        .collect()
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").len()
}

fn set_len(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for set_len")
        .set_len(len)
        .expect("set_len");
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut b = fs::read(path).expect("read");
    b[offset as usize] ^= 1 << bit;
    fs::write(path, b).expect("write");
}

fn open_err(dir: &Path, config: WalConfig) -> WalError {
    match MmapPersister::open(dir, config) {
        Ok(_) => panic!("open of a damaged log succeeded"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------
// a. A torn tail: the newest segment cut at every offset of its records.

/// Two acknowledged records in segment 1 (closed), then three records in a
/// new segment 3 appended with `Durability::None` and never synced (the
/// process "crashed": dropped without close). Segment 3's header watermark
/// is 2, set when the log was opened, so everything in segment 3 lies past
/// the watermark. Record lengths are not multiples of 8, so records 3 and
/// 5 are followed by padding.
fn torn_tail_log(dir: &Path) -> Vec<Placed> {
    build(
        dir,
        &[
            (
                Durability::Always,
                vec![Kind::slice(1, 0, 37), Kind::Remove { file: 9 }],
            ),
            (
                Durability::None,
                vec![
                    Kind::slice(2, 512, 101), // len 149, 3 bytes of padding
                    Kind::Flushed {
                        file: 1,
                        chunk: 1,
                        offset: 0,
                        len: 37,
                        upto: 1,
                    }, // len 56
                    Kind::slice(3, 64, 203),  // len 251, 5 bytes of padding
                ],
            ),
        ],
        true,
    )
}

/// What opening the torn-tail log cut at `cut` must give, checked on a
/// fresh copy.
fn check_cut(src: &Path, placed: &[Placed], cut: u64) -> Result<(), String> {
    let newest = "0000000000000003.wal";
    let copy = copy_dir(src);
    let path = copy.path().join(newest);
    set_len(&path, cut);
    let bytes = fs::read(&path).expect("read");

    // The records wholly before the cut: every byte of the record (its
    // `len`; padding is not part of it) lies below `cut`.
    let whole: Vec<&Placed> = placed
        .iter()
        .filter(|r| r.segment != newest || r.offset + r.kind.len() <= cut)
        .collect();
    let want = expected(&whole.iter().map(|r| (*r).clone()).collect::<Vec<_>>());
    // Where the next record would start, and what lies past it.
    let whole_end = whole
        .iter()
        .filter(|r| r.segment == newest)
        .map(|r| r.offset + r.kind.disk_len())
        .max()
        .unwrap_or(HEADER_LEN as u64);
    let tail = bytes.get(whole_end as usize..).unwrap_or(&[]);
    // A partial record is cut; bytes that are all zeros (a partial header
    // whose first bytes happen to be zero) read as "nothing written" and
    // are left in place, as are the zeros of a cut padding.
    let want_torn = if tail.iter().all(|&b| b == 0) {
        0
    } else {
        tail.len() as u64
    };

    let p = MmapPersister::open(copy.path(), cfg(Durability::None))
        .map_err(|e| format!("cut {cut}: open failed: {e}"))?;
    let got = recovered(&p);
    if got != want {
        return Err(format!(
            "cut {cut}: recovered LSNs {:?}, want {:?}",
            got.iter().map(|r| r.0).collect::<Vec<_>>(),
            want.iter().map(|r| r.0).collect::<Vec<_>>()
        ));
    }
    let st = p.open_stats();
    if st.torn_bytes != want_torn || st.corruption.is_some() {
        return Err(format!(
            "cut {cut}: torn_bytes {} corruption {:?}, want torn_bytes {want_torn}",
            st.torn_bytes, st.corruption
        ));
    }
    if st.last_lsn != want.len() as u64 {
        return Err(format!("cut {cut}: last_lsn {}", st.last_lsn));
    }
    let in_newest = whole.iter().filter(|r| r.segment == newest).count();
    if want_torn > 0 && in_newest > 0 && file_len(&path) != whole_end {
        // The torn tail is gone from disk: the file is cut back to the end
        // of its last whole record.
        return Err(format!(
            "cut {cut}: newest segment is {} bytes, want {whole_end}",
            file_len(&path)
        ));
    }
    p.close().map_err(|e| format!("cut {cut}: close: {e}"))?;
    drop(p);
    if in_newest == 0 && path.exists() && file_len(&path) != HEADER_LEN as u64 {
        // A segment left without records is removed; open then starts its
        // new (empty, trimmed at close) segment at the same LSN and name.
        return Err(format!(
            "cut {cut}: segment without records kept ({} bytes)",
            file_len(&path)
        ));
    }

    let p = MmapPersister::open(copy.path(), cfg(Durability::None))
        .map_err(|e| format!("cut {cut}: second open failed: {e}"))?;
    if recovered(&p) != want {
        return Err(format!("cut {cut}: second open recovered other records"));
    }
    if p.open_stats().torn_bytes != 0 || p.open_stats().corruption.is_some() {
        return Err(format!(
            "cut {cut}: second open: torn_bytes {}, corruption {:?}",
            p.open_stats().torn_bytes,
            p.open_stats().corruption
        ));
    }
    if p.next_lsn() != Lsn(want.len() as u64 + 1) {
        return Err(format!("cut {cut}: next LSN {}", p.next_lsn()));
    }
    Ok(())
}

#[test]
fn a_tail_cut_at_any_offset_keeps_exactly_the_whole_records() {
    let src = tempfile::tempdir().unwrap();
    let placed = torn_tail_log(src.path());
    let newest = src.path().join("0000000000000003.wal");
    let first = placed[2].offset;
    let end = placed[4].offset + placed[4].kind.disk_len();
    assert_eq!(first, HEADER_LEN as u64);
    assert!(
        file_len(&newest) > end,
        "the crashed segment keeps its allocated zeros"
    );
    // Sanity: uncut, everything is there and nothing is torn.
    let copy = copy_dir(src.path());
    let p = MmapPersister::open(copy.path(), cfg(Durability::None)).unwrap();
    assert_eq!(recovered(&p), expected(&placed));
    assert_eq!(p.open_stats().torn_bytes, 0);
    drop(p);

    let failures: Vec<String> = (first..=end)
        .filter_map(|cut| check_cut(src.path(), &placed, cut).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cuts failed:\n{}",
        failures.len(),
        end - first + 1,
        failures.join("\n")
    );
}

/// Minimal reproduction: a segment whose file ends inside the zero padding
/// after its last record (the record's `len` bytes are all there). The
/// scan accepts the record, but its valid end (the padded end) lies past
/// the end of the file, and open then fails while replaying it.
#[test]
fn a_cut_inside_the_padding_of_the_last_record_keeps_the_record() {
    let src = tempfile::tempdir().unwrap();
    let placed = build(
        src.path(),
        &[(Durability::None, vec![Kind::slice(1, 0, 1)])], // len 49, padded 56
        true,
    );
    let path = src.path().join("0000000000000001.wal");
    set_len(&path, HEADER_LEN as u64 + 50);
    let p = match MmapPersister::open(src.path(), cfg(Durability::None)) {
        Ok(p) => p,
        Err(e) => panic!("open failed: {e}"),
    };
    assert_eq!(recovered(&p), expected(&placed));
    assert_eq!(p.open_stats().torn_bytes, 0);
}

/// Cuts inside the header of the newest (unacknowledged) segment: the
/// segment holds no record that was acknowledged, so it is dropped and the
/// older records are kept.
#[test]
fn a_cut_inside_the_header_of_the_newest_segment_drops_it() {
    let src = tempfile::tempdir().unwrap();
    let placed = torn_tail_log(src.path());
    let want = expected(&placed[..2]);
    for cut in [0, 1, 3, 4, 40, 63, 64, 70, 76, 100, 127] {
        let copy = copy_dir(src.path());
        let path = copy.path().join("0000000000000003.wal");
        set_len(&path, cut);
        let p = MmapPersister::open(copy.path(), cfg(Durability::None))
            .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(recovered(&p), want, "cut {cut}");
        assert!(p.open_stats().corruption.is_none(), "cut {cut}");
        assert_eq!(p.next_lsn(), Lsn(3), "cut {cut}");
        // The headless segment is gone; the file of that name is the new
        // active segment (LSN 3 comes next), empty and trimmed at close.
        p.close().unwrap();
        assert_eq!(file_len(&path), HEADER_LEN as u64, "cut {cut}");
    }
}

// ---------------------------------------------------------------------------
// b. A flipped bit in the acknowledged prefix.

/// Minimal reproduction: the header watermark that every sync writes must
/// be what open reads back. Two records appended with `Durability::Always`
/// and closed: the second sync wrote watermark 1 into segment 1's header.
#[test]
fn open_reads_the_watermark_of_the_headers() {
    let dir = tempfile::tempdir().unwrap();
    build(
        dir.path(),
        &[(
            Durability::Always,
            vec![Kind::Remove { file: 1 }, Kind::Remove { file: 2 }],
        )],
        false,
    );
    let p = MmapPersister::open(dir.path(), cfg(Durability::None)).unwrap();
    assert_eq!(p.open_stats().watermark, 1);
}

/// Ten records over segments 1 and 6, all appended with
/// `Durability::Always`, then an empty session whose new segment 11 carries
/// the watermark 10: every record is acknowledged.
fn acked_log(dir: &Path) -> Vec<Placed> {
    let kinds = |base: u64| {
        vec![
            Kind::slice(base, 0, 100),
            Kind::Truncate {
                file: base,
                size: 50,
            },
            Kind::slice(base + 1, 4096, 33),
            Kind::Flushed {
                file: base,
                chunk: 0,
                offset: 0,
                len: 50,
                upto: base,
            },
            Kind::Remove { file: base + 1 },
        ]
    };
    build(
        dir,
        &[
            (Durability::Always, kinds(1)),
            (Durability::Always, kinds(6)),
            (Durability::Always, vec![]),
        ],
        false,
    )
}

#[test]
fn a_flipped_bit_in_an_acknowledged_record_is_corruption() {
    let src = tempfile::tempdir().unwrap();
    let placed = acked_log(src.path());
    assert_eq!(placed.len(), 10);
    assert!(src.path().join("000000000000000b.wal").exists());
    // (LSN, byte within the record): checksum, len, LSN, type, payload,
    // last data byte.
    let cases = [
        (1, 0),
        (3, 5),
        (5, 9),
        (6, 16),
        (7, 26),
        (8, 24 + 24 + 32),
        (10, 30),
    ];
    for (lsn, byte) in cases {
        let rec = &placed[lsn as usize - 1];
        assert_eq!(rec.lsn, lsn);
        assert!(byte < rec.kind.len(), "byte {byte} outside record {lsn}");
        let copy = copy_dir(src.path());
        let path = copy.path().join(&rec.segment);
        flip_bit(&path, rec.offset + byte, (lsn % 8) as u8);
        let damaged = snapshot(copy.path(), false);

        // Strict: refused, naming the file and the record's offset, and
        // nothing on disk changes.
        match open_err(copy.path(), cfg(Durability::None)) {
            WalError::Corrupt {
                file,
                offset,
                reason,
            } => {
                assert_eq!(file, rec.segment, "LSN {lsn}");
                assert_eq!(offset, rec.offset, "LSN {lsn}: {reason}");
                assert!(!reason.is_empty());
            }
            e => panic!("LSN {lsn}: expected Corrupt, got {e}"),
        }
        assert_eq!(snapshot(copy.path(), false), damaged, "LSN {lsn}");

        // Tolerant: the prefix before the bad record survives, the damaged
        // file is moved aside unchanged.
        let p = MmapPersister::open(copy.path(), tolerant())
            .unwrap_or_else(|e| panic!("LSN {lsn}: tolerant open: {e}"));
        let want = expected(&placed[..lsn as usize - 1]);
        assert_eq!(recovered(&p), want, "LSN {lsn}");
        let c: Corruption = p.open_stats().corruption.clone().expect("corruption");
        assert_eq!(
            (c.file.as_str(), c.offset),
            (rec.segment.as_str(), rec.offset)
        );
        if byte >= 24 {
            assert!(c.reason.contains("checksum"), "{}", c.reason);
        }
        assert_eq!(p.open_stats().last_lsn, lsn - 1);
        assert_eq!(p.next_lsn(), Lsn(lsn));
        let aside = copy.path().join(format!("{}.corrupt", rec.segment));
        assert_eq!(
            fs::read(&aside).ok().as_ref(),
            damaged.get(&rec.segment),
            "LSN {lsn}: the damaged file is kept as {}",
            aside.display()
        );
        p.close().unwrap();
        drop(p);

        // A strict open afterwards finds a clean log with the same prefix.
        let p = MmapPersister::open(copy.path(), cfg(Durability::None))
            .unwrap_or_else(|e| panic!("LSN {lsn}: strict reopen: {e}"));
        assert_eq!(recovered(&p), want, "LSN {lsn}");
        assert!(p.open_stats().corruption.is_none());
        assert_eq!(p.open_stats().torn_bytes, 0);
    }
}

// ---------------------------------------------------------------------------
// c. A zero-filled tail.

/// Zeros past the last record read as "nothing written here" (allocated
/// but unused space, as `fallocate` leaves it): open keeps every record,
/// reports no torn bytes (nothing was lost) and no corruption, and leaves
/// the file as it is (the zeros are not cut: `torn_bytes` counts only
/// bytes removed from a failed check on).
#[test]
fn a_zero_filled_tail_loses_nothing() {
    let src = tempfile::tempdir().unwrap();
    let placed = build(
        src.path(),
        &[
            (
                Durability::Always,
                vec![Kind::slice(1, 0, 10), Kind::Remove { file: 2 }],
            ),
            (
                Durability::Always,
                vec![Kind::Truncate { file: 1, size: 3 }, Kind::slice(4, 8, 77)],
            ),
        ],
        false,
    );
    let want = expected(&placed);
    for segment in ["0000000000000003.wal", "0000000000000001.wal"] {
        for zeros in [1u64, 5, 8, 23, 24, 100, 4096, 10_000] {
            let copy = copy_dir(src.path());
            let path = copy.path().join(segment);
            let len = file_len(&path);
            set_len(&path, len + zeros);
            let p = MmapPersister::open(copy.path(), cfg(Durability::None))
                .unwrap_or_else(|e| panic!("{segment} +{zeros}: {e}"));
            assert_eq!(recovered(&p), want, "{segment} +{zeros}");
            let st = p.open_stats();
            assert_eq!(st.torn_bytes, 0, "{segment} +{zeros}");
            assert_eq!(st.segments_removed, 0, "{segment} +{zeros}");
            assert!(st.corruption.is_none());
            assert_eq!(st.last_lsn, 4);
            assert_eq!(file_len(&path), len + zeros, "the zeros are left alone");
            // New appends go on after the recovered records.
            assert_eq!(append(&p, &Kind::Remove { file: 7 }), Lsn(5));
            p.close().unwrap();
            drop(p);
            let p = MmapPersister::open(copy.path(), cfg(Durability::None)).unwrap();
            let mut more = want.clone();
            more.push((5, Kind::Remove { file: 7 }));
            assert_eq!(recovered(&p), more, "{segment} +{zeros}");
            assert_eq!(p.open_stats().torn_bytes, 0);
        }
    }
}

// ---------------------------------------------------------------------------
// d. A segment of another log.

#[test]
fn a_segment_of_another_log_is_refused_and_nothing_is_deleted() {
    let ours = tempfile::tempdir().unwrap();
    build(
        ours.path(),
        &[(
            Durability::Always,
            (1..=3).map(|f| Kind::slice(f, 0, 20)).collect(),
        )],
        false,
    );
    let theirs = tempfile::tempdir().unwrap();
    build(
        theirs.path(),
        &[
            (
                Durability::Always,
                (1..=3).map(|f| Kind::slice(f, 0, 20)).collect(),
            ),
            (Durability::Always, vec![Kind::Remove { file: 1 }]),
        ],
        false,
    );
    // Their segment 4 continues our LSNs exactly: only the log id differs.
    fs::copy(
        theirs.path().join("0000000000000004.wal"),
        ours.path().join("0000000000000004.wal"),
    )
    .unwrap();
    let before = snapshot(ours.path(), false);
    for config in [cfg(Durability::None), tolerant()] {
        match open_err(ours.path(), config) {
            WalError::BadHeader { file, reason } => {
                assert_eq!(file, "0000000000000004.wal");
                assert!(reason.contains("belongs to another log"), "{reason}");
            }
            e => panic!("expected BadHeader, got {e}"),
        }
        assert_eq!(snapshot(ours.path(), false), before);
    }
}

// ---------------------------------------------------------------------------
// e. Damaged headers of acknowledged segments.

/// Damages the bytes of a segment file.
type Damage = fn(&mut Vec<u8>);

#[test]
fn a_damaged_header_of_an_acknowledged_segment_is_a_clear_error() {
    let src = tempfile::tempdir().unwrap();
    let placed = acked_log(src.path()); // segments 1 and 6 acknowledged
    for segment in ["0000000000000001.wal", "0000000000000006.wal"] {
        let cases: [(&str, Damage, bool); 3] = [
            ("magic", |b| b[0] = b'X', false),
            (
                "version",
                |b| b[4..6].copy_from_slice(&2u16.to_le_bytes()),
                true,
            ),
            ("checksum", |b| b[20] ^= 0x10, false), // a bit of the salt
        ];
        for (what, damage, bad_header) in cases {
            let copy = copy_dir(src.path());
            let path = copy.path().join(segment);
            let mut b = fs::read(&path).unwrap();
            damage(&mut b);
            fs::write(&path, b).unwrap();
            let before = snapshot(copy.path(), false);
            let err = open_err(copy.path(), cfg(Durability::None));
            match (&err, bad_header) {
                (WalError::BadHeader { file, reason }, true) => {
                    assert_eq!(file, segment);
                    assert!(reason.contains(what), "{segment} {what}: {reason}");
                }
                (
                    WalError::Corrupt {
                        file,
                        offset,
                        reason,
                    },
                    false,
                ) => {
                    assert_eq!(file, segment);
                    assert_eq!(*offset, 0);
                    assert!(reason.contains(what), "{segment} {what}: {reason}");
                }
                _ => panic!("{segment} {what}: unexpected {err:?}"),
            }
            assert_eq!(snapshot(copy.path(), false), before, "{segment} {what}");

            // Tolerating corruption keeps the segments before the damaged
            // one (never an unknown version, which is not corruption).
            let p = MmapPersister::open(copy.path(), tolerant());
            match (p, bad_header) {
                (Err(WalError::BadHeader { .. }), true) => {}
                (Ok(p), false) => {
                    let kept = placed.iter().filter(|r| r.segment.as_str() < segment);
                    let kept: Vec<Placed> = kept.cloned().collect();
                    assert_eq!(recovered(&p), expected(&kept), "{segment} {what}");
                    let c = p.open_stats().corruption.clone().expect("corruption");
                    assert_eq!((c.file.as_str(), c.offset), (segment, 0));
                }
                (Ok(_), true) => panic!("{segment} {what}: tolerant open succeeded"),
                (Err(e), _) => panic!("{segment} {what}: tolerant open: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// f. The read-only scan agrees with open.

#[test]
fn scan_reports_the_same_verdicts_and_changes_nothing() {
    let scan_dir = |dir: &Path| {
        let before = snapshot(dir, true);
        let storage = MmapStorage::new(dir).unwrap();
        let failure = scan(&storage).expect("scan").failure;
        drop(storage);
        assert_eq!(snapshot(dir, true), before, "scan changed the directory");
        failure
    };

    // Clean.
    let src = tempfile::tempdir().unwrap();
    let placed = acked_log(src.path());
    assert_eq!(scan_dir(src.path()), None);

    // A flipped bit in acknowledged record 8.
    let copy = copy_dir(src.path());
    let rec = &placed[7];
    flip_bit(&copy.path().join(&rec.segment), rec.offset + 40, 2);
    let f = scan_dir(copy.path()).expect("a failure");
    assert_eq!(
        (f.file.as_str(), f.offset),
        (rec.segment.as_str(), rec.offset)
    );
    assert!(!f.torn, "{f:?}");
    assert!(f.reason.contains("checksum"), "{f:?}");

    // A cut tail, and the same uncut.
    let src = tempfile::tempdir().unwrap();
    let placed = torn_tail_log(src.path());
    assert_eq!(scan_dir(src.path()), None);
    let copy = copy_dir(src.path());
    let rec = &placed[3];
    set_len(&copy.path().join(&rec.segment), rec.offset + 30);
    let f = scan_dir(copy.path()).expect("a failure");
    assert_eq!(
        (f.file.as_str(), f.offset),
        (rec.segment.as_str(), rec.offset)
    );
    assert!(f.torn, "{f:?}");
}

//! Checked-in logs written by an earlier build (`fixtures/wal-v1*` at the
//! repository root): this build must read them record for record, and
//! must judge the damaged samples as before.
//!
//! - `wal-v1`: 12 records of all four types over two segments, closed
//!   cleanly.
//! - `wal-v1-torn`: `wal-v1` plus a third segment written without sync
//!   whose second record is cut in the middle (a crash).
//! - `wal-v1-corrupt`: `wal-v1` with one bit flipped in the data of
//!   record 2, which was acknowledged durable.
//! - `wal-v1-foreign`: `wal-v1` plus a segment of another log that would
//!   continue its LSNs.
//!
//! `SLICEFS_BLESS=1 cargo test -p slicefs-wal --test fixtures` regenerates
//! them (same content; log ids and salts are random, so the bytes differ).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use slicefs_wal::format::{HEADER_LEN, SegmentHeader, padded};
use slicefs_wal::{
    Durability, LOCK_FILE, Lsn, MmapPersister, Persister, RecoveryMode, WalConfig, WalError,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");
const NAMES: [&str; 4] = ["wal-v1", "wal-v1-torn", "wal-v1-corrupt", "wal-v1-foreign"];
const SEG1: &str = "0000000000000001.wal";
const SEG7: &str = "0000000000000007.wal";
const SEG13: &str = "000000000000000d.wal";

fn cfg(durability: Durability) -> WalConfig {
    WalConfig {
        durability,
        segment_bytes: 64 << 10,
        grow_bytes: 4096,
        auto_reclaim: false,
        ..WalConfig::default()
    }
}

mod common;
use common::{Kind, append, recovered};

/// Deterministic data bytes.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn slice(file: u64, chunk: u32, slice: u64, offset: u32, seed: u8, len: usize) -> Kind {
    Kind::Slice {
        file,
        chunk,
        slice,
        offset,
        data: pattern(seed, len),
    }
}

fn flushed(file: u64, chunk: u32, offset: u32, len: u32, upto: u64) -> Kind {
    Kind::Flushed {
        file,
        chunk,
        offset,
        len,
        upto,
    }
}

/// The content of `wal-v1`: LSNs 1..=6 in segment 1, 7..=12 in segment 7.
fn wal_v1() -> Vec<(u64, Kind)> {
    let kinds = vec![
        // Session 1: segment 0000000000000001.wal.
        slice(1, 0, 101, 0, 1, 100),   // len 148, at 128
        slice(2, 3, 201, 4096, 2, 37), // len 85, at 280
        Kind::Truncate { file: 1, size: 60 },
        flushed(2, 3, 4096, 37, 2),
        Kind::Remove { file: 3 },
        slice(3, 1, 301, 777, 3, 300),
        // Session 2: segment 0000000000000007.wal.
        Kind::Truncate {
            file: 3,
            size: (64 << 20) + 1000,
        },
        slice(1, 0, 102, 60, 4, 1),
        flushed(1, 0, 0, 61, 8),
        Kind::Remove { file: 2 },
        Kind::Truncate { file: 4, size: 0 },
        flushed(3, 1, 777, 300, 6),
    ];
    (1..).zip(kinds).collect()
}

/// The records appended (and never synced) after `wal-v1` in
/// `wal-v1-torn`; the second is cut.
fn torn_extra() -> Vec<(u64, Kind)> {
    vec![
        (13, slice(5, 0, 501, 0, 5, 50)),   // len 98, at 128
        (14, slice(5, 0, 502, 50, 6, 200)), // len 248, at 232, cut at 332
    ]
}

/// Offset of record 2 in segment 1, and the byte flipped in
/// `wal-v1-corrupt` (in its data).
const CORRUPT_RECORD_AT: u64 = 280;
const CORRUPT_BYTE: u64 = CORRUPT_RECORD_AT + 48 + 10;
/// Where record 14 starts in segment 13 of `wal-v1-torn`, and where the
/// file is cut.
const TORN_RECORD_AT: u64 = 232;
const TORN_CUT: u64 = TORN_RECORD_AT + 100;

// ---------------------------------------------------------------------------
// Generation

fn copy_files(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("mkdir");
    for e in fs::read_dir(src).expect("read_dir") {
        let e = e.expect("dir entry");
        if e.file_name() != LOCK_FILE {
            fs::copy(e.path(), dst.join(e.file_name())).expect("copy");
        }
    }
}

fn write_sessions(dir: &Path, sessions: &[&[(u64, Kind)]]) {
    for records in sessions {
        let p = MmapPersister::open(dir, cfg(Durability::Always)).expect("open");
        for (lsn, k) in *records {
            assert_eq!(append(&p, k), Lsn(*lsn));
        }
        p.close().expect("close");
    }
}

fn generate(root: &Path) {
    for name in NAMES {
        let _ = fs::remove_dir_all(root.join(name));
    }
    let all = wal_v1();
    let base = tempfile::tempdir().expect("tempdir");
    write_sessions(base.path(), &[&all[..6], &all[6..]]);
    copy_files(base.path(), &root.join("wal-v1"));

    // Torn: a third session appends without syncing and "crashes" (drop
    // without close); then the file loses the end of record 14.
    let torn = tempfile::tempdir().expect("tempdir");
    copy_files(base.path(), torn.path());
    {
        let p = MmapPersister::open(torn.path(), cfg(Durability::None)).expect("open");
        let mut at = HEADER_LEN as u64;
        for (lsn, k) in torn_extra() {
            if lsn == 14 {
                assert_eq!(at, TORN_RECORD_AT);
            }
            assert_eq!(append(&p, &k), Lsn(lsn));
            at += padded(match &k {
                Kind::Slice { data, .. } => 48 + data.len(),
                _ => unreachable!(),
            }) as u64;
        }
    }
    fs::OpenOptions::new()
        .write(true)
        .open(torn.path().join(SEG13))
        .and_then(|f| f.set_len(TORN_CUT))
        .expect("cut");
    copy_files(torn.path(), &root.join("wal-v1-torn"));

    // Corrupt: one bit of record 2's data.
    let dst = root.join("wal-v1-corrupt");
    copy_files(base.path(), &dst);
    let mut b = fs::read(dst.join(SEG1)).expect("read");
    b[CORRUPT_BYTE as usize] ^= 0x04;
    fs::write(dst.join(SEG1), b).expect("write");

    // Foreign: another log with the same records 1..=12 in one segment,
    // then record 13 in its own segment 13, which is copied in.
    let other = tempfile::tempdir().expect("tempdir");
    write_sessions(
        other.path(),
        &[&all[..], &[(13, Kind::Remove { file: 99 })]],
    );
    let dst = root.join("wal-v1-foreign");
    copy_files(base.path(), &dst);
    fs::copy(other.path().join(SEG13), dst.join(SEG13)).expect("copy");
}

/// The fixture directory `name`, regenerated first (once per process) if
/// `SLICEFS_BLESS=1`.
fn fixture(name: &str) -> PathBuf {
    static BLESSED: OnceLock<()> = OnceLock::new();
    if std::env::var("SLICEFS_BLESS").as_deref() == Ok("1") {
        BLESSED.get_or_init(|| generate(Path::new(FIXTURES)));
    }
    Path::new(FIXTURES).join(name)
}

// ---------------------------------------------------------------------------
// Checks

/// Name and bytes of the files of a fixture.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, fs::read(e.path()).expect("read"))
        })
        .collect()
}

/// A writable copy of fixture `name` (open writes to the directory).
fn copy_of(name: &str) -> tempfile::TempDir {
    let dst = tempfile::tempdir().expect("tempdir");
    copy_files(&fixture(name), dst.path());
    dst
}

fn names(dir: &Path) -> Vec<String> {
    files(dir).into_keys().collect()
}

#[test]
fn fixtures_are_present_small_and_lock_free() {
    let mut total = 0;
    for name in NAMES {
        let f = files(&fixture(name));
        assert!(!f.contains_key(LOCK_FILE), "{name} holds a lock file");
        total += f.values().map(|b| b.len()).sum::<usize>();
    }
    assert!(total < 200 << 10, "fixtures take {total} bytes");
    assert_eq!(names(&fixture("wal-v1")), [SEG1, SEG7]);
    assert_eq!(names(&fixture("wal-v1-torn")), [SEG1, SEG7, SEG13]);
    assert_eq!(names(&fixture("wal-v1-corrupt")), [SEG1, SEG7]);
    assert_eq!(names(&fixture("wal-v1-foreign")), [SEG1, SEG7, SEG13]);
}

#[test]
fn wal_v1_recovers_every_record_exactly() {
    // The headers: version 1, one log id, first LSN as named.
    let f = files(&fixture("wal-v1"));
    let headers: Vec<SegmentHeader> = f
        .values()
        .map(|b| SegmentHeader::decode(b).expect("header"))
        .collect();
    assert_eq!(
        headers.iter().map(|h| h.first_lsn.0).collect::<Vec<_>>(),
        [1, 7]
    );
    assert_eq!(headers[0].wal_id, headers[1].wal_id);
    assert!(headers.iter().all(|h| !h.is_compacted()));

    let dir = copy_of("wal-v1");
    let p = MmapPersister::open(dir.path(), cfg(Durability::None)).expect("open");
    assert_eq!(recovered(&p), wal_v1());
    let st = p.open_stats();
    assert_eq!(st.records, 12);
    assert_eq!(st.by_type, [4, 2, 3, 3]);
    assert_eq!(st.segments, 2);
    assert_eq!(st.last_lsn, 12);
    assert_eq!(st.data_bytes, 100 + 37 + 300 + 1);
    assert_eq!(st.torn_bytes, 0);
    assert_eq!(st.segments_removed, 0);
    assert!(st.corruption.is_none());
    assert_eq!(p.wal_id(), headers[0].wal_id);
    assert_eq!(p.next_lsn(), Lsn(13));
    // The old segments are left as they were.
    p.close().unwrap();
    let after = files(dir.path());
    for (name, bytes) in &f {
        assert_eq!(after.get(name), Some(bytes), "{name} changed");
    }
}

#[test]
fn wal_v1_torn_cuts_the_partial_record() {
    let dir = copy_of("wal-v1-torn");
    let seg13 = dir.path().join(SEG13);
    assert_eq!(fs::metadata(&seg13).unwrap().len(), TORN_CUT);
    let mut want = wal_v1();
    want.push(torn_extra()[0].clone());

    let p = MmapPersister::open(dir.path(), cfg(Durability::None)).expect("open");
    assert_eq!(recovered(&p), want);
    let st = p.open_stats();
    assert_eq!(st.torn_bytes, TORN_CUT - TORN_RECORD_AT);
    assert!(st.corruption.is_none());
    assert_eq!(st.last_lsn, 13);
    assert_eq!(fs::metadata(&seg13).unwrap().len(), TORN_RECORD_AT);
    p.close().unwrap();
    drop(p);

    let p = MmapPersister::open(dir.path(), cfg(Durability::None)).expect("reopen");
    assert_eq!(recovered(&p), want);
    assert_eq!(p.open_stats().torn_bytes, 0);
    assert_eq!(p.next_lsn(), Lsn(14));
}

#[test]
fn wal_v1_corrupt_is_refused_or_tolerated() {
    let dir = copy_of("wal-v1-corrupt");
    let before = files(dir.path());
    match MmapPersister::open(dir.path(), cfg(Durability::None)) {
        Err(WalError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!((file.as_str(), offset), (SEG1, CORRUPT_RECORD_AT));
            assert!(reason.contains("checksum"), "{reason}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(p) => panic!(
            "opened a corrupt log: {} records, {:?}",
            recovered(&p).len(),
            p.open_stats()
        ),
    }
    let mut after = files(dir.path());
    after.remove(LOCK_FILE);
    assert_eq!(after, before, "a refused open changes nothing");

    let config = WalConfig {
        recovery_mode: RecoveryMode::TolerateCorruption,
        ..cfg(Durability::None)
    };
    let p = MmapPersister::open(dir.path(), config).expect("tolerant open");
    assert_eq!(recovered(&p), wal_v1()[..1]);
    let c = p.open_stats().corruption.clone().expect("corruption");
    assert_eq!((c.file.as_str(), c.offset), (SEG1, CORRUPT_RECORD_AT));
    let aside = fs::read(dir.path().join(format!("{SEG1}.corrupt"))).expect("moved aside");
    assert_eq!(Some(&aside), before.get(SEG1));
    p.close().unwrap();
    drop(p);

    let p = MmapPersister::open(dir.path(), cfg(Durability::None)).expect("strict reopen");
    assert_eq!(recovered(&p), wal_v1()[..1]);
    assert!(p.open_stats().corruption.is_none());
}

#[test]
fn wal_v1_foreign_is_refused_and_nothing_is_deleted() {
    let dir = copy_of("wal-v1-foreign");
    let before = files(dir.path());
    let wal_ids: Vec<u64> = before
        .values()
        .map(|b| SegmentHeader::decode(b).expect("header").wal_id)
        .collect();
    assert_eq!(wal_ids[0], wal_ids[1]);
    assert_ne!(wal_ids[0], wal_ids[2]);
    match MmapPersister::open(dir.path(), cfg(Durability::None)) {
        Err(WalError::BadHeader { file, reason }) => {
            assert_eq!(file, SEG13);
            assert!(reason.contains("belongs to another log"), "{reason}");
        }
        Err(e) => panic!("expected BadHeader, got {e}"),
        Ok(_) => panic!("opened a log holding a foreign segment"),
    }
    let mut after = files(dir.path());
    after.remove(LOCK_FILE);
    assert_eq!(after, before);
}

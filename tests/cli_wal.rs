//! `slicefs wal inspect|verify` run as a process against logs written by
//! `slicefs_wal`: clean, with a torn tail, corrupt, and not a log at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use slicefs_wal::format::{HEADER_LEN, RECORD_HEADER_LEN, SLICE_PAYLOAD_LEN};
use slicefs_wal::scan::scan;
use slicefs_wal::storage::MmapStorage;
use slicefs_wal::{
    ChunkIndex, Durability, FileId, FlushedMarker, Lsn, MmapPersister, Persister, SliceId,
    SliceWrite, WalConfig,
};

/// Slice records [`build_log`] writes, each of [`SLICE_LEN`] bytes.
const SLICES: u32 = 100;
const SLICE_LEN: usize = 1000;
/// Records [`build_log`] writes: the slices, one flushed marker, one
/// truncate, one remove.
const RECORDS: u64 = SLICES as u64 + 3;
/// Live bytes after [`build_log`], worked out by hand (see there).
const LIVE_BYTES: u64 = 45_000;

fn cfg() -> WalConfig {
    WalConfig {
        durability: Durability::Always,
        segment_bytes: 64 << 10,
        grow_bytes: 16 << 10,
        auto_reclaim: false,
        ..WalConfig::default()
    }
}

/// Writes a log that spans several segments and closes it.
///
/// Files 1..=4 get 25 slices each at offsets 0, 1000, .., 24000 of chunk 0
/// (file `f` at offset `k * 1000` has LSN `4k + f`). Then: file 1's bytes
/// 0..10000 are flushed up to LSN 40 (its slices k = 0..=9: 10000 bytes),
/// file 2 is truncated to 5000 bytes (20000 bytes go), file 3 is removed
/// (25000 bytes go). Live: 15000 + 5000 + 0 + 25000 = 45000 bytes.
fn build_log(dir: &Path) {
    let p = MmapPersister::open(dir, cfg()).expect("open");
    for i in 0..SLICES {
        let data = vec![i as u8; SLICE_LEN];
        p.append_slice(&SliceWrite {
            file: FileId(u64::from(i % 4) + 1),
            chunk: ChunkIndex(0),
            slice: SliceId(u64::from(i)),
            offset: (i / 4) * SLICE_LEN as u32,
            data: &data,
        })
        .expect("append slice");
    }
    p.append_flushed(&FlushedMarker {
        file: FileId(1),
        chunk: ChunkIndex(0),
        offset: 0,
        len: 10_000,
        upto: Lsn(40),
    })
    .expect("append flushed");
    p.append_truncate(FileId(2), 5000).expect("append truncate");
    p.append_remove(FileId(3)).expect("append remove");
    p.close().expect("close");
}

/// Reopens and closes the log: the new segment's header then records a
/// watermark covering every record, so damage before it is corruption.
fn reopen_and_close(dir: &Path) -> u64 {
    let p = MmapPersister::open(dir, cfg()).expect("reopen");
    let live = p.live_bytes();
    p.close().expect("close");
    live
}

/// Segment file names in `dir`, sorted (that is LSN order).
fn segment_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal") || n.ends_with(".cwal"))
        .collect();
    v.sort();
    v
}

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn slicefs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slicefs"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run slicefs")
}

fn wal(cmd: &str, dir: &Path, extra: &[&str]) -> Output {
    let dir = dir.to_str().expect("utf-8 temp path");
    let mut args = vec!["wal", cmd, dir];
    args.extend_from_slice(extra);
    slicefs(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn new_log() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    build_log(&dir);
    (tmp, dir)
}

#[test]
fn inspect_prints_segments_counts_and_live_bytes_and_changes_nothing() {
    let (_tmp, dir) = new_log();
    let names = segment_names(&dir);
    assert!(names.len() > 1, "expected several segments, got {names:?}");
    let before = snapshot(&dir);

    let out = wal("inspect", &dir, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for name in &names {
        assert!(text.contains(name.as_str()), "{name} missing in:\n{text}");
    }
    let total = text
        .lines()
        .find(|l| l.starts_with("total ("))
        .unwrap_or_else(|| panic!("no total row in:\n{text}"));
    let cells: Vec<&str> = total.split_whitespace().collect();
    // total (N segments) BYTES LSNS RECORDS SLICE REMOVE TRUNCATE FLUSHED DATA
    assert_eq!(
        cells[4..],
        ["1..103", "103", "100", "1", "1", "1", "100000"],
        "{total}"
    );
    assert!(
        text.contains(&format!("live bytes     {LIVE_BYTES} ")),
        "{text}"
    );
    assert!(text.contains("LOCK"), "{text}");
    assert!(text.contains("failure        none"), "{text}");

    let out = wal("inspect", &dir, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["totals"]["records"], RECORDS);
    assert_eq!(json["totals"]["by_type"]["slice"], u64::from(SLICES));
    assert_eq!(json["totals"]["by_type"]["remove"], 1);
    assert_eq!(json["totals"]["by_type"]["truncate"], 1);
    assert_eq!(json["totals"]["by_type"]["flushed"], 1);
    assert_eq!(json["totals"]["data_bytes"], 100_000);
    assert_eq!(json["live_data_bytes"], LIVE_BYTES);
    assert_eq!(json["other_files"]["lock"], true);
    assert!(json["failure"].is_null());
    let segs = json["segments"].as_array().unwrap();
    let json_names: Vec<&str> = segs.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(json_names, names);
    let per_segment: u64 = segs.iter().map(|s| s["records"].as_u64().unwrap()).sum();
    assert_eq!(per_segment, RECORDS);
    assert!(segs.iter().all(|s| s["kind"] == "normal"));

    assert_eq!(snapshot(&dir), before, "inspect changed the log directory");
    // The persister's own index agrees with the CLI's model.
    assert_eq!(reopen_and_close(&dir), LIVE_BYTES);
}

#[test]
fn verify_passes_a_clean_log() {
    let (_tmp, dir) = new_log();
    let segments = segment_names(&dir).len();
    let out = wal("verify", &dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("ok: {RECORDS} records, LSN 1..{RECORDS}, {segments} segments")
    );
}

#[test]
fn verify_reports_a_torn_tail_with_exit_1() {
    let (_tmp, dir) = new_log();
    let last = segment_names(&dir).pop().unwrap();
    let path = dir.join(&last);
    // The last record is the remove: a 32-byte record (24 header + 8). Cut
    // it in the middle.
    let len = std::fs::metadata(&path).unwrap().len();
    let record_start = len - 32;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let log = scan(&MmapStorage::new(&dir).unwrap()).unwrap();
    let f = log.failure.as_ref().expect("a failure");
    assert!(f.torn, "the setup should make a torn tail: {f:?}");
    assert_eq!((f.file.as_str(), f.offset), (last.as_str(), record_start));

    let out = wal("verify", &dir, &[]);
    let line = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{line}{}", stderr(&out));
    assert!(line.contains("torn tail"), "{line}");
    assert!(line.contains(&last), "{line}");
    assert!(line.contains(&format!("offset {record_start}")), "{line}");

    let out = wal("inspect", &dir, &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "torn tail at {last} offset {record_start}: record length"
        )),
        "{text}"
    );
    assert!(text.contains("will be cut at next open"), "{text}");
}

#[test]
fn verify_reports_corruption_with_exit_2() {
    let (_tmp, dir) = new_log();
    reopen_and_close(&dir);
    let first = segment_names(&dir).remove(0);
    let path = dir.join(&first);
    let mut bytes = std::fs::read(&path).unwrap();
    let in_data = HEADER_LEN + RECORD_HEADER_LEN + SLICE_PAYLOAD_LEN + 10;
    bytes[in_data] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let out = wal("verify", &dir, &[]);
    let line = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{line}{}", stderr(&out));
    assert!(line.contains("CORRUPTION"), "{line}");
    assert!(line.contains(&first), "{line}");
    assert!(line.contains(&format!("offset {HEADER_LEN}")), "{line}");
    assert!(line.contains("checksum"), "{line}");

    let out = wal("inspect", &dir, &["--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["failure"]["kind"], "corrupt");
    assert_eq!(json["failure"]["file"], first.as_str());
    assert_eq!(json["failure"]["offset"], HEADER_LEN as u64);
    assert_eq!(json["totals"]["records"], 0);
    assert_eq!(json["live_data_bytes"], 0);
    assert_eq!(json["segments"][1]["scanned"], false);
}

#[test]
fn errors_are_reported_with_exit_3_and_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |out: Output, what: &str| {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{what}: {err}");
        assert!(err.starts_with("error: "), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        err
    };

    let missing = tmp.path().join("missing");
    for cmd in ["inspect", "verify"] {
        let err = check(wal(cmd, &missing, &[]), "missing directory");
        assert!(err.contains("cannot read the log directory"), "{err}");
    }
    assert!(!missing.exists(), "a missing directory must not be created");

    let not_log = tmp.path().join("not-a-log");
    std::fs::create_dir(&not_log).unwrap();
    std::fs::write(not_log.join("notes.txt"), b"hello").unwrap();
    let err = check(wal("verify", &not_log, &[]), "not a log");
    assert!(err.contains("not a slicefs log directory"), "{err}");

    let err = check(
        wal("inspect", &not_log.join("notes.txt"), &[]),
        "a file, not a directory",
    );
    assert!(err.contains("not a directory"), "{err}");

    // Two logs written the same way have the same segment names; one
    // segment of the other log makes this one foreign.
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    build_log(&a);
    build_log(&b);
    let second = segment_names(&a)[1].clone();
    std::fs::copy(b.join(&second), a.join(&second)).unwrap();
    for cmd in ["inspect", "verify"] {
        let err = check(wal(cmd, &a, &[]), "foreign segment");
        assert!(err.contains("another log"), "{err}");
        assert!(err.contains(&second), "{err}");
    }
}

#[test]
fn help_documents_the_exit_codes_and_bad_usage_exits_64() {
    let out = slicefs(&["wal", "verify", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    assert!(help.contains("Exit status"), "{help}");
    assert!(
        help.contains("torn tail") && help.contains("corruption"),
        "{help}"
    );

    let out = slicefs(&["wal", "verify"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let out = slicefs(&["--log-level", "loud", "wal", "verify", "/tmp"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

/// Regressions (operations issue): `slicefs status` failed to parse the
/// empty status.json a power loss leaves, and panicked with "Broken pipe"
/// when its reader went away (`slicefs status | head -3`).
#[test]
fn status_survives_an_empty_status_file_and_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("status.json"), b"").unwrap();
    let out = slicefs(&["status", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("nothing is mounted") && err.contains("empty or damaged"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // A status of a live process (this test) with a reader that is gone.
    let status = format!(
        r#"{{"pid": {}, "mountpoint": "/mnt", "dirty_bytes": 0, "uploads_in_flight": 0,
            "uploads": 0, "upload_rate": 0, "oldest_dirty_age_s": null, "stalled_for_s": null,
            "last_error": null, "gc_pending": 0, "state": "mounted"}}"#,
        std::process::id()
    );
    std::fs::write(dir.path().join("status.json"), status).unwrap();
    for json in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_slicefs"));
        cmd.arg("status").arg(d);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = slicefs(&["status", d]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("mountpoint        /mnt"));
}

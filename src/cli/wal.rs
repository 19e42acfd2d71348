//! `slicefs wal inspect|verify`: read-only views of a write-ahead log
//! directory, built on [`slicefs_wal::scan::scan`].
//!
//! Neither command takes the directory lock or changes a byte: they can
//! run beside a mounted file system (a log being written may then show a
//! torn tail that is only the append in flight). The live-bytes figure is
//! the scan's: the persister's own live index over the valid prefix.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail, ensure};
use clap::Subcommand;
use serde::Serialize;
use slicefs_wal::LOCK_FILE;
use slicefs_wal::scan::{
    COMPACTED_SUFFIX, CORRUPT_SUFFIX, LogScan, ScannedSegment, TMP_SUFFIX, scan,
};
use slicefs_wal::storage::{MmapFile, MmapStorage};

/// Exit code of `verify` for a torn tail.
const EXIT_TORN: u8 = 1;
/// Exit code of `verify` for corruption.
const EXIT_CORRUPT: u8 = 2;

/// The `slicefs wal` commands.
#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Print what a log directory holds: log id, durable watermark, the
    /// segment files with their records, live (un-flushed) bytes, other
    /// files, and where the valid prefix ends if it ends early.
    ///
    /// Read-only: takes no lock and changes nothing. Exits 0 whenever the
    /// log could be read, whatever it found (`verify` gives a verdict).
    Inspect {
        /// The log directory.
        dir: PathBuf,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every record of a log directory and print a one-line verdict.
    ///
    /// Read-only: takes no lock and changes nothing.
    #[command(after_help = "\
Exit status:
  0  every record checks
  1  torn tail: records after the durable watermark are incomplete (a crash
     explains it; the next open cuts them, nothing acknowledged is lost)
  2  corruption: a record the log acknowledged as durable fails a check (the
     next open refuses the log unless corruption is tolerated)
  3  the directory could not be read or is not a slicefs log")]
    Verify {
        /// The log directory.
        dir: PathBuf,
    },
}

/// Runs a `wal` command.
pub fn run(cmd: WalCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WalCommand::Inspect { dir, json } => {
            let report = inspect(&dir)?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
                writeln!(out).context("writing the report")?;
            } else {
                out.write_all(render_text(&report).as_bytes())
                    .context("writing the report")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Verify { dir } => {
            let log = load(&dir)?;
            let (line, code) = verdict(&log);
            println!("{line}");
            Ok(ExitCode::from(code))
        }
    }
}

/// Scans `dir` after checking that it exists and looks like a log (so that
/// a typo is an error, not an "empty log").
fn load(dir: &Path) -> anyhow::Result<LogScan<MmapFile>> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the log directory {}", dir.display()))?;
    ensure!(meta.is_dir(), "{} is not a directory", dir.display());
    // `MmapStorage::new` would create a missing directory: checked above.
    let storage = MmapStorage::new(dir)
        .with_context(|| format!("cannot open the log directory {}", dir.display()))?;
    let log =
        scan(&storage).with_context(|| format!("cannot scan the log in {}", dir.display()))?;
    let log_like = |n: &String| n == LOCK_FILE || n.ends_with(CORRUPT_SUFFIX);
    if log.segments.is_empty()
        && log.superseded.is_empty()
        && log.tmp_files.is_empty()
        && !log.other_files.iter().any(log_like)
    {
        bail!(
            "{} is not a slicefs log directory: it holds no segment files (*.wal, *.cwal) \
             and no {LOCK_FILE} file",
            dir.display()
        );
    }
    Ok(log)
}

/// The one-line verdict of `verify` and its exit code.
fn verdict(log: &LogScan<MmapFile>) -> (String, u8) {
    let s = &log.stats;
    match &log.failure {
        None => (
            format!(
                "ok: {} records, LSN {}, {} segments",
                s.records,
                lsn_span(first_lsn(log), log.next_lsn.0),
                log.segments.len()
            ),
            0,
        ),
        Some(f) if f.torn => (
            format!(
                "torn tail in {} at offset {}: {} ({} bytes after LSN {}, past the durable \
                 watermark {}; the next open cuts them)",
                f.file, f.offset, f.reason, s.torn_bytes, s.last_lsn, s.watermark
            ),
            EXIT_TORN,
        ),
        Some(f) => (
            format!(
                "CORRUPTION in {} at offset {}: {} (records up to LSN {} were acknowledged \
                 durable, the valid prefix ends at LSN {})",
                f.file, f.offset, f.reason, s.watermark, s.last_lsn
            ),
            EXIT_CORRUPT,
        ),
    }
}

fn first_lsn(log: &LogScan<MmapFile>) -> u64 {
    log.segments.first().map_or(1, |s| s.lsn_range.0)
}

/// `first..last` (both included) for the half-open LSN range
/// `first..end`; `none` when it is empty.
fn lsn_span(first: u64, end: u64) -> String {
    if end > first {
        format!("{first}..{}", end - 1)
    } else {
        "none".into()
    }
}

/// What `inspect` prints, as text or JSON.
#[derive(Debug, Serialize)]
struct InspectReport {
    /// The directory inspected.
    dir: String,
    /// The log id in hex; `None` when no segment header could be read.
    wal_id: Option<String>,
    /// The highest durable watermark found in a segment header.
    watermark: u64,
    /// The LSN the next record after the valid prefix would get.
    next_lsn: u64,
    /// Segment files in LSN order (superseded ones are in `other_files`).
    segments: Vec<SegmentReport>,
    /// Sums over the scanned segments.
    totals: Totals,
    /// Slice bytes of the valid prefix not yet flushed, removed or
    /// truncated away: what a restart would replay into the cache.
    live_data_bytes: u64,
    /// Files that are not live segments.
    other_files: OtherFiles,
    /// Where the valid prefix ends early, if it does.
    failure: Option<FailureReport>,
}

#[derive(Debug, Serialize)]
struct SegmentReport {
    name: String,
    /// `normal` or `compacted` (from the header; from the name when the
    /// header does not decode).
    kind: &'static str,
    /// Whether the header decoded.
    header_ok: bool,
    /// False for segments after a failure: the scan stops at the first.
    scanned: bool,
    /// File length.
    bytes: u64,
    /// The first LSN the segment may hold.
    first_lsn: u64,
    /// Exclusive end of the LSN range the segment covers.
    end_lsn: u64,
    records: u64,
    by_type: TypeCounts,
    /// Slice data bytes.
    data_bytes: u64,
    /// Offset after the last valid record.
    valid_end: u64,
}

#[derive(Debug, Default, Serialize)]
struct TypeCounts {
    slice: u64,
    remove: u64,
    truncate: u64,
    flushed: u64,
}

impl From<[u64; 4]> for TypeCounts {
    fn from(t: [u64; 4]) -> Self {
        TypeCounts {
            slice: t[0],
            remove: t[1],
            truncate: t[2],
            flushed: t[3],
        }
    }
}

#[derive(Debug, Serialize)]
struct Totals {
    segments: u64,
    bytes: u64,
    records: u64,
    by_type: TypeCounts,
    data_bytes: u64,
    /// Bytes the valid records take on disk, headers and padding included.
    record_bytes: u64,
    /// First LSN of the log.
    first_lsn: u64,
    /// Last valid LSN (0 for an empty log).
    last_lsn: u64,
}

#[derive(Debug, Serialize)]
struct OtherFiles {
    /// The directory lock file exists (it is not held by `inspect`).
    lock: bool,
    /// Damaged segments moved aside by a tolerant open.
    corrupt: Vec<String>,
    /// Leftovers of an interrupted compaction (removed at next open).
    tmp: Vec<String>,
    /// Segments replaced by a completed compaction (removed at next open).
    superseded: Vec<String>,
    /// Anything else.
    unknown: Vec<String>,
}

#[derive(Debug, Serialize)]
struct FailureReport {
    /// `torn` (after the watermark: cut at next open) or `corrupt`.
    kind: &'static str,
    file: String,
    offset: u64,
    reason: String,
    /// Bytes that the next open cuts (torn tails only).
    torn_bytes: u64,
}

fn inspect(dir: &Path) -> anyhow::Result<InspectReport> {
    let log = load(dir)?;
    let scanned_upto = log
        .failure
        .as_ref()
        .map_or(log.segments.len(), |f| f.segment + 1);
    let segments: Vec<SegmentReport> = log
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| segment_report(s, i < scanned_upto))
        .collect();
    let s = &log.stats;
    let totals = Totals {
        segments: segments.len() as u64,
        bytes: segments.iter().map(|s| s.bytes).sum(),
        records: s.records,
        by_type: s.by_type.into(),
        data_bytes: s.data_bytes,
        record_bytes: s.record_bytes,
        first_lsn: first_lsn(&log),
        last_lsn: s.last_lsn,
    };
    let live_data_bytes = s.live_data_bytes;
    let mut other = OtherFiles {
        lock: false,
        corrupt: Vec::new(),
        tmp: sorted(log.tmp_files.clone()),
        superseded: sorted(log.superseded.clone()),
        unknown: Vec::new(),
    };
    for name in sorted(log.other_files.clone()) {
        if name == LOCK_FILE {
            other.lock = true;
        } else if name.ends_with(CORRUPT_SUFFIX) {
            other.corrupt.push(name);
        } else if name.ends_with(TMP_SUFFIX) {
            other.tmp.push(name);
        } else {
            other.unknown.push(name);
        }
    }
    let failure = log.failure.as_ref().map(|f| FailureReport {
        kind: if f.torn { "torn" } else { "corrupt" },
        file: f.file.clone(),
        offset: f.offset,
        reason: f.reason.clone(),
        torn_bytes: if f.torn { s.torn_bytes } else { 0 },
    });
    Ok(InspectReport {
        dir: dir.display().to_string(),
        wal_id: log.wal_id.map(|id| format!("{id:016x}")),
        watermark: log.watermark.0,
        next_lsn: log.next_lsn.0,
        segments,
        totals,
        live_data_bytes,
        other_files: other,
        failure,
    })
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn segment_report(s: &ScannedSegment<MmapFile>, scanned: bool) -> SegmentReport {
    let compacted = match s.header {
        Some(h) => h.is_compacted(),
        None => s.name.ends_with(COMPACTED_SUFFIX),
    };
    let end_lsn = match s.header {
        Some(h) if h.is_compacted() => h.end_lsn.0.max(s.lsn_range.1),
        _ => s.lsn_range.1,
    };
    SegmentReport {
        name: s.name.clone(),
        kind: if compacted { "compacted" } else { "normal" },
        header_ok: s.header.is_some(),
        scanned,
        bytes: s.len,
        first_lsn: s.lsn_range.0,
        end_lsn,
        records: s.records,
        by_type: s.by_type.into(),
        data_bytes: s.data_bytes,
        valid_end: s.valid_end,
    }
}

fn render_text(r: &InspectReport) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(o, "log directory  {}", r.dir);
    let _ = writeln!(
        o,
        "log id         {}",
        r.wal_id
            .as_deref()
            .unwrap_or("unknown (no readable segment header)")
    );
    let _ = writeln!(
        o,
        "watermark      LSN {} (durable when last recorded)",
        r.watermark
    );
    let _ = writeln!(o, "next LSN       {}", r.next_lsn);
    let _ = writeln!(o);

    let mut rows = vec![
        [
            "SEGMENT",
            "KIND",
            "BYTES",
            "FIRST LSN",
            "LSNS",
            "RECORDS",
            "SLICE",
            "REMOVE",
            "TRUNCATE",
            "FLUSHED",
            "DATA BYTES",
            "VALID END",
        ]
        .map(String::from),
    ];
    for s in &r.segments {
        let n = |v: u64| {
            if s.scanned { v.to_string() } else { "-".into() }
        };
        let kind = if s.header_ok {
            s.kind.to_string()
        } else {
            format!("{} (bad header)", s.kind)
        };
        rows.push([
            s.name.clone(),
            kind,
            s.bytes.to_string(),
            s.first_lsn.to_string(),
            if s.scanned {
                lsn_span(s.first_lsn, s.end_lsn)
            } else {
                "not scanned".into()
            },
            n(s.records),
            n(s.by_type.slice),
            n(s.by_type.remove),
            n(s.by_type.truncate),
            n(s.by_type.flushed),
            n(s.data_bytes),
            n(s.valid_end),
        ]);
    }
    let t = &r.totals;
    rows.push([
        format!(
            "total ({} segment{})",
            t.segments,
            if t.segments == 1 { "" } else { "s" }
        ),
        String::new(),
        t.bytes.to_string(),
        String::new(),
        lsn_span(t.first_lsn, t.last_lsn + 1),
        t.records.to_string(),
        t.by_type.slice.to_string(),
        t.by_type.remove.to_string(),
        t.by_type.truncate.to_string(),
        t.by_type.flushed.to_string(),
        t.data_bytes.to_string(),
        String::new(),
    ]);
    render_table(&mut o, &rows);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "record bytes   {} (valid records on disk, headers and padding included)",
        t.record_bytes
    );
    let _ = writeln!(
        o,
        "live bytes     {} (slice bytes not yet flushed, removed or truncated away)",
        r.live_data_bytes
    );

    let f = &r.other_files;
    let mut other: Vec<String> = Vec::new();
    if f.lock {
        other.push(format!("{LOCK_FILE} (directory lock file)"));
    }
    other.extend(
        f.corrupt
            .iter()
            .map(|n| format!("{n} (damaged, moved aside)")),
    );
    other.extend(
        f.tmp
            .iter()
            .map(|n| format!("{n} (interrupted compaction)")),
    );
    other.extend(
        f.superseded
            .iter()
            .map(|n| format!("{n} (superseded by a compaction)")),
    );
    other.extend(
        f.unknown
            .iter()
            .map(|n| format!("{n} (not part of the log)")),
    );
    if other.is_empty() {
        let _ = writeln!(o, "other files    none");
    } else {
        let _ = writeln!(o, "other files    {}", other.join(", "));
    }

    match &r.failure {
        None => {
            let _ = writeln!(o, "failure        none: every record checks");
        }
        Some(x) if x.kind == "torn" => {
            let _ = writeln!(
                o,
                "failure        torn tail at {} offset {}: {} — will be cut at next open \
                 ({} bytes)",
                x.file, x.offset, x.reason, x.torn_bytes
            );
        }
        Some(x) => {
            let _ = writeln!(
                o,
                "failure        CORRUPTION at {} offset {}: {}",
                x.file, x.offset, x.reason
            );
        }
    }
    o
}

/// Writes `rows` (the first is the heading) as aligned columns: the first
/// two left-aligned, the numbers right-aligned.
fn render_table<const N: usize>(o: &mut String, rows: &[[String; N]]) {
    let mut width = [0usize; N];
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(width).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            if i < 2 {
                let _ = write!(line, "{cell:<w$}");
            } else {
                let _ = write!(line, "{cell:>w$}");
            }
        }
        let _ = writeln!(o, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_span_is_inclusive_and_says_none_when_empty() {
        assert_eq!(lsn_span(1, 11), "1..10");
        assert_eq!(lsn_span(5, 5), "none");
    }
}

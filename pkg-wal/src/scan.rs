//! The read-only scan of a log directory: which segments there are, which
//! records are valid, where the valid prefix ends and whether what follows
//! is a torn tail or corruption. [`crate::MmapPersister`] acts on it at
//! open; `slicefs wal inspect|verify` print it.

use std::time::Instant;

use crate::error::WalError;
use crate::format::{
    HEADER_LEN, MAX_LSN, RECORD_HEADER_LEN, SLICE_PAYLOAD_LEN, SegmentHeader, Stop, decode_record,
    decode_watermark,
};
use crate::index::LiveIndex;
use crate::recovery::RecoveryStats;
use crate::storage::{SegmentFile, Storage};
use crate::types::Lsn;

/// Suffix of a normal segment file: `{first_lsn:016x}.wal`.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a compacted segment: `{first_lsn:016x}-{end_lsn:016x}.cwal`.
pub const COMPACTED_SUFFIX: &str = ".cwal";
/// Suffix of a compaction in progress (removed at open).
pub const TMP_SUFFIX: &str = ".tmp";
/// Suffix given to damaged files moved aside.
pub const CORRUPT_SUFFIX: &str = ".corrupt";

/// Name of a normal segment starting at `first`.
pub fn segment_name(first: Lsn) -> String {
    format!("{:016x}{SEGMENT_SUFFIX}", first.0)
}

/// Name of a compacted segment covering `first..end`.
pub fn compacted_name(first: Lsn, end: Lsn) -> String {
    format!("{:016x}-{:016x}{COMPACTED_SUFFIX}", first.0, end.0)
}

/// Parses a segment name into (first LSN, end LSN for compacted).
fn parse_name(name: &str) -> Option<(u64, Option<u64>)> {
    if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
        (stem.len() == 16)
            .then(|| u64::from_str_radix(stem, 16).ok())
            .flatten()
            .map(|a| (a, None))
    } else if let Some(stem) = name.strip_suffix(COMPACTED_SUFFIX) {
        let (a, b) = stem.split_once('-')?;
        Some((
            u64::from_str_radix(a, 16).ok()?,
            Some(u64::from_str_radix(b, 16).ok()?),
        ))
    } else {
        None
    }
}

/// One segment as scanned.
pub struct ScannedSegment<F> {
    /// File name.
    pub name: String,
    /// The open file.
    pub file: F,
    /// The header, if it decoded.
    pub header: Option<SegmentHeader>,
    /// File length.
    pub len: u64,
    /// Offset after the last valid record.
    pub valid_end: u64,
    /// Valid records.
    pub records: u64,
    /// Valid records by type: slice, remove, truncate, flushed.
    pub by_type: [u64; 4],
    /// Slice data bytes in valid records.
    pub data_bytes: u64,
    /// LSN range the valid records cover: `first..end`.
    pub lsn_range: (u64, u64),
}

/// Where the valid prefix ends, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Index into [`LogScan::segments`].
    pub segment: usize,
    /// The file.
    pub file: String,
    /// Byte offset of the first bad byte.
    pub offset: u64,
    /// Which check failed.
    pub reason: String,
    /// True when the failure lies after the durable watermark: a torn tail
    /// that a crash explains. False: corruption of acknowledged records.
    pub torn: bool,
    /// True when the disk could not read the bytes (a media error, see
    /// [`crate::media`]): never torn, whatever the watermark says.
    pub media: bool,
}

/// The result of scanning a log directory.
pub struct LogScan<F> {
    /// Identity of the log (`None` for an empty directory).
    pub wal_id: Option<u64>,
    /// Segments in LSN order, superseded ones left out.
    pub segments: Vec<ScannedSegment<F>>,
    /// Segments replaced by a completed compaction.
    pub superseded: Vec<String>,
    /// Leftovers of an interrupted compaction.
    pub tmp_files: Vec<String>,
    /// Files in the directory that are not part of the log.
    pub other_files: Vec<String>,
    /// The first failed check, if any.
    pub failure: Option<Failure>,
    /// The highest valid durable watermark in any header.
    pub watermark: Lsn,
    /// The LSN the next record after the valid prefix gets.
    pub next_lsn: Lsn,
    /// Counts for [`RecoveryStats`]; `live_data_bytes` is that of the
    /// valid prefix.
    pub stats: RecoveryStats,
    /// Live bytes of the valid prefix, where they are (reused by open).
    pub(crate) index: LiveIndex,
}

/// Scans the log in `storage` without changing anything.
///
/// # Errors
/// [`WalError::BadHeader`] for a segment written by another log
/// (different `wal_id`) or by an unknown format version: those are never
/// cut as a torn tail. I/O errors as [`WalError::Io`].
pub fn scan<S: Storage>(storage: &S) -> Result<LogScan<S::File>, WalError> {
    let t0 = Instant::now();
    let dir = storage.describe();
    let mut segs: Vec<(u64, Option<u64>, String)> = Vec::new();
    let (mut tmp_files, mut other_files) = (Vec::new(), Vec::new());
    for name in storage.list().map_err(|e| WalError::io("list", &dir, e))? {
        if name.ends_with(TMP_SUFFIX) {
            tmp_files.push(name);
        } else if let Some((first, end)) =
            parse_name(&name).filter(|(a, b)| *a <= MAX_LSN && b.is_none_or(|b| b <= MAX_LSN))
        {
            segs.push((first, end, name));
        } else {
            other_files.push(name);
        }
    }
    // Oldest first; a compacted segment before the normal one it replaces,
    // the widest compaction first.
    segs.sort_by_key(|(first, end, _)| (*first, std::cmp::Reverse(end.unwrap_or(0))));

    let mut out = LogScan {
        wal_id: None,
        segments: Vec::new(),
        superseded: Vec::new(),
        tmp_files,
        other_files,
        failure: None,
        watermark: Lsn(0),
        next_lsn: Lsn(1),
        stats: RecoveryStats::default(),
        index: LiveIndex::default(),
    };
    let mut covered_to = 0u64; // end of the widest compaction seen
    for (first, end, name) in segs {
        if first < covered_to {
            out.superseded.push(name);
            continue;
        }
        let file = storage
            .open(&name)
            .map_err(|e| WalError::io("open", &name, e))?;
        let len = file.published();
        let header = match file.read(0, 64) {
            None => Err(format!("file is {len} bytes, shorter than the header")),
            Some(b) => {
                let mut full = [0u8; HEADER_LEN];
                full[..64].copy_from_slice(b);
                match crate::media::check(b) {
                    Ok(()) => SegmentHeader::decode(&full),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let header = match header {
            Ok(h) => {
                let bad = |reason: String| WalError::BadHeader {
                    file: name.clone(),
                    reason,
                };
                if *out.wal_id.get_or_insert(h.wal_id) != h.wal_id {
                    return Err(bad(format!(
                        "segment belongs to another log (log id {:016x}, this log is {:016x})",
                        h.wal_id,
                        out.wal_id.unwrap_or(0)
                    )));
                }
                if h.first_lsn.0 != first || (h.is_compacted() && Some(h.end_lsn.0) != end) {
                    return Err(bad("header LSN range does not match the file name".into()));
                }
                if h.is_compacted() {
                    covered_to = h.end_lsn.0;
                }
                if let Some(w) = decode_watermark(h.record_seed(), &file.watermark()) {
                    out.watermark = out.watermark.max(w);
                }
                Some(h)
            }
            Err(reason) if reason.contains("version") => {
                return Err(WalError::BadHeader { file: name, reason });
            }
            Err(_) => None,
        };
        out.segments.push(ScannedSegment {
            name,
            file,
            header,
            len,
            valid_end: 0,
            records: 0,
            by_type: [0; 4],
            data_bytes: 0,
            lsn_range: (first, first),
        });
    }

    let mut expected = out.segments.first().map_or(1, |s| s.lsn_range.0);
    for (i, seg) in out.segments.iter_mut().enumerate() {
        out.stats.segments += 1;
        let fail = |offset: u64, reason: String| Failure {
            segment: i,
            file: seg.name.clone(),
            offset,
            reason,
            torn: false,
            media: false,
        };
        let Some(h) = seg.header else {
            let (reason, media) = bad_header_reason(&seg.file);
            let mut f = fail(0, reason);
            f.media = media;
            out.failure = Some(f);
            break;
        };
        if h.first_lsn.0 != expected {
            out.failure = Some(fail(
                0,
                format!(
                    "segment starts at LSN {} but LSN {expected} comes next",
                    h.first_lsn
                ),
            ));
            break;
        }
        let seed = h.record_seed();
        let limit = if h.is_compacted() {
            h.data_end
        } else {
            seg.len
        };
        let bytes = match seg
            .file
            .read(HEADER_LEN as u64, limit.saturating_sub(HEADER_LEN as u64))
        {
            Some(b) if limit >= HEADER_LEN as u64 => b,
            _ => {
                // The header itself is incomplete, or a compacted segment
                // is shorter than its data end.
                let (offset, reason) = if seg.len < HEADER_LEN as u64 {
                    (
                        0,
                        format!(
                            "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
                            seg.len
                        ),
                    )
                } else {
                    (
                        seg.len,
                        format!("file ends at {} before its data end {limit}", seg.len),
                    )
                };
                out.failure = Some(fail(offset, reason));
                break;
            }
        };
        let mut at = 0usize;
        let mut last = expected.saturating_sub(1);
        let mut failure = None;
        loop {
            match decode_record(bytes, at, seed) {
                Ok((rec, used)) => {
                    let ok = if h.is_compacted() {
                        rec.lsn.0 >= last.max(h.first_lsn.0) && rec.lsn < h.end_lsn
                    } else {
                        rec.lsn.0 == expected
                    };
                    if !ok {
                        failure = Some(format!(
                            "record has LSN {} where LSN {expected} comes next",
                            rec.lsn
                        ));
                        break;
                    }
                    let t = match rec.kind {
                        crate::RecordKind::Slice(w) => {
                            seg.data_bytes += w.data.len() as u64;
                            0
                        }
                        crate::RecordKind::Remove { .. } => 1,
                        crate::RecordKind::Truncate { .. } => 2,
                        crate::RecordKind::Flushed(_) => 3,
                    };
                    let data_at = (HEADER_LEN + at + RECORD_HEADER_LEN + SLICE_PAYLOAD_LEN) as u64;
                    out.index.apply(rec.lsn, h.first_lsn.0, data_at, &rec.kind);
                    seg.by_type[t] += 1;
                    seg.records += 1;
                    out.stats.record_bytes += used as u64;
                    last = rec.lsn.0;
                    expected = last + 1;
                    at += used;
                }
                Err(Stop::End) => {
                    if h.is_compacted() && at != bytes.len() {
                        failure = Some(format!(
                            "compacted segment ends at {} before its data end {}",
                            HEADER_LEN + at,
                            h.data_end
                        ));
                    }
                    break;
                }
                Err(Stop::Invalid(reason)) => {
                    failure = Some(reason);
                    break;
                }
            }
        }
        // The padding after the last record may be cut off by a crash.
        seg.valid_end = ((HEADER_LEN + at) as u64).min(seg.len);
        if h.is_compacted() && failure.is_none() {
            expected = h.end_lsn.0;
        }
        seg.lsn_range = (h.first_lsn.0, expected);
        for t in 0..4 {
            out.stats.by_type[t] += seg.by_type[t];
        }
        out.stats.records += seg.records;
        out.stats.data_bytes += seg.data_bytes;
        if let Err(e) = crate::media::check(bytes) {
            // Zeros where the disk failed: what the loop made of them
            // (an end, a bad CRC) is not the log's content.
            let page_at = HEADER_LEN as u64 + e.page.saturating_sub(bytes.as_ptr() as usize) as u64;
            seg.valid_end = seg.valid_end.min(page_at);
            let mut f = fail(seg.valid_end, format!("{e} (segment offset {page_at})"));
            f.media = true;
            out.failure = Some(f);
            break;
        }
        if let Some(reason) = failure {
            out.failure = Some(fail(seg.valid_end, reason));
            break;
        }
    }
    out.next_lsn = Lsn(expected);
    out.stats.live_data_bytes = out.index.live_bytes();
    out.stats.last_lsn = expected.saturating_sub(1);
    out.stats.watermark = out.watermark.0;
    if out.failure.is_none() && out.stats.last_lsn < out.watermark.0 {
        // Every check passed but the log ends before the watermark: the
        // acknowledged records after it are gone (zeros, a short file).
        let i = out.segments.len().saturating_sub(1);
        if let Some(last) = out.segments.get(i) {
            out.failure = Some(Failure {
                segment: i,
                file: last.name.clone(),
                offset: last.valid_end,
                reason: format!(
                    "the log ends at LSN {} but LSN {} was acknowledged durable",
                    out.stats.last_lsn, out.watermark
                ),
                torn: false,
                media: false,
            });
        }
    }
    if let Some(f) = out.failure.as_mut() {
        // Everything up to the watermark was durable when the watermark
        // was written, so a valid prefix that stops short of it lost
        // acknowledged records: corruption. Past it, a crash explains it.
        f.torn = !f.media && out.stats.last_lsn >= out.watermark.0;
        if f.torn {
            let seg_tail = out.segments[f.segment].len.saturating_sub(f.offset);
            let later: u64 = out.segments[f.segment + 1..].iter().map(|s| s.len).sum();
            out.stats.torn_bytes = seg_tail + later;
        }
    }
    out.stats.duration = t0.elapsed();
    Ok(out)
}

/// Why a segment's header did not decode, and whether the disk could not
/// read it (a media error).
fn bad_header_reason<F: SegmentFile>(file: &F) -> (String, bool) {
    match file.read(0, 64) {
        None => ("file is shorter than the header".into(), false),
        Some(b) => {
            let mut full = [0u8; HEADER_LEN];
            full[..64].copy_from_slice(b);
            if let Err(e) = crate::media::check(b) {
                return (e.to_string(), true);
            }
            (
                SegmentHeader::decode(&full).err().unwrap_or_default(),
                false,
            )
        }
    }
}

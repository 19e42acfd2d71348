//! Rebuilding the cache from the persister after a restart.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use slicefs_wal::{CHUNK_SIZE, FileId, Persister, RecordKind};

use crate::{CacheError, SliceCache};

/// What [`recover`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Files left with pending bytes: the transfer manager uploads them.
    pub files_with_pending: Vec<FileId>,
    /// Records replayed.
    pub records: u64,
    /// Slice bytes replayed.
    pub slice_bytes: u64,
    /// Pending bytes in the cache afterwards.
    pub pending_bytes: u64,
    /// Bytes dropped because a flushed marker said they are in the
    /// object store.
    pub flushed_bytes_dropped: u64,
    /// The highest LSN replayed.
    pub last_lsn: u64,
    /// Every truncate in the log after its file's last remove, as
    /// `(file, lsn, size)`, by file and then in LSN order. The metadata
    /// store applies, in this order, those it has not recorded (a crash
    /// between the log append and the metadata update): all of them, not
    /// only the last, since a write between two truncates is cut by the
    /// later one only where it reaches past that one's size.
    pub truncates: Vec<(FileId, slicefs_wal::Lsn, u64)>,
    /// Time taken (scan and rebuild).
    pub duration: Duration,
}

/// Streams the persister's records in LSN order into `cache`:
/// - a slice write becomes pending bytes with its original LSN;
/// - a remove drops everything of the file logged before it (a file
///   re-created later keeps its new data);
/// - a truncate cuts only earlier bytes;
/// - a flushed marker drops the covered earlier bytes: they are in the
///   object store and need no upload.
///
/// Memory stays bounded by the data not yet flushed at each point of the
/// log, not by the log's size. Recovery does not wait for dirty room: what
/// the log holds was accepted before the restart.
///
/// # Errors
/// [`CacheError::Wal`] if the log cannot be read; nothing is half-applied
/// silently (the caller must not serve requests after an error).
pub fn recover(
    persister: &dyn Persister,
    cache: &SliceCache,
) -> Result<RecoveryReport, CacheError> {
    recover_with_progress(persister, cache, &mut |_, _| {})
}

/// [`recover`], calling `progress(records_done, records_total)` every
/// 16,384 records and at the end (for a progress bar on large logs).
///
/// # Errors
/// As [`recover`].
pub fn recover_with_progress(
    persister: &dyn Persister,
    cache: &SliceCache,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RecoveryReport, CacheError> {
    let t0 = Instant::now();
    let mut report = RecoveryReport::default();
    let before = cache.stats().dirty_bytes;
    let mut rec = persister.recover()?;
    let total = rec.stats().records;
    let mut dropped = 0u64;
    let mut truncates: std::collections::BTreeMap<FileId, Vec<_>> = Default::default();
    while let Some(r) = rec.next_record_lent() {
        let (r, lent) = r?;
        report.records += 1;
        if report.records % 16_384 == 0 {
            progress(report.records, total);
        }
        report.last_lsn = r.lsn.0;
        match r.kind {
            RecordKind::Slice(w) => {
                report.slice_bytes += w.data.len() as u64;
                cache.observe_slice_id(w.slice);
                let offset = u64::from(w.chunk.0) * CHUNK_SIZE + u64::from(w.offset);
                // Large records stay in the log's pages (no copy).
                match &lent {
                    Some(b) => cache.insert_replayed_logged(w.file, offset, b, r.lsn),
                    None => cache.insert_replayed(w.file, offset, w.data, r.lsn),
                }
            }
            RecordKind::Remove { file } => {
                truncates.remove(&file);
                cache.remove(file);
            }
            RecordKind::Truncate { file, size } => {
                truncates.entry(file).or_default().push((r.lsn, size));
                cache.truncate(file, size);
            }
            RecordKind::Flushed(m) => {
                let pending = cache.dirty_bytes();
                cache.drop_flushed(m.file, m.chunk, m.offset, m.len, m.upto);
                dropped += pending.saturating_sub(cache.dirty_bytes());
            }
        }
    }
    progress(report.records, total.max(report.records));
    report.flushed_bytes_dropped = dropped;
    report.truncates = truncates
        .into_iter()
        .flat_map(|(f, ts)| ts.into_iter().map(move |(lsn, size)| (f, lsn, size)))
        .collect();
    report.pending_bytes = cache.stats().dirty_bytes.saturating_sub(before);
    let mut files: BTreeSet<FileId> = cache.dirty_files().into_iter().collect();
    report.files_with_pending = std::mem::take(&mut files).into_iter().collect();
    report.duration = t0.elapsed();
    Ok(report)
}

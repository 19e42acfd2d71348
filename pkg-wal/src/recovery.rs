//! Streaming the recovered records, and what the scan at open found.

use std::sync::Arc;
use std::time::Duration;

use crate::LoggedBytes;
use crate::error::WalError;
use crate::format::{Stop, decode_verified_record};
use crate::types::{Record, RecordKind};

/// What to do when recovery finds a bad record inside the acknowledged
/// part of the log (before the newest durable watermark).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open with [`WalError::Corrupt`], naming file and offset.
    /// Nothing is changed on disk. The default.
    #[default]
    Strict,
    /// Keep the valid prefix before the bad record, move the damaged
    /// segment files aside (renamed `*.corrupt`, never deleted) and open.
    /// The loss is reported in [`RecoveryStats::corruption`].
    TolerateCorruption,
}

/// A bad record found (and tolerated) in the acknowledged part of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// The segment file.
    pub file: String,
    /// Byte offset of the bad record.
    pub offset: u64,
    /// Which check failed.
    pub reason: String,
}

/// Statistics of the scan done when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Valid records found.
    pub records: u64,
    /// Bytes of those records on disk (headers and padding included).
    pub record_bytes: u64,
    /// Slice data bytes among them.
    pub data_bytes: u64,
    /// Records by type: slice, remove, truncate, flushed.
    pub by_type: [u64; 4],
    /// Segment files scanned.
    pub segments: u64,
    /// Bytes cut off as a torn tail: written after the last durable
    /// watermark and found incomplete, so never acknowledged.
    pub torn_bytes: u64,
    /// Segment files removed because they lay wholly in the torn tail or
    /// were replaced by a completed compaction.
    pub segments_removed: u64,
    /// Bad records inside the acknowledged prefix, tolerated because the
    /// log was opened with [`RecoveryMode::TolerateCorruption`].
    pub corruption: Option<Corruption>,
    /// The highest LSN recovered (0 for an empty log).
    pub last_lsn: u64,
    /// The durable watermark found in the headers.
    pub watermark: u64,
    /// Bytes of slice data not yet flushed, after replaying all markers.
    pub live_data_bytes: u64,
    /// Time the scan took.
    pub duration: Duration,
}

/// Bytes of one segment to replay: `read(offset, len)` of published,
/// validated bytes.
pub(crate) trait ReplaySource: Send + Sync {
    fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]>;
    fn name(&self) -> &str;
}

pub(crate) struct ReplaySpan {
    pub(crate) source: Arc<dyn ReplaySource>,
    /// The same segment, as the owner of bytes lent from it.
    pub(crate) owner: Arc<dyn Send + Sync>,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// The records of a log, in LSN order: a lending iterator whose records
/// borrow from the log's mapping.
///
/// ```no_run
/// # use slicefs_wal::{Persister, MmapPersister, WalConfig};
/// # fn f(p: &MmapPersister) -> Result<(), slicefs_wal::WalError> {
/// let mut rec = p.recover()?;
/// while let Some(r) = rec.next_record() {
///     let r = r?;
///     println!("{} {:?}", r.lsn, r.kind.file());
/// }
/// # Ok(()) }
/// ```
pub struct Recovery<'a> {
    spans: Vec<ReplaySpan>,
    span: usize,
    cursor: u64,
    stats: RecoveryStats,
    _log: std::marker::PhantomData<&'a ()>,
}

impl<'a> Recovery<'a> {
    pub(crate) fn new(spans: Vec<ReplaySpan>, stats: RecoveryStats) -> Self {
        let cursor = spans.first().map_or(0, |s| s.start);
        Recovery {
            spans,
            span: 0,
            cursor,
            stats,
            _log: std::marker::PhantomData,
        }
    }

    /// An empty stream.
    pub fn empty() -> Self {
        Self::new(Vec::new(), RecoveryStats::default())
    }

    /// What the scan at open found.
    pub fn stats(&self) -> &RecoveryStats {
        &self.stats
    }

    /// The next record, or `None` at the end. The bytes were verified
    /// (checksums included) by the scan at open and are never written
    /// again; they are decoded again with every bound checked, and an error
    /// here means the file changed under the log, which is reported, not
    /// skipped.
    #[allow(clippy::should_implement_trait)]
    pub fn next_record(&mut self) -> Option<Result<Record<'_>, WalError>> {
        self.next_inner(false).map(|r| r.map(|(rec, _)| rec))
    }

    /// [`Recovery::next_record`], also lending a slice record's payload
    /// ([`LoggedBytes`], valid however long it is kept), so that the
    /// consumer need not copy it. `None` for other records.
    ///
    /// # Errors
    /// As [`Recovery::next_record`].
    pub fn next_record_lent(
        &mut self,
    ) -> Option<Result<(Record<'_>, Option<LoggedBytes>), WalError>> {
        self.next_inner(true)
    }

    fn next_inner(
        &mut self,
        lend: bool,
    ) -> Option<Result<(Record<'_>, Option<LoggedBytes>), WalError>> {
        loop {
            let span = self.spans.get(self.span)?;
            if self.cursor >= span.end {
                self.span += 1;
                if let Some(s) = self.spans.get(self.span) {
                    self.cursor = s.start;
                }
                continue;
            }
            let at = self.cursor;
            let corrupt = |reason: String| WalError::Corrupt {
                file: span.source.name().to_string(),
                offset: at,
                reason: format!("changed after open: {reason}"),
            };
            let Some(bytes) = span.source.bytes(span.start, span.end - span.start) else {
                self.span = self.spans.len();
                return Some(Err(corrupt("span not readable".into())));
            };
            return match decode_verified_record(bytes, (at - span.start) as usize) {
                Ok((rec, used)) => {
                    self.cursor += used as u64;
                    let lent = match rec.kind {
                        RecordKind::Slice(w) if lend => {
                            let owner = span.owner.clone();
                            // SAFETY: `w.data` lies in the span's verified,
                            // published bytes, which never change and stay
                            // mapped while the segment lives; `owner` is
                            // that segment.
                            Some(unsafe { LoggedBytes::new(owner, w.data) })
                        }
                        _ => None,
                    };
                    Some(Ok((rec, lent)))
                }
                Err(stop) => {
                    self.span = self.spans.len();
                    let reason = match stop {
                        Stop::End => "unexpected end".into(),
                        Stop::Invalid(r) => r,
                    };
                    Some(Err(corrupt(reason)))
                }
            };
        }
    }
}

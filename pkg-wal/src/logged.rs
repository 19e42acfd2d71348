//! [`LoggedBytes`]: a record's payload, borrowed from the log.

use std::ops::Range;
use std::ptr::NonNull;
use std::sync::Arc;

/// The payload bytes of one logged slice write, read in place from the
/// log's segment file (its shared read-only mapping, i.e. the page cache)
/// for as long as this value lives.
///
/// The write-back cache keeps these instead of a copy of the data, so a
/// write is copied once (into the log) rather than twice. The bytes never
/// change: a segment's published bytes are immutable, and the segment's
/// mapping stays alive while any `LoggedBytes` of it does, even after the
/// log has compacted or removed the file (its disk space is then freed
/// when the last one drops).
///
/// A read of these bytes may fault a page back in from the segment file
/// if the kernel evicted it; where the disk fails, the page reads as
/// zeros and [`crate::media::check`] (or [`LoggedBytes::check`]) fails
/// for it: a reader checks after it copied the bytes out.
#[derive(Clone)]
pub struct LoggedBytes {
    /// Keeps the mapping alive.
    owner: Arc<dyn Send + Sync>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the bytes are immutable while `owner` lives (see the type docs),
// and `owner` is Send + Sync.
unsafe impl Send for LoggedBytes {}
// SAFETY: as for Send.
unsafe impl Sync for LoggedBytes {}

impl LoggedBytes {
    /// Bytes borrowed from `owner`.
    ///
    /// # Safety
    /// `bytes` must stay valid and unchanged for as long as `owner` lives.
    pub(crate) unsafe fn new(owner: Arc<dyn Send + Sync>, bytes: &[u8]) -> LoggedBytes {
        LoggedBytes {
            owner,
            ptr: NonNull::from(bytes).cast(),
            len: bytes.len(),
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: valid and unchanged while `owner` lives (`new`'s
        // contract), and `self` holds `owner`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// `Err` if the disk could not read some of these bytes (they read as
    /// zeros there). See [`crate::media`].
    pub fn check(&self) -> Result<(), crate::MediaError> {
        crate::media::check(self.as_slice())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sub-range `range` of these bytes, sharing the same owner.
    ///
    /// # Panics
    /// If `range` is not within `0..len()`.
    pub fn slice(&self, range: Range<usize>) -> LoggedBytes {
        let bytes = &self.as_slice()[range];
        LoggedBytes {
            owner: self.owner.clone(),
            ptr: NonNull::from(bytes).cast(),
            len: bytes.len(),
        }
    }
}

impl std::fmt::Debug for LoggedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedBytes")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

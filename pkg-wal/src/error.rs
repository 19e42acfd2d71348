//! The one error type of the persister.

use std::io;
use std::path::PathBuf;

/// Errors of the persister. Variants carry the file and offset they concern.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O call failed (open, allocate, rename, ...). `op` names the
    /// call, `file` the segment or directory.
    #[error("{op} {file}: {source}")]
    Io {
        /// The operation that failed, e.g. `"fallocate"`.
        op: &'static str,
        /// The file or directory concerned.
        file: String,
        /// The underlying error (ENOSPC for a full disk).
        #[source]
        source: io::Error,
    },

    /// A sync failed earlier; nothing more is accepted until the log is
    /// reopened, which re-reads what reached the disk.
    #[error("the log is poisoned by an earlier failed sync ({cause}); close and reopen it")]
    Poisoned {
        /// What failed first.
        cause: String,
    },

    /// A segment header is not a valid DWAL header.
    #[error("bad segment header in {file}: {reason}")]
    BadHeader {
        /// The segment file.
        file: String,
        /// What is wrong (bad magic, unknown version, bad checksum, ...).
        reason: String,
    },

    /// A record that was acknowledged durable (or sits before one that
    /// was) failed a check. Opening fails unless the caller asked to
    /// tolerate corruption ([`crate::RecoveryMode::TolerateCorruption`]).
    #[error("corrupt log: {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        file: String,
        /// Byte offset of the bad record in the file.
        offset: u64,
        /// Which check failed.
        reason: String,
    },

    /// Another process (or another persister in this process) holds the
    /// directory lock.
    #[error("the log directory {dir} is locked by another process")]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },

    /// The caller passed something the format cannot hold.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The persister was closed.
    #[error("the log is closed")]
    Closed,

    /// Reclaim did not run: the owner's barrier (see
    /// [`crate::Persister::set_reclaim_barrier`]) failed, so the records
    /// it would drop may still be needed. Nothing was changed.
    #[error("reclaim held back: {0}")]
    ReclaimBarrier(String),
}

impl WalError {
    pub(crate) fn io(op: &'static str, file: impl Into<String>, source: io::Error) -> Self {
        WalError::Io {
            op,
            file: file.into(),
            source,
        }
    }

    /// True when the underlying cause is a full disk (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            WalError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ),
            _ => false,
        }
    }
}

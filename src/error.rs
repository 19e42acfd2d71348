//! [`FsError`]: the file system's errors, and their one mapping to errno.

/// An error of a file system operation. [`FsError::errno`] is the one
/// place errors become errno values for the front ends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// `ENOENT`: no such file or directory.
    #[error("no such file or directory")]
    NotFound,
    /// `EEXIST`: the name exists.
    #[error("file exists")]
    Exists,
    /// `ENOTDIR`: a directory was needed.
    #[error("not a directory")]
    NotDir,
    /// `EISDIR`: a non-directory was needed.
    #[error("is a directory")]
    IsDir,
    /// `ENOTEMPTY`: the directory has entries.
    #[error("directory not empty")]
    NotEmpty,
    /// `EINVAL`: a bad argument (the reason says which).
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// `ENAMETOOLONG`: a name is longer than 255 bytes.
    #[error("file name too long")]
    NameTooLong,
    /// `EACCES`: the permission bits refuse the access.
    #[error("permission denied")]
    Access,
    /// `EPERM`: only the owner or root may do this.
    #[error("operation not permitted")]
    NotPermitted,
    /// `ELOOP`: too many symbolic links.
    #[error("too many levels of symbolic links")]
    Loop,
    /// `EMLINK`: too many hard links.
    #[error("too many links")]
    TooManyLinks,
    /// `ENODATA`: no such extended attribute.
    #[error("no such attribute")]
    NoAttr,
    /// `ERANGE`: the caller's buffer is too small.
    #[error("result too large for the buffer")]
    Range,
    /// `EBADF`: the handle is not open, or not for this access.
    #[error("bad file handle")]
    BadHandle,
    /// `EFBIG`: past the largest file size.
    #[error("file too large")]
    TooBig,
    /// `ENXIO`: `lseek` `SEEK_DATA`/`SEEK_HOLE` at or past the end of the
    /// file, or `SEEK_DATA` with no data after the offset.
    #[error("no data or hole at that offset")]
    NoSuchOffset,
    /// `EOPNOTSUPP`: an operation (or mode of one) slicefs does not offer.
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// `ENOSPC`: the write-back cache stayed full for the configured wait
    /// (the object store is not taking uploads), or the log's disk is
    /// full. Nothing was written.
    #[error("no space: {0}")]
    NoSpace(String),
    /// `EIO`: a component failed (metadata database, log, object store).
    ///
    /// Displays as `context: cause`; the cause is part of the message, not
    /// a separate `source()`, so a report that prints the chain (`{:#}`)
    /// does not say it twice.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl FsError {
    /// The errno value a front end returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Access => libc::EACCES,
            FsError::NotPermitted => libc::EPERM,
            FsError::Loop => libc::ELOOP,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NoAttr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::BadHandle => libc::EBADF,
            FsError::TooBig => libc::EFBIG,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::Io { .. } => libc::EIO,
        }
    }

    /// An [`FsError::Io`] with context.
    pub fn io(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> FsError {
        FsError::Io {
            context,
            cause: source.into(),
        }
    }
}

impl From<crate::meta::MetaError> for FsError {
    fn from(e: crate::meta::MetaError) -> Self {
        FsError::io("metadata", e)
    }
}

impl From<rusqlite::Error> for FsError {
    /// `SQLITE_FULL` is `ENOSPC` (the disk under the database is full;
    /// the transaction was rolled back and may be retried once space is
    /// freed); everything else is `EIO`.
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return FsError::NoSpace(format!("metadata database: {e}"));
        }
        FsError::io("metadata database", e)
    }
}

/// Whether `e` or any error in its source chain is an `io::Error` with
/// `ENOSPC`, or (for backends that flatten the cause into their message)
/// says "No space left on device".
pub fn is_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::ENOSPC)
        {
            return true;
        }
        cur = err.source();
    }
    e.to_string().contains("No space left on device")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_errno() {
        let cases: Vec<(FsError, i32)> = vec![
            (FsError::NotFound, libc::ENOENT),
            (FsError::Exists, libc::EEXIST),
            (FsError::NotDir, libc::ENOTDIR),
            (FsError::IsDir, libc::EISDIR),
            (FsError::NotEmpty, libc::ENOTEMPTY),
            (FsError::Invalid("x"), libc::EINVAL),
            (FsError::NameTooLong, libc::ENAMETOOLONG),
            (FsError::Access, libc::EACCES),
            (FsError::NotPermitted, libc::EPERM),
            (FsError::Loop, libc::ELOOP),
            (FsError::TooManyLinks, libc::EMLINK),
            (FsError::NoAttr, libc::ENODATA),
            (FsError::Range, libc::ERANGE),
            (FsError::BadHandle, libc::EBADF),
            (FsError::TooBig, libc::EFBIG),
            (FsError::NotSupported("x"), libc::EOPNOTSUPP),
            (FsError::NoSpace("cache".into()), libc::ENOSPC),
            (FsError::io("x", "boom"), libc::EIO),
        ];
        for (e, want) in cases {
            assert_eq!(e.errno(), want, "{e}");
        }
    }
}

//! [`NullPersister`]: keeps nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::WalError;
use crate::recovery::Recovery;
use crate::types::{CHUNK_SIZE, FileId, FlushedMarker, Lsn, SliceWrite};
use crate::{Persister, ReclaimStats, Result};

/// A persister that keeps nothing: appends only hand out LSNs, `sync`
/// returns at once, recovery yields nothing. For ephemeral mounts and
/// tests; a crash loses every write not yet in the object store.
#[derive(Debug, Default)]
pub struct NullPersister {
    next: AtomicU64,
}

impl NullPersister {
    /// A new persister; the first LSN is 1.
    pub fn new() -> Self {
        NullPersister {
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> Lsn {
        // `Default` starts at 0; LSN 0 means "none", so skip it.
        let mut l = self.next.fetch_add(1, Ordering::Relaxed);
        if l == 0 {
            l = self.next.fetch_add(1, Ordering::Relaxed);
        }
        Lsn(l)
    }
}

impl Persister for NullPersister {
    fn append_slice(&self, write: &SliceWrite<'_>) -> Result<Lsn> {
        if u64::from(write.offset) + write.data.len() as u64 > CHUNK_SIZE {
            return Err(WalError::InvalidArgument("slice crosses its chunk".into()));
        }
        Ok(self.next())
    }

    fn append_remove(&self, _file: FileId) -> Result<Lsn> {
        Ok(self.next())
    }

    fn append_truncate(&self, _file: FileId, _size: u64) -> Result<Lsn> {
        Ok(self.next())
    }

    fn append_flushed(&self, _marker: &FlushedMarker) -> Result<Lsn> {
        Ok(self.next())
    }

    /// Returns the last LSN handed out: with nothing to keep, everything
    /// is as durable as it will ever be.
    fn sync(&self) -> Result<Lsn> {
        Ok(Lsn(self.next.load(Ordering::Relaxed).saturating_sub(1)))
    }

    fn durable_lsn(&self) -> Lsn {
        Lsn(self.next.load(Ordering::Relaxed).saturating_sub(1))
    }

    fn next_lsn(&self) -> Lsn {
        Lsn(self.next.load(Ordering::Relaxed).max(1))
    }

    fn recover(&self) -> Result<Recovery<'_>> {
        Ok(Recovery::empty())
    }

    fn reclaim(&self) -> Result<ReclaimStats> {
        Ok(ReclaimStats::default())
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }

    fn is_enabled(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_lsns_and_recovers_nothing() {
        let p = NullPersister::default();
        assert!(!p.is_enabled());
        assert_eq!(p.append_remove(FileId(1)).unwrap(), Lsn(1));
        assert_eq!(p.append_truncate(FileId(1), 5).unwrap(), Lsn(2));
        assert_eq!(p.sync().unwrap(), Lsn(2));
        assert_eq!(p.next_lsn(), Lsn(3));
        assert!(p.recover().unwrap().next_record().is_none());
    }
}

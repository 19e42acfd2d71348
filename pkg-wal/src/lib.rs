//! The slicefs persister: a crash-safe write-ahead log for the write-back
//! slice cache.
//!
//! Every write the cache absorbs is first appended here as a [`Record`]
//! and gets a log sequence number ([`Lsn`]). An `fsync` (or NFS `COMMIT`)
//! returns only after [`Persister::sync`] reports an LSN at least as high
//! as the writes it covers. After a restart, [`Persister::recover`] streams
//! the surviving records in LSN order so the cache can be rebuilt.
//!
//! Two implementations:
//! - [`MmapPersister`]: segment files in a directory, appended with
//!   `pwritev`, read through a shared read-only memory map, synced with
//!   `fdatasync`. The on-disk layout lives in [`format`](mod@format)
//!   and in `doc/DESIGN.md`.
//! - [`NullPersister`]: keeps nothing. For ephemeral mounts and tests.
//!
//! The byte layout is known only to [`format`](mod@format); the storage under the log
//! ([`storage::Storage`]) is a trait so that the same persister runs on
//! real mapped files ([`storage::MmapStorage`]) and on a crash-simulating
//! in-memory store ([`sim::SimStorage`]) in tests.

pub mod error;
pub mod format;
mod index;
mod logged;
pub mod media;
mod mmap_persister;
mod null;
mod recovery;
pub mod scan;
pub mod sim;
pub mod storage;
mod types;

pub use error::WalError;
pub use logged::LoggedBytes;
pub use media::MediaError;
pub use mmap_persister::{Durability, LOCK_FILE, MmapPersister, ReclaimStats, WalConfig};
pub use null::NullPersister;
pub use recovery::{Corruption, Recovery, RecoveryMode, RecoveryStats};
pub use types::{
    CHUNK_SIZE, ChunkIndex, FileId, FlushedMarker, Lsn, Record, RecordKind, SliceId, SliceWrite,
};

/// See [`Persister::set_reclaim_barrier`]: `Err` holds why the records
/// must stay.
pub type ReclaimBarrier = Box<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// Result type of this crate.
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// A write-ahead log that keeps the cache's un-flushed writes safe.
///
/// The trait is object-safe: the file system holds an `Arc<dyn Persister>`
/// and chooses the implementation at mount time.
///
/// # LSNs and durability
/// Every append returns the record's [`Lsn`]; LSNs are strictly increasing
/// and gap-free, starting at 1 for a new log. An append has *returned* when
/// the record is written to the log file: it survives a crash of this
/// process (the page cache keeps it) but not a power loss, unless the
/// durability mode is [`Durability::Always`]. [`Persister::sync`] makes
/// every record appended before the call durable against power loss and
/// returns the highest durable LSN.
///
/// # Errors
/// After a failed `fdatasync`/`fsync` the persister is *poisoned*: that
/// call and every later one returns [`WalError::Poisoned`] until the log is
/// closed and opened again (which re-reads what really reached the disk).
/// A failed sync is never retried: the kernel may have dropped the dirty
/// pages already ("fsyncgate").
pub trait Persister: Send + Sync {
    /// Appends a slice write: `data` goes to `offset_in_chunk` of chunk
    /// `chunk` of file `file`. `offset_in_chunk + data.len()` must not
    /// exceed [`CHUNK_SIZE`] ([`WalError::InvalidArgument`] otherwise).
    fn append_slice(&self, write: &SliceWrite<'_>) -> Result<Lsn>;

    /// [`Persister::append_slice`], also returning the logged copy of
    /// `write.data` when the log can lend it ([`LoggedBytes`]: read in
    /// place from the log, valid however long it is kept), so the caller
    /// need not keep a copy of its own. `None` when the log keeps no bytes
    /// ([`NullPersister`]) or cannot lend them; the default.
    fn append_slice_logged(&self, write: &SliceWrite<'_>) -> Result<(Lsn, Option<LoggedBytes>)> {
        Ok((self.append_slice(write)?, None))
    }

    /// Appends the removal of `file`: on replay every earlier record of the
    /// file is void; later records (a re-created file) are not.
    fn append_remove(&self, file: FileId) -> Result<Lsn>;

    /// Appends a truncate of `file` to `size` bytes: on replay, the bytes
    /// at or past `size` of every earlier slice of the file are void.
    fn append_truncate(&self, file: FileId, size: u64) -> Result<Lsn>;

    /// Appends a flushed marker: the bytes of the marker's range written by
    /// records with LSN <= `marker.upto` are in the object store and their
    /// block reference is committed in metadata. Those bytes need no
    /// replay and their space may be reclaimed.
    fn append_flushed(&self, marker: &FlushedMarker) -> Result<Lsn>;

    /// Makes every record appended before this call durable against power
    /// loss and returns the highest durable LSN (0 if nothing was ever
    /// appended). Concurrent callers share one sync (group commit).
    fn sync(&self) -> Result<Lsn>;

    /// The highest LSN known durable, without waiting.
    fn durable_lsn(&self) -> Lsn;

    /// The LSN the next append will get.
    fn next_lsn(&self) -> Lsn;

    /// Streams the records that survive in the log, in LSN order, with the
    /// statistics of the scan done at open. Records made void by later
    /// removes, truncates or flushed markers may still appear (with the
    /// record that voids them after them); a consumer applies them in
    /// order. Never yields a record that failed a check.
    fn recover(&self) -> Result<Recovery<'_>>;

    /// Reclaims the space of records that are no longer needed (flushed,
    /// removed or truncated away) while appends go on. Returns what it did.
    fn reclaim(&self) -> Result<ReclaimStats>;

    /// [`Persister::reclaim`], first sealing the record-holding part of
    /// the log that appends go to, so that its flushed and removed bytes
    /// are reclaimed too (reclaim alone leaves them until that part
    /// fills). For a full disk; costs a new segment file. The default is
    /// `reclaim`.
    fn reclaim_all(&self) -> Result<ReclaimStats> {
        self.reclaim()
    }

    /// Sets what reclaim calls before it drops any record (flushed bytes,
    /// and the removes and truncates that void others): the owner makes
    /// durable whatever justifies those records elsewhere (the metadata
    /// change behind a truncate). If the barrier fails, reclaim drops
    /// nothing and reports [`WalError::ReclaimBarrier`]. The default does
    /// nothing: a log that keeps nothing drops nothing.
    fn set_reclaim_barrier(&self, barrier: ReclaimBarrier) {
        let _ = barrier;
    }

    /// The identity of this log (random, chosen when the log was
    /// created, written in every segment header); 0 for a log that keeps
    /// nothing. Metadata records it with the LSN it depends on, so that a
    /// log that went missing or was replaced is noticed at start-up.
    fn log_id(&self) -> u64 {
        0
    }

    /// Syncs, stops background work and releases the log. Later calls
    /// return [`WalError::Closed`].
    fn close(&self) -> Result<()>;

    /// `false` for [`NullPersister`]: nothing is kept and nothing will be
    /// recovered, so callers may skip work that only serves recovery.
    fn is_enabled(&self) -> bool;
}

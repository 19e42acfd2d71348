//! [`MetaStore`]: the metadata store, over a backend (SQLite or memory).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use slicefs_wal::{FileId, Persister};

use super::ops::{self, Policy, Tx, XattrFlags};
use super::types::{DirEntry, DirPage, Ino, Inode, NewNode, RenameFlags, SetAttr, Timespec, Usage};
use super::{
    BlockAddr, BlockCommit, BlockMap, BlockRef, MetaError, memstore::MemBackend,
    postgres::PgBackend, sqlite::SqliteBackend,
};
use crate::blockstore::{BlockKey, KeyLayout};
use crate::error::FsError;

type Result<T> = std::result::Result<T, FsError>;

/// How a backend runs a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxMode {
    /// Read only.
    Read,
    /// Atomic; survives a process crash once it returns.
    Write,
    /// As [`TxMode::Write`], for rows no log record depends on (a
    /// shared volume's session and holds): a backend may skip the log
    /// barrier, and a database server may lose it in its own crash.
    Loose,
    /// Atomic and durable against power loss once it returns.
    Durable,
}

/// Called by a backend before it makes anything durable, under the lock
/// that orders its commits: no transaction commits between the barrier
/// and the durable commit that follows it.
pub(crate) type Barrier<'a> = &'a dyn Fn() -> Result<()>;

/// Runs transactions: all of `f` or nothing.
pub(crate) trait Backend: Send + Sync {
    /// Runs `f` as one transaction. A [`TxMode::Durable`] one calls
    /// `barrier` first (see [`Barrier`]).
    fn run(
        &self,
        mode: TxMode,
        barrier: Barrier<'_>,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> Result<()>;
    /// Whether enough commits piled up in a separate journal (SQLite's
    /// WAL) that the next durable commit should copy them into the main
    /// database (it does so under the same lock).
    fn checkpoint_due(&self) -> bool {
        false
    }
    /// Writes what committed transactions left in the OS's cache to the
    /// device without the lock that orders commits, before a durable
    /// commit (which then has less to wait for under it).
    fn presync(&self) -> Result<()> {
        Ok(())
    }
    /// The description of a shared volume recorded in the database by
    /// `format` (JSON), if this backend keeps one.
    fn volume(&self) -> Result<Option<String>> {
        Ok(None)
    }
}

/// The metadata store: inodes, directory entries, symlink targets,
/// extended attributes and the block map. Every namespace operation is one
/// transaction. Cheap to clone.
///
/// Durability: a mutation survives a crash of the process once it
/// returns; against power loss, once [`MetaStore::sync`] (fsync of a file
/// or directory) returned after it. Block map commits are durable on
/// return (the log forgets the bytes after them).
///
/// Order with the log (doc/DESIGN.md, "One durable order"): once a log is
/// attached ([`MetaStore::attach_log`]), nothing in metadata becomes
/// durable before the log is durable up to every record appended before
/// it: every durable commit first syncs the log, under the lock that
/// orders metadata commits. A size, a truncate or a block-map change is
/// therefore never durable without the log records it depends on.
#[derive(Clone)]
pub struct MetaStore {
    backend: Arc<dyn Backend>,
    log: Arc<OnceLock<Weak<dyn Persister>>>,
    seqs: Arc<CommitSeqs>,
    /// Object versions reserved durably and not yet handed out:
    /// `(next, end)`, `next..end`.
    versions: Arc<Mutex<(u64, u64)>>,
    /// The `(log id, LSN)` a commit recorded last (see `write`).
    recorded: Arc<Mutex<Option<(u64, u64)>>>,
}

fn lock_dep(m: &Mutex<Option<(u64, u64)>>) -> std::sync::MutexGuard<'_, Option<(u64, u64)>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Object versions reserved per durable transaction: one metadata commit
/// per this many uploads instead of one per upload. A crash loses at most
/// the unused rest of a range (versions only need to be unique).
const VERSION_RANGE: u64 = 1024;

/// Commit sequence numbers: every write transaction takes the next one
/// under the backend's lock (so they follow commit order), and a durable
/// commit records its own as durable, covering every smaller one.
#[derive(Default)]
struct CommitSeqs {
    last: AtomicU64,
    durable: AtomicU64,
}

impl MetaStore {
    /// The SQLite store in `path` (created if missing; WAL journal mode).
    /// A new store gets a root directory owned by `uid`/`gid`.
    ///
    /// # Errors
    /// [`FsError::Io`] if the database cannot be opened or has a schema
    /// version this build does not know.
    pub fn open_sqlite(path: &Path, uid: u32, gid: u32) -> Result<MetaStore> {
        MetaStore::over(Arc::new(SqliteBackend::open(path)?), uid, gid)
    }

    /// The PostgreSQL store at `url` (`postgres://user@host:port/db`),
    /// shared with other hosts, as host `host`: a number unique among the
    /// hosts of the volume and stable across this host's restarts (its
    /// log's counters and its unlinked open files are kept under it; see
    /// the backend's notes in `meta/postgres.rs`). The database must have
    /// been made by [`MetaStore::format_postgres`].
    ///
    /// # Errors
    /// [`FsError::Io`] with one line: a bad URL, no server, no volume or
    /// another schema version there.
    pub fn open_postgres(url: &str, host: u64, uid: u32, gid: u32) -> Result<MetaStore> {
        MetaStore::over(Arc::new(PgBackend::open(url, host)?), uid, gid)
    }

    /// Creates slicefs's schema in the PostgreSQL database at `url`
    /// unless it is there already, and records `volume` (a description,
    /// JSON) unless a volume is recorded. Returns the recorded
    /// description and whether it was made now. Safe to run from two
    /// hosts at once (one volume results).
    ///
    /// # Errors
    /// [`FsError::Io`] with one line.
    pub fn format_postgres(url: &str, volume: &str) -> Result<(String, bool)> {
        PgBackend::format(url, volume)
    }

    /// Starts this host's session on a shared volume (a no-op on a
    /// single-host store): registered with a heartbeat; holds left by an
    /// earlier run of this host are dropped.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn begin_session(&self) -> Result<()> {
        self.write(TxMode::Loose, |tx| tx.session_begin())
    }

    /// Refreshes this host's heartbeat and, with `clean`, cleans up after
    /// every session of another host silent for `timeout` (a host that
    /// died): its open files are no longer held, and its unlinked files
    /// (and those of hosts that stopped) become this host's to free.
    /// Returns the sessions cleaned up, and whether this host's own
    /// session had been taken for dead (then its holds are gone: make
    /// them again). A no-op on a single-host store.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn session_heartbeat(
        &self,
        timeout: std::time::Duration,
        clean: bool,
    ) -> Result<(u64, bool)> {
        self.write(TxMode::Loose, |tx| tx.session_tick(timeout, clean))
    }

    /// Ends this host's session (a clean stop): nothing is held open by
    /// it any more.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn end_session(&self) -> Result<()> {
        self.write(TxMode::Loose, |tx| tx.session_end())
    }

    /// Records (`open`) or drops that this host holds `ino` open, so that
    /// an unlink on another host keeps its data until this host closes
    /// it. A no-op on a single-host store.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn hold_open(&self, ino: Ino, open: bool) -> Result<()> {
        self.write(TxMode::Loose, |tx| tx.hold(ino, open))
    }

    /// The description of the shared volume this database holds (what
    /// [`MetaStore::format_postgres`] recorded), if any.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn shared_volume(&self) -> Result<Option<String>> {
        self.backend.volume()
    }

    /// A store in memory (ephemeral runs, tests).
    pub fn memory(uid: u32, gid: u32) -> MetaStore {
        MetaStore::over(Arc::new(MemBackend::default()), uid, gid)
            .expect("the memory backend cannot fail")
    }

    /// A store over `backend`, with a root directory made if missing.
    fn over(backend: Arc<dyn Backend>, uid: u32, gid: u32) -> Result<MetaStore> {
        let s = MetaStore {
            backend,
            log: Arc::default(),
            seqs: Arc::default(),
            versions: Arc::default(),
            recorded: Arc::default(),
        };
        s.init(uid, gid)?;
        Ok(s)
    }

    fn init(&self, uid: u32, gid: u32) -> Result<()> {
        self.write(TxMode::Durable, |tx| {
            ops::init_root(tx, uid, gid, Timespec::now())
        })
    }

    /// Attaches the log this metadata depends on: from now on every
    /// durable commit first syncs `log` (log before metadata). Set once;
    /// a second call is ignored. Held weakly: the log may hold this store
    /// in its reclaim barrier.
    pub fn attach_log(&self, log: &Arc<dyn Persister>) {
        let _ = self.log.set(Arc::downgrade(log));
    }

    /// Makes the attached log durable up to its last append; returns
    /// `(log id, durable LSN)` to record with the durable commit.
    fn log_barrier(&self) -> Result<Option<(u64, u64)>> {
        match self.log.get().and_then(Weak::upgrade) {
            Some(log) if log.is_enabled() => {
                let lsn = log
                    .sync()
                    .map_err(|e| FsError::io("sync the log before metadata", e))?;
                Ok(Some((log.log_id(), lsn.0)))
            }
            _ => Ok(None),
        }
    }

    pub(super) fn write<T>(
        &self,
        mode: TxMode,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T>,
    ) -> Result<T> {
        let mut out = None;
        // A durable commit first syncs the log, and records which log (up
        // to which LSN) metadata now depends on. The log is synced once
        // before taking the backend's lock too, so that the sync under the
        // lock (which orders it with other commits) usually finds nothing
        // left to do and other metadata calls do not wait for the log.
        if mode == TxMode::Durable {
            self.log_barrier()?;
            self.backend.presync()?;
        }
        let dep = std::cell::Cell::new(None);
        let seq = std::cell::Cell::new(0);
        self.backend.run(
            mode,
            &|| {
                dep.set(self.log_barrier()?);
                Ok(())
            },
            &mut |tx| {
                // Recorded once per change: a durable commit makes every
                // commit before it durable too (also one that recorded it).
                if let Some(d) = dep.get().filter(|&d| *lock_dep(&self.recorded) != Some(d)) {
                    tx.set_counter("log_id", d.0)?;
                    tx.set_counter("log_lsn", d.1)?;
                }
                out = Some(f(tx)?);
                if mode != TxMode::Read {
                    // Under the backend's lock: in commit order.
                    seq.set(self.seqs.last.fetch_add(1, Ordering::AcqRel) + 1);
                }
                Ok(())
            },
        )?;
        if let Some(d) = dep.get() {
            *lock_dep(&self.recorded) = Some(d);
        }
        if mode == TxMode::Durable {
            self.seqs.durable.fetch_max(seq.get(), Ordering::AcqRel);
        }
        Ok(out.expect("set on success"))
    }

    /// The sequence number of the newest write transaction so far (0:
    /// none). A change made before this call has at most this number.
    pub fn commit_seq(&self) -> u64 {
        self.seqs.last.load(Ordering::Acquire)
    }

    /// Whether every write transaction up to sequence number `seq` (see
    /// [`MetaStore::commit_seq`]) is durable against power loss.
    pub fn is_durable(&self, seq: u64) -> bool {
        self.seqs.durable.load(Ordering::Acquire) >= seq
    }

    pub(super) fn read<T>(&self, f: impl FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        self.write(TxMode::Read, f)
    }

    /// Makes every change so far durable against power loss, after the
    /// attached log (see the type's doc).
    ///
    /// # Errors
    /// [`FsError::Io`]; after a failed durable commit every later write
    /// and sync fails too (the store is poisoned until reopened).
    /// [`FsError::NoSpace`] when the disk is full (nothing is lost; a
    /// later sync may succeed).
    pub fn sync(&self) -> Result<()> {
        // Nothing to make durable: every write transaction that returned
        // before this call has a sequence number at most `last` (it took
        // it before it committed), and all up to `last` are durable. (A
        // database `fsync` through the mount syncs the journal and then
        // its directory: the second found nothing left, yet paid a device
        // flush.) The log is still made durable (no flush when it is), as
        // callers count on (`syncfs`); a checkpoint that is due still runs.
        if self.is_durable(self.commit_seq()) && !self.checkpoint_due() {
            return self.log_barrier().map(|_| ());
        }
        // A durable commit covers every commit before it.
        self.write(TxMode::Durable, |tx| tx.next("sync").map(|_| ()))
    }

    /// Whether a [`MetaStore::sync`] is due to keep the backend's journal
    /// short (see the SQLite backend's notes). Cheap: no lock.
    pub fn checkpoint_due(&self) -> bool {
        self.backend.checkpoint_due()
    }

    /// How this filesystem's block objects are named: recorded when it
    /// was made ([`KeyLayout::PerFile`] for filesystems made before the
    /// record existed).
    ///
    /// # Errors
    /// [`FsError::Io`]; a layout this build does not know.
    pub fn store_layout(&self) -> Result<KeyLayout> {
        let n = self.read(|tx| tx.counter("store_layout"))?;
        match n {
            0 => Ok(KeyLayout::PerFile),
            n => KeyLayout::from_number(n).ok_or_else(|| {
                FsError::io(
                    "read the block store layout",
                    format!("layout {n} is not known to this build (a newer slicefs made it)"),
                )
            }),
        }
    }

    /// The volume (its UUID as a number) this single-host database was
    /// bound to by [`MetaStore::set_volume_id`], if any (a database made
    /// before the record existed has none).
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn volume_id(&self) -> Result<Option<u128>> {
        self.read(|tx| {
            let (hi, lo) = (tx.counter("volume_hi")?, tx.counter("volume_lo")?);
            Ok((hi | lo != 0).then_some(u128::from(hi) << 64 | u128::from(lo)))
        })
    }

    /// Records, durably, the volume this database describes (counters
    /// `volume_hi` and `volume_lo`), so that it is never used with another
    /// volume's data directory and store (see `vfs::volume::bind_meta`).
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn set_volume_id(&self, id: u128) -> Result<()> {
        self.write(TxMode::Durable, |tx| {
            tx.set_counter("volume_hi", (id >> 64) as u64)?;
            tx.set_counter("volume_lo", id as u64)
        })
    }

    /// Makes sure inode numbers up to `ino` are never handed out again (a
    /// log after a power loss may still hold data of files whose creation
    /// metadata lost).
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn reserve_inos(&self, ino: Ino) -> Result<()> {
        self.write(TxMode::Write, |tx| {
            if tx.counter("ino")? < ino.0 {
                tx.set_counter("ino", ino.0)?;
            }
            Ok(())
        })
    }

    /// The log this metadata depends on, as recorded by the last durable
    /// commit: `(log id, last durable LSN)`, or `None` when no log is
    /// needed (a new store, or everything was in the object store at the
    /// last clean stop).
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn log_dependency(&self) -> Result<Option<(u64, u64)>> {
        self.read(|tx| {
            let id = tx.counter("log_id")?;
            Ok((id != 0).then_some((id, tx.counter("log_lsn")?)))
        })
    }

    /// Records that no log is needed (everything is in the object store)
    /// and makes it durable. The next durable commit records the log
    /// again.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn forget_log(&self) -> Result<()> {
        *lock_dep(&self.recorded) = None;
        self.backend.run(TxMode::Durable, &|| Ok(()), &mut |tx| {
            tx.set_counter("log_id", 0)?;
            tx.set_counter("log_lsn", 0)
        })
    }

    /// The inode `name` in directory `parent` (`.` and `..` included).
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`, `ENAMETOOLONG`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Inode> {
        self.lookup_as(parent, name, &ops::allow_all)
    }

    /// [`MetaStore::lookup`] under a permission policy, checked in the
    /// same transaction ([`ops::Check::Search`] of `parent`).
    ///
    /// # Errors
    /// As [`MetaStore::lookup`], and what `policy` returns.
    pub fn lookup_as(&self, parent: Ino, name: &[u8], policy: Policy<'_>) -> Result<Inode> {
        self.read(|tx| ops::lookup(tx, parent, name, policy))
    }

    /// The inode `ino`.
    ///
    /// # Errors
    /// `ENOENT`.
    pub fn getattr(&self, ino: Ino) -> Result<Inode> {
        self.read(|tx| ops::getattr(tx, ino))
    }

    /// Creates `name` in `parent` (any type); updates the parent's times.
    ///
    /// # Errors
    /// `EEXIST`, `ENOENT`, `ENOTDIR`, `ENAMETOOLONG`, `EINVAL`.
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        node: &NewNode<'_>,
        now: Timespec,
    ) -> Result<Inode> {
        self.create_as(parent, name, &|_| Ok(*node), now, &ops::allow_all)
    }

    /// [`MetaStore::create`] in one transaction with its permission check
    /// ([`ops::Check::Modify`] of `parent`); `node` makes the new inode's
    /// settings from the parent's attributes.
    ///
    /// # Errors
    /// As [`MetaStore::create`], and what `policy` or `node` return.
    pub fn create_as<'t>(
        &self,
        parent: Ino,
        name: &[u8],
        node: &dyn Fn(&Inode) -> Result<NewNode<'t>>,
        now: Timespec,
        policy: Policy<'_>,
    ) -> Result<Inode> {
        self.write(TxMode::Write, |tx| {
            ops::create(tx, parent, name, node, now, policy)
        })
    }

    /// Adds the hard link `parent/name` to `ino`.
    ///
    /// # Errors
    /// `EPERM` for a directory, `EMLINK`, `EEXIST`, `ENOENT`, `ENOTDIR`.
    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8], now: Timespec) -> Result<Inode> {
        self.link_as(ino, parent, name, now, &ops::allow_all)
    }

    /// [`MetaStore::link`] with its permission check in the same
    /// transaction.
    ///
    /// # Errors
    /// As [`MetaStore::link`], and what `policy` returns.
    pub fn link_as(
        &self,
        ino: Ino,
        parent: Ino,
        name: &[u8],
        now: Timespec,
        policy: Policy<'_>,
    ) -> Result<Inode> {
        self.write(TxMode::Write, |tx| {
            ops::link(tx, ino, parent, name, now, policy)
        })
    }

    /// Removes the entry of a non-directory; returns the inode with its
    /// new link count.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR`, `ENOTDIR`.
    pub fn unlink(&self, parent: Ino, name: &[u8], now: Timespec) -> Result<Inode> {
        self.unlink_as(parent, name, now, &ops::allow_all)
    }

    /// [`MetaStore::unlink`] with its permission and sticky-bit checks in
    /// the same transaction.
    ///
    /// # Errors
    /// As [`MetaStore::unlink`], and what `policy` returns.
    pub fn unlink_as(
        &self,
        parent: Ino,
        name: &[u8],
        now: Timespec,
        policy: Policy<'_>,
    ) -> Result<Inode> {
        self.write(TxMode::Write, |tx| {
            ops::unlink(tx, parent, name, now, policy)
        })
    }

    /// Removes an empty directory.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`, `ENOTEMPTY`, `EINVAL`.
    pub fn rmdir(&self, parent: Ino, name: &[u8], now: Timespec) -> Result<Inode> {
        self.rmdir_as(parent, name, now, &ops::allow_all)
    }

    /// [`MetaStore::rmdir`] with its permission and sticky-bit checks in
    /// the same transaction.
    ///
    /// # Errors
    /// As [`MetaStore::rmdir`], and what `policy` returns.
    pub fn rmdir_as(
        &self,
        parent: Ino,
        name: &[u8],
        now: Timespec,
        policy: Policy<'_>,
    ) -> Result<Inode> {
        self.write(TxMode::Write, |tx| {
            ops::rmdir(tx, parent, name, now, policy)
        })
    }

    /// Renames; returns the inode the target name held (link count already
    /// lowered), if any.
    ///
    /// # Errors
    /// `ENOENT`, `EEXIST` (noreplace), `ENOTDIR`, `EISDIR`, `ENOTEMPTY`,
    /// `EINVAL` (a directory below itself). Never `EXDEV`.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        now: Timespec,
    ) -> Result<Option<Inode>> {
        self.rename_as(
            parent,
            name,
            new_parent,
            new_name,
            flags,
            now,
            &ops::allow_all,
        )
    }

    /// [`MetaStore::rename`] with its permission and sticky-bit checks in
    /// the same transaction.
    ///
    /// # Errors
    /// As [`MetaStore::rename`], and what `policy` returns.
    #[allow(clippy::too_many_arguments)]
    pub fn rename_as(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        now: Timespec,
        policy: Policy<'_>,
    ) -> Result<Option<Inode>> {
        self.write(TxMode::Write, |tx| {
            ops::rename(tx, parent, name, new_parent, new_name, flags, now, policy)
        })
    }

    /// Sets attributes.
    ///
    /// # Errors
    /// `ENOENT`; `EISDIR` for a size on a directory.
    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Inode> {
        self.write(TxMode::Write, |tx| ops::setattr(tx, ino, set))
    }

    /// Truncates: sets the size (and the truncate LSN) and cuts the block
    /// map in one transaction; returns the inode and the objects dropped.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR`.
    pub fn truncate(&self, ino: Ino, set: &SetAttr) -> Result<(Inode, Vec<BlockKey>)> {
        let size = set
            .size
            .ok_or(FsError::Invalid("truncate without a size"))?;
        self.write(TxMode::Write, |tx| {
            let f = ops::setattr(tx, ino, set)?;
            let dropped = ops::truncate_blocks(tx, ino, size)?;
            Ok((f, dropped))
        })
    }

    /// Up to `limit` entries of `dir` after position `after` (0: from the
    /// start), in position order. `.` and `..` are not included.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`.
    pub fn readdir(&self, dir: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        self.read(|tx| ops::readdir(tx, dir, after, limit))
    }

    /// [`MetaStore::readdir`] with each entry's inode, in one transaction
    /// (for `readdirplus`).
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`.
    pub fn readdir_plus(
        &self,
        dir: Ino,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, Inode)>> {
        Ok(self.readdir_plus_dots(dir, after, limit, false)?.entries)
    }

    /// [`MetaStore::readdir_plus`] with the directory's inode and, with
    /// `parent`, its parent's, in the same transaction (the attributes of
    /// `.` and `..`): one transaction per listing reply.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`.
    pub fn readdir_plus_dots(
        &self,
        dir: Ino,
        after: u64,
        limit: usize,
        parent: bool,
    ) -> Result<DirPage> {
        self.read(|tx| ops::readdir_plus_dots(tx, dir, after, limit, parent))
    }

    /// A symlink's target.
    ///
    /// # Errors
    /// `ENOENT`, `EINVAL` for a non-symlink.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.read(|tx| ops::readlink(tx, ino))
    }

    /// Deletes an unlinked inode (link count 0, no handle open); returns
    /// its objects for garbage collection.
    ///
    /// # Errors
    /// `EINVAL` if it is still linked.
    pub fn purge(&self, ino: Ino) -> Result<Vec<BlockKey>> {
        self.write(TxMode::Write, |tx| ops::purge(tx, ino))
    }

    /// [`MetaStore::purge`] of many inodes in one transaction; an inode
    /// that is gone is skipped, and so is one linked again meanwhile
    /// (never purged). Returns the objects of all of them.
    ///
    /// # Errors
    /// [`FsError::Io`] (nothing purged).
    pub fn purge_many(&self, inos: &[Ino]) -> Result<Vec<BlockKey>> {
        self.write(TxMode::Write, |tx| {
            let mut keys = Vec::new();
            for &ino in inos {
                if tx.inode(ino)?.is_some_and(|a| a.nlink == 0) {
                    keys.extend(ops::purge(tx, ino)?);
                }
            }
            Ok(keys)
        })
    }

    /// Those of `inos` that exist with link count 0, in one read.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn unlinked(&self, inos: &[Ino]) -> Result<Vec<Ino>> {
        self.read(|tx| {
            let mut out = Vec::new();
            for &ino in inos {
                if tx.inode(ino)?.is_some_and(|a| a.nlink == 0) {
                    out.push(ino);
                }
            }
            Ok(out)
        })
    }

    /// Inodes with link count 0 (left by a crash while open-unlinked).
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn orphans(&self) -> Result<Vec<Ino>> {
        self.read(|tx| tx.orphans())
    }

    /// The highest LSN metadata refers to: the log's durable LSN it last
    /// recorded, and any inode's size or truncate LSN. A log created anew
    /// starts past it (`WalConfig::first_lsn`).
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn max_lsn(&self) -> Result<u64> {
        self.read(|tx| Ok(tx.counter("log_lsn")?.max(tx.max_inode_lsn()?)))
    }

    /// Inodes whose size or last truncate depends on a log record with an
    /// LSN above `lsn` (for recovery after a log lost its tail).
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn inodes_past(&self, lsn: u64) -> Result<Vec<Ino>> {
        self.read(|tx| tx.inodes_past(lsn))
    }

    /// Recovery after the log lost its tail past `lsn`: sets the size of
    /// `ino` to `size` (not more than it has), and its size and truncate
    /// LSNs to at most `lsn`, so that nothing in metadata refers to a
    /// record the log no longer has.
    ///
    /// # Errors
    /// `ENOENT`, [`FsError::Io`].
    pub fn settle_size(&self, ino: Ino, size: u64, lsn: u64) -> Result<Inode> {
        self.write(TxMode::Write, |tx| {
            let mut f = ops::getattr(tx, ino)?;
            f.size = f.size.min(size);
            f.synced_size = f.synced_size.min(f.size);
            f.size_lsn = f.size_lsn.min(lsn);
            f.truncate_lsn = f.truncate_lsn.min(lsn);
            tx.put_inode(&f)?;
            Ok(f)
        })
    }

    /// The end of the committed blocks of `ino` (0 if none): bytes up to
    /// it are in the object store.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn blocks_end(&self, ino: Ino) -> Result<u64> {
        self.read(|tx| {
            Ok(tx
                .file_blocks(ino)?
                .iter()
                .map(|(a, r)| a.file_offset() + u64::from(r.len))
                .max()
                .unwrap_or(0))
        })
    }

    /// Makes blocks of `dst` reference the objects of blocks of `src`
    /// (a clone: `copy_file_range` with no bytes moved): for each `k` in
    /// `which`, the 4 MiB block at `dst_at + k * 4 MiB` takes what the
    /// block at `src_at + k * 4 MiB` has (a hole if nothing). Both offsets
    /// are block-aligned. `dst`'s size grows to cover the blocks. One
    /// transaction, not durable on return. Returns the objects no longer
    /// referenced (doomed).
    ///
    /// # Errors
    /// `ENOENT` (`dst` is gone), [`FsError::Io`].
    pub fn clone_blocks(
        &self,
        src: Ino,
        src_at: u64,
        dst: Ino,
        dst_at: u64,
        which: &[u64],
    ) -> Result<Vec<BlockKey>> {
        self.write(TxMode::Write, |tx| {
            ops::clone_blocks(tx, src, src_at, dst, dst_at, which)
        })
    }

    /// The byte ranges of `ino` that committed blocks hold (each block's
    /// valid bytes), in file order.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn block_ranges(&self, ino: Ino) -> Result<Vec<std::ops::Range<u64>>> {
        self.read(|tx| {
            Ok(tx
                .file_blocks(ino)?
                .iter()
                .map(|(a, r)| a.file_offset()..a.file_offset() + u64::from(r.len))
                .collect())
        })
    }

    /// Extended attribute `name` of `ino`.
    ///
    /// # Errors
    /// `ENODATA`, `ENOENT`.
    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.read(|tx| ops::get_xattr(tx, ino, name))
    }

    /// Whether any inode has an extended attribute (one indexed probe).
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn any_xattr(&self) -> Result<bool> {
        self.read(|tx| tx.any_xattr())
    }

    /// Sets an extended attribute.
    ///
    /// # Errors
    /// `EEXIST` / `ENODATA` per `flags`, `ERANGE` for a name over 255
    /// bytes, `EFBIG` for a value over 64 KiB.
    pub fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
        now: Timespec,
    ) -> Result<()> {
        self.write(TxMode::Write, |tx| {
            ops::set_xattr(tx, ino, name, value, flags, now)
        })
    }

    /// Names of the extended attributes of `ino`.
    ///
    /// # Errors
    /// `ENOENT`.
    pub fn list_xattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.read(|tx| ops::list_xattr(tx, ino))
    }

    /// Removes an extended attribute.
    ///
    /// # Errors
    /// `ENODATA`, `ENOENT`.
    pub fn remove_xattr(&self, ino: Ino, name: &[u8], now: Timespec) -> Result<()> {
        self.write(TxMode::Write, |tx| ops::remove_xattr(tx, ino, name, now))
    }

    /// Inodes and bytes in use.
    ///
    /// # Errors
    /// [`FsError::Io`].
    pub fn usage(&self) -> Result<Usage> {
        self.read(|tx| tx.usage())
    }
}

fn meta_err(op: &'static str) -> impl Fn(FsError) -> MetaError {
    move |e| MetaError::Backend {
        op,
        source: Box::new(e),
    }
}

impl BlockMap for MetaStore {
    fn block(&self, addr: BlockAddr) -> std::result::Result<Option<BlockRef>, MetaError> {
        self.read(|tx| tx.block(addr)).map_err(meta_err("block"))
    }

    fn allocate_version(&self) -> std::result::Result<u64, MetaError> {
        let mut r = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        if r.0 >= r.1 {
            // Durable: a version handed out before a power loss is never
            // handed out again after it.
            let last = self
                .write(TxMode::Durable, |tx| {
                    let last = tx.counter("version")?;
                    tx.set_counter("version", last + VERSION_RANGE)?;
                    Ok(last)
                })
                .map_err(meta_err("allocate version"))?;
            *r = (last + 1, last + 1 + VERSION_RANGE);
        }
        r.0 += 1;
        Ok(r.0 - 1)
    }

    fn commit_block(
        &self,
        addr: BlockAddr,
        new: BlockRef,
    ) -> std::result::Result<Option<BlockRef>, MetaError> {
        // Not durable: the transfer manager makes block commits durable in
        // groups (`BlockMap::sync`) before the log may forget their bytes.
        match self.write(TxMode::Write, |tx| ops::commit_block(tx, addr, new)) {
            Ok(old) => Ok(old),
            // A gone file fails before its transaction writes anything.
            Err(FsError::NotFound) => Err(MetaError::FileGone { file: addr.file }),
            Err(e) => Err(meta_err("commit block")(e)),
        }
    }

    fn commit_hole(
        &self,
        addr: BlockAddr,
        len: u32,
    ) -> std::result::Result<Option<BlockRef>, MetaError> {
        match self.write(TxMode::Write, |tx| ops::commit_hole(tx, addr, len)) {
            Ok(old) => Ok(old),
            Err(FsError::NotFound) => Err(MetaError::FileGone { file: addr.file }),
            Err(e) => Err(meta_err("commit hole")(e)),
        }
    }

    fn commit_over(
        &self,
        addr: BlockAddr,
        base: Option<BlockRef>,
        new: Option<BlockRef>,
        len: u32,
    ) -> std::result::Result<Option<BlockRef>, MetaError> {
        self.write(TxMode::Write, |tx| commit_over_in(tx, addr, base, new, len))
            .map_err(meta_err("commit block"))?
    }

    fn commit_over_many(
        &self,
        items: &[BlockCommit],
    ) -> std::result::Result<Vec<std::result::Result<Option<BlockRef>, MetaError>>, MetaError> {
        self.write(TxMode::Write, |tx| {
            items
                .iter()
                .map(|c| commit_over_in(tx, c.addr, c.base, c.new, c.len))
                .collect()
        })
        .map_err(meta_err("commit blocks"))
    }

    fn commit_seq(&self) -> u64 {
        MetaStore::commit_seq(self)
    }

    fn is_durable(&self, seq: u64) -> bool {
        MetaStore::is_durable(self, seq)
    }

    fn truncate_blocks(
        &self,
        file: FileId,
        size: u64,
    ) -> std::result::Result<Vec<BlockKey>, MetaError> {
        self.write(TxMode::Write, |tx| {
            ops::truncate_blocks(tx, Ino(file.0), size)
        })
        .map_err(meta_err("truncate blocks"))
    }

    fn punch_blocks(
        &self,
        file: FileId,
        from: u64,
        to: u64,
    ) -> std::result::Result<Vec<BlockKey>, MetaError> {
        self.write(TxMode::Write, |tx| {
            ops::punch_blocks(tx, Ino(file.0), from, to)
        })
        .map_err(meta_err("punch blocks"))
    }

    fn remove_blocks(&self, file: FileId) -> std::result::Result<Vec<BlockKey>, MetaError> {
        self.write(TxMode::Write, |tx| ops::truncate_blocks(tx, Ino(file.0), 0))
            .map_err(meta_err("remove blocks"))
    }

    fn sync(&self) -> std::result::Result<(), MetaError> {
        MetaStore::sync(self).map_err(meta_err("sync"))
    }

    fn doomed(&self) -> std::result::Result<Vec<BlockKey>, MetaError> {
        self.read(|tx| tx.doomed()).map_err(meta_err("doomed"))
    }

    fn forget_doomed(&self, keys: &[BlockKey]) -> std::result::Result<(), MetaError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(TxMode::Write, |tx| {
            for k in keys {
                tx.forget_doomed(*k)?;
            }
            Ok(())
        })
        .map_err(meta_err("forget doomed"))
    }

    fn is_referenced(&self, key: &BlockKey) -> std::result::Result<bool, MetaError> {
        // Its own block or a clone: the rows holding its version (an
        // index), whose key is this one. (A version is handed out once,
        // but an object planted in the store under a used version is not
        // that version's object.)
        self.read(|tx| {
            Ok(tx
                .version_rows(key.version)?
                .iter()
                .any(|(a, r)| r.key(*a) == *key))
        })
        .map_err(meta_err("is referenced"))
    }
}

/// One compare-and-set block commit inside `tx` ([`BlockMap::commit_over`]):
/// `Ok(Err(..))` when the block is not committed (it changed since the
/// upload read it, or its file is gone), with nothing written for it.
fn commit_over_in(
    tx: &mut dyn Tx,
    addr: BlockAddr,
    base: Option<BlockRef>,
    new: Option<BlockRef>,
    len: u32,
) -> Result<std::result::Result<Option<BlockRef>, MetaError>> {
    let now = tx.block(addr)?;
    // This very commit, made by an attempt whose answer was lost with its
    // connection (versions are never reused): done, and what it dropped
    // is on the doomed list already.
    if now != base && new.is_some() && now == new {
        return Ok(Ok(None));
    }
    if now != base {
        return Ok(Err(MetaError::Conflict { addr }));
    }
    let r = match new {
        Some(n) => ops::commit_block(tx, addr, n),
        None => ops::commit_hole(tx, addr, len),
    };
    match r {
        Ok(old) => Ok(Ok(old)),
        // A gone file fails before its commit writes anything.
        Err(FsError::NotFound) => Ok(Err(MetaError::FileGone { file: addr.file })),
        Err(e) => Err(e),
    }
}

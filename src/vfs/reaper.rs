//! The orphan reaper: frees unlinked inodes once their unlink is durable.
//!
//! An unlink, rmdir or rename that drops an inode's last link leaves the
//! inode in metadata with link count 0 (an *orphan*, as on ext4 and XFS),
//! in the same transaction as the entry change. Its data (log records,
//! cache, block map, objects) is freed only after that transaction is
//! durable: a Remove record that reached the log before the unlink reached
//! metadata would, after a power loss, leave a linked file whose bytes the
//! log replay dropped (a file full of zeros). So the reaper batches: it
//! makes metadata durable once (which syncs the log first), then frees
//! every orphan queued before. No fsync per unlink.
//!
//! A crash before the free leaves the orphan in metadata; recovery frees
//! it (`Vfs::recover`, after its own metadata sync).
//!
//! The same thread syncs metadata when its journal asks for a checkpoint
//! ([`MetaStore::checkpoint_due`]), looking every [`CHECKPOINT_POLL`]: a
//! sync may copy the journal into the database only with the log synced
//! before it, and nothing else syncs while no file is fsynced, uploaded or
//! unlinked.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use slicefs_cache::SliceCache;
use slicefs_wal::Persister;

use super::space::Space;
use super::{Node, lock, wal_err};
use crate::error::FsError;
use crate::meta::{Ino, MetaStore};
use crate::transfer::TransferManager;

/// Orphans queued past this count are reaped at once, without waiting for
/// the interval.
const BATCH_MAX: usize = 4096;

/// How often the reaper thread asks whether metadata wants a checkpoint.
/// At a few thousand namespace operations per second this bounds the
/// SQLite WAL to a few tens of MB.
pub(super) const CHECKPOINT_POLL: Duration = Duration::from_millis(100);

/// What freeing an inode needs: the stores that hold its data.
#[derive(Clone)]
pub(super) struct Parts {
    pub meta: MetaStore,
    pub cache: Arc<SliceCache>,
    pub persister: Arc<dyn Persister>,
    pub tm: TransferManager,
    pub nodes: Arc<Mutex<HashMap<Ino, Arc<Node>>>>,
    pub space: Arc<Space>,
    /// A shared volume's session timeout (`VfsConfig::session_timeout`):
    /// this thread also sends the heartbeats.
    pub session_timeout: Option<Duration>,
}

impl Parts {
    /// Frees an orphan whose unlink is durable: a Remove record in the
    /// log (not synced: if it is lost, the orphan is freed again at the
    /// next start), the cache, then the inode and its block map (whose
    /// objects are deleted once that is durable, by the transfer
    /// manager's collector). Skips an inode that is open again or
    /// linked again.
    pub fn free(&self, ino: Ino) -> Result<(), FsError> {
        if lock(&self.nodes).contains_key(&ino) {
            return Ok(());
        }
        match self.meta.getattr(ino) {
            Ok(a) if a.nlink == 0 => {}
            Ok(_) | Err(FsError::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.persister.append_remove(ino.file()).map_err(wal_err)?;
        self.cache.remove(ino.file());
        self.tm
            .change_blocks(ino.file(), true, || self.meta.purge(ino).map(|k| ((), k)))
    }

    /// [`Parts::free`] for many orphans at once: one metadata read and one
    /// metadata transaction for all of them instead of two per inode
    /// (`rm -rf` of a tree spent a fifth of the daemon's CPU freeing its
    /// files one by one).
    ///
    /// # Errors
    /// A log append's or the metadata's error; nothing is half-freed that
    /// a retry of the whole batch would not finish.
    pub fn free_many(&self, inos: &[Ino]) -> Result<(), FsError> {
        let closed: Vec<Ino> = {
            let nodes = lock(&self.nodes);
            inos.iter()
                .copied()
                .filter(|i| !nodes.contains_key(i))
                .collect()
        };
        let doomed = self.meta.unlinked(&closed)?;
        if doomed.is_empty() {
            return Ok(());
        }
        for ino in &doomed {
            self.persister.append_remove(ino.file()).map_err(wal_err)?;
            self.cache.remove(ino.file());
        }
        let files: Vec<_> = doomed.iter().map(|i| i.file()).collect();
        self.tm.change_blocks_of_many(&files, true, || {
            self.meta.purge_many(&doomed).map(|k| ((), k))
        })
    }
}

/// The heartbeats of a shared volume's session, from the reaper thread.
#[derive(Default)]
struct Heartbeat {
    last: Option<Instant>,
    /// When a heartbeat last went through.
    last_ok: Option<Instant>,
    failing: bool,
}

impl Heartbeat {
    /// Every sixth of `timeout`: refreshes this host's session, cleans up
    /// after dead ones, and queues this host's orphans.
    fn tick(&mut self, s: &Shared, timeout: Duration) {
        let every = (timeout / 6).max(Duration::from_millis(100));
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        // After a stretch without heartbeats (the database was away, or
        // this thread stalled) other hosts may look dead only because
        // they could not beat either: no cleanup this time.
        let clean = self.last_ok.is_some_and(|t| t.elapsed() < timeout / 2);
        let r = s
            .parts
            .meta
            .session_heartbeat(timeout, clean)
            .and_then(|(dead, lost)| {
                if dead > 0 {
                    tracing::warn!(
                        sessions = dead,
                        "cleaned up after hosts silent for {timeout:?}: their open files are no longer held"
                    );
                }
                if lost {
                    tracing::warn!(
                        "another host took this one for dead (no heartbeat for {timeout:?}); holding its open files again"
                    );
                    s.hold_open_files()?;
                }
                s.queue_own_orphans()
            });
        match r {
            Ok(()) => {
                self.failing = false;
                self.last_ok = Some(Instant::now());
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(error = %e, "session heartbeat failed; will retry");
                }
                self.failing = true;
            }
        }
    }
}

/// Orphans freed per metadata transaction: bounds how long one holds the
/// metadata lock.
const FREE_BATCH: usize = 256;

#[derive(Default)]
struct State {
    pending: Vec<Ino>,
    shutdown: bool,
}

struct Shared {
    parts: Parts,
    state: Mutex<State>,
    /// Held for a whole reap, so that [`Reaper::reap_now`] returns only
    /// after a batch the thread took before it is freed too.
    reaping: Mutex<()>,
    cv: Condvar,
    interval: Duration,
}

/// The background reaper of one VFS. Stops (and joins its thread) when
/// dropped; orphans still queued then stay orphans in metadata and are
/// freed at the next start.
pub(super) struct Reaper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Starts the reaper thread; it reaps what is queued every
    /// `interval`, or at once past [`BATCH_MAX`] orphans.
    pub fn start(parts: Parts, interval: Duration) -> Result<Reaper, FsError> {
        let shared = Arc::new(Shared {
            parts,
            state: Mutex::new(State::default()),
            reaping: Mutex::new(()),
            cv: Condvar::new(),
            interval,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("orphan-reaper".into())
            .spawn(move || s.run())
            .map_err(|e| FsError::io("start the orphan reaper", e))?;
        Ok(Reaper {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues an orphan (link count 0, no handle open) for freeing once
    /// its unlink is durable.
    pub fn queue(&self, ino: Ino) {
        let mut st = lock(&self.shared.state);
        st.pending.push(ino);
        if st.pending.len() >= BATCH_MAX {
            self.shared.cv.notify_all();
        }
    }

    /// Makes metadata durable and frees every orphan queued before this
    /// call, in this thread.
    ///
    /// # Errors
    /// The metadata sync's or a free's error (what is left stays queued).
    pub fn reap_now(&self) -> Result<(), FsError> {
        self.shared.reap()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        let mut failing = false;
        let mut compacted_at = self.parts.persister.next_lsn();
        let mut beat = Heartbeat::default();
        loop {
            if let Some(timeout) = self.parts.session_timeout {
                beat.tick(self, timeout);
            }
            let deadline = Instant::now() + self.interval;
            {
                let mut st = lock(&self.state);
                loop {
                    if st.shutdown {
                        return;
                    }
                    let now = Instant::now();
                    if st.pending.len() >= BATCH_MAX
                        || now >= deadline
                        || self.parts.meta.checkpoint_due()
                    {
                        break;
                    }
                    let wait = deadline
                        .saturating_duration_since(now)
                        .max(self.interval / 4)
                        .min(CHECKPOINT_POLL);
                    st = self
                        .cv
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            self.parts.space.restore();
            let mut reaped = self.reap();
            if matches!(reaped, Err(FsError::NoSpace(_))) {
                // Freeing needs a little space itself.
                self.parts.space.relieve(true);
                reaped = self.reap();
            }
            match reaped {
                Ok(()) => failing = false,
                Err(e) => {
                    // Said once per failing stretch; the orphans stay
                    // queued (and in metadata) and are tried again.
                    if !failing {
                        tracing::error!(error = %e, "freeing unlinked files failed; will retry");
                    }
                    failing = true;
                }
            }
            self.compact_when_clean(&mut compacted_at);
        }
    }

    /// Once every byte is in the object store (nothing dirty) and the log
    /// has grown since the last time, compacts the whole log, its active
    /// segment too: reclaim on its own leaves uploaded data in the active
    /// segment until that fills (64 MiB by default), which a data dir on a
    /// small disk cannot spare.
    fn compact_when_clean(&self, compacted_at: &mut slicefs_wal::Lsn) {
        let p = &self.parts.persister;
        if !p.is_enabled() || self.parts.cache.dirty_bytes() > 0 {
            return;
        }
        let next = p.next_lsn();
        if next == *compacted_at {
            return;
        }
        match p.reclaim_all() {
            Ok(s) => {
                tracing::debug!(?s, "log compacted: everything is in the object store");
                *compacted_at = next;
            }
            Err(e) => tracing::debug!(error = %e, "log compaction when clean failed"),
        }
    }

    /// Holds every file open here again (after this host's session was
    /// taken for dead and its holds dropped).
    fn hold_open_files(&self) -> Result<(), FsError> {
        let nodes = lock(&self.parts.nodes);
        for ino in nodes.keys() {
            self.parts.meta.hold_open(*ino, true)?;
        }
        Ok(())
    }

    /// Queues this host's orphans that no handle here holds (another
    /// host may have held them at the unlink, or they came from a dead
    /// host's session): freed at the next reap unless still held
    /// elsewhere.
    fn queue_own_orphans(&self) -> Result<(), FsError> {
        let orphans = self.parts.meta.orphans()?;
        let nodes = lock(&self.parts.nodes);
        let free: Vec<Ino> = orphans
            .into_iter()
            .filter(|i| !nodes.contains_key(i))
            .collect();
        drop(nodes);
        lock(&self.state).pending.extend(free);
        Ok(())
    }

    fn reap(&self) -> Result<(), FsError> {
        let _reaping = lock(&self.reaping);
        let batch = std::mem::take(&mut lock(&self.state).pending);
        if batch.is_empty() {
            if self.parts.meta.checkpoint_due() {
                return self.parts.meta.sync();
            }
            return Ok(());
        }
        let requeue = |rest: &[Ino]| lock(&self.state).pending.extend_from_slice(rest);
        // The unlinks of the whole batch become durable here, with the
        // log before them.
        if let Err(e) = self.parts.meta.sync() {
            requeue(&batch);
            return Err(e);
        }
        for (i, part) in batch.chunks(FREE_BATCH).enumerate() {
            if let Err(e) = self.parts.free_many(part) {
                requeue(&batch[i * FREE_BATCH..]);
                return Err(e);
            }
        }
        Ok(())
    }
}

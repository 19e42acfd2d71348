//! Which files to upload next: the upload state of each file with dirty
//! data or uploads in flight, and a queue of those files ordered by when
//! their dirty data is due. Planning pops only the files that are due, so
//! its cost follows the uploads it starts, not the number of dirty files
//! (a rescan and sort of every dirty file per upload completion was
//! quadratic in them).
//!
//! The queue is lazy: a file's key is never moved later (a write that
//! postpones a file's upload leaves its key in place); when the key comes
//! up, the file's due time is worked out again and the file is queued
//! anew if it is not due yet.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slicefs_cache::SnapshotOptions;
use slicefs_wal::FileId;

use super::lock;

/// Upload state of one file.
#[derive(Default)]
pub(super) struct FileState {
    /// When the file first had dirty data not yet planned for upload.
    pub(super) dirty_since: Option<Instant>,
    /// When the oldest of the file's data not yet uploaded became dirty:
    /// unlike `dirty_since`, planning does not reset it, only the end of
    /// the file's last upload with nothing dirty left (so a stalled upload
    /// shows its true age in `status`).
    pub(super) dirty_first: Option<Instant>,
    /// The last write to the file.
    pub(super) last_write: Option<Instant>,
    /// A write filled a block: upload full blocks now.
    pub(super) full_block: bool,
    /// Upload everything now (fsync, close, drain, or more left after a
    /// partial round).
    pub(super) flush_requested: bool,
    /// Uploads of the file in progress.
    pub(super) uploads: usize,
    /// Bumped by truncate and remove: a snapshot taken before is stale.
    pub(super) epoch: u64,
    /// Serializes a commit's epoch check with truncate and remove.
    pub(super) gate: Arc<Mutex<u64>>,
    pub(super) removed: bool,
    /// The file's key in the queue, if it is queued.
    queued: Option<Instant>,
}

impl FileState {
    /// Records dirty data not yet planned, as of `now`.
    pub(super) fn mark_dirty(&mut self, now: Instant) {
        self.dirty_since.get_or_insert(now);
        self.dirty_first.get_or_insert(now);
    }

    /// Nothing to upload, nothing in flight, and no stamp or truncate
    /// holds the gate (so no epoch check can miss the state's loss: a
    /// later write brings the file back with a fresh gate).
    fn idle(&self) -> bool {
        self.dirty_since.is_none()
            && !self.flush_requested
            && !self.full_block
            && self.uploads == 0
            && Arc::strong_count(&self.gate) == 1
    }
}

/// The file state a snapshot was taken under: its commit is valid only if
/// the gate is still the file's and its epoch unchanged (no truncate or
/// remove since).
#[derive(Clone)]
pub(super) struct Stamp {
    pub(super) epoch: u64,
    pub(super) gate: Arc<Mutex<u64>>,
}

impl Stamp {
    /// Whether a truncate or remove came since the snapshot.
    pub(super) fn stale(&self) -> bool {
        *lock(&self.gate) != self.epoch
    }
}

/// When dirty data becomes due (from [`super::TransferConfig`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    pub(super) upload_delay: Duration,
    pub(super) max_dirty_age: Duration,
    pub(super) eager_full_blocks: bool,
}

impl Timing {
    /// When the file's whole dirty data is due by age alone: once no
    /// write came for `upload_delay`, and at most `max_dirty_age` (not
    /// less than `upload_delay`) after it first became dirty.
    fn due_by_age(&self, st: &FileState, since: Instant) -> Instant {
        let quiet = st.last_write.map_or(since, |w| w.max(since)) + self.upload_delay;
        let oldest = since + self.max_dirty_age.max(self.upload_delay);
        quiet.min(oldest)
    }

    /// The file's key in the queue: its dirty time when something is due
    /// now (a flush, or a full block with eager uploads), so that the
    /// oldest dirty data goes first; else [`Timing::due_by_age`]. `None`
    /// without dirty data.
    fn key(&self, st: &FileState) -> Option<Instant> {
        let since = st.dirty_since?;
        if st.flush_requested || (st.full_block && self.eager_full_blocks) {
            return Some(since);
        }
        Some(self.due_by_age(st, since))
    }
}

/// What to snapshot of a file taken off the queue.
pub(super) struct Planned {
    pub(super) file: FileId,
    /// When it became dirty (given back by [`Plan::replan`]).
    pub(super) since: Instant,
    pub(super) opts: SnapshotOptions,
    pub(super) stamp: Stamp,
}

/// The files with upload state, and the queue of those with dirty data.
pub(super) struct Plan {
    files: HashMap<FileId, FileState>,
    /// (key, file): see [`Timing::key`]. A file appears at most once with
    /// the key its state records; a stale pair (a file removed and seen
    /// again) is harmless (popped and checked like any other).
    queue: BTreeSet<(Instant, FileId)>,
    timing: Timing,
}

impl Plan {
    pub(super) fn new(timing: Timing) -> Plan {
        Plan {
            files: HashMap::new(),
            queue: BTreeSet::new(),
            timing,
        }
    }

    /// Files with upload state (dirty, or uploads in flight).
    pub(super) fn len(&self) -> usize {
        self.files.len()
    }

    /// When the oldest data not yet uploaded became dirty (planned or
    /// not, its upload in flight or stalled).
    pub(super) fn oldest_dirty(&self) -> Option<Instant> {
        self.files.values().filter_map(|s| s.dirty_first).min()
    }

    pub(super) fn get_mut(&mut self, file: FileId) -> Option<&mut FileState> {
        self.files.get_mut(&file)
    }

    /// The file's state, created empty if it has none.
    pub(super) fn entry(&mut self, file: FileId) -> &mut FileState {
        self.files.entry(file).or_default()
    }

    /// Drops the file's state and its place in the queue.
    pub(super) fn remove(&mut self, file: FileId) {
        if let Some(st) = self.files.remove(&file)
            && let Some(k) = st.queued
        {
            self.queue.remove(&(k, file));
        }
    }

    /// After an upload round of the file ended (or found nothing): with
    /// nothing dirty and nothing in flight its data is all uploaded; an
    /// idle state is dropped.
    pub(super) fn settle(&mut self, file: FileId) {
        if let Some(st) = self.files.get_mut(&file)
            && st.dirty_since.is_none()
            && st.uploads == 0
        {
            st.dirty_first = None;
        }
        self.forget_if_idle(file);
    }

    /// Drops the file's state if it is idle (see [`FileState::idle`]): the
    /// state follows dirty files, not every file ever written.
    pub(super) fn forget_if_idle(&mut self, file: FileId) {
        if self.files.get(&file).is_some_and(FileState::idle) {
            self.remove(file);
        }
    }

    /// Queues the file at its key, or moves it earlier if it is queued
    /// later. Call after every change that may make it due sooner.
    pub(super) fn schedule(&mut self, file: FileId) {
        let Some(st) = self.files.get_mut(&file) else {
            return;
        };
        let Some(key) = self.timing.key(st) else {
            return;
        };
        match st.queued {
            Some(k) if k <= key => return,
            Some(k) => {
                self.queue.remove(&(k, file));
            }
            None => {}
        }
        self.queue.insert((key, file));
        st.queued = Some(key);
    }

    /// Takes the next file due at `now` off the queue, with what to
    /// snapshot of it, and the chosen trigger cleared ([`Plan::replan`]
    /// puts back what is not served). `all`: everything dirty is due
    /// (drain, or dirty data past the pressure mark). Files popped but
    /// not due after all are queued again at their new key; `None` when
    /// nothing more is due.
    pub(super) fn next_due(&mut self, now: Instant, all: bool) -> Option<Planned> {
        loop {
            let &(k, file) = self.queue.first()?;
            if k > now && !all {
                return None;
            }
            self.queue.pop_first();
            let Some(st) = self.files.get_mut(&file) else {
                continue;
            };
            if st.queued == Some(k) {
                st.queued = None;
            }
            if st.removed {
                continue;
            }
            let Some(since) = st.dirty_since else {
                self.forget_if_idle(file);
                continue;
            };
            let stamp = Stamp {
                epoch: st.epoch,
                gate: st.gate.clone(),
            };
            if all || st.flush_requested || self.timing.due_by_age(st, since) <= now {
                st.dirty_since = None;
                st.flush_requested = false;
                st.full_block = false;
                return Some(Planned {
                    file,
                    since,
                    opts: SnapshotOptions::default(),
                    stamp,
                });
            }
            if st.full_block && self.timing.eager_full_blocks {
                st.full_block = false;
                // The rest stays dirty: queued for when it is due.
                self.schedule(file);
                return Some(Planned {
                    file,
                    since,
                    opts: SnapshotOptions {
                        full_blocks_only: true,
                        ..Default::default()
                    },
                    stamp,
                });
            }
            // A write postponed it: queued again at its new key.
            self.schedule(file);
        }
    }

    /// Puts a planned file back (it was not served in full): due at once.
    pub(super) fn replan(&mut self, p: &Planned) {
        let Some(st) = self.files.get_mut(&p.file) else {
            return;
        };
        if st.removed || !Arc::ptr_eq(&st.gate, &p.stamp.gate) {
            return;
        }
        st.dirty_since = Some(st.dirty_since.map_or(p.since, |s| s.min(p.since)));
        st.dirty_first = Some(st.dirty_first.map_or(p.since, |s| s.min(p.since)));
        if p.opts.full_blocks_only {
            st.full_block = true;
        } else {
            st.flush_requested = true;
        }
        self.schedule(p.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(eager: bool) -> Plan {
        Plan::new(Timing {
            upload_delay: Duration::from_secs(5),
            max_dirty_age: Duration::from_secs(30),
            eager_full_blocks: eager,
        })
    }

    fn dirty(p: &mut Plan, f: u64, since: Instant, last: Instant) {
        let st = p.entry(FileId(f));
        st.mark_dirty(since);
        st.last_write = Some(last);
        p.schedule(FileId(f));
    }

    #[test]
    fn files_come_due_in_order_of_their_due_time_and_not_before() {
        let t0 = Instant::now();
        let mut p = plan(false);
        dirty(&mut p, 1, t0, t0 + Duration::from_secs(2));
        dirty(&mut p, 2, t0, t0);
        assert!(p.next_due(t0 + Duration::from_secs(4), false).is_none());
        let a = p.next_due(t0 + Duration::from_secs(6), false).unwrap();
        assert_eq!(a.file, FileId(2));
        assert!(p.next_due(t0 + Duration::from_secs(6), false).is_none());
        let b = p.next_due(t0 + Duration::from_secs(7), false).unwrap();
        assert_eq!(b.file, FileId(1));
        assert!(!a.opts.full_blocks_only && !b.opts.full_blocks_only);
    }

    #[test]
    fn a_later_write_postpones_a_queued_file_and_max_age_bounds_it() {
        let t0 = Instant::now();
        let mut p = plan(false);
        dirty(&mut p, 1, t0, t0);
        // Written again at 4 s: not due at 5 s, due at 9 s.
        p.entry(FileId(1)).last_write = Some(t0 + Duration::from_secs(4));
        assert!(p.next_due(t0 + Duration::from_secs(5), false).is_none());
        assert!(p.next_due(t0 + Duration::from_secs(9), false).is_some());
        // Written every second: due at max_dirty_age all the same.
        dirty(&mut p, 2, t0, t0);
        p.entry(FileId(2)).last_write = Some(t0 + Duration::from_secs(29));
        assert!(p.next_due(t0 + Duration::from_secs(29), false).is_none());
        assert_eq!(
            p.next_due(t0 + Duration::from_secs(30), false)
                .unwrap()
                .file,
            FileId(2)
        );
    }

    #[test]
    fn a_flush_moves_a_file_ahead_and_drain_takes_everything() {
        let t0 = Instant::now();
        let mut p = plan(false);
        for f in 1..=3 {
            dirty(&mut p, f, t0, t0);
        }
        p.entry(FileId(3)).flush_requested = true;
        p.schedule(FileId(3));
        assert_eq!(p.next_due(t0, false).unwrap().file, FileId(3));
        assert!(p.next_due(t0, false).is_none());
        let mut rest: Vec<u64> = std::iter::from_fn(|| p.next_due(t0, true))
            .map(|x| x.file.0)
            .collect();
        rest.sort();
        assert_eq!(rest, vec![1, 2]);
    }

    #[test]
    fn eager_full_blocks_go_first_and_the_rest_stays_queued() {
        let t0 = Instant::now();
        let mut p = plan(true);
        dirty(&mut p, 1, t0, t0);
        p.entry(FileId(1)).full_block = true;
        p.schedule(FileId(1));
        let x = p.next_due(t0, false).unwrap();
        assert!(x.opts.full_blocks_only);
        assert!(p.next_due(t0, false).is_none());
        let y = p.next_due(t0 + Duration::from_secs(5), false).unwrap();
        assert!(!y.opts.full_blocks_only);
    }

    /// Regression (operations issue): `status` said "oldest dirty 3.0 s"
    /// while uploads had stalled for 37 s, because planning reset the
    /// dirty time.
    #[test]
    fn the_oldest_dirty_age_counts_until_the_upload_ends() {
        let t0 = Instant::now();
        let mut p = plan(false);
        dirty(&mut p, 1, t0, t0);
        let x = p.next_due(t0 + Duration::from_secs(5), false).unwrap();
        assert_eq!(p.oldest_dirty(), Some(t0), "planned, not uploaded");
        p.get_mut(FileId(1)).unwrap().uploads = 1;
        p.settle(FileId(1));
        assert_eq!(p.oldest_dirty(), Some(t0), "upload in flight or stalled");
        p.get_mut(FileId(1)).unwrap().uploads = 0;
        drop(x);
        p.settle(FileId(1));
        assert_eq!(p.oldest_dirty(), None);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_replanned_file_is_due_at_once_and_idle_state_is_dropped() {
        let t0 = Instant::now();
        let mut p = plan(false);
        dirty(&mut p, 1, t0, t0);
        let x = p.next_due(t0 + Duration::from_secs(5), true).unwrap();
        p.replan(&x);
        let y = p.next_due(t0, false).unwrap();
        assert_eq!(y.file, FileId(1));
        drop((x, y));
        p.forget_if_idle(FileId(1));
        assert_eq!(p.len(), 0);
        // A removed file is never planned.
        dirty(&mut p, 2, t0, t0);
        p.entry(FileId(2)).removed = true;
        assert!(p.next_due(t0 + Duration::from_secs(60), true).is_none());
    }
}

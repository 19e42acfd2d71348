//! A power-loss simulator: an in-memory FUSE file system with crash
//! semantics, for tests that put a program's data directory under it and
//! pull the plug.
//!
//! # Semantics
//!
//! Every inode has a *live* state (what reads see) and a *durable* state
//! (what a power loss leaves). Every operation changes only the live
//! state:
//!
//! - `write`, `truncate`, `fallocate`, `chmod`, `chown`, `utimes` change a
//!   file's live bytes, size and attributes; `fsync` or `fdatasync` of the
//!   file copies them into its durable state.
//! - `create`, `mknod`, `mkdir`, `symlink`, `link`, `unlink`, `rmdir` and
//!   `rename` change live directory entries; `fsync` of a directory copies
//!   its live entries into its durable entries. Nothing else makes an
//!   entry durable: not an `fsync` of the file, not an `fsync` of the
//!   parent's parent.
//!
//! [`PowerLossFs::power_loss`] unmounts and replaces everything with the
//! durable tree: the inodes reachable from the root through durable
//! entries, each in its durable state. So a file created but whose
//! directory was not synced since is gone; a file never synced whose name
//! survived is empty; a directory whose entry in its parent was not synced
//! is gone with everything under it; an unsynced `unlink` or `rename` is
//! undone. This is stricter than ext4 or LazyFS, which never lose a
//! namespace operation once the journal commits it.
//!
//! A rename across directories of which only the target was synced leaves
//! both names (the source directory's durable entries still hold the old
//! one): for a file, two hard links to it; for a directory, which cannot
//! have two parents, only the first entry in breadth-first, name order
//! survives (counted in [`PowerLossReport::entries_dropped`]).
//!
//! In torn mode ([`Crash::tear`]) each file keeps, beyond its durable
//! bytes, a random prefix of the data operations (writes, size changes)
//! that followed its last sync, as page write-back may have written them;
//! the first operation not kept, if a write crossing a 4096-byte boundary,
//! is kept up to a random such boundary half of the time (a torn write).
//! Namespace operations are never torn: unsynced, they are lost.
//!
//! After the power loss the simulator is mounted again at the same place,
//! with a fresh kernel page cache; what it then holds is all durable.
//!
//! # What it serves
//!
//! Regular files, directories and symlinks: `open`, `create`, `read`,
//! `write` (`pwrite`, `pwritev`), `ftruncate`, `fallocate` (mode 0 grows
//! the file with zeros; `FALLOC_FL_KEEP_SIZE` alone is accepted and
//! changes nothing; other modes are `EOPNOTSUPP`), `fsync`, `fdatasync`,
//! `fsync` of directories, `mkdir`, `unlink`, `rmdir`, `rename`
//! (`RENAME_NOREPLACE` too; `RENAME_EXCHANGE` is `EINVAL`), `link`,
//! `symlink`, `readlink`, `readdir`, `stat`, `chmod`, `chown`, `utimes`,
//! `statfs`. `mknod` of anything but a regular file is `EPERM`; no
//! extended attributes. There are no permission checks (tests run as
//! root). POSIX (`fcntl`) and BSD (`flock`) locks are handled by the
//! kernel. Shared mappings work, read-only and read-write: there is no
//! direct I/O and no write-back cache, so the page cache stays coherent
//! with `pwrite`.
//!
//! # Example
//!
//! ```no_run
//! use slicefs_powerloss::{Crash, Options, PowerLossFs};
//! # fn main() -> std::io::Result<()> {
//! let mut fs = PowerLossFs::mount("/tmp/sim", Options::default())?;
//! std::fs::write("/tmp/sim/f", b"lost")?; // never synced
//! fs.power_loss(Crash::default())?;
//! assert!(!std::path::Path::new("/tmp/sim/f").exists());
//! # Ok(())
//! # }
//! ```

mod data;
mod fuse;
mod mount;
mod state;
mod tear;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use mount::fuse_available;

use crate::fuse::{Shared, lock};
use crate::state::State;

/// Settings of a simulator mount.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Live bytes (sum of the sizes of regular files still open or
    /// named) past which writes, truncates and `fallocate` that grow a
    /// file fail with `ENOSPC`; freeing (`unlink` of a closed file,
    /// truncate) gives the space back. `statfs` reports it as the size.
    /// Default: `None` (no limit; `statfs` reports 16 TiB).
    pub capacity: Option<u64>,
    /// FUSE request threads. Default: 2. Minimum: 1.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            capacity: None,
            threads: 2,
        }
    }
}

impl Options {
    /// These options with `capacity` (see [`Options::capacity`]).
    pub fn with_capacity(mut self, capacity: Option<u64>) -> Self {
        self.capacity = capacity;
        self
    }
}

/// How a power loss treats unsynced data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crash {
    /// Keep a random prefix of each file's unsynced data operations, the
    /// last one possibly cut at a 4096-byte boundary, instead of dropping
    /// them all. Default: false.
    pub tear: bool,
    /// Seed of the random choices in torn mode: the same seed and the
    /// same operations give the same image.
    pub seed: u64,
}

impl Crash {
    /// A torn crash with `seed` (see [`Crash::tear`]).
    pub fn torn(seed: u64) -> Crash {
        Crash { tear: true, seed }
    }
}

/// What a power loss now would lose (live states not yet durable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unsynced {
    /// Files with data or attribute changes since their last sync.
    pub files: u64,
    /// Data operations (writes, size changes) not synced.
    pub ops: u64,
    /// Bytes written and not synced.
    pub bytes: u64,
    /// Directories with entry changes since their last sync.
    pub dirs: u64,
}

/// What a power loss did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PowerLossReport {
    /// What was unsynced just before.
    pub unsynced: Unsynced,
    /// Files and symlinks after it.
    pub files: u64,
    /// Directories after it, the root included.
    pub dirs: u64,
    /// Files that kept some unsynced operations (torn mode).
    pub files_torn: u64,
    /// Durable entries of directories already reached through another
    /// entry, dropped.
    pub entries_dropped: u64,
}

/// A mounted power-loss simulator. Dropping it unmounts it (lazily if it
/// is busy) and forgets its content.
#[derive(Debug)]
pub struct PowerLossFs {
    mountpoint: PathBuf,
    options: Options,
    state: Shared,
    session: Option<mount::Session>,
    crashes: u64,
}

impl PowerLossFs {
    /// Mounts an empty simulator at `mountpoint` (an existing directory),
    /// served by background threads of this process. The root is owned by
    /// the calling user, mode 0755, and durable.
    ///
    /// # Errors
    /// The mount failed: not root, no `/dev/fuse`, no such directory.
    pub fn mount(mountpoint: impl AsRef<Path>, options: Options) -> io::Result<PowerLossFs> {
        let mountpoint = mountpoint.as_ref().canonicalize()?;
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let state = Arc::new(Mutex::new(State::new(options.capacity, uid, gid)));
        let session = mount::Session::start(&mountpoint, state.clone(), options.threads)?;
        Ok(PowerLossFs {
            mountpoint,
            options,
            state,
            session: Some(session),
            crashes: 0,
        })
    }

    /// Where it is mounted (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Power losses so far.
    pub fn crashes(&self) -> u64 {
        self.crashes
    }

    /// What a power loss now would lose.
    pub fn unsynced(&self) -> Unsynced {
        lock(&self.state).unsynced()
    }

    /// Live bytes counted against the capacity.
    pub fn used_bytes(&self) -> u64 {
        lock(&self.state).used()
    }

    /// Changes the capacity (see [`Options::capacity`]), from now on and
    /// across power losses. Shrinking it below what is used fails only
    /// later writes that grow a file.
    pub fn set_capacity(&mut self, capacity: Option<u64>) {
        self.options.capacity = capacity;
        lock(&self.state).set_capacity(capacity);
    }

    /// From now on, `fsync` of a file whose name ends with `suffix` fails
    /// with `EIO` and makes nothing of it durable (a failing disk under
    /// that file); `None` ends it. Not kept across a power loss.
    pub fn fail_fsync(&mut self, suffix: Option<&str>) {
        lock(&self.state).fail_fsync = suffix.map(OsString::from);
    }

    /// From now on, reads of a file whose name ends with `suffix` fail
    /// with `EIO` (bad sectors under that file: a read through a mapping
    /// of it gets `SIGBUS`); `None` ends it. Only reads that reach the
    /// simulator fail: drop the kernel's page cache first
    /// (`/proc/sys/vm/drop_caches`) for pages already cached. Not kept
    /// across a power loss.
    pub fn fail_reads(&mut self, suffix: Option<&str>) {
        lock(&self.state).fail_reads = suffix.map(OsString::from);
    }

    /// Pulls the plug: freezes the file system (every later request fails
    /// with `EIO`), unmounts it, replaces it with its durable tree (see the
    /// crate docs; `crash` says what happens to unsynced data) and mounts
    /// that at the same mountpoint.
    ///
    /// Kill every process that uses the mount first. If the unmount is
    /// refused as busy, the mount is detached (`MNT_DETACH`) and its FUSE
    /// connection aborted, so that stragglers get errors and never see the
    /// new mount's data through old descriptors.
    ///
    /// # Errors
    /// The unmount or the new mount failed; the simulator is then not
    /// mounted and [`PowerLossFs::power_loss`] may be called again.
    pub fn power_loss(&mut self, crash: Crash) -> io::Result<PowerLossReport> {
        let (image, report) = {
            let mut s = lock(&self.state);
            s.frozen = true;
            s.crash_image(crash)
        };
        if let Some(session) = self.session.take() {
            session.stop(&self.mountpoint)?;
        }
        self.crashes += 1;
        self.state = Arc::new(Mutex::new(image));
        let session =
            mount::Session::start(&self.mountpoint, self.state.clone(), self.options.threads)?;
        self.session = Some(session);
        Ok(report)
    }

    /// Unmounts (lazily if busy) and forgets everything.
    ///
    /// # Errors
    /// The unmount failed.
    pub fn unmount(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        lock(&self.state).frozen = true;
        match self.session.take() {
            Some(s) => s.stop(&self.mountpoint),
            None => Ok(()),
        }
    }
}

impl Drop for PowerLossFs {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

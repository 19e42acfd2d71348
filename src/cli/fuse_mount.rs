//! The FUSE mount of `slicefs mount`: the mount(2) call, the session, and
//! unmounting only what this process mounted.
//!
//! slicefs calls mount(2) itself, with the file system type
//! `fuse.slicefs`, so `/proc/mounts`, `df -T` and `findmnt -t` name it as
//! libfuse file systems are named (`fuse.sshfs`, `fuse.juicefs`); fuser's
//! own mount passes the type `fuse` whatever subtype it is given. The
//! kernel takes `fuse.<subtype>` as the `fuse` type with that subtype
//! (`get_fs_type` and `FS_HAS_SUBTYPE`). The mount data are those of
//! libfuse's `mount.fuse` (`fd`, `rootmode`, `user_id`, `group_id`,
//! `default_permissions`, `allow_other`). Without the right to call
//! mount(2) (not root: `EPERM`), fuser mounts through `fusermount3` and
//! the type stays `fuse`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context;
use slicefs::fuse::FuseFs;

/// A FUSE mount this process made, and its session thread.
pub(super) struct FuseMount {
    session: fuser::BackgroundSession,
    mountpoint: PathBuf,
    /// This mount's ID (`/proc/self/mountinfo`, first field).
    own: Option<u64>,
}

/// What the mount asks of the kernel.
pub(super) struct MountSpec<'a> {
    /// The mount's source in `/proc/mounts`: the data directory.
    pub source: &'a Path,
    /// `allow_other`: users other than the mount's owner may use it.
    pub allow_other: bool,
}

/// Mounts `fs` at `mp` (a directory that holds no mount:
/// `check_mountpoint`), starts its session (4 threads), and raises the
/// mount's kernel read-ahead to 1 MiB where allowed
/// ([`slicefs::fuse::raise_read_ahead`]).
///
/// # Errors
/// `/dev/fuse` cannot be opened, mount(2) or `fusermount3` fails, or the
/// kernel's `INIT` handshake fails (the mount is then undone).
pub(super) fn mount(fs: FuseFs, mp: &Path, spec: &MountSpec<'_>) -> anyhow::Result<FuseMount> {
    let mut config = fuser::Config::default();
    if spec.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(4);
    let default_permissions = kernel_checks_permissions(spec.allow_other);
    let session = match mount_typed(mp, spec, default_permissions)
        .with_context(|| format!("mount at {}", mp.display()))?
    {
        Some(fd) => {
            let session =
                fuser::Session::from_fd(fs, fd, config.acl, config).and_then(fuser::Session::spawn);
            match session {
                Ok(s) => s,
                Err(e) => {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                    return Err(e).with_context(|| format!("start FUSE at {}", mp.display()));
                }
            }
        }
        None => {
            // Not allowed to call mount(2): fusermount3 mounts for us.
            let mut options = vec![
                fuser::MountOption::FSName(spec.source.display().to_string()),
                fuser::MountOption::Subtype("slicefs".into()),
                fuser::MountOption::NoAtime,
            ];
            if default_permissions {
                options.push(fuser::MountOption::DefaultPermissions);
            }
            config.mount_options = options;
            fuser::spawn_mount(fs, mp, &config)
                .with_context(|| format!("mount at {}", mp.display()))?
        }
    };
    match slicefs::fuse::raise_read_ahead(mp) {
        Ok(kb) => tracing::debug!(kb, "kernel read-ahead of the mount"),
        Err(e) => tracing::info!(
            error = %e,
            "kernel read-ahead stays at its default (128 KiB): sequential reads come in smaller pieces"
        ),
    }
    Ok(FuseMount {
        session,
        mountpoint: mp.to_path_buf(),
        own: mount_ids_at(mp).last().copied(),
    })
}

/// mount(2) of type `fuse.slicefs` at `mp` on a new `/dev/fuse`
/// descriptor, returned; `None` when mount(2) is not permitted (`EPERM`).
fn mount_typed(
    mp: &Path,
    spec: &MountSpec<'_>,
    default_permissions: bool,
) -> std::io::Result<Option<OwnedFd>> {
    use std::os::unix::fs::MetadataExt;
    let fd: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| std::io::Error::new(e.kind(), format!("open /dev/fuse: {e}")))?
        .into();
    // The root's file type bits, as libfuse passes them.
    let rootmode = std::fs::metadata(mp)?.mode() & libc::S_IFMT;
    // SAFETY: getuid and getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode={rootmode:o},user_id={uid},group_id={gid}",
        fd.as_raw_fd()
    );
    if default_permissions {
        data.push_str(",default_permissions");
    }
    if spec.allow_other {
        data.push_str(",allow_other");
    }
    use nix::mount::MsFlags;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    match nix::mount::mount(
        Some(spec.source),
        mp,
        Some("fuse.slicefs"),
        flags,
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(Some(fd)),
        Err(nix::errno::Errno::EPERM) => Ok(None),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

impl FuseMount {
    /// Whether the session thread ended (the kernel ended the session).
    pub(super) fn is_finished(&self) -> bool {
        self.session.guard.is_finished()
    }

    /// Something to send the kernel invalidations with.
    pub(super) fn notifier(&self) -> fuser::Notifier {
        self.session.notifier()
    }

    /// Unmounts this mount (a signal asked the mount to end), then waits
    /// for its session to end.
    ///
    /// # Errors
    /// umount(2) failed (busy: the caller may detach), or the session
    /// thread's error.
    pub(super) fn unmount_and_join(self) -> std::io::Result<()> {
        if self.own.is_some() && mount_ids_at(&self.mountpoint).last().copied() == self.own {
            nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty())
                .map_err(|e| std::io::Error::other(format!("unmount: {e}")))?;
        }
        self.join_ended()
    }

    /// Joins a FUSE session the kernel ended: the user's `umount` (the
    /// mount is gone), or an aborted connection (the mount is still
    /// there, dead). `fuser` would unmount whatever is at the mountpoint
    /// when a session it mounted is dropped: nothing after a `umount` (the
    /// warning "Unmount failed: Invalid argument" on every clean unmount),
    /// or another mount stacked there since. Here only this process's own
    /// mount (its mount ID) is unmounted, and only while it is the
    /// topmost at the path.
    ///
    /// # Errors
    /// The session thread's error.
    pub(super) fn join_ended(self) -> std::io::Result<()> {
        let session = std::mem::ManuallyDrop::new(self.session);
        // SAFETY: the guard is read out once and `session` is never used
        // or dropped after: its other fields (fuser's mount record, if
        // fuser mounted, and a channel sender) are leaked, so their drop
        // cannot unmount anything; the process exits after the drain.
        let guard = unsafe { std::ptr::read(&session.guard) };
        let r = guard
            .join()
            .map_err(|_| std::io::Error::other("the FUSE session thread panicked"))?;
        if self.own.is_some() && mount_ids_at(&self.mountpoint).last().copied() == self.own {
            nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| std::io::Error::other(format!("unmount the dead mount: {e}")))?;
        }
        r
    }
}

/// The mount IDs (`/proc/self/mountinfo`, first field) of every mount at
/// `path` (any file system), oldest first.
pub(super) fn mount_ids_at(path: &Path) -> Vec<u64> {
    let Ok(target) = path.canonicalize() else {
        return Vec::new();
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| Path::new(&m.replace("\\040", " ")) == target)
        })
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

/// Whether the kernel should check permission bits itself
/// (`default_permissions`) before each request. It must when other users
/// can reach the mount (`--allow-other`) or the mount's owner is not root:
/// without it, a path walk through entries the kernel has cached checks no
/// search permission. A root-owned mount without `--allow-other` is
/// reachable by root alone (the FUSE kernel refuses every other user), and
/// the VFS checks every request it gets; there the kernel's check only
/// costs a `GETATTR` of the parent directory before nearly every create,
/// rename and unlink (the kernel drops a directory's attributes whenever
/// one of its entries changes).
fn kernel_checks_permissions(allow_other: bool) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    allow_other || unsafe { libc::geteuid() } != 0
}

//! Mounting and unmounting one simulator session: fuser's background
//! session, a busy unmount turned into a detach plus a connection abort,
//! and a bounded wait for the request threads.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption};

use crate::fuse::{PowerLossFuse, Shared};

/// How long an unmount waits for the request threads to end, per try.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a detached, still used mount is given to end by itself.
const LINGER_WAIT: Duration = Duration::from_millis(500);

/// Why FUSE tests cannot run here, if they cannot: not root, or no
/// `/dev/fuse`. Tests print the reason and skip.
///
/// # Errors
/// The reason, as a sentence.
pub fn fuse_available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: the simulator mounts with mount(2)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    Ok(())
}

/// A mounted session.
#[derive(Debug)]
pub(crate) struct Session {
    bg: BackgroundSession,
    /// The FUSE connection's number under `/sys/fs/fuse/connections`.
    connection: Option<u64>,
}

/// The device number (`major:minor` in `/proc/self/mountinfo`, as the
/// kernel's `dev_t`, which names the connection in fusectl) of the
/// topmost mount at `mountpoint`.
fn connection_of(mountpoint: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.as_os_str().as_bytes();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let mp = unescape(f.get(4)?);
        if mp != want {
            return None;
        }
        let (major, minor) = f.get(2)?.split_once(':')?;
        Some((major.parse::<u64>().ok()? << 20) | minor.parse::<u64>().ok()?)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
        {
            out.push(d.iter().fold(0u8, |v, c| (v << 3) | (c - b'0')));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn umount2(mountpoint: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Session {
    /// Mounts a file system serving `state` at `mountpoint` and returns
    /// once the kernel's handshake is done.
    pub(crate) fn start(mountpoint: &Path, state: Shared, threads: usize) -> io::Result<Session> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powerloss".into()),
            MountOption::Subtype("powerloss".into()),
            MountOption::RW,
        ];
        config.n_threads = Some(threads.max(1));
        let bg = fuser::spawn_mount(PowerLossFuse::new(state), mountpoint, &config)?;
        Ok(Session {
            bg,
            connection: connection_of(mountpoint),
        })
    }

    /// Writes to the connection's `abort` file, if fusectl is mounted:
    /// every request then fails and the request threads end.
    fn abort(&self) -> bool {
        let Some(c) = self.connection else {
            return false;
        };
        let p = PathBuf::from(format!("/sys/fs/fuse/connections/{c}/abort"));
        std::fs::write(p, b"1").is_ok()
    }

    /// Unmounts (detaches and aborts the connection if busy) and waits
    /// for the request threads. A detached mount that is still in use and
    /// whose connection cannot be aborted (fusectl not mounted) keeps its
    /// threads, answering `EIO` from the frozen state, until its last user
    /// goes.
    ///
    /// # Errors
    /// The unmount failed, or the threads of a mount that was unmounted
    /// did not end.
    pub(crate) fn stop(self, mountpoint: &Path) -> io::Result<()> {
        let detached = match umount2(mountpoint, 0) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                umount2(mountpoint, libc::MNT_DETACH)?;
                true
            }
            // Already unmounted by someone else.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
            Err(e) => {
                // Still mounted: keep fuser from unmounting whatever is
                // mounted there later.
                std::mem::forget(self);
                return Err(e);
            }
        };
        let lingering = detached && !self.abort();
        let deadline = Instant::now() + if lingering { LINGER_WAIT } else { JOIN_TIMEOUT };
        while !self.bg.guard.is_finished() {
            if Instant::now() > deadline {
                // Dropping the session would unmount whatever is mounted
                // at the mountpoint by then.
                std::mem::forget(self);
                return if detached {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the simulator's request threads did not end after the unmount",
                    ))
                };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.bg.join()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(super::unescape(r"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(super::unescape("/x"), b"/x");
    }
}

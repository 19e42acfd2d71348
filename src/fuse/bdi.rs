//! The kernel's read-ahead of a FUSE mount.
//!
//! Every mount has a backing device info (BDI) in sysfs,
//! `/sys/class/bdi/MAJOR:MINOR/`, named by the mount's device number (the
//! third field of `/proc/self/mountinfo`). The FUSE kernel module sets a
//! mount's read-ahead to the smaller of the BDI's default (128 KiB,
//! `VM_READAHEAD_PAGES`) and the `max_readahead` the file system asks for
//! at `INIT` (fs/fuse/inode.c, `process_init_reply`), so asking for more
//! at `INIT` alone changes nothing: a sequential read reached the daemon
//! as 128 KiB `READ`s, 310 MB/s from a cold page cache on the 2-core VM,
//! against 1.2 GB/s with 1 MiB (`dd` of a 1 GiB file). Only the BDI's
//! `read_ahead_kb` raises it, and only root may write it; JuiceFS and
//! rclone tell their users to. `slicefs mount` does it itself when it can.

use std::io;
use std::path::Path;

use super::MAX_WRITE;

/// The read-ahead [`raise_read_ahead`] sets, in KiB: one `READ` of
/// [`MAX_WRITE`] bytes (1 MiB), the most the kernel sends at once.
pub const READ_AHEAD_KB: u32 = MAX_WRITE / 1024;

/// Raises the read-ahead of the mount at `mountpoint` (the top-most
/// one there) to [`READ_AHEAD_KB`], unless it is already at least that.
/// Returns the read-ahead now in force, in KiB.
///
/// # Errors
/// No mount is at `mountpoint` in `/proc/self/mountinfo`, or its BDI's
/// `read_ahead_kb` cannot be read or written (`EACCES` when not root).
/// Nothing else changes then: the mount works with the kernel's 128 KiB.
pub fn raise_read_ahead(mountpoint: &Path) -> io::Result<u32> {
    let target = mountpoint.canonicalize()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dev = device_at(&info, &target).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no mount at {} in /proc/self/mountinfo", target.display()),
        )
    })?;
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let now: u32 = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("read {path}: {e}")))?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))?;
    if now >= READ_AHEAD_KB {
        return Ok(now);
    }
    std::fs::write(&path, READ_AHEAD_KB.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("write {path}: {e}")))?;
    Ok(READ_AHEAD_KB)
}

/// The device (`MAJOR:MINOR`) of the top-most (last listed) mount at
/// `target` in the text of a `mountinfo` file (proc(5): `ID PARENT
/// MAJOR:MINOR ROOT MOUNTPOINT ...`, spaces in paths as `\040`).
fn device_at<'a>(mountinfo: &'a str, target: &Path) -> Option<&'a str> {
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.splitn(6, ' ').collect();
        let (dev, mp) = (*f.get(2)?, *f.get(4)?);
        (dev.contains(':') && Path::new(&mp.replace("\\040", " ")) == target).then_some(dev)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_the_third_field_of_the_top_most_mount_line() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    36 22 0:41 / /var/tmp/m\\040x rw,nosuid - fuse.slicefs /d rw\n\
                    37 36 0:42 / /var/tmp/m\\040x rw,nosuid - fuse.slicefs /e rw\n";
        assert_eq!(device_at(info, Path::new("/var/tmp/m x")), Some("0:42"));
        assert_eq!(device_at(info, Path::new("/")), Some("8:1"));
        assert_eq!(device_at(info, Path::new("/var/tmp")), None);
        assert_eq!(device_at("garbage\n36 1\n", Path::new("/")), None);
    }
}

//! Permission checks as ext4 applies them: owner, group (primary and
//! supplementary), other; root passes everything but execute of a file
//! with no execute bit at all.

use crate::error::FsError;
use crate::meta::{FileKind, Inode};

/// The caller of an operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
}

impl Creds {
    /// Root.
    pub fn root() -> Creds {
        Creds::default()
    }

    /// A user with a primary group and no supplementary groups.
    pub fn user(uid: u32, gid: u32) -> Creds {
        Creds {
            uid,
            gid,
            groups: Vec::new(),
        }
    }

    /// Whether the caller is in group `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// An access mask (`R_OK`, `W_OK`, `X_OK`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    /// `R_OK`.
    pub const READ: Access = Access(4);
    /// `W_OK`.
    pub const WRITE: Access = Access(2);
    /// `X_OK` (search, for a directory).
    pub const EXEC: Access = Access(1);

    /// No access asked (`F_OK`).
    pub fn empty() -> Access {
        Access(0)
    }

    /// From an `access(2)` mask.
    pub fn from_mask(mask: i32) -> Access {
        Access((mask & 7) as u8)
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, o: Access) -> Access {
        Access(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Access {
    fn bitor_assign(&mut self, o: Access) {
        self.0 |= o.0;
    }
}

/// Whether `creds` may access `inode` as `want` says.
///
/// # Errors
/// [`FsError::Access`] (`EACCES`).
pub fn check(creds: &Creds, inode: &Inode, want: Access) -> Result<(), FsError> {
    let want = want.0;
    if creds.uid == 0 {
        let any_exec = inode.perm & 0o111 != 0;
        if want & 1 != 0 && inode.kind != FileKind::Directory && !any_exec {
            return Err(FsError::Access);
        }
        return Ok(());
    }
    let bits = if creds.uid == inode.uid {
        (inode.perm >> 6) & 7
    } else if creds.in_group(inode.gid) {
        (inode.perm >> 3) & 7
    } else {
        inode.perm & 7
    } as u8;
    if want & !bits != 0 {
        return Err(FsError::Access);
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::meta::{Ino, Timespec};

    /// An inode of `kind` and `perm` owned by uid 10, gid 20.
    pub(in crate::vfs) fn inode(kind: FileKind, perm: u16) -> Inode {
        Inode {
            ino: Ino(2),
            kind,
            perm,
            uid: 10,
            gid: 20,
            size: 0,
            nlink: 1,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            rdev: 0,
            parent: Ino(0),
            truncate_lsn: 0,
            size_lsn: 0,
            synced_size: 0,
            alloc: 0,
        }
    }

    #[test]
    fn owner_group_other_and_root() {
        let f = inode(FileKind::Regular, 0o640);
        let owner = Creds::user(10, 99);
        let member = Creds {
            uid: 11,
            gid: 99,
            groups: vec![20],
        };
        let other = Creds::user(12, 99);
        assert!(check(&owner, &f, Access::READ | Access::WRITE).is_ok());
        assert!(check(&owner, &f, Access::EXEC).is_err());
        assert!(check(&member, &f, Access::READ).is_ok());
        assert_eq!(
            check(&member, &f, Access::WRITE).unwrap_err().errno(),
            libc::EACCES
        );
        assert!(check(&other, &f, Access::READ).is_err());
        assert!(check(&other, &f, Access::empty()).is_ok());
        // Root reads and writes anything, but executes only files with an
        // execute bit somewhere.
        assert!(check(&Creds::root(), &f, Access::READ | Access::WRITE).is_ok());
        assert!(check(&Creds::root(), &f, Access::EXEC).is_err());
        assert!(
            check(
                &Creds::root(),
                &inode(FileKind::Regular, 0o001),
                Access::EXEC
            )
            .is_ok()
        );
        assert!(
            check(
                &Creds::root(),
                &inode(FileKind::Directory, 0o000),
                Access::EXEC
            )
            .is_ok()
        );
        // The owner class decides even when group or other would allow.
        let f = inode(FileKind::Regular, 0o077);
        assert!(check(&owner, &f, Access::READ).is_err());
    }
}

//! Extended attributes with Linux's namespace and permission rules
//! (`fs/xattr.c` `xattr_permission`, and ext4's handlers), so tools see
//! what they see on ext4:
//!
//! - `user.*`: on regular files and directories only; reading needs read
//!   permission, changing needs write permission, and in a sticky
//!   directory only its owner (or root) may change them. On other kinds
//!   reads answer `ENODATA` and changes `EPERM`.
//! - `trusted.*`: root only; others read `ENODATA`, change `EPERM`, and
//!   do not see the names in a listing.
//! - `security.*`: anyone may read; only root may change (Linux asks for
//!   `CAP_SYS_ADMIN`, or `CAP_SETFCAP` for `security.capability`).
//! - `system.*` (POSIX ACLs, `system.posix_acl_access` and `_default`):
//!   `EOPNOTSUPP`. slicefs does not implement POSIX ACLs: permissions are
//!   the mode bits. Tools then fall back to `chmod` (`cp -a`, `cp -p`,
//!   `mv`, `rsync -A` reports the ACLs it cannot set), so modes are
//!   copied right; storing the ACL opaquely instead left every copied
//!   file at the ACL's mode bits without applying them.
//! - any other prefix: `EOPNOTSUPP`, as ext4 answers.
//!
//! "Root" is uid 0: the VFS does not see capabilities.

use super::{Access, Creds, FileKind, FsError, Ino, Inode, Result, Vfs, perm};
use crate::meta::{Timespec, XattrFlags};
use std::sync::atomic::Ordering;

/// The namespace of an extended attribute's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Namespace {
    User,
    Trusted,
    Security,
}

/// The namespace of `name`.
///
/// # Errors
/// `EOPNOTSUPP` for `system.*` and unknown prefixes, `EINVAL` for a bare
/// prefix (`user.`).
fn namespace(name: &[u8]) -> Result<Namespace> {
    const PREFIXES: [(&[u8], Option<Namespace>); 4] = [
        (b"user.", Some(Namespace::User)),
        (b"trusted.", Some(Namespace::Trusted)),
        (b"security.", Some(Namespace::Security)),
        (b"system.", None),
    ];
    for (prefix, ns) in PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            if rest.is_empty() {
                return Err(FsError::Invalid("empty attribute name after its prefix"));
            }
            return ns.ok_or(FsError::NotSupported(
                "system.* attributes (POSIX ACLs): permissions are the mode bits",
            ));
        }
    }
    Err(FsError::NotSupported(
        "attribute namespace (user., trusted., security. only)",
    ))
}

/// Whether `creds` may read attribute `name` of `a` (`Ok`), or the error
/// Linux gives.
fn may_read(creds: &Creds, a: &Inode, name: &[u8]) -> Result<()> {
    match namespace(name)? {
        Namespace::Security => Ok(()),
        Namespace::Trusted if creds.uid == 0 => Ok(()),
        Namespace::Trusted => Err(FsError::NoAttr),
        Namespace::User if !matches!(a.kind, FileKind::Regular | FileKind::Directory) => {
            Err(FsError::NoAttr)
        }
        Namespace::User => perm::check(creds, a, Access::READ),
    }
}

/// Whether `creds` may set or remove attribute `name` of `a`.
fn may_change(creds: &Creds, a: &Inode, name: &[u8]) -> Result<()> {
    let ns = namespace(name)?;
    if creds.uid == 0 {
        return Ok(());
    }
    match ns {
        Namespace::Security | Namespace::Trusted => Err(FsError::NotPermitted),
        Namespace::User if !matches!(a.kind, FileKind::Regular | FileKind::Directory) => {
            Err(FsError::NotPermitted)
        }
        Namespace::User
            if a.kind == FileKind::Directory && a.perm & 0o1000 != 0 && creds.uid != a.uid =>
        {
            Err(FsError::NotPermitted)
        }
        Namespace::User => perm::check(creds, a, Access::WRITE),
    }
}

impl Vfs {
    /// `getxattr`, with the rules of the module doc.
    ///
    /// # Errors
    /// `ENODATA`, `EACCES`, `EOPNOTSUPP` (`system.*`, unknown
    /// namespaces), `EINVAL`, `ENOENT`.
    pub fn getxattr(&self, creds: &Creds, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let none_anywhere = !self.xattrs_exist.load(Ordering::Acquire);
        if none_anywhere && namespace(name)? != Namespace::User {
            // The kernel asks for `security.capability` before the first
            // write to every opened file and `ls -l` for
            // `security.selinux` of every entry: with no extended
            // attribute anywhere that is `ENODATA` without a metadata
            // read. Reading `security.*` and `trusted.*` needs no
            // permission (a caller other than root reads `trusted.*` as
            // `ENODATA`), so the inode is not read either; an inode
            // freed meanwhile answers `ENODATA` then, as an unlinked
            // open file on ext4 does.
            return Err(FsError::NoAttr);
        }
        may_read(creds, &self.attr(ino)?, name)?;
        if none_anywhere {
            return Err(FsError::NoAttr);
        }
        self.meta.get_xattr(ino, name)
    }

    /// `setxattr` (`XATTR_CREATE`, `XATTR_REPLACE`), with the rules of
    /// the module doc. Names up to 255 bytes, values up to 64 KiB.
    /// Durable when it returns, as other metadata changes.
    ///
    /// # Errors
    /// `EEXIST`, `ENODATA`, `ERANGE`, `EFBIG`, `EACCES`, `EPERM`,
    /// `EOPNOTSUPP`, `EINVAL`, `ENOENT`.
    pub fn setxattr(
        &self,
        creds: &Creds,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
    ) -> Result<()> {
        may_change(creds, &self.attr(ino)?, name)?;
        // Before the change: a getxattr that sees it must not answer from
        // the flag.
        self.xattrs_exist.store(true, Ordering::Release);
        self.meta
            .set_xattr(ino, name, value, flags, Timespec::now())
    }

    /// `listxattr`: the names `creds` may see (not `trusted.*` unless
    /// root; never `system.*`, which an older slicefs stored opaquely).
    ///
    /// # Errors
    /// `ENOENT`.
    pub fn listxattr(&self, creds: &Creds, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let mut names = self.meta.list_xattr(ino)?;
        names.retain(|n| match namespace(n) {
            Ok(Namespace::Trusted) => creds.uid == 0,
            Ok(_) => true,
            Err(_) => false,
        });
        Ok(names)
    }

    /// `removexattr`, with the rules of the module doc.
    ///
    /// # Errors
    /// `ENODATA`, `EACCES`, `EPERM`, `EOPNOTSUPP`, `EINVAL`, `ENOENT`.
    pub fn removexattr(&self, creds: &Creds, ino: Ino, name: &[u8]) -> Result<()> {
        may_change(creds, &self.attr(ino)?, name)?;
        self.meta.remove_xattr(ino, name, Timespec::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::perm::tests::inode;

    #[test]
    fn namespaces_as_ext4() {
        assert_eq!(namespace(b"user.x").unwrap(), Namespace::User);
        assert_eq!(namespace(b"trusted.x").unwrap(), Namespace::Trusted);
        assert_eq!(namespace(b"security.selinux").unwrap(), Namespace::Security);
        for name in [
            &b"system.posix_acl_access"[..],
            b"system.x",
            b"bogus.x",
            b"user",
        ] {
            assert_eq!(
                namespace(name).unwrap_err().errno(),
                libc::EOPNOTSUPP,
                "{name:?}"
            );
        }
        assert_eq!(namespace(b"user.").unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn user_attributes_follow_the_mode_bits() {
        let f = inode(FileKind::Regular, 0o640);
        let owner = Creds::user(10, 20);
        let member = Creds::user(11, 20);
        let other = Creds::user(12, 30);
        assert!(may_read(&owner, &f, b"user.a").is_ok());
        assert!(may_read(&member, &f, b"user.a").is_ok());
        assert_eq!(
            may_read(&other, &f, b"user.a").unwrap_err().errno(),
            libc::EACCES
        );
        assert!(may_change(&owner, &f, b"user.a").is_ok());
        assert_eq!(
            may_change(&member, &f, b"user.a").unwrap_err().errno(),
            libc::EACCES
        );
        // Not on symlinks or devices, whatever the mode says.
        let l = inode(FileKind::Symlink, 0o777);
        assert_eq!(
            may_read(&owner, &l, b"user.a").unwrap_err().errno(),
            libc::ENODATA
        );
        assert_eq!(
            may_change(&owner, &l, b"user.a").unwrap_err().errno(),
            libc::EPERM
        );
        // A sticky directory: only its owner, even with write permission.
        let d = inode(FileKind::Directory, 0o1777);
        assert!(may_change(&owner, &d, b"user.a").is_ok());
        assert_eq!(
            may_change(&other, &d, b"user.a").unwrap_err().errno(),
            libc::EPERM
        );
        assert!(may_change(&Creds::root(), &d, b"user.a").is_ok());
    }

    #[test]
    fn security_is_readable_by_all_and_trusted_is_roots() {
        let f = inode(FileKind::Regular, 0o600);
        let other = Creds::user(12, 30);
        assert!(may_read(&other, &f, b"security.capability").is_ok());
        assert_eq!(
            may_change(&other, &f, b"security.x").unwrap_err().errno(),
            libc::EPERM
        );
        assert_eq!(
            may_read(&other, &f, b"trusted.x").unwrap_err().errno(),
            libc::ENODATA
        );
        assert_eq!(
            may_change(&other, &f, b"trusted.x").unwrap_err().errno(),
            libc::EPERM
        );
        // The owner too: these namespaces do not follow ownership.
        let owner = Creds::user(10, 20);
        assert_eq!(
            may_change(&owner, &f, b"security.x").unwrap_err().errno(),
            libc::EPERM
        );
        assert!(may_read(&Creds::root(), &f, b"trusted.x").is_ok());
        assert!(may_change(&Creds::root(), &f, b"trusted.x").is_ok());
        assert_eq!(
            may_change(&Creds::root(), &f, b"system.posix_acl_access")
                .unwrap_err()
                .errno(),
            libc::EOPNOTSUPP
        );
    }
}

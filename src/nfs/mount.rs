//! The MOUNT version 3 procedures (RFC 1813, appendix I): one export,
//! `/`, the root of the file system; as with Linux's knfsd, any directory
//! below it may be mounted by its path. Nothing is recorded: UMNT and
//! UMNTALL do nothing and DUMP lists no client.

use nfs3_types::mount::{
    MNTPATHLEN, dirpath, export_node, exports, fhandle3, mountlist, mountres3, mountres3_ok,
    mountstat3,
};
use nfs3_types::xdr_codec::{List, Opaque};

use super::handle::file_handle;
use super::rpc::{AUTH_NULL, AUTH_UNIX, Refusal, put};
use super::xdr::Xdr;
use crate::error::FsError;
use crate::meta::FileKind;
use crate::meta::Ino;
use crate::vfs::{Creds, Vfs};

/// Runs MOUNT procedure `proc` with the XDR arguments `args`, appending
/// its results to `out`.
///
/// - NULL: nothing.
/// - MNT: the handle of the directory at the path (`/` or an empty path:
///   the root), looked up name by name as the caller, and the flavors
///   `AUTH_UNIX`, `AUTH_NULL`; `MNT3ERR_NOENT`, `MNT3ERR_NOTDIR`,
///   `MNT3ERR_ACCES` as the lookups fail.
/// - DUMP: an empty list.
/// - UMNT, UMNTALL: nothing.
/// - EXPORT: `/`, open to every host.
///
/// # Errors
/// [`Refusal::ProcUnavail`] past procedure 5, [`Refusal::GarbageArgs`]
/// for a path that does not decode or is longer than 1024 bytes.
pub(super) fn call(
    vfs: &Vfs,
    creds: &Creds,
    proc: u32,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let mut a = Xdr::new(args);
    match proc {
        0 => Ok(()),
        1 => {
            let path = a.opaque(MNTPATHLEN)?;
            let res = match resolve(vfs, creds, path) {
                Ok(ino) => mountres3::Ok(mountres3_ok {
                    fhandle: fhandle3(Opaque::owned(file_handle(ino).to_vec())),
                    auth_flavors: vec![AUTH_UNIX, AUTH_NULL],
                }),
                Err(e) => {
                    tracing::debug!(path = %String::from_utf8_lossy(path), error = %e, "MNT refused");
                    mountres3::Err(match e {
                        FsError::NotDir => mountstat3::MNT3ERR_NOTDIR,
                        FsError::Access | FsError::NotPermitted => mountstat3::MNT3ERR_ACCES,
                        FsError::NameTooLong => mountstat3::MNT3ERR_NAMETOOLONG,
                        FsError::NotFound => mountstat3::MNT3ERR_NOENT,
                        _ => mountstat3::MNT3ERR_SERVERFAULT,
                    })
                }
            };
            put(out, &res)
        }
        2 => {
            let none: mountlist<'_, '_> = List::default();
            put(out, &none)
        }
        3 => {
            a.opaque(MNTPATHLEN)?;
            Ok(())
        }
        4 => Ok(()),
        5 => {
            let list: exports<'_, '_> = List(vec![export_node {
                ex_dir: dirpath(Opaque::borrowed(b"/")),
                ex_groups: List::default(),
            }]);
            put(out, &list)
        }
        _ => Err(Refusal::ProcUnavail),
    }
}

/// The directory at `path` (components split at `/`; empty ones and `.`
/// skipped), looked up from the root as `creds`.
fn resolve(vfs: &Vfs, creds: &Creds, path: &[u8]) -> Result<Ino, FsError> {
    let mut ino = Ino::ROOT;
    for name in path.split(|&b| b == b'/') {
        if name.is_empty() || name == b"." {
            continue;
        }
        ino = vfs.lookup(creds, ino, name)?.ino;
    }
    match vfs.getattr(ino)?.kind {
        FileKind::Directory => Ok(ino),
        _ => Err(FsError::NotDir),
    }
}

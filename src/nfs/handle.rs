//! File handles: 16 opaque bytes that name one inode for the life of the
//! file system.
//!
//! Layout (big-endian): bytes 0..8 the inode number, bytes 8..16 the
//! file system id [`FSID`]. Inode numbers are never reused (their counter
//! only grows), so a handle stays valid across server restarts and names
//! the same file until it is freed; then the server answers
//! `NFS3ERR_STALE`.

use nfs3_types::nfs3::{nfs_fh3, nfsstat3};
use nfs3_types::xdr_codec::Opaque;

use crate::meta::Ino;

/// The file system id in every handle and in `fattr3.fsid`: the bytes
/// `"slicefs1"`. A constant for now, the same for every volume: a client
/// that mounts two slicefs volumes from one server address cannot tell
/// their handles apart. A per-volume id (kept in metadata) would fix that;
/// a handle carrying another id is refused with `NFS3ERR_BADHANDLE`.
pub const FSID: u64 = 0x736c_6963_6566_7331;

/// Length of a handle in bytes.
pub const HANDLE_LEN: usize = 16;

/// The handle of inode `ino`.
pub fn file_handle(ino: Ino) -> [u8; HANDLE_LEN] {
    let mut h = [0u8; HANDLE_LEN];
    h[..8].copy_from_slice(&ino.0.to_be_bytes());
    h[8..].copy_from_slice(&FSID.to_be_bytes());
    h
}

/// The inode a handle names.
///
/// # Errors
/// `NFS3ERR_BADHANDLE`: not [`HANDLE_LEN`] bytes, another file system id,
/// or inode number 0 (never allocated). Whether the inode still exists is
/// not checked here (the VFS answers `ENOENT`, turned into
/// `NFS3ERR_STALE`).
pub fn handle_ino(data: &[u8]) -> Result<Ino, nfsstat3> {
    let bytes: &[u8; HANDLE_LEN] = data.try_into().map_err(|_| nfsstat3::NFS3ERR_BADHANDLE)?;
    let (ino, fsid) = bytes.split_at(8);
    let ino = u64::from_be_bytes(ino.try_into().map_err(|_| nfsstat3::NFS3ERR_BADHANDLE)?);
    let fsid = u64::from_be_bytes(fsid.try_into().map_err(|_| nfsstat3::NFS3ERR_BADHANDLE)?);
    if fsid != FSID || ino == 0 {
        return Err(nfsstat3::NFS3ERR_BADHANDLE);
    }
    Ok(Ino(ino))
}

/// The handle of `ino` as the XDR type.
pub(super) fn nfs_fh(ino: Ino) -> nfs_fh3 {
    nfs_fh3 {
        data: Opaque::owned(file_handle(ino).to_vec()),
    }
}

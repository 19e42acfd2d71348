//! slicefs: a POSIX virtual file system whose data lives in an object
//! store and whose writes are absorbed by a local, crash-safe write-back
//! cache.
//!
//! Crates and modules, one per concept:
//! - `slicefs_wal` (`pkg-wal/`): the persister (write-ahead log);
//! - `slicefs_cache` (`pkg-cache/`): the slice cache data structure;
//! - [`blockstore`]: immutable block objects in an object store, by URL;
//! - [`meta`]: metadata (inodes, dentries, xattrs, block map), SQLite or
//!   memory;
//! - [`error`]: the file system's errors and their errno mapping;
//! - [`transfer`]: the transfer manager, which uploads dirty blocks and
//!   downloads committed ones;
//! - the `slicefs` binary (`src/main.rs`, command line in `src/cli/`).
//!
//! - [`vfs`]: the VFS core (POSIX semantics over all of the above).
//!
//! - [`fuse`]: the FUSE front end (`fuser`).
//!
//! - [`nfs`]: the NFSv3 + MOUNT v3 front end (one TCP port, no
//!   portmapper).
//!
//! `doc/DESIGN.md` describes the design.

pub mod blockstore;
pub mod error;
pub mod fuse;
pub mod meta;
pub mod metrics;
pub mod nfs;
pub mod transfer;
pub mod vfs;

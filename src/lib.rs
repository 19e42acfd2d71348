//! slicefs: a POSIX virtual file system whose data lives in an object
//! store and whose writes are absorbed by a local, crash-safe write-back
//! cache.
//!
//! This milestone holds the persister (the write-ahead log, crate
//! `slicefs_wal` in `pkg-wal/`) and the slice cache data structure (crate
//! `slicefs_cache` in `pkg-cache/`); the `slicefs` binary (`src/main.rs`,
//! command line in `src/cli/`) offers read-only tools for log directories:
//! `slicefs wal inspect` and `slicefs wal verify`.
//!
//! The file system itself is planned, one module per concept in this crate:
//! `vfs` (POSIX semantics), `meta` (SQLite metadata), `blockstore` (object
//! store access), `transfer` (uploads of dirty blocks), and the `fuse` and
//! `nfs` front ends. `doc/DESIGN.md` describes the design.

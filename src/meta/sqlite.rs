//! The SQLite backend of [`MetaStore`](super::MetaStore): the embedded
//! default, one database file in the data directory.
//!
//! Schema version 5 (checked at open; versions 1 to 4 are upgraded in
//! place, in one transaction (`UPGRADE_FROM_*`); any other version is
//! refused, never rewritten):
//!
//! ```sql
//! info(key TEXT PRIMARY KEY, value INTEGER)          -- schema_version
//! counters(name TEXT PRIMARY KEY, value INTEGER)     -- ino, version, cookie
//! inodes(ino PRIMARY KEY, kind, perm, uid, gid, size, nlink,
//!        atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns,
//!        rdev, parent, truncate_lsn, size_lsn, synced_size, alloc)
//!   + index (nlink) where nlink = 0 (orphans), index (size_lsn),
//!     index (truncate_lsn)
//! dentries(parent, name BLOB, ino, kind, cookie, PRIMARY KEY(parent, name))
//!   + index (parent, cookie)
//! symlinks(ino PRIMARY KEY, target BLOB)
//! xattrs(ino, name BLOB, value BLOB, PRIMARY KEY(ino, name))
//! blocks(ino, chunk, block, version, len, ofile, ochunk, oblock, obyte,
//!        PRIMARY KEY(ino, chunk, block))   -- origin of a clone or pack
//!   + index (version)                      -- member, offset in a pack
//! doomed(ino, chunk, block, version, PRIMARY KEY(ino, chunk, block, version))
//! ```
//!
//! Journal mode WAL with `synchronous=NORMAL`: a commit survives a crash of
//! the process at once, and a power loss after the next sync;
//! [`TxMode::Durable`] transactions and `sync` run with
//! `synchronous=FULL`, whose WAL fsync also covers every commit before.
//! Automatic checkpoints are off (`wal_autocheckpoint=0`): a checkpoint
//! fsyncs the WAL, which would make commits durable behind the log's back
//! (see [`MetaStore::attach_log`](super::MetaStore::attach_log)). `sync`
//! checkpoints instead, once enough commits piled up, and
//! [`MetaStore::checkpoint_due`](super::MetaStore::checkpoint_due) tells the
//! VFS's background thread when to call it: a WAL that only `sync`
//! emptied grew without bound while nothing was synced (900 MB for 30,000
//! namespace operations), and every commit appended new pages to it. The
//! WAL file is cut back to [`WAL_SIZE_LIMIT`] when it restarts.
//!
//! A durable commit or checkpoint that fails with an I/O error poisons the
//! store: every later write and sync fails until it is reopened (the
//! kernel may have dropped the pages a failed fsync covered; retrying it
//! could report success for data that is gone, "fsyncgate"). A full disk
//! (`SQLITE_FULL`) is [`FsError::NoSpace`] and poisons nothing.

use std::path::Path;
use std::sync::Mutex;

use crate::blockstore::BlockKey;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::ops::Tx;
use super::store::{Backend, Barrier, TxMode};
use super::types::{DirEntry, FileKind, Ino, Inode, Timespec, Usage};
use super::{BlockAddr, BlockRef};
use crate::error::FsError;
use slicefs_wal::{ChunkIndex, FileId};

type Result<T> = std::result::Result<T, FsError>;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 5;

/// From version 1: the size's write LSN and the synced size.
const UPGRADE_FROM_1: &str = "
ALTER TABLE inodes ADD COLUMN size_lsn INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inodes ADD COLUMN synced_size INTEGER NOT NULL DEFAULT 0;
CREATE INDEX inodes_size_lsn ON inodes(size_lsn);
CREATE INDEX inodes_truncate_lsn ON inodes(truncate_lsn);
UPDATE info SET value = 2 WHERE key = 'schema_version';
";

/// From version 2: the doomed list, and each inode's bytes in committed
/// blocks.
const UPGRADE_FROM_2: &str = "
ALTER TABLE inodes ADD COLUMN alloc INTEGER NOT NULL DEFAULT 0;
UPDATE inodes SET alloc = (SELECT coalesce(sum(len), 0) FROM blocks WHERE blocks.ino = inodes.ino);
CREATE TABLE doomed(ino INTEGER NOT NULL, chunk INTEGER NOT NULL, block INTEGER NOT NULL,
    version INTEGER NOT NULL, PRIMARY KEY(ino, chunk, block, version));
UPDATE info SET value = 3 WHERE key = 'schema_version';
";

/// From version 3: clones (a block referencing another block's object,
/// `copy_file_range`), and the index that counts an object's references.
const UPGRADE_FROM_3: &str = "
ALTER TABLE blocks ADD COLUMN ofile INTEGER;
ALTER TABLE blocks ADD COLUMN ochunk INTEGER;
ALTER TABLE blocks ADD COLUMN oblock INTEGER;
CREATE INDEX blocks_version ON blocks(version);
UPDATE info SET value = 4 WHERE key = 'schema_version';
";

/// From version 4: packs (a block's bytes at an offset in an object that
/// holds several small blocks).
const UPGRADE_FROM_4: &str = "
ALTER TABLE blocks ADD COLUMN obyte INTEGER NOT NULL DEFAULT 0;
UPDATE info SET value = 5 WHERE key = 'schema_version';
";

const SCHEMA: &str = "
CREATE TABLE info(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE inodes(
    ino INTEGER PRIMARY KEY, kind INTEGER NOT NULL, perm INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    atime_s INTEGER NOT NULL, atime_ns INTEGER NOT NULL,
    mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_s INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    rdev INTEGER NOT NULL, parent INTEGER NOT NULL, truncate_lsn INTEGER NOT NULL,
    size_lsn INTEGER NOT NULL, synced_size INTEGER NOT NULL, alloc INTEGER NOT NULL);
CREATE INDEX inodes_size_lsn ON inodes(size_lsn);
CREATE INDEX inodes_truncate_lsn ON inodes(truncate_lsn);
CREATE INDEX inodes_orphans ON inodes(nlink) WHERE nlink = 0;
CREATE TABLE dentries(
    parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
    kind INTEGER NOT NULL, cookie INTEGER NOT NULL, PRIMARY KEY(parent, name));
CREATE INDEX dentries_cookie ON dentries(parent, cookie);
CREATE TABLE symlinks(ino INTEGER PRIMARY KEY, target BLOB NOT NULL);
CREATE TABLE xattrs(ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY(ino, name));
CREATE TABLE blocks(ino INTEGER NOT NULL, chunk INTEGER NOT NULL, block INTEGER NOT NULL,
    version INTEGER NOT NULL, len INTEGER NOT NULL,
    ofile INTEGER, ochunk INTEGER, oblock INTEGER, obyte INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(ino, chunk, block));
CREATE INDEX blocks_version ON blocks(version);
CREATE TABLE doomed(ino INTEGER NOT NULL, chunk INTEGER NOT NULL, block INTEGER NOT NULL,
    version INTEGER NOT NULL, PRIMARY KEY(ino, chunk, block, version));
";

/// Commits after which `sync` also checkpoints the WAL into the database,
/// and after which a checkpoint is due (about 30 MB of WAL for small
/// namespace operations, which write 5 to 8 pages each).
const CHECKPOINT_AFTER_COMMITS: u64 = 4000;

/// Commits since the last durable one past which a durable commit first
/// syncs the WAL outside the connection's lock ([`Backend::presync`]).
const PRESYNC_AFTER_COMMITS: u64 = 256;

/// Bytes the WAL file is cut back to when it restarts after a checkpoint
/// (`journal_size_limit`): a burst leaves no large WAL on disk.
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

pub(crate) struct SqliteBackend {
    conn: Mutex<Conn>,
    /// The WAL file's path, and a descriptor of it once it exists, for
    /// [`Backend::presync`].
    wal_path: std::path::PathBuf,
    wal: Mutex<Option<std::fs::File>>,
    /// Commits since the last checkpoint (written under `conn`; read
    /// without it by [`Backend::checkpoint_due`]).
    commits: AtomicU64,
    /// Commits since the last durable one: [`Backend::presync`] is worth
    /// its extra device flush only past [`PRESYNC_AFTER_COMMITS`].
    undurable: AtomicU64,
}

struct Conn {
    conn: Connection,
    /// Why the store refuses writes: a durable commit failed.
    poisoned: Option<String>,
    /// What `statfs` reports, counted once (the first time it is asked)
    /// and then kept up to date by every commit (see `SqlTx::usage`), so
    /// that `df` costs no scan of the inode table.
    usage: Option<Usage>,
}

/// Whether `e` is an I/O error of the database or its WAL (a failed write
/// or fsync), as opposed to a full disk, a busy lock or a logic error.
fn is_io_error(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::SystemIoFailure)
}

impl SqliteBackend {
    pub(crate) fn open(path: &Path) -> Result<SqliteBackend> {
        let conn =
            Connection::open(path).map_err(|e| FsError::io("open the metadata database", e))?;
        // The data directory's lock already makes the mount the only
        // user of the database: an exclusive lock, taken once, saves the
        // file-lock calls of every transaction, and (set before WAL mode)
        // keeps the WAL index in memory instead of a shared `-shm` file.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        // 1 KiB pages (the default is 4 KiB) for a database made now (an
        // existing one keeps its size): a namespace operation changes 5
        // to 8 pages (an inode row, its parent's, the entry, its cookie
        // index, inode indexes), each a whole WAL frame. With 4 KiB
        // pages that was about 30 KB of WAL per rename or unlink, written
        // to the page cache under the lock every request waits for, and
        // later to the disk at each checkpoint. Measured (10,000 files,
        // uploads held back): unlink 2,100 -> 6,200/s, rename 4,000 ->
        // 5,200/s, create 2,200 -> 2,800/s.
        conn.pragma_update(None, "page_size", 1024)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // 16 MiB of page cache (the default is 2 MiB; 16,384 pages of
        // 1 KiB) and temporary tables in memory; every statement of `Tx`
        // stays prepared. The cache holds the b-trees' upper levels and
        // the hot rows; a miss reads the page from the kernel's page
        // cache (microseconds, against a FUSE round trip's tens). It was
        // 64 MiB, and after 300,000 small files that was a third of the
        // daemon's memory with a 64 MiB `--cache-size`.
        conn.pragma_update(None, "cache_size", -16384)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let has_info: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='info'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)?;
        if has_info {
            let v: Option<i64> = conn
                .query_row(
                    "SELECT value FROM info WHERE key='schema_version'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if matches!(v, Some(1..=4)) {
                let tx = conn.unchecked_transaction()?;
                if v == Some(1) {
                    tx.execute_batch(UPGRADE_FROM_1)?;
                }
                if v <= Some(2) {
                    tx.execute_batch(UPGRADE_FROM_2)?;
                }
                if v <= Some(3) {
                    tx.execute_batch(UPGRADE_FROM_3)?;
                }
                tx.execute_batch(UPGRADE_FROM_4)?;
                tx.commit()?;
            } else if v != Some(SCHEMA_VERSION) {
                return Err(FsError::io(
                    "open the metadata database",
                    format!(
                        "{}: schema version {v:?}, this build knows {SCHEMA_VERSION}",
                        path.display()
                    ),
                ));
            }
        } else {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute(
                "INSERT INTO info(key, value) VALUES ('schema_version', ?1)",
                params![SCHEMA_VERSION],
            )?;
            tx.commit()?;
        }
        Ok(SqliteBackend {
            conn: Mutex::new(Conn {
                conn,
                poisoned: None,
                usage: None,
            }),
            commits: AtomicU64::new(0),
            undurable: AtomicU64::new(0),
            wal_path: {
                let mut p = path.as_os_str().to_owned();
                p.push("-wal");
                p.into()
            },
            wal: Mutex::new(None),
        })
    }
}

struct SqlTx<'a, 'c> {
    tx: &'a Transaction<'c>,
    /// Inodes as this transaction read them (the last few), so that
    /// `put_inode` of a read inode can update only what changed: an
    /// `UPDATE` that leaves the indexed columns out of its `SET` does not
    /// touch their indexes (two to four b-tree pages fewer per namespace
    /// change, each a WAL frame).
    read: Vec<Inode>,
    /// The usage counters with this transaction's changes, if counted.
    usage: Option<Usage>,
}

fn kind_of(code: i64) -> rusqlite::Result<FileKind> {
    FileKind::from_code(code as u8).ok_or(rusqlite::Error::IntegralValueOutOfRange(0, code))
}

/// A block map row from the columns `ino, chunk, block, version, len,
/// ofile, ochunk, oblock, obyte`.
fn row_block(r: &rusqlite::Row<'_>) -> rusqlite::Result<(BlockAddr, BlockRef)> {
    Ok((
        BlockAddr {
            file: FileId(r.get::<_, i64>(0)? as u64),
            chunk: ChunkIndex(r.get(1)?),
            block: r.get(2)?,
        },
        row_block_ref(r, 3)?,
    ))
}

/// A [`BlockRef`] from the columns `version, len, ofile, ochunk, oblock,
/// obyte` starting at column `at`.
fn row_block_ref(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<BlockRef> {
    let origin = match r.get::<_, Option<i64>>(at + 2)? {
        Some(file) => Some(BlockAddr {
            file: FileId(file as u64),
            chunk: ChunkIndex(r.get(at + 3)?),
            block: r.get(at + 4)?,
        }),
        None => None,
    };
    Ok(BlockRef {
        version: r.get::<_, i64>(at)? as u64,
        len: r.get::<_, i64>(at + 1)? as u32,
        origin,
        offset: r.get::<_, i64>(at + 5)? as u32,
    })
}

fn row_inode(r: &rusqlite::Row<'_>) -> rusqlite::Result<Inode> {
    Ok(Inode {
        ino: Ino(r.get::<_, i64>(0)? as u64),
        kind: kind_of(r.get(1)?)?,
        perm: r.get::<_, i64>(2)? as u16,
        uid: r.get::<_, i64>(3)? as u32,
        gid: r.get::<_, i64>(4)? as u32,
        size: r.get::<_, i64>(5)? as u64,
        nlink: r.get::<_, i64>(6)? as u32,
        atime: Timespec {
            sec: r.get(7)?,
            nsec: r.get::<_, i64>(8)? as u32,
        },
        mtime: Timespec {
            sec: r.get(9)?,
            nsec: r.get::<_, i64>(10)? as u32,
        },
        ctime: Timespec {
            sec: r.get(11)?,
            nsec: r.get::<_, i64>(12)? as u32,
        },
        rdev: r.get::<_, i64>(13)? as u32,
        parent: Ino(r.get::<_, i64>(14)? as u64),
        truncate_lsn: r.get::<_, i64>(15)? as u64,
        size_lsn: r.get::<_, i64>(16)? as u64,
        synced_size: r.get::<_, i64>(17)? as u64,
        alloc: r.get::<_, i64>(18)? as u64,
    })
}

/// The inode columns, in [`row_inode`]'s order (a macro so that the
/// statements below are constants, prepared once).
macro_rules! inode_cols {
    () => {
        "ino, kind, perm, uid, gid, size, nlink, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, \
         ctime_ns, rdev, parent, truncate_lsn, size_lsn, synced_size, alloc"
    };
}

impl SqlTx<'_, '_> {
    /// Most inodes remembered per transaction (a rename reads up to four
    /// directories and two files).
    const REMEMBER: usize = 8;

    /// The inode row, not remembered.
    fn fetch(&self, ino: Ino) -> Result<Option<Inode>> {
        let mut st = self.tx.prepare_cached(concat!(
            "SELECT ",
            inode_cols!(),
            " FROM inodes WHERE ino = ?1"
        ))?;
        Ok(st.query_row(params![ino.0 as i64], row_inode).optional()?)
    }

    /// Counts `old` leaving and `new` arriving in the usage counters.
    fn count(&mut self, old: Option<&Inode>, new: Option<&Inode>) {
        let Some(u) = &mut self.usage else {
            return;
        };
        let bytes = |i: &Inode| {
            if i.kind == FileKind::Regular {
                i.size
            } else {
                0
            }
        };
        if let Some(o) = old {
            u.inodes = u.inodes.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes(o));
        }
        if let Some(n) = new {
            u.inodes += 1;
            u.bytes += bytes(n);
        }
    }

    /// The inode before this transaction changes it: remembered, or
    /// fetched when the usage counters need it.
    fn before(&mut self, ino: Ino) -> Result<Option<Inode>> {
        match self.read.iter().position(|r| r.ino == ino) {
            Some(k) => Ok(Some(self.read.swap_remove(k))),
            None if self.usage.is_some() => self.fetch(ino),
            None => Ok(None),
        }
    }

    fn remember(&mut self, i: &Inode) {
        self.read.retain(|r| r.ino != i.ino);
        if self.read.len() == Self::REMEMBER {
            self.read.remove(0);
        }
        self.read.push(i.clone());
    }

    fn insert_or_replace_inode(&mut self, i: &Inode) -> Result<()> {
        let mut st = self.tx.prepare_cached(concat!(
            "INSERT OR REPLACE INTO inodes(",
            inode_cols!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
             ?17, ?18, ?19)"
        ))?;
        st.execute(params![
            i.ino.0 as i64,
            i64::from(i.kind.code()),
            i64::from(i.perm),
            i64::from(i.uid),
            i64::from(i.gid),
            i.size as i64,
            i64::from(i.nlink),
            i.atime.sec,
            i64::from(i.atime.nsec),
            i.mtime.sec,
            i64::from(i.mtime.nsec),
            i.ctime.sec,
            i64::from(i.ctime.nsec),
            i64::from(i.rdev),
            i.parent.0 as i64,
            i.truncate_lsn as i64,
            i.size_lsn as i64,
            i.synced_size as i64,
            i.alloc as i64,
        ])?;
        Ok(())
    }
}

impl SqlTx<'_, '_> {
    /// Runs `sql` with `k`'s (ino, chunk, block, version) as ?1..?4.
    fn key_statement(&mut self, sql: &str, k: BlockKey) -> Result<()> {
        self.tx.prepare_cached(sql)?.execute(params![
            k.file.0 as i64,
            k.chunk.0,
            k.block,
            k.version as i64
        ])?;
        Ok(())
    }
}

impl Tx for SqlTx<'_, '_> {
    fn inode(&mut self, ino: Ino) -> Result<Option<Inode>> {
        let found = self.fetch(ino)?;
        if let Some(i) = &found {
            self.remember(i);
        }
        Ok(found)
    }

    fn put_inode(&mut self, i: &Inode) -> Result<()> {
        let before = self.before(i.ino)?;
        self.count(before.as_ref(), Some(i));
        if let Some(old) = before {
            if old == *i {
                self.remember(i);
                return Ok(());
            }
            if old.kind == i.kind
                && old.size_lsn == i.size_lsn
                && old.truncate_lsn == i.truncate_lsn
                && old.nlink == i.nlink
            {
                let mut st = self.tx.prepare_cached(
                    "UPDATE inodes SET perm = ?2, uid = ?3, gid = ?4, size = ?5, atime_s = ?6, \
                     atime_ns = ?7, mtime_s = ?8, mtime_ns = ?9, ctime_s = ?10, ctime_ns = ?11, \
                     rdev = ?12, parent = ?13, synced_size = ?14, alloc = ?15 WHERE ino = ?1",
                )?;
                st.execute(params![
                    i.ino.0 as i64,
                    i64::from(i.perm),
                    i64::from(i.uid),
                    i64::from(i.gid),
                    i.size as i64,
                    i.atime.sec,
                    i64::from(i.atime.nsec),
                    i.mtime.sec,
                    i64::from(i.mtime.nsec),
                    i.ctime.sec,
                    i64::from(i.ctime.nsec),
                    i64::from(i.rdev),
                    i.parent.0 as i64,
                    i.synced_size as i64,
                    i.alloc as i64,
                ])?;
                self.remember(i);
                return Ok(());
            }
        }
        self.insert_or_replace_inode(i)?;
        self.remember(i);
        Ok(())
    }

    fn delete_inode(&mut self, ino: Ino) -> Result<()> {
        let before = self.before(ino)?;
        self.count(before.as_ref(), None);
        for sql in [
            "DELETE FROM inodes WHERE ino = ?1",
            "DELETE FROM symlinks WHERE ino = ?1",
            "DELETE FROM xattrs WHERE ino = ?1",
            "DELETE FROM blocks WHERE ino = ?1",
        ] {
            self.tx
                .prepare_cached(sql)?
                .execute(params![ino.0 as i64])?;
        }
        Ok(())
    }

    fn dentry(&mut self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, FileKind)>> {
        let mut st = self
            .tx
            .prepare_cached("SELECT ino, kind FROM dentries WHERE parent = ?1 AND name = ?2")?;
        Ok(st
            .query_row(params![parent.0 as i64, name], |r| {
                Ok((Ino(r.get::<_, i64>(0)? as u64), kind_of(r.get(1)?)?))
            })
            .optional()?)
    }

    fn put_dentry(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileKind,
        cookie: u64,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO dentries(parent, name, ino, kind, cookie) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                parent.0 as i64,
                name,
                ino.0 as i64,
                i64::from(kind.code()),
                cookie as i64
            ])?;
        Ok(())
    }

    fn delete_dentry(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        self.tx
            .prepare_cached("DELETE FROM dentries WHERE parent = ?1 AND name = ?2")?
            .execute(params![parent.0 as i64, name])?;
        Ok(())
    }

    fn dir_has_entries(&mut self, dir: Ino) -> Result<bool> {
        let mut st = self
            .tx
            .prepare_cached("SELECT 1 FROM dentries WHERE parent = ?1 LIMIT 1")?;
        Ok(st.exists(params![dir.0 as i64])?)
    }

    // The listings take `limit` rows off a query without LIMIT: with
    // `LIMIT ?3`, SQLite re-prepared the cached statement whenever the
    // value bound differed from the last one (it plans with the value;
    // `sqlite3Reprepare` under `sqlite3_step` in perf), and the limit
    // changes from one reply to the next: a parse and a plan per
    // READDIRPLUS. The rows come in index order (`dentries_cookie`), so
    // the walk stops after `limit` of them.
    fn list_dir(&mut self, dir: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        let mut st = self.tx.prepare_cached(
            "SELECT name, ino, kind, cookie FROM dentries WHERE parent = ?1 AND cookie > ?2 \
             ORDER BY cookie",
        )?;
        let rows = st.query_map(
            params![dir.0 as i64, after.min(i64::MAX as u64) as i64],
            |r| {
                Ok(DirEntry {
                    name: r.get(0)?,
                    ino: Ino(r.get::<_, i64>(1)? as u64),
                    kind: kind_of(r.get(2)?)?,
                    cookie: r.get::<_, i64>(3)? as u64,
                })
            },
        )?;
        Ok(rows.take(limit).collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn list_dir_plus(
        &mut self,
        dir: Ino,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, Inode)>> {
        // The entries (the same page of the listing as `list_dir`) joined
        // with their inodes: one statement instead of one per entry.
        let mut st = self.tx.prepare_cached(concat!(
            "SELECT ",
            inode_cols!(),
            ", d.name, d.cookie FROM (SELECT name, cookie, ino AS dino FROM dentries \
             WHERE parent = ?1 AND cookie > ?2) AS d \
             JOIN inodes ON inodes.ino = d.dino ORDER BY d.cookie"
        ))?;
        let rows = st.query_map(
            params![dir.0 as i64, after.min(i64::MAX as u64) as i64],
            |r| {
                let i = row_inode(r)?;
                let e = DirEntry {
                    name: r.get(19)?,
                    ino: i.ino,
                    kind: i.kind,
                    cookie: r.get::<_, i64>(20)? as u64,
                };
                Ok((e, i))
            },
        )?;
        Ok(rows.take(limit).collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn next(&mut self, counter: &'static str) -> Result<u64> {
        let mut st = self.tx.prepare_cached(
            "INSERT INTO counters(name, value) VALUES (?1, 1) \
             ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
        )?;
        Ok(st.query_row(params![counter], |r| r.get::<_, i64>(0))? as u64)
    }

    fn counter(&mut self, counter: &'static str) -> Result<u64> {
        let mut st = self
            .tx
            .prepare_cached("SELECT value FROM counters WHERE name = ?1")?;
        let v: Option<i64> = st.query_row(params![counter], |r| r.get(0)).optional()?;
        Ok(v.unwrap_or(0) as u64)
    }

    fn set_counter(&mut self, counter: &'static str, value: u64) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO counters(name, value) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET value = ?2",
            )?
            .execute(params![counter, value as i64])?;
        Ok(())
    }

    fn symlink(&mut self, ino: Ino) -> Result<Option<Vec<u8>>> {
        let mut st = self
            .tx
            .prepare_cached("SELECT target FROM symlinks WHERE ino = ?1")?;
        Ok(st
            .query_row(params![ino.0 as i64], |r| r.get(0))
            .optional()?)
    }

    fn put_symlink(&mut self, ino: Ino, target: &[u8]) -> Result<()> {
        self.tx
            .prepare_cached("INSERT OR REPLACE INTO symlinks(ino, target) VALUES (?1, ?2)")?
            .execute(params![ino.0 as i64, target])?;
        Ok(())
    }

    fn xattr(&mut self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut st = self
            .tx
            .prepare_cached("SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2")?;
        Ok(st
            .query_row(params![ino.0 as i64, name], |r| r.get(0))
            .optional()?)
    }

    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()> {
        self.tx
            .prepare_cached("INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES (?1, ?2, ?3)")?
            .execute(params![ino.0 as i64, name, value])?;
        Ok(())
    }

    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")?
            .execute(params![ino.0 as i64, name])?;
        Ok(n > 0)
    }

    fn xattr_names(&mut self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let mut st = self
            .tx
            .prepare_cached("SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")?;
        let rows = st.query_map(params![ino.0 as i64], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn any_xattr(&mut self) -> Result<bool> {
        let mut st = self
            .tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM xattrs)")?;
        Ok(st.query_row([], |r| r.get(0))?)
    }

    fn block(&mut self, a: BlockAddr) -> Result<Option<BlockRef>> {
        let mut st = self.tx.prepare_cached(
            "SELECT version, len, ofile, ochunk, oblock, obyte FROM blocks \
             WHERE ino = ?1 AND chunk = ?2 AND block = ?3",
        )?;
        Ok(st
            .query_row(params![a.file.0 as i64, a.chunk.0, a.block], |r| {
                row_block_ref(r, 0)
            })
            .optional()?)
    }

    fn put_block(&mut self, a: BlockAddr, r: BlockRef) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO blocks(ino, chunk, block, version, len, \
                 ofile, ochunk, oblock, obyte) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                a.file.0 as i64,
                a.chunk.0,
                a.block,
                r.version as i64,
                r.len,
                r.origin.map(|o| o.file.0 as i64),
                r.origin.map(|o| o.chunk.0),
                r.origin.map(|o| o.block),
                r.offset,
            ])?;
        Ok(())
    }

    fn version_rows(&mut self, version: u64) -> Result<Vec<(BlockAddr, BlockRef)>> {
        let mut st = self.tx.prepare_cached(
            "SELECT ino, chunk, block, version, len, ofile, ochunk, oblock, obyte FROM blocks \
             WHERE version = ?1",
        )?;
        let rows = st.query_map(params![version as i64], row_block)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn version_refs(&mut self, version: u64) -> Result<u64> {
        let mut st = self
            .tx
            .prepare_cached("SELECT count(*) FROM blocks WHERE version = ?1")?;
        Ok(st.query_row(params![version as i64], |r| r.get::<_, i64>(0))? as u64)
    }

    fn delete_block(&mut self, a: BlockAddr) -> Result<()> {
        self.tx
            .prepare_cached("DELETE FROM blocks WHERE ino = ?1 AND chunk = ?2 AND block = ?3")?
            .execute(params![a.file.0 as i64, a.chunk.0, a.block])?;
        Ok(())
    }

    fn doom(&mut self, k: BlockKey) -> Result<()> {
        self.key_statement(
            "INSERT OR IGNORE INTO doomed(ino, chunk, block, version) VALUES (?1, ?2, ?3, ?4)",
            k,
        )
    }

    fn doomed(&mut self) -> Result<Vec<BlockKey>> {
        let mut st = self
            .tx
            .prepare_cached("SELECT ino, chunk, block, version FROM doomed")?;
        let rows = st.query_map([], |r| {
            Ok(BlockKey {
                file: FileId(r.get::<_, i64>(0)? as u64),
                chunk: ChunkIndex(r.get(1)?),
                block: r.get(2)?,
                version: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn forget_doomed(&mut self, k: BlockKey) -> Result<()> {
        self.key_statement(
            "DELETE FROM doomed WHERE ino = ?1 AND chunk = ?2 AND block = ?3 AND version = ?4",
            k,
        )
    }

    fn file_blocks(&mut self, ino: Ino) -> Result<Vec<(BlockAddr, BlockRef)>> {
        let mut st = self.tx.prepare_cached(
            "SELECT chunk, block, version, len, ofile, ochunk, oblock, obyte FROM blocks \
             WHERE ino = ?1 ORDER BY chunk, block",
        )?;
        let rows = st.query_map(params![ino.0 as i64], |r| {
            Ok((
                BlockAddr {
                    file: FileId(ino.0),
                    chunk: ChunkIndex(r.get(0)?),
                    block: r.get(1)?,
                },
                row_block_ref(r, 2)?,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn inodes_past(&mut self, lsn: u64) -> Result<Vec<Ino>> {
        let mut st = self.tx.prepare_cached(
            "SELECT ino FROM inodes WHERE size_lsn > ?1 \
             UNION SELECT ino FROM inodes WHERE truncate_lsn > ?1 ORDER BY ino",
        )?;
        let rows = st.query_map(params![lsn as i64], |r| Ok(Ino(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn max_inode_lsn(&mut self) -> Result<u64> {
        // Both columns are indexed: two index look-ups.
        let mut st = self.tx.prepare_cached(
            "SELECT max(coalesce((SELECT max(size_lsn) FROM inodes), 0), \
                        coalesce((SELECT max(truncate_lsn) FROM inodes), 0))",
        )?;
        Ok(st.query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    fn all_inodes(&mut self) -> Result<Vec<Inode>> {
        let mut st = self
            .tx
            .prepare(concat!("SELECT ", inode_cols!(), " FROM inodes"))?;
        let rows = st.query_map([], row_inode)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn all_dentries(&mut self) -> Result<Vec<(Ino, DirEntry)>> {
        let mut st = self
            .tx
            .prepare("SELECT parent, name, ino, kind, cookie FROM dentries")?;
        let rows = st.query_map([], |r| {
            Ok((
                Ino(r.get::<_, i64>(0)? as u64),
                DirEntry {
                    name: r.get(1)?,
                    ino: Ino(r.get::<_, i64>(2)? as u64),
                    kind: kind_of(r.get(3)?)?,
                    cookie: r.get::<_, i64>(4)? as u64,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn all_blocks(&mut self) -> Result<Vec<(BlockAddr, BlockRef)>> {
        let mut st = self.tx.prepare(
            "SELECT ino, chunk, block, version, len, ofile, ochunk, oblock, obyte FROM blocks",
        )?;
        let rows = st.query_map([], row_block)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn orphans(&mut self) -> Result<Vec<Ino>> {
        let mut st = self
            .tx
            .prepare_cached("SELECT ino FROM inodes WHERE nlink = 0 ORDER BY ino")?;
        let rows = st.query_map([], |r| Ok(Ino(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn usage(&mut self) -> Result<Usage> {
        if let Some(u) = self.usage {
            return Ok(u);
        }
        let mut st = self.tx.prepare_cached(
            "SELECT count(*), coalesce(sum(CASE WHEN kind = 8 THEN size ELSE 0 END), 0) FROM inodes",
        )?;
        let u = st.query_row([], |r| {
            Ok(Usage {
                inodes: r.get::<_, i64>(0)? as u64,
                bytes: r.get::<_, i64>(1)? as u64,
            })
        })?;
        self.usage = Some(u);
        Ok(u)
    }
}

impl Backend for SqliteBackend {
    fn run(
        &self,
        mode: TxMode,
        barrier: Barrier<'_>,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> Result<()> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if mode != TxMode::Read
            && let Some(why) = &c.poisoned
        {
            return Err(FsError::io(
                "metadata database",
                format!("refused: an earlier durable commit failed ({why}); remount"),
            ));
        }
        if mode == TxMode::Durable {
            barrier()?;
            c.conn.pragma_update(None, "synchronous", "FULL")?;
        }
        let Conn {
            conn,
            poisoned,
            usage,
        } = &mut *c;
        let result = (|| {
            let behavior = match mode {
                TxMode::Read => TransactionBehavior::Deferred,
                _ => TransactionBehavior::Immediate,
            };
            let tx = conn.transaction_with_behavior(behavior)?;
            let mut stx = SqlTx {
                tx: &tx,
                read: Vec::new(),
                usage: *usage,
            };
            f(&mut stx)?;
            let counted = stx.usage;
            if mode == TxMode::Read {
                tx.rollback()?;
                *usage = counted;
                return Ok(());
            }
            if let Err(e) = tx.commit() {
                if mode == TxMode::Durable && is_io_error(&e) {
                    *poisoned = Some(e.to_string());
                }
                return Err(e.into());
            }
            *usage = counted;
            self.commits.fetch_add(1, Ordering::Relaxed);
            if mode == TxMode::Durable {
                self.undurable.store(0, Ordering::Relaxed);
            } else {
                self.undurable.fetch_add(1, Ordering::Relaxed);
            }
            if mode == TxMode::Durable && self.checkpoint_due() {
                // Under the same lock as the durable commit: everything
                // in the WAL is durable, so copying it into the database
                // changes nothing a power loss could see.
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Ok(()) => self.commits.store(0, Ordering::Relaxed),
                    Err(e) if is_io_error(&e) => {
                        *poisoned = Some(e.to_string());
                        return Err(e.into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })();
        if mode == TxMode::Durable {
            c.conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        result
    }

    fn checkpoint_due(&self) -> bool {
        self.commits.load(Ordering::Relaxed) >= CHECKPOINT_AFTER_COMMITS
    }

    /// `fdatasync` of the WAL through a descriptor of this backend's own,
    /// outside the connection's lock: the durable commit that follows
    /// finds little left to write, and other metadata calls do not wait
    /// for the device while it does (a sync after 4000 small commits had
    /// about 100 MB of WAL to write). A failure poisons the store, as a
    /// failed durable commit does (the kernel may have dropped the pages).
    /// Skipped when few commits wait (an fsync-heavy program): it would be
    /// a second device flush for the same few pages.
    fn presync(&self) -> Result<()> {
        if self.undurable.load(Ordering::Relaxed) < PRESYNC_AFTER_COMMITS {
            return Ok(());
        }
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        if wal.is_none() {
            match std::fs::File::open(&self.wal_path) {
                Ok(f) => *wal = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(FsError::io("open the metadata WAL", e)),
            }
        }
        let Some(f) = wal.as_ref() else {
            return Ok(());
        };
        if let Err(e) = f.sync_data() {
            if crate::error::is_no_space(&e) {
                return Err(FsError::NoSpace(format!("fsync the metadata WAL: {e}")));
            }
            let why = format!("fsync the metadata WAL: {e}");
            self.conn.lock().unwrap_or_else(|e| e.into_inner()).poisoned = Some(why.clone());
            return Err(FsError::io("metadata database", why));
        }
        Ok(())
    }
}

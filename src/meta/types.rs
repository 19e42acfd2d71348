//! The records of the metadata store: inodes, directory entries, and the
//! arguments of namespace operations.

use std::time::{SystemTime, UNIX_EPOCH};

use slicefs_wal::FileId;

/// An inode number. The root directory is [`Ino::ROOT`]; numbers are
/// never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(1);

    /// The file id the log, cache and transfer manager know the file by.
    pub fn file(self) -> FileId {
        FileId(self.0)
    }
}

/// The type of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl FileKind {
    /// The stored code (also the `S_IFMT` bits shifted down by 12).
    pub fn code(self) -> u8 {
        match self {
            FileKind::Fifo => 1,
            FileKind::CharDevice => 2,
            FileKind::Directory => 4,
            FileKind::BlockDevice => 6,
            FileKind::Regular => 8,
            FileKind::Symlink => 10,
            FileKind::Socket => 12,
        }
    }

    /// The kind of a stored code.
    pub fn from_code(code: u8) -> Option<FileKind> {
        Some(match code {
            1 => FileKind::Fifo,
            2 => FileKind::CharDevice,
            4 => FileKind::Directory,
            6 => FileKind::BlockDevice,
            8 => FileKind::Regular,
            10 => FileKind::Symlink,
            12 => FileKind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of a `st_mode`.
    pub fn mode_bits(self) -> u32 {
        u32::from(self.code()) << 12
    }
}

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    /// Seconds since the epoch (negative before it).
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

impl Timespec {
    /// The current time.
    pub fn now() -> Timespec {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

/// An inode: a file's attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Its number.
    pub ino: Ino,
    /// Its type.
    pub kind: FileKind,
    /// Permission bits, `0o7777` (with setuid, setgid, sticky).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (a symlink: its target's length).
    pub size: u64,
    /// Hard links (a directory: 2 + its subdirectories).
    pub nlink: u32,
    /// Last access.
    pub atime: Timespec,
    /// Last data change.
    pub mtime: Timespec,
    /// Last attribute change.
    pub ctime: Timespec,
    /// Device number of a device node.
    pub rdev: u32,
    /// A directory's parent (the root's is itself); 0 for other files.
    pub parent: Ino,
    /// The LSN of the last truncate applied (recovery applies a logged
    /// truncate only if it is newer).
    pub truncate_lsn: u64,
    /// The LSN of the newest write whose end `size` covers (0: none).
    /// After a power loss that kept this size but lost that write from the
    /// log, recovery brings the size back to what survived.
    pub size_lsn: u64,
    /// The size at the file's last `fsync`, or set by its last truncate:
    /// the least size a power loss may leave.
    pub synced_size: u64,
    /// Bytes the file's committed blocks hold (the sum of their valid
    /// lengths): what `st_blocks` reports once nothing of the file waits
    /// for upload (holes hold nothing). Kept by the block map commits.
    pub alloc: u64,
}

impl Inode {
    /// `st_mode`: type bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm)
    }

    /// `st_size` as the front ends report it: [`DIR_SIZE`] for a
    /// directory (its entries live in metadata, not in its data), `size`
    /// for the others.
    pub fn stat_size(&self) -> u64 {
        match self.kind {
            FileKind::Directory => DIR_SIZE,
            _ => self.size,
        }
    }
}

impl Inode {
    /// The bytes `st_blocks` counts: [`Inode::alloc`] for a regular file
    /// (holes hold nothing), the reported size for the others.
    pub fn stat_alloc(&self) -> u64 {
        match self.kind {
            FileKind::Regular => self.alloc,
            _ => self.stat_size(),
        }
    }
}

/// The size reported for every directory, in bytes: one 4 KiB block, as
/// ext4 reports a small directory (and JuiceFS every directory), so that
/// listings compared with a local copy (`find -printf %s`, `rsync -n`)
/// show no difference.
pub const DIR_SIZE: u64 = 4096;

/// What to create.
#[derive(Clone, Copy, Debug)]
pub struct NewNode<'a> {
    /// The type.
    pub kind: FileKind,
    /// Permission bits (after the umask).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u32,
    /// Target (symlinks).
    pub target: Option<&'a [u8]>,
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub perm: Option<u16>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// Size at least this (the larger of it and the stored size is kept,
    /// in the same transaction).
    pub grow_size: Option<u64>,
    /// New access time.
    pub atime: Option<Timespec>,
    /// New modification time.
    pub mtime: Option<Timespec>,
    /// New change time.
    pub ctime: Option<Timespec>,
    /// Truncate LSN to record with a size change.
    pub truncate_lsn: Option<u64>,
    /// The newest write LSN the size covers (the larger is kept).
    pub size_lsn: Option<u64>,
    /// The size a power loss may not go below (see [`Inode::synced_size`]).
    pub synced_size: Option<u64>,
}

/// One directory entry, as `readdir` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name.
    pub name: Vec<u8>,
    /// The inode.
    pub ino: Ino,
    /// Its type.
    pub kind: FileKind,
    /// Position: pass it back to continue after this entry. Positions
    /// only grow, so a listing resumed after entries were added or removed
    /// neither repeats nor skips an entry that stayed.
    pub cookie: u64,
}

/// `rename` flags (Linux `renameat2`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// `RENAME_NOREPLACE`: fail with `EEXIST` if the target exists.
    pub noreplace: bool,
    /// `RENAME_EXCHANGE`: swap the two names (both must exist).
    pub exchange: bool,
}

/// Totals for `statfs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Inodes in use.
    pub inodes: u64,
    /// Sum of regular file sizes.
    pub bytes: u64,
}

/// One page of a directory listing with attributes
/// ([`MetaStore::readdir_plus_dots`](super::MetaStore::readdir_plus_dots)):
/// the directory, its parent if asked for, and the entries with their
/// inodes, all read in one transaction.
#[derive(Clone, Debug)]
pub struct DirPage {
    /// The directory's inode.
    pub dir: Inode,
    /// Its parent's inode (`..`), if asked for.
    pub parent: Option<Inode>,
    /// Entries after the position asked for, in position order.
    pub entries: Vec<(DirEntry, Inode)>,
}

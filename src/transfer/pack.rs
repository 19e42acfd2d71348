//! Packs: several small blocks uploaded as one object.
//!
//! A small file costs the store one object per block otherwise: on a
//! `file://` store a create, an fsync, a rename and a directory fsync; on
//! S3 one `PUT`. Uploads whose merged block is at most
//! [`PACK_MEMBER_MAX`] bytes join the open pack instead; the first to join
//! (the *leader*) waits up to [`PACK_WINDOW`] for more, or until the pack
//! holds [`TransferConfig::pack_bytes`](super::TransferConfig::pack_bytes),
//! then puts the members one after another as one object, keyed by the
//! leader's block (`BlockAddr::key`) and a fresh version, and commits
//! every member's block map row in one metadata transaction
//! ([`BlockMap::commit_over_many`](crate::meta::BlockMap::commit_over_many),
//! under every member file's gate): `origin` the leader's block (also in
//! the leader's own row), `offset` where the member's bytes start. A read
//! of a member fetches only its bytes (a ranged `GET`). A member then goes on alone (durable wait, flushed
//! marker); if the shared commit failed, it commits its row itself.
//!
//! Nothing else changes: rows that hold one version are the object's
//! references, as for clones, so the object is doomed when the last of
//! them goes, and the orphan sweep keeps it while any row names it. A
//! member whose commit is refused (its file was truncated or removed
//! meanwhile) leaves dead bytes in the object until the pack goes; a
//! pack no member committed is deleted at once. Crash safety is that of
//! a single block: the put comes after the log is durable and before
//! any commit, and a pack no commit reached is an orphan for the sweep.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, watch};

use super::{Uploading, lock};
use crate::blockstore::BlockKey;
use crate::meta::{BlockAddr, BlockRef};

/// Largest merged block (bytes) that joins a pack; larger blocks are
/// objects of their own. 64 KiB: most files of a source tree, a mail
/// spool or a git object store are smaller, and a pack of such members
/// still has many.
pub const PACK_MEMBER_MAX: usize = 64 << 10;

/// How long a pack's leader waits for more members before it uploads
/// what it has. Uploads that become due together (the files of one
/// burst) reach the packer within about a millisecond of each other.
pub const PACK_WINDOW: Duration = Duration::from_millis(2);

/// The open pack, if any.
pub(super) struct Packer {
    max_bytes: usize,
    open: Mutex<Option<Arc<Pack>>>,
}

/// One pack: its members' bytes until it is sealed, then the outcome of
/// its put.
pub(super) struct Pack {
    /// The leader's block: the object's key names it.
    pub first: BlockAddr,
    parts: Mutex<Parts>,
    sealed: Notify,
    /// `None` while the put is under way; then the version stored, or
    /// `Some(None)` if the manager stopped first.
    stored: watch::Sender<Option<Option<u64>>>,
    /// Per member (in the order they joined), how the leader's shared
    /// commit ended for it; `None`: not decided, commit alone. Set before
    /// `stored`.
    decisions: Mutex<Vec<Option<Decision>>>,
    /// Members that have not finished (committed or given up).
    pending: AtomicUsize,
    /// Whether some member committed its row.
    committed: AtomicBool,
    /// Keeps the object out of the orphan sweep until every member
    /// finished.
    uploading: Mutex<Option<Uploading>>,
}

#[derive(Default)]
struct Parts {
    bytes: Vec<Bytes>,
    claims: Vec<Claim>,
    len: usize,
    sealed: bool,
}

/// What a member's row commit needs: its block, the reference its merge
/// read (compare-and-set), its length, and its file's gate with the
/// epoch of its snapshot (no commit after a truncate or removal).
pub(super) struct Claim {
    pub addr: BlockAddr,
    pub base: Option<BlockRef>,
    pub len: u32,
    pub gate: Arc<Mutex<u64>>,
    pub epoch: u64,
}

/// How the shared commit ended for one member.
#[derive(Clone, Copy, Debug)]
pub(super) enum Decision {
    /// Committed; the reference it replaced if that is garbage now.
    Committed(Option<BlockRef>),
    /// Not committed: truncated or removed since its snapshot, or the
    /// block changed (another host); the upload is discarded.
    Stale,
    /// Not committed: the file was removed (purged) meanwhile.
    Gone,
}

/// The sealed contents of a pack: the object's bytes and each member's
/// claim with its offset, in joining order.
pub(super) struct Sealed {
    pub bytes: Bytes,
    pub claims: Vec<(Claim, u32)>,
}

/// A member's place in a pack.
pub(super) struct Member {
    pub pack: Arc<Pack>,
    /// The member's index in joining order.
    pub index: usize,
    /// Where the member's bytes start in the object.
    pub offset: u32,
    /// Whether this member puts the pack.
    pub leader: bool,
    finished: bool,
}

impl Packer {
    /// A packer whose packs hold at most `max_bytes` (0: no packing; at
    /// most a block, 4 MiB).
    pub fn new(max_bytes: usize) -> Packer {
        Packer {
            max_bytes: max_bytes.min(slicefs_cache::BLOCK_SIZE as usize),
            open: Mutex::new(None),
        }
    }

    /// Whether a merged block of `len` bytes joins a pack.
    pub fn takes(&self, len: usize) -> bool {
        self.max_bytes > 0 && len > 0 && len <= PACK_MEMBER_MAX.min(self.max_bytes)
    }

    /// Adds `data` (the merged block at `addr`) to the open pack, or
    /// opens one with it as the leader. A pack that reaches the size
    /// limit is sealed at once (its leader stops waiting).
    pub fn join(&self, addr: BlockAddr, data: Bytes, claim: Claim) -> Member {
        let mut open = lock(&self.open);
        loop {
            let pack = match open.as_ref() {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(Pack {
                        first: addr,
                        parts: Mutex::new(Parts::default()),
                        sealed: Notify::new(),
                        stored: watch::Sender::new(None),
                        decisions: Mutex::new(Vec::new()),
                        pending: AtomicUsize::new(0),
                        committed: AtomicBool::new(false),
                        uploading: Mutex::new(None),
                    });
                    *open = Some(p.clone());
                    p
                }
            };
            let mut parts = lock(&pack.parts);
            if parts.sealed || parts.len + data.len() > self.max_bytes {
                // Sealed by its leader, or too full for this member.
                parts.sealed = true;
                drop(parts);
                pack.sealed.notify_one();
                *open = None;
                continue;
            }
            let offset = parts.len as u32;
            let index = parts.bytes.len();
            let leader = index == 0;
            parts.len += data.len();
            parts.bytes.push(data);
            parts.claims.push(claim);
            if parts.len >= self.max_bytes {
                parts.sealed = true;
                *open = None;
                drop(parts);
                pack.sealed.notify_one();
            } else {
                drop(parts);
            }
            pack.pending.fetch_add(1, Ordering::SeqCst);
            return Member {
                pack,
                index,
                offset,
                leader,
                finished: false,
            };
        }
    }

    /// The leader's part: waits until the pack is sealed or
    /// [`PACK_WINDOW`] passed, seals it, and returns its contents.
    pub async fn seal(&self, pack: &Arc<Pack>) -> Sealed {
        let sealed = pack.sealed.notified();
        let already = lock(&pack.parts).sealed;
        if !already {
            let _ = tokio::time::timeout(PACK_WINDOW, sealed).await;
        }
        {
            let mut open = lock(&self.open);
            if open.as_ref().is_some_and(|p| Arc::ptr_eq(p, pack)) {
                *open = None;
            }
        }
        let mut parts = lock(&pack.parts);
        parts.sealed = true;
        let mut out = BytesMut::with_capacity(parts.len);
        let mut claims = Vec::with_capacity(parts.claims.len());
        let bytes = std::mem::take(&mut parts.bytes);
        for (b, c) in bytes.into_iter().zip(std::mem::take(&mut parts.claims)) {
            claims.push((c, out.len() as u32));
            out.extend_from_slice(&b);
        }
        Sealed {
            bytes: out.freeze(),
            claims,
        }
    }
}

impl Pack {
    /// The leader's report: the pack is stored as `version` (`None`: the
    /// manager stopped before it was), with `uploading` marking it until
    /// every member finished, and how the shared commit ended for each
    /// member (empty: commit alone).
    pub fn stored(
        &self,
        version: Option<u64>,
        uploading: Option<Uploading>,
        decisions: Vec<Option<Decision>>,
    ) {
        *lock(&self.uploading) = uploading;
        *lock(&self.decisions) = decisions;
        self.stored.send_replace(Some(version));
    }

    /// How the shared commit ended for member `index` (`None`: not
    /// decided; the member commits alone). Valid once
    /// [`Pack::version`] returned.
    pub fn decision(&self, index: usize) -> Option<Decision> {
        lock(&self.decisions).get(index).copied().flatten()
    }

    /// Waits for the leader's put: the version stored, or `None` if the
    /// manager stopped first.
    pub async fn version(&self) -> Option<u64> {
        let mut rx = self.stored.subscribe();
        match rx.wait_for(|s| s.is_some()).await {
            Ok(s) => (*s).flatten(),
            Err(_) => None,
        }
    }

    /// The object's key once stored as `version`.
    pub fn key(&self, version: u64) -> BlockKey {
        self.first.key(version)
    }
}

impl Member {
    /// Reports whether this member committed its row. Returns `true` when
    /// it was the last member to finish and none committed: the object is
    /// nobody's and may be deleted at once.
    pub fn finish(mut self, committed: bool) -> bool {
        self.finished = true;
        self.leave(committed)
    }

    fn leave(&self, committed: bool) -> bool {
        if committed {
            self.pack.committed.store(true, Ordering::SeqCst);
        }
        if self.pack.pending.fetch_sub(1, Ordering::SeqCst) != 1 {
            return false;
        }
        // The last one: the object is referenced or garbage now.
        drop(lock(&self.pack.uploading).take());
        !self.pack.committed.load(Ordering::SeqCst)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // A member that stopped early (the manager stopping): the object
        // stays for the orphan sweep if no one committed it.
        if !self.finished {
            self.leave(false);
        }
    }
}

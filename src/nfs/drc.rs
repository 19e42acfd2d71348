//! The duplicate request cache (as knfsd's): a client that got no reply
//! resends the call with the same xid, and a non-idempotent procedure run
//! twice answers wrongly (a second REMOVE: `NFS3ERR_NOENT` for a file the
//! first one removed). So the replies of non-idempotent NFS procedures are
//! kept for [`DRC_TTL`], at most [`DRC_ENTRIES`], keyed by client address,
//! xid, procedure and a hash of the arguments; a call that matches one is
//! answered with the kept reply, and one that matches a call still running
//! is dropped (the client resends it later).

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reply is kept.
pub const DRC_TTL: Duration = Duration::from_secs(120);
/// Replies kept at most (the oldest go first).
pub const DRC_ENTRIES: usize = 4096;

/// NFSv3 procedures whose repetition changes the answer: SETATTR,
/// CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK.
pub fn non_idempotent(proc: u32) -> bool {
    matches!(proc, 2 | 8..=15)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    client: IpAddr,
    xid: u32,
    proc: u32,
    args: u64,
}

enum Slot {
    Running,
    Done(Vec<u8>),
}

/// What [`Drc::begin`] found.
pub enum Seen {
    /// A new call: run it, then [`Drc::finish`].
    New,
    /// The same call is still running: answer nothing.
    Running,
    /// The same call ran: send this reply again.
    Done(Vec<u8>),
}

/// The cache. Shared by every connection of a server.
#[derive(Default)]
pub struct Drc {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    order: VecDeque<(Instant, Key)>,
}

fn key(client: IpAddr, xid: u32, proc: u32, args: &[u8]) -> Key {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    args.hash(&mut h);
    Key {
        client,
        xid,
        proc,
        args: h.finish(),
    }
}

impl Drc {
    /// Looks the call up, and marks a new one running.
    pub fn begin(&self, client: IpAddr, xid: u32, proc: u32, args: &[u8]) -> Seen {
        let k = key(client, xid, proc, args);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.expire(Instant::now());
        match inner.slots.get(&k) {
            Some(Slot::Running) => return Seen::Running,
            Some(Slot::Done(r)) => return Seen::Done(r.clone()),
            None => {}
        }
        inner.slots.insert(k, Slot::Running);
        inner.order.push_back((Instant::now(), k));
        while inner.order.len() > DRC_ENTRIES {
            if let Some((_, old)) = inner.order.pop_front() {
                inner.slots.remove(&old);
            }
        }
        Seen::New
    }

    /// Keeps the reply of a call [`Drc::begin`] marked running.
    pub fn finish(&self, client: IpAddr, xid: u32, proc: u32, args: &[u8], reply: &[u8]) {
        let k = key(client, xid, proc, args);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = inner.slots.get_mut(&k) {
            *slot = Slot::Done(reply.to_vec());
        }
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, k)) = self.order.front() {
            if now.duration_since(at) < DRC_TTL {
                break;
            }
            self.order.pop_front();
            self.slots.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resent_call_gets_the_kept_reply_and_a_different_one_runs() {
        let d = Drc::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(d.begin(ip, 7, 12, b"args"), Seen::New));
        assert!(matches!(d.begin(ip, 7, 12, b"args"), Seen::Running));
        d.finish(ip, 7, 12, b"args", b"reply");
        match d.begin(ip, 7, 12, b"args") {
            Seen::Done(r) => assert_eq!(r, b"reply"),
            _ => panic!("not kept"),
        }
        // Another xid, other arguments or another client is another call.
        assert!(matches!(d.begin(ip, 8, 12, b"args"), Seen::New));
        assert!(matches!(d.begin(ip, 7, 12, b"other"), Seen::New));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(matches!(d.begin(other, 7, 12, b"args"), Seen::New));
    }

    #[test]
    fn the_cache_is_bounded() {
        let d = Drc::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for xid in 0..(DRC_ENTRIES as u32 + 10) {
            assert!(matches!(d.begin(ip, xid, 12, b""), Seen::New));
            d.finish(ip, xid, 12, b"", b"r");
        }
        let inner = d.inner.lock().unwrap();
        assert_eq!(inner.slots.len(), DRC_ENTRIES);
        drop(inner);
        assert!(
            matches!(d.begin(ip, 0, 12, b""), Seen::New),
            "the oldest went"
        );
    }
}

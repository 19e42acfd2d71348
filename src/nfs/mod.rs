//! The NFS front end: an NFSv3 (RFC 1813) and MOUNT v3 server over TCP,
//! both programs on one port, a thin adapter from RPC calls to [`Vfs`]
//! calls, with status codes from [`nfs_status`].
//!
//! A Linux client mounts it without a portmapper:
//! `mount -t nfs -o vers=3,proto=tcp,port=P,mountport=P,mountproto=tcp,nolock HOST:/ DIR`
//! (`nolock`: there is no lock manager).
//!
//! Choices:
//! - one export, `/`; every host may mount it;
//! - credentials: `AUTH_UNIX` (`AUTH_SYS`) as sent (uid, gid, up to 16
//!   groups); `AUTH_NULL` is nobody (65534); other flavors are refused
//!   (`AUTH_BADCRED`); optional root squash ([`ServerConfig::squash_root`]);
//!   the VFS checks permissions on every call;
//! - file handles: 16 bytes, inode number and file system id (see
//!   [`file_handle`]); they survive restarts (inode numbers are never
//!   reused), and a freed inode's handle is `NFS3ERR_STALE`;
//! - durability: an UNSTABLE WRITE returns once its bytes are in the log,
//!   not synced; DATA_SYNC, FILE_SYNC and COMMIT return once durable.
//!   Every server instance has its own write verifier ([`Server::verifier`]),
//!   so after a crash or restart clients resend the writes they had not
//!   committed;
//! - calls that change anything, READ and READDIR run on Tokio's blocking
//!   pool (`spawn_blocking`): the VFS blocks on log syncs, SQLite and
//!   object store reads; calls that only read metadata run on the
//!   connection's task (see `connection`);
//! - each connection runs up to [`MAX_IN_FLIGHT`] calls at once and
//!   answers each when it is done (RPC replies over TCP are matched by
//!   transaction id, not by order): a Linux client sends every call of a
//!   mount over one connection, and a call that waits for the object
//!   store or a sync does not hold up the others.
//!
//! - a duplicate request cache for non-idempotent procedures
//!   (`drc.rs`): a call resent after a lost reply gets the first reply.
//!
//! Not supported: NFSv2 and v4, UDP, the portmapper (rpcbind), the lock
//! manager (NLM) and status monitor, NFSACL, RPCSEC_GSS, and reads of
//! files with execute permission only (knfsd allows them, for `exec`).

mod drc;
mod handle;
mod mount;
mod nfs3;
mod rpc;
mod xdr;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nfs3_types::rpc::accept_stat_data;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use handle::{FSID, HANDLE_LEN, file_handle, handle_ino};
pub use nfs3::nfs_status;

use crate::vfs::Vfs;
use rpc::{Call, Parsed, Refusal};

/// The NFS program number.
pub const NFS_PROGRAM: u32 = 100_003;
/// The NFS version served.
pub const NFS_VERSION: u32 = 3;
/// The MOUNT program number.
pub const MOUNT_PROGRAM: u32 = 100_005;
/// The MOUNT version served.
pub const MOUNT_VERSION: u32 = 3;

/// Calls one connection runs at once; the next record is read only when
/// one of them is done. With records of up to `max_io` + 64 KiB and
/// replies as large, a connection holds at most about
/// `2 * MAX_IN_FLIGHT * (max_io + 64 KiB)` bytes of calls and replies
/// (34 MiB at the default `max_io`).
pub const MAX_IN_FLIGHT: usize = 16;
/// Bytes a record may hold beyond `max_io`: RPC header, credentials and
/// the WRITE arguments around its data.
const RECORD_SLACK: usize = 64 << 10;
/// How long [`Server::serve`] waits, after its shutdown future resolved,
/// for the calls in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a file handle the VFS keeps open for READ, WRITE and COMMIT
/// stays open with no call on it ([`Vfs::release_idle`]), and how often
/// idle ones are released.
pub const KEEP_IDLE: Duration = Duration::from_secs(1);
/// The smallest and largest `max_io` (bytes).
const MAX_IO_RANGE: (u32, u32) = (4096, 16 << 20);

/// Settings of a [`Server`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Root squash: calls from uid 0 run as nobody (uid 65534), and group
    /// 0 (primary or supplementary) becomes group 65534, as knfsd's
    /// `root_squash`. Default: false (root on a client is root here; knfsd
    /// squashes by default).
    pub squash_root: bool,
    /// Largest READ and WRITE, in bytes (FSINFO's `rtmax`, `wtmax` and
    /// the preferred sizes; also the cap on a READDIR reply). Clamped to
    /// 4 KiB..=16 MiB. Records larger than this plus 64 KiB close the
    /// connection. Default: 1 MiB (the most a Linux client uses).
    pub max_io: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            squash_root: false,
            max_io: 1 << 20,
        }
    }
}

/// What every call of a server shares.
struct Shared {
    vfs: Arc<Vfs>,
    config: ServerConfig,
    verifier: [u8; 8],
    drc: drc::Drc,
}

/// An NFSv3 + MOUNT v3 server bound to a TCP port, not yet serving.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `addr` (port 0: any free port, see [`Server::local_addr`])
    /// and draws the write verifier (8 random bytes). Must be called
    /// inside a Tokio runtime.
    ///
    /// # Errors
    /// The socket's (`AddrInUse`, `PermissionDenied` for a port below
    /// 1024 without the capability).
    pub async fn bind(vfs: Arc<Vfs>, addr: SocketAddr, config: ServerConfig) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let config = ServerConfig {
            max_io: config.max_io.clamp(MAX_IO_RANGE.0, MAX_IO_RANGE.1),
            ..config
        };
        Ok(Server {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                vfs,
                config,
                verifier: rand::random(),
                drc: drc::Drc::default(),
            }),
        })
    }

    /// The address bound (with the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The write verifier of this server instance: sent with every WRITE
    /// and COMMIT reply (and as the READDIR cookie verifier). Random per
    /// instance, so a restart (which may have lost UNSTABLE writes not
    /// yet committed) shows clients a new one, and they send those writes
    /// again.
    pub fn verifier(&self) -> [u8; 8] {
        self.shared.verifier
    }

    /// Serves connections until `shutdown` resolves; then stops accepting
    /// and reading calls, lets the calls in flight finish and their
    /// replies go out (for at most [`SHUTDOWN_GRACE`], 10 s), and closes
    /// every connection. A VFS call still running after that keeps
    /// running on the blocking pool until it returns (it cannot be
    /// interrupted); its reply is dropped.
    ///
    /// Errors of one connection (a client that goes away, a record too
    /// large, a garbled header) close that connection and are logged
    /// (warn); failures to accept are logged and retried.
    ///
    /// # Errors
    /// None so far: every error is a connection's.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            listener, shared, ..
        } = self;
        let stop = CancellationToken::new();
        let mut conns = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut sweep = tokio::time::interval(KEEP_IDLE);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                // On a task of its own: a release writes metadata, and
                // accepting must not wait for it.
                _ = sweep.tick() => {
                    tokio::spawn(release_idle(shared.clone(), KEEP_IDLE));
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(%peer, error = %e, "TCP_NODELAY");
                        }
                        tracing::debug!(%peer, "NFS connection");
                        conns.spawn(connection(stream, peer, shared.clone(), stop.clone()));
                    }
                    Err(e) => {
                        // Out of descriptors, usually: wait a little
                        // instead of spinning.
                        tracing::warn!(error = %e, "NFS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "NFS connection task failed");
                    }
                }
            }
        }
        drop(listener);
        stop.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                connections = conns.len(),
                "NFS calls still running after {SHUTDOWN_GRACE:?}; connections closed"
            );
            conns.shutdown().await;
        }
        release_idle(shared, Duration::ZERO).await;
        Ok(())
    }
}

/// Releases the file handles the VFS kept for calls that have been idle
/// for `idle` (on the blocking pool: a release writes metadata). A
/// failure is logged; the handles are gone all the same.
async fn release_idle(shared: Arc<Shared>, idle: Duration) {
    let vfs = shared.vfs.clone();
    match tokio::task::spawn_blocking(move || vfs.release_idle(idle)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing idle NFS file handles"),
        Err(e) => tracing::warn!(error = %e, "releasing idle NFS file handles panicked"),
    }
}

/// Serves one connection until the peer closes it, it breaks the
/// protocol, or `stop`: reads records, runs up to [`MAX_IN_FLIGHT`] calls
/// at once, and writes each reply when its call is done.
///
/// Calls that only read metadata ([`runs_inline`]), and READs whose bytes
/// are all in the slice cache ([`read_inline`]), run on this task
/// between two reads, and their reply is written from here: a trip
/// through the blocking pool and back would cost more thread switches
/// than the call (over loopback about half of a GETATTR's latency).
/// They take microseconds, but may wait for the metadata lock held by a
/// commit. Every other call runs on the blocking pool, and its task
/// writes its reply.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(RECORD_SLACK, rd);
    let out = Arc::new(ReplyWriter {
        wr: tokio::sync::Mutex::new(BufWriter::with_capacity(RECORD_SLACK, wr)),
        waiting: AtomicUsize::new(0),
        broken: stop.child_token(),
        failed: AtomicBool::new(false),
        peer,
    });
    let limit = usize::try_from(shared.config.max_io)
        .unwrap_or(usize::MAX)
        .saturating_add(RECORD_SLACK);
    let mut calls = JoinSet::new();
    'records: loop {
        while calls.len() >= MAX_IN_FLIGHT {
            tokio::select! {
                biased;
                () = out.broken.cancelled() => break 'records,
                _ = calls.join_next() => {}
            }
        }
        while calls.try_join_next().is_some() {}
        let read = tokio::select! {
            biased;
            // Stopped, or a reply could not be sent: the connection is
            // broken.
            () = out.broken.cancelled() => break,
            r = rpc::read_record(&mut rd, limit) => r,
        };
        let record = match read {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::debug!(%peer, "NFS connection closed by the client");
                break;
            }
            // A reset is how many clients hang up (libnfs does).
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                tracing::debug!(%peer, "NFS connection reset by the client");
                break;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "NFS connection dropped");
                break;
            }
        };
        match rpc::parse_call(&record, shared.config.squash_root) {
            Parsed::Call(call) if runs_inline(&call) => {
                if let Some(reply) = run(&shared, call, record, peer) {
                    out.send(reply).await;
                }
            }
            Parsed::Call(call) if let Some(reply) = read_inline(&shared, &call, &record) => {
                out.send(reply).await;
            }
            Parsed::Call(call) => {
                let (shared, out) = (shared.clone(), out.clone());
                calls.spawn(async move {
                    let reply =
                        tokio::task::spawn_blocking(move || run(&shared, call, record, peer)).await;
                    // None: the same call is still running (a resend).
                    // A panic was caught in `run`.
                    if let Ok(Some(reply)) = reply {
                        out.send(reply).await;
                    }
                });
            }
            Parsed::Reply(reply) => out.send(reply).await,
            Parsed::Ignore => {}
            Parsed::Close(why) => {
                tracing::warn!(%peer, why, "NFS connection dropped: not an RPC call");
                break;
            }
        }
    }
    while calls.join_next().await.is_some() {}
    let _ = out.wr.lock().await.shutdown().await;
}

/// Whether `call` runs on the connection's task ([`connection`]): the
/// NFS procedures that read metadata only and answer in one small record
/// (NULL, GETATTR, LOOKUP, ACCESS, READLINK, FSSTAT, FSINFO, PATHCONF).
/// Not READ (it may wait for the object store), READDIR (its replies are
/// large) nor any change (they may sync).
fn runs_inline(call: &Call) -> bool {
    call.prog == NFS_PROGRAM && matches!(call.proc, 0 | 1 | 3 | 4 | 5 | 18 | 19 | 20)
}

/// The sending half of a connection, shared by its calls: each writes
/// its reply when done (RPC over TCP matches replies by xid, not order).
struct ReplyWriter {
    wr: tokio::sync::Mutex<BufWriter<OwnedWriteHalf>>,
    /// Replies waiting for `wr`: the last one out flushes.
    waiting: AtomicUsize,
    /// Cancelled when the server stops or a reply cannot be sent: the
    /// connection reads no more calls.
    broken: CancellationToken,
    /// A reply could not be sent: the replies after it are dropped.
    failed: AtomicBool,
    peer: SocketAddr,
}

impl ReplyWriter {
    /// Writes `reply` (a record without its mark), flushing unless
    /// another reply waits to be written after it. A failure (the peer is
    /// gone) cancels [`ReplyWriter::broken`] and drops the later replies.
    async fn send(&self, reply: Vec<u8>) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut wr = self.wr.lock().await;
        let last = self.waiting.fetch_sub(1, Ordering::SeqCst) == 1;
        if self.failed.load(Ordering::SeqCst) {
            return;
        }
        let sent = async {
            wr.write_all(&rpc::finish(reply)?).await?;
            if last {
                wr.flush().await?;
            }
            Ok::<_, io::Error>(())
        };
        if let Err(e) = sent.await {
            tracing::warn!(peer = %self.peer, error = %e, "NFS reply not sent; connection dropped");
            self.failed.store(true, Ordering::SeqCst);
            self.broken.cancel();
        }
    }
}

/// Runs one call and returns its reply record
/// (`SYSTEM_ERR` if it panicked). A non-idempotent NFS call goes through
/// the duplicate request cache ([`drc`]): a resent one is answered with
/// the kept reply, or not at all while the first still runs (`None`).
fn run(shared: &Shared, call: Call, record: Vec<u8>, peer: SocketAddr) -> Option<Vec<u8>> {
    let xid = call.xid;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cached = call.prog == NFS_PROGRAM && drc::non_idempotent(call.proc);
        let args = record.get(call.args_at..).unwrap_or_default();
        if cached {
            match shared.drc.begin(peer.ip(), call.xid, call.proc, args) {
                drc::Seen::New => {}
                drc::Seen::Running => return None,
                drc::Seen::Done(reply) => {
                    tracing::debug!(xid, %peer, "resent call answered from the duplicate request cache");
                    return Some(reply);
                }
            }
        }
        let reply = dispatch(shared, &call, &record);
        if cached {
            shared
                .drc
                .finish(peer.ip(), call.xid, call.proc, args, &reply);
        }
        Some(reply)
    }));
    match r {
        Ok(reply) => reply,
        Err(_) => {
            tracing::error!(xid, "NFS call panicked; answered SYSTEM_ERR");
            Some(rpc::accepted(xid, accept_stat_data::SYSTEM_ERR))
        }
    }
}

/// The reply record of `call`, whose arguments are in `record` from
/// `call.args_at`: unknown program `PROG_UNAVAIL`, another version
/// `PROG_MISMATCH` (3..=3), then the procedure's results or
/// `PROC_UNAVAIL` / `GARBAGE_ARGS`.
///
/// The arguments are decoded only from `record`, already read whole and
/// no larger than `max_io` + 64 KiB, without allocating by lengths read
/// from the wire (see `xdr.rs`). Residual risk: a client may still make
/// the server hold [`MAX_IN_FLIGHT`] such records per connection, over
/// as many connections as it opens.
fn dispatch(s: &Shared, call: &Call, record: &[u8]) -> Vec<u8> {
    let start = std::time::Instant::now();
    let reply = dispatch_call(s, call, record);
    observe(call, start, &reply);
    reply
}

/// The reply of a READ `call` when the slice cache holds every byte
/// asked for, made on the caller's thread without waiting for anything;
/// `None` for another call, or when the READ must go to the blocking
/// pool (bytes not cached, arguments that do not decode).
fn read_inline(s: &Shared, call: &Call, record: &[u8]) -> Option<Vec<u8>> {
    if call.prog != NFS_PROGRAM || call.vers != NFS_VERSION || call.proc != 6 {
        return None;
    }
    let start = std::time::Instant::now();
    let args = record.get(call.args_at..).unwrap_or_default();
    let mut out = rpc::accepted(call.xid, accept_stat_data::SUCCESS);
    nfs3::read_cached(s, &call.creds, args, &mut out)?.ok()?;
    observe(call, start, &out);
    Some(out)
}

/// Counts `call`, answered with `reply`, in the metrics.
fn observe(call: &Call, start: std::time::Instant, reply: &[u8]) {
    // An accepted reply is the record mark, xid, REPLY, MSG_ACCEPTED, an
    // empty verifier (flavor, length) and accept_stat: 28 bytes; an NFS
    // result starts with its status. A refusal counts as an error.
    const ACCEPTED_LEN: usize = 28;
    let zero = |at: usize| reply.get(at..at + 4) == Some(&[0, 0, 0, 0][..]);
    let ok = zero(ACCEPTED_LEN - 4)
        && (call.prog != NFS_PROGRAM || call.proc == 0 || zero(ACCEPTED_LEN));
    crate::metrics::observe("nfs", proc_name(call.prog, call.proc), start, ok);
}

fn dispatch_call(s: &Shared, call: &Call, record: &[u8]) -> Vec<u8> {
    let xid = call.xid;
    let args = record.get(call.args_at..).unwrap_or_default();
    tracing::debug!(
        xid,
        proc = proc_name(call.prog, call.proc),
        uid = call.creds.uid,
        "NFS call"
    );
    let version = match call.prog {
        NFS_PROGRAM => NFS_VERSION,
        MOUNT_PROGRAM => MOUNT_VERSION,
        _ => {
            tracing::debug!(xid, prog = call.prog, "unknown RPC program");
            return rpc::accepted(xid, accept_stat_data::PROG_UNAVAIL);
        }
    };
    if call.vers != version {
        tracing::debug!(
            xid,
            prog = call.prog,
            vers = call.vers,
            "unsupported version"
        );
        return rpc::accepted(
            xid,
            accept_stat_data::PROG_MISMATCH {
                low: version,
                high: version,
            },
        );
    }
    let mut out = rpc::accepted(xid, accept_stat_data::SUCCESS);
    let results_at = out.len();
    let ran = if call.prog == NFS_PROGRAM {
        nfs3::call(s, call.proc, &call.creds, args, &mut out)
    } else {
        mount::call(&s.vfs, &call.creds, call.proc, args, &mut out)
    };
    let refusal = match ran {
        Ok(()) => {
            if call.prog == NFS_PROGRAM
                && let Some(st) = out.get(results_at..results_at + 4)
                && let Ok(st) = <[u8; 4]>::try_from(st)
                && st != [0; 4]
            {
                tracing::debug!(xid, status = u32::from_be_bytes(st), "NFS error status");
            }
            return out;
        }
        Err(r) => r,
    };
    tracing::debug!(xid, ?refusal, "NFS call refused");
    let stat = match refusal {
        Refusal::ProcUnavail => accept_stat_data::PROC_UNAVAIL,
        Refusal::GarbageArgs => accept_stat_data::GARBAGE_ARGS,
        Refusal::SystemErr => accept_stat_data::SYSTEM_ERR,
    };
    rpc::accepted(xid, stat)
}

/// The name of a procedure, for logs.
fn proc_name(prog: u32, proc: u32) -> &'static str {
    const NFS: [&str; 22] = [
        "NULL",
        "GETATTR",
        "SETATTR",
        "LOOKUP",
        "ACCESS",
        "READLINK",
        "READ",
        "WRITE",
        "CREATE",
        "MKDIR",
        "SYMLINK",
        "MKNOD",
        "REMOVE",
        "RMDIR",
        "RENAME",
        "LINK",
        "READDIR",
        "READDIRPLUS",
        "FSSTAT",
        "FSINFO",
        "PATHCONF",
        "COMMIT",
    ];
    const MOUNT: [&str; 6] = ["MNT NULL", "MNT", "DUMP", "UMNT", "UMNTALL", "EXPORT"];
    let table: &[&str] = match prog {
        NFS_PROGRAM => &NFS,
        MOUNT_PROGRAM => &MOUNT,
        _ => &[],
    };
    usize::try_from(proc)
        .ok()
        .and_then(|p| table.get(p))
        .copied()
        .unwrap_or("unknown")
}

//! ONC RPC (RFC 5531) over TCP: record marking, call headers,
//! credentials, and reply headers.
//!
//! A record is a sequence of fragments, each behind a 4-byte big-endian
//! mark (high bit: last fragment; low 31 bits: length). Records are read
//! whole into memory, up to a limit (the largest WRITE plus headers);
//! anything longer, a short or garbled call header, or a connection that
//! ends inside a record closes the connection. Replies are one fragment.

use std::io;

use nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_stat, msg_body, opaque_auth, rejected_reply, reply_body,
    rpc_msg,
};
use nfs3_types::xdr_codec::Pack;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::xdr::{Garbage, Xdr};
use crate::vfs::Creds;

/// The RPC protocol version this server speaks.
const RPC_VERSION: u32 = 2;
/// `AUTH_NULL` (`AUTH_NONE`).
pub(super) const AUTH_NULL: u32 = 0;
/// `AUTH_UNIX` (`AUTH_SYS`).
pub(super) const AUTH_UNIX: u32 = 1;
/// The largest credential or verifier body (RFC 5531 `opaque_auth`).
const MAX_AUTH_BYTES: usize = 400;
/// The longest machine name in an `AUTH_UNIX` credential.
const MAX_MACHINE_NAME: usize = 255;
/// The most supplementary groups in an `AUTH_UNIX` credential.
const MAX_GIDS: usize = 16;
/// The user and group of `AUTH_NULL` calls and of squashed root.
pub(super) const NOBODY: u32 = 65534;
/// Last-fragment bit of a record mark.
const LAST_FRAGMENT: u32 = 0x8000_0000;
/// Length bits of a record mark.
const FRAGMENT_LEN: u32 = 0x7fff_ffff;

/// A call whose header decoded and whose caller is authenticated.
pub(super) struct Call {
    /// Transaction id, echoed in the reply.
    pub xid: u32,
    /// Program number.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure number.
    pub proc: u32,
    /// The caller, after squashing.
    pub creds: Creds,
    /// Where the procedure's arguments start in the record.
    pub args_at: usize,
}

/// What to do with a record.
pub(super) enum Parsed {
    /// Run it.
    Call(Call),
    /// Answer at once with this reply record (RPC version mismatch,
    /// authentication error).
    Reply(Vec<u8>),
    /// Not a call (a REPLY message): nothing to answer.
    Ignore,
    /// The header is garbage: close the connection.
    Close(&'static str),
}

/// Parses the call header of `record`: version, program, procedure and
/// credentials (`AUTH_UNIX` to its uid, gid and groups, `AUTH_NULL` to
/// nobody; with `squash_root`, uid 0 and gid 0, primary or supplementary,
/// become nobody). The verifier is read and ignored.
pub(super) fn parse_call(record: &[u8], squash_root: bool) -> Parsed {
    let mut x = Xdr::new(record);
    let Ok(xid) = x.u32() else {
        return Parsed::Close("record shorter than an RPC header");
    };
    match x.u32() {
        Ok(0) => {}
        Ok(1) => return Parsed::Ignore,
        _ => return Parsed::Close("neither CALL nor REPLY"),
    }
    match x.u32() {
        Ok(RPC_VERSION) => {}
        Ok(_) => {
            return Parsed::Reply(denied(
                xid,
                rejected_reply::RPC_MISMATCH {
                    low: RPC_VERSION,
                    high: RPC_VERSION,
                },
            ));
        }
        Err(Garbage) => return Parsed::Close("short RPC call header"),
    }
    let header = (|| {
        let prog = x.u32()?;
        let vers = x.u32()?;
        let proc = x.u32()?;
        let flavor = x.u32()?;
        let cred = x.opaque(MAX_AUTH_BYTES)?;
        let _verf_flavor = x.u32()?;
        let _verf = x.opaque(MAX_AUTH_BYTES)?;
        Ok::<_, Garbage>((prog, vers, proc, flavor, cred))
    })();
    let Ok((prog, vers, proc, flavor, cred)) = header else {
        return Parsed::Close("short or garbled RPC call header");
    };
    let creds = match credentials(flavor, cred, squash_root) {
        Ok(c) => c,
        Err(stat) => {
            tracing::debug!(xid, flavor, %stat, "credentials refused");
            return Parsed::Reply(denied(xid, rejected_reply::AUTH_ERROR(stat)));
        }
    };
    Parsed::Call(Call {
        xid,
        prog,
        vers,
        proc,
        creds,
        args_at: record.len() - x.rest().len(),
    })
}

/// The caller of a credential of `flavor` with `body`.
///
/// # Errors
/// `AUTH_BADCRED`: a flavor other than `AUTH_UNIX` and `AUTH_NULL`, or an
/// `AUTH_UNIX` body that does not decode (more than 16 groups, a machine
/// name over 255 bytes, short).
fn credentials(flavor: u32, body: &[u8], squash_root: bool) -> Result<Creds, auth_stat> {
    let mut c = match flavor {
        AUTH_NULL => Creds::user(NOBODY, NOBODY),
        AUTH_UNIX => auth_unix(body).map_err(|Garbage| auth_stat::AUTH_BADCRED)?,
        _ => return Err(auth_stat::AUTH_BADCRED),
    };
    if squash_root {
        let squash = |id: u32| if id == 0 { NOBODY } else { id };
        c.uid = squash(c.uid);
        c.gid = squash(c.gid);
        for g in &mut c.groups {
            *g = squash(*g);
        }
    }
    Ok(c)
}

/// An `authsys_parms` body: stamp, machine name, uid, gid, groups.
fn auth_unix(body: &[u8]) -> Result<Creds, Garbage> {
    let mut x = Xdr::new(body);
    let _stamp = x.u32()?;
    let _machine = x.opaque(MAX_MACHINE_NAME)?;
    let uid = x.u32()?;
    let gid = x.u32()?;
    let n = usize::try_from(x.u32()?).map_err(|_| Garbage)?;
    if n > MAX_GIDS {
        return Err(Garbage);
    }
    let mut groups = Vec::with_capacity(n);
    for _ in 0..n {
        groups.push(x.u32()?);
    }
    Ok(Creds { uid, gid, groups })
}

/// A reply record (its record mark still to be filled by [`finish`]) of
/// an accepted call: `SUCCESS` (the results follow, appended by the
/// caller) or an error without results.
pub(super) fn accepted(xid: u32, data: accept_stat_data) -> Vec<u8> {
    let msg = rpc_msg {
        xid,
        body: msg_body::REPLY(reply_body::MSG_ACCEPTED(accepted_reply {
            verf: opaque_auth::default(),
            reply_data: data,
        })),
    };
    header(&msg)
}

/// A reply record of a denied call (RPC version, authentication).
fn denied(xid: u32, r: rejected_reply) -> Vec<u8> {
    let msg = rpc_msg {
        xid,
        body: msg_body::REPLY(reply_body::MSG_DENIED(r)),
    };
    header(&msg)
}

/// Four bytes for the record mark, then `msg`.
fn header(msg: &rpc_msg<'_, '_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + msg.packed_size() + 128);
    out.extend_from_slice(&[0; 4]);
    // Packing into a Vec fails only for an opaque over 4 GiB, and this
    // message has none.
    if msg.pack(&mut out).is_err() {
        out.truncate(4);
    }
    out
}

/// Fills the record mark of a reply built by [`accepted`]: one last
/// fragment.
///
/// # Errors
/// `InvalidData` for a reply over 2 GiB - 1 (never built: read and
/// directory replies are capped by `max_io`).
pub(super) fn finish(mut reply: Vec<u8>) -> io::Result<Vec<u8>> {
    let len = reply
        .len()
        .checked_sub(4)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n <= FRAGMENT_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "reply too large"))?;
    if let Some(mark) = reply.get_mut(..4) {
        mark.copy_from_slice(&(len | LAST_FRAGMENT).to_be_bytes());
    }
    Ok(reply)
}

/// Reads one record (all its fragments) of at most `limit` bytes.
/// `Ok(None)`: the peer closed the connection between records.
///
/// # Errors
/// `InvalidData` for a record over `limit` or an empty one;
/// `UnexpectedEof` for a connection closed inside a record; the socket's
/// errors.
pub(super) async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    let mut first = true;
    loop {
        let mut mark = [0u8; 4];
        match r.read_exact(&mut mark).await {
            Err(e) if first && e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            r => r?,
        };
        first = false;
        let mark = u32::from_be_bytes(mark);
        let len = usize::try_from(mark & FRAGMENT_LEN)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "fragment too large"))?;
        let end = record
            .len()
            .checked_add(len)
            .filter(|&e| e <= limit)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("RPC record larger than {limit} bytes"),
                )
            })?;
        // Reserved at the length claimed (at most `limit`; pages not
        // written yet cost no memory), filled as the bytes arrive.
        record.reserve_exact(len);
        let want = u64::try_from(len).unwrap_or(u64::MAX);
        (&mut *r).take(want).read_to_end(&mut record).await?;
        if record.len() != end {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if mark & LAST_FRAGMENT != 0 {
            if record.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "empty RPC record",
                ));
            }
            return Ok(Some(record));
        }
    }
}

/// Why a procedure produced no results: the reply is an error of the
/// RPC layer instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `PROC_UNAVAIL`: no such procedure.
    ProcUnavail,
    /// `GARBAGE_ARGS`: the arguments do not decode.
    GarbageArgs,
    /// `SYSTEM_ERR`: the results could not be encoded.
    SystemErr,
}

impl From<Garbage> for Refusal {
    fn from(_: Garbage) -> Refusal {
        Refusal::GarbageArgs
    }
}

/// Appends `v`, packed, to the reply `out`.
///
/// # Errors
/// [`Refusal::SystemErr`] if it does not pack (an opaque over 4 GiB).
pub(super) fn put(out: &mut Vec<u8>, v: &impl Pack) -> Result<(), Refusal> {
    out.reserve(v.packed_size());
    v.pack(out).map(|_| ()).map_err(|_| Refusal::SystemErr)
}

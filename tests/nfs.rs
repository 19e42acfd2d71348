//! The NFSv3 front end against real clients: the in-process `nfs3_client`
//! for protocol-level checks (every procedure, errors, handles across a
//! restart, the write verifier), libnfs-utils (`nfs-cp`, `nfs-ls`) as an
//! outside client, and a raw socket for malformed requests. Everything
//! talks to 127.0.0.1 only, and every loop is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;
use slicefs::blockstore::StoreConfig;
use slicefs::nfs::{Server, ServerConfig};
use slicefs::vfs::{FsOptions, MetaKind, PersisterKind, Vfs};
use slicefs_wal::Persister;

/// A VFS served over NFS on 127.0.0.1, with its runtime.
struct Served {
    rt: tokio::runtime::Runtime,
    vfs: Arc<Vfs>,
    persister: Arc<dyn Persister>,
    addr: SocketAddr,
    verifier: [u8; 8],
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Serves a file system in `dir` (`None`: nothing on disk: null log,
/// memory metadata and store).
fn serve(dir: Option<&Path>) -> Served {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut o = FsOptions::new(dir.unwrap_or(scratch.path()));
    if dir.is_none() {
        o.persister = PersisterKind::Null;
        o.meta = MetaKind::Memory;
        o.store = Some(StoreConfig::new("memory:///"));
    }
    o.transfer.upload_delay = Duration::from_millis(200);
    let opened = rt.block_on(slicefs::vfs::open_fs(&o, rt.handle())).unwrap();
    let server = rt
        .block_on(Server::bind(
            opened.vfs.clone(),
            "127.0.0.1:0".parse().unwrap(),
            ServerConfig::default(),
        ))
        .unwrap();
    let addr = server.local_addr();
    let verifier = server.verifier();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Served {
        rt,
        vfs: opened.vfs,
        persister: opened.persister,
        addr,
        verifier,
        stop: Some(stop),
        task: Some(task),
    }
}

impl Served {
    /// Stops the server, then the file system as a crash would (no
    /// drain).
    fn crash(mut self) {
        self.stop_server();
        self.rt.block_on(self.vfs.transfer().shutdown());
        self.persister.close().unwrap();
    }

    /// Stops the server, uploads everything, closes the log.
    fn close(mut self) {
        self.stop_server();
        self.rt
            .block_on(self.vfs.transfer().close(Duration::from_secs(60)))
            .unwrap();
        self.persister.close().unwrap();
    }

    fn stop_server(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            self.rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await })
                .expect("the server stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }

    /// A client connection as `uid`/`gid` (AUTH_SYS).
    fn client(&self, uid: u32, gid: u32) -> Client {
        let cred = opaque_auth::auth_unix(&auth_unix {
            stamp: 1,
            machinename: Opaque::borrowed(b"test"),
            uid,
            gid,
            gids: vec![],
        });
        let port = self.addr.port();
        let conn = self
            .rt
            .block_on(
                Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/")
                    .mount_port(port)
                    .nfs3_port(port)
                    .connect_from_privileged_port(false)
                    .credential(cred)
                    .mount(),
            )
            .unwrap();
        Client { conn }
    }
}

type Conn = nfs3_client::Nfs3Connection<nfs3_client::tokio::TokioIo<tokio::net::TcpStream>>;

struct Client {
    conn: Conn,
}

fn dirop<'a>(dir: &nfs_fh3, name: &'a str) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: filename3(Opaque::borrowed(name.as_bytes())),
    }
}

fn mode(m: u32) -> sattr3 {
    sattr3 {
        mode: Nfs3Option::Some(m),
        ..sattr3::default()
    }
}

/// `res` as Ok, or a panic naming the status.
macro_rules! ok {
    ($e:expr) => {
        match $e {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((status, _)) => panic!("{}: {status:?}", stringify!($e)),
        }
    };
}

/// The status of a failed call (a panic if it succeeded).
macro_rules! err {
    ($e:expr) => {
        match $e {
            Nfs3Result::Ok(_) => panic!("{} succeeded", stringify!($e)),
            Nfs3Result::Err((status, _)) => status,
        }
    };
}

fn handle(fh: &post_op_fh3) -> nfs_fh3 {
    match fh {
        Nfs3Option::Some(h) => h.clone(),
        Nfs3Option::None => panic!("no handle in the reply"),
    }
}

fn names(list: &[entryplus3<'_>]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|e| String::from_utf8_lossy(e.name.0.as_ref()).into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn every_procedure_does_what_rfc_1813_says() {
    let s = serve(None);
    let mut c = s.client(0, 0);
    let rt = &s.rt;
    let root = c.conn.root_nfs_fh3();
    rt.block_on(c.conn.null()).unwrap();
    let a = ok!(rt
        .block_on(c.conn.getattr(&GETATTR3args {
            object: root.clone()
        }))
        .unwrap());
    assert_eq!(a.obj_attributes.type_, ftype3::NF3DIR);

    let d = ok!(rt
        .block_on(c.conn.mkdir(&MKDIR3args {
            where_: dirop(&root, "dir"),
            attributes: mode(0o750),
        }))
        .unwrap());
    let dir = handle(&d.obj);
    let f = ok!(rt
        .block_on(c.conn.create(&CREATE3args {
            where_: dirop(&dir, "f"),
            how: createhow3::UNCHECKED(mode(0o640)),
        }))
        .unwrap());
    let file = handle(&f.obj);
    let data = vec![b'n'; 300_000];
    let w = ok!(rt
        .block_on(c.conn.write(&WRITE3args {
            file: file.clone(),
            offset: 0,
            count: data.len() as u32,
            stable: stable_how::UNSTABLE,
            data: Opaque::borrowed(&data),
        }))
        .unwrap());
    assert_eq!(w.count, data.len() as u32);
    assert_eq!(w.verf.0, s.verifier);
    let cm = ok!(rt
        .block_on(c.conn.commit(&COMMIT3args {
            file: file.clone(),
            offset: 0,
            count: 0,
        }))
        .unwrap());
    assert_eq!(cm.verf.0, s.verifier, "COMMIT and WRITE verifiers match");
    let r = ok!(rt
        .block_on(c.conn.read(&READ3args {
            file: file.clone(),
            offset: 299_990,
            count: 100,
        }))
        .unwrap());
    assert_eq!((r.count, r.eof), (10, true));
    assert_eq!(r.data.as_ref(), &data[299_990..]);
    let a = ok!(rt
        .block_on(c.conn.getattr(&GETATTR3args {
            object: file.clone()
        }))
        .unwrap());
    assert_eq!(
        (a.obj_attributes.size, a.obj_attributes.mode & 0o7777),
        (300_000, 0o640)
    );

    // SETATTR: mode and size; a guard that does not match is NOT_SYNC.
    ok!(rt
        .block_on(c.conn.setattr(&SETATTR3args {
            object: file.clone(),
            new_attributes: sattr3 {
                mode: Nfs3Option::Some(0o600),
                size: Nfs3Option::Some(5),
                ..sattr3::default()
            },
            guard: Nfs3Option::None,
        }))
        .unwrap());
    let status = err!(
        rt.block_on(c.conn.setattr(&SETATTR3args {
            object: file.clone(),
            new_attributes: mode(0o644),
            guard: Nfs3Option::Some(nfstime3 {
                seconds: 1,
                nseconds: 0
            }),
        }))
        .unwrap()
    );
    assert_eq!(status, nfsstat3::NFS3ERR_NOT_SYNC);
    let a = ok!(rt
        .block_on(c.conn.getattr(&GETATTR3args {
            object: file.clone()
        }))
        .unwrap());
    assert_eq!(
        (a.obj_attributes.size, a.obj_attributes.mode & 0o7777),
        (5, 0o600)
    );

    // LOOKUP, ACCESS, SYMLINK + READLINK, LINK, MKNOD, RENAME.
    let l = ok!(rt
        .block_on(c.conn.lookup(&LOOKUP3args {
            what: dirop(&dir, "f")
        }))
        .unwrap());
    assert_eq!(l.object, file);
    let acc = ok!(rt
        .block_on(c.conn.access(&ACCESS3args {
            object: file.clone(),
            access: ACCESS3_READ | ACCESS3_MODIFY,
        }))
        .unwrap());
    assert_eq!(acc.access, ACCESS3_READ | ACCESS3_MODIFY);
    let sl = ok!(rt
        .block_on(c.conn.symlink(&SYMLINK3args {
            where_: dirop(&dir, "ln"),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::borrowed(b"f")),
            },
        }))
        .unwrap());
    let rl = ok!(rt
        .block_on(c.conn.readlink(&READLINK3args {
            symlink: handle(&sl.obj)
        }))
        .unwrap());
    assert_eq!(rl.data.0.as_ref(), b"f");
    ok!(rt
        .block_on(c.conn.link(&LINK3args {
            file: file.clone(),
            link: dirop(&dir, "hard"),
        }))
        .unwrap());
    ok!(rt
        .block_on(c.conn.mknod(&MKNOD3args {
            where_: dirop(&dir, "fifo"),
            what: mknoddata3::NF3FIFO(mode(0o600)),
        }))
        .unwrap());
    ok!(rt
        .block_on(c.conn.rename(&RENAME3args {
            from: dirop(&dir, "hard"),
            to: dirop(&dir, "hard2"),
        }))
        .unwrap());
    let a = ok!(rt
        .block_on(c.conn.getattr(&GETATTR3args {
            object: file.clone()
        }))
        .unwrap());
    assert_eq!(a.obj_attributes.nlink, 2);

    // READDIRPLUS in small pages: every entry once, with handles.
    let mut all = Vec::new();
    let mut cookie = 0;
    let mut verf = cookieverf3::default();
    for _ in 0..100 {
        let page = ok!(rt
            .block_on(c.conn.readdirplus(&READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                dircount: 200,
                maxcount: 1000,
            }))
            .unwrap());
        verf = page.cookieverf;
        for e in &page.reply.entries.0 {
            assert!(matches!(e.name_handle, Nfs3Option::Some(_)));
            cookie = e.cookie;
        }
        all.extend(page.reply.entries.0);
        if page.reply.eof {
            break;
        }
    }
    assert_eq!(names(&all), [".", "..", "f", "fifo", "hard2", "ln"]);
    let rd = ok!(rt
        .block_on(c.conn.readdir(&READDIR3args {
            dir: dir.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 4096,
        }))
        .unwrap());
    assert!(rd.reply.eof);
    assert_eq!(rd.reply.entries.0.len(), 6);

    // FSSTAT, FSINFO, PATHCONF.
    let st = ok!(rt
        .block_on(c.conn.fsstat(&FSSTAT3args {
            fsroot: root.clone()
        }))
        .unwrap());
    assert!(st.tbytes >= st.fbytes && st.tfiles >= 5, "{st:?}");
    let info = ok!(rt
        .block_on(c.conn.fsinfo(&FSINFO3args {
            fsroot: root.clone()
        }))
        .unwrap());
    assert!(info.wtmax >= 1 << 20 && info.rtmax >= 1 << 20, "{info:?}");
    let pc = ok!(rt
        .block_on(c.conn.pathconf(&PATHCONF3args {
            object: root.clone()
        }))
        .unwrap());
    assert_eq!(pc.name_max, 255);

    // REMOVE, RMDIR; errors as RFC 1813 names them.
    assert_eq!(
        err!(
            rt.block_on(c.conn.rmdir(&RMDIR3args {
                object: dirop(&root, "dir")
            }))
            .unwrap()
        ),
        nfsstat3::NFS3ERR_NOTEMPTY
    );
    for n in ["f", "fifo", "hard2", "ln"] {
        ok!(rt
            .block_on(c.conn.remove(&REMOVE3args {
                object: dirop(&dir, n)
            }))
            .unwrap());
    }
    assert_eq!(
        err!(
            rt.block_on(c.conn.lookup(&LOOKUP3args {
                what: dirop(&dir, "f")
            }))
            .unwrap()
        ),
        nfsstat3::NFS3ERR_NOENT
    );
    s.vfs.syncfs().unwrap();
    assert_eq!(
        err!(
            rt.block_on(c.conn.getattr(&GETATTR3args {
                object: file.clone()
            }))
            .unwrap()
        ),
        nfsstat3::NFS3ERR_STALE,
        "a freed inode's handle is stale"
    );
    ok!(rt
        .block_on(c.conn.rmdir(&RMDIR3args {
            object: dirop(&root, "dir")
        }))
        .unwrap());
    let bad = nfs_fh3 {
        data: Opaque::owned(vec![1, 2, 3]),
    };
    assert_eq!(
        err!(
            rt.block_on(c.conn.getattr(&GETATTR3args { object: bad }))
                .unwrap()
        ),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    s.close();
}

/// AUTH_SYS identities are checked on every call with the VFS's rules.
#[test]
fn the_callers_uid_is_checked_on_every_call() {
    let s = serve(None);
    let rt = &s.rt;
    let mut root = s.client(0, 0);
    let top = root.conn.root_nfs_fh3();
    let f = ok!(rt
        .block_on(root.conn.create(&CREATE3args {
            where_: dirop(&top, "private"),
            how: createhow3::GUARDED(mode(0o600)),
        }))
        .unwrap());
    let file = handle(&f.obj);
    assert_eq!(
        err!(
            rt.block_on(root.conn.create(&CREATE3args {
                where_: dirop(&top, "private"),
                how: createhow3::GUARDED(mode(0o600)),
            }))
            .unwrap()
        ),
        nfsstat3::NFS3ERR_EXIST
    );
    let mut user = s.client(1000, 1000);
    assert_eq!(
        err!(
            rt.block_on(user.conn.read(&READ3args {
                file: file.clone(),
                offset: 0,
                count: 10,
            }))
            .unwrap()
        ),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        err!(
            rt.block_on(user.conn.create(&CREATE3args {
                where_: dirop(&top, "mine"),
                how: createhow3::UNCHECKED(mode(0o644)),
            }))
            .unwrap()
        ),
        nfsstat3::NFS3ERR_ACCES,
        "the root directory is root's, mode 755"
    );
    let acc = ok!(rt
        .block_on(user.conn.access(&ACCESS3args {
            object: file,
            access: ACCESS3_READ | ACCESS3_MODIFY,
        }))
        .unwrap());
    assert_eq!(acc.access, 0);
    s.close();
}

/// Handles outlive the server: after a crash and a restart, committed
/// data is there under the same handle, and the write verifier changed
/// (so a client resends what it wrote UNSTABLE and did not commit).
#[test]
fn handles_survive_a_restart_and_the_verifier_changes() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(Some(dir.path()));
    let (file, verf) = {
        let mut c = s.client(0, 0);
        let root = c.conn.root_nfs_fh3();
        let f = ok!(s
            .rt
            .block_on(c.conn.create(&CREATE3args {
                where_: dirop(&root, "f"),
                how: createhow3::UNCHECKED(mode(0o644)),
            }))
            .unwrap());
        let file = handle(&f.obj);
        let w = ok!(s
            .rt
            .block_on(c.conn.write(&WRITE3args {
                file: file.clone(),
                offset: 0,
                count: 9,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(b"committed"),
            }))
            .unwrap());
        ok!(s
            .rt
            .block_on(c.conn.commit(&COMMIT3args {
                file: file.clone(),
                offset: 0,
                count: 0,
            }))
            .unwrap());
        let w2 = ok!(s
            .rt
            .block_on(c.conn.write(&WRITE3args {
                file: file.clone(),
                offset: 9,
                count: 4,
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(b"+fs!"),
            }))
            .unwrap());
        assert_eq!(w2.committed, stable_how::FILE_SYNC);
        (file, w.verf)
    };
    s.crash();
    let s = serve(Some(dir.path()));
    let mut c = s.client(0, 0);
    let r = ok!(s
        .rt
        .block_on(c.conn.read(&READ3args {
            file: file.clone(),
            offset: 0,
            count: 100,
        }))
        .unwrap());
    assert_eq!(r.data.as_ref(), b"committed+fs!");
    let cm = ok!(s
        .rt
        .block_on(c.conn.commit(&COMMIT3args {
            file,
            offset: 0,
            count: 0,
        }))
        .unwrap());
    assert_ne!(cm.verf, verf, "a new server instance has a new verifier");
    s.close();
}

/// Several clients at once, each on its own connection, create and write
/// files in one directory: none is lost, none doubled, every byte right.
#[test]
fn concurrent_clients_lose_nothing() {
    let s = serve(None);
    let mut c = s.client(0, 0);
    let root = c.conn.root_nfs_fh3();
    let d = ok!(s
        .rt
        .block_on(c.conn.mkdir(&MKDIR3args {
            where_: dirop(&root, "shared"),
            attributes: mode(0o777),
        }))
        .unwrap());
    let dir = handle(&d.obj);
    let clients = 4;
    let per = 50;
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let mut c = s.client(1000 + k, 1000);
            let dir = dir.clone();
            let handle_rt = s.rt.handle().clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    let name = format!("c{k}-{i}");
                    let body = format!("client {k} file {i}").into_bytes();
                    let f = ok!(handle_rt
                        .block_on(c.conn.create(&CREATE3args {
                            where_: dirop(&dir, &name),
                            how: createhow3::GUARDED(mode(0o644)),
                        }))
                        .unwrap());
                    ok!(handle_rt
                        .block_on(c.conn.write(&WRITE3args {
                            file: handle(&f.obj),
                            offset: 0,
                            count: body.len() as u32,
                            stable: stable_how::UNSTABLE,
                            data: Opaque::borrowed(&body),
                        }))
                        .unwrap());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut seen = Vec::new();
    let mut cookie = 0;
    for _ in 0..100 {
        let page = ok!(s
            .rt
            .block_on(c.conn.readdirplus(&READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: cookieverf3::default(),
                dircount: 1000,
                maxcount: 8000,
            }))
            .unwrap());
        for e in page.reply.entries.0 {
            cookie = e.cookie;
            let name = String::from_utf8_lossy(e.name.0.as_ref()).into_owned();
            if let Some(rest) = name.strip_prefix('c') {
                let Nfs3Option::Some(fh) = e.name_handle else {
                    panic!("no handle for {name}")
                };
                let r = ok!(s
                    .rt
                    .block_on(c.conn.read(&READ3args {
                        file: fh,
                        offset: 0,
                        count: 100,
                    }))
                    .unwrap());
                let (k, i) = rest.split_once('-').unwrap();
                assert_eq!(r.data.as_ref(), format!("client {k} file {i}").as_bytes());
                seen.push(name);
            }
        }
        if page.reply.eof {
            break;
        }
    }
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(
        (n, seen.len()),
        ((clients * per) as usize, (clients * per) as usize)
    );
    // The handles the VFS kept for those calls go about a second after
    // the last one (`KEEP_IDLE`), with no call to make them.
    assert!(s.vfs.kept_handles() > 0, "handles kept between calls");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.vfs.kept_handles() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.vfs.kept_handles(), 0, "idle handles released");
    s.close();
}

/// A REMOVE resent with the same xid (a client that lost the reply) gets
/// the first answer again from the duplicate request cache, not
/// `NFS3ERR_NOENT`.
#[test]
fn a_resent_remove_gets_the_first_answer() {
    use nfs3_client::nfs3_types::rpc::{call_body, msg_body, rpc_msg};
    use nfs3_client::nfs3_types::xdr_codec::Pack;
    let s = serve(None);
    let mut c = s.client(0, 0);
    let root = c.conn.root_nfs_fh3();
    ok!(s
        .rt
        .block_on(c.conn.create(&CREATE3args {
            where_: dirop(&root, "victim"),
            how: createhow3::UNCHECKED(mode(0o644)),
        }))
        .unwrap());
    let msg = rpc_msg {
        xid: 0x5eed,
        body: msg_body::CALL(call_body {
            rpcvers: 2,
            prog: 100_003,
            vers: 3,
            proc: 12,
            cred: opaque_auth::auth_unix(&auth_unix {
                stamp: 1,
                machinename: Opaque::borrowed(b"test"),
                uid: 0,
                gid: 0,
                gids: vec![],
            }),
            verf: opaque_auth::default(),
        }),
    };
    let mut body = Vec::new();
    msg.pack(&mut body).unwrap();
    REMOVE3args {
        object: dirop(&root, "victim"),
    }
    .pack(&mut body)
    .unwrap();
    let mut record = ((body.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    record.extend_from_slice(&body);
    let mut t = TcpStream::connect(s.addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut call = || {
        t.write_all(&record).unwrap();
        let mut mark = [0u8; 4];
        t.read_exact(&mut mark).unwrap();
        let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
        let mut reply = vec![0u8; len];
        t.read_exact(&mut reply).unwrap();
        reply
    };
    let first = call();
    let again = call();
    let status = |r: &[u8]| u32::from_be_bytes(r[24..28].try_into().unwrap());
    assert_eq!(status(&first), 0, "the first REMOVE succeeds");
    assert_eq!(first, again, "the resent REMOVE gets the same reply");
    s.close();
}

/// Malformed input gets an RPC error or a closed connection, never a
/// panic or a hang, and the server goes on serving others.
#[test]
fn malformed_requests_do_not_hurt_the_server() {
    let s = serve(None);
    let talk = |bytes: &[u8]| -> Vec<u8> {
        let mut t = TcpStream::connect(s.addr).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        t.write_all(bytes).unwrap();
        let _ = t.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = t.read_to_end(&mut out);
        out
    };
    // Garbage after a valid record mark: no RPC header to answer.
    let mut g = 12u32.to_be_bytes().to_vec();
    g[0] |= 0x80;
    g.extend_from_slice(&[0xff; 12]);
    talk(&g);
    // A record mark claiming 2 GiB: the connection is closed at once.
    assert!(talk(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).len() < 100);
    // A NULL call of an unknown program: PROG_UNAVAIL (accept_stat 1).
    let mut call = Vec::new();
    for w in [7u32, 0, 2, 424242, 3, 0, 0, 0, 0, 0] {
        call.extend_from_slice(&w.to_be_bytes());
    }
    let mut rec = ((call.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    rec.extend_from_slice(&call);
    let reply = talk(&rec);
    assert!(reply.len() >= 28, "{reply:?}");
    let word = |i: usize| u32::from_be_bytes(reply[4 + 4 * i..8 + 4 * i].try_into().unwrap());
    assert_eq!(
        (word(0), word(1), word(2)),
        (7, 1, 0),
        "xid, REPLY, MSG_ACCEPTED"
    );
    assert_eq!(word(5), 1, "PROG_UNAVAIL");
    // The server still answers a real client.
    let mut c = s.client(0, 0);
    s.rt.block_on(c.conn.null()).unwrap();
    s.close();
}

fn nfs_url(addr: SocketAddr, path: &str) -> String {
    format!(
        "nfs://127.0.0.1{path}?nfsport={p}&mountport={p}&version=3",
        p = addr.port()
    )
}

/// libnfs-utils as an outside client: a file copied in and out is the
/// same, and `nfs-ls` lists it.
#[test]
fn libnfs_copies_files_in_and_out() {
    if Command::new("nfs-cp").arg("--help").output().is_err() {
        panic!("nfs-cp is missing: scripts/test.sh installs libnfs-utils");
    }
    let s = serve(None);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("in.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // libnfs mounts the URL's directory (MNT of a path below the export,
    // as knfsd allows) and opens the last component in it.
    let root = slicefs::vfs::Creds::root();
    let d = s
        .vfs
        .mkdir(&root, slicefs::meta::Ino::ROOT, b"dir", 0o755)
        .unwrap();
    s.vfs.mkdir(&root, d.ino, b"sub", 0o755).unwrap();
    run(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &nfs_url(s.addr, "/dir/copy.bin"),
    ]);
    run(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &nfs_url(s.addr, "/dir/sub/second.bin"),
    ]);
    let back = tmp.path().join("out.bin");
    run(&[
        "nfs-cp",
        &nfs_url(s.addr, "/dir/copy.bin"),
        back.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&back).unwrap() == data, "round trip differs");
    let cat = Command::new("nfs-cat")
        .arg(nfs_url(s.addr, "/dir/sub/second.bin"))
        .output()
        .unwrap();
    assert!(
        cat.status.success() && cat.stdout == data,
        "nfs-cat differs"
    );
    let ls = run(&["nfs-ls", &nfs_url(s.addr, "/dir")]);
    assert!(ls.contains("copy.bin") && ls.contains("sub"), "{ls}");
    s.close();
}

const BIN: &str = env!("CARGO_BIN_EXE_slicefs");

/// A `slicefs` process (serve, or mount with NFS too) whose stderr goes
/// to a file; killed (and its mount detached) if the test fails.
struct Process {
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
    mountpoint: Option<std::path::PathBuf>,
}

impl Process {
    fn start(args: &[&str], log: &Path, mountpoint: Option<&Path>) -> Process {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .args(["--log-level", "info"])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Process {
            child: Some(child),
            log: log.to_path_buf(),
            mountpoint: mountpoint.map(Path::to_path_buf),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The NFS address it printed ("... over NFSv3 on ADDR ..."), waiting
    /// up to 60 s (and for the FUSE mount, if any).
    fn nfs_addr(&mut self) -> SocketAddr {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log_text();
            let mounted = self.mountpoint.as_ref().is_none_or(|mp| {
                let mps = std::fs::read_to_string("/proc/self/mounts").unwrap();
                mps.lines().any(|l| l.split(' ').nth(1) == mp.to_str())
            });
            if let Some(rest) = log.split("over NFSv3 on ").nth(1)
                && mounted
            {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("slicefs exited ({st}):\n{log}");
            }
            assert!(std::time::Instant::now() < deadline, "not serving:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then a clean exit within 120 s.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "exit {st}:\n{}", self.log_text());
                return self.log_text();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if let Some(mp) = &self.mountpoint {
                let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
            }
            if std::thread::panicking() {
                eprintln!("---- slicefs log ----\n{}", self.log_text());
            }
        }
    }
}

/// `GET /metrics` from the metrics endpoint at `addr`: the body.
fn scrape(addr: SocketAddr) -> String {
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    t.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

fn nfs_cat(addr: SocketAddr, path: &str) -> Vec<u8> {
    let out = Command::new("nfs-cat")
        .arg(nfs_url(addr, path))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nfs-cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn nfs_cp_in(addr: SocketAddr, data: &[u8], path: &str) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), data).unwrap();
    let out = Command::new("nfs-cp")
        .arg(tmp.path())
        .arg(nfs_url(addr, path))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nfs-cp {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client of the server at `addr` (not `Served`'s), as root, with its
/// own runtime.
fn outside_client(addr: SocketAddr) -> (tokio::runtime::Runtime, Conn) {
    let cred = opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"test"),
        uid: 0,
        gid: 0,
        gids: vec![],
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn = rt
        .block_on(
            Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/")
                .mount_port(addr.port())
                .nfs3_port(addr.port())
                .connect_from_privileged_port(false)
                .credential(cred)
                .mount(),
        )
        .unwrap();
    (rt, conn)
}

/// Replaces the contents of `/dir/name` over NFS: truncate, then a
/// FILE_SYNC write.
fn nfs_overwrite(addr: SocketAddr, dir: &str, name: &str, data: &[u8]) {
    let (rt, mut c) = outside_client(addr);
    let top = c.root_nfs_fh3();
    let d = ok!(rt
        .block_on(c.lookup(&LOOKUP3args {
            what: dirop(&top, dir)
        }))
        .unwrap());
    let f = ok!(rt
        .block_on(c.lookup(&LOOKUP3args {
            what: dirop(&d.object, name)
        }))
        .unwrap());
    ok!(rt
        .block_on(c.setattr(&SETATTR3args {
            object: f.object.clone(),
            new_attributes: sattr3 {
                size: Nfs3Option::Some(0),
                ..sattr3::default()
            },
            guard: Nfs3Option::None,
        }))
        .unwrap());
    ok!(rt
        .block_on(c.write(&WRITE3args {
            file: f.object,
            offset: 0,
            count: data.len() as u32,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(data),
        }))
        .unwrap());
}

/// `slicefs serve`: files copied in survive a restart of the server on the
/// same data directory.
#[test]
fn slicefs_serve_keeps_files_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = tmp.path().join("data");
    let dd_s = dd.to_str().unwrap();
    let log = tmp.path().join("serve.log");
    let args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", dd_s];
    let mut p = Process::start(&args, &log, None);
    let addr = p.nfs_addr();
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    // libnfs needs a directory in the URL: make one over NFS first.
    let mut c = outside_client(addr);
    let top = c.1.root_nfs_fh3();
    ok!(c
        .0
        .block_on(c.1.mkdir(&MKDIR3args {
            where_: dirop(&top, "d"),
            attributes: mode(0o755),
        }))
        .unwrap());
    drop(c);
    nfs_cp_in(addr, &data, "/d/big.bin");
    assert!(nfs_cat(addr, "/d/big.bin") == data);
    let log_text = p.stop();
    assert!(log_text.contains("stopping the NFS server"), "{log_text}");
    let mut p = Process::start(&args, &log, None);
    let addr = p.nfs_addr();
    assert!(nfs_cat(addr, "/d/big.bin") == data, "lost across a restart");
    p.stop();
}

/// One process serves one VFS over FUSE and NFS: what one writes the
/// other reads, including an overwrite after the mount read the old bytes
/// (short TTLs, no page cache kept across opens).
#[test]
fn fuse_and_nfs_from_one_process_see_each_others_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = tmp.path().join("data");
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let log = tmp.path().join("mount.log");
    let args = [
        "mount",
        mp.to_str().unwrap(),
        "--data-dir",
        dd.to_str().unwrap(),
        "--nfs-listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ];
    let mut p = Process::start(&args, &log, Some(&mp));
    let addr = p.nfs_addr();
    let metrics_at: SocketAddr = p
        .log_text()
        .split("metrics at http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("metrics address in the log")
        .parse()
        .unwrap();
    std::fs::create_dir(mp.join("d")).unwrap();
    std::fs::write(mp.join("d/from-fuse"), b"written through FUSE").unwrap();
    assert_eq!(nfs_cat(addr, "/d/from-fuse"), b"written through FUSE");
    nfs_cp_in(addr, b"written over NFS", "/d/from-nfs");
    assert_eq!(
        std::fs::read(mp.join("d/from-nfs")).unwrap(),
        b"written over NFS"
    );
    // An overwrite over NFS of what the mount has read and cached
    // (nfs-cp refuses to replace a file: it creates with O_EXCL).
    nfs_overwrite(addr, "d", "from-fuse", b"second version, longer");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        std::fs::read(mp.join("d/from-fuse")).unwrap(),
        b"second version, longer"
    );
    // The metrics moved with the work of both front ends.
    let text = scrape(metrics_at);
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value(r#"slicefs_requests_total{frontend="fuse",op="write"}"#) >= 1.0);
    assert!(value(r#"slicefs_requests_total{frontend="nfs",op="WRITE"}"#) >= 1.0);
    assert!(value("slicefs_written_bytes_total") >= 40.0, "{text}");
    assert!(text.contains("slicefs_request_seconds_bucket"));
    p.stop();
    let mps = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mps.contains(mp.to_str().unwrap()), "still mounted");
}

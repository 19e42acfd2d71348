//! The PostgreSQL backend of [`MetaStore`](super::MetaStore): one
//! namespace shared by several hosts (each a mount with its own data
//! directory and log), over one PostgreSQL database.
//!
//! Transactions: writes run `SERIALIZABLE`, so the namespace rules of
//! `ops` (written for one writer) hold across hosts as if the
//! transactions ran one after another: two hosts creating one name, or
//! renaming two directories into each other, cannot both succeed. A
//! transaction that PostgreSQL aborts for a serialization failure
//! (SQLSTATE 40001) or a deadlock (40P01) runs again from the start, up
//! to [`MAX_ATTEMPTS`] times. Reads run without a transaction: each
//! statement reads its own snapshot (read committed), never aborted.
//!
//! Durability, as SQLite's `synchronous=NORMAL`/`FULL` in the single-host
//! backend: a write transaction commits asynchronously
//! (`synchronous_commit=off` for the connection): visible to every host
//! at once, on disk within the server's `wal_writer_delay` or with the
//! next durable commit; a [`TxMode::Durable`] one (`fsync`, `sync`, a
//! block commit the log is about to forget) sets `synchronous_commit`
//! on, so it and every commit before it are on disk when it returns.
//! Since the server writes commits to disk on its own, every write
//! transaction runs the log barrier first (as a durable one): nothing in
//! metadata is durable before the host's log is durable up to the
//! records appended before it (doc/DESIGN.md, "One durable order").
//! Sessions and holds ([`TxMode::Loose`]) skip it.
//!
//! A lost connection (a PostgreSQL restart, a network cut) is retried,
//! with a new connection, for up to [`RECONNECT_WAIT`]: requests wait
//! and then go on. A connection lost while `COMMIT` was under way leaves
//! it unknown whether the transaction committed; the retry then runs it
//! again, so a create may answer `EEXIST` for the file it made itself.
//!
//! What belongs to one host is keyed by its host id (see
//! [`MetaStore::open_postgres`](super::MetaStore::open_postgres)): the
//! counters of its log (`log_id`, `log_lsn`, `sync`), which host's log
//! the LSNs of an inode refer to (`lsn_host`, set when `size_lsn` or
//! `truncate_lsn` change), and which host holds an unlinked open inode
//! (`orphan_host`, set when its link count drops to 0). Recovery of one
//! host settles only its own inodes and frees only its own orphans.
//!
//! Inode numbers and directory cookies come from sequences (`nextval`
//! is never rolled back and never conflicts): unique across hosts, with
//! gaps. Object versions come from the `counters` row `version`, taken
//! in ranges of 1024 in a serializable transaction.
//!
//! Schema version 1 (table `info`, key `schema_version`), made by
//! `slicefs format` ([`PgBackend::format`]); a mount refuses a database
//! without it, or with another version.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use slicefs_wal::{ChunkIndex, FileId};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, IsolationLevel, NoTls, Statement};

use super::ops::Tx;
use super::store::{Backend, Barrier, TxMode};
use super::types::{DirEntry, FileKind, Ino, Inode, Timespec, Usage};
use super::{BlockAddr, BlockRef};
use crate::blockstore::BlockKey;
use crate::error::FsError;

type Result<T> = std::result::Result<T, FsError>;

/// The schema version this build reads and writes.
pub const PG_SCHEMA_VERSION: i64 = 1;

/// Attempts of one transaction aborted by serialization failures or
/// deadlocks before the request fails with `EIO`.
pub const MAX_ATTEMPTS: u32 = 64;

/// How long a request waits for PostgreSQL to come back (a restart)
/// before it fails with `EIO`.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(60);

/// Counters that belong to one host's log, kept per host.
const HOST_COUNTERS: [&str; 3] = ["log_id", "log_lsn", "sync"];

const SCHEMA: &str = "
CREATE TABLE info(key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE volume(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters(name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE host_counters(host BIGINT NOT NULL, name TEXT NOT NULL, value BIGINT NOT NULL,
    PRIMARY KEY(host, name));
CREATE SEQUENCE ino_seq MINVALUE 0 START 1;
CREATE SEQUENCE cookie_seq MINVALUE 0 START 1;
CREATE TABLE inodes(
    ino BIGINT PRIMARY KEY, kind BIGINT NOT NULL, perm BIGINT NOT NULL,
    uid BIGINT NOT NULL, gid BIGINT NOT NULL, size BIGINT NOT NULL, nlink BIGINT NOT NULL,
    atime_s BIGINT NOT NULL, atime_ns BIGINT NOT NULL,
    mtime_s BIGINT NOT NULL, mtime_ns BIGINT NOT NULL,
    ctime_s BIGINT NOT NULL, ctime_ns BIGINT NOT NULL,
    rdev BIGINT NOT NULL, parent BIGINT NOT NULL, truncate_lsn BIGINT NOT NULL,
    size_lsn BIGINT NOT NULL, synced_size BIGINT NOT NULL, alloc BIGINT NOT NULL,
    lsn_host BIGINT NOT NULL, orphan_host BIGINT NOT NULL);
CREATE INDEX inodes_size_lsn ON inodes(lsn_host, size_lsn);
CREATE INDEX inodes_truncate_lsn ON inodes(lsn_host, truncate_lsn);
CREATE INDEX inodes_orphans ON inodes(orphan_host) WHERE nlink = 0;
CREATE TABLE dentries(
    parent BIGINT NOT NULL, name BYTEA NOT NULL, ino BIGINT NOT NULL,
    kind BIGINT NOT NULL, cookie BIGINT NOT NULL, PRIMARY KEY(parent, name));
CREATE INDEX dentries_cookie ON dentries(parent, cookie);
CREATE TABLE symlinks(ino BIGINT PRIMARY KEY, target BYTEA NOT NULL);
CREATE TABLE xattrs(ino BIGINT NOT NULL, name BYTEA NOT NULL, value BYTEA NOT NULL,
    PRIMARY KEY(ino, name));
CREATE TABLE blocks(ino BIGINT NOT NULL, chunk BIGINT NOT NULL, block BIGINT NOT NULL,
    version BIGINT NOT NULL, len BIGINT NOT NULL,
    ofile BIGINT, ochunk BIGINT, oblock BIGINT, PRIMARY KEY(ino, chunk, block));
CREATE INDEX blocks_version ON blocks(version);
CREATE TABLE doomed(ino BIGINT NOT NULL, chunk BIGINT NOT NULL, block BIGINT NOT NULL,
    version BIGINT NOT NULL, PRIMARY KEY(ino, chunk, block, version));
CREATE TABLE sessions(host BIGINT PRIMARY KEY, started TIMESTAMPTZ NOT NULL,
    heartbeat TIMESTAMPTZ NOT NULL);
CREATE TABLE opens(host BIGINT NOT NULL, ino BIGINT NOT NULL, PRIMARY KEY(host, ino));
CREATE INDEX opens_ino ON opens(ino);
";

/// The inode columns, in [`row_inode`]'s order.
macro_rules! inode_cols {
    () => {
        "ino, kind, perm, uid, gid, size, nlink, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, \
         ctime_ns, rdev, parent, truncate_lsn, size_lsn, synced_size, alloc"
    };
}

/// Why an attempt failed.
enum Fault {
    /// Aborted by PostgreSQL (serialization failure, deadlock): run it
    /// again.
    Conflict,
    /// The connection is gone: reconnect and run it again.
    Lost,
}

fn classify(e: &tokio_postgres::Error) -> Option<Fault> {
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        return Some(Fault::Lost);
    }
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            Some(Fault::Conflict)
        }
        // The server is shutting down or restarting (pg_ctl restart).
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW =>
        {
            Some(Fault::Lost)
        }
        _ => None,
    }
}

fn pg_error(e: tokio_postgres::Error) -> FsError {
    if e.code() == Some(&SqlState::DISK_FULL) {
        return FsError::NoSpace(format!("metadata database: {e}"));
    }
    FsError::io("metadata database", one_line(&e))
}

/// The error with its server detail, on one line.
fn one_line(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s
        }
    }
}

/// A connection (made when first needed, and again after it was lost),
/// its prepared statements, and the runtime that drives it.
struct Conn {
    client: Option<Client>,
    statements: HashMap<&'static str, Statement>,
    driver: Driver,
}

impl Conn {
    /// The live client, connecting first if there is none (or it closed).
    fn live(&mut self, config: &tokio_postgres::Config) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.statements.clear();
            self.client = None;
            self.client = Some(connect(config, &self.driver)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

/// Connections per host: one for writes, the others for reads that run
/// beside them and each other (the mount has 4 FUSE threads). Hosts run
/// in parallel anyway.
pub const POOL_SIZE: usize = 4;

/// The backend: a pool of [`POOL_SIZE`] connections per host, opened as
/// requests need them (see `take`).
pub(crate) struct PgBackend {
    config: tokio_postgres::Config,
    host: i64,
    pool: Vec<Mutex<Conn>>,
}

/// Connection settings from `url` (`postgres://user@host:port/db?...`),
/// with a 10 s connect timeout unless the URL sets one.
fn config_of(url: &str) -> Result<tokio_postgres::Config> {
    let mut c = tokio_postgres::Config::from_str(url)
        .map_err(|e| FsError::io("metadata URL", format!("not a PostgreSQL URL: {e}")))?;
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(Duration::from_secs(10));
    }
    if c.get_application_name().is_none() {
        c.application_name("slicefs");
    }
    // Commits are asynchronous unless a transaction asks (a durable one:
    // `fsync`, a block commit before the log forgets its bytes), as
    // SQLite's `synchronous=NORMAL` here: visible to every host at once,
    // on disk within the server's `wal_writer_delay` (200 ms) or at the
    // next durable commit, whichever comes first.
    let options = match c.get_options() {
        Some(o) => format!("{o} -c synchronous_commit=off"),
        None => "-c synchronous_commit=off".to_string(),
    };
    c.options(&options);
    Ok(c)
}

/// Connects; the connection's task runs on `driver`'s runtime.
fn connect(config: &tokio_postgres::Config, driver: &Driver) -> Result<Client> {
    match driver.block_on(config.connect(NoTls)) {
        Ok((client, connection)) => {
            // Runs whenever a request of this backend waits on the
            // runtime; ends when the client is dropped or the server goes.
            driver.spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Err(e) => Err(FsError::io(
            "connect to the metadata database",
            format!("{}: {}", describe(config), one_line(&e)),
        )),
    }
}

/// A connection's own single-threaded Tokio runtime: the thread that
/// waits for a request drives the connection too (no hand-off to another thread
/// per round trip: a metadata read cost 0.97 ms through a connection
/// thread of its own, most of it two thread wake-ups per round trip).
/// Called from a task of a multi-threaded Tokio runtime (where blocking
/// on another runtime is refused), a request waits in `block_in_place`;
/// from a current-thread runtime, on a scoped thread.
struct Driver(Option<tokio::runtime::Runtime>);

impl Driver {
    fn start() -> Result<Driver> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| Driver(Some(rt)))
            .map_err(|e| FsError::io("start the metadata connection's runtime", e))
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("set until dropped")
    }

    fn block_on<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Err(_) => self.rt().block_on(f),
            // A worker (or blocking) thread of a multi-threaded runtime:
            // its other tasks move to another worker meanwhile.
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.rt().block_on(f)),
            Ok(_) => std::thread::scope(|s| {
                s.spawn(|| self.rt().block_on(f))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            }),
        }
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.rt().spawn(f);
    }
}

impl Drop for Driver {
    /// Without waiting (a backend may be dropped in an async task, where
    /// a runtime's blocking shutdown is refused).
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// `host:port/dbname` of a config, without the password.
fn describe(c: &tokio_postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{host}:{port}/{}",
        c.get_dbname().unwrap_or_default()
    )
}

/// Whether the schema exists, and its version.
fn schema_version(client: &Client, driver: &Driver) -> Result<Option<i64>> {
    let exists: bool = driver
        .block_on(client.query_one("SELECT to_regclass('info') IS NOT NULL", &[]))
        .map_err(pg_error)?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = driver
        .block_on(client.query_opt("SELECT value FROM info WHERE key = 'schema_version'", &[]))
        .map_err(pg_error)?;
    Ok(Some(row.map_or(0, |r| r.get(0))))
}

impl PgBackend {
    /// Connects to a formatted database.
    ///
    /// # Errors
    /// One line: a bad URL, no server, or no slicefs volume there (run
    /// `slicefs format`), or another schema version.
    pub(crate) fn open(url: &str, host: u64) -> Result<PgBackend> {
        let config = config_of(url)?;
        let mut pool = (0..POOL_SIZE)
            .map(|_| {
                Ok(Mutex::new(Conn {
                    client: None,
                    statements: HashMap::new(),
                    driver: Driver::start()?,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let first = pool[0].get_mut().unwrap_or_else(|e| e.into_inner());
        let driver = &first.driver;
        let client = connect(&config, driver)?;
        match schema_version(&client, driver)? {
            Some(PG_SCHEMA_VERSION) => {}
            None => {
                return Err(FsError::io(
                    "open the metadata database",
                    format!(
                        "{} holds no slicefs volume: run `slicefs format --meta URL --store URL NAME` first",
                        describe(&config)
                    ),
                ));
            }
            Some(v) => {
                return Err(FsError::io(
                    "open the metadata database",
                    format!(
                        "{}: schema version {v}, this build knows {PG_SCHEMA_VERSION}",
                        describe(&config)
                    ),
                ));
            }
        }
        first.client = Some(client);
        Ok(PgBackend {
            config,
            host: host as i64,
            pool,
        })
    }

    /// Creates the schema in the database at `url` if it has none and
    /// records `volume` (the volume's description, JSON) unless one is
    /// recorded already, in one transaction under an advisory lock (two
    /// formats at once make one volume). Returns the recorded description
    /// and whether it is `volume` (made now).
    ///
    /// # Errors
    /// One line: a bad URL, no server, another schema version.
    pub(crate) fn format(url: &str, volume: &str) -> Result<(String, bool)> {
        let config = config_of(url)?;
        let driver = Driver::start()?;
        let mut client = connect(&config, &driver)?;
        driver.block_on(async {
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock(7215113)", &[])
                .await
                .map_err(pg_error)?;
            let exists: bool = tx
                .query_one("SELECT to_regclass('info') IS NOT NULL", &[])
                .await
                .map_err(pg_error)?
                .get(0);
            if exists {
                let v: Option<i64> = tx
                    .query_opt("SELECT value FROM info WHERE key = 'schema_version'", &[])
                    .await
                    .map_err(pg_error)?
                    .map(|r| r.get(0));
                if v != Some(PG_SCHEMA_VERSION) {
                    return Err(FsError::io(
                        "format the metadata database",
                        format!(
                            "{}: schema version {v:?}, this build knows {PG_SCHEMA_VERSION}",
                            describe(&config)
                        ),
                    ));
                }
            } else {
                tx.batch_execute(SCHEMA).await.map_err(pg_error)?;
                tx.execute(
                    "INSERT INTO info(key, value) VALUES ('schema_version', $1)",
                    &[&PG_SCHEMA_VERSION],
                )
                .await
                .map_err(pg_error)?;
            }
            let made = tx
                .execute(
                    "INSERT INTO volume(key, value) VALUES ('volume', $1) ON CONFLICT DO NOTHING",
                    &[&volume],
                )
                .await
                .map_err(pg_error)?
                == 1;
            let stored: String = tx
                .query_one("SELECT value FROM volume WHERE key = 'volume'", &[])
                .await
                .map_err(pg_error)?
                .get(0);
            tx.commit().await.map_err(pg_error)?;
            Ok((stored, made))
        })
    }

    /// The volume's description recorded by [`PgBackend::format`].
    fn volume(&self) -> Result<Option<String>> {
        let mut conn = self.take(TxMode::Read);
        conn.live(&self.config)?;
        let Conn { client, driver, .. } = &*conn;
        let client = client.as_ref().expect("connected above");
        Ok(driver
            .block_on(client.query_opt("SELECT value FROM volume WHERE key = 'volume'", &[]))
            .map_err(pg_error)?
            .map(|r| r.get(0)))
    }

    /// The connection for one request. Writes take turns on the first:
    /// one host's write transactions then commit in the order they run,
    /// which `MetaStore`'s commit sequence numbers (what a durable commit
    /// covers), the log dependency it records (its LSN only grows) and
    /// its `sync` counter rely on, and they never conflict with each
    /// other. Reads take the lowest free one of the others (the first if
    /// only it is free), else wait for the second.
    fn take(&self, mode: TxMode) -> std::sync::MutexGuard<'_, Conn> {
        let relock = |r: std::sync::LockResult<_>| {
            r.unwrap_or_else(|e: std::sync::PoisonError<_>| e.into_inner())
        };
        if mode != TxMode::Read {
            return relock(self.pool[0].lock());
        }
        for c in self.pool[1..].iter().chain(&self.pool[..1]) {
            match c.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        relock(self.pool[1 % self.pool.len()].lock())
    }

    /// Runs one attempt of `f` on a live connection.
    fn attempt(
        &self,
        conn: &mut Conn,
        mode: TxMode,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> std::result::Result<(), (Option<Fault>, FsError)> {
        let Conn {
            client,
            statements,
            driver,
        } = conn;
        let client = client.as_mut().expect("connected by the caller");
        let driver = &*driver;
        let err = |e: tokio_postgres::Error| (classify(&e), pg_error(e));
        if mode == TxMode::Read {
            // No transaction: each statement reads its own snapshot (read
            // committed), and a read saves the BEGIN and ROLLBACK round
            // trips. A namespace read takes at most two statements (an
            // entry, then its inode); a change between them is as if
            // the read came a little earlier or later.
            let mut ptx = PgTx {
                c: &*client,
                statements,
                host: self.host,
                fault: None,
                driver,
            };
            return f(&mut ptx).map_err(|e| (ptx.fault.take(), e));
        }
        let tx = driver
            .block_on(
                client
                    .build_transaction()
                    .isolation_level(IsolationLevel::Serializable)
                    .start(),
            )
            .map_err(err)?;
        if mode == TxMode::Durable {
            // The connection commits asynchronously by default (see
            // `config_of`); this one, and every commit before it in the
            // server's WAL, is on disk when it returns.
            driver
                .block_on(tx.batch_execute("SET LOCAL synchronous_commit TO on"))
                .map_err(err)?;
        }
        let done = {
            let mut ptx = PgTx {
                c: &tx,
                statements,
                host: self.host,
                fault: None,
                driver,
            };
            f(&mut ptx).map_err(|e| (ptx.fault.take(), e))
        };
        if let Err(e) = done {
            let _ = driver.block_on(tx.rollback());
            return Err(e);
        }
        driver.block_on(tx.commit()).map_err(err)
    }
}

impl Backend for PgBackend {
    fn run(
        &self,
        mode: TxMode,
        barrier: Barrier<'_>,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> Result<()> {
        let mut conn = self.take(mode);
        let deadline = Instant::now() + RECONNECT_WAIT;
        let mut conflicts = 0u32;
        let mut pause = Duration::from_millis(50);
        loop {
            if let Err(e) = conn.live(&self.config) {
                if Instant::now() >= deadline {
                    return Err(e);
                }
                tracing::warn!("{e}; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
            // PostgreSQL writes a commit to disk on its own, soon after
            // it answers (asynchronous commit): the log goes first, as
            // for a durable commit. Rows nothing in the log depends on
            // (`Loose`) skip it.
            if matches!(mode, TxMode::Write | TxMode::Durable) {
                barrier()?;
            }
            match self.attempt(&mut conn, mode, f) {
                Ok(()) => return Ok(()),
                Err((Some(Fault::Conflict), e)) => {
                    conflicts += 1;
                    if conflicts >= MAX_ATTEMPTS {
                        return Err(e);
                    }
                    // A little random wait, so that the hosts that
                    // collided do not collide again.
                    let us = rand::random::<u64>() % (200 * u64::from(conflicts.min(20)));
                    std::thread::sleep(Duration::from_micros(us));
                }
                Err((Some(Fault::Lost), e)) => {
                    conn.client = None;
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    tracing::warn!("{e}; reconnecting");
                }
                Err((None, e)) => return Err(e),
            }
        }
    }

    fn volume(&self) -> Result<Option<String>> {
        PgBackend::volume(self)
    }
}

/// One transaction (`C`: a `Transaction`), or a run of reads without one
/// (`C`: the `Client`).
struct PgTx<'a, C> {
    c: &'a C,
    statements: &'a mut HashMap<&'static str, Statement>,
    host: i64,
    /// Set when a statement failed in a way the whole transaction may be
    /// retried for.
    fault: Option<Fault>,
    driver: &'a Driver,
}

type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);

impl<C: GenericClient + Sync> PgTx<'_, C> {
    fn fail(&mut self, e: tokio_postgres::Error) -> FsError {
        if let Some(f) = classify(&e) {
            self.fault = Some(f);
        }
        pg_error(e)
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        match self.driver.block_on(self.c.prepare(sql)) {
            Ok(s) => {
                self.statements.insert(sql, s.clone());
                Ok(s)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let st = self.statement(sql)?;
        self.driver
            .block_on(self.c.query(&st, params))
            .map_err(|e| self.fail(e))
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Option<tokio_postgres::Row>> {
        let st = self.statement(sql)?;
        self.driver
            .block_on(self.c.query_opt(&st, params))
            .map_err(|e| self.fail(e))
    }

    fn execute(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<u64> {
        let st = self.statement(sql)?;
        self.driver
            .block_on(self.c.execute(&st, params))
            .map_err(|e| self.fail(e))
    }

    fn key_statement(&mut self, sql: &'static str, k: BlockKey) -> Result<()> {
        self.execute(
            sql,
            &[
                &(k.file.0 as i64),
                &i64::from(k.chunk.0),
                &i64::from(k.block),
                &(k.version as i64),
            ],
        )?;
        Ok(())
    }

    fn inos(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<Vec<Ino>> {
        Ok(self
            .query(sql, params)?
            .iter()
            .map(|r| Ino(r.get::<_, i64>(0) as u64))
            .collect())
    }
}

fn kind_of(code: i64) -> Result<FileKind> {
    FileKind::from_code(code as u8)
        .ok_or_else(|| FsError::io("metadata database", format!("unknown file kind {code}")))
}

fn row_inode(r: &tokio_postgres::Row) -> Result<Inode> {
    let g = |k: usize| r.get::<_, i64>(k);
    Ok(Inode {
        ino: Ino(g(0) as u64),
        kind: kind_of(g(1))?,
        perm: g(2) as u16,
        uid: g(3) as u32,
        gid: g(4) as u32,
        size: g(5) as u64,
        nlink: g(6) as u32,
        atime: Timespec {
            sec: g(7),
            nsec: g(8) as u32,
        },
        mtime: Timespec {
            sec: g(9),
            nsec: g(10) as u32,
        },
        ctime: Timespec {
            sec: g(11),
            nsec: g(12) as u32,
        },
        rdev: g(13) as u32,
        parent: Ino(g(14) as u64),
        truncate_lsn: g(15) as u64,
        size_lsn: g(16) as u64,
        synced_size: g(17) as u64,
        alloc: g(18) as u64,
    })
}

/// A [`BlockRef`] from the columns `version, len, ofile, ochunk, oblock`
/// starting at column `at`.
fn row_block_ref(r: &tokio_postgres::Row, at: usize) -> BlockRef {
    let origin = r.get::<_, Option<i64>>(at + 2).map(|file| BlockAddr {
        file: FileId(file as u64),
        chunk: ChunkIndex(r.get::<_, i64>(at + 3) as u32),
        block: r.get::<_, i64>(at + 4) as u32,
    });
    BlockRef {
        version: r.get::<_, i64>(at) as u64,
        len: r.get::<_, i64>(at + 1) as u32,
        origin,
        offset: 0,
    }
}

/// A block map row from the columns `ino, chunk, block, version, len,
/// ofile, ochunk, oblock`.
fn row_block(r: &tokio_postgres::Row) -> (BlockAddr, BlockRef) {
    (
        BlockAddr {
            file: FileId(r.get::<_, i64>(0) as u64),
            chunk: ChunkIndex(r.get::<_, i64>(1) as u32),
            block: r.get::<_, i64>(2) as u32,
        },
        row_block_ref(r, 3),
    )
}

fn row_key(r: &tokio_postgres::Row) -> BlockKey {
    BlockKey {
        file: FileId(r.get::<_, i64>(0) as u64),
        chunk: ChunkIndex(r.get::<_, i64>(1) as u32),
        block: r.get::<_, i64>(2) as u32,
        version: r.get::<_, i64>(3) as u64,
    }
}

fn entry(r: &tokio_postgres::Row, name: usize) -> Result<DirEntry> {
    Ok(DirEntry {
        name: r.get(name),
        ino: Ino(r.get::<_, i64>(name + 1) as u64),
        kind: kind_of(r.get(name + 2))?,
        cookie: r.get::<_, i64>(name + 3) as u64,
    })
}

/// The sequence behind a counter handed out by `nextval`, if any.
fn sequence(counter: &str) -> Option<&'static str> {
    match counter {
        "ino" => Some("ino_seq"),
        "cookie" => Some("cookie_seq"),
        _ => None,
    }
}

impl<C: GenericClient + Sync> Tx for PgTx<'_, C> {
    fn inode(&mut self, ino: Ino) -> Result<Option<Inode>> {
        self.query_opt(
            concat!("SELECT ", inode_cols!(), " FROM inodes WHERE ino = $1"),
            &[&(ino.0 as i64)],
        )?
        .map(|r| row_inode(&r))
        .transpose()
    }

    fn put_inode(&mut self, i: &Inode) -> Result<()> {
        // `lsn_host` follows the host that last set an LSN (its log holds
        // the record); `orphan_host` the host that dropped the last link.
        self.execute(
            concat!(
                "INSERT INTO inodes(",
                inode_cols!(),
                ", lsn_host, orphan_host) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $20) \
                 ON CONFLICT (ino) DO UPDATE SET kind = EXCLUDED.kind, perm = EXCLUDED.perm, \
                 uid = EXCLUDED.uid, gid = EXCLUDED.gid, size = EXCLUDED.size, \
                 nlink = EXCLUDED.nlink, atime_s = EXCLUDED.atime_s, atime_ns = EXCLUDED.atime_ns, \
                 mtime_s = EXCLUDED.mtime_s, mtime_ns = EXCLUDED.mtime_ns, \
                 ctime_s = EXCLUDED.ctime_s, ctime_ns = EXCLUDED.ctime_ns, rdev = EXCLUDED.rdev, \
                 parent = EXCLUDED.parent, truncate_lsn = EXCLUDED.truncate_lsn, \
                 size_lsn = EXCLUDED.size_lsn, synced_size = EXCLUDED.synced_size, \
                 alloc = EXCLUDED.alloc, \
                 lsn_host = CASE WHEN inodes.size_lsn <> EXCLUDED.size_lsn \
                     OR inodes.truncate_lsn <> EXCLUDED.truncate_lsn \
                     THEN EXCLUDED.lsn_host ELSE inodes.lsn_host END, \
                 orphan_host = CASE WHEN inodes.nlink <> 0 AND EXCLUDED.nlink = 0 \
                     THEN EXCLUDED.orphan_host ELSE inodes.orphan_host END"
            ),
            &[
                &(i.ino.0 as i64),
                &i64::from(i.kind.code()),
                &i64::from(i.perm),
                &i64::from(i.uid),
                &i64::from(i.gid),
                &(i.size as i64),
                &i64::from(i.nlink),
                &i.atime.sec,
                &i64::from(i.atime.nsec),
                &i.mtime.sec,
                &i64::from(i.mtime.nsec),
                &i.ctime.sec,
                &i64::from(i.ctime.nsec),
                &i64::from(i.rdev),
                &(i.parent.0 as i64),
                &(i.truncate_lsn as i64),
                &(i.size_lsn as i64),
                &(i.synced_size as i64),
                &(i.alloc as i64),
                &self.host.clone(),
            ],
        )?;
        Ok(())
    }

    fn delete_inode(&mut self, ino: Ino) -> Result<()> {
        let ino = ino.0 as i64;
        self.execute("DELETE FROM inodes WHERE ino = $1", &[&ino])?;
        self.execute("DELETE FROM symlinks WHERE ino = $1", &[&ino])?;
        self.execute("DELETE FROM xattrs WHERE ino = $1", &[&ino])?;
        self.execute("DELETE FROM blocks WHERE ino = $1", &[&ino])?;
        Ok(())
    }

    fn dentry(&mut self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, FileKind)>> {
        self.query_opt(
            "SELECT ino, kind FROM dentries WHERE parent = $1 AND name = $2",
            &[&(parent.0 as i64), &name],
        )?
        .map(|r| Ok((Ino(r.get::<_, i64>(0) as u64), kind_of(r.get(1))?)))
        .transpose()
    }

    fn put_dentry(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileKind,
        cookie: u64,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO dentries(parent, name, ino, kind, cookie) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (parent, name) DO UPDATE SET ino = EXCLUDED.ino, kind = EXCLUDED.kind, \
             cookie = EXCLUDED.cookie",
            &[
                &(parent.0 as i64),
                &name,
                &(ino.0 as i64),
                &i64::from(kind.code()),
                &(cookie as i64),
            ],
        )?;
        Ok(())
    }

    fn delete_dentry(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        self.execute(
            "DELETE FROM dentries WHERE parent = $1 AND name = $2",
            &[&(parent.0 as i64), &name],
        )?;
        Ok(())
    }

    fn dir_has_entries(&mut self, dir: Ino) -> Result<bool> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM dentries WHERE parent = $1 LIMIT 1",
                &[&(dir.0 as i64)],
            )?
            .is_some())
    }

    fn list_dir(&mut self, dir: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        self.query(
            "SELECT name, ino, kind, cookie FROM dentries WHERE parent = $1 AND cookie > $2 \
             ORDER BY cookie LIMIT $3",
            &[
                &(dir.0 as i64),
                &(after.min(i64::MAX as u64) as i64),
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )?
        .iter()
        .map(|r| entry(r, 0))
        .collect()
    }

    fn list_dir_plus(
        &mut self,
        dir: Ino,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, Inode)>> {
        self.query(
            "SELECT i.ino, i.kind, i.perm, i.uid, i.gid, i.size, i.nlink, i.atime_s, \
                 i.atime_ns, i.mtime_s, i.mtime_ns, i.ctime_s, i.ctime_ns, i.rdev, i.parent, \
                 i.truncate_lsn, i.size_lsn, i.synced_size, i.alloc, \
                 d.name, d.ino, d.kind, d.cookie FROM dentries d JOIN inodes i \
                 ON i.ino = d.ino WHERE d.parent = $1 AND d.cookie > $2 \
                 ORDER BY d.cookie LIMIT $3",
            &[
                &(dir.0 as i64),
                &(after.min(i64::MAX as u64) as i64),
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )?
        .iter()
        .map(|r| Ok((entry(r, 19)?, row_inode(r)?)))
        .collect()
    }

    fn next(&mut self, counter: &'static str) -> Result<u64> {
        let row = match sequence(counter) {
            Some("ino_seq") => self.query_opt("SELECT nextval('ino_seq')", &[])?,
            Some(_) => self.query_opt("SELECT nextval('cookie_seq')", &[])?,
            None if HOST_COUNTERS.contains(&counter) => self.query_opt(
                "INSERT INTO host_counters(host, name, value) VALUES ($1, $2, 1) \
                 ON CONFLICT (host, name) DO UPDATE SET value = host_counters.value + 1 \
                 RETURNING value",
                &[&self.host.clone(), &counter],
            )?,
            None => self.query_opt(
                "INSERT INTO counters(name, value) VALUES ($1, 1) \
                 ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value",
                &[&counter],
            )?,
        };
        Ok(row.map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    fn counter(&mut self, counter: &'static str) -> Result<u64> {
        let row = match sequence(counter) {
            Some("ino_seq") => self.query_opt(
                "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM ino_seq",
                &[],
            )?,
            Some(_) => self.query_opt(
                "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END \
                 FROM cookie_seq",
                &[],
            )?,
            None if HOST_COUNTERS.contains(&counter) => self.query_opt(
                "SELECT value FROM host_counters WHERE host = $1 AND name = $2",
                &[&self.host.clone(), &counter],
            )?,
            None => self.query_opt("SELECT value FROM counters WHERE name = $1", &[&counter])?,
        };
        Ok(row.map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    fn set_counter(&mut self, counter: &'static str, value: u64) -> Result<()> {
        let value = value as i64;
        match sequence(counter) {
            // Sequences only move forward (other hosts take numbers from
            // them meanwhile): a lower value is ignored.
            Some("ino_seq") => {
                self.query_opt(
                    "SELECT setval('ino_seq', GREATEST($1, (SELECT CASE WHEN is_called \
                     THEN last_value ELSE last_value - 1 END FROM ino_seq)), true)",
                    &[&value],
                )?;
            }
            Some(_) => {
                self.query_opt(
                    "SELECT setval('cookie_seq', GREATEST($1, (SELECT CASE WHEN is_called \
                     THEN last_value ELSE last_value - 1 END FROM cookie_seq)), true)",
                    &[&value],
                )?;
            }
            None if HOST_COUNTERS.contains(&counter) => {
                self.execute(
                    "INSERT INTO host_counters(host, name, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (host, name) DO UPDATE SET value = EXCLUDED.value",
                    &[&self.host.clone(), &counter, &value],
                )?;
            }
            None => {
                self.execute(
                    "INSERT INTO counters(name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[&counter, &value],
                )?;
            }
        }
        Ok(())
    }

    fn symlink(&mut self, ino: Ino) -> Result<Option<Vec<u8>>> {
        Ok(self
            .query_opt(
                "SELECT target FROM symlinks WHERE ino = $1",
                &[&(ino.0 as i64)],
            )?
            .map(|r| r.get(0)))
    }

    fn put_symlink(&mut self, ino: Ino, target: &[u8]) -> Result<()> {
        self.execute(
            "INSERT INTO symlinks(ino, target) VALUES ($1, $2) \
             ON CONFLICT (ino) DO UPDATE SET target = EXCLUDED.target",
            &[&(ino.0 as i64), &target],
        )?;
        Ok(())
    }

    fn xattr(&mut self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .query_opt(
                "SELECT value FROM xattrs WHERE ino = $1 AND name = $2",
                &[&(ino.0 as i64), &name],
            )?
            .map(|r| r.get(0)))
    }

    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()> {
        self.execute(
            "INSERT INTO xattrs(ino, name, value) VALUES ($1, $2, $3) \
             ON CONFLICT (ino, name) DO UPDATE SET value = EXCLUDED.value",
            &[&(ino.0 as i64), &name, &value],
        )?;
        Ok(())
    }

    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> Result<bool> {
        Ok(self.execute(
            "DELETE FROM xattrs WHERE ino = $1 AND name = $2",
            &[&(ino.0 as i64), &name],
        )? > 0)
    }

    fn xattr_names(&mut self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .query(
                "SELECT name FROM xattrs WHERE ino = $1 ORDER BY name",
                &[&(ino.0 as i64)],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn any_xattr(&mut self) -> Result<bool> {
        Ok(self
            .query_opt("SELECT 1 FROM xattrs LIMIT 1", &[])?
            .is_some())
    }

    fn block(&mut self, a: BlockAddr) -> Result<Option<BlockRef>> {
        Ok(self
            .query_opt(
                "SELECT version, len, ofile, ochunk, oblock FROM blocks \
                 WHERE ino = $1 AND chunk = $2 AND block = $3",
                &[
                    &(a.file.0 as i64),
                    &i64::from(a.chunk.0),
                    &i64::from(a.block),
                ],
            )?
            .map(|r| row_block_ref(&r, 0)))
    }

    fn put_block(&mut self, a: BlockAddr, r: BlockRef) -> Result<()> {
        if r.offset != 0 {
            // Shared volumes do not pack (the transfer manager's
            // `pack_bytes` is 0 there): schema 1 has no column for it.
            return Err(FsError::io(
                "commit a block",
                "a packed block on a shared volume (schema 1 stores no offset)",
            ));
        }
        self.execute(
            "INSERT INTO blocks(ino, chunk, block, version, len, ofile, ochunk, oblock) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (ino, chunk, block) DO UPDATE \
             SET version = EXCLUDED.version, len = EXCLUDED.len, ofile = EXCLUDED.ofile, \
             ochunk = EXCLUDED.ochunk, oblock = EXCLUDED.oblock",
            &[
                &(a.file.0 as i64),
                &i64::from(a.chunk.0),
                &i64::from(a.block),
                &(r.version as i64),
                &i64::from(r.len),
                &r.origin.map(|o| o.file.0 as i64),
                &r.origin.map(|o| i64::from(o.chunk.0)),
                &r.origin.map(|o| i64::from(o.block)),
            ],
        )?;
        Ok(())
    }

    fn delete_block(&mut self, a: BlockAddr) -> Result<()> {
        self.execute(
            "DELETE FROM blocks WHERE ino = $1 AND chunk = $2 AND block = $3",
            &[
                &(a.file.0 as i64),
                &i64::from(a.chunk.0),
                &i64::from(a.block),
            ],
        )?;
        Ok(())
    }

    fn version_refs(&mut self, version: u64) -> Result<u64> {
        Ok(self
            .query_opt(
                "SELECT count(*) FROM blocks WHERE version = $1",
                &[&(version as i64)],
            )?
            .map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    fn version_rows(&mut self, version: u64) -> Result<Vec<(BlockAddr, BlockRef)>> {
        Ok(self
            .query(
                "SELECT ino, chunk, block, version, len, ofile, ochunk, oblock FROM blocks \
                 WHERE version = $1",
                &[&(version as i64)],
            )?
            .iter()
            .map(row_block)
            .collect())
    }

    fn file_blocks(&mut self, ino: Ino) -> Result<Vec<(BlockAddr, BlockRef)>> {
        Ok(self
            .query(
                "SELECT ino, chunk, block, version, len, ofile, ochunk, oblock FROM blocks \
                 WHERE ino = $1 ORDER BY chunk, block",
                &[&(ino.0 as i64)],
            )?
            .iter()
            .map(row_block)
            .collect())
    }

    fn doom(&mut self, k: BlockKey) -> Result<()> {
        self.key_statement(
            "INSERT INTO doomed(ino, chunk, block, version) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            k,
        )
    }

    fn doomed(&mut self) -> Result<Vec<BlockKey>> {
        Ok(self
            .query("SELECT ino, chunk, block, version FROM doomed", &[])?
            .iter()
            .map(row_key)
            .collect())
    }

    fn forget_doomed(&mut self, k: BlockKey) -> Result<()> {
        self.key_statement(
            "DELETE FROM doomed WHERE ino = $1 AND chunk = $2 AND block = $3 AND version = $4",
            k,
        )
    }

    fn orphans(&mut self) -> Result<Vec<Ino>> {
        self.inos(
            "SELECT ino FROM inodes WHERE nlink = 0 AND orphan_host = $1 ORDER BY ino",
            &[&self.host.clone()],
        )
    }

    fn all_inodes(&mut self) -> Result<Vec<Inode>> {
        self.query(concat!("SELECT ", inode_cols!(), " FROM inodes"), &[])?
            .iter()
            .map(row_inode)
            .collect()
    }

    fn all_dentries(&mut self) -> Result<Vec<(Ino, DirEntry)>> {
        self.query("SELECT parent, name, ino, kind, cookie FROM dentries", &[])?
            .iter()
            .map(|r| Ok((Ino(r.get::<_, i64>(0) as u64), entry(r, 1)?)))
            .collect()
    }

    fn all_blocks(&mut self) -> Result<Vec<(BlockAddr, BlockRef)>> {
        Ok(self
            .query(
                "SELECT ino, chunk, block, version, len, ofile, ochunk, oblock FROM blocks",
                &[],
            )?
            .iter()
            .map(row_block)
            .collect())
    }

    fn inodes_past(&mut self, lsn: u64) -> Result<Vec<Ino>> {
        self.inos(
            "SELECT ino FROM inodes WHERE lsn_host = $1 AND (size_lsn > $2 OR truncate_lsn > $2) \
             ORDER BY ino",
            &[&self.host.clone(), &(lsn as i64)],
        )
    }

    fn max_inode_lsn(&mut self) -> Result<u64> {
        Ok(self
            .query_opt(
                "SELECT GREATEST(coalesce(max(size_lsn), 0), coalesce(max(truncate_lsn), 0)) \
                 FROM inodes WHERE lsn_host = $1",
                &[&self.host.clone()],
            )?
            .map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    fn held_elsewhere(&mut self, ino: Ino) -> Result<bool> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM opens WHERE ino = $1 AND host <> $2 LIMIT 1",
                &[&(ino.0 as i64), &self.host.clone()],
            )?
            .is_some())
    }

    fn hold(&mut self, ino: Ino, on: bool) -> Result<()> {
        let (ino, host) = (ino.0 as i64, self.host);
        if on {
            self.execute(
                "INSERT INTO opens(host, ino) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&host, &ino],
            )?;
        } else {
            self.execute(
                "DELETE FROM opens WHERE host = $1 AND ino = $2",
                &[&host, &ino],
            )?;
        }
        Ok(())
    }

    fn session_begin(&mut self) -> Result<()> {
        let host = self.host;
        self.execute(
            "INSERT INTO sessions(host, started, heartbeat) VALUES ($1, now(), now()) \
             ON CONFLICT (host) DO UPDATE SET started = now(), heartbeat = now()",
            &[&host],
        )?;
        self.execute("DELETE FROM opens WHERE host = $1", &[&host])?;
        Ok(())
    }

    fn session_tick(&mut self, timeout: Duration, clean: bool) -> Result<(u64, bool)> {
        let host = self.host;
        let lost = self.execute(
            "UPDATE sessions SET heartbeat = now() WHERE host = $1",
            &[&host],
        )? == 0;
        if lost {
            self.execute(
                "INSERT INTO sessions(host, started, heartbeat) VALUES ($1, now(), now())",
                &[&host],
            )?;
        }
        if !clean {
            return Ok((0, lost));
        }
        let dead: Vec<i64> = self
            .query(
                "SELECT host FROM sessions WHERE host <> $1 \
                 AND heartbeat < now() - make_interval(secs => $2)",
                &[&host, &timeout.as_secs_f64()],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for d in &dead {
            self.execute("DELETE FROM opens WHERE host = $1", &[d])?;
            self.execute("DELETE FROM sessions WHERE host = $1", &[d])?;
        }
        // Orphans of hosts with no session (dead ones just now, and hosts
        // that stopped cleanly while another host held their orphan open)
        // become this host's to free.
        self.execute(
            "UPDATE inodes SET orphan_host = $1 WHERE nlink = 0 AND orphan_host <> $1 \
             AND orphan_host NOT IN (SELECT host FROM sessions)",
            &[&host],
        )?;
        Ok((dead.len() as u64, lost))
    }

    fn session_end(&mut self) -> Result<()> {
        let host = self.host;
        self.execute("DELETE FROM opens WHERE host = $1", &[&host])?;
        self.execute("DELETE FROM sessions WHERE host = $1", &[&host])?;
        Ok(())
    }

    fn usage(&mut self) -> Result<Usage> {
        let r = self.query_opt(
            "SELECT count(*), coalesce(sum(CASE WHEN kind = 8 THEN size ELSE 0 END), 0)::BIGINT \
             FROM inodes",
            &[],
        )?;
        Ok(r.map_or(Usage::default(), |r| Usage {
            inodes: r.get::<_, i64>(0) as u64,
            bytes: r.get::<_, i64>(1) as u64,
        }))
    }
}

//! A throwaway PostgreSQL server for tests of the shared (PostgreSQL)
//! metadata backend: Debian's `postgresql` package, a cluster made with
//! `initdb` as the `postgres` user (initdb refuses root) in a temporary
//! directory, listening on 127.0.0.1 on a free port and on a socket in
//! that directory, trusting user `slicefs`.
//!
//! [`Postgres::start`] gives a server owned by the test (stopped and
//! deleted on drop, also when the test panics); [`Postgres::shared`] one
//! server for the whole test binary, stopped by a watchdog process once
//! the binary exits (statics are never dropped). Each test takes its own
//! database ([`Postgres::database`]).
//!
//! The binaries are looked up in `$SLICEFS_PG_BIN`, then
//! `/usr/lib/postgresql/<newest>/bin`; `scripts/test.sh` installs the
//! package.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running PostgreSQL.
pub struct Postgres {
    /// `127.0.0.1`'s port.
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    /// Whether dropping stops it (not for [`Postgres::shared`]).
    owned: bool,
}

fn bin_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("SLICEFS_PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("no PostgreSQL in /usr/lib/postgresql ({e}): apt-get install postgresql")
        })?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".to_string())
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    c
}

fn output(c: &mut Command) -> Result<String, String> {
    let o = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{c:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{c:?}: {}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Postgres {
    /// Starts a server owned by the caller.
    pub fn start() -> Result<Postgres, String> {
        Self::start_owned(true)
    }

    /// One server for the whole test binary.
    pub fn shared() -> &'static Postgres {
        static PG: OnceLock<Postgres> = OnceLock::new();
        PG.get_or_init(|| {
            let pg = Self::start_owned(false).expect("start PostgreSQL");
            pg.watch(std::process::id());
            pg
        })
    }

    fn start_owned(owned: bool) -> Result<Postgres, String> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("slicefs-pg-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        output(Command::new("chown").args(["postgres:postgres"]).arg(&dir))?;
        let data = dir.join("data");
        output(
            as_postgres(&bin, "initdb")
                .args(["-A", "trust", "-U", "slicefs", "--no-sync", "-D"])
                .arg(&data),
        )?;
        let pg = Postgres {
            port: free_port(),
            bin,
            dir,
            owned,
        };
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        // fsync stays on: the tests check what a restart keeps.
        let opts = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {} -c max_connections=200",
            self.dir.display(),
            self.port
        );
        output(
            as_postgres(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-l"])
                .arg(self.dir.join("log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
        )
        .map(|_| ())
    }

    /// Stops the server (`fast`: connections are cut, what committed
    /// stays) and starts it again on the same port.
    pub fn restart(&self) -> Result<(), String> {
        self.stop("fast")?;
        self.pg_ctl_start()
    }

    fn stop(&self, mode: &str) -> Result<(), String> {
        output(
            as_postgres(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", mode, "-w", "stop"]),
        )
        .map(|_| ())
    }

    /// Starts a process that stops this server and deletes its directory
    /// once process `pid` is gone.
    fn watch(&self, pid: u32) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             runuser -u postgres -- {} -D {} -m immediate stop >/dev/null 2>&1; rm -rf {}",
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display(),
            self.dir.display()
        );
        use std::os::unix::process::CommandExt;
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
    }

    /// A new empty database; its URL.
    pub fn database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
                .and_then(|mut c| c.batch_execute(&format!("CREATE DATABASE {name}")))
            {
                Ok(()) => return self.url(&name),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create database {name}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("create database {name}: {e}"),
            }
        }
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://slicefs@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.stop("immediate");
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

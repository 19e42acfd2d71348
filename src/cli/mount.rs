//! `slicefs mount`, `slicefs serve` (NFS) and `slicefs umount`.
//!
//! Option precedence, highest first: the command line, the environment
//! (`SLICEFS_*`), the TOML config file (`--config`, keys named like the
//! long options with `_` for `-`), the defaults.
//!
//! A mounted file system writes `<data dir>/status.json` every second
//! (see `status.rs`); `status`, `stats` and `umount --flush` read it. The
//! mount's source in `/proc/mounts` is the data directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use slicefs::blockstore::StoreConfig;
use slicefs::fuse::FuseFs;
use slicefs::vfs::{FsOptions, MetaKind, PersisterKind, VfsConfig, open_fs_with_progress};
use slicefs_cache::CacheConfig;
use slicefs_wal::{Durability, WalConfig};

use super::fuse_mount::{self, FuseMount, MountSpec, mount_ids_at};
use super::status::{Status, Totals, alive, data_dir_of, read_status, write_status};

/// The file system options `slicefs mount` and `slicefs serve` share.
#[derive(Debug, Args)]
pub struct FsArgs {
    /// Serve Prometheus metrics at `http://ADDR/metrics`
    /// (`127.0.0.1:9567`): requests and latencies per FUSE or NFS
    /// operation, bytes, dirty bytes, uploads, downloads, retries, stalls.
    #[arg(long, env = "SLICEFS_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,
    /// TOML file with defaults for the options below.
    #[arg(long, env = "SLICEFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the log, the metadata database and (by default) the
    /// blocks. Default: `$XDG_DATA_HOME/slicefs`, else
    /// `~/.local/share/slicefs`.
    #[arg(long, env = "SLICEFS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Block store URL: `file:///dir`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`, `memory://`.
    /// Default: the store the data directory was first used with (kept
    /// in `<data dir>/volume.json`, with its non-secret options); for a new
    /// data directory `file://<data dir>/blocks`. Another store than the
    /// remembered one is refused.
    #[arg(long, env = "SLICEFS_STORE")]
    pub store: Option<String>,
    /// Metadata: `sqlite` (the default: `<data dir>/meta.db`, one host),
    /// `sqlite:///path/meta.db` (a database file elsewhere, e.g. on a
    /// faster disk; still one host, and bound to this data directory's
    /// log), or `postgres://user@host:port/db` (a volume made by `slicefs
    /// format`, shared by every host that mounts it; its store comes
    /// from the volume).
    #[arg(long, env = "SLICEFS_META")]
    pub meta: Option<String>,
    /// Shared volumes: how long another host may be silent (it sends a
    /// heartbeat every sixth of this) before this host takes it for dead,
    /// stops keeping the files it held open, and frees its unlinked
    /// files (`60s`). Default: 60s.
    #[arg(long, env = "SLICEFS_SESSION_TIMEOUT")]
    pub session_timeout: Option<String>,
    /// Block store option `KEY=VALUE` (`object_store` keys such as
    /// `aws_endpoint`, `aws_allow_http`, `aws_region`); repeatable. AWS_*
    /// environment variables are read too.
    #[arg(long = "store-option", value_parser = parse_kv)]
    pub store_options: Vec<(String, String)>,
    /// Write-ahead log: `mmap` (crash-safe) or `null` (nothing survives a
    /// crash). Default: mmap.
    #[arg(long, env = "SLICEFS_PERSISTER", value_enum)]
    pub persister: Option<PersisterArg>,
    /// When a write is durable: `always` (before it returns), `batch`
    /// (within 5 ms), `none` (at fsync). Default: batch.
    #[arg(long, env = "SLICEFS_DURABILITY", value_enum)]
    pub durability: Option<DurabilityArg>,
    /// Memory for cached data (`512MiB`, `4GiB`). Default: a quarter of
    /// RAM, at most 8 GiB.
    #[arg(long, env = "SLICEFS_CACHE_SIZE")]
    pub cache_size: Option<String>,
    /// Data not yet uploaded that writers may pile up before they wait.
    /// Default: half the cache size.
    #[arg(long, env = "SLICEFS_DIRTY_MAX")]
    pub dirty_max: Option<String>,
    /// Upload a file's dirty data once the file had no write for this
    /// long (`5s`, `500ms`); data of a file still being written goes after
    /// 30 s at the latest. Default: 5s.
    #[arg(long, env = "SLICEFS_UPLOAD_DELAY")]
    pub upload_delay: Option<String>,
    /// fsync also waits for the upload to the object store.
    #[arg(long, env = "SLICEFS_FSYNC_UPLOAD", value_parser = clap::builder::BoolishValueParser::new())]
    pub fsync_upload: bool,
    /// Keep this fraction of the data directory's disk free for other
    /// programs (`0.1`: 10%): a write that would take the free space below
    /// it first compacts the log, then waits up to 60 s for uploads to
    /// make room, then fails with ENOSPC. Deletes are never held back.
    /// Default: 0 (the log may fill the disk, less a 16 MiB reserve kept
    /// for deletes).
    #[arg(long, env = "SLICEFS_FREE_SPACE_RATIO")]
    pub free_space_ratio: Option<f64>,
    /// Start even if the log is damaged, missing or not the one the
    /// metadata depends on: keep the log's valid prefix (damaged segment
    /// files are renamed `*.corrupt`, never deleted), say what was
    /// dropped, and go on. Without it such a start is refused. Use it
    /// only after keeping a copy of the data directory.
    #[arg(long, env = "SLICEFS_TOLERATE_CORRUPTION", value_parser = clap::builder::BoolishValueParser::new())]
    pub tolerate_corruption: bool,
    /// How long an unmount waits for uploads before it leaves the rest in
    /// the log. Default: 10min.
    #[arg(long, env = "SLICEFS_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
}

/// `slicefs mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub fs: FsArgs,
    /// Use the kernel's write-back page cache: `write(2)` returns at
    /// page-cache speed and the bytes reach the log at `fsync`, `close`
    /// or the kernel's write-back (`--writeback-cache=false` to turn it
    /// off). Default: on.
    #[arg(long, env = "SLICEFS_WRITEBACK_CACHE", num_args = 0..=1, default_missing_value = "true")]
    pub writeback_cache: Option<bool>,
    /// Let other users access the mount (FUSE `allow_other`).
    #[arg(long, env = "SLICEFS_ALLOW_OTHER", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_other: bool,
    /// Extended attributes (`setfattr`, `getfattr`, `cp --preserve=xattr`).
    /// Off, every xattr call fails with `EOPNOTSUPP` (as on a file system
    /// without them) and the kernel stops asking: the FUSE kernel module
    /// caches no xattrs, so with them on `ls -l` costs a round trip per
    /// file (it asks for `security.selinux`) and so does the first write
    /// of each file (`security.capability`). Default: on when the file
    /// system holds an extended attribute already, or is shared; off for
    /// a new one (`--xattr` or `--xattr=true` to turn them on,
    /// `--xattr=false` off).
    #[arg(
        long,
        env = "SLICEFS_XATTR",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub xattr: Option<bool>,
    /// Mount over a directory that is not empty (its entries are hidden
    /// while mounted). Without it such a mountpoint is refused.
    #[arg(long)]
    pub allow_non_empty: bool,
    /// Stay in the foreground (the default).
    #[arg(long, conflicts_with = "background")]
    pub foreground: bool,
    /// Detach once mounted; logs go to `<data dir>/slicefs.log`.
    #[arg(long)]
    pub background: bool,
    /// Also serve the file system over NFSv3 on this address (one port
    /// for NFS and MOUNT), from this process: what one front end writes
    /// the other reads.
    #[arg(long, env = "SLICEFS_NFS_LISTEN")]
    pub nfs_listen: Option<std::net::SocketAddr>,
    /// Over NFS, treat uid and gid 0 as nobody (65534): root squash.
    #[arg(long, env = "SLICEFS_NFS_SQUASH_ROOT", value_parser = clap::builder::BoolishValueParser::new())]
    pub nfs_squash_root: bool,
}

/// `slicefs serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for NFSv3 and MOUNT (one port). Another address than
    /// 127.0.0.1 exposes the file system to the network: AUTH_SYS trusts
    /// the uid the client claims.
    #[arg(long, env = "SLICEFS_NFS_LISTEN", default_value = "127.0.0.1:2049")]
    pub listen: std::net::SocketAddr,
    /// Treat uid and gid 0 as nobody (65534): root squash.
    #[arg(long, env = "SLICEFS_NFS_SQUASH_ROOT", value_parser = clap::builder::BoolishValueParser::new())]
    pub squash_root: bool,
    #[command(flatten)]
    pub fs: FsArgs,
}

/// `slicefs umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mountpoint.
    pub mountpoint: PathBuf,
    /// Wait until everything is uploaded and the mount process ended,
    /// with a progress bar.
    #[arg(long)]
    pub flush: bool,
}

/// `--persister`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersisterArg {
    /// The mmap write-ahead log.
    Mmap,
    /// No log.
    Null,
}

/// `--durability`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// Each write durable before it returns.
    Always,
    /// Writes durable within 5 ms.
    Batch,
    /// Writes durable at fsync.
    None,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    meta: Option<String>,
    session_timeout: Option<String>,
    store: Option<String>,
    #[serde(default)]
    store_options: std::collections::BTreeMap<String, String>,
    persister: Option<PersisterArg>,
    durability: Option<DurabilityArg>,
    cache_size: Option<String>,
    dirty_max: Option<String>,
    upload_delay: Option<String>,
    fsync_upload: Option<bool>,
    free_space_ratio: Option<f64>,
    writeback_cache: Option<bool>,
    allow_other: Option<bool>,
    xattr: Option<bool>,
    drain_timeout: Option<String>,
}

pub(super) fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn parse_size(what: &str, s: &str) -> anyhow::Result<u64> {
    let b: bytesize::ByteSize = s
        .parse()
        .map_err(|e| anyhow::anyhow!("{what}: {s:?} is not a size such as 512MiB: {e}"))?;
    Ok(b.as_u64())
}

pub(super) fn parse_duration(what: &str, s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s)
        .with_context(|| format!("{what}: {s:?} is not a duration such as 5s"))
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("slicefs"));
    }
    let home = std::env::var_os("HOME")
        .context("neither XDG_DATA_HOME nor HOME is set; pass --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/slicefs"))
}

fn ram_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kib| kib * 1024)
}

/// Everything `mount` runs with, resolved.
pub(super) struct Resolved {
    pub(super) options: FsOptions,
    metrics: Option<std::net::SocketAddr>,
    allow_other: bool,
    writeback_cache: bool,
    /// `writeback_cache` was asked for (not the default).
    writeback_cache_asked: bool,
    /// Extended attributes on or off; `None`: as the file system has them
    /// (`MountArgs::xattr`).
    xattr: Option<bool>,
    pub(super) drain_timeout: Duration,
}

/// A `--store` value as a URL: a path (absolute, or relative to the
/// current directory) is the `file://` URL of that directory; anything
/// with a scheme is kept as given.
pub(super) fn store_url(s: &str) -> anyhow::Result<String> {
    if s.contains("://") {
        return Ok(s.to_string());
    }
    let p = Path::new(s);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("--store: resolve a relative path")?
            .join(p)
    };
    url::Url::from_directory_path(&abs)
        .map(|u| u.to_string())
        .map_err(|()| anyhow::anyhow!("--store: {s:?} is neither a URL nor a usable path"))
}

/// The metadata store a `--meta` value names: `sqlite` or `sqlite://`
/// (the data directory's `meta.db`), `sqlite:///abs/path` (a database
/// file elsewhere, percent-decoded), or a `postgres://` URL.
///
/// # Errors
/// One line for any other value, a relative SQLite path, or a SQLite URL
/// with a host or query.
pub(super) fn meta_kind(meta: Option<&str>) -> anyhow::Result<MetaKind> {
    const HELP: &str = "give `sqlite` (the data directory's database, the default), \
                        sqlite:///absolute/path/meta.db, or a postgres://user@host:port/db URL";
    match meta {
        None | Some("sqlite" | "sqlite://") => Ok(MetaKind::Sqlite),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Ok(MetaKind::Postgres(u.to_string()))
        }
        Some(u) if u.starts_with("sqlite:") => {
            let url =
                url::Url::parse(u).map_err(|e| anyhow::anyhow!("--meta {u:?}: {e}; {HELP}"))?;
            if url.host_str().is_some_and(|h| !h.is_empty())
                || url.query().is_some()
                || url.fragment().is_some()
                || !u.starts_with("sqlite:///")
            {
                bail!(
                    "--meta {u:?}: a SQLite URL is sqlite:///absolute/path (no host, no query); {HELP}"
                );
            }
            let path = url
                .to_file_path()
                .map_err(|()| anyhow::anyhow!("--meta {u:?}: not a usable path; {HELP}"))?;
            if path.as_os_str().is_empty() || u.ends_with('/') {
                bail!("--meta {u:?}: name the database file, not a directory; {HELP}");
            }
            Ok(MetaKind::SqliteAt(path))
        }
        Some(u) => bail!("--meta {u:?}: {HELP}"),
    }
}

/// The FUSE options given on the command line (`slicefs serve`, `fsck`
/// and `gc` give none).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FuseFlags {
    pub(super) writeback_cache: Option<bool>,
    pub(super) allow_other: bool,
    pub(super) xattr: Option<bool>,
}

/// Resolves the file system options, and the FUSE ones given on the
/// command line, with the config file and the defaults.
pub(super) fn resolve(args: &FsArgs, flags: FuseFlags) -> anyhow::Result<Resolved> {
    let FuseFlags {
        writeback_cache,
        allow_other,
        xattr,
    } = flags;
    let file: ConfigFile = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("read config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("config file {}", p.display()))?
        }
        None => ConfigFile::default(),
    };
    let data_dir = match args.data_dir.clone().or(file.data_dir) {
        Some(d) => d,
        None => default_data_dir()?,
    };
    // Absolute: it is the mount's source in /proc/mounts, which `status`
    // and `umount --flush` read from other directories.
    let data_dir = std::path::absolute(&data_dir)
        .with_context(|| format!("--data-dir {}", data_dir.display()))?;
    let mut o = FsOptions::new(&data_dir);
    if let Some(url) = args.store.clone().or(file.store) {
        let mut s = StoreConfig::new(store_url(&url)?);
        s.options = file.store_options.into_iter().collect();
        s.options.extend(args.store_options.iter().cloned());
        o.store = Some(s);
    } else if !args.store_options.is_empty() || !file.store_options.is_empty() {
        if args.meta.is_none() && file.meta.is_none() {
            bail!("--store-option needs --store (or --meta, whose volume names the store)");
        }
        o.store_options = file.store_options.clone().into_iter().collect();
        o.store_options.extend(args.store_options.iter().cloned());
    }
    o.persister = match args
        .persister
        .or(file.persister)
        .unwrap_or(PersisterArg::Mmap)
    {
        PersisterArg::Mmap => PersisterKind::Mmap,
        PersisterArg::Null => PersisterKind::Null,
    };
    o.meta = meta_kind(args.meta.clone().or(file.meta).as_deref())?;
    o.wal = WalConfig {
        durability: match args
            .durability
            .or(file.durability)
            .unwrap_or(DurabilityArg::Batch)
        {
            DurabilityArg::Always => Durability::Always,
            DurabilityArg::Batch => Durability::Batch {
                max_delay: Duration::from_millis(5),
            },
            DurabilityArg::None => Durability::None,
        },
        ..WalConfig::default()
    };
    let cache_size = match args.cache_size.clone().or(file.cache_size) {
        Some(s) => parse_size("--cache-size", &s)?,
        None => (ram_bytes() / 4).clamp(64 << 20, 8 << 30),
    };
    let dirty_max = match args.dirty_max.clone().or(file.dirty_max) {
        Some(s) => parse_size("--dirty-max", &s)?,
        None => cache_size / 2,
    };
    if cache_size < (1 << 20) || dirty_max < (1 << 20) {
        bail!("--cache-size and --dirty-max must be at least 1MiB");
    }
    o.cache = CacheConfig {
        capacity_bytes: cache_size,
        dirty_max_bytes: dirty_max,
        ..CacheConfig::default()
    };
    if let Some(d) = args.upload_delay.clone().or(file.upload_delay) {
        o.transfer.upload_delay = parse_duration("--upload-delay", &d)?;
    }
    if args.tolerate_corruption {
        o.wal.recovery_mode = slicefs_wal::RecoveryMode::TolerateCorruption;
    }
    let free_space_ratio = args
        .free_space_ratio
        .or(file.free_space_ratio)
        .unwrap_or(0.0);
    if !(0.0..0.95).contains(&free_space_ratio) {
        bail!("--free-space-ratio {free_space_ratio}: give a fraction from 0 to 0.95");
    }
    o.vfs = VfsConfig {
        fsync_upload: args.fsync_upload || file.fsync_upload.unwrap_or(false),
        free_space_ratio,
        ..VfsConfig::default()
    };
    if let Some(t) = args.session_timeout.clone().or(file.session_timeout) {
        o.vfs.session_timeout = parse_duration("--session-timeout", &t)?;
        if o.vfs.session_timeout < Duration::from_secs(1) {
            bail!("--session-timeout {t}: give at least 1s");
        }
    }
    let drain_timeout = match args.drain_timeout.clone().or(file.drain_timeout) {
        Some(d) => parse_duration("--drain-timeout", &d)?,
        None => Duration::from_secs(600),
    };
    Ok(Resolved {
        options: o,
        metrics: args.metrics,
        allow_other: allow_other || file.allow_other.unwrap_or(false),
        writeback_cache: writeback_cache.or(file.writeback_cache).unwrap_or(true),
        writeback_cache_asked: writeback_cache.or(file.writeback_cache) == Some(true),
        xattr: xattr.or(file.xattr),
        drain_timeout,
    })
}

fn mounted(mountpoint: &Path) -> bool {
    let Ok(target) = mountpoint.canonicalize() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            s.lines().any(|l| {
                l.split(' ').nth(4).is_some_and(|m| Path::new(m) == target) && l.contains(" - fuse")
            })
        })
        .unwrap_or(false)
}

/// Refuses a mountpoint users would not expect to be mounted over: one
/// that is missing or not a directory (a regular file mounted gave EIO on
/// every stat), one that already is a mount point (stacked mounts, which
/// one `umount` then removed together), and a directory that is not empty
/// unless `allow_non_empty` (its files would be hidden silently).
///
/// # Errors
/// One line naming the mountpoint and the reason.
fn check_mountpoint(mp: &Path, allow_non_empty: bool) -> anyhow::Result<()> {
    let meta = match std::fs::metadata(mp) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mountpoint {0} is a mount whose process is gone (killed or crashed): \
             unmount it first (umount {0}); the data is safe in the data directory",
            mp.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("mountpoint {}", mp.display())),
    };
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mp.display());
    }
    if !mount_ids_at(mp).is_empty() {
        bail!(
            "mountpoint {} is already a mount point (unmount what is there first)",
            mp.display()
        );
    }
    let mut entries =
        std::fs::read_dir(mp).with_context(|| format!("mountpoint {}", mp.display()))?;
    if !allow_non_empty && entries.next().is_some() {
        bail!(
            "mountpoint {} is not empty (its files would be hidden; \
             --allow-non-empty mounts over it anyway)",
            mp.display()
        );
    }
    Ok(())
}

/// Runs `slicefs mount`.
///
/// # Errors
/// Bad options, an unusable store, a locked or corrupt data directory, a
/// failed mount.
pub fn mount(args: MountArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(
        &args.fs,
        FuseFlags {
            writeback_cache: args.writeback_cache,
            allow_other: args.allow_other,
            xattr: args.xattr,
        },
    )?;
    check_mountpoint(&args.mountpoint, args.allow_non_empty)?;
    if args.background {
        return background(&args, &r);
    }
    let nfs = args.nfs_listen.map(|addr| NfsFront {
        addr,
        squash_root: args.nfs_squash_root,
    });
    run(&r, Some(&args.mountpoint), nfs)
}

/// Runs `slicefs serve`: the file system over NFSv3 alone.
///
/// # Errors
/// As [`mount`], and an address that cannot be bound.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(&args.fs, FuseFlags::default())?;
    let nfs = NfsFront {
        addr: args.listen,
        squash_root: args.squash_root,
    };
    run(&r, None, Some(nfs))
}

/// The NFS front end to start.
struct NfsFront {
    addr: std::net::SocketAddr,
    squash_root: bool,
}

/// Opens the file system, serves it over FUSE at `mountpoint` and/or over
/// NFS until a signal (or, for FUSE, an unmount) ends it, then uploads
/// what is dirty (bounded by the drain timeout) and closes the log.
fn run(r: &Resolved, mountpoint: Option<&Path>, nfs: Option<NfsFront>) -> anyhow::Result<ExitCode> {
    if nfs.is_some() && matches!(r.options.meta, MetaKind::Postgres(_)) {
        bail!(
            "serving a shared (PostgreSQL) volume over NFS is not supported yet: an NFS WRITE \
             publishes the size before the data reaches the store other hosts read"
        );
    }
    let data_dir = r.options.data_dir.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)))
        .enable_all()
        .build()
        .context("start the runtime")?;
    let t = Instant::now();
    // A progress bar for large logs (on a terminal; hidden otherwise).
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "replaying the log {bar:40} {pos}/{len} records {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let opened = rt
        .block_on(open_fs_with_progress(
            &r.options,
            rt.handle(),
            move |done, total| {
                if total >= 100_000 && b.is_hidden() {
                    b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                b.set_length(total);
                b.set_position(done);
            },
        ))
        .map_err(|e| open_error(&data_dir, e))?;
    bar.finish_and_clear();
    tracing::info!(
        records = opened.replay.records,
        pending_bytes = opened.replay.pending_bytes,
        files = opened.replay.files_with_pending.len(),
        ms = t.elapsed().as_millis() as u64,
        "log replayed; pending data is being uploaded"
    );
    let vfs = opened.vfs.clone();
    let metrics_task = match r.metrics {
        Some(addr) => {
            let listener = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("listen for metrics on {addr}"))?;
            let at = listener.local_addr()?;
            eprintln!("slicefs: metrics at http://{at}/metrics");
            Some(rt.spawn(slicefs::metrics::serve(listener, vfs.clone())))
        }
        None => None,
    };
    let nfs_server = match nfs {
        Some(n) => {
            let config = slicefs::nfs::ServerConfig {
                squash_root: n.squash_root,
                ..slicefs::nfs::ServerConfig::default()
            };
            let server = rt
                .block_on(slicefs::nfs::Server::bind(vfs.clone(), n.addr, config))
                .with_context(|| format!("listen for NFS on {}", n.addr))?;
            let addr = server.local_addr();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = rt.spawn(server.serve(async move {
                let _ = stopped.await;
            }));
            eprintln!(
                "slicefs: serving {} over NFSv3 on {addr} \
                 (mount -t nfs -o vers=3,tcp,port={p},mountport={p},nolock {}:/ MOUNTPOINT)",
                data_dir.display(),
                addr.ip(),
                p = addr.port()
            );
            Some((addr, stop, task))
        }
        None => None,
    };
    let fuse = match mountpoint {
        Some(mp) => Some((
            mp,
            mount_fuse(r, &vfs, &data_dir, mp, nfs_server.is_some())?,
        )),
        None => None,
    };
    let status_where = match (mountpoint, &nfs_server) {
        (Some(mp), _) => mp.to_path_buf(),
        (None, Some((addr, _, _))) => PathBuf::from(format!("nfs://{addr}")),
        (None, None) => PathBuf::new(),
    };

    // Status, until the session ends or a signal comes.
    let status_dir = data_dir.clone();
    let status_at = status_where.clone();
    let tm = vfs.transfer().clone();
    let cache = vfs.cache().clone();
    let status_task = rt.spawn(async move {
        let mut last = (Instant::now(), 0u64);
        loop {
            let s = tm.stats();
            let rate = (s.upload_bytes.saturating_sub(last.1)) as f64
                / last.0.elapsed().as_secs_f64().max(0.001);
            last = (Instant::now(), s.upload_bytes);
            write_status(
                &status_dir,
                &Status {
                    pid: std::process::id(),
                    mountpoint: status_at.clone(),
                    dirty_bytes: cache.dirty_bytes(),
                    uploads_in_flight: s.uploads_in_flight,
                    uploads: s.uploads,
                    upload_rate: rate as u64,
                    oldest_dirty_age_s: s.oldest_dirty_age.map(|d| d.as_secs_f64()),
                    stalled_for_s: s.stalled_for.map(|d| d.as_secs_f64()),
                    last_error: s.last_error,
                    gc_pending: s.gc_pending,
                    state: "mounted".into(),
                    totals: {
                        let (requests, request_errors) = slicefs::metrics::request_totals();
                        let (read_bytes, written_bytes) = slicefs::metrics::byte_totals();
                        Totals {
                            requests,
                            request_errors,
                            read_bytes,
                            written_bytes,
                            upload_bytes: s.upload_bytes,
                            download_bytes: s.download_bytes,
                            block_cache_hits: s.block_cache_hits,
                        }
                    },
                },
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let fuse_ended = || fuse.as_ref().is_some_and(|(_, mount)| mount.is_finished());
    let signalled = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok::<bool, std::io::Error>(true),
                _ = term.recv() => return Ok(true),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if fuse_ended() {
                        return Ok(false);
                    }
                }
            }
        }
    })?;
    // A second signal exits at once: the data is safe in the log.
    rt.spawn(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("slicefs: second signal, exiting now; dirty data stays in the log");
        std::process::exit(130);
    });
    if let Some((addr, stop, task)) = nfs_server {
        eprintln!("slicefs: stopping the NFS server on {addr}");
        let _ = stop.send(());
        match rt.block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the NFS server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the NFS server task failed"),
        }
    }
    if let Some((mp, mount)) = fuse {
        if signalled {
            eprintln!("slicefs: unmounting {}", mp.display());
        }
        let ended = if signalled {
            mount.unmount_and_join()
        } else {
            mount.join_ended()
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, "unmount: trying a lazy unmount");
            let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    status_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    // Every namespace change durable, unlinked files freed.
    if let Err(e) = vfs.syncfs() {
        tracing::error!(error = %e, "final metadata sync failed");
    }
    eprintln!(
        "slicefs: uploading dirty data ({})",
        bytesize::ByteSize(vfs.cache().dirty_bytes())
    );
    // Progress once a second: on stderr, and in status.json for
    // `slicefs umount --flush`.
    let tm = vfs.transfer().clone();
    let mut last = Instant::now();
    let draining = |dirty_bytes: u64, uploads_in_flight: u64, state: &str| Status {
        pid: std::process::id(),
        mountpoint: status_where.clone(),
        dirty_bytes,
        uploads_in_flight,
        uploads: 0,
        upload_rate: 0,
        oldest_dirty_age_s: None,
        stalled_for_s: None,
        last_error: None,
        gc_pending: 0,
        state: state.into(),
        totals: Totals::default(),
    };
    let drained = rt.block_on(async {
        let r = tm
            .drain_with_progress(r.drain_timeout, |p| {
                if last.elapsed() >= Duration::from_secs(1) {
                    last = Instant::now();
                    eprintln!(
                        "slicefs: uploading: {} left, {} uploads in flight",
                        bytesize::ByteSize(p.dirty_bytes),
                        p.uploads_in_flight
                    );
                    write_status(
                        &data_dir,
                        &draining(p.dirty_bytes, p.uploads_in_flight, "draining"),
                    );
                }
            })
            .await;
        tm.shutdown().await;
        r
    });
    opened
        .persister
        .close()
        .context("close the write-ahead log")?;
    if let Err(e) = vfs.meta().end_session() {
        tracing::warn!(error = %e, "could not end this host's session (others clean it up once it times out)");
    }
    match drained {
        Ok(()) => {
            let _ = std::fs::remove_file(data_dir.join("status.json"));
            // Everything is in the object store: the next start needs no
            // log (it may be wiped).
            if let Err(e) = vfs.meta().forget_log() {
                tracing::warn!(error = %e, "could not record that the log is no longer needed");
            }
            eprintln!("slicefs: unmounted; everything is in the object store");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let left = vfs.cache().dirty_bytes();
            // What `umount --flush` reports after this process is gone.
            write_status(&data_dir, &draining(left, 0, "stopped"));
            eprintln!(
                "slicefs: unmounted with dirty data left: {}",
                left_in_log(left, &e)
            );
            Ok(ExitCode::from(super::EXIT_ERROR))
        }
    }
}

/// Mounts `vfs` with FUSE at `mp` (which held no mount before:
/// `check_mountpoint`). With `nfs_too` the NFS server changes the same
/// VFS behind the kernel: short TTLs, no page cache kept across opens, no
/// write-back cache ([`FuseFs::with_other_writers`]).
fn mount_fuse(
    r: &Resolved,
    vfs: &std::sync::Arc<slicefs::vfs::Vfs>,
    data_dir: &Path,
    mp: &Path,
    nfs_too: bool,
) -> anyhow::Result<FuseMount> {
    // Other hosts (a shared volume) change the namespace behind the
    // kernel too; `close` then uploads (FuseFs::flush), which the kernel's
    // write-back cache would defer.
    let others = nfs_too || vfs.is_shared();
    if vfs.is_shared() && r.writeback_cache && r.writeback_cache_asked {
        tracing::warn!(
            "a shared volume is mounted without the write-back cache (close-to-open consistency)"
        );
    }
    let xattr = r.xattr.unwrap_or_else(|| vfs.xattrs_exist());
    if !xattr {
        tracing::info!("extended attributes are off (--xattr to turn them on)");
    }
    let fs = FuseFs::new(vfs.clone())
        .with_writeback_cache(r.writeback_cache && !others)
        .with_other_writers(others)
        .with_xattr(xattr);
    let notifier_slot = fs.notifier_slot();
    let mount = fuse_mount::mount(
        fs,
        mp,
        &MountSpec {
            source: data_dir,
            allow_other: r.allow_other,
        },
    )?;
    // st_blocks follows the block map: once a file's block is committed,
    // the kernel's cached attributes (60 s TTL) are stale. Offset -1
    // invalidates the attributes only, not the page cache.
    let notifier = mount.notifier();
    let _ = notifier_slot.set(notifier.clone());
    vfs.transfer().on_commit(move |file| {
        let _ = notifier.inval_inode(fuser::INodeNo(file.0), -1, 0);
    });
    eprintln!(
        "slicefs: mounted {} at {}",
        data_dir.display(),
        mp.display()
    );
    Ok(mount)
}

/// The line for a drain that stopped with `left` bytes not uploaded.
fn left_in_log(left: u64, why: &dyn std::fmt::Display) -> String {
    format!(
        "{} remain only in the local log ({why}); they are safe there and \
         are uploaded at the next mount of this data directory",
        bytesize::ByteSize(left)
    )
}

fn background(args: &MountArgs, r: &Resolved) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&r.options.data_dir)
        .with_context(|| format!("create {}", r.options.data_dir.display()))?;
    let log_path = r.options.data_dir.join("slicefs.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("find the slicefs binary")?;
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--background")
        .collect();
    argv.push("--foreground".into());
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(exe)
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start the mount process")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    // Only a mount that was not there before is the child's: another
    // process may mount at the same path meanwhile.
    let before = mount_ids_at(&args.mountpoint);
    loop {
        let now_there = mount_ids_at(&args.mountpoint);
        if now_there.iter().any(|id| !before.contains(id))
            && mounted(&args.mountpoint)
            && child.try_wait()?.is_none()
        {
            println!(
                "slicefs: mounted at {} (pid {})",
                args.mountpoint.display(),
                child.id()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            bail!(
                "the mount process exited ({status}) before mounting; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!("not mounted after 120 s; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The error of opening the file system in `data_dir`, with the process
/// that holds it named when the data directory is in use (its metadata
/// database or log is locked by a running mount or server).
pub(super) fn open_error(data_dir: &Path, e: slicefs::error::FsError) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("database is locked") || text.contains("locked by another process") {
        let holder = read_status(data_dir)
            .ok()
            .filter(|s| alive(s.pid))
            .map(|s| {
                format!(
                    " by slicefs pid {} ({}); stop it first (slicefs umount {})",
                    s.pid,
                    s.mountpoint.display(),
                    s.mountpoint.display()
                )
            })
            .unwrap_or_else(|| " by another process".into());
        return anyhow::anyhow!("data directory {} is in use{holder}", data_dir.display());
    }
    anyhow::Error::new(e).context(format!("open the file system in {}", data_dir.display()))
}

/// Runs `slicefs umount`.
///
/// # Errors
/// Not mounted, busy, not permitted.
pub fn umount(args: UmountArgs) -> anyhow::Result<ExitCode> {
    let dir = data_dir_of(&args.mountpoint)?;
    let status = read_status(&dir).ok();
    nix::mount::umount2(&args.mountpoint, nix::mount::MntFlags::empty())
        .with_context(|| format!("unmount {}", args.mountpoint.display()))?;
    if !args.flush {
        println!(
            "slicefs: unmounted {}; uploads finish in the background",
            args.mountpoint.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(status) = status else {
        println!("slicefs: unmounted (no status found to follow the uploads)");
        return Ok(ExitCode::SUCCESS);
    };
    let bar = indicatif::ProgressBar::new(status.dirty_bytes.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = status.dirty_bytes;
    while alive(status.pid) {
        if let Ok(s) = read_status(&dir) {
            bar.set_position(start.saturating_sub(s.dirty_bytes));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish();
    // The mount process leaves a status only when it stopped with data
    // not uploaded.
    if let Ok(s) = read_status(&dir)
        && s.state == "stopped"
        && s.dirty_bytes > 0
    {
        eprintln!(
            "slicefs: unmounted {}, but {}",
            args.mountpoint.display(),
            left_in_log(s.dirty_bytes, &"the upload did not finish")
        );
        return Ok(ExitCode::from(super::EXIT_ERROR));
    }
    println!(
        "slicefs: unmounted {}; everything uploaded",
        args.mountpoint.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        m: MountArgs,
    }

    #[test]
    fn meta_urls_name_sqlite_files_and_postgres() {
        assert_eq!(meta_kind(None).unwrap(), MetaKind::Sqlite);
        assert_eq!(meta_kind(Some("sqlite")).unwrap(), MetaKind::Sqlite);
        assert_eq!(
            meta_kind(Some("sqlite:///var/lib/slicefs%20db/m.db")).unwrap(),
            MetaKind::SqliteAt(PathBuf::from("/var/lib/slicefs db/m.db"))
        );
        assert_eq!(
            meta_kind(Some("postgres://u@127.0.0.1:5432/v")).unwrap(),
            MetaKind::Postgres("postgres://u@127.0.0.1:5432/v".into())
        );
        for bad in [
            "sqlite://host/m.db",
            "sqlite:relative.db",
            "sqlite:///dir/",
            "sqlite:///m.db?mode=ro",
            "mysql://x",
        ] {
            let e = format!("{:#}", meta_kind(Some(bad)).unwrap_err());
            assert!(e.contains(bad) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn precedence_is_command_line_then_config_file_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "data_dir = \"/from/file\"\ncache_size = \"256MiB\"\nupload_delay = \"2s\"\ndurability = \"always\"\n",
        )
        .unwrap();
        let t = T::parse_from([
            "x",
            "/mnt",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            "/from/cli",
        ]);
        let r = resolve(&t.m.fs, FuseFlags::default()).unwrap();
        assert_eq!(r.options.data_dir, PathBuf::from("/from/cli"));
        assert_eq!(r.options.cache.capacity_bytes, 256 << 20);
        assert_eq!(r.options.cache.dirty_max_bytes, 128 << 20);
        assert_eq!(r.options.transfer.upload_delay, Duration::from_secs(2));
        assert_eq!(r.options.wal.durability, Durability::Always);
    }

    #[test]
    fn flags_from_the_environment_take_1_yes_and_true() {
        for v in ["1", "yes", "true", "on"] {
            // SAFETY: no other thread of this test binary reads this
            // variable (it is set and read here only).
            unsafe { std::env::set_var("SLICEFS_NFS_SQUASH_ROOT", v) };
            let t = ServeT::try_parse_from(["x", "--data-dir", "/d"]).unwrap();
            assert!(t.s.squash_root, "{v}");
        }
        // SAFETY: as above.
        unsafe { std::env::set_var("SLICEFS_NFS_SQUASH_ROOT", "0") };
        let t = ServeT::try_parse_from(["x", "--data-dir", "/d"]).unwrap();
        assert!(!t.s.squash_root);
        // SAFETY: as above.
        unsafe { std::env::remove_var("SLICEFS_NFS_SQUASH_ROOT") };
    }

    #[derive(Parser)]
    struct ServeT {
        #[command(flatten)]
        s: ServeArgs,
    }

    #[test]
    fn a_relative_data_dir_is_made_absolute() {
        let t = T::parse_from(["x", "/mnt", "--data-dir", "rel/dir"]);
        let r = resolve(&t.m.fs, FuseFlags::default()).unwrap();
        assert_eq!(
            r.options.data_dir,
            std::env::current_dir().unwrap().join("rel/dir")
        );
    }

    #[test]
    fn a_store_given_as_a_path_is_a_file_url() {
        let t = T::parse_from(["x", "/mnt", "--data-dir", "/d", "--store", "/srv/blocks"]);
        let r = resolve(&t.m.fs, FuseFlags::default()).unwrap();
        assert_eq!(r.options.store.unwrap().url, "file:///srv/blocks/");
        let t = T::parse_from(["x", "/mnt", "--data-dir", "/d", "--store", "s3://b/p"]);
        let r = resolve(&t.m.fs, FuseFlags::default()).unwrap();
        assert_eq!(r.options.store.unwrap().url, "s3://b/p");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let t = T::parse_from(["x", "/mnt", "--data-dir", "/d", "--cache-size", "lots"]);
        let e = resolve(&t.m.fs, FuseFlags::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--cache-size"), "{e}");
        let t = T::parse_from(["x", "/mnt", "--data-dir", "/d", "--upload-delay", "soon"]);
        assert!(resolve(&t.m.fs, FuseFlags::default()).is_err());
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
        let t = T::parse_from(["x", "/mnt", "--config", cfg.to_str().unwrap()]);
        assert!(
            resolve(&t.m.fs, FuseFlags::default()).is_err(),
            "unknown config keys are refused"
        );
    }
}

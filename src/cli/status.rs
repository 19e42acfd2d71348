//! `slicefs status` and what it reads: the `status.json` a running mount
//! rewrites every second (atomically) in its data directory, and the
//! data directory behind a mountpoint.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

/// `slicefs status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A mountpoint or a data directory.
    pub target: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a mounted file system reports in `status.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// The mount process.
    pub pid: u32,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Bytes not yet in the object store.
    pub dirty_bytes: u64,
    /// Uploads in progress.
    pub uploads_in_flight: u64,
    /// Blocks uploaded since the mount.
    pub uploads: u64,
    /// Upload rate over the last second, bytes per second.
    pub upload_rate: u64,
    /// Age of the oldest dirty data, seconds.
    pub oldest_dirty_age_s: Option<f64>,
    /// How long requests have been failing, seconds.
    pub stalled_for_s: Option<f64>,
    /// The last store error.
    pub last_error: Option<String>,
    /// Replaced blocks waiting for deletion.
    pub gc_pending: u64,
    /// `mounted`, `draining` or `stopped`.
    pub state: String,
    /// Cumulative counters since the mount, for `slicefs stats` (absent
    /// in a status written by an older slicefs, or while draining).
    #[serde(default)]
    pub totals: Totals,
}

/// Counters since the mount started (see [`Status::totals`]).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    /// FUSE requests and NFS calls.
    pub requests: u64,
    /// Those that failed.
    pub request_errors: u64,
    /// Bytes read through the VFS.
    pub read_bytes: u64,
    /// Bytes written through the VFS.
    pub written_bytes: u64,
    /// Bytes uploaded to the store.
    pub upload_bytes: u64,
    /// Bytes downloaded from the store.
    pub download_bytes: u64,
    /// Block reads served by the block cache.
    pub block_cache_hits: u64,
}

pub(super) fn write_status(dir: &Path, s: &Status) {
    let tmp = dir.join("status.json.tmp");
    let body = serde_json::to_vec_pretty(s).unwrap_or_default();
    if std::fs::write(&tmp, body).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("status.json"));
    }
}

/// The data directory behind a mountpoint (the mount's source), or the
/// argument itself if it is a data directory.
pub(super) fn data_dir_of(target: &Path) -> anyhow::Result<PathBuf> {
    if target.join("status.json").exists() || target.join("meta.db").exists() {
        return Ok(target.to_path_buf());
    }
    let want = target
        .canonicalize()
        .with_context(|| format!("{}", target.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.get(4).is_some_and(|m| Path::new(m) == want)
            && f.get(dash + 1).is_some_and(|t| t.starts_with("fuse"))
            && let Some(src) = f.get(dash + 2)
        {
            return Ok(PathBuf::from(src.replace("\\040", " ")));
        }
    }
    bail!(
        "{} is neither a slicefs mountpoint nor a data directory",
        target.display()
    )
}

pub(super) fn read_status(dir: &Path) -> anyhow::Result<Status> {
    let text = std::fs::read_to_string(dir.join("status.json"))
        .with_context(|| format!("no status in {} (is it mounted?)", dir.display()))?;
    // A crash or power loss can leave the file empty or cut short: the
    // mount that wrote it is gone (a running mount rewrites it every
    // second, atomically).
    serde_json::from_str(&text).map_err(|_| {
        anyhow::anyhow!(
            "nothing is mounted from {}: its status.json is empty or damaged, \
             as a crash or power loss leaves it",
            dir.display()
        )
    })
}

pub(super) fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `slicefs status`.
///
/// # Errors
/// Not a mountpoint or data directory; no status.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let dir = data_dir_of(&args.target)?;
    let s = read_status(&dir)?;
    let text = status_text(&dir, s, args.json)?;
    // A reader that went away (`slicefs status | head -3`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("write the status"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// What `slicefs status` prints.
fn status_text(dir: &Path, s: Status, json: bool) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    if !alive(s.pid) {
        bail!(
            "the mount process {} is gone; nothing is mounted from {}",
            s.pid,
            dir.display()
        );
    }
    let mut out = String::new();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(out);
    }
    writeln!(out, "data dir          {}", dir.display())?;
    writeln!(out, "mountpoint        {}", s.mountpoint.display())?;
    writeln!(out, "pid               {}", s.pid)?;
    writeln!(
        out,
        "dirty bytes       {}",
        bytesize::ByteSize(s.dirty_bytes)
    )?;
    writeln!(out, "uploads in flight {}", s.uploads_in_flight)?;
    writeln!(out, "uploads           {}", s.uploads)?;
    writeln!(
        out,
        "upload rate       {}/s",
        bytesize::ByteSize(s.upload_rate)
    )?;
    writeln!(
        out,
        "oldest dirty      {}",
        s.oldest_dirty_age_s
            .map_or("-".into(), |a| format!("{a:.1} s"))
    )?;
    if let Some(st) = s.stalled_for_s {
        writeln!(
            out,
            "STALLED           {st:.0} s: {}",
            s.last_error.unwrap_or_default()
        )?;
    }
    Ok(out)
}

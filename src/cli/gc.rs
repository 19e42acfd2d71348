//! `slicefs gc`: deletes block objects that no metadata references.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use slicefs::vfs::open_fs;

use super::mount::{FsArgs, FuseFlags, open_error, parse_duration, resolve};

/// `slicefs gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only count what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep unreferenced objects younger than this (`1h`, `10min`): an
    /// upload of a running mount may be about to commit them.
    #[arg(long, default_value = "1h")]
    pub grace: String,
    #[command(flatten)]
    pub fs: FsArgs,
}

/// Runs `slicefs gc` on a data directory that is not mounted (its lock
/// refuses a second process): opens the file system (replaying the log),
/// lists the store, deletes each object that committed metadata does not
/// reference and that is older than `--grace` (after making metadata
/// durable), prints one line, then uploads what the log held and closes.
/// Such objects are left by a crash between an upload and its commit, and
/// by deletions still queued when a mount stopped.
///
/// # Errors
/// Bad options, a mounted (locked) or damaged data directory, store
/// errors.
pub fn gc(args: GcArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(&args.fs, FuseFlags::default())?;
    if matches!(r.options.meta, slicefs::vfs::MetaKind::Postgres(_)) {
        anyhow::bail!(
            "slicefs gc does not run on a shared (PostgreSQL) volume yet: other hosts may be \
             uploading or holding files"
        );
    }
    let grace = parse_duration("--grace", &args.grace)?;
    let (rt, opened) = open_offline(&r.options)?;
    let tm = opened.vfs.transfer().clone();
    let report = rt
        .block_on(tm.sweep_orphans_with(grace, args.dry_run))
        .context("garbage collection")?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    println!(
        "slicefs gc: {} objects listed; {verb} {} unreferenced; kept {} unreferenced younger than {}",
        report.listed,
        report.deleted,
        report.young,
        humantime::format_duration(grace)
    );
    if !close_offline(&rt, opened, r.drain_timeout, "gc")? {
        return Ok(ExitCode::from(super::EXIT_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts an offline command (`gc`, `fsck`): a runtime, and the file
/// system opened (the log replayed) with `options`.
///
/// # Errors
/// The runtime cannot start; the data directory is mounted (locked) or
/// cannot be opened.
pub(super) fn open_offline(
    options: &slicefs::vfs::FsOptions,
) -> anyhow::Result<(tokio::runtime::Runtime, slicefs::vfs::OpenedFs)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the runtime")?;
    let opened = rt
        .block_on(open_fs(options, rt.handle()))
        .map_err(|e| open_error(&options.data_dir, e))?;
    Ok((rt, opened))
}

/// Ends an offline command (`gc`, `fsck`) on an opened file system:
/// uploads what the log held (waiting at most `drain_timeout`, at least
/// 1 s) and closes the log. `false` (after one line on stderr) if not
/// everything was uploaded: it stays safe in the log.
///
/// # Errors
/// Closing the log failed.
pub(super) fn close_offline(
    rt: &tokio::runtime::Runtime,
    opened: slicefs::vfs::OpenedFs,
    drain_timeout: Duration,
    command: &str,
) -> anyhow::Result<bool> {
    let tm = opened.vfs.transfer().clone();
    let drained = rt.block_on(tm.close(drain_timeout.max(Duration::from_secs(1))));
    opened
        .persister
        .close()
        .context("close the write-ahead log")?;
    if let Err(e) = drained {
        eprintln!(
            "slicefs {command}: data the log held is not all uploaded ({e}); it stays safe in the log"
        );
        return Ok(false);
    }
    Ok(true)
}

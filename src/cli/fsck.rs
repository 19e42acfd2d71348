//! `slicefs fsck`: checks metadata against itself and against the store.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::gc::{close_offline, open_offline};
use super::mount::{FsArgs, FuseFlags, resolve};
use anyhow::Context;
use clap::Args;
use slicefs::meta::{BlockAddr, BlockMap, Problem};

/// Problem lines printed before the rest is only counted.
const MAX_LINES: usize = 200;

/// `slicefs fsck`.
#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Repair what can be repaired without guessing (dangling dentries,
    /// stray block map rows, link counts, parent fields; unreachable
    /// inodes go to /lost+found).
    #[arg(long)]
    pub repair: bool,
    #[command(flatten)]
    pub fs: FsArgs,
}

/// Runs `slicefs fsck` on a data directory that is not mounted: opens the
/// file system (replaying the log), checks the namespace
/// (`MetaStore::check_namespace`, repairing with `--repair`), lists the
/// store and reports every referenced object that is missing, by file
/// path (not repairable: those bytes read as errors), and counts the
/// objects nobody references (`slicefs gc` deletes them). Then uploads
/// what the log held and closes.
///
/// Exit status: 0 nothing wrong; 1 problems found and all repaired; 2
/// problems left (run with `--repair`, or not repairable); 3 fsck could
/// not run.
///
/// # Errors
/// Bad options, a mounted (locked) or unreadable data directory, store
/// errors.
pub fn fsck(args: FsckArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(&args.fs, FuseFlags::default())?;
    if matches!(r.options.meta, slicefs::vfs::MetaKind::Postgres(_)) {
        anyhow::bail!(
            "slicefs fsck does not run on a shared (PostgreSQL) volume yet: other hosts may be \
             uploading or holding files"
        );
    }
    let (rt, opened) = open_offline(&r.options)?;
    let meta = opened.vfs.meta();
    let check = meta
        .check_namespace(args.repair)
        .context("check the namespace")?;
    let mut problems = check.problems;
    let listed = rt
        .block_on(opened.vfs.transfer().list_objects())
        .context("list the block store")?;
    let doomed: HashSet<_> = meta
        .doomed()
        .context("read the doomed list")?
        .into_iter()
        .collect();
    let in_store: HashSet<_> = listed.iter().map(|(k, _)| *k).collect();
    let referenced: HashSet<_> = check.referenced.iter().map(|(k, _)| *k).collect();
    for (key, path) in &check.referenced {
        if !in_store.contains(key) {
            problems.push(Problem {
                what: format!(
                    "{path}: block at byte {} missing from the store (object {key}); \
                     reads of it fail with EIO",
                    BlockAddr {
                        file: key.file,
                        chunk: key.chunk,
                        block: key.block,
                    }
                    .file_offset()
                ),
                repaired: false,
            });
        }
    }
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let (mut stray, mut stray_old) = (0u64, 0u64);
    for (key, modified) in &listed {
        if !referenced.contains(key) && !doomed.contains(key) {
            stray += 1;
            stray_old += u64::from(*modified < hour_ago);
        }
    }

    println!(
        "slicefs fsck: {} inodes, {} dentries, {} referenced objects, {} objects in the store",
        check.inodes,
        check.dentries,
        referenced.len(),
        listed.len()
    );
    for p in problems.iter().take(MAX_LINES) {
        let tag = if p.repaired { "repaired" } else { "problem" };
        println!("{tag}: {}", p.what);
    }
    if problems.len() > MAX_LINES {
        println!("... and {} more", problems.len() - MAX_LINES);
    }
    if stray > 0 {
        println!(
            "note: {stray} objects nobody references ({stray_old} older than 1 h: `slicefs gc` deletes them)"
        );
    }
    if !doomed.is_empty() {
        println!(
            "note: {} dropped objects are queued for deletion",
            doomed.len()
        );
    }
    let left = problems.iter().filter(|p| !p.repaired).count();
    let summary = match (problems.len(), left) {
        (0, _) => "no problems".to_string(),
        (n, 0) => format!("{n} problems, all repaired"),
        (n, l) if args.repair => format!("{n} problems, {l} not repairable"),
        (n, _) => format!("{n} problems; run with --repair to repair what can be"),
    };
    println!("slicefs fsck: {summary}");
    if !close_offline(&rt, opened, r.drain_timeout, "fsck")? {
        return Ok(ExitCode::from(super::EXIT_ERROR));
    }
    Ok(ExitCode::from(match (problems.len(), left) {
        (0, _) => 0,
        (_, 0) => 1,
        _ => 2,
    }))
}

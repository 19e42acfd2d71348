//! `slicefs stats`: a live view of a mounted file system, one line per
//! interval, from the counters its `status.json` carries (as
//! `juicefs stats` or `vmstat` show theirs).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::mount::parse_duration;
use super::status::{Status, Totals, alive, data_dir_of, read_status};

/// `slicefs stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// A mountpoint or a data directory.
    pub target: PathBuf,
    /// Time between lines (`1s`, `500ms`; the mount refreshes its
    /// counters every second).
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// Stop after this many lines (default: until interrupted or the
    /// mount ends).
    #[arg(long)]
    pub count: Option<u64>,
}

const HEADER: &str = "    ops/s   err/s   read/s  write/s    dirty  upload/s download/s  hits/s  up-in-flight  gc-pending";

/// Runs `slicefs stats`: prints a header, then every interval the rates
/// over it (requests, failed requests, bytes read and written through
/// the file system, bytes uploaded and downloaded, block cache hits) and
/// the current dirty bytes, uploads in flight and deletions pending.
/// Ends quietly when the reader goes away (`| head`) or the mount ends.
///
/// # Errors
/// Not a mountpoint or data directory; nothing mounted there.
pub fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let interval = parse_duration("--interval", &args.interval)?;
    if interval.is_zero() {
        anyhow::bail!("--interval must be more than 0");
    }
    let dir = data_dir_of(&args.target)?;
    let mut prev = read_status(&dir)?;
    if !alive(prev.pid) {
        anyhow::bail!(
            "nothing is mounted from {} (the mount process {} is gone)",
            dir.display(),
            prev.pid
        );
    }
    let mut out = std::io::stdout().lock();
    let mut write = |line: &str| match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("write the stats"),
        Ok(()) => Ok(true),
    };
    if !write(HEADER)? {
        return Ok(ExitCode::SUCCESS);
    }
    let mut at = Instant::now();
    let mut lines = 0;
    while args.count.is_none_or(|c| lines < c) {
        std::thread::sleep(interval);
        let Ok(now) = read_status(&dir) else { break };
        if !alive(now.pid) {
            break;
        }
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        if !write(&line(&prev, &now, secs))? {
            break;
        }
        prev = now;
        lines += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// One line: rates between `a` and `b`, `secs` apart, and `b`'s gauges.
fn line(a: &Status, b: &Status, secs: f64) -> String {
    let rate = |f: fn(&Totals) -> u64| f(&b.totals).saturating_sub(f(&a.totals)) as f64 / secs;
    let bytes = |f: fn(&Totals) -> u64| human(rate(f));
    format!(
        "{:>9.0} {:>7.0} {:>8} {:>8} {:>8} {:>9} {:>10} {:>7.0} {:>13} {:>11}",
        rate(|t| t.requests),
        rate(|t| t.request_errors),
        bytes(|t| t.read_bytes),
        bytes(|t| t.written_bytes),
        human(b.dirty_bytes as f64),
        bytes(|t| t.upload_bytes),
        bytes(|t| t.download_bytes),
        rate(|t| t.block_cache_hits),
        b.uploads_in_flight,
        b.gc_pending
    )
}

/// `n` bytes, short: `0`, `512B`, `1.2K`, `34M`, `5.6G` (powers of 1024).
fn human(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    if n < 0.5 {
        return "0".into();
    }
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v < 10.0 && u > 0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0.0), "0");
        assert_eq!(human(512.0), "512B");
        assert_eq!(human(1536.0), "1.5K");
        assert_eq!(human(34.0 * 1024.0 * 1024.0), "34M");
        assert_eq!(human(5.6 * 1024.0 * 1024.0 * 1024.0), "5.6G");
    }

    #[test]
    fn a_line_shows_rates_over_the_interval() {
        let status = |requests, written_bytes| Status {
            pid: 1,
            mountpoint: PathBuf::from("/mnt"),
            dirty_bytes: 3 << 20,
            uploads_in_flight: 2,
            uploads: 0,
            upload_rate: 0,
            oldest_dirty_age_s: None,
            stalled_for_s: None,
            last_error: None,
            gc_pending: 7,
            state: "mounted".into(),
            totals: Totals {
                requests,
                written_bytes,
                ..Totals::default()
            },
        };
        let l = line(&status(100, 0), &status(300, 20 << 20), 2.0);
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            cols,
            ["100", "0", "0", "10M", "3.0M", "0", "0", "0", "2", "7"]
        );
        assert_eq!(HEADER.split_whitespace().count(), cols.len());
    }
}

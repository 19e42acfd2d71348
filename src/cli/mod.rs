//! The command line of the `slicefs` binary: the clap definitions, the
//! logging set-up and the dispatch to one module per command group.
//!
//! Each command group is a variant of [`Command`] with its own module
//! (`wal`; `mount` for `mount`, `umount` and `status`). Commands return the process exit code; errors they
//! cannot express as an exit code go up as [`anyhow::Error`] and end the
//! process with [`EXIT_ERROR`].

mod fsck;
mod gc;
mod mount;
mod stats;
mod wal;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Exit code for an error that stopped a command (a missing directory, a
/// directory that is not a log, an I/O error).
pub const EXIT_ERROR: u8 = 3;
/// Exit code for a command line that does not parse (clap's own 2 would
/// collide with `wal verify`'s "corruption").
pub const EXIT_USAGE: u8 = 64;

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0   success
  1   `wal verify`: the log ends in a torn tail; `fsck`: problems found,
      all repaired
  2   `wal verify`: the log is corrupt; `fsck`: problems left
  3   error (missing directory, not a log, I/O error, ...; `umount --flush`
      and the mount process: the drain timed out, data is left in the log)
  64  bad command line";

/// `slicefs`: a POSIX file system over an object store, with a crash-safe
/// write-back cache.
#[derive(Debug, Parser)]
#[command(name = "slicefs", version, about, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// Least severe log messages to print (to stderr). The `RUST_LOG`
    /// environment variable, when set, overrides this with full
    /// `tracing` filter directives.
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Warn)]
    pub log_level: LogLevel,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a file system with FUSE (see `slicefs mount --help`).
    Mount(mount::MountArgs),
    /// Serve a file system over NFSv3 (see `slicefs serve --help`).
    Serve(mount::ServeArgs),
    /// Delete block objects no metadata references (not while mounted).
    Gc(gc::GcArgs),
    /// Check metadata against itself and the store; `--repair` (not
    /// while mounted).
    Fsck(fsck::FsckArgs),
    /// Unmount; with `--flush`, wait until everything is uploaded.
    Umount(mount::UmountArgs),
    /// Dirty bytes, uploads and stalls of a mounted file system.
    Status(mount::StatusArgs),
    /// A live view of a mounted file system: a line of rates per second.
    Stats(stats::StatsArgs),
    /// Read-only tools for a write-ahead log directory.
    #[command(subcommand)]
    Wal(wal::WalCommand),
}

/// Log levels accepted by `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Also progress information.
    Info,
    /// Also debugging detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Sends `tracing` events to stderr, filtered by `RUST_LOG` when it is set
/// and valid, else by `level`.
pub fn init_tracing(level: LogLevel) {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(&s).unwrap_or_else(|_| EnvFilter::new(level.directive()))
        }
        _ => EnvFilter::new(level.directive()),
    };
    // A subscriber set already (by a test harness) is left in place.
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the parsed command and returns the process exit code.
///
/// # Errors
/// Whatever stopped the command, with context for the user.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Wal(cmd) => wal::run(cmd),
        Command::Mount(a) => mount::mount(a),
        Command::Serve(a) => mount::serve(a),
        Command::Gc(a) => gc::gc(a),
        Command::Fsck(a) => fsck::fsck(a),
        Command::Stats(a) => stats::stats(a),
        Command::Umount(a) => mount::umount(a),
        Command::Status(a) => mount::status(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn log_level_is_global_and_defaults_to_warn() {
        let cli = Cli::try_parse_from(["slicefs", "wal", "verify", "/x"]).unwrap();
        assert_eq!(cli.log_level, LogLevel::Warn);
        let cli = Cli::try_parse_from(["slicefs", "wal", "verify", "/x", "--log-level", "debug"])
            .unwrap();
        assert_eq!(cli.log_level, LogLevel::Debug);
    }
}

//! The command line of the `slicefs` binary: the clap definitions, the
//! logging set-up and the dispatch to one module per command group.
//!
//! Each command group is a variant of [`Command`] with its own module
//! (`wal`; `mount` for `mount`, `serve` and `umount`; `status`, `stats`, `gc`, `fsck`). Commands return the process exit code; errors they
//! cannot express as an exit code go up as [`anyhow::Error`] and end the
//! process with [`EXIT_ERROR`].

pub mod error_line;
mod format;
mod fsck;
mod fuse_mount;
mod gc;
mod mount;
mod stats;
mod status;
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
    /// Make a shared volume: PostgreSQL metadata and a block store for
    /// several hosts (see `slicefs format --help`).
    Format(format::FormatArgs),
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
    Status(status::StatusArgs),
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

/// Sends `tracing` events (and `log` records of libraries, such as
/// fuser's) to stderr, filtered by `RUST_LOG` when it is set and valid,
/// else by `level`; below `debug`, without [`InterruptedReplies`].
pub fn init_tracing(level: LogLevel) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(&s).unwrap_or_else(|_| EnvFilter::new(level.directive()))
        }
        _ => EnvFilter::new(level.directive()),
    };
    let debug = filter
        .max_level_hint()
        .is_none_or(|l| l >= tracing::level_filters::LevelFilter::DEBUG);
    // A subscriber set already (by a test harness) is left in place.
    use std::io::IsTerminal;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter)
        .with_filter(InterruptedReplies { keep: debug });
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Drops fuser's `Failed to send FUSE reply: ... (os error 2)` unless
/// `keep`: the kernel answers `ENOENT` to a reply whose request was
/// interrupted (the caller got `EINTR` or was killed), which is normal
/// and not the daemon's error. Any other failed reply still shows.
struct InterruptedReplies {
    keep: bool,
}

impl<S: tracing::Subscriber> tracing_subscriber::layer::Filter<S> for InterruptedReplies {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if self.keep || *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        let mut fields = ReplyFields::default();
        event.record(&mut fields);
        !(fields.is_fuser_reply(event.metadata().target()) && fields.interrupted())
    }
}

/// The fields of an event that [`InterruptedReplies`] looks at.
#[derive(Default)]
struct ReplyFields {
    message: String,
    /// The `log` crate's target, for records bridged from `log`.
    log_target: String,
}

impl ReplyFields {
    fn is_fuser_reply(&self, target: &str) -> bool {
        target.starts_with("fuser::reply") || self.log_target.starts_with("fuser::reply")
    }

    fn interrupted(&self) -> bool {
        self.message.starts_with("Failed to send FUSE reply")
            && self.message.ends_with("(os error 2)")
    }
}

impl tracing::field::Visit for ReplyFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.log_target = value.to_string();
        } else if field.name() == "message" {
            self.message = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
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
        Command::Format(a) => format::format(a),
        Command::Fsck(a) => fsck::fsck(a),
        Command::Stats(a) => stats::stats(a),
        Command::Umount(a) => mount::umount(a),
        Command::Status(a) => status::status(a),
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

#[cfg(test)]
mod log_tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the events `emit` sends print through [`InterruptedReplies`].
    fn printed(keep: bool, emit: impl FnOnce()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .with_filter(InterruptedReplies { keep });
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn interrupted_replies_are_dropped_other_failures_kept() {
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        let out = printed(false, || {
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {enoent}");
            // As bridged from the `log` crate (fuser logs with `log`).
            let message = format!("Failed to send FUSE reply: {enoent}");
            tracing::error!(target: "log", { log.target = "fuser::reply" }, "{message}");
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {eio}");
            tracing::error!(target: "slicefs", "Failed to send FUSE reply: {enoent}");
        });
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains("os error 5"), "{out}");
        assert!(out.contains("slicefs"), "{out}");
        let out = printed(true, || {
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {enoent}");
        });
        assert_eq!(out.lines().count(), 1, "{out}");
    }
}

//! The `slicefs` command: `mount`, `serve`, `umount`, `status`, `gc` and
//! the write-ahead log tools (`wal inspect|verify`). The command line is
//! described in [`cli`].

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // `--help` and `--version` arrive here too, as "errors" that
            // print to stdout and succeed.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    cli::init_tracing(args.log_level);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}

/// The error and its causes on one line, outermost first, each cause
/// once: a cause whose text the line already holds (many errors put
/// their source in their own message) is skipped, so a chain no longer
/// repeats its root cause up to six times.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn each_cause_is_printed_once() {
        let root = std::io::Error::other("NoSuchBucket: the bucket does not exist");
        #[derive(Debug)]
        struct Wraps(std::io::Error);
        impl std::fmt::Display for Wraps {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "list failed: {}", self.0)
            }
        }
        impl std::error::Error for Wraps {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Wraps(root)).context("open the file system in /d");
        assert_eq!(
            one_line(&e),
            "open the file system in /d: list failed: NoSuchBucket: the bucket does not exist"
        );
    }
}

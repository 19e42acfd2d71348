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
            eprintln!("error: {}", cli::error_line::error_line(&e));
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}

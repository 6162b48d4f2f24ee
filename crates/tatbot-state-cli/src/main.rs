//! `tatbot-state`: run, watch and diagnose tatbot's Redis state server.
//!
//! `main` only parses flags, installs logging (stderr), dispatches to one module per
//! subcommand under `cmd/`, and turns the outcome into an exit code: it prints the error chain
//! once, as one line with a hint ([`report`]), and maps it to the documented codes in [`exit`].
//! A broken pipe on stdout (`tatbot-state events | head`) counts as success.

/// `println!` that returns the write error instead of panicking: a closed stdout
/// (`tatbot-state doctor | head -1`) must end the command with a broken pipe, which `main`
/// counts as success, never with a panic (exit 101). Use it as `outln!(...)?`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` that returns the write error; see [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod cmd;
mod ctx;
mod exit;
mod output;
mod private_server;
mod report;
mod signal;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::FromArgMatches as _;

use crate::cmd::Cli;

fn main() -> ExitCode {
    // Parsed from the command with the examples added, so that `--help` shows them.
    let matches = cmd::examples::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    install_logging(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tatbot-state: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if exit::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("tatbot-state: {}", report::line(&err));
            ExitCode::from(exit::code_for(&err))
        }
    }
}

/// Colours only for a person at a terminal: never when stderr is a file, a pipe or a journal
/// (escape codes there are noise), and never when `NO_COLOR` is set to anything non-empty
/// (<https://no-color.org>).
fn log_colors(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Logs go to stderr (stdout is data), `warn` by default, `RUST_LOG` or `-v` to see more.
fn install_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,tatbot_state=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_colors(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Colours need a terminal, and `NO_COLOR` (non-empty) turns them off even there.
    #[test]
    fn log_colors_need_a_terminal_and_honour_no_color() {
        assert!(log_colors(true, None));
        assert!(log_colors(true, Some("".into())));
        assert!(!log_colors(true, Some("1".into())));
        assert!(!log_colors(false, None));
    }
}

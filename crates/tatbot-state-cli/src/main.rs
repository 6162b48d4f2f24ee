//! `tatbot-state`: run, watch and diagnose tatbot's Redis state server.
//!
//! `main` only parses flags, installs logging (stderr), dispatches to one module per
//! subcommand under `cmd/`, and turns the outcome into an exit code: it prints the error chain
//! once, as one line, and maps it to the documented codes in [`exit`]. A broken pipe on stdout
//! (`tatbot-state events | head`) counts as success.

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
mod signal;

use std::process::ExitCode;

use clap::Parser;

use crate::cmd::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            eprintln!("tatbot-state: {err:#}");
            ExitCode::from(exit::code_for(&err))
        }
    }
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
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

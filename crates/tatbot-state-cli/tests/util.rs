//! Helpers for running the built binary against test-kit servers.

use std::process::{Command, Output};

use tatbot_state_testkit::RedisServer;

/// The built `tatbot-state` binary with a clean environment: no REDIS_* variables, no conf dir
/// or env file from the machine, so only what a test passes counts.
pub fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tatbot-state"));
    for var in ["REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_USERNAME", "REDIS_URL", "TATBOT_CONF_DIR", "TATBOT_ENV_FILE", "RUST_LOG"] {
        command.env_remove(var);
    }
    // An empty working dir keeps ./src/conf of the repository out of the resolution.
    command.current_dir(std::env::temp_dir()).env("HOME", std::env::temp_dir());
    command
}

/// `bin()` pointed at `server` with `-h`/`-p` (and `-a` when it has a password).
pub fn bin_for(server: &RedisServer) -> Command {
    let mut command = bin();
    command.args(["-h", server.host(), "-p", &server.port().to_string()]);
    if let Some(password) = server.password() {
        command.args(["-a", password]);
    }
    command
}

/// Runs `command` with `args` and returns its output.
pub fn run(mut command: Command, args: &[&str]) -> Output {
    command.args(args).output().expect("the test binary runs")
}

/// Stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

//! Issue #13 point 6: papercuts found by trying the tool as a new user would.

use std::process::{Command, Output, Stdio};

use tatbot_state_testkit::RedisServer;

use crate::util::{ServerDir, bin, bin_for, simulate, stderr};

/// Runs `command` with its stdout on a pipe whose reader is already closed, as
/// `tatbot-state doctor | head -1` leaves it once `head` has exited.
fn run_into_closed_pipe(mut command: Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    command
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("the test binary runs")
}

/// Every read subcommand (text and JSON) ends cleanly on a closed stdout: exit 0 as a broken
/// pipe counts as success, and no panic (it was exit 101 for `doctor` and `server status`).
#[test]
fn closed_stdout_never_panics() {
    let server = RedisServer::start();
    simulate(&server, "simbot", 1, 2);
    let dir = ServerDir::new();
    let dir_text = dir.path().display().to_string();
    let commands: &[&[&str]] = &[
        &["status"],
        &["health"],
        &["robot"],
        &["robot", "simbot"],
        &["sessions"],
        &["config"],
        &["doctor"],
        &["param", "list"],
        &["history", "--help"],
        &["--help"],
        &["--version"],
    ];
    for args in commands {
        for json in [false, true] {
            let mut command = bin_for(&server);
            if json {
                command.arg("--json");
            }
            command.args(*args);
            let output = run_into_closed_pipe(command);
            let errors = stderr(&output);
            assert!(
                !errors.contains("panicked"),
                "{args:?} (json {json}) panicked: {errors}"
            );
            assert_eq!(output.status.code(), Some(0), "{args:?} (json {json}): {errors}");
        }
    }
    let mut command = bin();
    command.args(["-p", &dir.port.to_string(), "server", "status", "--dir", &dir_text]);
    let output = run_into_closed_pipe(command);
    assert!(
        !stderr(&output).contains("panicked"),
        "server status: {}",
        stderr(&output)
    );
    assert_ne!(output.status.code(), Some(101), "server status: {}", stderr(&output));
}

/// Logs carry no ANSI escape codes when stderr is not a terminal (here a pipe).
#[test]
fn logs_have_no_colors_off_a_terminal() {
    let output = crate::util::run(bin(), &["-p", &crate::util::dead_port().to_string(), "-vv", "status"]);
    let errors = stderr(&output);
    assert!(errors.contains("DEBUG"), "{errors}");
    assert!(!errors.contains('\x1b'), "{errors:?}");
}

/// A heartbeat agent stopped with SIGTERM marks its node offline at once (it used to show
/// online for up to 60 s); the node stays known.
#[test]
fn heartbeat_stopped_by_sigterm_goes_offline_at_once() {
    let server = RedisServer::start();
    let mut agent = crate::util::spawn(
        bin_for(&server),
        &["--node-id", "beater", "heartbeat", "--interval", "1"],
    );
    crate::util::wait_until("the first heartbeat", || {
        server.command(&["EXISTS", "node:health:beater"]).unwrap() == ":1\r\n"
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(agent.wait().success());
    assert_eq!(server.command(&["EXISTS", "node:health:beater"]).unwrap(), ":0\r\n");
    let known = server.command(&["ZSCORE", "tatbot:nodes", "beater"]).unwrap();
    assert!(known.starts_with('$') && !known.starts_with("$-1"), "{known}");
}

/// `viz --bind localhost:PORT` (and `mcp --bind localhost:PORT`) resolves the host name and serves; a port already taken gets
/// a hint naming the way out instead of a bare "Address already in use".
#[test]
fn viz_binds_host_names_and_explains_a_taken_port() {
    let server = RedisServer::start();
    let viz = crate::util::spawn(bin_for(&server), &["viz", "--bind", "localhost:0"]);
    let url = viz.stdout.next();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let taken = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let output = crate::util::run(bin_for(&server), &["mcp", "--transport", "http", "--bind", &taken]);
    crate::util::assert_code(&output, 1);
    let errors = stderr(&output);
    assert!(
        errors.contains(&format!(
            "cannot serve the MCP server on {taken}: Address already in use"
        )),
        "{errors}"
    );
    assert!(
        errors.contains("; hint: another process listens there: find it with `ss -ltnp`, or pass another port"),
        "{errors}"
    );
    // The MCP server resolves host names too.
    let mcp = crate::util::spawn(
        bin_for(&server),
        &["mcp", "--transport", "http", "--bind", "localhost:0", "--no-heartbeat"],
    );
    let line = mcp.stderr.wait_for("serving MCP on");
    assert!(line.contains("serving MCP on http://127.0.0.1:"), "{line}");
}

/// `config` with a host that does not resolve prints the resolution (where the host came from,
/// the conf dir) and then why it failed, exit 6; a misspelled YAML key is named once with the
/// key it likely meant, and Hydra's own keys pass silently.
#[test]
fn config_explains_an_unresolvable_host_and_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(conf.join("redis")).unwrap();
    std::fs::write(
        conf.join("redis/default.yaml"),
        "# @package _global_\ndefaults:\n  - _self_\n_target_: tatbot.Redis\nhost: eek.invalid\nprot: 6380\n",
    )
    .unwrap();
    let output = crate::util::run(bin(), &["--config", conf.to_str().unwrap(), "config"]);
    crate::util::assert_code(&output, 6);
    let table = crate::util::stdout(&output);
    assert!(
        table.contains("eek.invalid") && table.contains("default.yaml"),
        "{table}"
    );
    assert!(table.contains("does not resolve"), "{table}");
    let errors = stderr(&output);
    assert_eq!(
        errors
            .matches("ignoring the unknown key \"prot\"; did you mean \"port\"?")
            .count(),
        1,
        "{errors}"
    );
    assert!(!errors.contains("defaults") && !errors.contains("_target_"), "{errors}");
    assert!(
        errors.contains("tatbot-state: host \"eek.invalid\" does not resolve and no node inventory was found"),
        "{errors}"
    );
}

/// `./src/conf/nodes.yaml` alone (no `redis/default.yaml`) is the node inventory: a host that
/// does not resolve connects to its IP there.
#[test]
fn node_inventory_is_used_without_redis_yaml() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("src/conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("nodes.yaml"),
        "nodes:\n- name: eek.invalid\n  ip: 127.0.0.1\n",
    )
    .unwrap();
    let mut command = bin();
    command.current_dir(dir.path());
    let output = crate::util::run(
        command,
        &["-h", "eek.invalid", "-p", &server.port().to_string(), "status"],
    );
    crate::util::assert_code(&output, 0);
    assert!(crate::util::stdout(&output).contains("Redis Connected: true"));
}

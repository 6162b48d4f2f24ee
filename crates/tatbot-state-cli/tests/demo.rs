//! `demo`: the verified end-to-end run, on a private server and on a given one, and its cleanup.

use std::path::PathBuf;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tatbot_state_testkit::RedisServer;

use crate::util::{Screen, assert_code, bin, is_alive, processes_in, run, spawn, stdout};

/// The private server's pid and temp dir, from the lines the demo prints first.
fn private_server(text: &str) -> (u32, PathBuf) {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.trim_start().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} line in\n{text}"))
            .trim()
            .to_owned()
    };
    let server = field("server");
    let pid = server
        .split_once("pid ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {server:?}"));
    let dir = field("temp dir");
    let dir = dir.split(" (").next().expect("a path").to_owned();
    (pid, PathBuf::from(dir))
}

/// `demo --fast` passes its checks, then leaves no redis-server and no temp dir behind.
#[test]
fn fast_demo_checks_out_and_cleans_up() {
    let output = run(bin(), &["demo", "--fast"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(text.contains("all checks passed"), "{text}");
    // The live viz listed the session and the MCP server answered, while the demo ran.
    assert!(text.contains("[ok]   viz") && text.contains("[ok]   mcp"), "{text}");
    for check in ["progress", "history", "nodes", "errors"] {
        assert!(
            text.lines()
                .any(|line| line.trim_start().starts_with("[ok]") && line.contains(check)),
            "{check} not ok in\n{text}"
        );
    }
    assert!(text.contains("psubscribe 'stroke:events:*'"), "{text}");
    let (pid, dir) = private_server(&text);
    assert!(!is_alive(pid), "redis-server {pid} outlived the demo");
    assert!(!dir.exists(), "{} outlived the demo", dir.display());
    assert!(processes_in(&dir).is_empty());
}

/// `demo --redis URL` runs on the given server, starts none of its own, and leaves its state
/// there, its nodes known but offline.
#[test]
fn demo_on_a_given_redis() {
    let server = RedisServer::builder().password("s3cret").start();
    let output = run(bin(), &["demo", "--fast", "--redis", &server.url()]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(text.contains("all checks passed"), "{text}");
    assert!(!text.contains("temp dir"), "{text}");
    assert!(text.contains(&format!("-p {} -a PASSWORD", server.port())), "{text}");
    // Its nodes stay known, and went offline when the demo stopped their heartbeats
    // (issue #13 point 6: a stopped agent does not linger online for the TTL).
    for node in ["demo-robot", "demo-viz"] {
        let score = server.command(&["ZSCORE", "tatbot:nodes", node]).expect("ZSCORE");
        assert!(score.starts_with('$') && !score.starts_with("$-1"), "{node}: {score}");
    }
    let reply = server
        .command(&["EXISTS", "node:health:demo-robot", "node:health:demo-viz"])
        .expect("EXISTS");
    assert_eq!(reply, ":0\r\n");
}

/// SIGINT in the middle of a run stops the nodes and the private server and removes the temp dir.
#[test]
fn interrupt_stops_everything() {
    let mut demo = spawn(bin(), &["demo"]);
    let mut intro = String::new();
    for _ in 0..4 {
        intro.push_str(&demo.stdout.next());
        intro.push('\n');
    }
    let (pid, dir) = private_server(&intro);
    demo.stdout.wait_for("progress:");
    assert!(is_alive(pid) && dir.exists());

    let demo_pid = i32::try_from(demo.pid()).expect("a pid fits i32");
    signal::kill(Pid::from_raw(demo_pid), Signal::SIGINT).expect("send SIGINT");
    let status = demo.wait();
    assert_eq!(status.code(), Some(1));
    let errors = demo.stderr.rest().join("\n");
    assert!(errors.contains("interrupted"), "{errors}");
    assert!(!is_alive(pid), "redis-server {pid} outlived the demo");
    assert!(!dir.exists(), "{} outlived the demo", dir.display());
    assert!(processes_in(&dir).is_empty());
}

/// `demo --chaos` kills its private redis-server with SIGKILL twice mid-run and restarts it on
/// the same port and AOF; the robot's producer replays what the crashes lost, so the session
/// is exact at the end (issue #13 point 4).
#[test]
fn chaos_demo_survives_two_crashes_exactly() {
    let output = run(bin(), &["demo", "--fast", "--chaos"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    let crashes: Vec<&str> = text.lines().filter(|line| line.starts_with("chaos: kill -9")).collect();
    assert_eq!(crashes.len(), 2, "{text}");
    for check in ["progress", "history", "chaos"] {
        assert!(
            text.lines()
                .any(|line| line.trim_start().starts_with("[ok]") && line.contains(check)),
            "{check} not ok in\n{text}"
        );
    }
    assert!(text.contains("160 entries"), "{text}");
    // The restarted server is the one stopped at the end.
    let (_, dir) = private_server(&text);
    let last_pid: u32 = crashes[1]
        .split("as pid ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {:?}", crashes[1]));
    assert!(!is_alive(last_pid), "redis-server {last_pid} outlived the demo");
    assert!(!dir.exists(), "{} outlived the demo", dir.display());
}

/// In a terminal the demo keeps its viz and MCP server (and the idling robot) after the checks
/// until Ctrl-C, then exits 0 and cleans up; `--exit` ends it after the checks there too.
#[test]
fn demo_in_a_terminal_serves_until_ctrl_c() {
    let mut screen = Screen::start("demo --fast");
    screen.wait_for("Ctrl-C to stop");
    let text = screen.text();
    assert!(text.contains("all checks passed"), "{text}");
    let viz_port: u16 = text
        .split("live viz   http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no viz address in {text}"));
    let (code, body) = crate::webdriver::http(viz_port, "GET", "/api/nodes", None).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("demo-robot"), "{body}");
    assert!(!screen.has_exited(), "the demo ended instead of serving");
    screen.type_keys("\x03");
    assert!(screen.wait().success(), "{}", screen.text());
    assert!(screen.text().contains("stopped the private redis-server"));

    let mut screen = Screen::start("demo --fast --exit");
    assert!(screen.wait().success(), "{}", screen.text());
    let text = screen.text();
    assert!(
        text.contains("all checks passed") && !text.contains("Ctrl-C to stop"),
        "{text}"
    );
}

/// README's first command ends by itself: `scripts/demo.sh` passes `--exit`, and outside a
/// terminal (CI) the demo ends after its checks anyway (`fast_demo_checks_out_and_cleans_up`).
#[test]
fn demo_script_ends_by_itself() {
    let script = include_str!("../../../scripts/demo.sh");
    let invocation = script
        .lines()
        .find(|line| line.contains("tatbot-state -- demo"))
        .expect("demo.sh runs the demo");
    assert!(invocation.contains("demo --exit"), "{invocation}");
}

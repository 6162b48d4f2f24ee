//! `bench`: the quick run works end to end, on a private server and on a given one, and an
//! interrupted run cleans up.
//!
//! The figures are never checked (these machines are too noisy for timed assertions); only
//! that every figure is there, as a number, and that the bench cleans up after itself.

use std::path::PathBuf;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tatbot_state_testkit::RedisServer;

use crate::util::{assert_code, bin, bin_for, is_alive, json, run, spawn, stderr, stdout};

/// The keys issues #7, #17 and #18 require in `--json`, all numbers.
const REQUIRED: [&str; 26] = [
    "ping_rtt_p50_us",
    "ping_rtt_p99_us",
    "update_awaited_p50_us",
    "update_awaited_p99_us",
    "plain_update_p50_us",
    "update_alone_p50_us",
    "throughput_updates_per_s",
    "pipelined_limit_per_s",
    "producer_call_p99_us_up",
    "producer_call_p99_us_paused",
    "producer_call_p99_us_down",
    "e2e_ping_p99_us",
    "e2e_plain_ping_p99_us",
    "e2e_plain_update_p99_us",
    "e2e_pubsub_p99_us",
    "e2e_follow_p99_us",
    "status_1000_nodes_10000_sessions_ms",
    "rss_mcp_100_clients_mb",
    "rss_viz_100_clients_mb",
    "mcp_sessions_wall_ms",
    "mcp_ping_p99_ms",
    "rss_mcp_sessions_mb",
    "record_per_s",
    "replay_per_s",
    "record_per_cpu_s",
    "replay_per_cpu_s",
];

/// Whether `redis-benchmark` is on PATH; without it the pipelined limit is null by design.
fn has_redis_benchmark() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join("redis-benchmark").is_file())
}

/// `bench --quick --json` on its private server exits 0 with every required figure a number.
#[test]
fn quick_json_has_every_figure() {
    let output = run(bin(), &["bench", "--quick", "--json"]);
    assert_code(&output, 0);
    let report = json(&output);
    for key in REQUIRED {
        if key == "pipelined_limit_per_s" && !has_redis_benchmark() {
            assert!(report[key].is_null(), "{key}: {}", report[key]);
            continue;
        }
        assert!(report[key].is_number(), "{key} is {} in\n{report:#}", report[key]);
    }
    assert_eq!(report["server"], "private");
    // The private server runs the project's config, which keeps an append-only file.
    assert_eq!(report["redis_aof"], true, "{report:#}");
    assert_eq!(report["failures"], serde_json::json!([]));
    assert_eq!(
        report["mcp_sessions_completed"], report["mcp_sessions_started"],
        "{report:#}"
    );
}

/// `bench --quick --json --only SECTION` on a server of its own, as a user that may run every
/// command but `denied`: it exits 0; its report.
fn bench_as_user_denied(denied: &str, section: &str) -> serde_json::Value {
    let server = RedisServer::start();
    let user = format!("bench_no_{denied}");
    let minus = format!("-{denied}");
    server
        .command(&["ACL", "SETUSER", &user, "on", ">pw", "~*", "&*", "+@all", &minus])
        .expect("ACL SETUSER");
    let url = format!("redis://{user}:pw@{}:{}", server.host(), server.port());
    let output = run(
        bin(),
        &["bench", "--quick", "--json", "--only", section, "--redis", &url],
    );
    assert_code(&output, 0);
    json(&output)
}

/// The report's note that starts with `prefix`.
fn note_starting<'a>(report: &'a serde_json::Value, prefix: &str) -> &'a str {
    let notes = report["notes"].as_array().expect("notes");
    notes
        .iter()
        .filter_map(|note| note.as_str())
        .find(|note| note.starts_with(prefix))
        .unwrap_or_else(|| panic!("no note starting {prefix:?} in {report:#}"))
}

/// A user that may not run `INFO`: the bench cannot tell whether the server keeps an AOF, says
/// so in one note naming the refusal, and still runs.
#[test]
fn a_server_that_refuses_info_gets_a_note_not_a_guess() {
    let report = bench_as_user_denied("info", "status");
    assert!(report["redis_aof"].is_null(), "{report:#}");
    let note = note_starting(&report, "cannot tell whether the server keeps an AOF: INFO persistence");
    assert!(note.contains("no permissions to run the 'info' command"), "{note}");
}

/// A user that may not run `MONITOR`: the update command cannot be captured, so the
/// same-command baselines of sections 1 and 4 are null with a note each saying why, and the
/// awaited updates and the producer's paths are still measured.
#[test]
fn a_server_that_refuses_monitor_keeps_the_awaited_figures() {
    let report = bench_as_user_denied("monitor", "awaited,e2e");
    assert_eq!(report["failures"], serde_json::json!([]), "{report:#}");
    assert!(report["update_awaited_p50_us"].is_number(), "{report:#}");
    assert!(report["plain_update_p50_us"].is_null(), "{report:#}");
    assert!(report["redis_benchmark_update_p50_us"].is_null(), "{report:#}");
    assert!(report["e2e_pubsub_p99_us"].is_number(), "{report:#}");
    assert!(report["e2e_plain_update_p99_us"].is_null(), "{report:#}");
    let notes = report["notes"].as_array().expect("notes");
    let ending = |end: &str| {
        notes
            .iter()
            .filter_map(|note| note.as_str())
            .find(|note| note.ends_with(end))
            .unwrap_or_else(|| panic!("no note ending {end:?} in {report:#}"))
            .to_owned()
    };
    for note in [
        ending("no same-work baseline"),
        ending("no same-work path in section 4"),
    ] {
        assert!(note.starts_with("could not capture the update command"), "{note}");
        assert!(note.contains("no permissions to run the 'monitor' command"), "{note}");
    }
}

/// `--only` runs the named sections: their figures are numbers, the others' null, and the
/// table has only their rows.
#[test]
fn only_runs_the_named_sections() {
    let output = run(bin(), &["bench", "--quick", "--json", "--only", "awaited,status"]);
    assert_code(&output, 0);
    let report = json(&output);
    assert_eq!(report["sections"], serde_json::json!(["awaited", "status"]));
    for key in ["update_awaited_p50_us", "status_1000_nodes_10000_sessions_ms"] {
        assert!(report[key].is_number(), "{key} is {} in\n{report:#}", report[key]);
    }
    for key in [
        "throughput_updates_per_s",
        "producer_call_p99_us_up",
        "e2e_pubsub_p99_us",
        "rss_viz_100_clients_mb",
    ] {
        assert!(report[key].is_null(), "{key} is {} in\n{report:#}", report[key]);
    }

    let output = run(bin(), &["bench", "--quick", "--only", "status"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(text.contains("status, 1,000 nodes 10,000 sessions"), "{text}");
    assert!(!text.contains("awaited update p50"), "{text}");

    let output = run(bin(), &["bench", "--only", "latency"]);
    assert_code(&output, 2);
    let error = stderr(&output);
    assert!(
        error.contains("invalid value 'latency' for '--only <SECTION>'"),
        "{error}"
    );
    assert!(
        error.contains("awaited, throughput, calls, e2e, status, memory"),
        "{error}"
    );
}

/// `--only` with one section: every figure of that section is a number, and every figure of
/// every other section is there as null (or an empty list), so the flat `--json` keeps its
/// keys whichever sections ran.
#[test]
fn only_one_section_fills_only_its_figures() {
    let output = run(bin(), &["bench", "--quick", "--json", "--only", "e2e"]);
    assert_code(&output, 0);
    let report = json(&output);
    assert_eq!(report["sections"], serde_json::json!(["e2e"]));
    let fields = report.as_object().expect("a JSON object");
    let about_the_run = [
        "quick",
        "server",
        "redis_version",
        "redis_aof",
        "machine",
        "sections",
        "notes",
        "failures",
    ];
    let mut e2e = 0;
    for (key, value) in fields {
        if about_the_run.contains(&key.as_str()) {
            continue;
        }
        if key.starts_with("e2e_") {
            e2e += 1;
            assert!(value.is_number(), "{key} is {value} in\n{report:#}");
        } else {
            assert!(
                value.is_null() || value == &serde_json::json!([]),
                "{key} is {value} in\n{report:#}"
            );
        }
    }
    assert_eq!(e2e, 21, "{report:#}");
    for key in [
        "ping_rtt_p99_us",
        "throughput_updates_per_s",
        "producer_call_p99_us_up",
        "status_1000_nodes_10000_sessions_ms",
        "rss_viz_100_clients_mb",
        "record_per_s",
        "mcp_ping_p99_ms",
        "failover_ms",
    ] {
        // Present as null, not left out: a reader finds every key whichever sections ran.
        assert_eq!(fields.get(key), Some(&serde_json::Value::Null), "{key} in\n{report:#}");
    }
}

/// On a given server (with a password) the bench skips only the frozen-server case, prints
/// every row of the table, and deletes the sessions and nodes it wrote.
#[test]
fn quick_on_a_given_server_cleans_up() {
    let server = RedisServer::builder().password("s3cret").start();
    let output = run(bin_for(&server), &["bench", "--quick"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    // The test kit's servers keep no append-only file by default; the header says so.
    let header = text.lines().next().unwrap_or_default();
    assert!(header.contains("(AOF off)"), "{header}");
    for row in [
        "awaited update p50",
        "throughput, one producer",
        "producer call p99, redis up",
        "producer call p99, redis down",
        "producer->subscriber p99, pub/sub",
        "producer->subscriber p99, follow",
        "status, 1,000 nodes 10,000 sessions",
        "peak RSS, mcp --transport http",
        "peak RSS, viz",
    ] {
        assert!(text.contains(row), "no {row:?} row in\n{text}");
    }
    let paused = text
        .lines()
        .find(|line| line.starts_with("producer call p99, redis paused"))
        .unwrap_or_else(|| panic!("no paused row in\n{text}"));
    assert!(paused.contains("n/a"), "{paused}");
    assert!(text.contains("note: paused: skipped"), "{text}");
    for pattern in [
        "stroke:progress:*",
        "stream:stroke_history:*",
        "node:health:*",
        "robot:state:*",
    ] {
        let reply = server.command(&["KEYS", pattern]).expect("KEYS");
        assert_eq!(reply, "*0\r\n", "{pattern} left behind");
    }
    let registry = server.command(&["ZRANGE", "tatbot:nodes", "0", "-1"]).expect("ZRANGE");
    assert_eq!(registry, "*0\r\n", "bench nodes left in the registry");
}

/// SIGINT in the middle of a run stops the private server, removes its directory and exits 1.
#[test]
fn interrupt_stops_the_private_server() {
    let mut bench = spawn(bin(), &["bench"]);
    let line = bench.stderr.wait_for("started a private redis-server");
    let pid: u32 = line
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let dir = line
        .split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(" (").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no dir in {line:?}"));
    bench.stderr.wait_for("1/8");
    assert!(is_alive(pid) && dir.exists());
    let raw = i32::try_from(bench.pid()).unwrap();
    signal::kill(Pid::from_raw(raw), Signal::SIGINT).unwrap();
    assert_eq!(bench.wait().code(), Some(1));
    assert!(!is_alive(pid), "redis-server {pid} outlived the bench");
    assert!(!dir.exists(), "{} outlived the bench", dir.display());
}

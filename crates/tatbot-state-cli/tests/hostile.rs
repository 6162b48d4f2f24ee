//! Issue #14 "Hardening": hostile or corrupt data never breaks a reader. Any writer on the LAN
//! can store anything; every text view escapes control characters, shows figures outside
//! their domain as invalid, and reports bad entries in their place.

use tatbot_state_testkit::RedisServer;

use crate::util::{assert_code, bin_for, json, run, spawn, stdout};

/// Escape sequences a hostile writer might store: clear screen, an OSC window title, a
/// carriage return that overwrites the line.
const CLEAR: &str = "\\u001b[2J";
const TITLE: &str = "\\u001b]0;pwned\\u0007";

fn hset(server: &RedisServer, key: &str, field: &str, value: &str) {
    let reply = server.command(&["HSET", key, field, value]).unwrap();
    assert!(reply.starts_with(':'), "{reply}");
}

/// The output holds no raw control character but shows the escaped form.
#[track_caller]
fn assert_escaped(view: &str, text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{view} printed a raw control character: {text:?}"
    );
    assert!(text.contains("\\x1b"), "{view} does not show the escape: {text:?}");
}

/// Issue #14 point 9: `progress`, `sessions`, `watch`, `health`, `history` and `events` escape
/// control characters in descriptions, scenes, node ids and event fields.
#[test]
fn text_views_escape_control_characters() {
    let server = RedisServer::start();
    // A fresh write: an old one would be a stale session, which `progress` does not pick.
    let now = tatbot_state::Timestamp::now();
    let document = format!(
        r#"{{"timestamp":"{now}","node_id":"evil{CLEAR}","stroke_idx":0,"pose_idx":0,"total_strokes":2,"stroke_length":2,"is_executing":true,"scene_name":"{TITLE}","stroke_description_l":"a\rb{CLEAR}"}}"#
    );
    hset(&server, "stroke:progress:stroke_evil_1", "progress", &document);
    let health =
        format!(r#"{{"timestamp":"2026-11-25T17:15:37","node_id":"n{CLEAR}","last_heartbeat":"2026-11-25T17:15:37"}}"#);
    hset(&server, "node:health:evil", "health", &health);
    let entry = [
        "XADD",
        "stream:stroke_history:stroke_evil_1",
        "*",
        "stroke_idx",
        "0",
        "pose_idx",
        "0",
        "description_l",
        "\x1b[2J\r",
        "description_r",
        "",
        "node_id",
        "\x1b]0;t\x07",
    ];
    server.command(&entry).unwrap();

    // The `health` table names nodes by their key, which holds no control character.
    let views = [
        &["progress", "stroke_evil_1"][..],
        &["progress"],
        &["sessions"],
        &["watch", "--once"],
        &["health", "evil"],
        &["history", "stroke_evil_1"],
    ];
    for args in views {
        let output = run(bin_for(&server), args);
        assert_code(&output, 0);
        assert_escaped(&args.join(" "), &stdout(&output));
    }

    let mut events = spawn(bin_for(&server), &["events", "--count", "2"]);
    events.stderr.wait_for("subscribed to");
    let start = format!(
        r#"{{"type":"session_start","session_id":"s","node_id":"x{CLEAR}","total_strokes":1,"scene_name":"{TITLE}","timestamp":"2026-11-25T17:15:37"}}"#
    );
    server.command(&["PUBLISH", "stroke:events:session", &start]).unwrap();
    server
        .command(&["PUBLISH", "robot:events", "\x1b[2J not json\r"])
        .unwrap();
    assert_eq!(events.wait().code(), Some(0));
    assert_escaped("events", &events.stdout.rest().join("\n"));
}

/// Issue #14 point 8: negative or out-of-range positions, a CPU of 1e308, a year-9999
/// timestamp and wrapped counters are shown as invalid or saturated, and never win "latest".
#[test]
fn hostile_numbers_are_not_taken_at_face_value() {
    let server = RedisServer::start();
    let doc = |stroke: i64, total: i64, when: &str| {
        format!(
            r#"{{"timestamp":"{when}","node_id":"n","stroke_idx":{stroke},"pose_idx":0,"total_strokes":{total},"stroke_length":3,"is_executing":true}}"#
        )
    };
    hset(
        &server,
        "stroke:progress:stroke_neg_1",
        "progress",
        &doc(-4, -3, "2026-11-25T17:15:37"),
    );
    hset(
        &server,
        "stroke:progress:stroke_over_1",
        "progress",
        &doc(10, 3, "2026-11-25T17:15:38"),
    );
    hset(
        &server,
        "stroke:progress:stroke_good_1",
        "progress",
        // Written now: the only valid session, and live (not stale).
        &doc(1, 3, &tatbot_state::Timestamp::now().to_string()),
    );
    hset(
        &server,
        "stroke:progress:stroke_future_1",
        "progress",
        &doc(0, 3, "9999-01-01T00:00:00"),
    );
    let health = r#"{"timestamp":"2026-11-25T17:15:37","node_id":"hot","cpu_percent":1e308,"memory_percent":-5,"last_heartbeat":"2026-11-25T17:15:37"}"#;
    hset(&server, "node:health:hot", "health", health);
    for (writer, dropped) in [("a", "18446744073709551614"), ("b", "5")] {
        let record = format!(r#"{{"stats":{{"dropped":{dropped}}},"updated":"2026-11-25T17:15:37"}}"#);
        hset(&server, "tatbot:producers", writer, &record);
    }

    let sessions = stdout(&run(bin_for(&server), &["sessions"]));
    let row = |session: &str| {
        sessions
            .lines()
            .find(|line| line.starts_with(session))
            .unwrap_or_else(|| panic!("{session} missing from:\n{sessions}"))
            .to_owned()
    };
    assert!(row("stroke_neg_1").contains("invalid (-4/-3)"), "{sessions}");
    assert!(row("stroke_over_1").contains("invalid (10/3)"), "{sessions}");
    assert!(row("stroke_good_1").contains(" 2/3 "), "{sessions}");
    assert!(row("stroke_future_1").ends_with("invalid"), "{sessions}");

    let progress = run(bin_for(&server), &["progress"]);
    assert_code(&progress, 0);
    let progress = stdout(&progress);
    assert!(progress.contains("Session: stroke_good_1"), "{progress}");
    let future = stdout(&run(bin_for(&server), &["progress", "stroke_future_1"]));
    assert!(future.contains("(invalid: in the future)"), "{future}");
    assert!(future.contains("Progress: invalid (timestamp"), "{future}");
    let over = stdout(&run(bin_for(&server), &["progress", "stroke_over_1"]));
    assert!(
        over.contains("Stroke: invalid (10/3)") && over.contains("Progress: invalid"),
        "{over}"
    );

    let health = stdout(&run(bin_for(&server), &["health", "hot"]));
    assert!(
        health.contains("CPU: invalid") && health.contains("Memory: invalid"),
        "{health}"
    );
    assert!(health.lines().all(|line| line.len() < 100), "{health}");

    let status = json(&run(bin_for(&server), &["--json", "status"]));
    assert_eq!(status["dropped_updates"], u64::MAX);
}

/// Appends a well-formed history entry `id` of stroke `stroke` to `key`.
fn history_entry(server: &RedisServer, key: &str, id: &str, stroke: &str) {
    let fields = [
        "XADD",
        key,
        id,
        "stroke_idx",
        stroke,
        "pose_idx",
        "0",
        "description_l",
        "l",
        "description_r",
        "r",
        "node_id",
        "x",
    ];
    server.command(&fields).unwrap();
}

/// Issue #14 point 7: a bad history entry is reported in its place; the rest of the history
/// prints and `history` succeeds (never "bad usage").
#[test]
fn history_reports_a_bad_entry_in_its_place() {
    let server = RedisServer::start();
    let key = "stream:stroke_history:stroke_x_1";
    let entry = |id: &str, stroke: &str| history_entry(&server, key, id, stroke);
    entry("1-1", "0");
    entry("2-1", "abc");
    entry("3-1", "1");
    let output = run(bin_for(&server), &["history", "stroke_x_1"]);
    assert_code(&output, 0);
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    // Each line: the entry's time (from its id), the id, then 1-based positions.
    assert!(lines[0].starts_with("00:00:00.001 1-1  stroke 1 pose 1"), "{lines:?}");
    assert!(
        lines[1].starts_with("00:00:00.002 2-1  corrupt: ") && lines[1].contains("\"abc\""),
        "{lines:?}"
    );
    assert!(lines[2].starts_with("00:00:00.003 3-1  stroke 2 pose 1"), "{lines:?}");
}

/// A history that another client filled past 32 MiB is read within that bound per page: the
/// page that stops there says so in a line of its own, and `history` reads on from it to the
/// last entry (before, it read each page whole; a page that stopped early ended the listing).
#[test]
fn history_reads_on_past_a_page_cut_at_the_size_bound() {
    let server = RedisServer::start();
    let key = "stream:stroke_history:stroke_x_1";
    let entry = |id: &str, stroke: &str| history_entry(&server, key, id, stroke);
    entry("1-1", "0");
    let huge = "x".repeat(1 << 20);
    for index in 0..40 {
        let id = format!("2-{index}");
        server.command(&["XADD", key, &id, "payload", &huge]).unwrap();
    }
    entry("3-1", "1");
    let output = run(bin_for(&server), &["history", "stroke_x_1"]);
    assert_code(&output, 0);
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    let cuts = lines
        .iter()
        .filter(|line| line.contains("the read stopped after"))
        .count();
    assert_eq!(cuts, 1, "{} lines", lines.len());
    assert_eq!(lines.len(), 43, "42 entries and the cut");
    assert!(
        lines[0].starts_with("00:00:00.001 1-1  stroke 1 pose 1"),
        "{}",
        lines[0]
    );
    let last = lines.last().unwrap();
    assert!(last.starts_with("00:00:00.003 3-1  stroke 2 pose 1"), "{last}");
}

/// Another client's value under the node registry (`SET tatbot:nodes x`): `health` still lists
/// the live nodes and says why offline ones are not listed, and `status` lists the key as
/// corrupt (before, `health` failed with exit 7 and `status` with a bare WRONGTYPE).
#[test]
fn a_registry_of_another_type_leaves_the_live_nodes_listed() {
    let server = RedisServer::start();
    server.command(&["SET", "tatbot:nodes", "not a sorted set"]).unwrap();
    let health = r#"{"timestamp":"2026-11-25T17:15:37","node_id":"hot","last_heartbeat":"2026-11-25T17:15:37"}"#;
    hset(&server, "node:health:hot", "health", health);
    let output = run(bin_for(&server), &["health"]);
    assert_code(&output, 0);
    assert!(stdout(&output).contains("hot"), "{}", stdout(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tatbot:nodes"), "{stderr}");
    let output = run(bin_for(&server), &["status"]);
    assert_code(&output, 0);
    assert!(stdout(&output).contains("tatbot:nodes"), "{}", stdout(&output));
}

//! `simulate` and `events`: the producer, and a consumer watching it live.

use tatbot_state_testkit::RedisServer;

use crate::util::{assert_code, bin_for, json, json_lines, run, simulate, spawn, stdout, wait_until};

/// The first stdout line is the session id, and the stored final progress is the last pose sent.
#[test]
fn simulate_prints_session_id_then_verified_summary() {
    let server = RedisServer::start();
    let output = run(
        bin_for(&server),
        &[
            "--node-id",
            "simbot",
            "simulate",
            "--hz",
            "0",
            "--strokes",
            "3",
            "--stroke-length",
            "4",
        ],
    );
    assert_code(&output, 0);
    let text = stdout(&output);
    let session_id = text.lines().next().unwrap();
    assert!(session_id.starts_with("stroke_simbot_"), "{text}");
    assert!(text.contains("updates sent: 12"), "{text}");
    assert!(
        text.contains("final progress: stroke 3/3 pose 4/4 (verified)"),
        "{text}"
    );

    let progress = json(&run(bin_for(&server), &["--json", "progress", session_id]));
    assert_eq!(progress["session_id"], session_id);
    assert_eq!(progress["state"], "ended");
    assert_eq!(progress["progress"]["stroke_idx"], 2);
    assert_eq!(progress["progress"]["pose_idx"], 3);
    assert_eq!(progress["progress"]["stroke_description_l"], "left stroke 2 pose 3");
    assert_eq!(progress["progress"]["is_executing"], false);
}

/// With `--json` every stdout line is an object: the session id first, the report last.
#[test]
fn simulate_json_lines() {
    let server = RedisServer::start();
    let output = run(
        bin_for(&server),
        &[
            "--json",
            "--node-id",
            "simbot",
            "simulate",
            "--hz",
            "0",
            "--strokes",
            "2",
            "--stroke-length",
            "3",
        ],
    );
    assert_code(&output, 0);
    let lines = json_lines(&stdout(&output));
    assert_eq!(lines.len(), 2, "{lines:?}");
    let session_id = lines[0]["session_id"].as_str().unwrap();
    assert_eq!(lines[1]["session_id"], session_id);
    assert_eq!(lines[1]["updates_sent"], 6);
    assert_eq!(lines[1]["verified"], true);
    assert_eq!(lines[1]["final_progress"]["stroke_idx"], 1);
    assert_eq!(lines[1]["final_progress"]["pose_idx"], 2);
}

/// The session id arrives on stdout while a paced simulation is still running.
#[test]
fn simulate_session_id_is_readable_while_running() {
    let server = RedisServer::start();
    // Ten updates a second: the last five take about half a second after the first.
    let mut simulation = spawn(
        bin_for(&server),
        &[
            "--node-id",
            "simbot",
            "simulate",
            "--hz",
            "10",
            "--strokes",
            "1",
            "--stroke-length",
            "6",
        ],
    );
    let session_id = simulation.stdout.next();
    assert!(session_id.starts_with("stroke_simbot_"), "{session_id}");
    assert!(!simulation.has_exited(), "the session id came only at exit");
    assert_eq!(simulation.wait().code(), Some(0));
}

/// `--error-every K` reports one error per K strokes, stored in the error log.
#[test]
fn simulate_reports_errors_every_k_strokes() {
    let server = RedisServer::start();
    let output = run(
        bin_for(&server),
        &[
            "simulate",
            "--hz",
            "0",
            "--strokes",
            "4",
            "--stroke-length",
            "1",
            "--error-every",
            "2",
        ],
    );
    assert_code(&output, 0);
    assert_eq!(server.command(&["XLEN", "tatbot:errors"]).unwrap(), ":2\r\n");
}

/// A plan of zero strokes or a negative rate is a usage error.
#[test]
fn simulate_rejects_empty_plans() {
    let server = RedisServer::start();
    assert_code(&run(bin_for(&server), &["simulate", "--strokes", "0"]), 2);
    assert_code(&run(bin_for(&server), &["simulate", "--hz=-1"]), 2);
}

/// `events --count N --json` receives a simulation's session events in order, then exits 0.
#[test]
fn events_receive_a_simulation() {
    let server = RedisServer::start();
    let mut events = spawn(
        bin_for(&server),
        &["--json", "events", "stroke:events:*", "--count", "6"],
    );
    events.stderr.wait_for("subscribed to stroke:events:*");
    let session_id = simulate(&server, "simbot", 2, 2);
    assert_eq!(events.wait().code(), Some(0));

    let lines = json_lines(&events.stdout.rest().join("\n"));
    let types: Vec<&str> = lines
        .iter()
        .map(|line| line["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "session_start",
            "progress_update",
            "progress_update",
            "progress_update",
            "progress_update",
            "session_end"
        ]
    );
    for line in &lines {
        assert_eq!(line["event"]["session_id"], session_id.as_str());
        assert_eq!(line["pattern"], "stroke:events:*");
        assert!(line["error"].is_null(), "{line}");
        let payload: serde_json::Value = serde_json::from_str(line["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload, line["event"]);
    }
    assert_eq!(lines[0]["channel"], "stroke:events:session");
    assert_eq!(lines[4]["event"]["stroke_idx"], 1);
    assert_eq!(lines[4]["event"]["pose_idx"], 1);
}

/// A malformed payload is printed with its error and the stream goes on; unknown types pass whole.
#[test]
fn events_show_malformed_payloads() {
    let server = RedisServer::start();
    let mut events = spawn(bin_for(&server), &["--json", "events", "--count", "3"]);
    events.stderr.wait_for("subscribed to");
    server
        .command(&["PUBLISH", "stroke:events:progress", "not json"])
        .unwrap();
    server
        .command(&[
            "PUBLISH",
            "stroke:events:progress",
            r#"{"type":"progress_update","stroke_idx":"x"}"#,
        ])
        .unwrap();
    server
        .command(&["PUBLISH", "robot:events", r#"{"type":"mystery","x":1}"#])
        .unwrap();
    assert_eq!(events.wait().code(), Some(0));

    let lines = json_lines(&events.stdout.rest().join("\n"));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0]["event"].is_null());
    assert_eq!(lines[0]["payload"], "not json");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("channel stroke:events:progress"),
        "{}",
        lines[0]
    );
    assert!(lines[1]["event"].is_null());
    assert!(lines[1]["error"].is_string());
    assert_eq!(lines[2]["event"], serde_json::json!({"type": "mystery", "x": 1}));
    assert!(lines[2]["error"].is_null());
    assert_eq!(lines[2]["pattern"], "robot:events");
}

/// Text mode prints one summary line per event, and malformed ones with their error.
#[test]
fn events_text_lines() {
    let server = RedisServer::start();
    let mut events = spawn(bin_for(&server), &["events", "--count", "2"]);
    events.stderr.wait_for("subscribed to");
    server.command(&["PUBLISH", "error:events:hardware", "{oops"]).unwrap();
    server
        .command(&[
            "PUBLISH",
            "robot:events",
            r#"{"type":"state_update","node_id":"hog","timestamp":"2026-11-25T17:15:37","current_pose":"ready"}"#,
        ])
        .unwrap();
    assert_eq!(events.wait().code(), Some(0));
    let lines = events.stdout.rest();
    // Issue #13 point 5: every line starts with the time it arrived (`HH:MM:SS.mmm `).
    let (when, lines): (Vec<&str>, Vec<&str>) = lines.iter().map(|line| line.split_at(13)).unzip();
    assert!(
        when.iter()
            .all(|when| when.as_bytes()[2] == b':' && when.as_bytes()[8] == b'.'),
        "{when:?}"
    );
    assert!(lines[0].starts_with("error:events:hardware malformed:"), "{lines:?}");
    assert!(lines[0].contains("{oops"), "{lines:?}");
    assert_eq!(
        lines[1],
        "robot:events state_update node=hog pose=ready connected_l=false connected_r=false"
    );
}

/// When Redis restarts under a subscription, `events` resubscribes by itself and goes on.
#[test]
fn events_resubscribe_after_redis_restart() {
    let mut server = RedisServer::start();
    let mut events = spawn(bin_for(&server), &["events", "--count", "1", "robot:events"]);
    events.stderr.wait_for("subscribed to");
    server.kill();
    server.restart();
    // Publish until the resubscribed `events` receives one and exits.
    wait_until("events to receive a message after the restart", || {
        let _ = server.command(&["PUBLISH", "robot:events", r#"{"type": "after_restart"}"#]);
        events.has_exited()
    });
    assert_eq!(events.wait().code(), Some(0));
}

/// `simulate` writes through the producer as a robot does: two kill -9s and restarts of Redis
/// (AOF everysec) during a 5,000-update run at 1 kHz cost nothing. It exits 0 with every update
/// stored exactly once and the final progress exact, and says how many restarts it survived.
#[test]
fn simulate_survives_two_redis_crashes() {
    let mut server = RedisServer::builder().persistence(true).start();
    let mut simulation = spawn(
        bin_for(&server),
        &[
            "--json",
            "--node-id",
            "simbot",
            "simulate",
            "--hz",
            "1000",
            "--strokes",
            "100",
            "--stroke-length",
            "50",
        ],
    );
    let first = simulation.stdout.next();
    let session_id = serde_json::from_str::<serde_json::Value>(&first).unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let history = format!("stream:stroke_history:{session_id}");
    for at_least in [1000, 2500] {
        wait_until("the history grows", || {
            server
                .command(&["XLEN", &history])
                .ok()
                .and_then(|reply| reply.trim().trim_start_matches(':').parse::<u64>().ok())
                .is_some_and(|len| len >= at_least)
        });
        server.kill();
        server.restart();
    }
    assert_eq!(simulation.wait().code(), Some(0), "{:?}", simulation.stderr.rest());
    let report = json_lines(&simulation.stdout.rest().join("\n")).pop().unwrap();
    assert_eq!(
        (
            &report["updates_sent"],
            &report["updates_stored"],
            &report["missing"],
            &report["duplicated"]
        ),
        (&5000.into(), &5000.into(), &0.into(), &0.into()),
        "{report}"
    );
    assert_eq!(report["verified"], true);
    assert!(report["producer"]["restarts"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(
        (
            &report["final_progress"]["stroke_idx"],
            &report["final_progress"]["pose_idx"]
        ),
        (&99.into(), &49.into())
    );
    let len = server.command(&["XLEN", &history]).unwrap();
    assert_eq!(len.trim(), ":5000");
}

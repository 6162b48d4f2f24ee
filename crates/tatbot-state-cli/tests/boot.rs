//! Boot order: daemons started before Redis wait for it and then serve (issue #13 point 1).

use tatbot_state_testkit::RedisServer;

use crate::util::{Running, assert_code, bin, bin_for, run, spawn, stderr, wait_until};

/// A progress document of an executing session, as a Python node writes it.
const EXECUTING: &str = r#"{"timestamp": "2026-12-06T10:00:00.000000", "node_id": "ook", "stroke_idx": 1, "pose_idx": 2, "total_strokes": 5, "stroke_length": 4, "stroke_description_l": "", "stroke_description_r": "", "offset_idx_l": 0, "offset_idx_r": 0, "is_executing": true, "is_paused": false, "scene_name": "boot", "dataset_name": null}"#;

fn waits(daemon: &Running, port: u16) {
    let line = daemon
        .stderr
        .wait_for(&format!("waiting for Redis at 127.0.0.1:{port}"));
    assert!(line.contains("retry in"), "{line}");
}

/// heartbeat, events, watch and history --follow, started while Redis is down, each log that
/// they wait, and each serves once the server comes up: the heartbeat appears, an event is
/// printed, the session's progress and its history are printed.
#[test]
fn daemons_wait_for_redis_and_then_serve() {
    let mut server = RedisServer::builder().persistence(true).start();
    let session = "stroke_ook_1765015200";
    server
        .command(&["HSET", &format!("stroke:progress:{session}"), "progress", EXECUTING])
        .unwrap();
    server
        .command(&[
            "XADD",
            &format!("stream:stroke_history:{session}"),
            "*",
            "stroke_idx",
            "1",
            "pose_idx",
            "2",
            "description_l",
            "",
            "description_r",
            "",
            "node_id",
            "ook",
        ])
        .unwrap();
    server.stop();
    let port = server.port();

    let heartbeat = spawn(
        bin_for(&server),
        &["--node-id", "early", "heartbeat", "--interval", "1"],
    );
    let events = spawn(bin_for(&server), &["events", "robot:events"]);
    let mut watch = spawn(bin_for(&server), &["--json", "watch"]);
    let history = spawn(bin_for(&server), &["--json", "history", session, "--follow"]);
    for daemon in [&heartbeat, &events, &watch, &history] {
        waits(daemon, port);
    }
    server.restart();

    wait_until("the heartbeat is stored", || {
        server
            .command(&["EXISTS", "node:health:early"])
            .is_ok_and(|reply| reply.trim() == ":1")
    });
    events.stderr.wait_for("subscribed to robot:events");
    let (stop_publishing, stop) = std::sync::mpsc::channel::<()>();
    let publisher = {
        let port = port.to_string();
        std::thread::spawn(move || {
            while stop.recv_timeout(std::time::Duration::from_millis(50))
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                let _ = std::process::Command::new("redis-cli")
                    .args(["-p", &port, "PUBLISH", "robot:events", r#"{"type": "ping"}"#])
                    .output();
            }
        })
    };
    let printed = events.stdout.next();
    assert!(printed.contains("robot:events"), "{printed}");
    drop(stop_publishing);
    publisher.join().unwrap();

    let line = watch.stdout.next();
    assert!(line.contains(session), "{line}");
    assert!(!watch.has_exited(), "watch follows the session");
    let entry = history.stdout.next();
    assert!(
        entry.contains("\"stroke_idx\":1") || entry.contains("\"stroke_idx\": 1"),
        "{entry}"
    );
}

/// Waiting covers an unreachable server only: refused credentials still exit at once with 4.
#[test]
fn daemon_with_refused_credentials_exits_at_once() {
    let server = RedisServer::builder().password("right").start();
    let output = run(bin(), &["-p", &server.port().to_string(), "-a", "wrong", "heartbeat"]);
    assert_code(&output, 4);
    assert!(!stderr(&output).contains("waiting for Redis"), "{}", stderr(&output));
}

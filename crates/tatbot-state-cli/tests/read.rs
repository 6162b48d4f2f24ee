//! The read commands (`status`, `health`, `sessions`, `progress`, `history`, `watch`), `config`,
//! `heartbeat`, and the exit codes of the error cases.

use tatbot_state_testkit::RedisServer;

use crate::util::{
    assert_code, bin, bin_for, dead_port, json, json_lines, run, simulate, spawn, stderr, stdout, wait_until,
};

/// Stores a progress document the way a Python node writes it, written now (so it is live).
fn put_python_session(server: &RedisServer, session_id: &str, stroke_idx: u32, pose_idx: u32, executing: bool) {
    let now = tatbot_state::Timestamp::now();
    let document = format!(
        r#"{{"timestamp":"{now}","node_id":"py","stroke_idx":{stroke_idx},"pose_idx":{pose_idx},"total_strokes":5,"stroke_length":3,"is_executing":{executing},"scene_name":"rose"}}"#
    );
    let reply = server
        .command(&["HSET", &format!("stroke:progress:{session_id}"), "progress", &document])
        .unwrap();
    assert!(reply.starts_with(':'), "{reply}");
}

/// After a simulation the summary counts its session and node, in text and JSON.
#[test]
fn status_after_simulation() {
    let server = RedisServer::start();
    simulate(&server, "simbot", 2, 2);
    let output = run(bin_for(&server), &["status"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    for line in [
        "Redis Connected: true",
        "Active Sessions: 0",
        "Total Sessions: 1",
        "Nodes Online: 1/1",
    ] {
        assert!(
            text.lines().any(|shown| shown == line),
            "{line:?} missing from:\n{text}"
        );
    }

    let status = json(&run(bin_for(&server), &["--json", "status"]));
    assert_eq!(status["redis_connected"], true);
    assert_eq!(status["total_sessions"], 1);
    assert_eq!(status["active_sessions"], 0);
    assert_eq!(status["nodes_online"], 1);
    assert_eq!(status["corrupt"], serde_json::json!([]));
}

/// A value that does not decode is listed with its key, and the summary still succeeds.
#[test]
fn status_lists_corrupt_entries() {
    let server = RedisServer::start();
    server
        .command(&["HSET", "node:health:broken", "health", "{nope"])
        .unwrap();
    let output = run(bin_for(&server), &["status"]);
    assert_code(&output, 0);
    assert!(stdout(&output).contains("node:health:broken: "), "{}", stdout(&output));

    let status = json(&run(bin_for(&server), &["--json", "status"]));
    assert_eq!(status["corrupt"][0]["key"], "node:health:broken");
}

/// Nothing listening on the port: exit 3 with the library's one-line message.
#[test]
fn unreachable_server_exits_3() {
    let port = dead_port().to_string();
    let output = run(bin(), &["-p", &port, "status"]);
    assert_code(&output, 3);
    let message = stderr(&output);
    assert!(message.contains("cannot reach Redis"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
}

/// A wrong or missing password: exit 4.
#[test]
fn refused_credentials_exit_4() {
    let server = RedisServer::builder().password("right").start();
    let port = server.port().to_string();
    let output = run(bin(), &["-p", &port, "-a", "wrong", "status"]);
    assert_code(&output, 4);
    assert!(
        stderr(&output).contains("refused the credentials"),
        "{}",
        stderr(&output)
    );
    assert_code(&run(bin(), &["-p", &port, "sessions"]), 4);
    assert_code(&run(bin(), &["-p", &port, "-a", "right", "sessions"]), 0);
}

/// A bad REDIS_PORT in the environment: exit 6, and the message names the variable.
#[test]
fn bad_config_exits_6() {
    for command in ["status", "config"] {
        let mut with_env = bin();
        with_env.env("REDIS_PORT", "abc");
        let output = run(with_env, &[command]);
        assert_code(&output, 6);
        assert!(stderr(&output).contains("REDIS_PORT"), "{}", stderr(&output));
    }
}

/// `config` names the source of each field and never shows the password.
#[test]
fn config_shows_sources() {
    let mut command = bin();
    command.env("REDIS_PORT", "7001");
    let output = run(command, &["-h", "10.1.2.3", "-a", "hunter2", "config"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(text.contains("flag --host"), "{text}");
    assert!(text.contains("environment variable REDIS_PORT"), "{text}");
    assert!(text.contains("(set)"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let mut command = bin();
    command.env("REDIS_PORT", "7001");
    let output = run(command, &["--json", "-h", "10.1.2.3", "-a", "hunter2", "config"]);
    assert!(!stdout(&output).contains("hunter2"));
    let config = json(&output);
    assert_eq!(config["host"]["value"], "10.1.2.3");
    assert_eq!(config["host"]["source"], "flag --host");
    assert_eq!(config["port"]["value"], "7001");
    assert_eq!(config["port"]["source"], "environment variable REDIS_PORT");
    assert_eq!(config["username"]["source"], "default");
    assert_eq!(config["password"]["value"], "(set)");
}

/// The node table shows live nodes, known-but-offline ones, and corrupt heartbeats as rows.
#[test]
fn health_table_shows_every_node() {
    let server = RedisServer::start();
    simulate(&server, "simbot", 1, 1);
    server
        .command(&["HSET", "node:health:broken", "health", "{nope"])
        .unwrap();
    server.command(&["ZADD", "tatbot:nodes", "1000", "ghost"]).unwrap();

    let output = run(bin_for(&server), &["health"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    let row = |node: &str| {
        text.lines()
            .find(|line| line.starts_with(node))
            .unwrap_or_else(|| panic!("no {node} row:\n{text}"))
    };
    assert!(text.starts_with("NODE"), "{text}");
    assert!(row("simbot").contains(" yes "), "{text}");
    assert!(row("broken").contains("error: node:health:broken"), "{text}");
    assert!(row("ghost").contains(" no "), "{text}");

    let nodes = json(&run(bin_for(&server), &["--json", "health"]));
    let nodes = nodes.as_array().unwrap();
    let ids: Vec<&str> = nodes.iter().map(|node| node["node_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["broken", "simbot", "ghost"]);
    assert!(nodes[0]["error"].is_string());
    assert_eq!(nodes[1]["online"], true);
    assert_eq!(nodes[1]["health"]["node_id"], "simbot");
    assert_eq!(nodes[2]["online"], false);
}

/// One node's heartbeat as JSON; an unknown node exits 5, an invalid id exits 2.
#[test]
fn health_of_one_node() {
    let server = RedisServer::start();
    simulate(&server, "simbot", 1, 1);
    let health = json(&run(bin_for(&server), &["--json", "health", "simbot"]));
    assert_eq!(health["node_id"], "simbot");
    assert!(health["cpu_percent"].is_number());

    let output = run(bin_for(&server), &["health", "simbot"]);
    assert_code(&output, 0);
    assert!(stdout(&output).contains("Node: simbot"));

    let output = run(bin_for(&server), &["health", "nobody"]);
    assert_code(&output, 5);
    assert!(
        stderr(&output).contains(
            "no heartbeat from node nobody (expired or never sent); hint: list nodes with `tatbot-state health`"
        ),
        "{}",
        stderr(&output)
    );
    assert_code(&run(bin_for(&server), &["health", "a:b"]), 2);
}

/// `heartbeat --once` writes this node's health key with the 60 s TTL and prints it.
#[test]
fn heartbeat_once_writes_health() {
    let server = RedisServer::start();
    let output = run(
        bin_for(&server),
        &[
            "--json",
            "--node-id",
            "hb1",
            "heartbeat",
            "--once",
            "--mcp-port",
            "8123",
        ],
    );
    assert_code(&output, 0);
    assert_eq!(json(&output)["node_id"], "hb1");

    let health = json(&run(bin_for(&server), &["--json", "health", "hb1"]));
    assert_eq!(health["node_id"], "hb1");
    assert_eq!(health["mcp_port"], 8123);
    assert_eq!(health["mcp_server_running"], true);
    let ttl: i64 = server
        .command(&["TTL", "node:health:hb1"])
        .unwrap()
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((1..=60).contains(&ttl), "{ttl}");
}

/// The heartbeat agent beats until SIGTERM, then exits 0.
#[test]
fn heartbeat_agent_stops_on_sigterm() {
    let server = RedisServer::start();
    let mut agent = spawn(bin_for(&server), &["--node-id", "hb2", "heartbeat", "--interval", "1"]);
    agent.stderr.wait_for("heartbeat for node hb2");
    wait_until("the first heartbeat", || {
        server.command(&["EXISTS", "node:health:hb2"]).unwrap() == ":1\r\n"
    });
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(agent.wait().code(), Some(0));
}

/// Sessions are listed newest first; corrupt ones are listed with their error.
#[test]
fn sessions_newest_first() {
    let server = RedisServer::start();
    let older = simulate(&server, "first", 3, 2);
    let newer = simulate(&server, "second", 1, 1);
    server
        .command(&["HSET", "stroke:progress:bad", "progress", "[1,"])
        .unwrap();

    let output = run(bin_for(&server), &["sessions"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("SESSION"), "{text}");
    assert!(lines[1].starts_with(&newer), "{text}");
    assert!(lines[2].starts_with(&older), "{text}");
    assert!(
        lines[2].contains("3/3") && lines[2].contains("2/2") && lines[2].contains("ended"),
        "{text}"
    );
    assert!(lines[3].starts_with("bad") && lines[3].contains("error:"), "{text}");

    let sessions = json(&run(bin_for(&server), &["--json", "sessions"]));
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 3);
    assert_eq!(sessions[0]["session_id"], newer.as_str());
    assert_eq!(sessions[1]["progress"]["total_strokes"], 3);
    assert_eq!(sessions[1]["state"], "ended");
    assert!(sessions[2]["error"].is_string());

    let limited = json(&run(bin_for(&server), &["--json", "sessions", "--limit", "1"]));
    assert_eq!(
        limited.as_array().unwrap().len(),
        2,
        "the limit applies to sessions that decode"
    );
    let output = run(bin_for(&server), &["sessions", "--active"]);
    assert!(
        stdout(&output).lines().nth(1).unwrap().starts_with("bad"),
        "{}",
        stdout(&output)
    );
}

/// Without an id, `progress` shows the latest active session, including one a Python node wrote.
#[test]
fn progress_defaults_to_latest_active_session() {
    let server = RedisServer::start();
    simulate(&server, "simbot", 1, 1);
    put_python_session(&server, "stroke_py_1795626937", 1, 2, true);

    let output = run(bin_for(&server), &["progress"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    for line in [
        "Session: stroke_py_1795626937",
        "State: executing",
        "Stroke: 2/5",
        "Pose: 3/3",
        "Scene: rose",
    ] {
        assert!(
            text.lines().any(|shown| shown == line),
            "{line:?} missing from:\n{text}"
        );
    }
    let progress = json(&run(bin_for(&server), &["--json", "progress"]));
    assert_eq!(progress["session_id"], "stroke_py_1795626937");
    assert_eq!(progress["progress"]["stroke_idx"], 1);
    assert_eq!(progress["progress"]["pose_idx"], 2);
}

/// No active session, an unknown session: exit 5; an invalid id: exit 2.
#[test]
fn progress_errors() {
    let server = RedisServer::start();
    simulate(&server, "simbot", 1, 1);
    let output = run(bin_for(&server), &["progress"]);
    assert_code(&output, 5);
    assert!(
        stderr(&output).contains("`tatbot-state sessions`"),
        "{}",
        stderr(&output)
    );
    let output = run(bin_for(&server), &["progress", "stroke_nobody_1"]);
    assert_code(&output, 5);
    assert!(stderr(&output).contains("stroke_nobody_1"), "{}", stderr(&output));
    assert_code(&run(bin_for(&server), &["progress", "a:b"]), 2);
}

/// `history` prints every entry of a simulation in order, as text and JSON lines, up to `--count`.
#[test]
fn history_after_simulation() {
    let server = RedisServer::start();
    let session_id = simulate(&server, "simbot", 3, 4);
    let output = run(bin_for(&server), &["history", &session_id]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 12, "{text}");
    // Issue #13 point 5: 1-based positions as in every text view (the description is the
    // robot's own text), and a time on every line.
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("stroke 3 pose 4  simbot  L: left stroke 2 pose 3"),
        "{text}"
    );
    assert!(text.lines().all(starts_with_time), "{text}");

    let entries = json_lines(&stdout(&run(bin_for(&server), &["--json", "history", &session_id])));
    assert_eq!(entries.len(), 12);
    assert_eq!(
        (&entries[0]["stroke_idx"], &entries[0]["pose_idx"]),
        (&0.into(), &0.into())
    );
    assert_eq!(
        (&entries[11]["stroke_idx"], &entries[11]["pose_idx"]),
        (&2.into(), &3.into())
    );
    assert_eq!(entries[11]["node_id"], "simbot");

    let output = run(bin_for(&server), &["history", &session_id, "--count", "3"]);
    assert_eq!(stdout(&output).lines().count(), 3);
}

/// `history` of an unknown session exits 5; of an invalid id, 2.
#[test]
fn history_errors() {
    let server = RedisServer::start();
    assert_code(&run(bin_for(&server), &["history", "stroke_nobody_1"]), 5);
    assert_code(&run(bin_for(&server), &["history", "a:b"]), 2);
}

/// `history --follow` prints entries added after it started, and stops at `--count`.
#[test]
fn history_follow_prints_new_entries() {
    let server = RedisServer::start();
    let session_id = "stroke_py_1795626937";
    put_python_session(&server, session_id, 0, 0, true);
    let stream = format!("stream:stroke_history:{session_id}");
    let add = |pose: &str| {
        let fields = [
            "stroke_idx",
            "0",
            "pose_idx",
            pose,
            "description_l",
            "l",
            "description_r",
            "r",
            "node_id",
            "py",
        ];
        let mut args = vec!["XADD", stream.as_str(), "*"];
        args.extend(fields);
        server.command(&args).unwrap();
    };
    add("0");
    let mut follow = spawn(
        bin_for(&server),
        &["--json", "history", session_id, "--follow", "--count", "3"],
    );
    let first: serde_json::Value = serde_json::from_str(&follow.stdout.next()).unwrap();
    assert_eq!(first["pose_idx"], 0);
    add("1");
    add("2");
    assert_eq!(follow.wait().code(), Some(0));
    let rest = json_lines(&follow.stdout.rest().join("\n"));
    let poses: Vec<i64> = rest.iter().map(|entry| entry["pose_idx"].as_i64().unwrap()).collect();
    assert_eq!(poses, [1, 2]);
}

/// `watch --once` prints one line per active session, as text or JSON, and says when none is.
#[test]
fn watch_once() {
    let server = RedisServer::start();
    let output = run(bin_for(&server), &["watch", "--once"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "no active stroke sessions\n");

    simulate(&server, "simbot", 1, 1);
    put_python_session(&server, "stroke_py_1795626937", 1, 2, true);
    let output = run(bin_for(&server), &["watch", "--once"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("stroke_py_1795626937 py rose ["), "{text}");
    assert!(text.contains("stroke 2/5 pose 3/3 executing"), "{text}");

    let lines = json_lines(&stdout(&run(bin_for(&server), &["--json", "watch", "--once"])));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["session_id"], "stroke_py_1795626937");
    assert_eq!(lines[0]["state"], "executing");
}

/// `watch` follows a session until it ends, printing a line per change, then exits 0.
#[test]
fn watch_until_sessions_end() {
    let server = RedisServer::start();
    let session_id = "stroke_py_1795626937";
    put_python_session(&server, session_id, 0, 0, true);
    let mut watch = spawn(bin_for(&server), &["watch"]);
    assert!(watch.stdout.next().contains("stroke 1/5 pose 1/3 executing"));
    put_python_session(&server, session_id, 0, 1, true);
    watch.stdout.wait_for("stroke 1/5 pose 2/3 executing");
    put_python_session(&server, session_id, 0, 1, false);
    watch.stdout.wait_for("stroke 1/5 pose 2/3 ended");
    assert_eq!(watch.wait().code(), Some(0));
}

/// Whether `line` starts with a `HH:MM:SS.mmm` time and a space.
fn starts_with_time(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 13
        && bytes[..12].iter().enumerate().all(|(idx, byte)| match idx {
            2 | 5 => *byte == b':',
            8 => *byte == b'.',
            _ => byte.is_ascii_digit(),
        })
        && bytes[12] == b' '
}

/// Issue #13 point 3: `robot` shows the simulated robot in a table, alone and as JSON; a
/// corrupt state is a row with its error and an unknown node exits 5 with a hint.
#[test]
fn robot_shows_the_simulated_robot() {
    let server = RedisServer::start();
    simulate(&server, "simbot", 1, 1);
    server
        .command(&["HSET", "robot:state:broken", "state", "{nope"])
        .unwrap();
    let output = run(bin_for(&server), &["robot"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(text.starts_with("NODE  "), "{text}");
    let row = |node: &str| {
        text.lines()
            .find(|line| line.starts_with(node))
            .unwrap_or_else(|| panic!("no {node} row:\n{text}"))
            .to_owned()
    };
    assert!(row("simbot").contains(" ready "), "{text}");
    assert!(row("simbot").contains(" up "), "{text}");
    assert!(row("broken").contains("error: robot:state:broken"), "{text}");

    let robots = json(&run(bin_for(&server), &["--json", "robot"]));
    let robots = robots.as_array().unwrap();
    assert_eq!(robots.len(), 2);
    assert!(robots[0]["error"].is_string());
    assert_eq!(robots[1]["state"]["current_pose"], "ready");

    let output = run(bin_for(&server), &["robot", "simbot"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(
        text.contains("Pose: ready") && text.contains("Left Arm: connected"),
        "{text}"
    );
    let robot = json(&run(bin_for(&server), &["--json", "robot", "simbot"]));
    assert_eq!(robot["node_id"], "simbot");
    assert_eq!(robot["is_connected_r"], true);

    let output = run(bin_for(&server), &["robot", "nobody"]);
    assert_code(&output, 5);
    assert!(
        stderr(&output).contains("list robots with `tatbot-state robot`"),
        "{}",
        stderr(&output)
    );
}

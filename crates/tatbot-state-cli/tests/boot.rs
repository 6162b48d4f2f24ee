//! Boot order: daemons started before Redis wait for it and then serve (issue #13 point 1).

use tatbot_state_testkit::RedisServer;

use crate::util::{Running, Screen, assert_code, bin, bin_for, run, spawn, stderr, wait_until};

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

/// Waiting covers an unreachable server only: refused credentials still exit at once with 4,
/// and invalid configuration with 6, each with its one-line message, for the agents and the
/// servers alike.
#[test]
fn daemon_with_refused_credentials_exits_at_once() {
    let server = RedisServer::builder().password("right").start();
    let port = server.port().to_string();
    let daemons: [&[&str]; 4] = [
        &["heartbeat"],
        &["viz", "--bind", "127.0.0.1:0"],
        &["mcp", "--transport", "http", "--bind", "127.0.0.1:0"],
        &["monitor"],
    ];
    for daemon in daemons {
        let output = run(bin(), &[&["-p", &port, "-a", "wrong"][..], daemon].concat());
        assert_code(&output, 4);
        let text = stderr(&output);
        assert!(!text.contains("waiting for Redis"), "{daemon:?}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{daemon:?}: {text}");

        let mut bad_config = bin();
        bad_config.env("REDIS_PORT", "notaport");
        let output = run(bad_config, daemon);
        assert_code(&output, 6);
        let text = stderr(&output);
        assert!(
            text.contains("REDIS_PORT") && text.trim().lines().count() == 1,
            "{daemon:?}: {text}"
        );
    }
}

/// A stopped server's port, and a heartbeat writer for once it is back.
fn stopped_server() -> (RedisServer, u16) {
    let mut server = RedisServer::start();
    server.stop();
    let port = server.port();
    (server, port)
}

/// `viz` and `mcp --transport http`, started while Redis is down, serve at once and log that
/// they wait; MCP's `state://status` says `Redis Connected: false`. Once Redis is up, the
/// dashboard's `/api/nodes` and MCP's `state://nodes` list a live heartbeat and the status
/// says `Redis Connected: true`, and a session's events notify an MCP subscriber, without
/// restarting either server.
#[tokio::test]
async fn servers_wait_for_redis_and_then_serve_live_data() {
    let (mut server, port) = stopped_server();
    let mut viz = spawn(bin_for(&server), &["viz", "--bind", "127.0.0.1:0"]);
    let url = viz.stdout.next();
    let viz_port: u16 = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url:?}"));
    let mcp = spawn(
        bin_for(&server),
        &[
            "--node-id",
            "mcpnode",
            "mcp",
            "--transport",
            "http",
            "--bind",
            "127.0.0.1:0",
        ],
    );
    let announced = mcp.stderr.wait_for("serving MCP on http://");
    let mcp_addr: std::net::SocketAddr = announced
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split("/mcp").next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {announced:?}"));
    waits(&viz, port);
    waits(&mcp, port);
    assert!(!viz.has_exited(), "viz waits for Redis");

    // Serving already: the dashboard answers (Redis is down, so no data), and so does MCP.
    let (code, _) = crate::webdriver::http(viz_port, "GET", "/", None).unwrap();
    assert_eq!(code, 200);
    let (tx, mut updates) = tokio::sync::mpsc::channel(256);
    let client = rmcp::ServiceExt::serve(crate::mcp::Updates(tx), crate::mcp::http_transport(mcp_addr, None))
        .await
        .unwrap();
    let (text, _) = crate::mcp::read(&client, "state://status").await;
    assert!(text.starts_with("Redis Connected: false\n"), "{text}");

    server.restart();
    let _heartbeat = spawn(
        bin_for(&server),
        &["--node-id", "early", "heartbeat", "--interval", "1"],
    );
    wait_until("the dashboard lists the heartbeat's node", || {
        crate::webdriver::http(viz_port, "GET", "/api/nodes", None)
            .is_ok_and(|(code, body)| code == 200 && body.contains("\"early\""))
    });
    let nodes = crate::mcp::eventually("MCP lists the heartbeat's node", || async {
        let (text, _) = crate::mcp::read_result(&client, "state://nodes").await.ok()?;
        text.contains("early").then_some(text)
    })
    .await;
    assert!(nodes.contains("early"), "{nodes}");
    let (text, _) = crate::mcp::read(&client, "state://status").await;
    assert!(text.starts_with("Redis Connected: true\n"), "{text}");
    // The event subscription, refused at start, came up by itself: a session's progress
    // events notify its subscriber. Noticing that Redis is back marks every subscribed URI at
    // most once, so three notifications must come from events. Events published before the
    // listener subscribed are lost, so keep updating.
    let robot = tatbot_state::StateManager::connect(tatbot_state::ManagerConfig::new(
        tatbot_state::Endpoint::new("127.0.0.1", port),
        tatbot_state::NodeId::new("early").unwrap(),
    ))
    .await
    .unwrap();
    let session_id = robot
        .start_stroke_session(&tatbot_state::SessionPlan {
            total_strokes: 1000,
            stroke_length: 1,
            scene: "boot".into(),
        })
        .await
        .unwrap();
    let session_uri = format!("state://stroke/progress/{session_id}");
    #[expect(deprecated, reason = "resources/subscribe is the model rmcp's client offers")]
    client
        .subscribe(rmcp::model::SubscribeRequestParams::new(session_uri.as_str()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let (mut stroke_idx, mut notified) = (0, 0);
    while notified < 3 {
        stroke_idx += 1;
        robot
            .update_stroke_progress(&session_id, &tatbot_state::ProgressUpdate::new(stroke_idx, 0))
            .await
            .unwrap();
        tokio::select! {
            uri = updates.recv() => if uri.as_deref() == Some(session_uri.as_str()) { notified += 1 },
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            () = tokio::time::sleep_until(deadline) => panic!("{notified} event notifications within 20 s"),
        }
    }
    client.cancel().await.unwrap();
}

/// The monitor, started in a terminal while Redis is down, shows a banner saying it waits for
/// Redis at the target; once Redis is up it shows a live heartbeat's node.
#[test]
fn monitor_waits_for_redis_with_a_banner() {
    let (mut server, port) = stopped_server();
    let screen = Screen::start(&format!("-p {port} monitor --refresh 10"));
    screen.wait_for(&format!("waiting for Redis at 127.0.0.1:{port}"));
    server.restart();
    let _heartbeat = spawn(
        bin_for(&server),
        &["--node-id", "early-bird", "heartbeat", "--interval", "1"],
    );
    screen.wait_for("early-bird");
}

/// `mcp` on stdio, launched by an assistant while Redis is down, completes the MCP handshake
/// and answers `Redis Connected: false`; once Redis is up the same server answers `true`.
#[tokio::test]
async fn stdio_mcp_answers_before_redis_and_then_live() {
    let (mut server, _) = stopped_server();
    let (client, pid) = crate::mcp::stdio_client((), &server, &[]).await;
    let (text, _) = crate::mcp::read(&client, "state://status").await;
    assert!(text.starts_with("Redis Connected: false\n"), "{text}");
    server.restart();
    let text = crate::mcp::eventually("the status once Redis is up", || async {
        let (text, _) = crate::mcp::read_result(&client, "state://status").await.ok()?;
        text.starts_with("Redis Connected: true\n").then_some(text)
    })
    .await;
    assert!(text.contains("Nodes Online"), "{text}");
    crate::mcp::stop_stdio(client, pid).await;
}

//! `mcp`: the built binary as an MCP server, driven by rmcp's client over stdio (the binary as a
//! child process) and streamable HTTP, while the library writes state into a test-kit Redis.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use rmcp::model::{
    ErrorCode, ReadResourceRequestParams, ResourceContents, ResourceUpdatedNotificationParam, SubscribeRequestParams,
    UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess, Transport};
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::Value;
use tatbot_state::model::NodeHealth;
use tatbot_state::{
    Category, Descriptor, Endpoint, ManagerConfig, NodeId, ParamName, ParamValue, ProgressUpdate, SessionPlan,
    StateManager,
};
use tatbot_state_testkit::RedisServer;
use tokio::sync::mpsc;

use crate::util::{Running, assert_code, bin_for, is_alive, role_server, run, spawn, stderr};

/// Bound on every wait of these tests.
const DEADLINE: Duration = Duration::from_secs(20);

/// Every resource is listed, both templates too, and each read answers text then JSON with
/// the state the library wrote; the server's own heartbeat says it runs MCP on stdio.
#[tokio::test]
async fn stdio_lists_and_reads_every_resource() {
    let redis = RedisServer::start();
    let robot = manager(&redis, "hog").await;
    let session_id = robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 4,
            scene: "demo".into(),
        })
        .await
        .unwrap();
    robot
        .update_stroke_progress(&session_id, &ProgressUpdate::new(1, 2).descriptions("left", "right"))
        .await
        .unwrap();
    robot.update_node_health(&NodeHealth::new("hog")).await.unwrap();
    robot
        .report_error(
            &Category::new("hardware").unwrap(),
            "left arm stalled",
            serde_json::json!({}),
        )
        .await
        .unwrap();
    let (client, pid) = stdio_client((), &redis, &["--heartbeat"]).await;

    let resources = client.list_all_resources().await.unwrap();
    let mut uris: Vec<&str> = resources.iter().map(|resource| resource.uri.as_str()).collect();
    uris.sort_unstable();
    assert_eq!(
        uris,
        [
            "state://config",
            "state://errors",
            "state://nodes",
            "state://params",
            "state://robot",
            "state://sessions",
            "state://status",
            "state://stroke/progress"
        ]
    );
    let templates = client.list_all_resource_templates().await.unwrap();
    let templates: Vec<&str> = templates
        .iter()
        .map(|template| template.uri_template.as_str())
        .collect();
    assert_eq!(
        templates,
        [
            "state://stroke/progress/{session_id}",
            "state://health/{node_id}",
            "state://robot/{node_id}",
            "state://params/{name}"
        ]
    );

    let (text, json) = read(&client, "state://status").await;
    for line in ["Redis Connected: true\n", "Active Sessions: 1\n", "Nodes Online: "] {
        assert!(text.contains(line), "{text}");
    }
    assert_eq!(json["active_sessions"], 1);
    let (text, json) = read(&client, "state://stroke/progress").await;
    for line in ["Stroke: 2/3\n", "Pose: 3/4\n", "Scene: demo\n", "Executing: true\n"] {
        assert!(text.contains(line), "{text}");
    }
    assert_eq!(json["session_id"], session_id.as_str());
    assert_eq!(json["progress"]["stroke_description_l"], "left");
    let (text, json) = read(&client, &format!("state://stroke/progress/{session_id}")).await;
    assert!(text.contains("Stroke: 2/3\n"), "{text}");
    assert_eq!(json["state"], "executing");
    let (text, json) = read(&client, "state://sessions").await;
    assert!(text.contains(session_id.as_str()), "{text}");
    assert_eq!(json["sessions"][0]["session_id"], session_id.as_str());
    let (text, json) = read(&client, "state://health/hog").await;
    assert!(text.starts_with("Node: hog\nOnline: true\n"), "{text}");
    assert_eq!(json["health"]["node_id"], "hog");
    let (text, json) = read(&client, "state://health/nobody").await;
    assert!(text.contains("Online: false"), "{text}");
    assert_eq!(json["online"], false);
    let (text, _) = read(&client, "state://nodes").await;
    assert!(text.contains("hog"), "{text}");
    let (text, json) = read(&client, "state://config").await;
    assert!(text.contains(&redis.port().to_string()), "{text}");
    assert_eq!(json["fields"][1]["field"], "port");
    let (text, json) = read(&client, "state://errors").await;
    assert!(text.contains("[hardware] hog: left arm stalled"), "{text}");
    assert_eq!(json["errors"][0]["message"], "left arm stalled");

    // The server's heartbeat goes out as it starts; on stdio it runs MCP without a port.
    let health = eventually("the MCP node's heartbeat", || async {
        let (_, json) = read(&client, "state://health/mcpnode").await;
        json["online"].as_bool().unwrap_or(false).then_some(json)
    })
    .await;
    assert_eq!(health["health"]["mcp_server_running"], true);
    assert_eq!(health["health"]["mcp_port"], Value::Null);

    robot.end_stroke_session(&session_id).await.unwrap();
    let (text, json) = read(&client, "state://stroke/progress").await;
    assert_eq!(text, "No active stroke session\n");
    assert_eq!(json["active"], false);
    stop_stdio(client, pid).await;
}

/// A subscription (2025-11 `resources/subscribe`) is told when a simulated robot advances the
/// session, and a read then shows the new position.
#[tokio::test]
#[expect(deprecated, reason = "resources/subscribe is the 2025-11 model this test covers")]
async fn stdio_subscription_notifies_when_progress_advances() {
    let redis = RedisServer::start();
    let robot = manager(&redis, "hog").await;
    let session_id = robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 4,
            scene: "demo".into(),
        })
        .await
        .unwrap();
    let (tx, mut updates) = mpsc::channel(256);
    let (client, pid) = stdio_client(Updates(tx), &redis, &[]).await;
    let progress_uri = format!("state://stroke/progress/{session_id}");
    for uri in [progress_uri.as_str(), "state://stroke/progress"] {
        client.subscribe(SubscribeRequestParams::new(uri)).await.unwrap();
    }

    robot
        .update_stroke_progress(&session_id, &ProgressUpdate::new(0, 1))
        .await
        .unwrap();
    wait_for_update(&mut updates, &progress_uri).await;
    let (text, _) = read(&client, &progress_uri).await;
    assert!(text.contains("Stroke: 1/3\nPose: 2/4\n"), "{text}");

    // A whole simulated session, as fast as Redis takes it: the end is announced too.
    let simulated = crate::util::simulate(&redis, "simbot", 3, 4);
    wait_for_update(&mut updates, "state://stroke/progress").await;
    let (_, json) = read(&client, &format!("state://stroke/progress/{simulated}")).await;
    assert_eq!(json["state"], "ended");
    assert_eq!(json["progress"]["stroke_idx"], 2);
    stop_stdio(client, pid).await;
}

/// `state://params` lists every parameter, one line each, and `state://params/{name}` shows one
/// with its whole declaration; both JSON forms are the library's `Param`.
#[tokio::test]
async fn stdio_reads_parameters() {
    let redis = RedisServer::start();
    let robot = manager(&redis, "hog").await;
    let params = robot.params();
    let goal = ParamName::new("arms.goal_time_slow").unwrap();
    let descriptor = Descriptor::new(2.0).description("slow move time, s").range(0.1, 5.0);
    params.declare(&goal, &descriptor).await.unwrap();
    params.set(&goal, &ParamValue::Float(2.5)).await.unwrap();
    let joints = ParamName::new("arms.joint_count").unwrap();
    params.declare(&joints, &Descriptor::new(7).read_only()).await.unwrap();
    let (client, pid) = stdio_client((), &redis, &["--no-heartbeat"]).await;

    let (text, json) = read(&client, "state://params").await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "Parameters: 2");
    assert!(
        lines[1].starts_with("arms.goal_time_slow = 2.5 (float, v2, set by hog at "),
        "{text}"
    );
    assert!(
        lines[2].starts_with("arms.joint_count = 7 (int, v1, set by hog at "),
        "{text}"
    );
    assert_eq!(json["count"], 2);
    assert_eq!(json["params"][0]["name"], "arms.goal_time_slow");
    assert_eq!(json["params"][0]["value"], 2.5);
    assert_eq!(json["params"][0]["version"], 2);
    assert_eq!(json["params"][0]["actor"], "hog");
    assert_eq!(json["params"][0]["descriptor"]["type"], "float");

    let (text, json) = read(&client, "state://params/arms.goal_time_slow").await;
    for line in [
        "Name: arms.goal_time_slow\n",
        "Type: float\n",
        "Value: 2.5\n",
        "Version: 2\n",
        "Set By: hog\n",
        "Default: 2.0\n",
        "Min: 0.1\nMax: 5.0\nStep: -\n",
        "Read Only: false\n",
        "Description: slow move time, s\n",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    assert_eq!(json["descriptor"]["description"], "slow move time, s");
    assert_eq!(json["descriptor"]["min"], 0.1);
    assert_eq!(json["descriptor"]["default"], 2.0);
    assert!(json["updated"].is_string(), "{json}");
    let (text, json) = read(&client, "state://params/arms%2Ejoint_count").await;
    assert!(text.contains("Read Only: true\n"), "{text}");
    assert_eq!(json["descriptor"]["read_only"], true);
    stop_stdio(client, pid).await;
}

/// A subscriber to `state://params` and to one parameter is told when `tatbot-state param set`
/// and then the library change it, and a read shows the new value and who set it.
#[tokio::test]
#[expect(deprecated, reason = "resources/subscribe is the 2025-11 model this test covers")]
async fn stdio_subscription_notifies_when_a_parameter_is_set() {
    let redis = RedisServer::start();
    let robot = manager(&redis, "hog").await;
    let params = robot.params();
    let goal = ParamName::new("arms.goal_time_slow").unwrap();
    params
        .declare(&goal, &Descriptor::new(2.0).range(0.1, 5.0))
        .await
        .unwrap();
    let (tx, mut updates) = mpsc::channel(256);
    let (client, pid) = stdio_client(Updates(tx), &redis, &["--no-heartbeat"]).await;
    let goal_uri = "state://params/arms.goal_time_slow";
    for uri in ["state://params", goal_uri] {
        client.subscribe(SubscribeRequestParams::new(uri)).await.unwrap();
    }

    // The server opens its parameter watch before it answers, so this change is seen.
    let set = run(
        bin_for(&redis),
        &["--node-id", "cli", "param", "set", "arms.goal_time_slow", "3"],
    );
    assert_code(&set, 0);
    wait_for_updates(&mut updates, &["state://params", goal_uri]).await;
    let (text, _) = read(&client, goal_uri).await;
    assert!(text.contains("Value: 3.0\nVersion: 2\nSet By: cli\n"), "{text}");

    params.set(&goal, &ParamValue::Float(4.5)).await.unwrap();
    wait_for_updates(&mut updates, &[goal_uri]).await;
    let (text, _) = read(&client, "state://params").await;
    assert!(
        text.contains("arms.goal_time_slow = 4.5 (float, v3, set by hog at "),
        "{text}"
    );
    stop_stdio(client, pid).await;
}

/// Issue #13 point 6: the stdio server an assistant launches adds no node unless asked with
/// `--heartbeat`: after it served reads and stopped, the node was never registered.
#[tokio::test]
async fn stdio_sends_no_heartbeat_unless_asked() {
    let redis = RedisServer::start();
    let (client, pid) = stdio_client((), &redis, &[]).await;
    let (text, _) = read(&client, "state://status").await;
    assert!(text.contains("Redis Connected: true"), "{text}");
    let (text, _) = read(&client, "state://nodes").await;
    assert!(!text.contains("mcpnode"), "{text}");
    stop_stdio(client, pid).await;
    assert_eq!(
        redis.command(&["ZSCORE", "tatbot:nodes", "mcpnode"]).unwrap(),
        "$-1\r\n"
    );
    assert_eq!(redis.command(&["EXISTS", "node:health:mcpnode"]).unwrap(), ":0\r\n");
}

/// Invalid ids in a template are an MCP error that says why (and reach no Redis pattern), and
/// an unknown URI is "resource not found" (-32002).
#[tokio::test]
async fn bad_ids_and_unknown_uris_are_mcp_errors() {
    let redis = RedisServer::start();
    let (client, pid) = stdio_client((), &redis, &[]).await;
    let long = format!("state://health/{}", "a".repeat(300));
    let long_name = format!("state://params/{}", "a".repeat(300));
    for (uri, reason) in [
        ("state://health/*", "only letters"),
        ("state://health/a:b", "only letters"),
        ("state://health/", "empty"),
        (long.as_str(), "longer than 64"),
        ("state://health/nöde", "only letters"),
        ("state://stroke/progress/stroke_*", "only letters"),
        ("state://params/*", "only letters"),
        ("state://params/arms.*", "only letters"),
        ("state://params/a:b", "only letters"),
        ("state://params/", "empty"),
        (long_name.as_str(), "longer than 128"),
        ("state://params/ärms.x", "only letters"),
        ("state://params/arms..x", "empty segment"),
    ] {
        let err = read_error(&client, uri).await;
        assert_eq!(err.code, ErrorCode::INVALID_PARAMS, "{uri}: {err:?}");
        assert!(err.message.contains(reason), "{uri}: {}", err.message);
    }
    for uri in ["state://nope", "file:///etc/passwd"] {
        let err = read_error(&client, uri).await;
        assert_eq!(err.code, ErrorCode::RESOURCE_NOT_FOUND, "{uri}: {err:?}");
        assert_eq!(err.code.0, -32002);
    }
    let err = read_error(&client, "state://stroke/progress/stroke_gone_1").await;
    assert_eq!(err.code, ErrorCode::RESOURCE_NOT_FOUND, "{err:?}");
    // Nothing above reached Redis as a pattern: no SCAN (the only command we send a key
    // pattern with) ran at all, and no parameter was looked up (HMGET reads one).
    let stats = redis.command(&["INFO", "commandstats"]).unwrap();
    assert!(!stats.contains("cmdstat_scan"), "{stats}");
    assert!(!stats.contains("cmdstat_hmget"), "{stats}");
    let err = read_error(&client, "state://params/arms.nope").await;
    assert_eq!(err.code, ErrorCode::RESOURCE_NOT_FOUND, "{err:?}");
    assert!(err.message.contains("state://params"), "{}", err.message);
    stop_stdio(client, pid).await;
}

/// With Redis killed under a running server, reads answer that it is unreachable and how to
/// check it, the status says `Redis Connected: false`; after a restart reads work again and
/// subscriptions deliver again, without restarting the MCP server.
#[tokio::test]
#[expect(deprecated, reason = "resources/subscribe is the 2025-11 model this test covers")]
async fn redis_outage_answers_unreachable_then_recovers() {
    let mut redis = RedisServer::start();
    let (tx, mut updates) = mpsc::channel(256);
    let (client, pid) = stdio_client(Updates(tx), &redis, &["--no-heartbeat"]).await;
    client
        .subscribe(SubscribeRequestParams::new("state://stroke/progress"))
        .await
        .unwrap();
    // An update proves the event subscription is up, so the outage hits a live one. The
    // server subscribes in the background after it starts, so keep producing until it hears.
    let robot = manager(&redis, "hog").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        robot
            .start_stroke_session(&SessionPlan {
                total_strokes: 1,
                stroke_length: 1,
                scene: "before".into(),
            })
            .await
            .unwrap();
        tokio::select! {
            uri = updates.recv() => if uri.as_deref() == Some("state://stroke/progress") { break },
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = tokio::time::sleep_until(deadline) => panic!("no update before the outage within {DEADLINE:?}"),
        }
    }
    drop(robot);

    redis.kill();
    let err = read_error(&client, "state://sessions").await;
    assert!(
        err.message.contains("unreachable") && err.message.contains("tatbot-state doctor"),
        "{}",
        err.message
    );
    let (text, _) = read(&client, "state://status").await;
    assert!(text.starts_with("Redis Connected: false\n"), "{text}");

    redis.restart();
    let text = eventually("reads after the restart", || async {
        match read_result(&client, "state://sessions").await {
            Ok((text, _)) => Some(text),
            Err(_) => None,
        }
    })
    .await;
    assert!(text.starts_with("Sessions: 0 stored"), "{text}");
    // The event subscription came back by itself. Recovery alone marks every subscribed URI
    // at most once, so three updates of a session subscribed after the restart must come from
    // events. Events published before the listener re-subscribed are lost: keep producing.
    let robot = manager(&redis, "hog").await;
    let session_id = robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 100,
            stroke_length: 1,
            scene: "after".into(),
        })
        .await
        .unwrap();
    let session_uri = format!("state://stroke/progress/{session_id}");
    client
        .subscribe(SubscribeRequestParams::new(session_uri.as_str()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (mut stroke_idx, mut notified) = (0, 0);
    while notified < 3 {
        stroke_idx += 1;
        robot
            .update_stroke_progress(&session_id, &ProgressUpdate::new(stroke_idx, 0))
            .await
            .unwrap();
        tokio::select! {
            uri = updates.recv() => if uri.as_deref() == Some(session_uri.as_str()) { notified += 1 },
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = tokio::time::sleep_until(deadline) => panic!("{notified} updates after the restart within {DEADLINE:?}"),
        }
    }
    stop_stdio(client, pid).await;
}

/// The viewer role of the ACL template may only read and subscribe, and with `--no-heartbeat`
/// every resource, parameters included, still reads: the server's connection sends no write.
#[tokio::test]
async fn read_only_user_serves_every_resource() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("users.acl");
    let template = include_str!("../../../config/redis/users.acl");
    std::fs::write(
        &acl,
        template
            .replace("CHANGE-ME-admin", "admin-pw")
            .replace("CHANGE-ME-viewer", "viewer-pw"),
    )
    .unwrap();
    let redis = RedisServer::builder().acl_file(&acl).start();
    let arms = dir.path().join("arms.yaml");
    std::fs::write(&arms, "arms:\n  goal_time_slow: 2.0\n").unwrap();
    let admin = ["--user", "admin", "-a", "admin-pw", "param", "load"];
    assert_code(
        &run(bin_for(&redis), &[&admin[..], &[arms.to_str().unwrap()]].concat()),
        0,
    );
    let viewer = ["--no-heartbeat", "--user", "viewer", "-a", "viewer-pw"];
    let (client, pid) = stdio_client((), &redis, &viewer).await;
    for uri in [
        "state://status",
        "state://stroke/progress",
        "state://sessions",
        "state://nodes",
        "state://health/hog",
        "state://config",
        "state://errors",
        "state://params",
        "state://params/arms.goal_time_slow",
    ] {
        let (text, _) = read(&client, uri).await;
        assert!(!text.contains("NOPERM"), "{uri}: {text}");
    }
    let (text, _) = read(&client, "state://status").await;
    assert!(text.starts_with("Redis Connected: true\n"), "{text}");
    stop_stdio(client, pid).await;
}

/// Over HTTP on loopback: a 2025-11 client reads and is notified through its session, and the
/// server's heartbeat carries its port; SIGTERM stops it cleanly.
#[tokio::test]
#[expect(deprecated, reason = "resources/subscribe is the 2025-11 model this test covers")]
async fn http_serves_reads_and_notifications() {
    let redis = RedisServer::start();
    let robot = manager(&redis, "hog").await;
    let session_id = robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 2,
            scene: "demo".into(),
        })
        .await
        .unwrap();
    let (mut running, addr) = http_server(&redis, &["--bind", "127.0.0.1:0"]);
    let (tx, mut updates) = mpsc::channel(256);
    let client = Updates(tx).serve(http_transport(addr, None)).await.unwrap();

    let (text, _) = read(&client, "state://status").await;
    assert!(text.contains("Active Sessions: 1\n"), "{text}");
    let progress_uri = format!("state://stroke/progress/{session_id}");
    client
        .subscribe(SubscribeRequestParams::new(progress_uri.as_str()))
        .await
        .unwrap();
    robot
        .update_stroke_progress(&session_id, &ProgressUpdate::new(1, 1))
        .await
        .unwrap();
    wait_for_update(&mut updates, &progress_uri).await;
    let (text, _) = read(&client, &progress_uri).await;
    assert!(text.contains("Stroke: 2/2\nPose: 2/2\n"), "{text}");
    let health = eventually("the MCP node's heartbeat", || async {
        let (_, json) = read(&client, "state://health/mcpnode").await;
        json["online"].as_bool().unwrap_or(false).then_some(json)
    })
    .await;
    assert_eq!(health["health"]["mcp_server_running"], true);
    assert_eq!(health["health"]["mcp_port"], addr.port());

    client.cancel().await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(running.pid()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(running.wait().success());
}

/// Many HTTP sessions share the server's Redis connections: twelve sessions following two
/// stroke sessions use as many as one did. Each session is told of the updates it subscribed
/// to, and only those; one that unsubscribes or hangs up changes nothing for the others.
#[tokio::test]
#[expect(deprecated, reason = "resources/subscribe is the 2025-11 model this test covers")]
async fn http_sessions_share_redis_and_keep_their_own_subscriptions() {
    const SESSIONS: usize = 12;
    let redis = RedisServer::start();
    // Node names chosen so that the first stroke session's URI sorts before the second's: a
    // session's notifications go out in that order (see `updates_until`).
    let first_robot = manager(&redis, "aaa").await;
    let second_robot = manager(&redis, "zzz").await;
    let first = first_robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 4,
            scene: "demo".into(),
        })
        .await
        .unwrap();
    let second = second_robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 4,
            scene: "demo".into(),
        })
        .await
        .unwrap();
    // A first awaited update each, before any connection is counted: it opens the robot's
    // own connection for awaited writes (issue #18), which is the robots', not the server's.
    for (robot, session) in [(&first_robot, &first), (&second_robot, &second)] {
        robot
            .update_stroke_progress(session, &ProgressUpdate::new(0, 0))
            .await
            .unwrap();
    }
    let first_uri = format!("state://stroke/progress/{first}");
    let second_uri = format!("state://stroke/progress/{second}");
    assert!(first_uri < second_uri);
    let (_running, addr) = http_server(&redis, &["--bind", "127.0.0.1:0", "--no-heartbeat"]);

    let mut followers = Vec::new();
    let mut with_one = 0;
    for index in 0..SESSIONS {
        let (tx, updates) = mpsc::channel(256);
        let client = Updates(tx).serve(http_transport(addr, None)).await.unwrap();
        for uri in [&first_uri, &second_uri] {
            client
                .subscribe(SubscribeRequestParams::new(uri.as_str()))
                .await
                .unwrap();
        }
        read(&client, &first_uri).await;
        followers.push((client, updates));
        if index == 0 {
            with_one = redis_clients(&redis);
        }
    }
    assert_eq!(
        redis_clients(&redis),
        with_one,
        "{SESSIONS} sessions use more Redis connections than one"
    );

    let (unsubscribed, mut unsubscribed_updates) = followers.remove(0);
    unsubscribed
        .unsubscribe(UnsubscribeRequestParams::new(first_uri.as_str()))
        .await
        .unwrap();
    let (gone, _) = followers.remove(0);
    gone.cancel().await.unwrap();
    first_robot
        .update_stroke_progress(&first, &ProgressUpdate::new(0, 1))
        .await
        .unwrap();
    second_robot
        .update_stroke_progress(&second, &ProgressUpdate::new(0, 1))
        .await
        .unwrap();
    for (_, updates) in &mut followers {
        let seen = updates_until(updates, &second_uri).await;
        assert!(seen.contains(&first_uri), "{seen:?}");
    }
    let seen = updates_until(&mut unsubscribed_updates, &second_uri).await;
    assert!(!seen.contains(&first_uri), "an unsubscribed URI was notified: {seen:?}");
    assert_eq!(redis_clients(&redis), with_one);
}

/// A request from a foreign Origin or for a foreign Host is refused with 403; our own origins
/// and no Origin at all pass.
#[test]
fn http_rejects_foreign_origin_and_host() {
    let redis = RedisServer::start();
    let (_running, addr) = http_server(&redis, &["--bind", "127.0.0.1:0"]);
    let host = addr.to_string();
    assert_eq!(http_status(addr, &[("Host", &host)]), 200);
    assert_eq!(
        http_status(addr, &[("Host", &host), ("Origin", "http://localhost:5173")]),
        200
    );
    assert_eq!(
        http_status(addr, &[("Host", &host), ("Origin", "http://evil.example")]),
        403
    );
    assert_eq!(http_status(addr, &[("Host", &host), ("Origin", "null")]), 403);
    assert_eq!(http_status(addr, &[("Host", "evil.example")]), 403);
}

/// Off loopback a token is required: without one the server refuses to start (one line, exit
/// 2); with one, requests without it or with a wrong one get 401 and rmcp's client with it works.
#[tokio::test]
async fn http_off_loopback_requires_the_token() {
    let redis = RedisServer::start();
    let refused = run(bin_for(&redis), &["mcp", "--transport", "http", "--bind", "0.0.0.0:0"]);
    assert_code(&refused, 2);
    let message = stderr(&refused);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("without a token"), "{message}");

    // Bound to every interface, but this test only ever connects to 127.0.0.1.
    let (_running, bound) = http_server(&redis, &["--bind", "0.0.0.0:0", "--token", "s3cret"]);
    let addr = SocketAddr::from(([127, 0, 0, 1], bound.port()));
    let host = addr.to_string();
    assert_eq!(http_status(addr, &[("Host", &host)]), 401);
    assert_eq!(
        http_status(addr, &[("Host", &host), ("Authorization", "Bearer wrong")]),
        401
    );
    assert_eq!(
        http_status(addr, &[("Host", &host), ("Authorization", "Bearer s3cret")]),
        200
    );
    let client = ().serve(http_transport(addr, Some("s3cret"))).await.unwrap();
    let (text, _) = read(&client, "state://status").await;
    assert!(text.starts_with("Redis Connected: true\n"), "{text}");
    client.cancel().await.unwrap();
}

/// Issue #14: a blank token is refused like a missing one: one line, exit code 2.
#[test]
fn blank_token_is_refused() {
    let redis = RedisServer::start();
    for blank in [" ", "\t  "] {
        let refused = run(
            bin_for(&redis),
            &["mcp", "--transport", "http", "--bind", "127.0.0.1:0", "--token", blank],
        );
        assert_code(&refused, 2);
        let message = stderr(&refused);
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.contains("blank"), "{message}");
    }
}

/// Issue #14: as the read-only viewer, the server does not try to send a heartbeat (which
/// Redis would refuse every interval), and serves reads.
#[tokio::test]
async fn viewer_role_sends_no_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let redis = role_server(dir.path());
    let viewer = ["-v", "--user", "viewer", "-a", "viewer-pw", "--bind", "127.0.0.1:0"];
    let (mut running, addr) = http_server(&redis, &viewer);
    let client = ().serve(http_transport(addr, None)).await.unwrap();
    let (text, _) = read(&client, "state://status").await;
    assert!(text.starts_with("Redis Connected: true\n"), "{text}");
    client.cancel().await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(running.pid()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(running.wait().success());
    // Without the fix the first beat is refused right after the announcement, logged as
    // "heartbeat failed ... NoPerm".
    let log = running.stderr.rest().join("\n");
    assert!(!log.contains("heartbeat") && !log.contains("NoPerm"), "{log}");
}

// Helpers.

/// A manager on `redis` writing as `node`.
async fn manager(redis: &RedisServer, node: &str) -> StateManager {
    let endpoint = Endpoint::new(redis.host(), redis.port());
    StateManager::connect(ManagerConfig::new(endpoint, NodeId::new(node).unwrap()))
        .await
        .unwrap()
}

/// Forwards `notifications/resources/updated` into a channel.
pub(crate) struct Updates(pub(crate) mpsc::Sender<String>);

impl ClientHandler for Updates {
    async fn on_resource_updated(&self, params: ResourceUpdatedNotificationParam, _: NotificationContext<RoleClient>) {
        // A full channel means the test stopped listening; dropping the URI is then harmless.
        let _ = self.0.try_send(params.uri);
    }
}

/// Waits until an update for `uri` arrives, skipping others.
async fn wait_for_update(updates: &mut mpsc::Receiver<String>, uri: &str) {
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(updated) = updates.recv().await {
            if updated == uri {
                return;
            }
        }
        panic!("the client stopped before an update for {uri}");
    })
    .await;
    assert!(found.is_ok(), "no update for {uri} within {DEADLINE:?}");
}

/// The updates that arrive until one for `uri` does, that one included.
///
/// A session's notifications are sent in order and one batch at a time, each batch sorted by
/// URI; so an update for a URI that sorts before `uri`, marked before or with it, is in the
/// returned list if it was sent at all.
async fn updates_until(updates: &mut mpsc::Receiver<String>, uri: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(updated) = updates.recv().await {
            let done = updated == uri;
            seen.push(updated);
            if done {
                return;
            }
        }
        panic!("the client stopped before an update for {uri}");
    })
    .await;
    assert!(found.is_ok(), "no update for {uri} within {DEADLINE:?}; got {seen:?}");
    seen
}

/// How many clients the Redis server has besides the connection that asks.
fn redis_clients(redis: &RedisServer) -> usize {
    let list = redis.command(&["CLIENT", "LIST"]).expect("CLIENT LIST answers");
    list.lines().filter(|line| line.contains("id=")).count() - 1
}

/// Waits until an update for each of `uris` has arrived (in any order), skipping others.
async fn wait_for_updates(updates: &mut mpsc::Receiver<String>, uris: &[&str]) {
    let mut missing: std::collections::BTreeSet<&str> = uris.iter().copied().collect();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(updated) = updates.recv().await {
            missing.remove(updated.as_str());
            if missing.is_empty() {
                return;
            }
        }
        panic!("the client stopped before updates for {uris:?}");
    })
    .await;
    assert!(found.is_ok(), "no update for {missing:?} within {DEADLINE:?}");
}

/// Starts `tatbot-state mcp --transport stdio` as node `mcpnode` and connects a client to it
/// (2025-11 `initialize` handshake). Returns the client and the server's pid.
pub(crate) async fn stdio_client<H: ClientHandler>(
    handler: H,
    redis: &RedisServer,
    extra: &[&str],
) -> (RunningService<RoleClient, H>, u32) {
    let mut command = bin_for(redis);
    command
        .args(["--node-id", "mcpnode", "mcp", "--transport", "stdio"])
        .args(extra);
    let mut command = tokio::process::Command::from(command);
    // The server exits when its stdin closes; killing it on drop covers a test that panics.
    command.kill_on_drop(true);
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the test binary starts");
    let pid = transport.id().expect("the server is running");
    let client = handler.serve(transport).await.expect("the MCP handshake succeeds");
    (client, pid)
}

/// Closes the client's end of stdio and waits until the server has exited because of it.
pub(crate) async fn stop_stdio<H: ClientHandler>(client: RunningService<RoleClient, H>, pid: u32) {
    client.cancel().await.unwrap();
    eventually("the stdio server exiting after its client left", || async {
        (!is_alive(pid)).then_some(())
    })
    .await;
}

/// Starts `tatbot-state mcp --transport http` with `args` and returns it with the address it
/// announced on stderr once listening.
fn http_server(redis: &RedisServer, args: &[&str]) -> (Running, SocketAddr) {
    let mut full = vec!["--node-id", "mcpnode", "mcp", "--transport", "http"];
    full.extend_from_slice(args);
    let running = spawn(bin_for(redis), &full);
    let line = running.stderr.wait_for("serving MCP on http://");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split("/mcp").next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (running, addr)
}

/// rmcp's streamable HTTP client for the server at `addr`, with a bearer token if given.
pub(crate) fn http_transport(addr: SocketAddr, token: Option<&str>) -> impl Transport<RoleClient> + 'static {
    let mut config = StreamableHttpClientTransportConfig::with_uri(format!("http://{addr}/mcp"));
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    StreamableHttpClientTransport::from_config(config)
}

/// POSTs an `initialize` request with `headers` (which must include `Host`) over a plain TCP
/// connection and returns the status code.
fn http_status(addr: SocketAddr, headers: &[(&str, &str)]) -> u16 {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let mut request = "POST /mcp HTTP/1.1\r\n".to_owned();
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    // The status line is all we need; an SSE reply stays open, so read only the first bytes.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head);
    head[9..12].parse().unwrap_or_else(|_| panic!("no status in {head:?}"))
}

/// A read's text and parsed JSON contents.
pub(crate) async fn read<H: ClientHandler>(client: &RunningService<RoleClient, H>, uri: &str) -> (String, Value) {
    read_result(client, uri)
        .await
        .unwrap_or_else(|err| panic!("reading {uri}: {err}"))
}

/// A read's text and parsed JSON contents, checking there are exactly those two, in that order.
pub(crate) async fn read_result<H: ClientHandler>(
    client: &RunningService<RoleClient, H>,
    uri: &str,
) -> Result<(String, Value), ServiceError> {
    let result = client.read_resource(ReadResourceRequestParams::new(uri)).await?;
    let [
        ResourceContents::TextResourceContents {
            mime_type: Some(text_type),
            text,
            uri: text_uri,
            ..
        },
        ResourceContents::TextResourceContents {
            mime_type: Some(json_type),
            text: json,
            uri: json_uri,
            ..
        },
    ] = result.contents.as_slice()
    else {
        panic!("{uri}: expected text and JSON contents, got {:?}", result.contents);
    };
    assert_eq!(
        (text_type.as_str(), json_type.as_str()),
        ("text/plain", "application/json")
    );
    assert_eq!((text_uri.as_str(), json_uri.as_str()), (uri, uri));
    Ok((
        text.clone(),
        serde_json::from_str(json).expect("the JSON content parses"),
    ))
}

/// The MCP error a read of `uri` answers.
async fn read_error<H: ClientHandler>(client: &RunningService<RoleClient, H>, uri: &str) -> rmcp::ErrorData {
    match read_result(client, uri).await {
        Err(ServiceError::McpError(err)) => err,
        other => panic!("{uri}: expected an MCP error, got {other:?}"),
    }
}

/// Retries `probe` every 50 ms until it returns `Some`, at most [`DEADLINE`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// MCP started with `--sentinel` keeps serving live progress across a kill -9 failover: its
/// connections find the promoted replica through the Sentinels by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_mcp_follows_the_new_master() {
    let mut cluster = tatbot_state_testkit::SentinelCluster::start();
    let old = cluster.servers()[0].port();
    // The MCP node's own heartbeat must follow the failover too.
    let mut extra: Vec<String> = ["--heartbeat", "--heartbeat-interval", "1", "--node-id", "mcpha"]
        .map(str::to_owned)
        .to_vec();
    for address in cluster.sentinel_addrs() {
        extra.extend(["--sentinel".to_owned(), address]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (tx, _updates) = mpsc::channel(256);
    let (client, pid) = stdio_client(Updates(tx), &cluster.servers()[0], &extra).await;
    let config = crate::util::sentinel_config(&cluster, "hog");
    let robot = StateManager::connect(config).await.unwrap();
    let session_id = robot
        .start_stroke_session(&tatbot_state::SessionPlan {
            total_strokes: 100,
            stroke_length: 1,
            scene: "ha".into(),
        })
        .await
        .unwrap();
    robot
        .update_stroke_progress(&session_id, &ProgressUpdate::new(2, 0))
        .await
        .unwrap();
    let uri = format!("state://stroke/progress/{session_id}");
    assert_eq!(read(&client, &uri).await.1["progress"]["stroke_idx"], 2);

    cluster.server_mut(old).kill();
    tokio::task::block_in_place(|| cluster.wait_for_new_master(old, DEADLINE)).expect("a replica is promoted");
    // The robot's awaited writes fail until its manager has moved too; then one lands.
    eventually("a write on the new master", || async {
        robot
            .update_stroke_progress(&session_id, &ProgressUpdate::new(7, 0))
            .await
            .ok()
    })
    .await;
    eventually("MCP reading the new master", || async {
        let (_, json) = read_result(&client, &uri).await.ok()?;
        (json["progress"]["stroke_idx"] == 7).then_some(())
    })
    .await;
    let promoted = tatbot_state::Timestamp::now();
    let mcp_node = tatbot_state::NodeId::new("mcpha").unwrap();
    eventually("the MCP node's heartbeat on the new master", || async {
        let health = robot.get_node_health(&mcp_node).await.ok()??;
        (health.timestamp > promoted).then_some(())
    })
    .await;
    stop_stdio(client, pid).await;
}

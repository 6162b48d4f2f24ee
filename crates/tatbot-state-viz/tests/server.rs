//! The dashboard end to end over HTTP: the page, the JSON API, the SSE stream and its resume,
//! and the parameters (`/api/params` and `params` events).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tatbot_state::follow::FollowConfig;
use tatbot_state::{
    CancellationToken, Descriptor, Endpoint, ManagerConfig, NodeId, ParamName, ParamValue, ProgressUpdate, SessionPlan,
    StateManager,
};
use tatbot_state_testkit::RedisServer;
use tatbot_state_viz::VizState;

use crate::http::{LIMIT, SseEvent, SseStream, request};

/// A dashboard served on a free port for `server`; cancel the token to stop it.
pub struct Dashboard {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Dashboard {
    /// Cancels the server and asserts it returns cleanly within [`LIMIT`].
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(LIMIT, self.task).await.unwrap().unwrap().unwrap();
    }
}

pub async fn manager(server: &RedisServer) -> StateManager {
    let endpoint = Endpoint::new(server.host(), server.port());
    StateManager::connect(ManagerConfig::new(endpoint, NodeId::new("hog").unwrap()))
        .await
        .unwrap()
}

/// The dashboard's state for `state`, following with short blocks and polls.
pub fn viz_state(state: &StateManager) -> VizState {
    let config = FollowConfig {
        block: Duration::from_millis(200),
        poll_interval: Duration::from_millis(200),
        ..FollowConfig::default()
    };
    VizState::new(state.clone()).with_follow_config(config)
}

pub async fn dashboard(state: &StateManager) -> Dashboard {
    serve(viz_state(state)).await
}

/// Serves `viz` on a free loopback port.
pub async fn serve(viz: VizState) -> Dashboard {
    serve_on("127.0.0.1:0", viz).await
}

/// Serves `viz` on `bind` (a free port of it).
pub async fn serve_on(bind: &str, viz: VizState) -> Dashboard {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(tatbot_state_viz::serve(listener, viz, shutdown.clone()));
    Dashboard { addr, shutdown, task }
}

/// The next event of the follow stream, skipping `params` and `clock` events (which are not
/// follow items);
/// `None` when the server closed the stream.
pub async fn next_follow(stream: &mut SseStream) -> Option<SseEvent> {
    loop {
        let event = stream.next().await?;
        if event.event != "params" && event.event != "clock" {
            return Some(event);
        }
    }
}

pub async fn next_named(stream: &mut SseStream, name: &str) -> SseEvent {
    loop {
        let event = stream.next().await.expect("the stream stays open");
        if event.event == name {
            return event;
        }
    }
}

/// The stream opens with a snapshot, and a client resuming with Last-Event-ID gets only what it missed.
#[tokio::test]
async fn stream_resumes_from_last_event_id() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: 6,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let dashboard = dashboard(&state).await;

    let mut stream = SseStream::open(dashboard.addr, None).await;
    let snapshot = next_follow(&mut stream).await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    assert!(
        snapshot.json()["sessions"][session.as_str()]["is_executing"]
            .as_bool()
            .unwrap()
    );
    for pose in 0..3 {
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
            .await
            .unwrap();
    }
    let mut last = None;
    for pose in 0..3 {
        let change = next_named(&mut stream, "change").await;
        assert_eq!(change.json()["kind"], "progress");
        assert_eq!(change.json()["entry"]["pose_idx"], pose);
        assert_eq!(change.id.as_deref(), change.json()["cursor"].as_str());
        last = change.id;
    }
    drop(stream);

    for pose in 3..6 {
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
            .await
            .unwrap();
    }
    let mut resumed = SseStream::open(dashboard.addr, last.as_deref()).await;
    for pose in 3..6 {
        let change = next_follow(&mut resumed).await.unwrap();
        assert_eq!(
            (change.event.as_str(), change.json()["kind"].as_str()),
            ("change", Some("progress"))
        );
        assert_eq!(change.json()["entry"]["pose_idx"], pose);
    }
    dashboard.stop().await;
}

/// The page, its assets and the JSON API answer; nothing writes to Redis, and POST is refused.
#[tokio::test]
async fn page_and_json_api_are_read_only() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 2,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let category = tatbot_state::Category::new("hardware").unwrap();
    state
        .report_error(&category, "arm fault", serde_json::json!({}))
        .await
        .unwrap();
    let before = server.command(&["DBSIZE"]).unwrap();
    let dashboard = dashboard(&state).await;

    let (status, page) = request(dashboard.addr, "GET", "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("Sync with Robot") && page.contains("/assets/app.js"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    for asset in ["/assets/app.js", "/assets/style.css"] {
        assert_eq!(request(dashboard.addr, "GET", asset).await.0, 200, "{asset}");
    }
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();
    let (status, body) = request(dashboard.addr, "GET", "/api/status").await;
    assert_eq!((status, json(&body)["active_sessions"].as_u64()), (200, Some(1)));
    let (status, body) = request(dashboard.addr, "GET", "/api/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["sessions"][session.as_str()]["total_strokes"], 2);
    let (status, body) = request(dashboard.addr, "GET", "/api/nodes").await;
    assert_eq!(status, 200);
    assert!(json(&body)["nodes"].is_object());
    let (status, body) = request(dashboard.addr, "GET", "/api/events").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["errors"][0]["payload"]["message"], "arm fault");
    assert_eq!(json(&body)["events"][0]["event_type"], "session_start");

    for path in ["/api/status", "/api/sessions", "/api/stream", "/"] {
        assert_eq!(request(dashboard.addr, "POST", path).await.0, 405, "{path}");
    }
    assert_eq!(
        server.command(&["DBSIZE"]).unwrap(),
        before,
        "the dashboard wrote to Redis"
    );
    dashboard.stop().await;
}

/// `/api/params` lists every parameter as the library serializes it; the stream sends the whole
/// list as a `params` event without an id, again after a change, and to a resuming client the
/// newest list (never the older ones it missed), then what changed while it was away.
#[tokio::test]
async fn params_api_and_stream_events() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let params = state.params();
    let goal = ParamName::new("arms.goal_time_slow").unwrap();
    let descriptor = Descriptor::new(2.0).description("slow move time, s").range(0.1, 5.0);
    params.declare(&goal, &descriptor).await.unwrap();
    let dashboard = dashboard(&state).await;

    let (status, body) = request(dashboard.addr, "GET", "/api/params").await;
    assert_eq!(status, 200);
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["params"][0]["name"], "arms.goal_time_slow");
    assert_eq!(listed["params"][0]["value"], 2.0);
    assert_eq!(listed["params"][0]["version"], 1);
    assert_eq!(listed["params"][0]["actor"], "hog");
    assert_eq!(listed["params"][0]["descriptor"]["max"], 5.0);
    assert_eq!(request(dashboard.addr, "POST", "/api/params").await.0, 405);

    // The snapshot and the first list come in either order.
    let mut stream = SseStream::open(dashboard.addr, None).await;
    let (mut snapshot_id, mut first) = (None, None);
    while snapshot_id.is_none() || first.is_none() {
        let event = stream.next().await.expect("the stream stays open");
        match event.event.as_str() {
            "snapshot" => snapshot_id = event.id,
            "params" => first = Some(event),
            _ => {}
        }
    }
    let first = first.unwrap();
    assert_eq!((first.id.as_deref(), first.json()), (None, listed));
    params.set(&goal, &ParamValue::Float(3.5)).await.unwrap();
    let changed = next_named(&mut stream, "params").await;
    assert_eq!(changed.json()["params"][0]["value"], 3.5);
    assert_eq!(changed.json()["params"][0]["version"], 2);
    drop(stream);

    params.set(&goal, &ParamValue::Float(4.0)).await.unwrap();
    let mut resumed = SseStream::open(dashboard.addr, snapshot_id.as_deref()).await;
    // The hub may not have read version 3 yet when the client comes back: then it gets
    // version 2, what the hub has, and version 3 right after; never a list twice, or an older
    // one after a newer.
    let mut shown = 1;
    while shown < 3 {
        let list = next_named(&mut resumed, "params").await.json();
        let version = list["params"][0]["version"].as_u64().unwrap();
        assert!(version > shown, "version {version} after version {shown}");
        assert_eq!(list["params"][0]["value"], if version == 3 { 4.0 } else { 3.5 });
        shown = version;
    }
    dashboard.stop().await;
}

/// Cancelling the token ends open streams, and the server returns promptly.
#[tokio::test]
async fn shutdown_ends_open_streams() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let dashboard = dashboard(&state).await;
    let mut stream = SseStream::open(dashboard.addr, None).await;
    assert_eq!(next_follow(&mut stream).await.unwrap().event, "snapshot");
    dashboard.stop().await;
    assert!(next_follow(&mut stream).await.is_none(), "the stream ended");
}

/// A JSON request while Redis is down answers 503 with the reason instead of hanging.
#[tokio::test]
async fn json_api_reports_redis_down() {
    let mut server = RedisServer::start();
    let state = manager(&server).await;
    let dashboard = dashboard(&state).await;
    server.kill();
    let (status, body) = request(dashboard.addr, "GET", "/api/sessions").await;
    assert_eq!(status, 503);
    assert!(body.contains("error"), "{body}");
    dashboard.stop().await;
}

/// Issue #14 points 5-7: a wrong-type key, oversized documents and a corrupt parameter are
/// reported in `corrupt` by the JSON API and as `corrupt` changes on the stream; responses stay
/// small, `/api/params` answers 200, and the stream never says Redis was lost.
#[tokio::test]
async fn hostile_data_is_reported_not_served() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let params = state.params();
    for name in ["a.x", "a.y"] {
        let name = ParamName::new(name).unwrap();
        params
            .declare(&name, &Descriptor::new(ParamValue::Int(1)))
            .await
            .unwrap();
    }
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 5,
            scene: "good".into(),
        })
        .await
        .unwrap();
    let pad = "x".repeat(tatbot_state::model::MAX_DOCUMENT_BYTES + 1);
    let huge_progress = format!(r#"{{"timestamp":"2026-11-25T17:15:37","node_id":"n","pad":"{pad}"}}"#);
    let huge_health = format!(
        r#"{{"timestamp":"2026-11-25T17:15:37","node_id":"big","last_heartbeat":"2026-11-25T17:15:37","pad":"{pad}"}}"#
    );
    for command in [
        &["HSET", "tatbot:param:a.y", "value", "not json"][..],
        &["HSET", "stroke:progress:stroke_big_1", "progress", &huge_progress],
        &["HSET", "node:health:big", "health", &huge_health],
        &["RPUSH", "stroke:progress:x", "a"],
    ] {
        server.command(command).unwrap();
    }
    let dashboard = dashboard(&state).await;

    let (status, body) = request(dashboard.addr, "GET", "/api/params").await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["params"].as_array().unwrap().len(), 1);
    assert_eq!(listed["corrupt"][0]["key"], "tatbot:param:a.y");
    for (path, keys) in [
        (
            "/api/sessions",
            vec!["stroke:progress:stroke_big_1", "stroke:progress:x"],
        ),
        ("/api/nodes", vec!["node:health:big"]),
    ] {
        let (status, body) = request(dashboard.addr, "GET", path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.len() < 64 * 1024, "{path} answered {} bytes", body.len());
        let answer: Value = serde_json::from_str(&body).unwrap();
        let mut corrupt: Vec<&str> = answer["corrupt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["key"].as_str().unwrap())
            .collect();
        corrupt.sort_unstable();
        assert_eq!(corrupt, keys, "{path}");
    }

    let mut stream = SseStream::open(dashboard.addr, None).await;
    let snapshot = next_named(&mut stream, "snapshot").await.json();
    assert_eq!(
        snapshot["corrupt"].as_array().unwrap().len(),
        3,
        "{}",
        snapshot["corrupt"]
    );
    // A wrong-type key found by a poll, then progress after it: no `redis` event in between.
    server.command(&["RPUSH", "stroke:progress:y", "a"]).unwrap();
    let mut reported = false;
    loop {
        let event = next_follow(&mut stream).await.expect("the stream stays open");
        assert_ne!(event.event, "redis", "Redis was reported lost: {}", event.data);
        let change = event.json();
        if change["kind"] == "corrupt" && change["key"] == "stroke:progress:y" {
            reported = true;
            state
                .update_stroke_progress(&session, &ProgressUpdate::new(0, 1))
                .await
                .unwrap();
        }
        if reported && change["kind"] == "progress" {
            break;
        }
    }
    dashboard.stop().await;
}

/// Issue #13 point 2: the dashboard is a watcher: with nobody else looking, it announces a
/// session whose owner went silent past its lease, with one `session_stale` event.
#[tokio::test]
async fn dashboard_announces_a_stale_session() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let dashboard = dashboard(&state).await;
    // The hub (and its stale watch) starts with the first stream.
    let mut stream = SseStream::open(dashboard.addr, None).await;
    next_named(&mut stream, "snapshot").await;
    let mut subscription = state.subscribe(&["stroke:events:session"]).await.unwrap();
    let mut short = ManagerConfig::new(Endpoint::new(server.host(), server.port()), NodeId::new("ook").unwrap());
    short.session_lease = Duration::from_secs(1);
    let owner = StateManager::connect(short).await.unwrap();
    let session = owner
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 2,
            scene: "s".into(),
        })
        .await
        .unwrap();
    drop(owner);
    let stale = tokio::time::timeout(LIMIT, async {
        loop {
            let message = subscription.next().await.expect("the subscription stays open");
            let Ok(event) = message.event else { continue };
            if event.event_type() == Some("session_stale") {
                return event;
            }
        }
    })
    .await
    .expect("the dashboard announced the stale session");
    assert_eq!(stale.session_id(), Some(session.as_str()));
    dashboard.stop().await;
}

/// A long session's timeline has its start, pause and resume, not only what is among the
/// fleet's last events: 600 progress updates and another session's 120 pauses and resumes
/// come after them (a snapshot scans the last 500 log entries for the last 50 events).
#[tokio::test]
async fn timeline_has_a_long_sessions_early_events() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let plan = SessionPlan {
        total_strokes: 1,
        stroke_length: 1_000,
        scene: "koi".to_owned(),
    };
    let session = state.start_stroke_session(&plan).await.unwrap();
    state.pause_stroke_session(&session).await.unwrap();
    state.resume_stroke_session(&session).await.unwrap();
    for pose in 0..600 {
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
            .await
            .unwrap();
    }
    let other = state.start_stroke_session(&plan).await.unwrap();
    for _ in 0..60 {
        state.pause_stroke_session(&other).await.unwrap();
        state.resume_stroke_session(&other).await.unwrap();
    }
    state.end_stroke_session(&session).await.unwrap();

    let dashboard = dashboard(&state).await;
    let (status, body) = request(dashboard.addr, "GET", &format!("/api/sessions/{session}/timeline")).await;
    assert_eq!(status, 200, "{body}");
    let timeline: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(timeline["entries"].as_array().unwrap().len(), 600);
    let types: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["session_start", "session_pause", "session_resume", "session_end"],
        "{body}"
    );
    dashboard.stop().await;
}

//! Golden tests against `data/reference-sample.json`, captured from the Python reference
//! (a copy of `../shared/wire/reference-sample.json`): we read everything the Python side
//! stored and published, and what we write parses back to the same values, field for field.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use tatbot_state::model::{Event, NodeHealth, RobotState};
use tatbot_state::{Category, HistoryCursor, NodeId, ProgressUpdate, SessionId, SessionPlan};

use crate::util::{raw, setup};

const SAMPLE: &str = include_str!("data/reference-sample.json");
const SESSION: &str = "stroke_hog_1795626937";

fn sample() -> Value {
    serde_json::from_str(SAMPLE).unwrap()
}

fn stored(key: &str, field: &str) -> String {
    sample()["keys"][key]["fields"][field].as_str().unwrap().to_owned()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn field_names(value: &Value) -> Vec<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

/// Loads every key of the sample into `server`, byte for byte.
async fn load_sample(redis: &mut redis::aio::MultiplexedConnection) {
    for (key, spec) in sample()["keys"].as_object().unwrap() {
        match spec["type"].as_str().unwrap() {
            "hash" => {
                for (field, value) in spec["fields"].as_object().unwrap() {
                    let () = redis.hset(key, field, value.as_str().unwrap()).await.unwrap();
                }
            }
            "stream" => {
                for entry in spec["entries"].as_array().unwrap() {
                    let id = entry[0].as_str().unwrap();
                    let flat: Vec<&str> = entry[1]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect();
                    let pairs: Vec<(&str, &str)> = flat.chunks(2).map(|pair| (pair[0], pair[1])).collect();
                    let _: String = redis.xadd(key, id, &pairs).await.unwrap();
                }
            }
            other => panic!("unexpected key type {other}"),
        }
    }
}

/// Everything the Python reference stored reads back with the right values.
#[tokio::test]
async fn reads_python_state() {
    let (server, state) = setup("reader").await;
    load_sample(&mut raw(&server).await).await;
    let hog = NodeId::new("hog").unwrap();

    let health = state.get_node_health(&hog).await.unwrap().unwrap();
    assert_eq!(
        (health.cpu_percent, health.memory_percent, health.disk_percent),
        (12.5, 33.25, 71.0)
    );
    assert_eq!(
        (health.gpu_available, health.gpu_percent, health.gpu_memory_percent),
        (true, Some(5.5), Some(10.0))
    );
    assert_eq!(
        (health.ping_latency_ms, health.mcp_server_running, health.mcp_port),
        (Some(0.42), true, Some(8000))
    );
    assert_eq!(health.last_heartbeat.to_string(), "2026-11-25T17:15:37.792136");

    let robot = state.get_robot_state(&hog).await.unwrap().unwrap();
    assert_eq!(
        (robot.is_connected_l, robot.is_connected_r, robot.current_pose.as_str()),
        (true, false, "ready")
    );
    // The sample's joint angles, written as the Python side rounded them.
    #[expect(clippy::approx_constant, reason = "these are the sample's literal values, not pi")]
    let joints_l = [0.0, -1.5708, 1.25, 0.5, -0.25, 3.14159, 0.044];
    assert_eq!(robot.joints_l.as_deref(), Some(&joints_l[..]));
    assert_eq!(robot.joints_r.as_ref().unwrap()[3], 0.00001);
    assert_eq!(
        (robot.velocities_l.as_ref(), robot.goal_time_slow, robot.goal_time_fast),
        (None, 3.0, 0.25)
    );

    let session = SessionId::new(SESSION).unwrap();
    let progress = state.get_stroke_progress(&session).await.unwrap().unwrap();
    assert_eq!(
        (
            progress.stroke_idx,
            progress.pose_idx,
            progress.total_strokes,
            progress.stroke_length
        ),
        (10, 7, 12, 8)
    );
    assert_eq!(progress.stroke_description_l, "left stroke 5, \"quoted\"");
    assert_eq!(progress.stroke_description_r, "ünïcödé ✓ right");
    assert_eq!(
        (progress.offset_idx_l, progress.offset_idx_r, progress.is_executing),
        (2, 2, false)
    );
    assert_eq!(
        (progress.scene_name.as_str(), progress.dataset_name.as_ref()),
        ("interop_scene", None)
    );

    let history = state.get_history(&session, &HistoryCursor::Start, 100).await.unwrap();
    let ids: Vec<String> = history.iter().map(|entry| entry.id.to_string()).collect();
    assert_eq!(
        ids,
        [
            "1795626937793-0",
            "1795626937793-1",
            "1795626937794-0",
            "1795626937794-1",
            "1795626937794-2",
            "1795626937795-0"
        ]
    );
    assert_eq!((history[5].stroke_idx, history[5].pose_idx), (10, 7));
    assert_eq!(history[5].description_r, "ünïcödé ✓ right");
    assert_eq!(history[1].description_l, "left stroke 1, \"quoted\"");

    let status = state.system_status().await;
    assert!(status.corrupt.is_empty(), "{:?}", status.corrupt);
    assert_eq!(
        (status.total_sessions, status.active_sessions, status.nodes_online),
        (1, 0, 1)
    );

    // Our documents re-encode to the same values, with the same field order.
    for (key, field, ours) in [
        ("node:health:hog", "health", serde_json::to_string(&health).unwrap()),
        ("robot:state:hog", "state", serde_json::to_string(&robot).unwrap()),
        (
            &format!("stroke:progress:{SESSION}") as &str,
            "progress",
            serde_json::to_string(&progress).unwrap(),
        ),
    ] {
        let theirs = parse(&stored(key, field));
        assert_eq!(parse(&ours), theirs, "{key}");
        assert_eq!(field_names(&parse(&ours)), field_names(&theirs), "{key}");
    }
}

/// Every Python event decodes to its type and re-encodes byte for byte.
#[tokio::test]
async fn python_events_roundtrip_bytes() {
    for event in sample()["events"].as_array().unwrap() {
        let payload = event["payload"].as_str().unwrap();
        let decoded = Event::from_json(payload.as_bytes()).unwrap();
        assert!(!matches!(decoded, Event::Other(_)), "{payload}");
        assert_eq!(decoded.to_json(), payload);
    }
}

/// Python events published through Redis arrive typed on the operators' patterns.
#[tokio::test]
async fn receives_python_events() {
    let (server, state) = setup("reader").await;
    let mut subscription = state
        .subscribe(&tatbot_state::keys::DEFAULT_EVENT_PATTERNS)
        .await
        .unwrap();
    let mut redis = raw(&server).await;
    let events = sample()["events"].as_array().unwrap().clone();
    for event in &events {
        let () = redis
            .publish(event["channel"].as_str().unwrap(), event["payload"].as_str().unwrap())
            .await
            .unwrap();
    }
    for event in &events {
        let message = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.channel, event["channel"].as_str().unwrap());
        assert_eq!(message.pattern.as_deref(), event["pattern"].as_str());
        assert_eq!(message.event.unwrap().to_json(), event["payload"].as_str().unwrap());
    }
}

fn without(mut value: Value, fields: &[&str]) -> Value {
    for field in fields {
        value.as_object_mut().unwrap().shift_remove(*field);
    }
    value
}

/// Replaying the sample's scenario through our writers stores and publishes what Python did.
#[tokio::test]
async fn writes_what_python_reads() {
    let (server, state) = setup("hog").await;
    let mut subscription = state
        .subscribe(&tatbot_state::keys::DEFAULT_EVENT_PATTERNS)
        .await
        .unwrap();
    let mut redis = raw(&server).await;

    let robot: RobotState = serde_json::from_str(&stored("robot:state:hog", "state")).unwrap();
    state.update_robot_state(&robot).await.unwrap();
    let health: NodeHealth = serde_json::from_str(&stored("node:health:hog", "health")).unwrap();
    state.update_node_health(&health).await.unwrap();

    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 12,
            stroke_length: 8,
            scene: "interop_scene".into(),
        })
        .await
        .unwrap();
    let sample = sample();
    let entries = sample["keys"][format!("stream:stroke_history:{SESSION}")]["entries"]
        .as_array()
        .unwrap();
    for entry in entries {
        let fields = entry[1].as_array().unwrap();
        let text = |i: usize| fields[i].as_str().unwrap().to_owned();
        let update = ProgressUpdate::new(text(1).parse().unwrap(), text(3).parse().unwrap())
            .descriptions(text(5), text(7))
            .offsets(2, 2);
        state.update_stroke_progress(&session, &update).await.unwrap();
    }
    state
        .report_error(
            &Category::new("hardware").unwrap(),
            "arm l timeout",
            serde_json::json!({"joint": 3, "retry": true}),
        )
        .await
        .unwrap();
    state.end_stroke_session(&session).await.unwrap();

    // Stored documents: the same bytes as Python's, but for the write time.
    let ours: String = redis.hget("robot:state:hog", "state").await.unwrap();
    assert_eq!(ours, stored("robot:state:hog", "state"));
    let last_updated: String = redis.hget("robot:state:hog", "last_updated").await.unwrap();
    assert!(tatbot_state::Timestamp::parse(&last_updated).is_ok(), "{last_updated}");
    let ours: String = redis.hget("node:health:hog", "health").await.unwrap();
    assert_eq!(ours, stored("node:health:hog", "health"));
    let ours: String = redis
        .hget(format!("stroke:progress:{session}"), "progress")
        .await
        .unwrap();
    let theirs = stored(&format!("stroke:progress:{SESSION}"), "progress");
    let their_time = parse(&theirs)["timestamp"].as_str().unwrap().to_owned();
    let our_time = parse(&ours)["timestamp"].as_str().unwrap().to_owned();
    // Our additive fields (docs/WIRE.md: the owner and its lease) come last, after every field
    // Python knows; pydantic ignores them.
    let (python_part, ours_only) = ours.split_once(r#","lease_secs":"#).expect("the lease is stored");
    assert!(ours_only.contains(r#""owner_node_id":"hog""#), "{ours_only}");
    let ours = format!("{python_part}}}");
    assert_eq!(ours.replace(&our_time, &their_time), theirs);

    // History: same fields, same order, same values.
    let ours: redis::Value = redis
        .xrange_all(format!("stream:stroke_history:{session}"))
        .await
        .unwrap();
    let ours: Vec<(String, Vec<String>)> = redis::FromRedisValue::from_redis_value(ours).unwrap();
    assert_eq!(ours.len(), entries.len());
    for ((_, our_fields), entry) in ours.iter().zip(entries) {
        let their_fields: Vec<String> = entry[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(our_fields, &their_fields);
    }

    // Events: same channels, types, fields and values, but for ids and times.
    for expected in sample["events"].as_array().unwrap() {
        let message = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.channel, expected["channel"].as_str().unwrap());
        let ours = without(parse(&message.payload), &["timestamp", "session_id"]);
        let theirs = without(
            parse(expected["payload"].as_str().unwrap()),
            &["timestamp", "session_id"],
        );
        assert_eq!(ours, theirs);
        assert_eq!(field_names(&ours), field_names(&theirs));
    }
}

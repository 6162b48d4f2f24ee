//! A corrupt value in any key is reported per entry, naming the key; nothing panics and the
//! summary still succeeds.

use redis::AsyncCommands;
use tatbot_state::model::NodeHealth;
use tatbot_state::{Category, Error, NodeId, ProgressUpdate, SessionId};

use crate::util::{raw, setup};

/// Robot state that is not JSON is a decode error naming the key.
#[tokio::test]
async fn corrupt_robot_state() {
    let (server, state) = setup("hog").await;
    let () = raw(&server)
        .await
        .hset("robot:state:hog", "state", "not json")
        .await
        .unwrap();
    let err = state.get_robot_state(&NodeId::new("hog").unwrap()).await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }));
    assert!(
        err.to_string().starts_with("robot:state:hog: cannot decode RobotState"),
        "{err}"
    );
}

/// A bad heartbeat shows up in the listing and the summary, next to the good ones.
#[tokio::test]
async fn corrupt_health() {
    let (server, state) = setup("hog").await;
    state.update_node_health(&NodeHealth::new("good")).await.unwrap();
    let mut redis = raw(&server).await;
    let () = redis
        .hset("node:health:bad", "health", "{\"node_id\": 5")
        .await
        .unwrap();
    let () = redis.hset("node:health:typed", "health", r#"{"timestamp":"2026-11-25T17:15:37","node_id":"typed","cpu_percent":"high","last_heartbeat":"2026-11-25T17:15:37"}"#).await.unwrap();
    let err = state.get_node_health(&NodeId::new("bad").unwrap()).await.unwrap_err();
    assert!(
        err.to_string().starts_with("node:health:bad: cannot decode NodeHealth"),
        "{err}"
    );
    let entries = state.get_all_nodes_health().await.unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries.iter().filter(|entry| entry.value.is_ok()).count(), 1);
    let status = state.system_status().await;
    assert!(status.redis_connected);
    assert_eq!(status.nodes_online, 3);
    let mut keys: Vec<&str> = status.corrupt.iter().map(|entry| entry.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["node:health:bad", "node:health:typed"]);
    assert!(
        status
            .corrupt
            .iter()
            .any(|entry| entry.error.contains("invalid type: string \"high\"")),
        "{:?}",
        status.corrupt
    );
}

/// Corrupt progress: reads name the key, updates refuse without writing, the summary lists it.
#[tokio::test]
async fn corrupt_progress() {
    let (server, state) = setup("hog").await;
    let good = state.start_stroke_session(1, 1, "s").await.unwrap();
    let mut redis = raw(&server).await;
    let () = redis
        .hset("stroke:progress:stroke_bad_1", "progress", "[1, 2]")
        .await
        .unwrap();
    let () = redis
        .set("stroke:progress:stroke_wrongtype_1", "a string, not a hash")
        .await
        .unwrap();
    let bad = SessionId::new("stroke_bad_1").unwrap();
    let err = state.get_stroke_progress(&bad).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("stroke:progress:stroke_bad_1: cannot decode StrokeProgress"),
        "{err}"
    );
    let err = state
        .update_stroke_progress(&bad, &ProgressUpdate::new(0, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { ref key, .. } if key == "stroke:progress:stroke_bad_1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("is not a JSON object"), "{err}");
    let history_len: usize = redis.xlen("stream:stroke_history:stroke_bad_1").await.unwrap();
    assert_eq!(history_len, 0, "a refused update writes no history");

    let status = state.system_status().await;
    assert_eq!((status.active_sessions, status.total_sessions), (1, 3));
    let mut keys: Vec<&str> = status.corrupt.iter().map(|entry| entry.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["stroke:progress:stroke_bad_1", "stroke:progress:stroke_wrongtype_1"]
    );
    assert!(
        state
            .latest_active_session()
            .await
            .unwrap()
            .is_some_and(|info| info.session_id == good)
    );
}

/// History entries with a missing or non-integer field are errors naming stream and entry.
#[tokio::test]
async fn corrupt_history() {
    let (server, state) = setup("hog").await;
    let session = SessionId::new("stroke_x_1").unwrap();
    let mut redis = raw(&server).await;
    let _: String = redis
        .xadd(
            "stream:stroke_history:stroke_x_1",
            "5-1",
            &[
                ("stroke_idx", "abc"),
                ("pose_idx", "0"),
                ("description_l", ""),
                ("description_r", ""),
                ("node_id", "x"),
            ],
        )
        .await
        .unwrap();
    let err = state.get_history(&session, None, 10).await.unwrap_err().to_string();
    assert_eq!(
        err,
        r#"stream:stroke_history:stroke_x_1 entry 5-1: field "stroke_idx" is "abc", not an integer"#
    );
}

/// A stored error entry that is not an error event is reported in its entry.
#[tokio::test]
async fn corrupt_error_log_entry() {
    let (server, state) = setup("hog").await;
    state
        .report_error(&Category::new("ok").unwrap(), "fine", serde_json::json!({}))
        .await
        .unwrap();
    let _: String = raw(&server)
        .await
        .xadd("tatbot:errors", "*", &[("payload", "{oops")])
        .await
        .unwrap();
    let entries = state.list_errors(10).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert!(
        entries[0]
            .value
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("cannot decode ErrorEvent")
    );
    assert_eq!(entries[1].value.as_ref().unwrap().message, "fine");
}

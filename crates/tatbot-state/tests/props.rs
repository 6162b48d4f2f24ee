//! Property tests: whatever bytes another client leaves in a key or publishes, reading them
//! gives a value or an error, never a panic; documents over the size bound are refused.

use proptest::prelude::*;
use redis::AsyncCommands;
use serde_json::Value;
use tatbot_state::model::{Event, MAX_DOCUMENT_BYTES, NodeHealth, RobotState, StrokeProgress};
use tatbot_state::{HistoryCursor, NodeId, SessionId, Timestamp};

use crate::util::{raw, setup};

/// JSON values biased towards the shapes our documents have: objects with our field names
/// holding values of any type.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::from),
        Just(Value::from("2026-11-25T17:15:37.792132")),
    ];
    leaf.prop_recursive(3, 32, 8, |inner| {
        let names = prop_oneof![
            Just("timestamp".to_owned()),
            Just("node_id".to_owned()),
            Just("type".to_owned()),
            Just("session_id".to_owned()),
            Just("stroke_idx".to_owned()),
            Just("joints_l".to_owned()),
            Just("last_heartbeat".to_owned()),
            Just("details".to_owned()),
            "[a-z_]{1,12}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((names, inner), 0..8).prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn decode_everything(bytes: &[u8]) {
    let _ = Event::from_json(bytes);
    let _ = serde_json::from_slice::<StrokeProgress>(bytes);
    let _ = serde_json::from_slice::<RobotState>(bytes);
    let _ = serde_json::from_slice::<NodeHealth>(bytes);
    let _ = Timestamp::parse(&String::from_utf8_lossy(bytes));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes never make a decoder panic.
    #[test]
    fn decoders_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    /// Arbitrary JSON never makes a decoder panic, and what decodes re-encodes to itself.
    #[test]
    fn decoders_roundtrip_json(value in json_value()) {
        let text = value.to_string();
        decode_everything(text.as_bytes());
        if let Ok(progress) = serde_json::from_str::<StrokeProgress>(&text) {
            let again: StrokeProgress = serde_json::from_str(&serde_json::to_string(&progress).unwrap()).unwrap();
            prop_assert_eq!(again, progress);
        }
        if let Ok(event) = Event::from_json(text.as_bytes()) {
            prop_assert_eq!(Event::from_json(event.to_json().as_bytes()).unwrap(), event);
        }
    }
}

/// Arbitrary bytes stored in every key we read give per-entry errors or values through every
/// reader, and the summary still succeeds (64 cases against one real server).
#[test]
fn readers_never_panic_on_stored_bytes() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, state) = runtime.block_on(setup("props"));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|value| value.to_string().into_bytes()),
    ];
    runner
        .run(&strategy, |bytes| {
            runtime.block_on(async {
                let mut redis = raw(&server).await;
                let () = redis.hset("robot:state:n", "state", &bytes).await.unwrap();
                let () = redis.hset("node:health:n", "health", &bytes).await.unwrap();
                let () = redis.hset("stroke:progress:s", "progress", &bytes).await.unwrap();
                let _: String = redis
                    .xadd(
                        "stream:stroke_history:s",
                        "*",
                        &[("stroke_idx", &bytes[..]), ("pose_idx", b"1")],
                    )
                    .await
                    .unwrap();
                let _: String = redis.xadd("tatbot:errors", "*", &[("payload", &bytes)]).await.unwrap();
                let node = NodeId::new("n").unwrap();
                let session = SessionId::new("s").unwrap();
                let _ = state.get_robot_state(&node).await;
                let _ = state.get_node_health(&node).await;
                let _ = state.get_stroke_progress(&session).await;
                let _ = state.get_history(&session, &HistoryCursor::Start, 100).await;
                let _ = state.list_errors(100).await;
                let _ = state.latest_active_session().await;
                assert_eq!(state.list_sessions().await.unwrap().len(), 1);
                assert_eq!(state.get_all_nodes_health().await.unwrap().len(), 1);
                let status = state.system_status().await;
                assert!(status.redis_connected && status.error.is_none(), "{status:?}");
                let progress_ok = serde_json::from_slice::<StrokeProgress>(&bytes).is_ok();
                let listed = status.corrupt.iter().any(|entry| entry.key == "stroke:progress:s");
                assert_eq!(listed, !progress_ok, "{status:?}");
            });
            Ok(())
        })
        .unwrap();
}

/// A stored document or an event over the size bound is refused with an error naming the bound.
#[tokio::test]
async fn oversized_documents_refused() {
    let (server, state) = setup("props").await;
    let huge = format!(
        r#"{{"timestamp":"2026-11-25T17:15:37","node_id":"n","pad":"{}"}}"#,
        "x".repeat(MAX_DOCUMENT_BYTES)
    );
    let () = raw(&server).await.hset("robot:state:n", "state", &huge).await.unwrap();
    let err = state
        .get_robot_state(&NodeId::new("n").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("the limit is {MAX_DOCUMENT_BYTES}")), "{err}");
    let err = Event::from_json(huge.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("the limit is"), "{err}");
}

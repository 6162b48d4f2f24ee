//! A corrupt value in any key is reported per entry, naming the key; nothing panics and the
//! summary still succeeds.

use redis::AsyncCommands;
use tatbot_state::model::NodeHealth;
use tatbot_state::params::Prefix;
use tatbot_state::{
    Category, Descriptor, Entry, EntryId, Error, HistoryCursor, Lookup, NodeId, ParamName, ParamValue, ProgressUpdate,
    SessionId, SessionPlan,
};

use crate::util::{bytes_sent, fill_log, one_pose, raw, setup};

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
    let good = state.start_stroke_session(&one_pose("s")).await.unwrap();
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

/// History entries with a missing or non-integer field are errors naming stream and entry;
/// issue #14 point 7: they are reported per entry and never hide the good ones.
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
    let good = [
        ("stroke_idx", "0"),
        ("pose_idx", "1"),
        ("description_l", ""),
        ("description_r", ""),
        ("node_id", "x"),
    ];
    let _: String = redis
        .xadd("stream:stroke_history:stroke_x_1", "6-1", &good)
        .await
        .unwrap();
    let err = state
        .get_history(&session, &HistoryCursor::Start, 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }),
        "bad stored data is not bad usage: {err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"stream:stroke_history:stroke_x_1: stored value is corrupt (entry 5-1: field "stroke_idx" is "abc", not an integer); fix or delete the key"#
    );
    let entries = state
        .history_entries(&session, &HistoryCursor::Start, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
    assert_eq!(ids, ["5-1", "6-1"]);
    assert!(entries[0].value.is_err());
    assert_eq!(entries[1].value.as_ref().unwrap().pose_idx, 1);
}

/// Documents over the size bound (another client's 5 MiB session, robot state and heartbeat)
/// are reported by every reader that meets them, naming the key, without Redis sending them:
/// a client that asks for `status` every second no longer pulls 15 MiB a second.
#[tokio::test]
async fn huge_documents_are_reported_without_being_read() {
    let (server, state) = setup("hog").await;
    let mut redis = raw(&server).await;
    let huge = "x".repeat(5 << 20);
    let () = redis
        .hset("stroke:progress:stroke_big_1", "progress", &huge)
        .await
        .unwrap();
    let () = redis.hset("robot:state:big", "state", &huge).await.unwrap();
    let () = redis.hset("node:health:big", "health", &huge).await.unwrap();
    let () = redis.expire("node:health:big", 600).await.unwrap();
    let too_large = |err: &Error| err.to_string().contains("is 5242880 bytes; the limit is 1048576");
    let big = NodeId::new("big").unwrap();
    let sent_before = bytes_sent(&server);

    let session = SessionId::new("stroke_big_1").unwrap();
    let err = state.get_stroke_progress(&session).await.unwrap_err();
    assert!(too_large(&err), "{err}");
    let err = state.get_robot_state(&big).await.unwrap_err();
    assert!(too_large(&err), "{err}");
    let err = state.get_node_health(&big).await.unwrap_err();
    assert!(too_large(&err), "{err}");
    let looked_up = state
        .get_nodes_health(&[big.clone(), NodeId::new("gone").unwrap()])
        .await
        .unwrap();
    assert!(
        matches!(&looked_up[0], Lookup::Corrupt(err) if too_large(err)),
        "{looked_up:?}"
    );
    assert!(matches!(looked_up[1], Lookup::Missing), "{looked_up:?}");
    // Each listing's entry for the key: its error, if it has one.
    fn error_of<T>(listing: Vec<Entry<T>>, key: &str) -> Option<Error> {
        listing.into_iter().find(|entry| entry.key == key)?.value.err()
    }
    let errors = [
        error_of(state.list_sessions().await.unwrap(), "stroke:progress:stroke_big_1"),
        error_of(state.get_all_robot_states().await.unwrap(), "robot:state:big"),
        error_of(state.get_all_nodes_health().await.unwrap(), "node:health:big"),
    ];
    for error in errors {
        assert!(error.as_ref().is_some_and(too_large), "{error:?}");
    }
    let status = state.system_status().await;
    for key in ["stroke:progress:stroke_big_1", "node:health:big"] {
        let entry = status.corrupt.iter().find(|entry| entry.key == key);
        assert!(
            entry.is_some_and(|entry| entry.error.contains("is 5242880 bytes")),
            "{key}: {:?}",
            status.corrupt
        );
    }
    let sent = bytes_sent(&server) - sent_before;
    assert!(sent < 1 << 20, "{sent} bytes sent for these reads");
}

/// The keys a reader fetches whole (the node registry, the producers' records, the parameter
/// index) were sent whole however large another client made them: a 10 MiB member in the
/// registry went to every `status` and `health`. Their size is asked first now (`MEMORY
/// USAGE`); one over the bound is reported, naming the key, and not read, and the rest of each
/// answer is still there.
#[tokio::test]
async fn huge_collections_are_reported_without_being_read() {
    let (server, state) = setup("hog").await;
    let health = NodeHealth::new(state.node_id().as_str());
    state.update_node_health(&health).await.unwrap();
    let params = state.params();
    let name = ParamName::new("arm.speed").unwrap();
    params
        .declare(&name, &Descriptor::new(ParamValue::Int(1)))
        .await
        .unwrap();
    let mut redis = raw(&server).await;
    // Before: the registry and the index are read as ever.
    assert_eq!(state.known_nodes().await.unwrap().len(), 1);
    assert_eq!(params.list(&Prefix::all()).await.unwrap().len(), 1);
    let huge = "x".repeat(10 << 20);
    let () = redis.zadd("tatbot:nodes", &huge, 1).await.unwrap();
    let () = redis.hset("tatbot:producers", "hog", &huge).await.unwrap();
    let () = redis.zadd("tatbot:params", &huge, 0).await.unwrap();
    let too_large = |text: &str| {
        text.contains(
            "bytes in Redis; a collection read whole may have at most 20000 elements and take at most 8388608 bytes, so it is not read",
        )
    };
    let sent_before = bytes_sent(&server);

    let err = state.known_nodes().await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().starts_with("tatbot:nodes: "), "{err}");
    assert!(too_large(&err.to_string()), "{err}");
    let err = params.list(&Prefix::all()).await.unwrap_err();
    assert!(err.to_string().starts_with("tatbot:params: "), "{err}");
    assert!(too_large(&err.to_string()), "{err}");
    let status = state.system_status().await;
    assert!(status.redis_connected, "{status:?}");
    assert_eq!(status.nodes_online, 1, "the heartbeats still count");
    for key in ["tatbot:nodes", "tatbot:producers"] {
        let entry = status.corrupt.iter().find(|entry| entry.key == key);
        assert!(
            entry.is_some_and(|entry| too_large(&entry.error)),
            "{key}: {:?}",
            status.corrupt
        );
    }
    let sent = bytes_sent(&server) - sent_before;
    assert!(sent < 1 << 20, "{sent} bytes sent for these reads");

    // Small members, but too many of them: counted, not read.
    let () = redis.del("tatbot:params").await.unwrap();
    let mut fill = redis::pipe();
    for chunk in 0..21 {
        let members: Vec<(u32, String)> = (chunk * 1_000..(chunk + 1) * 1_000)
            .map(|index| (0, format!("p.n{index}")))
            .collect();
        fill.zadd_multiple("tatbot:params", &members).ignore();
    }
    let () = fill.query_async(&mut redis).await.unwrap();
    let err = params.list(&Prefix::all()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the key has more than 20000 elements; a collection read whole may have at most 20000 elements"),
        "{err}"
    );
}

/// A member of the parameter index that is not text (another client's) is skipped, as a bad
/// name is, instead of failing the whole listing.
#[tokio::test]
async fn a_parameter_index_member_that_is_not_text_is_skipped() {
    let (server, state) = setup("hog").await;
    let params = state.params();
    let name = ParamName::new("arm.speed").unwrap();
    params
        .declare(&name, &Descriptor::new(ParamValue::Int(1)))
        .await
        .unwrap();
    let () = raw(&server)
        .await
        .zadd("tatbot:params", &b"\xff\xfe\x1b[2J"[..], 0)
        .await
        .unwrap();
    let listed = params.list(&Prefix::all()).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, name);
}

/// A listing reads its keys in batches of 1,000, each batch's lengths asked with the batch
/// before: 2,500 sessions come back whole, each with its own document, and a huge one in the
/// second batch (not sent) and one of another type in the third are each that entry's error.
#[tokio::test]
async fn listings_read_every_batch_and_its_lengths() {
    let (server, state) = setup("hog").await;
    let plan = SessionPlan {
        total_strokes: 3,
        stroke_length: 2,
        scene: "scene".into(),
    };
    let first = state.start_stroke_session(&plan).await.unwrap();
    let mut redis = raw(&server).await;
    let document: String = redis
        .hget(format!("stroke:progress:{first}"), "progress")
        .await
        .unwrap();
    let mut seed = redis::pipe();
    for index in 0..2_500 {
        let key = format!("stroke:progress:stroke_many_{index}");
        match index {
            // Keys are read in their text order: these two land in the second and the third
            // batch (checked below).
            2_300 => seed.hset(key, "progress", "x".repeat(5 << 20)),
            800 => seed.set(key, "a string"),
            _ => {
                let mut own: serde_json::Value = serde_json::from_str(&document).unwrap();
                own["stroke_idx"] = index.into();
                seed.hset(key, "progress", own.to_string())
            }
        };
    }
    let () = seed.query_async(&mut redis).await.unwrap();
    let sent_before = bytes_sent(&server);
    let sessions = state.list_sessions().await.unwrap();
    let sent = bytes_sent(&server) - sent_before;
    assert!(sent < 5 << 20, "{sent} bytes sent: the huge document was read");
    assert_eq!(sessions.len(), 2_501);
    let place = |id: &str| sessions.iter().position(|entry| entry.id == id).unwrap();
    assert_eq!(
        place("stroke_many_2300") / 1_000,
        1,
        "the huge document is in the second batch"
    );
    assert_eq!(place("stroke_many_800") / 1_000, 2, "the string is in the third batch");
    for entry in &sessions {
        let index = entry
            .id
            .strip_prefix("stroke_many_")
            .map(|index| index.parse::<usize>().unwrap());
        match (index, &entry.value) {
            (Some(2_300), Err(err)) => assert!(err.to_string().contains("is 5242880 bytes"), "{err}"),
            (Some(800), Err(err)) => assert!(err.to_string().contains("not a hash"), "{err}"),
            (Some(index), Ok(progress)) => assert_eq!(progress.stroke_idx, index as i64),
            (None, Ok(_)) => assert_eq!(entry.id, first.as_str()),
            (_, Err(err)) => panic!("{}: {err}", entry.key),
        }
    }
}

/// Issue #14 point 6: history fields over the 1 MiB bound are corrupt, not returned.
#[tokio::test]
async fn oversized_history_entry_is_corrupt() {
    let (server, state) = setup("hog").await;
    let session = SessionId::new("stroke_x_1").unwrap();
    let description = "d".repeat(tatbot_state::model::MAX_DOCUMENT_BYTES + 1);
    let fields = [
        ("stroke_idx", "0"),
        ("pose_idx", "0"),
        ("description_l", description.as_str()),
        ("description_r", ""),
        ("node_id", "x"),
    ];
    let _: String = raw(&server)
        .await
        .xadd("stream:stroke_history:stroke_x_1", "*", &fields)
        .await
        .unwrap();
    let entries = state
        .history_entries(&session, &HistoryCursor::Start, 10)
        .await
        .unwrap();
    let err = entries[0].value.as_ref().unwrap_err().to_string();
    assert!(
        err.contains(r#"field "description_l" is 1048577 bytes; the limit is 1048576"#),
        "{err}"
    );
}

/// Issue #14 point 8: keys with invalid ids are corrupt entries, not sessions or nodes; a
/// key of the wrong type read directly is corrupt, not a Redis failure.
#[tokio::test]
async fn invalid_id_and_wrong_type_keys_are_corrupt() {
    let (server, state) = setup("hog").await;
    state.start_stroke_session(&one_pose("s")).await.unwrap();
    let mut redis = raw(&server).await;
    let doc =
        r#"{"timestamp":"2026-11-25T17:15:37","node_id":"n","total_strokes":1,"stroke_length":1,"is_executing":true}"#;
    let long = format!("stroke:progress:{}", "a".repeat(10_000));
    for key in ["stroke:progress:a*b?[c]", long.as_str()] {
        let () = redis.hset(key, "progress", doc).await.unwrap();
    }
    let health = r#"{"timestamp":"2026-11-25T17:15:37","node_id":"n","last_heartbeat":"2026-11-25T17:15:37"}"#;
    let () = redis.hset("node:health:bad id", "health", health).await.unwrap();
    let status = state.system_status().await;
    assert_eq!((status.active_sessions, status.total_sessions), (1, 3));
    let mut keys: Vec<&str> = status.corrupt.iter().map(|entry| entry.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["node:health:bad id", "stroke:progress:a*b?[c]", long.as_str()]);
    assert!(
        status
            .corrupt
            .iter()
            .all(|entry| entry.error.contains("does not end in a valid")),
        "{:?}",
        status.corrupt
    );
    assert!(
        status.corrupt.iter().all(|entry| entry.error.len() < 10_200),
        "the id is not repeated"
    );

    let _: usize = redis.rpush("stroke:progress:stroke_list_1", "a").await.unwrap();
    let err = state
        .get_stroke_progress(&SessionId::new("stroke_list_1").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { ref key, .. } if key == "stroke:progress:stroke_list_1"),
        "{err:?}"
    );
}

/// Issue #14 point 8: dropped counters saturate instead of wrapping (or panicking).
#[tokio::test]
async fn dropped_counters_saturate() {
    let (server, state) = setup("hog").await;
    let mut redis = raw(&server).await;
    for (writer, dropped) in [("a", u64::MAX - 1), ("b", 5)] {
        let record = format!(r#"{{"stats":{{"dropped":{dropped}}},"updated":"2026-11-25T17:15:37"}}"#);
        let () = redis.hset("tatbot:producers", writer, record).await.unwrap();
    }
    assert_eq!(state.system_status().await.dropped_updates, u64::MAX);
}

/// Issue #14 point 8: a session with a year-9999 timestamp or positions outside their domain
/// never wins "latest active session".
#[tokio::test]
async fn out_of_domain_sessions_never_win_latest() {
    let (server, state) = setup("hog").await;
    let good = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 3,
            scene: "s".into(),
        })
        .await
        .unwrap();
    let mut redis = raw(&server).await;
    let docs = [
        (
            "stroke_future_1",
            r#"{"timestamp":"9999-01-01T00:00:00","node_id":"n","total_strokes":3,"stroke_length":3,"is_executing":true}"#,
        ),
        (
            "stroke_over_1",
            r#"{"timestamp":"2099-01-01T00:00:00","node_id":"n","stroke_idx":10,"total_strokes":3,"stroke_length":3,"is_executing":true}"#,
        ),
    ];
    for (session, doc) in docs {
        let key = format!("stroke:progress:{session}");
        let () = redis.hset(&key, "progress", doc).await.unwrap();
    }
    let latest = state.latest_active_session().await.unwrap().unwrap();
    assert_eq!(latest.session_id, good);
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

/// A large key of another type under a collection or a log is reported as of another type, as
/// before its size was asked, not as too large.
#[tokio::test]
async fn large_keys_of_another_type_are_reported_as_such() {
    let (server, state) = setup("hog").await;
    let mut redis = raw(&server).await;
    let huge = "x".repeat(40 << 20);
    for key in ["tatbot:nodes", "tatbot:producers", "tatbot:errors"] {
        let () = redis.set(key, &huge).await.unwrap();
    }
    let err = state.known_nodes().await.unwrap_err();
    assert!(err.to_string().contains("the key is not a sorted set"), "{err}");
    let err = state.list_errors(10).await.unwrap_err();
    assert!(err.to_string().contains("not a stream"), "{err}");
    let status = state.system_status().await;
    for (key, kind) in [("tatbot:nodes", "sorted set"), ("tatbot:producers", "hash")] {
        let entry = status.corrupt.iter().find(|entry| entry.key == key);
        assert!(
            entry.is_some_and(|entry| entry.error == format!("{key}: the key is not a {kind}")),
            "{key}: {:?}",
            status.corrupt
        );
    }
}

/// Whether `entry` is the report of a log read that stopped at its bound.
fn is_cut<T>(entry: &Entry<T>) -> bool {
    entry
        .value
        .as_ref()
        .is_err_and(|err| err.to_string().contains("the most one read takes is 33554432"))
}

/// A log that takes more than 32 MiB in Redis is read one entry at a time, up to 32 MiB: another
/// client's hundred 1 MiB entries in the error log or in a session's history were sent whole
/// with every listing of errors and every page of history (100 MiB each). Now the read stops at
/// the bound and says so in an entry of its own, named after the last entry read, and a reader
/// paging on from it reads the rest, each entry once.
#[tokio::test]
async fn huge_logs_are_read_within_the_bound() {
    let (server, state) = setup("hog").await;
    state
        .report_error(&Category::new("arm").unwrap(), "first", serde_json::json!({}))
        .await
        .unwrap();
    // Within the bound, one read as before: nothing cut.
    let errors = state.list_errors(10).await.unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].value.is_ok(), "{errors:?}");
    fill_log(&server, "tatbot:errors", 100, 1 << 20).await;
    let session = state.start_stroke_session(&one_pose("logs")).await.unwrap();
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
        .await
        .unwrap();
    fill_log(&server, &format!("stream:stroke_history:{session}"), 100, 1 << 20).await;

    let sent_before = bytes_sent(&server);
    let errors = state.list_errors(200).await.unwrap();
    let sent = bytes_sent(&server) - sent_before;
    assert!(sent < 34 << 20, "{sent} bytes sent for one listing");
    let (cut, read) = errors.split_last().unwrap();
    assert!(is_cut(cut), "{cut:?}");
    assert_eq!(cut.key, "tatbot:errors");
    assert_eq!(cut.id, read.last().unwrap().id, "named after the last entry read");
    assert!((31..=33).contains(&read.len()), "{} entries read", read.len());
    assert!(!read.iter().any(is_cut));

    // Paged on from each cut: every entry once, in order.
    let sent_before = bytes_sent(&server);
    let (mut ids, mut cuts, mut pages) = (Vec::new(), 0, 0);
    let mut cursor = HistoryCursor::Start;
    loop {
        let page = state.history_entries(&session, &cursor, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        pages += 1;
        cursor = HistoryCursor::After(last.id.parse().unwrap());
        for entry in &page {
            if is_cut(entry) {
                cuts += 1;
            } else {
                ids.push(entry.id.clone());
            }
        }
        assert!(pages <= 10, "paging does not end");
    }
    assert_eq!(ids.len(), 101, "the update and the hundred others");
    let ids: Vec<EntryId> = ids.iter().map(|id| id.parse().unwrap()).collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "an entry read twice or out of order"
    );
    assert_eq!(cuts, 3, "32 MiB a page: three cuts, then the rest");
    let sent = bytes_sent(&server) - sent_before;
    assert!(sent < 110 << 20, "{sent} bytes sent for the whole history");
}

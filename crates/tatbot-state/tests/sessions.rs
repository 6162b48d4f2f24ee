//! Stroke sessions: lifecycle, merging writers, unique ids, retention.

use std::collections::HashSet;
use std::time::Duration;

use redis::AsyncCommands;
use tatbot_state::{Error, HistoryCursor, ProgressUpdate, SessionId, SessionPlan, StateManager};

use crate::util::{config, eventually, manager, one_pose, raw, setup};

/// Start, progress, pause, resume and end write the documented fields and history.
#[tokio::test]
async fn lifecycle() {
    let (server, state) = setup("hog").await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 12,
            stroke_length: 8,
            scene: "interop_scene".into(),
        })
        .await
        .unwrap();
    assert!(session.as_str().starts_with("stroke_hog_"), "{session}");
    let progress = state.get_stroke_progress(&session).await.unwrap().unwrap();
    assert!(progress.is_executing && !progress.is_paused);
    assert_eq!(
        (
            progress.total_strokes,
            progress.stroke_length,
            progress.scene_name.as_str()
        ),
        (12, 8, "interop_scene")
    );

    for (stroke, pose) in [(0, 0), (0, 1), (1, 0)] {
        let update = ProgressUpdate::new(stroke, pose)
            .descriptions(format!("l{stroke}.{pose}"), "r")
            .offsets(2, 3);
        state.update_stroke_progress(&session, &update).await.unwrap();
    }
    let progress = state.get_stroke_progress(&session).await.unwrap().unwrap();
    assert_eq!((progress.stroke_idx, progress.pose_idx), (1, 0));
    assert_eq!(progress.stroke_description_l, "l1.0");
    assert_eq!((progress.offset_idx_l, progress.offset_idx_r), (2, 3));

    let history = state.get_history(&session, &HistoryCursor::Start, 100).await.unwrap();
    let poses: Vec<(i64, i64)> = history.iter().map(|entry| (entry.stroke_idx, entry.pose_idx)).collect();
    assert_eq!(poses, [(0, 0), (0, 1), (1, 0)]);
    assert!(
        history
            .iter()
            .all(|entry| entry.node_id == "hog" && entry.description_r == "r")
    );
    let after_first = state
        .get_history(&session, &HistoryCursor::After(history[0].id), 100)
        .await
        .unwrap();
    assert_eq!(after_first.len(), 2);

    state.pause_stroke_session(&session).await.unwrap();
    assert!(state.get_stroke_progress(&session).await.unwrap().unwrap().is_paused);
    let status = state.system_status().await;
    assert_eq!((status.active_sessions, status.paused_sessions), (0, 1));
    state.resume_stroke_session(&session).await.unwrap();
    assert_eq!(state.system_status().await.active_sessions, 1);

    state.end_stroke_session(&session).await.unwrap();
    let progress = state.get_stroke_progress(&session).await.unwrap().unwrap();
    assert!(!progress.is_executing && !progress.is_paused);
    assert_eq!(
        (progress.stroke_idx, progress.pose_idx),
        (1, 0),
        "ending keeps the last position"
    );
    let status = state.system_status().await;
    assert_eq!((status.active_sessions, status.total_sessions), (0, 1));

    let mut redis = raw(&server).await;
    let week = 7 * 24 * 3600;
    for key in [
        format!("stroke:progress:{session}"),
        format!("stream:stroke_history:{session}"),
    ] {
        let ttl: i64 = redis.ttl(&key).await.unwrap();
        assert!((week - 10..=week).contains(&ttl), "{key} ttl {ttl}");
    }
}

/// Fields an update does not name keep their values, including fields we do not know.
#[tokio::test]
async fn update_changes_only_what_it_names() {
    let (server, state) = setup("hog").await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 3,
            scene: "s".into(),
        })
        .await
        .unwrap();
    state
        .update_stroke_progress(
            &session,
            &ProgressUpdate::new(0, 0).descriptions("left", "right").offsets(4, 5),
        )
        .await
        .unwrap();
    // Another writer adds a field this version does not know.
    let key = format!("stroke:progress:{session}");
    let mut redis = raw(&server).await;
    let stored: String = redis.hget(&key, "progress").await.unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&stored).unwrap();
    doc["future_field"] = serde_json::json!({"nested": [1, 2]});
    let () = redis.hset(&key, "progress", doc.to_string()).await.unwrap();

    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 1))
        .await
        .unwrap();
    let progress = state.get_stroke_progress(&session).await.unwrap().unwrap();
    assert_eq!(
        (
            progress.stroke_description_l.as_str(),
            progress.stroke_description_r.as_str()
        ),
        ("left", "right")
    );
    assert_eq!(
        (progress.offset_idx_l, progress.offset_idx_r, progress.pose_idx),
        (4, 5, 1)
    );
    assert_eq!(progress.extra["future_field"], serde_json::json!({"nested": [1, 2]}));
}

/// Updating a session that does not exist is a clear error, and writes nothing.
#[tokio::test]
async fn unknown_session() {
    let (server, state) = setup("hog").await;
    let session = SessionId::new("stroke_hog_1").unwrap();
    let err = state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SessionNotFound(ref id) if id == "stroke_hog_1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("never started or has expired"), "{err}");
    assert!(matches!(
        state.end_stroke_session(&session).await,
        Err(Error::SessionNotFound(_))
    ));
    let exists: bool = raw(&server)
        .await
        .exists("stream:stroke_history:stroke_hog_1")
        .await
        .unwrap();
    assert!(!exists);
    assert_eq!(state.get_stroke_progress(&session).await.unwrap(), None);
}

/// Two writers on one session, each changing different fields, lose nothing.
#[tokio::test]
async fn concurrent_writers_lose_no_field() {
    let (server, state) = setup("hog").await;
    let other = manager(&server, "ook").await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 100,
            stroke_length: 10,
            scene: "s".into(),
        })
        .await
        .unwrap();
    const N: u32 = 300;
    let left = async {
        for i in 0..N {
            let update = ProgressUpdate {
                description_l: Some(format!("a{i}")),
                ..ProgressUpdate::new(i / 10, i % 10)
            };
            state.update_stroke_progress(&session, &update).await.unwrap();
        }
    };
    let right = async {
        for i in 0..N {
            let update = ProgressUpdate {
                offset_idx_r: Some(i.into()),
                ..ProgressUpdate::new(i / 10, i % 10)
            };
            other.update_stroke_progress(&session, &update).await.unwrap();
        }
        other.pause_stroke_session(&session).await.unwrap();
    };
    tokio::join!(left, right);
    let progress = state.get_stroke_progress(&session).await.unwrap().unwrap();
    assert_eq!(progress.stroke_description_l, format!("a{}", N - 1));
    assert_eq!(progress.offset_idx_r, i64::from(N - 1));
    assert!(progress.is_paused, "the pause from the second writer survived");
    let history = state
        .get_history(&session, &HistoryCursor::Start, 10_000)
        .await
        .unwrap();
    assert_eq!(history.len(), 2 * N as usize);
}

/// A document changed by another client between two updates (spaced as a Python node writes
/// it, with a field we do not know) keeps that change: the stored bytes are not the ones the
/// writer expected, so the script merges instead of taking the writer's document.
#[tokio::test]
async fn change_by_another_client_between_updates_is_kept() {
    let (server, state) = setup("hog").await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 10,
            stroke_length: 10,
            scene: "s".into(),
        })
        .await
        .unwrap();
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 1))
        .await
        .unwrap();
    let mut raw = raw(&server).await;
    let key = tatbot_state::keys::progress(&session);
    let stored: String = raw.hget(&key, "progress").await.unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&stored).unwrap();
    doc["scene_name"] = "changed".into();
    doc["operator"] = "python".into();
    let _: () = raw
        .hset(&key, "progress", serde_json::to_string_pretty(&doc).unwrap())
        .await
        .unwrap();
    for pose in 2..5 {
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
            .await
            .unwrap();
    }
    let progress = state.get_stroke_progress(&session).await.unwrap().unwrap();
    assert_eq!((progress.pose_idx, progress.scene_name.as_str()), (4, "changed"));
    assert_eq!(progress.extra["operator"], "python");
    assert_eq!(
        state
            .get_history(&session, &HistoryCursor::Start, 100)
            .await
            .unwrap()
            .len(),
        4
    );
}

/// 1,000 sessions started at once by one node get distinct ids of the reference shape.
#[tokio::test]
async fn thousand_sessions_distinct_ids() {
    let (_server, state) = setup("hog").await;
    let plan = one_pose("s");
    let starts = (0..1000).map(|_| state.start_stroke_session(&plan));
    let ids: Vec<SessionId> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let distinct: HashSet<&str> = ids.iter().map(SessionId::as_str).collect();
    assert_eq!(distinct.len(), 1000);
    let suffixed = ids.iter().filter(|id| id.as_str().matches('_').count() == 3).count();
    let plain = ids.iter().filter(|id| id.as_str().matches('_').count() == 2).count();
    assert!(plain >= 1 && suffixed >= 1, "plain {plain}, suffixed {suffixed}");
    assert!(ids.iter().all(|id| id.as_str().starts_with("stroke_hog_")));
    assert_eq!(state.system_status().await.active_sessions, 1000);
}

/// Ended sessions expire after the configured retention and leave the listings.
#[tokio::test]
async fn ended_sessions_expire() {
    let (server, _) = setup("hog").await;
    let mut short = config(&server, "hog");
    short.session_retention = Duration::from_secs(1);
    let state = StateManager::connect(short).await.unwrap();
    let session = state.start_stroke_session(&one_pose("s")).await.unwrap();
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
        .await
        .unwrap();
    let running = state.start_stroke_session(&one_pose("s")).await.unwrap();
    state.end_stroke_session(&session).await.unwrap();
    let gone = eventually(Duration::from_secs(5), || async {
        state.get_stroke_progress(&session).await.unwrap().is_none()
    })
    .await;
    assert!(gone, "ended session still stored after its retention");
    assert!(
        state
            .get_history(&session, &HistoryCursor::Start, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let listed: Vec<String> = state
        .list_sessions()
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(listed, [running.to_string()], "the running session never expires");
}

/// Sessions written by a Python node (raw hash, no index entry) are listed and followed.
#[tokio::test]
async fn python_sessions_are_listed() {
    let (server, state) = setup("hog").await;
    let doc = format!(
        r#"{{"timestamp":"{}","node_id":"py","stroke_idx":3,"pose_idx":1,"total_strokes":9,"stroke_length":4,"is_executing":true}}"#,
        tatbot_state::Timestamp::now()
    );
    let () = raw(&server)
        .await
        .hset("stroke:progress:stroke_py_1795626937", "progress", doc)
        .await
        .unwrap();
    let latest = state.latest_active_session().await.unwrap().unwrap();
    assert_eq!(latest.session_id.as_str(), "stroke_py_1795626937");
    assert_eq!(
        (latest.progress.stroke_idx, latest.progress.scene_name.as_str()),
        (3, "default")
    );
    assert_eq!(state.system_status().await.active_sessions, 1);
}

/// clear_session_data removes progress and history.
#[tokio::test]
async fn clear_session() {
    let (_server, state) = setup("hog").await;
    let session = state.start_stroke_session(&one_pose("s")).await.unwrap();
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
        .await
        .unwrap();
    assert!(state.clear_session_data(&session).await.unwrap());
    assert_eq!(state.get_stroke_progress(&session).await.unwrap(), None);
    assert!(
        state
            .get_history(&session, &HistoryCursor::Start, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!state.clear_session_data(&session).await.unwrap());
}

/// Oversized text is refused before anything is written.
#[tokio::test]
async fn oversized_text_refused() {
    let (_server, state) = setup("hog").await;
    let err = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: 1,
            scene: "x".repeat(5000),
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("scene name is 5000 bytes; the limit is 4096"),
        "{err}"
    );
    assert_eq!(state.system_status().await.total_sessions, 0);
}

/// The `session_stale` events in the durable event log, as JSON.
async fn stale_events(server: &tatbot_state_testkit::RedisServer) -> Vec<serde_json::Value> {
    let entries: redis::streams::StreamRangeReply = raw(server).await.xrange_all("tatbot:events").await.unwrap();
    entries
        .ids
        .iter()
        .filter_map(|entry| entry.get::<String>("payload"))
        .filter_map(|payload| serde_json::from_str::<serde_json::Value>(&payload).ok())
        .filter(|event| event["type"] == "session_stale")
        .collect()
}

/// Issue #13 point 2: a session whose owner stops writing turns stale after its lease (no
/// writer needed), counts apart from executing ones, and is announced exactly once however
/// many watchers race; an abort then closes it with its reason and lets it expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_owner_session_turns_stale_once() {
    let (server, _) = setup("hog").await;
    let mut short = config(&server, "hog");
    short.session_lease = Duration::from_secs(1);
    let owner = StateManager::connect(short).await.unwrap();
    let session = owner
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 3,
            scene: "s".into(),
        })
        .await
        .unwrap();
    owner
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
        .await
        .unwrap();
    let progress = owner.get_stroke_progress(&session).await.unwrap().unwrap();
    assert_eq!(progress.state(), tatbot_state::model::SessionState::Executing);
    assert_eq!(progress.owner().unwrap().split('/').next(), Some("hog"));
    // The owner dies: nothing writes any more.
    drop(owner);
    let watcher = manager(&server, "watcher").await;
    let stale = eventually(Duration::from_secs(5), || async {
        let status = watcher.system_status().await;
        status.stale_sessions == 1 && status.active_sessions == 0
    })
    .await;
    assert!(stale, "the session never turned stale");
    assert!(watcher.latest_active_session().await.unwrap().is_none());
    // Many watchers notice at once; one event in all.
    let progress = watcher.get_stroke_progress(&session).await.unwrap().unwrap();
    let sessions = vec![(session.clone(), progress)];
    let mut racing = Vec::new();
    for n in 0..8 {
        let watcher = manager(&server, &format!("w{n}")).await;
        let sessions = sessions.clone();
        racing.push(tokio::spawn(async move {
            watcher.announce_stale_sessions(&sessions).await.unwrap().len()
        }));
    }
    let mut announced = 0;
    for task in racing {
        announced += task.await.unwrap();
    }
    // `system_status` above may have announced it already.
    assert!(announced <= 1, "{announced} watchers announced it");
    let events = stale_events(&server).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["session_id"], session.as_str());
    assert!(events[0]["age_secs"].as_u64().is_some(), "{events:?}");

    watcher.abort_stroke_session(&session, "robot crashed").await.unwrap();
    let progress = watcher.get_stroke_progress(&session).await.unwrap().unwrap();
    assert_eq!(progress.state(), tatbot_state::model::SessionState::Aborted);
    assert_eq!(progress.abort_reason(), Some("robot crashed"));
    let ttl: i64 = raw(&server)
        .await
        .ttl(format!("stroke:progress:{session}"))
        .await
        .unwrap();
    // The aborting manager's retention (the default week) applies, as for an ended session.
    assert!(ttl > 0, "aborted sessions expire like ended ones: ttl {ttl}");
    assert_eq!(watcher.system_status().await.stale_sessions, 0);
    assert_eq!(stale_events(&server).await.len(), 1, "no second event after the abort");
}

/// An idle owner that keeps beating keeps its session live past the lease.
#[tokio::test]
async fn lease_renewals_keep_an_idle_session_live() {
    let (server, _) = setup("hog").await;
    let mut short = config(&server, "hog");
    short.session_lease = Duration::from_secs(1);
    let owner = StateManager::connect(short).await.unwrap();
    let session = owner
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 3,
            scene: "s".into(),
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Renew at a heartbeat's pace for twice the lease, writing no progress.
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(owner.renew_session_leases().await.unwrap(), 1);
        let progress = owner.get_stroke_progress(&session).await.unwrap().unwrap();
        assert_eq!(progress.state(), tatbot_state::model::SessionState::Executing);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Another instance of the same node may not renew it.
    let other = manager(&server, "hog").await;
    assert_eq!(other.renew_session_leases().await.unwrap(), 0);
}

//! The follow API: snapshot then changes, replay from a cursor, resync after trimming, and
//! surviving Redis restarts and pauses without losing or repeating a history entry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use tatbot_state::follow::{Change, ChangeKind, FollowConfig, FollowItem, Follower, LoggedEvent, Scope, Snapshot};
use tatbot_state::model::{HistoryEntry, NodeHealth};
use tatbot_state::{
    CancellationToken, Cursor, HistoryCursor, ProducerConfig, ProgressUpdate, SessionId, SessionPlan, StateManager,
};
use tatbot_state_testkit::RedisServer;

use crate::util::{append_huge_log_entry, bytes_sent, calls, eventually, fill_log, manager, one_pose, raw, setup};

/// How long any awaited condition may take.
const LIMIT: Duration = Duration::from_secs(20);

/// Fast settings so tests see polls and reconnects quickly.
fn quick() -> FollowConfig {
    FollowConfig {
        block: Duration::from_millis(200),
        poll_interval: Duration::from_millis(200),
        max_backoff: Duration::from_millis(300),
        ..FollowConfig::default()
    }
}

fn start(state: &StateManager, scope: Scope, resume: Option<Cursor>) -> Follower {
    state.follow_with(scope, resume, quick(), &CancellationToken::new())
}

/// A block and a poll longer than any test: a follower's read ends only when an entry comes.
fn waiting() -> FollowConfig {
    FollowConfig {
        block: Duration::from_secs(60),
        poll_interval: Duration::from_secs(60),
        ..quick()
    }
}

/// A started session with one history entry (pose 0), so that a follower tails it.
async fn tailed_session(state: &StateManager) -> SessionId {
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: 20,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
        .await
        .unwrap();
    session
}

/// Everything a follower delivered, folded.
#[derive(Default)]
struct Seen {
    view: Option<Snapshot>,
    snapshots: usize,
    resyncs: Vec<String>,
    lost: usize,
    reconnected: usize,
    progress: Vec<(SessionId, HistoryEntry)>,
    changes: Vec<Change>,
}

/// Consumes a follower on a task of its own; the returned handle reads what it saw.
fn collect(mut follower: Follower) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(item) = follower.next().await {
            let mut seen = sink.lock().unwrap();
            match item {
                FollowItem::Snapshot(snapshot) => {
                    seen.snapshots += 1;
                    seen.view = Some(*snapshot);
                }
                FollowItem::Change(change) => {
                    if let ChangeKind::Progress { session_id, entry } = &change.kind {
                        seen.progress.push((session_id.clone(), entry.clone()));
                    }
                    if let Some(view) = seen.view.as_mut() {
                        view.apply(&change);
                    }
                    seen.changes.push(change);
                }
                FollowItem::Resync { reason } => seen.resyncs.push(reason),
                FollowItem::ConnectionLost { .. } => seen.lost += 1,
                FollowItem::Reconnected => seen.reconnected += 1,
            }
        }
    });
    seen
}

async fn wait_for(seen: &Arc<Mutex<Seen>>, what: &str, check: impl Fn(&Seen) -> bool) {
    let reached = eventually(LIMIT, || {
        let done = check(&seen.lock().unwrap());
        async move { done }
    })
    .await;
    assert!(reached, "timed out waiting for {what}");
}

/// Every history entry of `session_id` as stored.
async fn stored_history(state: &StateManager, session_id: &SessionId) -> Vec<HistoryEntry> {
    state
        .get_history(session_id, &HistoryCursor::Start, 100_000)
        .await
        .unwrap()
}

fn progress_of(seen: &Seen, session_id: &SessionId) -> Vec<HistoryEntry> {
    seen.progress
        .iter()
        .filter(|(id, _)| id == session_id)
        .map(|(_, entry)| entry.clone())
        .collect()
}

/// Waits until the follower's folded view shows the same sessions as a fresh snapshot.
async fn wait_until_view_matches(state: &StateManager, seen: &Arc<Mutex<Seen>>) -> Snapshot {
    let fresh: Arc<Mutex<Option<Snapshot>>> = Arc::default();
    let reached = eventually(LIMIT, || {
        let state = state.clone();
        let seen = Arc::clone(seen);
        let fresh = Arc::clone(&fresh);
        async move {
            let Ok(snapshot) = state.snapshot(&Scope::All, &quick()).await else {
                return false;
            };
            let same = seen
                .lock()
                .unwrap()
                .view
                .as_ref()
                .is_some_and(|view| view.sessions == snapshot.sessions);
            *fresh.lock().unwrap() = Some(snapshot);
            same
        }
    })
    .await;
    let fresh = fresh.lock().unwrap().take().expect("a snapshot was read");
    assert!(
        reached,
        "the follower's view never matched: {:?} vs {:?}",
        seen.lock().unwrap().view.as_ref().map(|view| &view.sessions),
        fresh.sessions
    );
    fresh
}

/// A follower gets a snapshot, then every history entry once and in order, and session events.
#[tokio::test]
async fn snapshot_then_every_change() {
    let (_server, state) = setup("hog").await;
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;

    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 3,
            stroke_length: 4,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    for step in 0..12 {
        let update = ProgressUpdate::new(step / 4, step % 4).descriptions(format!("l{step}"), "r");
        state.update_stroke_progress(&session, &update).await.unwrap();
        if step == 5 {
            state.pause_stroke_session(&session).await.unwrap();
            state.resume_stroke_session(&session).await.unwrap();
        }
    }
    state.end_stroke_session(&session).await.unwrap();

    wait_until_view_matches(&state, &seen).await;
    let expected = stored_history(&state, &session).await;
    assert_eq!(expected.len(), 12);
    let seen = seen.lock().unwrap();
    assert_eq!(progress_of(&seen, &session), expected);
    let types: Vec<&str> = seen
        .changes
        .iter()
        .filter_map(|change| match &change.kind {
            ChangeKind::Event { event } => event.event_type.as_deref(),
            _ => None,
        })
        .collect();
    assert_eq!(
        types,
        ["session_start", "session_pause", "session_resume", "session_end"]
    );
    let view = seen.view.as_ref().unwrap();
    assert!(!view.sessions[session.as_str()].is_executing);
    assert!(
        view.cursor.history(&session).is_none(),
        "an ended session is no longer tailed"
    );
}

/// `Follower::next` is cancel-safe: a consumer whose every `next` is cut short by a timeout
/// shorter than a Redis round trip still gets each history entry once, in order. The follow
/// lives in the follower, so a dropped `next` only pauses it, and an item it handed over is
/// in the channel for the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_cut_short_by_timeouts_loses_nothing() {
    let (_server, state) = setup("hog").await;
    let mut follower = start(&state, Scope::All, None);
    let first = tokio::time::timeout(LIMIT, follower.next())
        .await
        .expect("the snapshot");
    assert!(matches!(first, Some(FollowItem::Snapshot(_))), "{first:?}");
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 10,
            stroke_length: 20,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let writer = {
        let (state, session) = (state.clone(), session.clone());
        tokio::spawn(async move {
            for step in 0..200 {
                let update = ProgressUpdate::new(step / 20, step % 20);
                state.update_stroke_progress(&session, &update).await.unwrap();
            }
            state.end_stroke_session(&session).await.unwrap();
        })
    };
    let (mut progress, mut cut_short, mut ended) = (Vec::new(), 0, false);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !ended {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session's end within {LIMIT:?}"
        );
        match tokio::time::timeout(Duration::from_micros(50), follower.next()).await {
            Err(_) => cut_short += 1,
            Ok(None) => panic!("the follow stopped"),
            Ok(Some(FollowItem::Change(change))) => match change.kind {
                ChangeKind::Progress { session_id, entry } if session_id == session => progress.push(entry),
                ChangeKind::Event { event } => ended = event.event_type.as_deref() == Some("session_end"),
                _ => {}
            },
            Ok(Some(_)) => {}
        }
    }
    writer.await.unwrap();
    assert!(cut_short > 0, "some calls were cut short");
    assert_eq!(
        progress,
        stored_history(&state, &session).await,
        "each entry once, in order"
    );
    assert_eq!(progress.len(), 200);
}

/// Calls of `XINFO STREAM` the server executed: the follower pipelines one per followed
/// stream in front of each of its reads, so this counts its reads.
fn xinfo_calls(server: &RedisServer) -> u64 {
    calls(server, "xinfo|stream")
}

/// Whether some client is blocked (the follower's `XREAD BLOCK`, waiting for an entry).
fn a_client_is_blocked(server: &RedisServer) -> bool {
    let clients = server.command(&["CLIENT", "LIST"]).unwrap();
    clients.lines().any(|line| {
        line.split(' ')
            .find_map(|field| field.strip_prefix("flags="))
            .is_some_and(|flags| flags.contains('b'))
    })
}

/// A progress update writes its session's history and the event log in one script, and wakes
/// a waiting follower once: one read brings both entries (Redis 7.0, Debian's, answers the
/// blocked read with the history alone; the read pipelined behind it brings the log's entry),
/// where it used to take a second round trip right after the first. From Redis 7.2 the server
/// answers with both streams itself, and this passes either way. The follower's block and
/// poll are longer than the test, so neither adds a read.
#[tokio::test]
async fn one_read_per_progress_update() {
    const UPDATES: u32 = 20;
    let (server, state) = setup("hog").await;
    let seen = collect(state.follow_with(Scope::All, None, waiting(), &CancellationToken::new()));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: 100,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let blocked = || async { a_client_is_blocked(&server) };
    let mut before = None;
    for pose in 0..=UPDATES {
        // The follower tails the session and waits in its read before each update.
        assert!(eventually(LIMIT, blocked).await, "the follower waits in XREAD BLOCK");
        before = before.or(Some(xinfo_calls(&server)));
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
            .await
            .unwrap();
        let delivered = usize::try_from(pose + 1).unwrap();
        wait_for(&seen, "the update", |seen| {
            progress_of(seen, &session).len() == delivered
        })
        .await;
    }
    assert!(eventually(LIMIT, blocked).await, "the follower waits in XREAD BLOCK");
    // Each read pipelines two XINFOs: the event log's and the session history's.
    let reads = (xinfo_calls(&server) - before.unwrap()) / 2;
    assert_eq!(reads, u64::from(UPDATES) + 1, "one read per update");
}

/// A follower resumed from a change's cursor gets exactly the changes after it, no snapshot.
#[tokio::test]
async fn resume_replays_exactly_what_was_missed() {
    let (_server, state) = setup("hog").await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: 10,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let first = collect(start(&state, Scope::All, None));
    wait_for(&first, "the snapshot", |seen| seen.snapshots == 1).await;
    for pose in 0..4 {
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
            .await
            .unwrap();
    }
    wait_for(&first, "4 entries", |seen| seen.progress.len() == 4).await;
    let cursor = first.lock().unwrap().changes.last().unwrap().cursor.clone();
    let mut view = first.lock().unwrap().view.clone().unwrap();

    // While nobody follows: more progress, an error, the end.
    for pose in 4..10 {
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
            .await
            .unwrap();
    }
    let category = tatbot_state::Category::new("hardware").unwrap();
    state
        .report_error(&category, "arm fault", serde_json::json!({}))
        .await
        .unwrap();
    state.end_stroke_session(&session).await.unwrap();

    let second = collect(start(&state, Scope::All, Some(cursor)));
    wait_for(&second, "the rest of the history and the end", |seen| {
        seen.progress.len() == 6
            && seen.changes.iter().any(|change| {
                matches!(&change.kind, ChangeKind::Event { event } if event.event_type.as_deref() == Some("session_end"))
            })
    })
    .await;
    let expected = stored_history(&state, &session).await;
    let stored = state.get_stroke_progress(&session).await.unwrap().unwrap();
    let second = second.lock().unwrap();
    assert_eq!(second.snapshots, 0, "a resumed follower replays instead");
    assert!(second.resyncs.is_empty(), "{:?}", second.resyncs);
    assert_eq!(progress_of(&second, &session), expected[4..]);
    for change in &second.changes {
        view.apply(change);
    }
    assert_eq!(view.sessions[session.as_str()], stored);
    assert_eq!(view.recent_errors.last().unwrap().payload["message"], "arm fault");
}

/// Resuming after the event log was trimmed past the cursor gives a resync and a fresh snapshot.
#[tokio::test]
async fn trimmed_event_log_resyncs() {
    let (server, state) = setup("hog").await;
    let session = state.start_stroke_session(&one_pose("scene")).await.unwrap();
    let old = state.snapshot(&Scope::All, &quick()).await.unwrap().cursor;
    state.pause_stroke_session(&session).await.unwrap();
    state.resume_stroke_session(&session).await.unwrap();
    trim_to_last(&server, tatbot_state::keys::EVENT_LOG).await;

    let seen = collect(start(&state, Scope::All, Some(old)));
    wait_for(&seen, "a resync and a snapshot", |seen| seen.snapshots == 1).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.resyncs.len(), 1);
    assert!(seen.resyncs[0].contains("trimmed"), "{}", seen.resyncs[0]);
    assert!(seen.view.as_ref().unwrap().sessions.contains_key(session.as_str()));
}

/// Resuming after a session's history was trimmed past the cursor also resyncs.
#[tokio::test]
async fn trimmed_history_resyncs() {
    let (server, state) = setup("hog").await;
    let session = tailed_session(&state).await;
    let old = state.snapshot(&Scope::All, &quick()).await.unwrap().cursor;
    assert!(old.history(&session).is_some());
    for pose in 1..5 {
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
            .await
            .unwrap();
    }
    let key = tatbot_state::keys::history(&session);
    trim_to_last(&server, &key).await;

    let seen = collect(start(&state, Scope::All, Some(old)));
    wait_for(&seen, "a resync and a snapshot", |seen| seen.snapshots == 1).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.resyncs.len(), 1);
    assert!(seen.resyncs[0].contains(&key), "{}", seen.resyncs[0]);
}

/// Trims `key` to its last entry.
async fn trim_to_last(server: &RedisServer, key: &str) {
    let _: i64 = raw(server)
        .await
        .xtrim(key, redis::streams::StreamMaxlen::Equals(1))
        .await
        .unwrap();
}

/// The next item of `follower`, within [`LIMIT`].
async fn next_item(follower: &mut Follower) -> FollowItem {
    tokio::time::timeout(LIMIT, follower.next())
        .await
        .expect("an item in time")
        .expect("the follow goes on")
}

/// The id of the last entry of `key`.
async fn last_id(server: &RedisServer, key: &str) -> String {
    let reply: redis::streams::StreamRangeReply = raw(server).await.xrevrange_count(key, "+", "-", 1).await.unwrap();
    reply.ids.first().expect("an entry").id.clone()
}

/// A gap that a read's checks find goes out before any entry of that read: the checks ride in
/// front of the read in one pipeline, and the follower delivers nothing before it has looked
/// at them. The follow runs only inside `next`, so stopping after the first entry of a batch
/// leaves no read outstanding while the history is trimmed.
#[tokio::test]
async fn a_gap_found_by_a_reads_checks_comes_before_its_entries() {
    let (server, state) = setup("hog").await;
    let session = tailed_session(&state).await;
    let config = FollowConfig { batch: 2, ..waiting() };
    let shutdown = CancellationToken::new();
    let mut follower = state.follow_with(Scope::Session(session.clone()), None, config, &shutdown);
    assert!(matches!(next_item(&mut follower).await, FollowItem::Snapshot(_)));
    for pose in 1..=4 {
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
            .await
            .unwrap();
    }
    // The next progress is pose 1, the first of a batch of two (1 and 2).
    let pose_of = |item: &FollowItem| match item {
        FollowItem::Change(Change {
            kind: ChangeKind::Progress { entry, .. },
            ..
        }) => Some(entry.pose_idx),
        _ => None,
    };
    let mut first = next_item(&mut follower).await;
    while pose_of(&first).is_none() {
        first = next_item(&mut follower).await;
    }
    assert_eq!(pose_of(&first), Some(1), "{first:?}");
    // Poses 1 to 3 go: 3 was never delivered. Pose 2 was read already and comes next.
    let key = tatbot_state::keys::history(&session);
    trim_to_last(&server, &key).await;
    let mut items = Vec::new();
    loop {
        let item = next_item(&mut follower).await;
        let done = matches!(item, FollowItem::Resync { .. }) || pose_of(&item).is_some_and(|pose| pose > 2);
        items.push(item);
        if done {
            break;
        }
    }
    let poses: Vec<i64> = items.iter().filter_map(pose_of).collect();
    assert_eq!(
        poses,
        [2],
        "pose 2, read before the trim, and nothing after the gap: {items:?}"
    );
    match items.last() {
        Some(FollowItem::Resync { reason }) => assert!(reason.contains(&key), "{reason}"),
        other => panic!("expected a resync, got {other:?}"),
    }
    assert!(matches!(next_item(&mut follower).await, FollowItem::Snapshot(_)));
}

/// Entries deleted in the very step that wakes a waiting read (a transaction that appends
/// and trims, or appends and deletes) are not passed over: the read brings what is left, and
/// the next read's checks, which look from the cursor before the last read, find the gap and
/// resync when that read is answered. Checked from the cursor after it, neither deletion
/// would be seen.
#[tokio::test]
async fn a_gap_made_by_the_step_that_wakes_a_read_resyncs() {
    for deletion in ["XTRIM", "XDEL"] {
        let (server, state) = setup("hog").await;
        let session = tailed_session(&state).await;
        // Neither the block nor a poll ends the wait before the step comes.
        let seen = collect(state.follow_with(Scope::All, None, waiting(), &CancellationToken::new()));
        wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
        assert!(
            eventually(LIMIT, || async { a_client_is_blocked(&server) }).await,
            "the follower waits in XREAD BLOCK"
        );
        let key = tatbot_state::keys::history(&session);
        let last = last_id(&server, &key).await;
        let ms: u64 = last.split('-').next().unwrap().parse().unwrap();
        let (gone, kept) = (format!("{}-0", ms + 1), format!("{}-0", ms + 2));
        let mut step = redis::pipe();
        step.atomic();
        for (id, pose) in [(&gone, "1"), (&kept, "2")] {
            step.cmd("XADD")
                .arg(&key)
                .arg(id)
                .arg(&[
                    ("stroke_idx", "0"),
                    ("pose_idx", pose),
                    ("description_l", ""),
                    ("description_r", ""),
                    ("node_id", "hog"),
                ])
                .ignore();
        }
        if deletion == "XTRIM" {
            step.cmd("XTRIM").arg(&key).arg("MAXLEN").arg(1).ignore();
        } else {
            step.cmd("XDEL").arg(&key).arg(&gone).ignore();
        }
        let () = step.query_async(&mut raw(&server).await).await.unwrap();
        // The read it woke brings what is left; the next read's checks, made before it waits,
        // are looked at when it is answered: the next update answers it.
        wait_for(&seen, "what the step left", |seen| {
            !progress_of(seen, &session).is_empty()
        })
        .await;
        state
            .update_stroke_progress(&session, &ProgressUpdate::new(0, 3))
            .await
            .unwrap();
        wait_for(&seen, "a resync and a fresh snapshot", |seen| seen.snapshots == 2).await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.resyncs.len(), 1, "{deletion}: {:?}", seen.resyncs);
        let found = if deletion == "XTRIM" { "trimmed" } else { "deleted" };
        assert!(
            seen.resyncs[0].contains(&key) && seen.resyncs[0].contains(found),
            "{deletion}: {}",
            seen.resyncs[0]
        );
        let poses: Vec<i64> = progress_of(&seen, &session)
            .iter()
            .map(|entry| entry.pose_idx)
            .collect();
        // What the step left went out before the resync (no client could ever read the entry
        // it deleted); the update after it comes with the fresh snapshot.
        assert_eq!(poses, [2], "{deletion}");
        drop(seen);
        drop(server);
    }
}

/// Progress written the Python way (hash, history, pub/sub; no event log) is followed too.
#[tokio::test]
async fn python_written_progress_is_followed() {
    let (server, state) = setup("hog").await;
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;

    let mut python = raw(&server).await;
    let session = SessionId::new("stroke_ook_1795626937").unwrap();
    let document = |pose: i64, executing: bool| {
        format!(
            r#"{{"timestamp":"2026-11-25T17:15:37.792132","node_id":"ook","stroke_idx":0,"pose_idx":{pose},"total_strokes":1,"stroke_length":5,"stroke_description_l":"","stroke_description_r":"","offset_idx_l":0,"offset_idx_r":0,"is_executing":{executing},"is_paused":false,"scene_name":"default","dataset_name":null}}"#
        )
    };
    let progress_key = tatbot_state::keys::progress(&session);
    let history_key = tatbot_state::keys::history(&session);
    let _: () = python.hset(&progress_key, "progress", document(0, true)).await.unwrap();
    for pose in 0..5 {
        let _: () = python
            .hset(&progress_key, "progress", document(pose, true))
            .await
            .unwrap();
        let fields = [
            ("stroke_idx", "0".to_owned()),
            ("pose_idx", pose.to_string()),
            ("description_l", format!("py {pose}")),
            ("description_r", String::new()),
            ("node_id", "ook".to_owned()),
        ];
        let _: String = python.xadd(&history_key, "*", &fields).await.unwrap();
    }
    let _: () = python
        .hset(&progress_key, "progress", document(4, false))
        .await
        .unwrap();

    wait_until_view_matches(&state, &seen).await;
    let expected = stored_history(&state, &session).await;
    assert_eq!(progress_of(&seen.lock().unwrap(), &session), expected);
}

/// Heartbeats are polled: a new heartbeat and an expired one each give a node change.
#[tokio::test]
async fn node_heartbeats_are_polled() {
    let (server, state) = setup("hog").await;
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    let mut health = NodeHealth::new("eek");
    health.cpu_percent = 42.0;
    state.update_node_health(&health).await.unwrap();
    wait_for(&seen, "the node online", |seen| {
        seen.view
            .as_ref()
            .unwrap()
            .nodes
            .get("eek")
            .is_some_and(|node| node.health.is_some())
    })
    .await;
    {
        let seen = seen.lock().unwrap();
        let node = &seen.view.as_ref().unwrap().nodes["eek"];
        assert_eq!(node.health.as_ref().unwrap().cpu_percent, 42.0);
        let skew = node.clock_skew_ms.expect("skew estimated from the TTL");
        assert!(skew.abs() < 2_000, "{skew}");
    }
    let _: i64 = raw(&server).await.del("node:health:eek").await.unwrap();
    wait_for(&seen, "the node offline", |seen| {
        seen.view
            .as_ref()
            .unwrap()
            .nodes
            .get("eek")
            .is_some_and(|node| node.health.is_none())
    })
    .await;
}

/// Killing, restarting and pausing Redis mid-session loses and repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_restart_and_pause() {
    let mut server = RedisServer::builder()
        .persistence(true)
        .config("appendfsync", "always")
        .start();
    let state = manager(&server, "hog").await;
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;

    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 6,
            stroke_length: 10,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let producer = {
        let state = state.clone();
        let session = session.clone();
        tokio::spawn(async move {
            for step in 0..60 {
                let update = ProgressUpdate::new(step / 10, step % 10).descriptions(format!("l{step}"), "r");
                // Retried until Redis is back; a retry after a lost reply may store the entry
                // twice, which the stream then holds twice too.
                let deadline = tokio::time::Instant::now() + LIMIT;
                while state.update_stroke_progress(&session, &update).await.is_err() {
                    assert!(tokio::time::Instant::now() < deadline, "redis never came back");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    wait_for(&seen, "some progress", |seen| seen.progress.len() >= 10).await;
    server.kill();
    wait_for(&seen, "the connection lost", |seen| seen.lost == 1).await;
    server.restart();
    wait_for(&seen, "the reconnect", |seen| seen.reconnected == 1).await;
    wait_for(&seen, "more progress", |seen| seen.progress.len() >= 30).await;
    server.pause();
    wait_for(&seen, "the pause noticed", |seen| seen.lost == 2).await;
    server.resume();
    wait_for(&seen, "the second reconnect", |seen| seen.reconnected == 2).await;
    producer.await.unwrap();
    state.end_stroke_session(&session).await.unwrap();

    wait_until_view_matches(&state, &seen).await;
    let expected = stored_history(&state, &session).await;
    assert!(expected.len() >= 60);
    let seen = seen.lock().unwrap();
    assert!(
        seen.resyncs.is_empty(),
        "appendfsync always loses nothing: {:?}",
        seen.resyncs
    );
    assert_eq!(progress_of(&seen, &session), expected);
}

fn corrupt_keys(seen: &Seen) -> Vec<String> {
    seen.view
        .as_ref()
        .map(|view| view.corrupt.iter().map(|entry| entry.key.clone()).collect())
        .unwrap_or_default()
}

/// Issue #14 point 5: a key of the wrong type (`rpush stroke:progress:x a`) is reported
/// corrupt, and the follower neither loses Redis nor stops delivering progress.
#[tokio::test]
async fn wrong_type_key_is_corrupt_not_a_lost_connection() {
    let (server, state) = setup("hog").await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 4,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let mut redis = raw(&server).await;
    let _: usize = redis.rpush("stroke:progress:x", "a").await.unwrap();
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    assert_eq!(corrupt_keys(&seen.lock().unwrap()), ["stroke:progress:x"]);

    // Found by a poll after the snapshot, and a tailed history that turns into a string.
    let _: usize = redis.rpush("stroke:progress:y", "a").await.unwrap();
    wait_for(&seen, "the poll to report the new key", |seen| {
        corrupt_keys(seen).contains(&"stroke:progress:y".to_owned())
    })
    .await;
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 1))
        .await
        .unwrap();
    wait_for(&seen, "progress after the corrupt keys", |seen| {
        progress_of(seen, &session).len() == 1
    })
    .await;
    let broken = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 4,
            scene: "other".into(),
        })
        .await
        .unwrap();
    wait_for(&seen, "the second session", |seen| {
        seen.view
            .as_ref()
            .is_some_and(|view| view.sessions.contains_key(broken.as_str()))
    })
    .await;
    let history_key = format!("stream:stroke_history:{broken}");
    let () = redis.set(&history_key, "not a stream").await.unwrap();
    wait_for(&seen, "the history key to be reported", |seen| {
        corrupt_keys(seen).contains(&history_key)
    })
    .await;
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(1, 0))
        .await
        .unwrap();
    wait_for(&seen, "progress after the broken history", |seen| {
        progress_of(seen, &session).len() == 2
    })
    .await;
    let seen = seen.lock().unwrap();
    assert_eq!((seen.lost, seen.reconnected, seen.snapshots), (0, 0, 1));
    let reported = seen
        .changes
        .iter()
        .filter(|change| matches!(&change.kind, ChangeKind::Corrupt { key, .. } if key == "stroke:progress:y"))
        .count();
    assert_eq!(reported, 1, "a corrupt key is reported once, not at every poll");
}

/// Issue #14 point 6: the 1 MiB bound holds on the follow path too; oversized documents and
/// heartbeats, keys with invalid ids and bad history entries are reported, never delivered.
#[tokio::test]
async fn follow_path_bounds_and_reports_corrupt_entries() {
    use tatbot_state::model::MAX_DOCUMENT_BYTES;
    let (server, state) = setup("hog").await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 4,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let pad = "x".repeat(MAX_DOCUMENT_BYTES + 1);
    let huge_progress = format!(r#"{{"timestamp":"2026-11-25T17:15:37","node_id":"n","pad":"{pad}"}}"#);
    let huge_health = format!(
        r#"{{"timestamp":"2026-11-25T17:15:37","node_id":"big","last_heartbeat":"2026-11-25T17:15:37","pad":"{pad}"}}"#
    );
    let mut redis = raw(&server).await;
    let () = redis
        .hset("stroke:progress:stroke_big_1", "progress", &huge_progress)
        .await
        .unwrap();
    let () = redis.hset("node:health:big", "health", &huge_health).await.unwrap();
    let () = redis.hset("stroke:progress:a*b?[c]", "progress", "{}").await.unwrap();
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    {
        let seen = seen.lock().unwrap();
        let view = seen.view.as_ref().unwrap();
        assert!(!view.sessions.contains_key("stroke_big_1"));
        assert!(view.nodes["big"].health.is_none());
        let mut keys = corrupt_keys(&seen);
        keys.sort();
        assert_eq!(
            keys,
            [
                "node:health:big",
                "stroke:progress:a*b?[c]",
                "stroke:progress:stroke_big_1"
            ]
        );
        let errors: Vec<&str> = view.corrupt.iter().map(|entry| entry.error.as_str()).collect();
        assert!(errors.iter().any(|error| error.contains("the limit is")), "{errors:?}");
        assert!(
            errors.iter().any(|error| error.contains("valid session id")),
            "{errors:?}"
        );
    }

    let history_key = format!("stream:stroke_history:{session}");
    let description = "d".repeat(MAX_DOCUMENT_BYTES + 1);
    let fields = [
        ("stroke_idx", "0"),
        ("pose_idx", "0"),
        ("description_l", description.as_str()),
        ("description_r", ""),
        ("node_id", "n"),
    ];
    let _: String = redis.xadd(&history_key, "*", &fields).await.unwrap();
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 1))
        .await
        .unwrap();
    wait_for(&seen, "the good entry after the bad one", |seen| {
        progress_of(seen, &session).len() == 1
    })
    .await;
    let seen = seen.lock().unwrap();
    assert_eq!(progress_of(&seen, &session)[0].pose_idx, 1);
    let history_error = seen
        .view
        .as_ref()
        .unwrap()
        .corrupt
        .iter()
        .find(|entry| entry.key == history_key);
    assert!(
        history_error.is_some_and(|entry| entry.error.contains("\"description_l\" is")),
        "{:?}",
        seen.view.as_ref().unwrap().corrupt
    );
    assert_eq!(seen.lost, 0);
}

/// Issue #13 point 3: robot states are in the snapshot, their changes and deletions follow,
/// and a corrupt `robot:state:*` key is reported without hiding the good one.
#[tokio::test]
async fn robot_states_are_followed() {
    use tatbot_state::model::RobotState;
    let (server, state) = setup("hog").await;
    let mut robot = RobotState::new("hog");
    robot.current_pose = "ready".to_owned();
    state.update_robot_state(&robot).await.unwrap();
    let mut redis = raw(&server).await;
    let () = redis.rpush("robot:state:bad", "a").await.unwrap();
    let seen = collect(start(&state, Scope::All, None));
    let pose = |seen: &Seen| {
        seen.view
            .as_ref()
            .and_then(|view| view.robots.get("hog"))
            .map(|robot| robot.current_pose.clone())
    };
    wait_for(&seen, "the robot in the snapshot", |seen| {
        pose(seen).as_deref() == Some("ready")
    })
    .await;
    assert!(corrupt_keys(&seen.lock().unwrap()).contains(&"robot:state:bad".to_owned()));
    robot.current_pose = "drawing".to_owned();
    robot.is_connected_l = true;
    state.update_robot_state(&robot).await.unwrap();
    wait_for(&seen, "the robot's change", |seen| {
        pose(seen).as_deref() == Some("drawing")
    })
    .await;
    let () = redis.del("robot:state:hog").await.unwrap();
    wait_for(&seen, "the robot's removal", |seen| {
        seen.view.as_ref().is_some_and(|view| view.robots.is_empty())
    })
    .await;
}

/// An awaited progress update, an error report named `message` and a published event: each
/// writes to the event log, the error report to the error log too; each must succeed.
async fn write_to_every_log(state: &StateManager, session: &SessionId, message: &str) {
    use tatbot_state::{Category, model::Event};
    state
        .update_stroke_progress(session, &ProgressUpdate::new(0, 0))
        .await
        .unwrap();
    let arm = Category::new("arm").unwrap();
    state.report_error(&arm, message, serde_json::json!({})).await.unwrap();
    let custom = Event::from_json(br#"{"type":"custom"}"#).unwrap();
    state.publish_event("stroke:events:custom", &custom).await.unwrap();
}

/// Another client's value under the event log and the error log (`SET tatbot:events x`) breaks
/// nothing: every write goes on without logging there, the status and the follower report the
/// two keys, the follower keeps delivering progress (and finds new sessions by polling) without
/// losing Redis, and once the log is deleted it reads the log again. Before, every write script
/// failed with WRONGTYPE (a producer's update was rejected) and followers reconnected forever.
#[tokio::test]
async fn a_log_of_another_type_is_reported_and_breaks_nothing() {
    use tatbot_state::{Category, CorruptEntry, Error, ProducerConfig};
    let (server, state) = setup("hog").await;
    let session = state.start_stroke_session(&one_pose("scene")).await.unwrap();
    let mut redis = raw(&server).await;
    let () = redis.set(tatbot_state::keys::EVENT_LOG, "not a stream").await.unwrap();
    let () = redis.set(tatbot_state::keys::ERROR_LOG, "not a stream").await.unwrap();

    // Writes: awaited, published and through a producer.
    write_to_every_log(&state, &session, "before").await;
    let other = state.start_stroke_session(&one_pose("other")).await.unwrap();
    let producer = state.producer(ProducerConfig::default(), CancellationToken::new());
    producer
        .update_stroke_progress(&other, &ProgressUpdate::new(0, 0))
        .unwrap();
    producer.flush(LIMIT).await.unwrap();
    assert_eq!(producer.stats().rejected, 0);

    // Readers report the two keys.
    let not_streams = [tatbot_state::keys::EVENT_LOG, tatbot_state::keys::ERROR_LOG].map(|key| CorruptEntry {
        key: key.to_owned(),
        error: format!("{key}: the key is not a stream"),
    });
    assert_eq!(state.system_status().await.corrupt, not_streams);
    assert!(matches!(state.list_errors(5).await, Err(Error::Corrupt { .. })));
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    assert_eq!(seen.lock().unwrap().view.as_ref().unwrap().corrupt, not_streams);

    // Progress on a tailed session, and a session started meanwhile (found by a poll).
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0).descriptions("later", ""))
        .await
        .unwrap();
    let third = state.start_stroke_session(&one_pose("third")).await.unwrap();
    wait_for(&seen, "the update and the new session", |seen| {
        progress_of(seen, &session).len() == 1
            && seen
                .view
                .as_ref()
                .is_some_and(|view| view.sessions.contains_key(third.as_str()))
    })
    .await;

    // The log deleted: the next error is logged and followed from it.
    let _: i64 = redis.del(tatbot_state::keys::EVENT_LOG).await.unwrap();
    let arm = Category::new("arm").unwrap();
    state.report_error(&arm, "after", serde_json::json!({})).await.unwrap();
    wait_for(&seen, "the error from the log", |seen| {
        seen.changes
            .iter()
            .any(|change| matches!(&change.kind, ChangeKind::Event { event } if event.payload["message"] == "after"))
    })
    .await;

    // Broken again while the follower's cursor is in the log: what the log held after the
    // cursor is gone, so the follower resyncs, and its fresh snapshot lists the key again.
    let () = redis.set(tatbot_state::keys::EVENT_LOG, "not a stream").await.unwrap();
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0).descriptions("again", ""))
        .await
        .unwrap();
    wait_for(&seen, "a resync and a second snapshot", |seen| seen.snapshots == 2).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.resyncs.len(), 1);
    assert!(seen.resyncs[0].contains("not a stream any more"), "{}", seen.resyncs[0]);
    assert!(corrupt_keys(&seen).contains(&tatbot_state::keys::EVENT_LOG.to_owned()));
    assert_eq!((seen.lost, seen.reconnected), (0, 0));
}

/// A write skips a shared log or index only when its key holds another type: any other refusal
/// fails the call as before. Here a master without the replica `min-replicas-to-write` asks for
/// refuses the event and the error report, whose first write is their log entry.
#[tokio::test]
async fn a_refused_log_write_still_fails_the_call() {
    use tatbot_state::{Category, model::Event};
    let (server, state) = setup("hog").await;
    let mut subscription = state.subscribe(&["stroke:events:*", "error:events:*"]).await.unwrap();
    server
        .command(&["CONFIG", "SET", "min-replicas-to-write", "1"])
        .unwrap();
    let custom = Event::from_json(br#"{"type":"custom"}"#).unwrap();
    let published = state.publish_event("stroke:events:custom", &custom).await;
    assert!(format!("{published:?}").contains("NOREPLICAS"), "{published:?}");
    let arm = Category::new("arm").unwrap();
    let reported = state.report_error(&arm, "refused", serde_json::json!({})).await;
    assert!(format!("{reported:?}").contains("NOREPLICAS"), "{reported:?}");
    // Nothing was published by the refused calls: the first message is the one sent after.
    server
        .command(&["CONFIG", "SET", "min-replicas-to-write", "0"])
        .unwrap();
    let marker = Event::from_json(br#"{"type":"marker"}"#).unwrap();
    state.publish_event("stroke:events:marker", &marker).await.unwrap();
    let first = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap();
    assert_eq!(first.channel, "stroke:events:marker");
}

/// A log whose last possible id another client used up (`XADD tatbot:events
/// 18446744073709551615-18446744073709551615 ...`) takes no entry again: writes skip it too.
#[tokio::test]
async fn a_used_up_log_breaks_no_write() {
    let (server, state) = setup("hog").await;
    let session = state.start_stroke_session(&one_pose("scene")).await.unwrap();
    let last = "18446744073709551615-18446744073709551615";
    for key in [tatbot_state::keys::EVENT_LOG, tatbot_state::keys::ERROR_LOG] {
        server.command(&["XADD", key, last, "a", "b"]).unwrap();
    }
    write_to_every_log(&state, &session, "kept").await;
    state.end_stroke_session(&session).await.unwrap();
    let progress = state.get_stroke_progress(&session).await.unwrap().unwrap();
    assert!(!progress.is_executing);
    // Readers say so: nothing more will come through that log.
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    assert!(corrupt_keys(&seen.lock().unwrap()).contains(&tatbot_state::keys::EVENT_LOG.to_owned()));
    let status = state.system_status().await;
    assert_eq!(status.error, None);
    for key in [tatbot_state::keys::EVENT_LOG, tatbot_state::keys::ERROR_LOG] {
        let entry = status.corrupt.iter().find(|entry| entry.key == key);
        assert_eq!(
            entry.map(|entry| entry.error.as_str()),
            Some(format!("{key}: the stream has used up its last possible id").as_str()),
            "{:?}",
            status.corrupt
        );
    }
}

/// Another client's value under the session index, the node registry and the producers' hash
/// breaks nothing either: sessions start, end and are cleared, heartbeats are stored, a producer
/// starts a session, the status and the follower report the keys, and the follower finds the
/// node by its heartbeat without losing Redis. Before, session start, end and every heartbeat
/// failed with WRONGTYPE (a started session's document stayed behind), the status failed, and
/// followers reconnected forever.
#[tokio::test]
async fn an_index_of_another_type_is_reported_and_breaks_nothing() {
    use tatbot_state::{CorruptEntry, ProducerConfig};
    let (server, state) = setup("hog").await;
    let mut redis = raw(&server).await;
    let shared = [
        (tatbot_state::keys::NODE_REGISTRY, "sorted set"),
        (tatbot_state::keys::PRODUCERS, "hash"),
        (tatbot_state::keys::SESSION_INDEX, "sorted set"),
    ];
    for (key, _) in shared {
        let () = redis.set(key, "not an index").await.unwrap();
    }

    let session = state.start_stroke_session(&one_pose("scene")).await.unwrap();
    state.end_stroke_session(&session).await.unwrap();
    assert!(state.clear_session_data(&session).await.unwrap());
    state.update_node_health(&NodeHealth::new("hog")).await.unwrap();
    let producer = state.producer(ProducerConfig::default(), CancellationToken::new());
    let started = producer.start_stroke_session(&one_pose("other")).await.unwrap();
    producer
        .update_stroke_progress(&started, &ProgressUpdate::new(0, 0))
        .unwrap();
    producer.flush(LIMIT).await.unwrap();
    assert_eq!(producer.stats().rejected, 0);

    let mut reported: Vec<CorruptEntry> = shared
        .iter()
        .map(|(key, kind)| CorruptEntry {
            key: (*key).to_owned(),
            error: format!("{key}: the key is not a {kind}"),
        })
        .collect();
    let status = state.system_status().await;
    assert_eq!(status.error, None);
    let mut corrupt = status.corrupt.clone();
    corrupt.sort_by(|a, b| a.key.cmp(&b.key));
    reported.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(corrupt, reported);
    assert_eq!(status.nodes_online, 1);

    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    {
        let seen = seen.lock().unwrap();
        let view = seen.view.as_ref().unwrap();
        assert!(view.nodes.contains_key("hog"), "{:?}", view.nodes.keys());
        assert!(view.sessions.contains_key(started.as_str()));
        assert!(corrupt_keys(&seen).contains(&tatbot_state::keys::NODE_REGISTRY.to_owned()));
    }
    // Polls go on: a second node's heartbeat is found.
    a_second_node_is_found(&state, &seen).await;
}

/// A member that is not text, or a score that is not whole, in the node registry (and a field
/// that is not text in the producers' hash) fails no read: before, the registry's decode failed
/// as a whole, so the status failed and followers reconnected forever.
#[tokio::test]
async fn registry_members_that_are_not_text_fail_no_read() {
    let (server, state) = setup("hog").await;
    state.update_node_health(&NodeHealth::new("hog")).await.unwrap();
    let mut redis = raw(&server).await;
    let _: i64 = redis::cmd("ZADD")
        .arg(tatbot_state::keys::NODE_REGISTRY)
        .arg(1.5)
        .arg(&b"\xff\xfe"[..])
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(tatbot_state::keys::PRODUCERS)
        .arg(&b"\xff"[..])
        .arg(&b"\xfe"[..])
        .query_async(&mut redis)
        .await
        .unwrap();
    let status = state.system_status().await;
    assert_eq!(status.error, None);
    assert_eq!(status.nodes_online, 1);
    assert_eq!(status.corrupt.len(), 1, "the producers' field: {:?}", status.corrupt);
    assert!(
        state
            .known_nodes()
            .await
            .unwrap()
            .iter()
            .any(|node| node.node_id == "hog")
    );

    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    a_second_node_is_found(&state, &seen).await;
}

/// Another client's huge entry last in a quiet event log (nothing written after it) came back
/// in the `XINFO STREAM` answer of every follower read, once per block for as long as the log
/// stayed quiet: 5 MiB a read here, for every follower. The follower now asks that stream's
/// `XINFO` once per 30 s, its length meanwhile (which still tells another type), says so, and
/// follows on.
#[tokio::test]
async fn a_huge_last_log_entry_is_not_read_again_with_every_read() {
    let (server, state) = setup("hog").await;
    append_huge_log_entry(&server).await;
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the report", |seen| {
        seen.changes.iter().any(|change| {
            matches!(&change.kind, ChangeKind::Corrupt { key, error }
                if key == tatbot_state::keys::EVENT_LOG && error.contains("XINFO STREAM answers"))
        })
    })
    .await;
    // Reads go on every 200 ms (`quick`); the next ten ask for the log's length alone.
    let (xinfo_before, xlen_before) = (xinfo_calls(&server), calls(&server, "xlen"));
    let reads = eventually(LIMIT, || async { calls(&server, "xlen") >= xlen_before + 10 }).await;
    assert!(reads, "the follower reads on, asking the log's length");
    assert_eq!(xinfo_calls(&server), xinfo_before, "the log's XINFO is not asked again");
    // Followed on: a session started now is delivered.
    let session = state.start_stroke_session(&one_pose("after")).await.unwrap();
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
        .await
        .unwrap();
    wait_for(&seen, "the update", |seen| {
        seen.progress.iter().any(|(id, _)| *id == session)
    })
    .await;
    let seen = seen.lock().unwrap();
    assert_eq!((seen.lost, seen.resyncs.len()), (0, 0), "{:?}", seen.resyncs);
}

/// While a stream's `XINFO STREAM` checks are paused (its answer over the size bound), a read
/// that comes back full may have run past trimmed entries, which nothing checks then: the
/// follower resyncs instead of risking a silent gap.
#[tokio::test]
async fn a_full_read_of_a_paused_stream_resyncs() {
    let (server, state) = setup("hog").await;
    let mut redis = raw(&server).await;
    append_huge_log_entry(&server).await;
    let config = FollowConfig { batch: 10, ..quick() };
    let seen = collect(state.follow_with(Scope::All, None, config, &CancellationToken::new()));
    wait_for(&seen, "the report", |seen| {
        seen.changes
            .iter()
            .any(|change| matches!(&change.kind, ChangeKind::Corrupt { error, .. } if error.contains("XINFO STREAM answers")))
    })
    .await;
    // Twenty entries at once: the next read brings a full batch of ten.
    let mut burst = redis::pipe();
    burst.atomic();
    for i in 0..20 {
        burst
            .cmd("XADD")
            .arg(tatbot_state::keys::EVENT_LOG)
            .arg("*")
            .arg("channel")
            .arg("stroke:events:progress")
            .arg("payload")
            .arg(format!("{{\"type\":\"note\",\"i\":{i}}}"));
    }
    let () = burst.query_async(&mut redis).await.unwrap();
    wait_for(&seen, "the resync", |seen| {
        seen.resyncs
            .iter()
            .any(|reason| reason.contains("while its XINFO STREAM checks are paused"))
    })
    .await;
}

/// Another client's heartbeat and robot state of 5 MiB were sent whole with every poll (once a
/// second by default) to every follower, and refused there; a session document of 5 MiB was
/// sent whole with every snapshot (every dashboard client that connects takes one). Their
/// lengths are asked first now (`HSTRLEN`), and a value over the size bound is reported without
/// being read.
#[tokio::test]
async fn huge_polled_values_are_not_read() {
    let (server, state) = setup("hog").await;
    let mut redis = raw(&server).await;
    let huge = "x".repeat(5 << 20);
    let () = redis.hset("node:health:big", "health", &huge).await.unwrap();
    let () = redis.expire("node:health:big", 600).await.unwrap();
    let () = redis.hset("robot:state:big", "state", &huge).await.unwrap();
    let () = redis
        .hset("stroke:progress:stroke_big_1", "progress", &huge)
        .await
        .unwrap();
    // A member of 9 MiB in the node registry, which is read whole (over its 8 MiB bound).
    let () = redis.zadd("tatbot:nodes", "y".repeat(9 << 20), 1).await.unwrap();
    let sent_before = bytes_sent(&server);
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    let sent = bytes_sent(&server) - sent_before;
    assert!(sent < 1 << 20, "{sent} bytes sent for the snapshot");
    let view = seen.lock().unwrap().view.clone().unwrap();
    let registry = view.corrupt.iter().find(|entry| entry.key == "tatbot:nodes");
    assert!(
        registry.is_some_and(|entry| entry
            .error
            .contains("bytes in Redis; a collection read whole may have at most 20000 elements")),
        "{:?}",
        view.corrupt
    );
    assert!(
        view.nodes.contains_key("big"),
        "the heartbeats still name the nodes: {view:?}"
    );
    for key in ["node:health:big", "robot:state:big", "stroke:progress:stroke_big_1"] {
        let view = seen.lock().unwrap().view.clone().unwrap();
        let entry = view.corrupt.iter().find(|entry| entry.key == key);
        assert!(
            entry.is_some_and(|entry| entry.error.contains("is 5242880 bytes; the limit is 1048576")),
            "{key}: {:?}",
            view.corrupt
        );
    }
    // Ten polls (every 200 ms, `quick`; one `PTTL` of the one heartbeat each): less than one
    // value sent.
    let (sent_before, polls_before) = (bytes_sent(&server), calls(&server, "pttl"));
    let polled = eventually(LIMIT, || async { calls(&server, "pttl") >= polls_before + 10 }).await;
    assert!(polled, "the follower polls on");
    let sent = bytes_sent(&server) - sent_before;
    assert!(sent < 1 << 20, "{sent} bytes sent in ten polls");
}

/// Polls go on: a second node's heartbeat is found, and Redis was never lost on the way.
async fn a_second_node_is_found(state: &StateManager, seen: &Arc<Mutex<Seen>>) {
    state.update_node_health(&NodeHealth::new("cam")).await.unwrap();
    wait_for(seen, "the second node", |seen| {
        seen.view.as_ref().is_some_and(|view| view.nodes.contains_key("cam"))
    })
    .await;
    let seen = seen.lock().unwrap();
    assert_eq!((seen.lost, seen.reconnected), (0, 0));
}

/// Another client's hundred 1 MiB entries in the event log were sent whole with every snapshot
/// (it scans the newest 500 events for the recent ones): 100 MiB for each dashboard client that
/// connects, and with every session timeline (`session_events`, pages of 2,000 entries). A log
/// over 32 MiB in Redis is now read one entry at a time up to that bound, and the snapshot and
/// the timeline say where they stopped; a timeline reads back from the newest entry to the
/// session's start.
#[tokio::test]
async fn a_snapshot_reads_a_huge_event_log_within_the_bound() {
    let (server, state) = setup("hog").await;
    let before = state.start_stroke_session(&one_pose("logs")).await.unwrap();
    fill_log(&server, "tatbot:events", 100, 1 << 20).await;
    let after = state.start_stroke_session(&one_pose("logs")).await.unwrap();

    let sent_before = bytes_sent(&server);
    let snapshot = state.snapshot(&Scope::All, &FollowConfig::default()).await.unwrap();
    let sent = bytes_sent(&server) - sent_before;
    // The pages, and the oldest and newest entries again in `XINFO STREAM`.
    assert!(sent < 36 << 20, "{sent} bytes sent for the snapshot");
    let log = snapshot.corrupt.iter().find(|entry| entry.key == "tatbot:events");
    assert!(
        log.is_some_and(|entry| entry.error.contains("the read stopped after 33 entries")),
        "{:?}",
        snapshot.corrupt
    );
    assert_eq!(snapshot.recent_events.len(), 33, "the start of `after` and 32 others");
    assert_eq!(
        snapshot.recent_events.last().unwrap().event_type.as_deref(),
        Some("session_start")
    );

    // The session started after them: found at once.
    let sent_before = bytes_sent(&server);
    let events = state.session_events(&after, 100).await.unwrap();
    assert!(bytes_sent(&server) - sent_before < 1 << 20, "one small entry read");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event_type.as_deref(), Some("session_start"));
    // The one before them: the read stops at the bound, and says so.
    let sent_before = bytes_sent(&server);
    let events = state.session_events(&before, 100).await.unwrap();
    let sent = bytes_sent(&server) - sent_before;
    assert!(sent < 34 << 20, "{sent} bytes sent for one timeline");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].id, "");
    let cut = events[0].payload.as_str().unwrap();
    assert!(cut.contains("tatbot:events: the log takes"), "{cut}");
    assert!(
        cut.contains("the read stopped after 33 entries"),
        "the start of `after` and 32 others: {cut}"
    );
}

/// In an event log over the bound, a timeline reads back from the newest entry only as far as
/// the session's start, and gives its events oldest first, the oldest `limit` of them; a
/// snapshot stops as soon as it has its recent events, whatever its scope. None of them reads
/// the huge entries before.
#[tokio::test]
async fn a_huge_event_log_is_read_back_only_as_far_as_needed() {
    let (server, state) = setup("hog").await;
    fill_log(&server, "tatbot:events", 40, 1 << 20).await;
    let session = state.start_stroke_session(&one_pose("logs")).await.unwrap();
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
        .await
        .unwrap();
    state.end_stroke_session(&session).await.unwrap();
    let types = |events: &[LoggedEvent]| -> Vec<String> {
        events
            .iter()
            .map(|event| event.event_type.clone().unwrap_or_default())
            .collect()
    };

    let sent_before = bytes_sent(&server);
    let events = state.session_events(&session, 100).await.unwrap();
    assert_eq!(types(&events), ["session_start", "session_end"]);
    let events = state.session_events(&session, 1).await.unwrap();
    assert_eq!(types(&events), ["session_start"], "the oldest");
    assert!(state.session_events(&session, 0).await.unwrap().is_empty());
    let config = FollowConfig {
        recent_events: 2,
        ..FollowConfig::default()
    };
    for scope in [Scope::All, Scope::Session(session.clone())] {
        let snapshot = state.snapshot(&scope, &config).await.unwrap();
        assert_eq!(types(&snapshot.recent_events), ["session_start", "session_end"]);
        assert!(snapshot.corrupt.is_empty(), "nothing cut: {:?}", snapshot.corrupt);
    }
    let sent = bytes_sent(&server) - sent_before;
    // `XINFO STREAM` sends the oldest entry (1 MiB) with each snapshot.
    assert!(sent < 3 << 20, "{sent} bytes sent");
}

/// A registry over its bound is reported in the same words while it stays over, so the
/// follower, which reports what changed, says it once, not again at every poll as another
/// member moves its size.
#[tokio::test]
async fn an_oversized_registry_is_reported_once() {
    let (server, state) = setup("hog").await;
    let mut redis = raw(&server).await;
    let () = redis.zadd("tatbot:nodes", "y".repeat(9 << 20), 1).await.unwrap();
    let seen = collect(start(&state, Scope::All, None));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    for member in 0..6 {
        // A new member between two polls: the registry's size moves.
        let () = redis.zadd("tatbot:nodes", format!("node-{member}"), 2).await.unwrap();
        let polls = calls(&server, "zcard");
        let polled = eventually(LIMIT, || async { calls(&server, "zcard") > polls }).await;
        assert!(polled, "the follower polls on");
    }
    let reports = seen
        .lock()
        .unwrap()
        .changes
        .iter()
        .filter(|change| matches!(&change.kind, ChangeKind::Corrupt { key, .. } if key == "tatbot:nodes"))
        .count();
    let view = seen.lock().unwrap().view.clone().unwrap();
    assert!(
        view.corrupt.iter().any(|entry| entry.key == "tatbot:nodes"),
        "{:?}",
        view.corrupt
    );
    assert!(reports <= 1, "reported {reports} times");
}

/// A poll drains a tailed session's history, then reads its document. When the session's last
/// updates and its end came in between, the document said it had stopped, the follower stopped
/// tailing it, and those updates were never sent: a gap the consumer could not see (about one
/// run in seven of `snapshot_then_every_change` under CPU load). Polls every millisecond race
/// forty short sessions here, and every stored entry must arrive; this failed in 1 to 4 runs of
/// 10 before the fix, and the unit test `a_session_that_stopped_since_the_last_drain_sends_its_last_updates`
/// forces the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ending_between_a_polls_reads_loses_no_update() {
    let (_server, state) = setup("hog").await;
    let config = FollowConfig {
        block: Duration::from_millis(1),
        poll_interval: Duration::from_millis(1),
        ..quick()
    };
    let seen = collect(state.follow_with(Scope::All, None, config, &CancellationToken::new()));
    wait_for(&seen, "the snapshot", |seen| seen.snapshots == 1).await;
    // The producer sends each session's updates and its end in one batch: the window between
    // a poll's two reads is one round trip.
    let producer = state.producer(ProducerConfig::default(), CancellationToken::new());
    let mut sessions = Vec::new();
    for _ in 0..40 {
        let session = producer.start_stroke_session(&one_pose("race")).await.unwrap();
        for pose in 0..3 {
            producer
                .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
                .unwrap();
        }
        producer.end_stroke_session(&session);
        producer.flush(LIMIT).await.unwrap();
        sessions.push(session);
    }
    producer.close(LIMIT).await.unwrap();
    wait_until_view_matches(&state, &seen).await;
    for session in &sessions {
        let expected = stored_history(&state, session).await;
        assert_eq!(expected.len(), 3);
        // The view matches once the documents do; the entries come before each document.
        let delivered = progress_of(&seen.lock().unwrap(), session);
        assert_eq!(delivered, expected, "{session}");
    }
}

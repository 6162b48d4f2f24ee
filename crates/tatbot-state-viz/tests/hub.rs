//! The hub behind the stream: one follower for every client, resuming from its ring, fresh
//! snapshots for cursors it cannot resume from and for clients that fall behind.

use tatbot_state::follow::EntryId;
use tatbot_state::{Cursor, ProgressUpdate, SessionId, SessionPlan};
use tatbot_state_testkit::RedisServer;

use crate::http::{SseEvent, SseStream};
use crate::server::{dashboard, manager, next_follow, next_named, serve, viz_state};

/// 100 more streams open no Redis connection: the first stream starts the hub (a follower
/// with two connections and a parameter watch with one), and every stream gets each change.
#[tokio::test]
async fn many_streams_share_one_follower() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: 4,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let dashboard = dashboard(&state).await;
    let before = redis_clients(&server);

    let mut streams = vec![SseStream::open(dashboard.addr, None).await];
    opened(&mut streams[0]).await;
    let with_hub = redis_clients(&server);
    assert!(
        with_hub <= before + 3,
        "the hub opened {} connections",
        with_hub - before
    );
    for _ in 0..100 {
        let mut stream = SseStream::open(dashboard.addr, None).await;
        opened(&mut stream).await;
        streams.push(stream);
    }
    assert_eq!(redis_clients(&server), with_hub, "streams opened Redis connections");

    state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 1))
        .await
        .unwrap();
    for stream in &mut streams {
        let change = next_progress(stream).await;
        assert_eq!(change.json()["entry"]["pose_idx"], 1);
    }
    dashboard.stop().await;
}

/// A client that comes back with the id of a change still in the ring gets exactly what a
/// client that stayed got after that change (no snapshot, no gap, no duplicate), then the
/// same live items.
#[tokio::test]
async fn resume_inside_the_ring_gets_exactly_the_missed_items() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: 10,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let dashboard = dashboard(&state).await;
    let mut stayed = SseStream::open(dashboard.addr, None).await;
    assert_eq!(next_follow(&mut stayed).await.unwrap().event, "snapshot");
    let mut left = SseStream::open(dashboard.addr, None).await;
    assert_eq!(next_follow(&mut left).await.unwrap().event, "snapshot");

    for pose in 0..4 {
        update(&state, &session, pose).await;
    }
    let last_id = loop {
        let change = next_progress(&mut left).await;
        if change.json()["entry"]["pose_idx"] == 1 {
            break change.id.unwrap();
        }
    };
    drop(left);
    for pose in 4..8 {
        update(&state, &session, pose).await;
    }

    let mut missed = Vec::new();
    let mut seen_last = false;
    loop {
        let event = next_follow(&mut stayed).await.unwrap();
        if seen_last {
            missed.push(event.clone());
        }
        seen_last |= event.id.as_deref() == Some(last_id.as_str());
        if is_progress(&event, 7) {
            break;
        }
    }
    let mut back = SseStream::open(dashboard.addr, Some(&last_id)).await;
    for expected in &missed {
        let event = next_follow(&mut back).await.unwrap();
        assert_eq!(
            (&event.event, &event.id, &event.data),
            (&expected.event, &expected.id, &expected.data)
        );
    }
    assert!(is_progress(&missed[0], 2), "{missed:?}");

    update(&state, &session, 8).await;
    let (live, resumed) = (
        next_follow(&mut stayed).await.unwrap(),
        next_follow(&mut back).await.unwrap(),
    );
    assert_eq!((live.id, live.data), (resumed.id, resumed.data));
    dashboard.stop().await;
}

/// A cursor the ring cannot resume from (one from an earlier server process, one that does
/// not parse) gets a fresh snapshot first; `?cursor=` resumes like `Last-Event-ID`.
#[tokio::test]
async fn unknown_cursor_gets_a_snapshot() {
    let server = RedisServer::start();
    let state = manager(&server).await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: 10,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let earlier = dashboard(&state).await;
    let mut stream = SseStream::open(earlier.addr, None).await;
    assert_eq!(next_follow(&mut stream).await.unwrap().event, "snapshot");
    update(&state, &session, 0).await;
    let old_id = next_progress(&mut stream).await.id.unwrap();
    drop(stream);
    earlier.stop().await;

    update(&state, &session, 1).await;
    let dashboard = dashboard(&state).await;
    for resume in [old_id.as_str(), "not a cursor"] {
        let mut stream = SseStream::open(dashboard.addr, Some(resume)).await;
        let first = next_follow(&mut stream).await.unwrap();
        assert_eq!(first.event, "snapshot", "{resume}");
        assert_eq!(first.json()["sessions"][session.as_str()]["pose_idx"], 1);
    }

    let mut stream = SseStream::open(dashboard.addr, None).await;
    assert_eq!(next_follow(&mut stream).await.unwrap().event, "snapshot");
    update(&state, &session, 2).await;
    let id = next_progress(&mut stream).await.id.unwrap();
    update(&state, &session, 3).await;
    // Encoded as the page does (`encodeURIComponent`).
    let path = format!("/api/stream?cursor={}", id.replace(';', "%3B").replace('=', "%3D"));
    let mut resumed = SseStream::open_with(dashboard.addr, &path, None, None).await;
    let first = next_follow(&mut resumed).await.unwrap();
    assert!(is_progress(&first, 3), "{first:?}");
    dashboard.stop().await;
}

/// A client that reads too slowly falls out of the ring: it gets a resync and a snapshot
/// instead of the items it missed, every change after a snapshot without a gap, and live
/// items again once it keeps up.
#[tokio::test]
async fn lagging_client_gets_resync_and_snapshot() {
    /// History entries of about 64 KiB each, 10 MiB in all: more than the server's socket
    /// buffer, hyper's and the slow client's can hold, so the client falls behind.
    const ENTRIES: u32 = 160;
    let server = RedisServer::start();
    let state = manager(&server).await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: ENTRIES + 1,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let dashboard = serve(viz_state(&state).with_stream_ring(8)).await;
    let mut slow = SseStream::open_with(dashboard.addr, "/api/stream", None, Some(4096)).await;
    assert_eq!(next_follow(&mut slow).await.unwrap().event, "snapshot");

    // Written the Python way, straight into the history stream: the library caps
    // descriptions at 4 KiB.
    let key = tatbot_state::keys::history(&session);
    let description = "x".repeat(32 * 1024);
    let mut written = Vec::new();
    for pose in 0..ENTRIES {
        let pose = pose.to_string();
        let reply = server
            .command(&[
                "XADD",
                &key,
                "*",
                "stroke_idx",
                "0",
                "pose_idx",
                &pose,
                "description_l",
                &description,
                "description_r",
                &description,
                "node_id",
                "ook",
            ])
            .unwrap();
        let id = reply.lines().nth(1).expect("an entry id");
        written.push(id.parse::<EntryId>().unwrap());
    }
    let last = *written.last().unwrap();

    // A new client sees when the hub has published the last entry.
    let mut observer = SseStream::open(dashboard.addr, None).await;
    loop {
        let event = next_follow(&mut observer).await.unwrap();
        if history_position(&event, &session) == Some(last) {
            break;
        }
    }

    // Each resync comes with a snapshot, and the changes after a snapshot continue from it.
    // The client may fall behind more than once while the entries are written.
    let mut position = EntryId::ZERO;
    let mut resyncs = 0;
    while position != last {
        let event = next_follow(&mut slow).await.unwrap();
        match event.event.as_str() {
            "resync" => {
                resyncs += 1;
                let snapshot = next_follow(&mut slow).await.unwrap();
                assert_eq!(snapshot.event, "snapshot", "a resync without a snapshot");
                position = history_position(&snapshot, &session).unwrap();
            }
            "change" if event.json()["kind"] == "progress" => {
                let id: EntryId = event.json()["entry"]["id"].as_str().unwrap().parse().unwrap();
                let next = written.iter().find(|written| **written > position);
                assert_eq!(Some(&id), next, "a gap or a duplicate after {position}");
                position = id;
            }
            _ => {}
        }
    }
    assert!(resyncs > 0, "the slow client never fell behind");

    update(&state, &session, ENTRIES).await;
    assert!(is_progress(&next_progress(&mut slow).await, ENTRIES));
    dashboard.stop().await;
}

/// Streams opened while a producer writes get a snapshot and then every later history entry
/// once, in order: nothing between a snapshot and the live items is lost or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_has_no_gap_or_duplicate() {
    const WRITES: u32 = 300;
    const CLIENTS: u32 = 10;
    let server = RedisServer::start();
    let state = manager(&server).await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: WRITES,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let dashboard = dashboard(&state).await;

    // The producer asks for a new client every WRITES / CLIENTS writes and carries on at once,
    // so each snapshot is taken while it writes.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel(CLIENTS as usize);
    let producer = tokio::spawn({
        let (state, session) = (state.clone(), session.clone());
        async move {
            let mut written = Vec::new();
            for pose in 0..WRITES {
                let id = state
                    .update_stroke_progress(&session, &ProgressUpdate::new(0, pose))
                    .await
                    .unwrap();
                written.push(id);
                if pose % (WRITES / CLIENTS) == 0 {
                    open_tx.try_send(()).unwrap();
                }
            }
            written
        }
    });
    let mut clients = Vec::new();
    while open_rx.recv().await.is_some() {
        let mut stream = SseStream::open(dashboard.addr, None).await;
        let snapshot = next_follow(&mut stream).await.unwrap();
        assert_eq!(snapshot.event, "snapshot");
        let position = history_position(&snapshot, &session).unwrap_or(EntryId::ZERO);
        clients.push((stream, position));
    }
    let written = producer.await.unwrap();
    let last = *written.last().unwrap();

    assert_eq!(clients.len(), CLIENTS as usize);
    for (stream, position) in &mut clients {
        let mut received = Vec::new();
        while received.last() != Some(&last) {
            let change = next_progress(stream).await;
            received.push(change.json()["entry"]["id"].as_str().unwrap().parse().unwrap());
        }
        let expected: Vec<EntryId> = written.iter().copied().filter(|id| id > position).collect();
        assert_eq!(received, expected, "from the snapshot at {position}");
    }
    dashboard.stop().await;
}

/// A Redis outage reaches every stream: one opened during it gets the last state and then
/// `redis` `{"connected": false}`, and all get `{"connected": true}` and changes again after
/// the restart.
#[tokio::test]
async fn redis_outage_reaches_every_stream() {
    let mut server = RedisServer::builder()
        .persistence(true)
        .config("appendfsync", "always")
        .start();
    let state = manager(&server).await;
    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 1,
            stroke_length: 4,
            scene: "scene".into(),
        })
        .await
        .unwrap();
    let dashboard = dashboard(&state).await;
    let mut before = SseStream::open(dashboard.addr, None).await;
    opened(&mut before).await;

    server.stop();
    let lost = next_named(&mut before, "redis").await;
    assert_eq!(lost.json()["connected"], false);
    let mut during = SseStream::open(dashboard.addr, None).await;
    let snapshot = next_follow(&mut during).await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    assert!(snapshot.json()["sessions"][session.as_str()].is_object());
    let status = next_follow(&mut during).await.unwrap();
    assert_eq!(
        (status.event.as_str(), &status.json()["connected"]),
        ("redis", &false.into())
    );

    server.restart();
    for stream in [&mut before, &mut during] {
        assert_eq!(next_named(stream, "redis").await.json()["connected"], true);
    }
    let deadline = tokio::time::Instant::now() + crate::http::LIMIT;
    // Retried until the manager has reconnected; the pause is pacing, not synchronization.
    while state
        .update_stroke_progress(&session, &ProgressUpdate::new(0, 1))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "the manager never reconnected");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for stream in [&mut before, &mut during] {
        assert!(is_progress(&next_progress(stream).await, 1));
    }
    dashboard.stop().await;
}

/// Clients connected to the test server, as `CLIENT LIST` counts them (this query's own
/// connection included, the same every time).
fn redis_clients(server: &RedisServer) -> usize {
    let reply = server.command(&["CLIENT", "LIST"]).unwrap();
    reply.lines().filter(|line| line.starts_with("id=")).count()
}

/// Reads a new stream until it had its snapshot and its parameter list, which in the hub come
/// after the follower's and the watch's connections are open.
async fn opened(stream: &mut SseStream) {
    let (mut snapshot, mut params) = (false, false);
    while !(snapshot && params) {
        let event = stream.next().await.expect("the stream stays open");
        snapshot |= event.event == "snapshot";
        params |= event.event == "params";
    }
}

async fn update(state: &tatbot_state::StateManager, session: &SessionId, pose: u32) {
    state
        .update_stroke_progress(session, &ProgressUpdate::new(0, pose))
        .await
        .unwrap();
}

fn is_progress(event: &SseEvent, pose: u32) -> bool {
    event.event == "change" && event.json()["kind"] == "progress" && event.json()["entry"]["pose_idx"] == pose
}

/// The next `progress` change, skipping every other event.
async fn next_progress(stream: &mut SseStream) -> SseEvent {
    loop {
        let event = next_follow(stream).await.expect("the stream stays open");
        if event.event == "change" && event.json()["kind"] == "progress" {
            return event;
        }
    }
}

/// How far into `session`'s history a snapshot or change's cursor is.
fn history_position(event: &SseEvent, session: &SessionId) -> Option<EntryId> {
    let cursor: Cursor = event.id.as_deref()?.parse().ok()?;
    cursor.history(session)
}

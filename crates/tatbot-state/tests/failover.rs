//! Sentinel failover under a live Producer session: the primary is killed (or frozen past the
//! failover) while a robot writes at 1 kHz, a Sentinel promotes the replica, and every client
//! moves to it with nothing acknowledged lost. Loopback only; each test is bounded by the
//! timeouts below and runs its own cluster, so nextest runs them in parallel.

use std::time::Duration;

use tatbot_state::{CancellationToken, ProducerConfig, SessionId, StateManager};
use tatbot_state_testkit::SentinelCluster;

use crate::reliability::{FLUSH, assert_exact, history_indices, plan, update};
use crate::util::sentinel_config;

/// Updates in a session, written at 1 kHz.
const UPDATES: u32 = 5000;
/// The update at which the primary is killed.
const KILL_AT: u32 = 1000;
/// Bound on a failover (Sentinel's `down-after-milliseconds` is 1 s in the test kit).
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// Writes `from..to` through `producer` at 1 kHz.
async fn write_at_1khz(producer: &tatbot_state::Producer, session: &SessionId, range: std::ops::Range<u32>) {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in range {
        tick.tick().await;
        producer.update_stroke_progress(session, &update(i)).unwrap();
    }
}

/// The final progress and the whole history are exact: every update once, in order.
async fn assert_session_exact(state: &StateManager, session: &SessionId) {
    assert_exact(&history_indices(state, session).await, UPDATES);
    let progress = state.get_stroke_progress(session).await.unwrap().unwrap();
    assert_eq!(
        (
            progress.stroke_idx,
            progress.pose_idx,
            progress.stroke_description_l.as_str()
        ),
        (99, 49, "d4999")
    );
}

/// Kills the master on `port` and waits for the Sentinels to promote another; returns its port.
fn kill_and_wait(cluster: &mut SentinelCluster, port: u16) -> u16 {
    cluster.server_mut(port).kill();
    tokio::task::block_in_place(|| cluster.wait_for_new_master(port, FAILOVER_LIMIT)).expect("a replica is promoted")
}

/// Updates the primary acknowledges while its replica is cut off, just before it dies.
const LAGGED: u32 = 300;

/// kill -9 of the primary during a 5,000-update session at 1 kHz, with the replica cut off for
/// the last 300 acknowledged updates (on loopback replication is otherwise too quick to lose
/// any): the Producer moves to the promoted replica and replays exactly what the failover lost;
/// the awaited manager follows too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_kill_primary_loses_nothing() {
    let mut cluster = SentinelCluster::start();
    let old = cluster.servers()[0].port();
    let state = StateManager::connect(sentinel_config(&cluster, "robot")).await.unwrap();
    let session = state.start_stroke_session(&plan(100)).await.unwrap();
    let producer = state.producer(ProducerConfig::default(), CancellationToken::new());
    write_at_1khz(&producer, &session, 0..KILL_AT).await;
    // The replica can no longer authenticate to its master, so once its link is cut it stays
    // behind: what the primary acknowledges from here on exists only there.
    let replica = &cluster.servers()[1];
    assert!(
        replica
            .command(&["CONFIG", "SET", "masterauth", "wrong"])
            .unwrap()
            .starts_with("+OK")
    );
    cluster.servers()[0]
        .command(&["CLIENT", "KILL", "TYPE", "replica"])
        .unwrap();
    let acknowledged = producer.update_stroke_progress(&session, &update(KILL_AT)).unwrap();
    write_at_1khz(&producer, &session, KILL_AT + 1..KILL_AT + LAGGED).await;
    producer
        .wait_for(acknowledged + u64::from(LAGGED) - 1, FLUSH)
        .await
        .unwrap();
    let new = tokio::join!(
        async { kill_and_wait(&mut cluster, old) },
        write_at_1khz(&producer, &session, KILL_AT + LAGGED..UPDATES)
    )
    .0;
    producer.flush(FLUSH).await.unwrap();
    assert_eq!(state.current_master().port, new);
    assert_session_exact(&state, &session).await;
    let stats = producer.stats();
    assert!(stats.restarts >= 1, "the writer saw the new master: {stats:?}");
    assert!(stats.replayed >= u64::from(LAGGED), "{stats:?}");
    assert_eq!((stats.dropped, stats.rejected), (0, 0), "{stats:?}");
}

/// The same, and the old primary comes back (as a replica, the Sentinels see to it) while the
/// session goes on: nothing is written to it, and once synced it holds the exact history too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_old_primary_returns_as_replica() {
    let mut cluster = SentinelCluster::start();
    let old = cluster.servers()[0].port();
    let state = StateManager::connect(sentinel_config(&cluster, "robot")).await.unwrap();
    let session = state.start_stroke_session(&plan(100)).await.unwrap();
    let producer = state.producer(ProducerConfig::default(), CancellationToken::new());
    write_at_1khz(&producer, &session, 0..KILL_AT).await;
    let returned = async {
        kill_and_wait(&mut cluster, old);
        tokio::task::block_in_place(|| {
            cluster.server_mut(old).restart();
            cluster.wait_for_replica(old, FAILOVER_LIMIT)
        })
        .expect("the old primary rejoins as a replica");
    };
    tokio::join!(returned, write_at_1khz(&producer, &session, KILL_AT..UPDATES));
    producer.flush(FLUSH).await.unwrap();
    assert_ne!(state.current_master().port, old);
    assert_session_exact(&state, &session).await;
    // The returned replica has the same data: read it directly.
    let mut direct = crate::util::config(cluster.server(old), "reader");
    direct.sentinel = None;
    let replica = StateManager::connect(direct).await.unwrap();
    assert!(
        crate::util::eventually(FAILOVER_LIMIT, || async {
            replica
                .get_stroke_progress(&session)
                .await
                .ok()
                .flatten()
                .map(|p| p.stroke_description_l)
                == Some("d4999".to_owned())
        })
        .await
    );
    assert_exact(&history_indices(&replica, &session).await, UPDATES);
}

/// Calls of `EVALSHA` a server executed (refused calls are counted apart by Redis), or `None`
/// while it does not answer.
fn evalsha_calls(server: &tatbot_state_testkit::RedisServer) -> Option<u64> {
    let info = server.command(&["INFO", "commandstats"]).ok()?;
    let line = info.lines().find(|line| line.starts_with("cmdstat_evalsha:"));
    let Some(line) = line else { return Some(0) };
    line.split([':', ','])
        .find_map(|part| part.strip_prefix("calls=")?.parse().ok())
}

/// The old primary frozen (SIGSTOP) past the failover and then resumed (SIGCONT) while the robot
/// writes: no client writes to it after the switch (the clients moved; `min-replicas-to-write`
/// refuses what a stale one would send), the Sentinels make it a replica, and nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_partitioned_old_primary_takes_no_writes() {
    let cluster = SentinelCluster::builder()
        .data_config("min-replicas-to-write", "1")
        .data_config("min-replicas-max-lag", "2")
        .start();
    let old = cluster.servers()[0].port();
    let state = StateManager::connect(sentinel_config(&cluster, "robot")).await.unwrap();
    let session = state.start_stroke_session(&plan(100)).await.unwrap();
    let producer = state.producer(ProducerConfig::default(), CancellationToken::new());
    write_at_1khz(&producer, &session, 0..KILL_AT).await;
    let partition = async {
        cluster.server(old).pause();
        let new = tokio::task::block_in_place(|| cluster.wait_for_new_master(old, FAILOVER_LIMIT))
            .expect("a replica is promoted");
        cluster.server(old).resume();
        // What it executes from here on came after the switch: in-flight commands sent before
        // the freeze run first, on the resumed event loop.
        let resumed_calls = evalsha_calls(cluster.server(old)).expect("the resumed server answers");
        tokio::task::block_in_place(|| cluster.wait_for_replica(old, FAILOVER_LIMIT))
            .expect("the sentinels make the old primary a replica");
        (new, resumed_calls)
    };
    let ((new, resumed_calls), ()) = tokio::join!(partition, write_at_1khz(&producer, &session, KILL_AT..UPDATES));
    producer.flush(FLUSH).await.unwrap();
    // An awaited write after the switch lands on the new master too.
    assert!(
        crate::util::eventually(FAILOVER_LIMIT, || async {
            state
                .update_robot_state(&tatbot_state::model::RobotState::new("robot"))
                .await
                .is_ok()
        })
        .await
    );
    assert_eq!(state.current_master().port, new);
    assert_session_exact(&state, &session).await;
    assert_eq!(
        evalsha_calls(cluster.server(old)),
        Some(resumed_calls),
        "a client wrote to the old primary after the switch"
    );
    let stats = producer.stats();
    assert_eq!((stats.dropped, stats.rejected), (0, 0), "{stats:?}");
}

/// Updates in the session the readers watch.
const WATCHED: u32 = 3000;

/// The follow API, a pattern subscription and the heartbeat agent across a kill -9 failover:
/// the follower and the subscriber see the session's last update, which was written to the
/// new master, and the heartbeating node never drops out of the online set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_followers_subscribers_and_heartbeat_keep_up() {
    use tatbot_state::follow::ChangeKind;
    use tatbot_state::heartbeat::HeartbeatOptions;
    use tatbot_state::model::Event;
    use tatbot_state::{FollowItem, Scope};

    let mut cluster = SentinelCluster::start();
    let old = cluster.servers()[0].port();
    let state = StateManager::connect(sentinel_config(&cluster, "robot")).await.unwrap();
    let agent = StateManager::connect(sentinel_config(&cluster, "beater"))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let options = HeartbeatOptions {
        interval: Duration::from_millis(500),
        ..HeartbeatOptions::default()
    };
    let beating = tokio::spawn({
        let stop = stop.clone();
        async move { agent.heartbeat(options, stop).await }
    });
    let session = state.start_stroke_session(&plan(60)).await.unwrap();
    let mut follower = state.follow(Scope::Session(session.clone()), None);
    let last = ((WATCHED - 1) / 50, (WATCHED - 1) % 50);
    // Read from the start, as the viz and the monitor read theirs: a follower works while it
    // is read.
    let followed = tokio::spawn(async move {
        while let Some(item) = follower.next().await {
            if let FollowItem::Change(change) = item
                && let ChangeKind::Progress { entry, .. } = change.kind
                && (entry.stroke_idx, entry.pose_idx) == (i64::from(last.0), i64::from(last.1))
            {
                return true;
            }
        }
        false
    });
    let mut subscription = state.subscribe(&["stroke:events:*"]).await.unwrap();
    let producer = state.producer(ProducerConfig::default(), CancellationToken::new());
    write_at_1khz(&producer, &session, 0..KILL_AT).await;
    tokio::join!(
        async { kill_and_wait(&mut cluster, old) },
        write_at_1khz(&producer, &session, KILL_AT..WATCHED)
    );
    producer.flush(FLUSH).await.unwrap();

    let followed = tokio::time::timeout(FAILOVER_LIMIT, followed).await;
    assert!(matches!(followed, Ok(Ok(true))), "the follower saw the last update");

    let subscribed = tokio::time::timeout(FAILOVER_LIMIT, async {
        while let Some(message) = subscription.next().await {
            if let Ok(Event::ProgressUpdate(event)) = &message.event
                && (event.stroke_idx, event.pose_idx) == (i64::from(last.0), i64::from(last.1))
            {
                return true;
            }
        }
        false
    });
    assert!(subscribed.await.unwrap_or(false), "the subscriber saw the last update");
    assert!(subscription.reconnects() >= 1);

    // The heartbeat's TTL (60 s) covers the failover, and the agent writes to the new master.
    let nodes = state.get_all_nodes_health().await.unwrap();
    let beater = nodes
        .iter()
        .find(|entry| entry.key.ends_with("beater"))
        .expect("the agent's node is online");
    let health = beater.value.as_ref().unwrap();
    let since = tatbot_state::Timestamp::now().unix_millis() - health.last_heartbeat.unix_millis();
    assert!(
        since < 5_000,
        "the agent beat within the last 5 s, on the new master ({since} ms ago)"
    );
    stop.cancel();
    beating.await.unwrap().expect("the agent stops cleanly");
}

/// A lookup made while the primary is frozen, whose `ROLE` answer comes only when the primary
/// wakes after a replica was promoted, ends on the new master: the woken server still says it
/// is the master until the Sentinels demote it, so the Sentinel that named it is asked again
/// after its answer (before, the client connected to the old primary and wrote to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_answered_by_a_woken_old_primary_moves_on() {
    let cluster = SentinelCluster::start();
    let old = cluster.servers()[0].port();
    let mut config = sentinel_config(&cluster, "late");
    // Longer than the failover: the frozen primary's answer is waited for, not timed out.
    config.connect_timeout = FAILOVER_LIMIT;
    config.response_timeout = FAILOVER_LIMIT;
    cluster.server(old).pause();
    let connecting = tokio::spawn(StateManager::connect(config));
    let new = tokio::task::block_in_place(|| cluster.wait_for_new_master(old, FAILOVER_LIMIT))
        .expect("a replica is promoted");
    assert!(!connecting.is_finished(), "the lookup waits for the frozen primary");
    cluster.server(old).resume();
    let state = tokio::time::timeout(FAILOVER_LIMIT, connecting)
        .await
        .expect("the lookup ends once the old primary wakes")
        .expect("the connect task does not panic")
        .expect("a master is found");
    assert_eq!(state.current_master().port, new);
}

/// Whether some client of a Sentinel of `cluster` is subscribed to a channel: the manager's
/// `+switch-master` listener (Sentinels subscribe to nothing on each other).
fn switch_listener_connected(cluster: &SentinelCluster) -> bool {
    cluster.sentinels().iter().any(|sentinel| {
        sentinel
            .command(&["CLIENT", "LIST"])
            .is_ok_and(|clients| clients.lines().any(|client| client.contains(" sub=1 ")))
    })
}

/// An awaited write sent to the primary just before it froze, and answered only when it woke
/// after a replica was promoted, is not reported as done: the old primary took it, and lost it
/// when the Sentinels made it a replica (before, the call returned the entry id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaited_write_answered_by_a_woken_old_primary_is_not_acknowledged() {
    let cluster = SentinelCluster::start();
    let old = cluster.servers()[0].port();
    let mut config = sentinel_config(&cluster, "late");
    // Longer than the failover: the frozen primary's answer is waited for, not timed out.
    config.response_timeout = FAILOVER_LIMIT;
    let state = StateManager::connect(config).await.unwrap();
    let session = state.start_stroke_session(&plan(100)).await.unwrap();
    // Opens the awaited writes' connection to the primary and loads the script there.
    state.update_stroke_progress(&session, &update(0)).await.unwrap();
    assert!(
        crate::util::eventually(FAILOVER_LIMIT, || async { switch_listener_connected(&cluster) }).await,
        "the manager listens for +switch-master"
    );
    let calls_before = evalsha_calls(cluster.server(old)).expect("the primary answers");
    cluster.server(old).pause();
    let writing = tokio::spawn({
        let (state, session) = (state.clone(), session.clone());
        async move { state.update_stroke_progress(&session, &update(1)).await }
    });
    let new = tokio::task::block_in_place(|| cluster.wait_for_new_master(old, FAILOVER_LIMIT))
        .expect("a replica is promoted");
    // The manager heard the announcement: it moved its connection to the new master.
    assert!(
        crate::util::eventually(FAILOVER_LIMIT, || async { state.current_master().port == new }).await,
        "the manager follows the switch"
    );
    assert!(!writing.is_finished(), "the write waits for the frozen primary");
    cluster.server(old).resume();
    let answer = tokio::time::timeout(FAILOVER_LIMIT, writing)
        .await
        .expect("the old primary answers once it wakes")
        .expect("the write task does not panic");
    assert!(
        matches!(answer, Err(tatbot_state::Error::MasterSwitched { sent: true, .. })),
        "{answer:?}"
    );
    assert_eq!(
        evalsha_calls(cluster.server(old)),
        Some(calls_before + 1),
        "the old primary ran the write"
    );
    // Writes go on, to the new master, which never had the write the old primary took.
    assert!(
        crate::util::eventually(FAILOVER_LIMIT, || async {
            state.update_stroke_progress(&session, &update(2)).await.is_ok()
        })
        .await
    );
    assert_eq!(state.current_master().port, new);
    let mut kept = history_indices(&state, &session).await;
    kept.dedup();
    assert_eq!(kept, [0, 2]);
}

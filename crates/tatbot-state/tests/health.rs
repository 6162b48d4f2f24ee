//! Node health: heartbeats with TTL, listings, and the heartbeat agent.

use std::time::Duration;

use redis::AsyncCommands;
use tatbot_state::heartbeat::HeartbeatOptions;
use tatbot_state::model::NodeHealth;
use tatbot_state::{CancellationToken, Lookup, NodeId, StateManager};

use crate::util::{config, eventually, raw, setup};

/// A heartbeat is stored with the contract's 60 s TTL and read back; nodes are listed in one call.
#[tokio::test]
async fn heartbeat_roundtrip_and_listing() {
    let (server, state) = setup("hog").await;
    for node in ["hog", "eek", "ook"] {
        let mut health = NodeHealth::new(node);
        health.cpu_percent = 12.5;
        state.update_node_health(&health).await.unwrap();
    }
    let hog = NodeId::new("hog").unwrap();
    let health = state.get_node_health(&hog).await.unwrap().unwrap();
    assert_eq!((health.node_id.as_str(), health.cpu_percent), ("hog", 12.5));
    let ttl: i64 = raw(&server).await.ttl("node:health:hog").await.unwrap();
    assert!((55..=60).contains(&ttl), "ttl {ttl}");

    let ids = [NodeId::new("ook").unwrap(), NodeId::new("nobody").unwrap(), hog];
    let healths = state.get_nodes_health(&ids).await.unwrap();
    assert_eq!(healths[0].found().unwrap().node_id, "ook");
    assert!(matches!(healths[1], Lookup::Missing));
    assert_eq!(healths[2].found().unwrap().node_id, "hog");

    let mut all: Vec<String> = state
        .get_all_nodes_health()
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    all.sort();
    assert_eq!(all, ["eek", "hog", "ook"]);
    let status = state.system_status().await;
    assert_eq!((status.nodes_online, status.nodes_known), (3, 3));
}

/// A node that stops beating goes offline when its TTL runs out, and stays known.
#[tokio::test]
async fn heartbeat_expires_after_ttl() {
    let (server, _) = setup("hog").await;
    let mut short = config(&server, "hog");
    short.health_ttl = Duration::from_secs(1);
    let state = StateManager::connect(short).await.unwrap();
    state.update_node_health(&NodeHealth::new("hog")).await.unwrap();
    let hog = NodeId::new("hog").unwrap();
    assert!(state.get_node_health(&hog).await.unwrap().is_some());
    let expired = eventually(Duration::from_secs(5), || async {
        state.get_node_health(&hog).await.unwrap().is_none()
    })
    .await;
    assert!(expired, "heartbeat outlived its TTL");
    let status = state.system_status().await;
    assert_eq!((status.nodes_online, status.nodes_known), (0, 1));
}

/// The agent writes real metrics and the Redis round trip, repeats, and stops when cancelled.
#[tokio::test]
async fn agent_beats_and_stops() {
    let (_server, state) = setup("hog").await;
    let shutdown = CancellationToken::new();
    let options = HeartbeatOptions {
        interval: Duration::from_millis(100),
        mcp_port: Some(8000),
        ..HeartbeatOptions::default()
    };
    let agent = tokio::spawn({
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move { state.heartbeat(options, shutdown).await }
    });
    let hog = NodeId::new("hog").unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.len() < 2 && tokio::time::Instant::now() < deadline {
        if let Some(health) = state.get_node_health(&hog).await.unwrap()
            && !seen.contains(&health.last_heartbeat)
        {
            seen.push(health.last_heartbeat);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let beat_twice = seen.len() >= 2;
    assert!(beat_twice, "the agent did not beat twice within 5 s");
    let health = state.get_node_health(&hog).await.unwrap().unwrap();
    assert!(health.memory_percent > 0.0 && health.disk_percent > 0.0, "{health:?}");
    assert!(
        health.ping_latency_ms.is_some_and(|ms| ms > 0.0 && ms < 1000.0),
        "{health:?}"
    );
    assert_eq!(health.gpu_available, health.gpu_percent.is_some());
    assert!(health.mcp_server_running && health.mcp_port == Some(8000));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("agent stops within 5 s")
        .unwrap()
        .unwrap();
    // Issue #13 point 6: a stopped agent marks its node offline at once, not after the TTL.
    assert_eq!(state.get_node_health(&hog).await.unwrap(), None);
    let status = state.system_status().await;
    assert_eq!((status.nodes_online, status.nodes_known), (0, 1));
}

/// The agent keeps running while Redis is down and resumes beating when it is back.
#[tokio::test]
async fn agent_survives_redis_restart() {
    let (mut server, state) = setup("hog").await;
    let shutdown = CancellationToken::new();
    let options = HeartbeatOptions {
        interval: Duration::from_millis(100),
        ..HeartbeatOptions::default()
    };
    let agent = tokio::spawn({
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move { state.heartbeat(options, shutdown).await }
    });
    let hog = NodeId::new("hog").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            state.get_node_health(&hog).await.is_ok_and(|h| h.is_some())
        })
        .await
    );
    server.kill();
    server.restart();
    let back = eventually(Duration::from_secs(10), || async {
        state.get_node_health(&hog).await.is_ok_and(|h| h.is_some())
    })
    .await;
    assert!(back, "no heartbeat after the restart");
    assert!(!agent.is_finished());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

//! Shared helpers: a server plus a connected manager, and raw Redis access for assertions.

use std::time::Duration;

use tatbot_state::{Endpoint, ManagerConfig, NodeId, SessionPlan, StateManager};
use tatbot_state_testkit::RedisServer;

/// A fresh server and a manager for node `node`.
pub async fn setup(node: &str) -> (RedisServer, StateManager) {
    let server = RedisServer::start();
    let manager = manager(&server, node).await;
    (server, manager)
}

/// The manager config for `server` and `node`.
pub fn config(server: &RedisServer, node: &str) -> ManagerConfig {
    let mut endpoint = Endpoint::new(server.host(), server.port());
    if let Some(password) = server.password() {
        endpoint = endpoint.with_password(password);
    }
    ManagerConfig::new(endpoint, NodeId::new(node).unwrap())
}

/// A manager connected to `server` as node `node`.
pub async fn manager(server: &RedisServer, node: &str) -> StateManager {
    StateManager::connect(config(server, node))
        .await
        .expect("connect to the test server")
}

/// A plain connection for reading and writing raw values.
pub async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Polls `check` every 20 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The manager config for `cluster`'s master, found through its Sentinels, as node `node`.
pub fn sentinel_config(cluster: &tatbot_state_testkit::SentinelCluster, node: &str) -> ManagerConfig {
    let primary = &cluster.servers()[0];
    let mut config = config(primary, node);
    config.sentinel = Some(tatbot_state::sentinel::SentinelTarget {
        sentinels: cluster
            .sentinels()
            .iter()
            .map(|sentinel| {
                let endpoint = Endpoint::new(sentinel.host(), sentinel.port());
                match sentinel.password() {
                    Some(password) => endpoint.with_password(password),
                    None => endpoint,
                }
            })
            .collect(),
        master_name: cluster.master_name().to_owned(),
    });
    config
}

/// A one-pose session plan for `scene`: its start publishes a `session_start` to wait for.
pub fn one_pose(scene: &str) -> SessionPlan {
    SessionPlan {
        total_strokes: 1,
        stroke_length: 1,
        scene: scene.into(),
    }
}

/// Calls of `command` (as `INFO commandstats` names it) the server executed.
pub fn calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.command(&["INFO", "commandstats"]).unwrap();
    let line = info
        .lines()
        .find(|line| line.starts_with(&format!("cmdstat_{command}:")));
    line.and_then(|line| {
        line.split([':', ','])
            .find_map(|part| part.strip_prefix("calls=")?.parse().ok())
    })
    .unwrap_or(0)
}

/// Bytes `server` has sent to its clients (`INFO stats`).
pub fn bytes_sent(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "stats"]).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_net_output_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap()
}

/// Appends another client's 5 MiB entry (a `payload` field alone) to the event log of `server`.
pub async fn append_huge_log_entry(server: &RedisServer) {
    fill_log(server, tatbot_state::keys::EVENT_LOG, 1, 5 << 20).await;
}

/// Appends `entries` entries of another client to the log `key` of `server`, each a `payload`
/// field of `bytes` bytes alone, in one pipeline.
pub async fn fill_log(server: &RedisServer, key: &str, entries: usize, bytes: usize) {
    let payload = "x".repeat(bytes);
    let mut fill = redis::pipe();
    for _ in 0..entries {
        fill.cmd("XADD").arg(key).arg("*").arg("payload").arg(&payload).ignore();
    }
    // Up to 100 MiB in one pipeline: redis-rs's default answer timeout (500 ms) is too short
    // for that on two busy cores (seen in a full parallel run).
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    let mut connection = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let () = fill.query_async(&mut connection).await.unwrap();
}

//! Section 5: `status` and all-nodes health as the fleet grows.
//!
//! Sessions and heartbeats are seeded the way a Python node writes them, with pipelined raw
//! `HSET`s of wire-format documents under the contract's keys (ids start with `bench-`), in
//! three steps of ten times more: 10 nodes and 100 sessions, then 100 and 1,000, then 1,000
//! and 10,000. After each step [`StateManager::system_status`] and
//! [`StateManager::get_all_nodes_health`] are timed. Every seeded key also gets a TTL
//! ([`SEED_TTL`]) as a safety net, and [`Seeded::remove`] deletes them all at the end.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tatbot_state::model::{NodeHealth, StrokeProgress};
use tatbot_state::{Endpoint, NodeId, SessionId, StateManager, Timestamp, keys};

use crate::cmd::bench::stats::median;
use crate::cmd::server::link;

/// Seeded keys expire after this long even if the bench is killed before it cleans up.
const SEED_TTL: Duration = Duration::from_secs(600);
/// Keys per pipelined seeding or deleting round trip.
const PIPELINE: usize = 1000;
/// Deadline of one seeding or deleting round trip.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The steps: (nodes, sessions).
pub const STEPS: [(usize, usize); 3] = [(10, 100), (100, 1_000), (1_000, 10_000)];

/// Timings at one step, in milliseconds (medians over the repeats).
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// `system_status`.
    pub status_ms: f64,
    /// `get_all_nodes_health`.
    pub health_ms: f64,
}

/// The connection that seeds, and the keys seeded so far, for the cleanup.
pub struct Seeded {
    connection: MultiplexedConnection,
    keys: Vec<String>,
}

impl Seeded {
    /// Opens the connection that seeds and removes; nothing is seeded yet.
    ///
    /// # Errors
    ///
    /// Redis could not be reached.
    pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<Seeded> {
        let connection = link::connect(endpoint, COMMAND_TIMEOUT)
            .await
            .map_err(|err| link::to_error(&err, endpoint, "connecting to seed sessions"))?;
        Ok(Seeded {
            connection,
            keys: Vec::new(),
        })
    }

    /// Deletes every seeded key.
    ///
    /// # Errors
    ///
    /// Redis failed; the keys then expire after [`SEED_TTL`].
    pub async fn remove(mut self) -> anyhow::Result<()> {
        for chunk in self.keys.chunks(PIPELINE) {
            let command = redis::cmd("UNLINK").arg(chunk).clone();
            let _: i64 = link::call(&mut self.connection, &command, COMMAND_TIMEOUT)
                .await
                .context("deleting the seeded sessions and nodes")?;
        }
        Ok(())
    }
}

/// Seeds each of [`STEPS`] on top of the previous one into `seeded` and times both reads
/// `repeats` times at each. The caller removes the keys, also when this fails.
///
/// # Errors
///
/// Redis failed, or a read failed (status reports an error instead of failing).
pub async fn measure(manager: &StateManager, seeded: &mut Seeded, repeats: usize) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::with_capacity(STEPS.len());
    let (mut nodes, mut sessions) = (0, 0);
    for (want_nodes, want_sessions) in STEPS {
        seed(seeded, nodes..want_nodes, sessions..want_sessions).await?;
        (nodes, sessions) = (want_nodes, want_sessions);
        let mut status_times = Vec::with_capacity(repeats);
        let mut health_times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let started = Instant::now();
            let status = manager.system_status().await;
            status_times.push(started.elapsed().as_secs_f64() * 1e3);
            if let Some(error) = status.error {
                anyhow::bail!("status over {sessions} sessions failed: {error}");
            }
            let started = Instant::now();
            let health = manager
                .get_all_nodes_health()
                .await
                .with_context(|| format!("reading the health of {nodes} nodes"))?;
            health_times.push(started.elapsed().as_secs_f64() * 1e3);
            if health.len() < nodes {
                anyhow::bail!(
                    "all-nodes health found {} heartbeats, {nodes} were seeded: did they expire?",
                    health.len()
                );
            }
        }
        steps.push(Step {
            status_ms: median(&status_times).unwrap_or(f64::NAN),
            health_ms: median(&health_times).unwrap_or(f64::NAN),
        });
    }
    Ok(steps)
}

/// Writes heartbeats for node numbers `nodes` and sessions for session numbers `sessions`.
async fn seed(
    seeded: &mut Seeded,
    nodes: std::ops::Range<usize>,
    sessions: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let ttl = i64::try_from(SEED_TTL.as_secs()).unwrap_or(i64::MAX);
    let mut pipe = redis::pipe();
    let mut queued = 0;
    for node in nodes {
        let node_id = NodeId::new(format!("bench-node-{node}"))?;
        let health: NodeHealth = serde_json::from_value(json!({
            "timestamp": now, "node_id": node_id.as_str(), "cpu_percent": 12.5,
            "memory_percent": 40.0, "disk_percent": 55.0, "last_heartbeat": now,
        }))
        .context("bug: the seeded heartbeat does not decode")?;
        let key = keys::health(&node_id);
        let document = serde_json::to_string(&health).context("encoding a seeded heartbeat")?;
        pipe.hset(&key, keys::FIELD_HEALTH, document).ignore();
        pipe.expire(&key, ttl).ignore();
        seeded.keys.push(key);
        queued += 1;
        if queued % PIPELINE == 0 {
            send(seeded, &mut pipe).await?;
        }
    }
    for session in sessions {
        let session_id = SessionId::new(format!("bench-session-{session}"))?;
        // A third ended, a few paused, the rest executing, as on a busy day.
        let progress: StrokeProgress = serde_json::from_value(json!({
            "timestamp": now, "node_id": format!("bench-node-{}", session % 10),
            "stroke_idx": session % 40, "pose_idx": session % 25, "total_strokes": 40,
            "stroke_length": 25, "stroke_description_l": "left", "stroke_description_r": "right",
            "is_executing": session % 3 != 0, "is_paused": session % 7 == 0, "scene_name": "bench",
        }))
        .context("bug: the seeded progress does not decode")?;
        let key = keys::progress(&session_id);
        let document = serde_json::to_string(&progress).context("encoding seeded progress")?;
        pipe.hset(&key, keys::FIELD_PROGRESS, document).ignore();
        pipe.expire(&key, ttl).ignore();
        seeded.keys.push(key);
        queued += 1;
        if queued % PIPELINE == 0 {
            send(seeded, &mut pipe).await?;
        }
    }
    send(seeded, &mut pipe).await
}

/// Sends what `pipe` holds and empties it.
async fn send(seeded: &mut Seeded, pipe: &mut redis::Pipeline) -> anyhow::Result<()> {
    if pipe.is_empty() {
        return Ok(());
    }
    let sent = link::within(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut seeded.connection)).await;
    pipe.clear();
    sent.context("seeding sessions and nodes")
}

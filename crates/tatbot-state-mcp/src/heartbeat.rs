//! The MCP server's own node heartbeat: the library's agent, marked as serving MCP
//! (`mcp_server_running: true`, `mcp_port` the HTTP port or `null` on stdio).
//!
//! It is the one write the MCP process makes, so it takes a manager of its own: the server's
//! `Reader` (`reader.rs`) never writes.

use std::time::Duration;

use tatbot_state::heartbeat::{self, HeartbeatOptions, MetricsSampler};
use tatbot_state::{Error, StateManager};
use tokio_util::sync::CancellationToken;

/// Sends a heartbeat at once and then every `interval` until `shutdown` fires, with
/// `mcp_server_running: true` and `mcp_port` set to `mcp_port` (`None` on stdio).
///
/// A failed beat (Redis down) is logged once per run of failures and retried every interval. A beat the Redis
/// user is not permitted to send (a read-only role such as `viewer`) ends the heartbeat with
/// one log line: retrying cannot succeed, and warning every interval would bury the log.
pub async fn run_heartbeat(
    manager: StateManager,
    mcp_port: Option<u16>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let options = HeartbeatOptions {
        interval,
        mcp_server_running: true,
        mcp_port,
        ..HeartbeatOptions::default()
    };
    let mut sampler = MetricsSampler::new(&options.disk_path);
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match heartbeat::beat(&manager, &mut sampler, &options).await {
            Ok(health) => {
                failing = false;
                tracing::debug!(node_id = %health.node_id, "heartbeat sent");
            }
            Err(err @ Error::PermissionDenied { .. }) => {
                tracing::warn!(error = %err, "the Redis user may not write, so this node sends no heartbeat (pass --no-heartbeat to say so)");
                return;
            }
            // One warning per run of failures: while Redis is down (or not up yet) the wait for
            // it is logged already, and a line every interval would bury it.
            Err(err) if failing => tracing::debug!(error = %err, "heartbeat still failing"),
            Err(err) => {
                failing = true;
                tracing::warn!(error = %err, "heartbeat failed; retrying every interval");
            }
        }
    }
    // Stopped on purpose: the node goes offline at once rather than after the TTL.
    match tokio::time::timeout(Duration::from_secs(2), manager.remove_node_health()).await {
        Ok(Ok(())) => tracing::info!(node_id = %manager.node_id(), "heartbeat stopped; node marked offline"),
        _ => tracing::info!(node_id = %manager.node_id(), "heartbeat stopped; it expires by TTL"),
    }
}

//! The MCP server's own node heartbeat: the library's heartbeat document, marked as serving MCP.
//!
//! [`tatbot_state::heartbeat::run`] sets `mcp_server_running` only together with a port, but a
//! server on stdio runs without one (`mcp_server_running: true`, `mcp_port: null`). This loop
//! builds the same document with [`tatbot_state::heartbeat::health_document`] and sets the flag
//! itself. It is the one write the MCP process makes, so it takes a manager of its own: the
//! server's `Reader` (`reader.rs`) never writes.

use std::time::Duration;

use tatbot_state::StateManager;
use tatbot_state::heartbeat::{self, HeartbeatOptions, MetricsSampler};
use tokio_util::sync::CancellationToken;

/// Sends a heartbeat at once and then every `interval` until `shutdown` fires, with
/// `mcp_server_running: true` and `mcp_port` set to `mcp_port` (`None` on stdio).
///
/// A failed beat (Redis down) is logged and retried at the next interval.
pub async fn run_heartbeat(
    manager: StateManager,
    mcp_port: Option<u16>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let options = HeartbeatOptions {
        interval,
        mcp_port,
        ..HeartbeatOptions::default()
    };
    let mut sampler = MetricsSampler::new(&options.disk_path);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let beat = async {
            let ping = manager.ping().await?;
            let metrics = sampler.sample().await;
            let mut health = heartbeat::health_document(manager.node_id().as_str(), &metrics, Some(ping), &options);
            health.mcp_server_running = true;
            manager.update_node_health(&health).await
        };
        match beat.await {
            Ok(()) => tracing::debug!(node_id = %manager.node_id(), "heartbeat sent"),
            Err(err) => tracing::warn!(error = %err, "heartbeat failed; retrying at the next interval"),
        }
    }
    tracing::info!(node_id = %manager.node_id(), "MCP heartbeat stopped");
}

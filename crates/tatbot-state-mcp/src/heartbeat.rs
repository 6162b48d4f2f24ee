//! The MCP server's own node heartbeat: the library's agent, marked as serving MCP
//! (`mcp_server_running: true`, `mcp_port` the HTTP port or `null` on stdio).
//!
//! It is the one write the MCP process makes, so it takes a manager of its own: the server's
//! `Reader` (`reader.rs`) never writes.

use std::time::Duration;

use tatbot_state::StateManager;
use tatbot_state::heartbeat::HeartbeatOptions;
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
    // The library's agent: it stops by itself on a permission error, and marks the node
    // offline when stopped on purpose.
    if let Err(err) = manager.heartbeat(options, shutdown).await {
        tracing::warn!(error = %err, "the Redis user may not write, so this node sends no heartbeat (pass --no-heartbeat to say so)");
    }
}

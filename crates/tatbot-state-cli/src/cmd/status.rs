//! `tatbot-state status`: the system summary, and the small text helpers the read commands share.
//!
//! The summary comes from [`tatbot_state::StateManager::system_status`], which never fails once
//! connected: a server that stops answering gives `Redis Connected: false` with the reason (and
//! exit code 3), and values that do not decode are listed with their keys instead of failing the
//! summary. The line labels `Redis Connected`, `Active Sessions` and `Nodes Online` are the ones
//! the old Python tools printed, so scripts that grep them keep working.

use std::io::Write as _;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::output::shown;

/// Flags of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `status`.
pub async fn run(global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    let manager = global.manager().await?;
    let status = manager.system_status().await;
    let mut out = std::io::stdout().lock();
    if global.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        writeln!(out, "Redis Connected: {}", status.redis_connected)?;
        writeln!(
            out,
            "Redis Version: {}",
            status.redis_version.as_deref().unwrap_or("unknown")
        )?;
        writeln!(out, "Active Sessions: {}", status.active_sessions)?;
        writeln!(out, "Paused Sessions: {}", status.paused_sessions)?;
        writeln!(out, "Stale Sessions: {}", status.stale_sessions)?;
        writeln!(out, "Total Sessions: {}", status.total_sessions)?;
        writeln!(out, "Nodes Online: {}/{}", status.nodes_online, status.nodes_known)?;
        writeln!(out, "Producers Active: {}", status.producers_active)?;
        writeln!(out, "Dropped Updates: {}", status.dropped_updates)?;
        writeln!(out, "Rejected Updates: {}", status.rejected_updates)?;
        writeln!(out, "Restored Sessions: {}", status.restored_sessions)?;
        if !status.corrupt.is_empty() {
            writeln!(out, "Corrupt Entries: {}", status.corrupt.len())?;
            for corrupt in &status.corrupt {
                writeln!(out, "  {}: {}", shown(&corrupt.key), shown(&corrupt.error))?;
            }
        }
        if let Some(error) = &status.error {
            writeln!(out, "Error: {}", shown(error))?;
        }
    }
    if !status.redis_connected {
        return Ok(exit::UNREACHABLE);
    }
    Ok(exit::SUCCESS)
}

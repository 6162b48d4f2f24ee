//! `tatbot-state heartbeat`: run this node's heartbeat agent, or send one beat.
//!
//! The agent is [`tatbot_state::StateManager::heartbeat`]: one beat at once, then one per interval, each
//! stored with the contract's 60 s TTL, riding out Redis restarts. It stops on Ctrl-C or SIGTERM
//! after the beat in flight. `--once` sends one beat and prints what was written, like
//! `health NODE` would show it.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use tatbot_state::CancellationToken;
use tatbot_state::heartbeat::{HeartbeatOptions, MetricsSampler};

use crate::cmd::health::print_health;
use crate::ctx::GlobalArgs;
use crate::exit;
use crate::signal::shutdown_signal;

/// How long the agent may take to finish its beat in flight after a shutdown signal.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Flags of `heartbeat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds between beats (the key expires 60 s after the last one)
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=59))]
    pub interval: u64,
    /// Send one beat, print what was written, and exit
    #[arg(long)]
    pub once: bool,
    /// Report an MCP server on this port in the heartbeat
    #[arg(long, value_name = "PORT")]
    pub mcp_port: Option<u16>,
}

/// Runs `heartbeat`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let manager = if args.once {
        global.manager().await?
    } else {
        global.manager_waiting().await?
    };
    let options = HeartbeatOptions {
        interval: Duration::from_secs(args.interval),
        mcp_port: args.mcp_port,
        ..HeartbeatOptions::default()
    };
    if args.once {
        let mut sampler = MetricsSampler::new(&options.disk_path);
        let health = manager
            .send_heartbeat(&mut sampler, &options)
            .await
            .with_context(|| format!("sending a heartbeat for node {}", manager.node_id()))?;
        print_health(&health, global.json)?;
        return Ok(exit::SUCCESS);
    }

    // Stderr is diagnostics only; if it is closed there is no one to tell.
    let _ = writeln!(
        std::io::stderr(),
        "heartbeat for node {} every {} s; Ctrl-C to stop",
        manager.node_id(),
        args.interval
    );
    let shutdown = CancellationToken::new();
    let node_id = manager.node_id().clone();
    let agent = manager.heartbeat(options, shutdown.clone());
    tokio::pin!(agent);
    let refused = |err| anyhow::Error::new(err).context(format!("sending heartbeats for node {node_id}"));
    tokio::select! {
        // Biased so the signal handlers are installed before the agent's first beat goes out.
        biased;
        () = shutdown_signal() => shutdown.cancel(),
        stopped = &mut agent => return stopped.map(|()| exit::SUCCESS).map_err(refused),
    }
    match tokio::time::timeout(STOP_DEADLINE, agent).await {
        Ok(stopped) => stopped.map_err(refused)?,
        Err(_) => tracing::warn!(deadline = ?STOP_DEADLINE, "the heartbeat in flight did not finish; exiting anyway"),
    }
    Ok(exit::SUCCESS)
}

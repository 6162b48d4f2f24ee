//! `tatbot-state viz`: serves the live web dashboard ([`tatbot_state_viz`]).
//!
//! Prints the dashboard's URL as the first line of stdout once it listens (with `--bind
//! 127.0.0.1:0` that is how a caller learns the port), then serves until Ctrl-C or SIGTERM,
//! ends the open streams and waits at most [`SHUTDOWN_DEADLINE`] for in-flight requests.
//! It binds to loopback unless told otherwise; the dashboard is read-only either way.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tatbot_state::CancellationToken;
use tatbot_state_viz::VizState;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::signal::shutdown_signal;

/// How long shutdown waits for the server after the streams were ended.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Flags of `viz`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address and port to listen on (use 0.0.0.0:PORT to serve the LAN)
    #[arg(long, default_value = tatbot_state_viz::DEFAULT_BIND, value_name = "ADDR:PORT")]
    pub bind: SocketAddr,
}

/// Runs `viz`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let manager = global.manager().await?;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("listening on {}", args.bind))?;
    let address = listener.local_addr().context("reading the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "http://{address}/")?;
        out.flush()?;
    }
    let shutdown = CancellationToken::new();
    let mut server = tokio::spawn(tatbot_state_viz::serve(
        listener,
        VizState::new(manager),
        shutdown.clone(),
    ));
    tokio::select! {
        () = shutdown_signal() => {}
        joined = &mut server => {
            joined.context("the dashboard server task failed")?.context("serving the dashboard")?;
            return Ok(exit::SUCCESS);
        }
    }
    tracing::info!("shutting down the dashboard");
    shutdown.cancel();
    match tokio::time::timeout(SHUTDOWN_DEADLINE, server).await {
        Ok(joined) => joined
            .context("the dashboard server task failed")?
            .context("serving the dashboard")?,
        Err(_) => tracing::warn!("the dashboard did not stop within {SHUTDOWN_DEADLINE:?}; exiting anyway"),
    }
    Ok(exit::SUCCESS)
}

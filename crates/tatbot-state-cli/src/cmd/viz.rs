//! `tatbot-state viz`: serves the live web dashboard ([`tatbot_state_viz`]).
//!
//! It serves whether Redis is up or not: while it is not, the log says so once per change of
//! the wait and the dashboard shows a banner, and the page fills in when Redis answers.
//! Prints the dashboard's URL as the first line of stdout once it listens (with `--bind
//! 127.0.0.1:0` that is how a caller learns the port), then serves until Ctrl-C or SIGTERM,
//! ends the open streams and waits at most [`SHUTDOWN_DEADLINE`] for in-flight requests.
//! It binds to loopback unless told otherwise; any other address needs a token (`--token` or
//! `TATBOT_VIZ_TOKEN`, exit code 2 without one), which the browser asks for as the password of
//! a login. The dashboard is read-only either way. Before serving, the soft limit of open
//! files is raised to the hard limit, so the connection cap is not 1,024 descriptors.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tatbot_state::CancellationToken;
use tatbot_state::http::ServeConfig;
use tatbot_state_viz::VizState;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::signal::shutdown_signal;

/// How long shutdown waits for the server after the streams were ended.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Flags of `viz`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address (or host name) and port to listen on (use 0.0.0.0:PORT to serve the LAN)
    #[arg(long, default_value = tatbot_state_viz::DEFAULT_BIND, value_name = "ADDR:PORT", value_parser = crate::ctx::parse_bind)]
    pub bind: SocketAddr,
    /// Token every request must carry, required off loopback; browsers ask for it as the
    /// password (any user name). Prefer TATBOT_VIZ_TOKEN: flags show up in `ps`
    #[arg(long, env = "TATBOT_VIZ_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<crate::ctx::Secret>,
    /// Also accept this host name or IP in Host and Origin headers (repeatable)
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    /// Most connections served at once; more are answered 503 (also capped by the open-file limit)
    #[arg(long, value_name = "N", default_value_t = tatbot_state::http::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Seconds a connection may take to send its request head before it is closed
    #[arg(long, value_name = "SECS", default_value_t = tatbot_state::http::DEFAULT_HEADER_READ_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout: u64,
}

/// Runs `viz`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    // The token rule first, so a refused bind is one line and exit 2 (see `exit::code_for`).
    tatbot_state::http::check_bind(&args.bind, args.token.as_ref().map(crate::ctx::Secret::expose))?;
    crate::cmd::mcp::raise_fd_limit();
    // Serves before Redis is up: the dashboard shows the wait and fills in when it answers.
    let manager = global.manager_serving().await?;
    let listener = crate::ctx::bind_listener(args.bind, "dashboard").await?;
    let address = listener.local_addr().context("reading the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "http://{address}/")?;
        out.flush()?;
    }
    let shutdown = CancellationToken::new();
    let mut allowed_hosts = args.allow_hosts;
    if args.bind.ip().is_unspecified() {
        // Clients on the LAN reach a server on every interface by this machine's name.
        allowed_hosts.push(gethostname::gethostname().to_string_lossy().into_owned());
    }
    let state = VizState::new(manager)
        .with_token(args.token.map(crate::ctx::Secret::into_inner))
        .with_allowed_hosts(allowed_hosts)
        .with_serve_config(ServeConfig {
            max_connections: args.max_connections,
            header_read_timeout: Duration::from_secs(args.header_read_timeout),
        });
    let mut server = tokio::spawn(tatbot_state_viz::serve(listener, state, shutdown.clone()));
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

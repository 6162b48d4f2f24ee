//! `tatbot-state mcp`: serve read-only state resources over MCP (stdio or streamable HTTP).
//!
//! The server itself is the `tatbot-state-mcp` crate; this module validates the flags, connects
//! (or, while Redis is not up yet, serves anyway, logs the wait and connects when it is),
//! runs this node's heartbeat (marked as serving MCP) beside it when serving HTTP, or on stdio
//! when asked with `--heartbeat` (an assistant that launches the stdio server for a chat is not a
//! node of the fleet, so by default it adds none), and stops both on Ctrl-C or
//! SIGTERM. On stdio, stdout carries the protocol: everything else, the announcement included,
//! goes to stderr.
//!
//! Reads and the heartbeat use two managers, so the server's connection sends only reads and
//! subscriptions; `--no-heartbeat` removes the one write, and so does connecting as the
//! read-only `viewer` role of `config/redis/users.acl`, which may not write (any other user
//! that turns out not to be permitted stops the heartbeat after its first refusal). HTTP binds
//! 127.0.0.1 by default; any other address is refused (exit code 2) unless a token is given.
//! Before serving, the soft limit of open files is raised to the hard limit, so the connection
//! cap is not the customary 1,024 descriptors.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tatbot_state::CancellationToken;
use tatbot_state::http::ServeConfig;
use tatbot_state_mcp::{ConfigDescription, HttpOptions, MCP_PATH};
use tokio_util::task::TaskTracker;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::signal::shutdown_signal;

/// How long the server and the heartbeat may take to stop after a shutdown signal.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// The user name of the read-only role in `config/redis/users.acl`.
pub const VIEWER_USER: &str = "viewer";

/// How MCP clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// One client on stdin and stdout (the client starts this process)
    Stdio,
    /// Streamable HTTP at /mcp on --bind, for any number of clients
    Http,
}

/// Flags of `mcp`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How clients connect
    #[arg(long, value_enum, default_value_t = Transport::Stdio)]
    pub transport: Transport,
    /// Address (or host name) and port to serve HTTP on; a non-loopback address requires --token
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8000", value_parser = crate::ctx::parse_bind)]
    pub bind: SocketAddr,
    /// Bearer token every HTTP request must carry, required off loopback (prefer TATBOT_MCP_TOKEN:
    /// flags show up in `ps`)
    #[arg(long, env = "TATBOT_MCP_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<crate::ctx::Secret>,
    /// Also accept this host name or IP in Host and Origin headers (repeatable)
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    /// Send no heartbeat for this node (the process then writes nothing at all)
    #[arg(long, conflicts_with = "heartbeat")]
    pub no_heartbeat: bool,
    /// Send this node's heartbeat on stdio too (HTTP sends it unless --no-heartbeat)
    #[arg(long)]
    pub heartbeat: bool,
    /// Seconds between heartbeats (the key expires 60 s after the last one)
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=59))]
    pub heartbeat_interval: u64,
    /// Most HTTP connections served at once; more are answered 503 (default: 3 per session of --max-sessions, plus 64; also capped by the open-file limit)
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: Option<usize>,
    /// Seconds an HTTP connection may take to send its request head before it is closed
    #[arg(long, value_name = "SECS", default_value_t = tatbot_state::http::DEFAULT_HEADER_READ_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout: u64,
    /// Most HTTP sessions open at once; a new one past it closes the one idle longest
    #[arg(long, value_name = "N", default_value_t = tatbot_state_mcp::DEFAULT_MAX_SESSIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_sessions: usize,
    /// Seconds an HTTP session may idle (no request, no message) before it is closed
    #[arg(long, value_name = "SECS", default_value_t = tatbot_state_mcp::DEFAULT_SESSION_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub session_idle_timeout: u64,
}

/// Runs `mcp`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    // The token rule is checked before anything else, so a refused bind is one line and exit 2.
    if args.transport == Transport::Http
        && let Err(err) = tatbot_state_mcp::check_bind(&args.bind, args.token.as_ref().map(crate::ctx::Secret::expose))
    {
        // The bind error itself, so `exit::code_for` maps it to exit 2 and the final line
        // gets its hint.
        return Err(match err {
            tatbot_state_mcp::Error::Bind(bind) => anyhow::Error::new(bind),
            other => anyhow::Error::new(other),
        });
    }
    if args.transport == Transport::Http {
        raise_fd_limit();
    }
    let target = global.target()?;
    let config = ConfigDescription::from(&target);
    // Serves before Redis is up: reads answer that it is unreachable until it is.
    let reader = global.manager_serving().await?;

    let listener = match args.transport {
        Transport::Http => Some(crate::ctx::bind_listener(args.bind, "MCP server").await?),
        Transport::Stdio => None,
    };
    let mcp_port = match &listener {
        Some(listener) => Some(listener.local_addr().context("reading the bound address")?.port()),
        None => None,
    };

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let viewer = target.username.value.as_deref() == Some(VIEWER_USER);
    let wants_heartbeat = match args.transport {
        Transport::Http => !args.no_heartbeat,
        Transport::Stdio => args.heartbeat,
    };
    if viewer && wants_heartbeat {
        tracing::info!("connected as the read-only {VIEWER_USER} role: no heartbeat for this node");
    }
    if wants_heartbeat && !viewer {
        // Lazy: the heartbeat retries each interval until Redis is up (the reader logs the wait).
        // Through the Sentinels when configured, like the reader: a fixed address would be a
        // replica after a failover, and every beat would be refused.
        let writer = global.manager_lazy()?;
        tracker.spawn(tatbot_state_mcp::run_heartbeat(
            writer,
            mcp_port,
            Duration::from_secs(args.heartbeat_interval),
            shutdown.child_token(),
        ));
    }

    // Stdout may be the protocol, so the announcement goes to stderr; if stderr is closed there
    // is no one to tell.
    let serving = match &listener {
        Some(listener) => {
            let local_addr = listener.local_addr().context("reading the bound address")?;
            format!("http://{local_addr}{MCP_PATH}")
        }
        None => "stdio".to_owned(),
    };
    let _ = writeln!(
        std::io::stderr(),
        "serving MCP on {serving} for Redis at {}; Ctrl-C to stop",
        config.target
    );

    let server = async {
        match listener {
            Some(listener) => {
                let options = HttpOptions {
                    token: args.token.clone().map(crate::ctx::Secret::into_inner),
                    allowed_hosts: allowed_hosts(&args),
                    serve: ServeConfig {
                        max_connections: args
                            .max_connections
                            .unwrap_or_else(|| tatbot_state_mcp::default_max_connections(args.max_sessions)),
                        header_read_timeout: Duration::from_secs(args.header_read_timeout),
                    },
                    max_sessions: args.max_sessions,
                    session_idle_timeout: Duration::from_secs(args.session_idle_timeout),
                };
                tatbot_state_mcp::serve_http(listener, reader, config, options, shutdown.clone()).await
            }
            None => tatbot_state_mcp::serve_stdio(reader, config, shutdown.clone()).await,
        }
    };
    tokio::pin!(server);
    let served = tokio::select! {
        // Biased so the signal handlers are installed before the first client arrives.
        biased;
        () = shutdown_signal() => {
            shutdown.cancel();
            match tokio::time::timeout(STOP_DEADLINE, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(deadline = ?STOP_DEADLINE, "the MCP server did not stop in time; exiting anyway");
                    Ok(())
                }
            }
        }
        served = &mut server => served,
    };
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(STOP_DEADLINE, tracker.wait()).await.is_err() {
        tracing::warn!(deadline = ?STOP_DEADLINE, "the heartbeat in flight did not finish; exiting anyway");
    }
    served.context("serving MCP")?;
    Ok(exit::SUCCESS)
}

/// `--allow-host` values, plus this machine's name when serving on every interface (clients on
/// the LAN reach it by that name).
fn allowed_hosts(args: &Args) -> Vec<String> {
    let mut hosts = args.allow_hosts.clone();
    if args.bind.ip().is_unspecified() {
        hosts.push(gethostname::gethostname().to_string_lossy().into_owned());
    }
    hosts
}

/// Raises the soft limit of open files to the hard limit; a failure only narrows the
/// connection cap, so it is logged, not fatal.
pub fn raise_fd_limit() {
    match tatbot_state::http::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit raised"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit; serving fewer connections"),
    }
}

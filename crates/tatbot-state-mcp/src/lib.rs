//! `tatbot-state-mcp`: tatbot's state as read-only MCP resources, over stdio or streamable HTTP.
//!
//! MCP is for orchestration and read-only summaries: an assistant or a script reads the system
//! status, stroke progress, sessions, node health, runtime parameters and the Redis
//! configuration, and can subscribe to be told when they change. Live robot data flows through
//! Redis directly; this server never writes state. docs/MCP.md in the repository is the user's
//! guide.
//!
//! # Layout
//!
//! - [`uri`]: the resource URIs and templates, and the parser every request goes through.
//! - `render.rs`: the text and JSON forms of each resource.
//! - `reader.rs`: the only way the server reaches Redis, a wrapper of [`StateManager`] with no
//!   writing method.
//! - `hub.rs`: the subscriber registry, fed by Redis pub/sub, the parameter audit log (and, for
//!   heartbeats, which have no event, a low-rate poll).
//! - `server.rs`: the rmcp `ServerHandler`: list, read, `resources/subscribe` (2025-11 model)
//!   and `subscriptions/listen` (2026-07 model).
//! - `http.rs`: the axum app for streamable HTTP at [`MCP_PATH`], with the Host/Origin/token
//!   guard ([`serve_http`]).
//! - `session.rs`: the HTTP sessions (2025-11 model) for rmcp's `StreamableHttpService`:
//!   rmcp's `LocalSessionManager` behaviour, kept as shared state instead of an actor task and
//!   four channels of large messages per session, which cost too much memory with a hundred
//!   clients.
//! - `heartbeat.rs`: this node's heartbeat, marked as serving MCP ([`run_heartbeat`]); it runs
//!   on a manager of its own, the one writer of the process.
//!
//! Every entry point takes a connected [`StateManager`] that it only reads through (give it one
//! that nothing else writes with; the heartbeat has its own), a
//! [`ConfigDescription`] for `state://config`, and a [`CancellationToken`] that stops it.

mod error;
mod heartbeat;
mod http;
mod hub;
mod reader;
mod render;
mod server;
mod session;
pub mod uri;

use std::time::Duration;

use rmcp::ServiceExt as _;
use rmcp::service::ServerInitializeError;
use tatbot_state::StateManager;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use crate::error::Error;
pub use crate::heartbeat::run_heartbeat;
pub use crate::http::{
    CONNECTIONS_PER_SESSION, DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_IDLE_TIMEOUT, HttpOptions, MCP_PATH,
    SPARE_CONNECTIONS, check_bind, default_max_connections, serve_http,
};
pub use crate::render::{ConfigDescription, ConfigRow};

/// How long the background tasks may take to stop once the client has gone.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Serves one MCP client on this process's stdin and stdout until it disconnects or
/// `shutdown` fires.
///
/// Stdout carries the protocol, so nothing else may write to it: logs go to stderr.
///
/// # Errors
///
/// The client did not complete the handshake, or the transport failed.
pub async fn serve_stdio(
    manager: StateManager,
    config: ConfigDescription,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    serve_io(manager, config, stdin, stdout, shutdown).await
}

/// Serves one MCP client over any byte stream (a pipe pair, a socket, an in-memory duplex)
/// until it disconnects or `shutdown` fires.
///
/// # Errors
///
/// The client did not complete the handshake, or the transport failed.
pub async fn serve_io<R, W>(
    manager: StateManager,
    config: ConfigDescription,
    input: R,
    output: W,
    shutdown: CancellationToken,
) -> Result<(), Error>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let state = server::ServerState::start(reader::Reader::new(manager), config, &shutdown).await;
    let served = match server::StateServer::new(state.clone())
        .serve_with_ct((input, output), shutdown.child_token())
        .await
    {
        Ok(running) => {
            let reason = running.waiting().await;
            tracing::info!(?reason, "MCP client session ended");
            Ok(())
        }
        Err(ServerInitializeError::Cancelled) => Ok(()),
        Err(err) => Err(Error::Handshake(Box::new(err))),
    };
    state.stop(STOP_DEADLINE).await;
    served
}

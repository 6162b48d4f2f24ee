//! `tatbot-state-viz`: the live web dashboard of tatbot's state.
//!
//! One page shows the stroke sessions with their progress, the nodes with their health, the
//! runtime parameters, and the recent events and errors. It is fed by Server-Sent Events from
//! the library's follow API ([`tatbot_state::follow`]): each SSE event carries the follow
//! cursor as its `id`, so a browser that reconnects sends `Last-Event-ID` and gets exactly what
//! it missed. Parameters come on the same stream, as whole lists sent when they change (from
//! the parameter audit log, [`tatbot_state::params::Watch`]).
//!
//! # Layout
//!
//! - [`app`] (`app.rs`): the [`axum::Router`]: the page, its embedded assets and the JSON API.
//! - `sse.rs`: one follower per open stream, turned into SSE events.
//! - `params.rs`: the parameter list, and the per-stream watch that says when it changed.
//! - `assets/`: `index.html`, `app.js` and `style.css`, compiled into the binary with
//!   `include_str!`; the robot LAN is offline, so nothing is loaded from elsewhere.
//!
//! # Guarantees
//!
//! - Read-only: every route is a `GET` and no handler writes to Redis (the parameters are
//!   shown, never set).
//! - Bounded: at most [`MAX_STREAMS`] open streams; each stream's follower buffers at most
//!   [`tatbot_state::follow::FOLLOW_BUFFER`] items and stops reading Redis while its client is
//!   slow. If the log was trimmed past a slow client's cursor meanwhile, the client gets a
//!   resync and a fresh snapshot, never unbounded memory.
//! - Every JSON request is bounded by [`REQUEST_TIMEOUT`]; streams end when the shutdown token
//!   is cancelled, so graceful shutdown does not wait for them.

mod app;
mod params;
mod sse;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tatbot_state::StateManager;
use tatbot_state::follow::FollowConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use app::app;

/// Where the dashboard listens unless told otherwise: loopback only.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// Most SSE streams open at once; each holds a follower with two Redis connections and a
/// parameter watch with one.
pub const MAX_STREAMS: usize = 32;
/// Longest a JSON request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Clone)]
pub struct VizState {
    manager: StateManager,
    follow_config: FollowConfig,
    /// Cancelled at shutdown: ends every open stream and its follower.
    shutdown: CancellationToken,
    /// One permit per open stream, [`MAX_STREAMS`] in all; a stream holds its permit until
    /// its response body is dropped.
    streams: Arc<Semaphore>,
}

impl VizState {
    /// The dashboard's state for `manager`, following with the default [`FollowConfig`].
    pub fn new(manager: StateManager) -> VizState {
        VizState {
            manager,
            follow_config: FollowConfig::default(),
            shutdown: CancellationToken::new(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }

    /// Follows with `config` instead (tests use shorter polls).
    pub fn with_follow_config(mut self, config: FollowConfig) -> VizState {
        self.follow_config = config;
        self
    }
}

/// Serves the dashboard on `listener` until `shutdown` is cancelled, then ends the open
/// streams and waits for in-flight requests (each bounded by [`REQUEST_TIMEOUT`]).
///
/// # Errors
///
/// Accepting connections failed.
pub async fn serve(listener: TcpListener, mut state: VizState, shutdown: CancellationToken) -> io::Result<()> {
    state.shutdown = shutdown.clone();
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "dashboard listening");
    }
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

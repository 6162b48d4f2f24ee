//! `tatbot-state-viz`: the live web dashboard of tatbot's state.
//!
//! One page shows the stroke sessions with their progress, the nodes with their health, the
//! runtime parameters, and the recent events and errors. It is fed by Server-Sent Events from
//! the library's follow API ([`tatbot_state::follow`]), through one follower shared by every
//! open page: each SSE event carries the follow cursor as its `id`, so a browser that
//! reconnects sends `Last-Event-ID` and gets exactly what it missed while the server still
//! holds it, else a fresh snapshot. Parameters come on the same stream, as whole lists sent
//! when they change (from the parameter audit log, [`tatbot_state::params::Watch`]).
//!
//! # Layout
//!
//! - [`app()`] (`app.rs`): the [`axum::Router`]: the page, its embedded assets and the JSON API.
//! - `hub.rs`: the one follower and parameter watch of the process, started by the first
//!   stream, whose items every stream reads (serialized once, kept in a ring for resuming).
//! - `sse.rs`: the SSE protocol, and each client's response body fed by the hub.
//! - `params.rs`: the parameter list, and the watch that says when it changed.
//! - `assets/`: `index.html`, `app.js` and `style.css`, compiled into the binary with
//!   `include_str!`; the robot LAN is offline, so nothing is loaded from elsewhere.
//!
//! # Guarantees
//!
//! - Read-only: every route is a `GET` and no handler writes to Redis (the parameters are
//!   shown, never set).
//! - Bounded: at most [`MAX_STREAMS`] open streams, all fed by one follower with two Redis
//!   connections and one parameter watch with one, however many are open. The hub keeps the
//!   newest [`STREAM_RING`] items; a client that falls further behind gets a resync and a
//!   fresh snapshot, never unbounded memory.
//! - Every JSON request is bounded by [`REQUEST_TIMEOUT`]; streams end when the shutdown token
//!   is cancelled, so graceful shutdown does not wait for them.
//! - Guarded as the MCP server is, by the library's shared [`tatbot_state::http`]: `Host` and
//!   `Origin` must name this machine (no DNS rebinding), a non-loopback bind needs a token
//!   (sent as `Bearer`, or as the password the browser asks for), and every answer carries a
//!   strict `Content-Security-Policy`, `X-Frame-Options: DENY` and `X-Content-Type-Options:
//!   nosniff`. Connections are capped and must send their request head in time
//!   ([`tatbot_state::http::ServeConfig`]).

mod app;
mod hub;
mod params;
mod sse;

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tatbot_state::StateManager;
use tatbot_state::follow::FollowConfig;
use tatbot_state::http::{Guard, ServeConfig, guard_requests, security_headers};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use app::app;

use crate::hub::Hub;

/// Where the dashboard listens unless told otherwise: loopback only.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// Most SSE streams open at once.
///
/// A stream costs its HTTP connection and a position in the hub's ring (no Redis connection,
/// no buffer of its own), so the bound is not about memory: it keeps the open sockets under
/// the usual limit of 1,024 file descriptors per process, with room for the listener, the
/// Redis connections and JSON requests, so that one client too many gets a `503` rather than
/// the server failing to accept.
pub const MAX_STREAMS: usize = 1_000;
/// Items (snapshot, change, resync, redis and params events) the hub keeps, serialized: a
/// client that reconnects with the id of one of them resumes after it, and a client that
/// falls this far behind gets a resync and a fresh snapshot.
pub const STREAM_RING: usize = 1_024;
/// Longest a JSON request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Clone)]
pub struct VizState {
    manager: StateManager,
    follow_config: FollowConfig,
    /// Cancelled at shutdown: ends every open stream and the hub.
    shutdown: CancellationToken,
    /// One permit per open stream, [`MAX_STREAMS`] in all; a stream holds its permit until
    /// its response body is dropped.
    streams: Arc<Semaphore>,
    /// Items in the hub's ring: [`STREAM_RING`] unless a test asks for fewer.
    stream_ring: usize,
    /// The hub, started by the first stream and shared by every clone of this state; its task
    /// ends at shutdown.
    hub: Arc<OnceLock<Arc<Hub>>>,
    /// The token every request must carry; required off loopback.
    token: Option<String>,
    /// Hosts accepted in `Host` and `Origin` besides loopback and the bound IP.
    allowed_hosts: Vec<String>,
    /// The connection cap and header-read timeout of [`serve`].
    serve_config: ServeConfig,
}

impl VizState {
    /// The dashboard's state for `manager`, following with the default [`FollowConfig`].
    pub fn new(manager: StateManager) -> VizState {
        VizState {
            manager,
            follow_config: FollowConfig::default(),
            shutdown: CancellationToken::new(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            stream_ring: STREAM_RING,
            hub: Arc::new(OnceLock::new()),
            token: None,
            allowed_hosts: Vec::new(),
            serve_config: ServeConfig::default(),
        }
    }

    /// Requires `token` on every request (`Authorization: Bearer <token>`, or Basic
    /// credentials with the token as password, which a browser asks the user for). A server
    /// that is not bound to loopback must have one.
    pub fn with_token(mut self, token: Option<String>) -> VizState {
        self.token = token;
        self
    }

    /// Also accepts these host names or IPs in `Host` and `Origin` (the names LAN clients use
    /// for a server bound to `0.0.0.0`).
    pub fn with_allowed_hosts(mut self, hosts: Vec<String>) -> VizState {
        self.allowed_hosts = hosts;
        self
    }

    /// Serves within `config`'s connection cap and header-read timeout instead of the defaults.
    pub fn with_serve_config(mut self, config: ServeConfig) -> VizState {
        self.serve_config = config;
        self
    }

    /// Follows with `config` instead (tests use shorter polls).
    pub fn with_follow_config(mut self, config: FollowConfig) -> VizState {
        self.follow_config = config;
        self
    }

    /// Keeps `items` items in the hub's ring instead of [`STREAM_RING`] (at least one; tests
    /// use a small ring to make a slow client fall behind).
    pub fn with_stream_ring(mut self, items: usize) -> VizState {
        self.stream_ring = items.max(1);
        self
    }

    /// The hub, started on first use with this state's follow config and shutdown token.
    fn hub(&self) -> &Arc<Hub> {
        self.hub.get_or_init(|| {
            Hub::start(
                &self.manager,
                self.follow_config.clone(),
                self.stream_ring,
                &self.shutdown,
            )
        })
    }
}

/// Serves the dashboard on `listener` until `shutdown` is cancelled, then ends the open
/// streams and waits for in-flight requests (each bounded by [`REQUEST_TIMEOUT`]).
///
/// Every request passes the Host/Origin/token guard first, and every answer carries the
/// security headers (see the crate docs).
///
/// # Errors
///
/// The listener is not on loopback and no token was given, or the token is blank
/// ([`tatbot_state::http::check_bind`], as `InvalidInput`); or the listener failed.
pub async fn serve(listener: TcpListener, mut state: VizState, shutdown: CancellationToken) -> io::Result<()> {
    let address = listener.local_addr()?;
    tatbot_state::http::check_bind(&address, state.token.as_deref())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    state.shutdown = shutdown.clone();
    let guard = Arc::new(Guard::new(address.ip(), &state.allowed_hosts, state.token.take()).with_basic_challenge());
    let serve_config = state.serve_config;
    let router = app(state)
        .layer(axum::middleware::from_fn_with_state(guard, guard_requests))
        .layer(axum::middleware::from_fn(security_headers));
    tracing::info!(%address, "dashboard listening");
    tatbot_state::http::serve(listener, router, serve_config, shutdown).await
}

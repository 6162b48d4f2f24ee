//! Streamable HTTP: the axum app that serves MCP at [`MCP_PATH`], behind a request guard.
//!
//! rmcp's `StreamableHttpService` speaks the protocol (sessions for 2025-11 clients, stateless
//! requests for 2026-07 ones). In front of it, on every request and before rmcp sees it:
//!
//! 1. The library's [`Guard`] (`tatbot_state::http`, shared with the dashboard): `Host` must
//!    name this machine, `Origin` (when present) one of the same hosts, and when a token is set
//!    `Authorization` must carry it (403, 403, 401). A listener that is not on loopback must
//!    have a token ([`check_bind`]); that is what keeps the robot's state off the LAN by
//!    default. rmcp's own `Host` check is configured with the same list, as a second line.
//! 2. [`check_json`]: a POSTed JSON body that does not parse is answered with the JSON-RPC
//!    error `-32700` (parse error), and JSON that is not a valid MCP message with `-32602`
//!    (a request whose params do not fit its method) or `-32600` (anything else), all with
//!    HTTP 400, as JSON-RPC clients expect; rmcp would answer HTTP 415 to all three.
//!
//! Connections are served by the library's [`serve`](tatbot_state::http::serve): a cap on
//! open connections and a header-read timeout (see [`HttpOptions::serve`]). Sessions are
//! capped and expire when idle (see [`HttpOptions::max_sessions`] and `session.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use tatbot_state::StateManager;
use tatbot_state::http::{Guard, ServeConfig, guard_requests, security_headers};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::reader::Reader;
use crate::render::ConfigDescription;
use crate::server::{ServerState, StateServer};
use crate::session::{self, SessionLimits, Sessions};

/// Where MCP is served.
pub const MCP_PATH: &str = "/mcp";
/// The largest request body accepted: MCP requests to a read-only server are small.
const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024;
/// How long the background tasks may take to stop once the HTTP server has.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Most HTTP sessions (2025-11 clients) open at once unless configured otherwise. A session
/// costs 25 KiB to 150 KiB (docs/PERFORMANCE.md), so this bounds them to about 150 MiB.
pub const DEFAULT_MAX_SESSIONS: usize = 1_000;
/// A session without a request or a message for this long is closed unless configured
/// otherwise (rmcp's default keep-alive).
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections one open session may hold: its standalone SSE stream (`GET`), the kept-alive
/// connection its requests go on, and one more that its HTTP client opens when it sends a
/// request before the previous answer's stream has ended (rmcp's client sends
/// `notifications/initialized` so). Measured with 1,000 rmcp clients at once
/// (`tatbot-state bench --only mcp`): at most 2.7 per session at the peak.
pub const CONNECTIONS_PER_SESSION: usize = 3;
/// Connections beyond those of the sessions: stateless (2026-07) clients, a session's
/// concurrent requests, an operator's `curl`.
pub const SPARE_CONNECTIONS: usize = 64;

/// The connection cap that lets `max_sessions` sessions be open at once, each with its
/// connections, plus [`SPARE_CONNECTIONS`]: the default of the MCP server's cap.
///
/// The dashboard's cap of 1,024 ([`tatbot_state::http::DEFAULT_MAX_CONNECTIONS`]) was the
/// MCP server's too, so its 1,000 sessions could never all be open: of 1,000 clients at once,
/// 424 to 812 got `503` for their stream or their requests (issue #18).
pub fn default_max_connections(max_sessions: usize) -> usize {
    max_sessions
        .saturating_mul(CONNECTIONS_PER_SESSION)
        .saturating_add(SPARE_CONNECTIONS)
}

/// How the HTTP server checks its clients and bounds what they may hold.
#[derive(Clone)]
pub struct HttpOptions {
    /// The token every request must carry. Required when the listener is not on a loopback
    /// address; optional (and then still enforced) on loopback.
    pub token: Option<String>,
    /// Host names or IPs accepted in `Host` and `Origin` besides `localhost`, `127.0.0.1`,
    /// `::1` and the bound IP: the names clients use to reach a server bound to `0.0.0.0`.
    pub allowed_hosts: Vec<String>,
    /// The connection cap and the header-read timeout. Give the cap room for
    /// [`CONNECTIONS_PER_SESSION`] per session ([`default_max_connections`]).
    pub serve: ServeConfig,
    /// Most sessions open at once: a new one past it closes the one idle longest.
    pub max_sessions: usize,
    /// A session without a request or a message for this long is closed.
    pub session_idle_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            token: None,
            allowed_hosts: Vec::new(),
            serve: ServeConfig {
                max_connections: default_max_connections(DEFAULT_MAX_SESSIONS),
                ..ServeConfig::default()
            },
            max_sessions: DEFAULT_MAX_SESSIONS,
            session_idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT,
        }
    }
}

/// Redacts the token.
impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allowed_hosts", &self.allowed_hosts)
            .field("serve", &self.serve)
            .field("max_sessions", &self.max_sessions)
            .field("session_idle_timeout", &self.session_idle_timeout)
            .finish()
    }
}

/// Checks that serving on `addr` with `token` is allowed: a non-loopback address needs a
/// token, and a token must not be empty or blank ([`tatbot_state::http::check_bind`]).
///
/// # Errors
///
/// [`Error::Bind`].
pub fn check_bind(addr: &SocketAddr, token: Option<&str>) -> Result<(), Error> {
    Ok(tatbot_state::http::check_bind(addr, token)?)
}

/// Serves MCP over streamable HTTP at [`MCP_PATH`] on `listener` until `shutdown` fires.
///
/// The server only reads through `manager`, so give it one that nothing else writes with (the
/// heartbeat has its own). Open `subscriptions/listen` requests and SSE streams are closed when
/// `shutdown` fires, so the graceful shutdown does not wait for clients to leave.
///
/// # Errors
///
/// [`check_bind`]'s errors for the listener's address, or an I/O error of the listener.
pub async fn serve_http(
    listener: TcpListener,
    manager: StateManager,
    config: ConfigDescription,
    options: HttpOptions,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let local_addr = listener.local_addr()?;
    check_bind(&local_addr, options.token.as_deref())?;
    let guard = Arc::new(Guard::new(local_addr.ip(), &options.allowed_hosts, options.token));
    let state = ServerState::start(Reader::new(manager), config, &shutdown).await;

    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(guard.allowed_hosts().to_vec())
        .with_max_request_body_bytes(MAX_REQUEST_BODY_BYTES)
        .with_sse_retry(Some(session::SSE_RETRY))
        .with_cancellation_token(shutdown.child_token());
    let sessions = Arc::new(Sessions::new(SessionLimits {
        max_sessions: options.max_sessions,
        idle_timeout: options.session_idle_timeout,
    }));
    let expiring = sessions.clone();
    state.spawn(|stop| async move { expiring.expire_until(stop).await });
    let service_state = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(StateServer::new(service_state.clone())),
        sessions,
        mcp_config,
    );
    let app = Router::new()
        .nest_service(MCP_PATH, service)
        .layer(middleware::from_fn(delete_answers_ok))
        .layer(middleware::from_fn(check_json))
        .layer(middleware::from_fn_with_state(guard, guard_requests))
        .layer(middleware::from_fn(security_headers));
    tracing::info!(addr = %local_addr, path = MCP_PATH, "serving MCP over HTTP");
    let served = tatbot_state::http::serve(listener, app, options.serve, shutdown.clone()).await;
    state.stop(STOP_DEADLINE).await;
    Ok(served?)
}

/// The middleware that turns rmcp's `202 Accepted` for a session `DELETE` into `200 OK`.
///
/// The session is closed by the time rmcp answers, so the termination is done, not merely
/// accepted; and the streamable HTTP transport's clients expect 200 (or 405 when a server does
/// not allow it): the Python SDK logs "Session termination failed: 202" for anything else.
async fn delete_answers_ok(request: Request, next: Next) -> Response {
    let is_delete = request.method() == Method::DELETE;
    let mut response = next.run(request).await;
    if is_delete && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::OK;
    }
    response
}

/// The middleware that answers a POSTed body that is not an MCP message with a JSON-RPC error
/// (see the module docs), and hands every other request on with its body.
async fn check_json(request: Request, next: Next) -> Response {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            let essence = value.split_once(';').map_or(value, |(essence, _)| essence);
            essence.trim().eq_ignore_ascii_case("application/json")
        });
    // rmcp answers other methods and content types itself (405, 415).
    if request.method() != Method::POST || !is_json {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Payload Too Large: request body exceeds {MAX_REQUEST_BODY_BYTES} bytes\n"),
        )
            .into_response();
    };
    if let Err(error) = json_rpc_error(&bytes) {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            error.to_string(),
        )
            .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// The JSON-RPC error response for a body that is not a client message, if it is not one.
fn json_rpc_error(body: &Bytes) -> Result<(), Value> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => {
            return Err(error_response(Value::Null, -32700, format!("Parse error: {err}")));
        }
    };
    let Err(err) = serde_json::from_value::<ClientJsonRpcMessage>(value.clone()) else {
        return Ok(());
    };
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    match value.get("method").and_then(Value::as_str) {
        Some(method) if !id.is_null() => Err(error_response(
            id,
            -32602,
            format!("Invalid params for {}: {err}", printable(method)),
        )),
        _ => Err(error_response(id, -32600, format!("Invalid Request: {err}"))),
    }
}

fn error_response(id: Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// A client's method name for an error message: at most 100 characters, control characters
/// escaped.
fn printable(text: &str) -> String {
    text.chars().take(100).flat_map(char::escape_default).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that are not JSON are a parse error without an id; JSON that is no message is an
    /// invalid request; a request whose params do not fit is invalid params with its id.
    #[test]
    fn json_rpc_errors() {
        let code = |body: &str| {
            json_rpc_error(&Bytes::from(body.to_owned()))
                .map(|()| 0)
                .unwrap_or_else(|e| e["error"]["code"].as_i64().unwrap())
        };
        assert_eq!(code("{not json"), -32700);
        assert_eq!(code(""), -32700);
        assert_eq!(code("[1, 2]"), -32600);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":4,"method":"initialize","params":7}"#),
            -32602
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), 0);
        let error = json_rpc_error(&Bytes::from_static(b"{")).unwrap_err();
        assert_eq!(error["id"], Value::Null);
        assert_eq!(error["jsonrpc"], "2.0");
    }

    /// A blank token is refused, as an empty one is.
    #[test]
    fn blank_token_is_refused() {
        let loopback: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        for blank in ["", " ", "  \t"] {
            assert!(
                matches!(check_bind(&loopback, Some(blank)), Err(Error::Bind(_))),
                "{blank:?}"
            );
        }
        assert!(check_bind(&loopback, Some("s3cret")).is_ok());
    }
}

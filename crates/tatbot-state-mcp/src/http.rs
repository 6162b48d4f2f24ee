//! Streamable HTTP: the axum app that serves MCP at [`MCP_PATH`], behind a request guard.
//!
//! rmcp's `StreamableHttpService` speaks the protocol (sessions for 2025-11 clients, stateless
//! requests for 2026-07 ones). In front of it, [`check_request`] runs on every request, before
//! rmcp sees it:
//!
//! 1. `Host` must name this machine: `localhost`, `127.0.0.1`, `::1`, the bound IP (unless it is
//!    the unspecified `0.0.0.0` / `::`), or a host the operator allowed. This defeats DNS
//!    rebinding, where a web page re-points its own name at 127.0.0.1. Otherwise 403.
//! 2. `Origin`, when present, must have one of the same hosts. Browsers send it on cross-site
//!    requests; rmcp does not check it unless told to. Otherwise 403.
//! 3. When a token is set, `Authorization: Bearer <token>` must carry it. Otherwise 401 with
//!    `WWW-Authenticate: Bearer`. A listener that is not on loopback must have a token
//!    ([`check_bind`]); that is what keeps the robot's state off the LAN by default.
//!
//! rmcp's own `Host` check is configured with the same list, as a second line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tatbot_state::StateManager;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::reader::Reader;
use crate::render::ConfigDescription;
use crate::server::{ServerState, StateServer};
use crate::session::{self, Sessions};

/// Where MCP is served.
pub const MCP_PATH: &str = "/mcp";
/// The largest request body accepted: MCP requests to a read-only server are small.
const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024;
/// How long the background tasks may take to stop once the HTTP server has.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Hosts always accepted in `Host` and `Origin`.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How the HTTP server checks its clients.
#[derive(Clone, Default)]
pub struct HttpOptions {
    /// The bearer token every request must carry. Required when the listener is not on a
    /// loopback address; optional (and then still enforced) on loopback.
    pub token: Option<String>,
    /// Host names or IPs accepted in `Host` and `Origin` besides `localhost`, `127.0.0.1`,
    /// `::1` and the bound IP: the names clients use to reach a server bound to `0.0.0.0`.
    pub allowed_hosts: Vec<String>,
}

/// Redacts the token.
impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

/// Checks that serving on `addr` with `token` is allowed: a non-loopback address needs a
/// token, and a token must not be empty.
///
/// # Errors
///
/// [`Error::TokenRequired`] or [`Error::EmptyToken`].
pub fn check_bind(addr: &SocketAddr, token: Option<&str>) -> Result<(), Error> {
    match token {
        Some("") => Err(Error::EmptyToken),
        None if !addr.ip().is_loopback() => Err(Error::TokenRequired { addr: *addr }),
        _ => Ok(()),
    }
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
    let allowed_hosts = allowed_hosts(local_addr.ip(), &options.allowed_hosts);
    let state = ServerState::start(Reader::new(manager), config, &shutdown).await;

    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts.clone())
        .with_max_request_body_bytes(MAX_REQUEST_BODY_BYTES)
        .with_sse_retry(Some(session::SSE_RETRY))
        .with_cancellation_token(shutdown.child_token());
    let sessions = Arc::new(Sessions::default());
    let expiring = sessions.clone();
    state.spawn(|stop| async move { expiring.expire_until(stop).await });
    let service_state = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(StateServer::new(service_state.clone())),
        sessions,
        mcp_config,
    );
    let guard = Arc::new(Guard {
        allowed_hosts,
        token: options.token,
    });
    let app = Router::new()
        .nest_service(MCP_PATH, service)
        .layer(middleware::from_fn_with_state(guard, check_request));
    tracing::info!(addr = %local_addr, path = MCP_PATH, "serving MCP over HTTP");
    // `into_make_service` prepares the router once; served directly, axum rebuilds its route
    // tables for every connection (2 KiB each, and a burst of clients opens hundreds).
    let served = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    state.stop(STOP_DEADLINE).await;
    Ok(served?)
}

/// The accepted hosts, lowercase, IPv6 without brackets.
fn allowed_hosts(bound: IpAddr, extra: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|host| (*host).to_owned()).collect();
    // 0.0.0.0 and :: mean "every interface", never a host a client may name: browsers have
    // treated http://0.0.0.0 as localhost, which made it a way around localhost checks.
    if !bound.is_unspecified() {
        hosts.push(bound.to_string());
    }
    hosts.extend(extra.iter().map(|host| normalize_host(host)));
    hosts.sort();
    hosts.dedup();
    hosts
}

fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// What every request is checked against.
struct Guard {
    allowed_hosts: Vec<String>,
    token: Option<String>,
}

/// Why a request was turned away.
#[derive(Debug, PartialEq, Eq)]
enum Rejection {
    /// 403: the `Host` header is missing or names another machine.
    Host(String),
    /// 403: the `Origin` header names another site.
    Origin(String),
    /// 401: the bearer token is missing or wrong.
    Unauthorized,
}

impl Guard {
    fn allows(&self, host: &str) -> bool {
        self.allowed_hosts.iter().any(|allowed| allowed == host)
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let host_name = host
            .parse::<axum::http::uri::Authority>()
            .ok()
            .map(|authority| normalize_host(authority.host()));
        if !host_name.is_some_and(|name| self.allows(&name)) {
            return Err(Rejection::Host(host.to_owned()));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let origin_host = origin
                .parse::<axum::http::Uri>()
                .ok()
                .filter(|uri| uri.scheme().is_some())
                .and_then(|uri| uri.host().map(normalize_host));
            if !origin_host.is_some_and(|name| self.allows(&name)) {
                return Err(Rejection::Origin(origin.to_owned()));
            }
        }
        if let Some(token) = &self.token {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, presented)| presented.trim());
            if !presented.is_some_and(|presented| constant_time_eq(presented.as_bytes(), token.as_bytes())) {
                return Err(Rejection::Unauthorized);
            }
        }
        Ok(())
    }
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |diff, (l, r)| diff | (l ^ r)) == 0
}

/// The middleware: answers 403 or 401 itself, or passes the request on.
async fn check_request(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(Rejection::Host(host)) => {
            tracing::warn!(host = %host, "rejected a request for another host (possible DNS rebinding)");
            (StatusCode::FORBIDDEN, "Forbidden: Host header is not allowed\n").into_response()
        }
        Err(Rejection::Origin(origin)) => {
            tracing::warn!(origin = %origin, "rejected a cross-origin request");
            (StatusCode::FORBIDDEN, "Forbidden: Origin is not allowed\n").into_response()
        }
        Err(Rejection::Unauthorized) => {
            tracing::warn!("rejected a request without the bearer token");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "Unauthorized: send Authorization: Bearer <token>\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn guard(bound: &str, token: Option<&str>) -> Guard {
        Guard {
            allowed_hosts: allowed_hosts(bound.parse().unwrap(), &["Tatbot.LAN".to_owned()]),
            token: token.map(str::to_owned),
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    /// Loopback names, the bound IP and allowed names pass as Host; anything else is refused.
    #[test]
    fn host_rules() {
        let guard = guard("192.168.1.5", None);
        for host in [
            "127.0.0.1:8000",
            "localhost",
            "[::1]:8000",
            "192.168.1.5:8000",
            "tatbot.lan:80",
        ] {
            assert_eq!(guard.check(&headers(&[(header::HOST, host)])), Ok(()), "{host}");
        }
        for host in ["evil.example:8000", "0.0.0.0:8000", "127.0.0.2"] {
            assert!(
                matches!(guard.check(&headers(&[(header::HOST, host)])), Err(Rejection::Host(_))),
                "{host}"
            );
        }
        assert!(matches!(guard.check(&HeaderMap::new()), Err(Rejection::Host(_))));
        let wildcard = self::guard("0.0.0.0", None);
        assert!(wildcard.check(&headers(&[(header::HOST, "0.0.0.0:8000")])).is_err());
    }

    /// No Origin, or one of our hosts on any scheme and port, passes; other sites and `null` do not.
    #[test]
    fn origin_rules() {
        let guard = guard("127.0.0.1", None);
        for origin in [
            "http://localhost:3000",
            "https://127.0.0.1",
            "http://[::1]:9",
            "http://tatbot.lan",
        ] {
            let request = headers(&[(header::HOST, "127.0.0.1:8000"), (header::ORIGIN, origin)]);
            assert_eq!(guard.check(&request), Ok(()), "{origin}");
        }
        for origin in [
            "http://evil.example",
            "null",
            "http://localhost.evil.example",
            "localhost",
            "garbage",
        ] {
            let request = headers(&[(header::HOST, "127.0.0.1:8000"), (header::ORIGIN, origin)]);
            assert!(matches!(guard.check(&request), Err(Rejection::Origin(_))), "{origin}");
        }
    }

    /// With a token, only `Authorization: Bearer <token>` passes.
    #[test]
    fn token_rules() {
        let guard = guard("0.0.0.0", Some("s3cret"));
        let host = (header::HOST, "127.0.0.1:8000");
        assert_eq!(
            guard.check(&headers(std::slice::from_ref(&host))),
            Err(Rejection::Unauthorized)
        );
        for wrong in ["Bearer nope", "Basic s3cret", "Bearer s3cret2", "s3cret"] {
            let request = headers(&[host.clone(), (header::AUTHORIZATION, wrong)]);
            assert_eq!(guard.check(&request), Err(Rejection::Unauthorized), "{wrong}");
        }
        for right in ["Bearer s3cret", "bearer s3cret"] {
            let request = headers(&[host.clone(), (header::AUTHORIZATION, right)]);
            assert_eq!(guard.check(&request), Ok(()), "{right}");
        }
    }

    /// Loopback needs no token; anything else does; an empty token is refused everywhere.
    #[test]
    fn bind_rules() {
        let loopback: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        let any6: SocketAddr = "[::]:8000".parse().unwrap();
        assert!(check_bind(&loopback, None).is_ok());
        assert!(check_bind(&"[::1]:8000".parse().unwrap(), None).is_ok());
        assert!(matches!(check_bind(&any, None), Err(Error::TokenRequired { .. })));
        assert!(matches!(check_bind(&any6, None), Err(Error::TokenRequired { .. })));
        assert!(check_bind(&any, Some("t")).is_ok());
        assert!(matches!(check_bind(&loopback, Some("")), Err(Error::EmptyToken)));
    }
}

//! What the dashboard (`tatbot-state-viz`) and the MCP server (`tatbot-state-mcp`) share on
//! HTTP: who may send a request ([`Guard`]) and how connections are served ([`serve`]).
//!
//! Built only with the `http` feature, so a robot linking the library does not build axum.
//!
//! # The guard
//!
//! [`guard_requests`] runs on every request before a handler sees it:
//!
//! 1. `Host` must name this machine: `localhost`, `127.0.0.1`, `::1`, the bound IP (unless it is
//!    the unspecified `0.0.0.0` / `::`), or a host the operator allowed. This defeats DNS
//!    rebinding, where a web page re-points its own name at 127.0.0.1 and then reads the
//!    robot's state with the victim's browser. Otherwise 403.
//! 2. `Origin`, when present, must have one of the same hosts. Browsers send it on cross-site
//!    requests. Otherwise 403.
//! 3. When a token is set, `Authorization` must carry it, as `Bearer <token>` (scripts, MCP
//!    clients) or as the password of `Basic` credentials with any user name (a browser asks
//!    for those itself after a `401` with a `Basic` challenge, and then sends them on every
//!    request of the page, `EventSource` included). Otherwise 401. A listener that is not on
//!    loopback must have a token ([`check_bind`]).
//!
//! [`security_headers`] adds a strict `Content-Security-Policy`, `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer` to every answer.
//!
//! # Serving
//!
//! [`serve`] is `axum::serve` with the two limits it lacks, on hyper's own options:
//!
//! - A connection must send its request head within [`ServeConfig::header_read_timeout`]
//!   (hyper's `header_read_timeout`, which also covers a kept-alive connection waiting for its
//!   next request), or it is closed. Without it a silent connection is held forever.
//! - At most [`ServeConfig::max_connections`] connections are served at once, and never more
//!   than the process's file descriptor limit allows ([`connection_budget`]). One more is
//!   answered `503` and closed at once, instead of the accept loop failing with `EMFILE` and
//!   every client, the operator's included, timing out.
//!
//! Binaries call [`raise_fd_limit`] at start, so the budget is the hard limit, not the
//! customary soft limit of 1,024.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Hosts always accepted in `Host` and `Origin`.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Most connections served at once unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_024;
/// How long a connection may take to send a request head unless configured otherwise.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept out of the connection budget: the listener, Redis connections, the
/// standard streams, files the process opens.
pub const RESERVED_FDS: u64 = 64;
/// How long the accept loop pauses after an accept error (descriptors exhausted by something
/// else in the process, say), instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// What a connection over the cap gets before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 28\r\n\r\ntoo many connections; retry\n";
/// The `Content-Security-Policy` of every answer: only this origin's scripts, styles and
/// connections, no inline script, no framing, `data:` images for the empty favicon.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Why a server may not listen where it was asked to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindError {
    /// A non-loopback address without a token.
    #[error("refusing to serve on {addr} without a token: anyone on the network could read the robot's state")]
    TokenRequired {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// A token that is empty or only whitespace.
    #[error("the token is empty or blank; give a secret of at least one visible character")]
    EmptyToken,
}

/// Checks that serving on `addr` with `token` is allowed: a non-loopback address needs a
/// token, and a token must have a visible character.
///
/// # Errors
///
/// [`BindError::TokenRequired`] or [`BindError::EmptyToken`].
pub fn check_bind(addr: &SocketAddr, token: Option<&str>) -> Result<(), BindError> {
    match token {
        // A blank token would be compared with a trimmed header value: `Bearer ` plus spaces
        // would pass, which is no secret at all.
        Some(token) if token.trim().is_empty() => Err(BindError::EmptyToken),
        None if !addr.ip().is_loopback() => Err(BindError::TokenRequired { addr: *addr }),
        _ => Ok(()),
    }
}

/// What every request is checked against; see the module docs.
pub struct Guard {
    /// Lowercase, IPv6 without brackets.
    allowed_hosts: Vec<String>,
    token: Option<String>,
    /// The `WWW-Authenticate` value of a 401.
    challenge: HeaderValue,
}

/// Why a request was turned away.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 403: the `Host` header is missing or names another machine.
    Host(String),
    /// 403: the `Origin` header names another site.
    Origin(String),
    /// 401: the token is missing or wrong.
    Unauthorized,
}

impl Guard {
    /// A guard for a server bound to `bound` that also accepts `extra_hosts` and, when given,
    /// requires `token`. A 401 challenges for a `Bearer` token.
    pub fn new(bound: IpAddr, extra_hosts: &[String], token: Option<String>) -> Guard {
        let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|host| (*host).to_owned()).collect();
        // 0.0.0.0 and :: mean "every interface", never a host a client may name: browsers have
        // treated http://0.0.0.0 as localhost, which made it a way around localhost checks.
        if !bound.is_unspecified() {
            hosts.push(bound.to_string());
        }
        hosts.extend(extra_hosts.iter().map(|host| normalize_host(host)));
        hosts.sort();
        hosts.dedup();
        Guard {
            allowed_hosts: hosts,
            token,
            challenge: HeaderValue::from_static("Bearer"),
        }
    }

    /// Challenges a 401 with `Basic` credentials instead, so that a browser asks for them (the
    /// token is the password; the user name is ignored).
    pub fn with_basic_challenge(mut self) -> Guard {
        self.challenge = HeaderValue::from_static("Basic realm=\"tatbot\", charset=\"UTF-8\"");
        self
    }

    /// The accepted hosts: lowercase, IPv6 without brackets.
    pub fn allowed_hosts(&self) -> &[String] {
        &self.allowed_hosts
    }

    fn allows(&self, host: &str) -> bool {
        self.allowed_hosts.iter().any(|allowed| allowed == host)
    }

    /// Checks one request's headers.
    ///
    /// # Errors
    ///
    /// The first rule broken, in the order of the module docs.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let host_name = host
            .parse::<axum::http::uri::Authority>()
            .ok()
            .map(|authority| normalize_host(authority.host()));
        if !host_name.is_some_and(|name| self.allows(&name)) {
            return Err(Rejection::Host(printable(host)));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let origin_host = origin
                .parse::<axum::http::Uri>()
                .ok()
                .filter(|uri| uri.scheme().is_some())
                .and_then(|uri| uri.host().map(normalize_host));
            if !origin_host.is_some_and(|name| self.allows(&name)) {
                return Err(Rejection::Origin(printable(origin)));
            }
        }
        if let Some(token) = &self.token {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(presented_token);
            if !presented.is_some_and(|presented| constant_time_eq(presented.as_bytes(), token.as_bytes())) {
                return Err(Rejection::Unauthorized);
            }
        }
        Ok(())
    }

    /// The answer to a rejected request.
    pub fn reject(&self, rejection: Rejection) -> Response {
        match rejection {
            Rejection::Host(host) => {
                tracing::warn!(host = %host, "rejected a request for another host (possible DNS rebinding)");
                (
                    StatusCode::FORBIDDEN,
                    "Forbidden: Host header is not allowed (start the server with --allow-host NAME to accept it)\n",
                )
                    .into_response()
            }
            Rejection::Origin(origin) => {
                tracing::warn!(origin = %origin, "rejected a cross-origin request");
                (StatusCode::FORBIDDEN, "Forbidden: Origin is not allowed\n").into_response()
            }
            Rejection::Unauthorized => {
                tracing::warn!("rejected a request without the token");
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, self.challenge.clone())],
                    "Unauthorized: send Authorization: Bearer <token>, or log in with any user name and the token as password\n",
                )
                    .into_response()
            }
        }
    }
}

/// The token of an `Authorization` value: `Bearer <token>`, or the password of `Basic`
/// credentials.
fn presented_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let credentials = String::from_utf8(decoded).ok()?;
    let (_, password) = credentials.split_once(':')?;
    Some(password.to_owned())
}

fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// A header value for a log line: at most 200 characters, control characters escaped.
fn printable(value: &str) -> String {
    value.chars().take(200).flat_map(char::escape_default).collect()
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |diff, (l, r)| diff | (l ^ r)) == 0
}

/// The middleware (`axum::middleware::from_fn_with_state(guard, guard_requests)`): answers
/// 403 or 401 itself, or passes the request on.
pub async fn guard_requests(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(rejection) => guard.reject(rejection),
    }
}

/// The middleware (`axum::middleware::from_fn(security_headers)`) that adds the security
/// headers of the module docs to every answer.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// How [`serve`] limits its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Most connections served at once; more are answered `503` and closed. Lowered to
    /// [`connection_budget`] when the descriptor limit is tighter.
    pub max_connections: usize,
    /// Longest a connection may take to send a request head (and a kept-alive connection
    /// to start its next one) before it is closed.
    pub header_read_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit, and returns the new
/// soft limit.
///
/// # Errors
///
/// The limit could not be read or set.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// How many connections the descriptor limit leaves room for: the soft limit less
/// [`RESERVED_FDS`] (at least one); no limit when it cannot be read.
pub fn connection_budget() -> usize {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, _)) => usize::try_from(soft.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX),
        Err(_) => usize::MAX,
    }
}

/// Serves `router` on `listener` within `config`'s limits until `shutdown` fires, then
/// waits for the open connections to finish (each handler must end its long streams on
/// `shutdown` too).
///
/// # Errors
///
/// None so far: accept errors are logged and retried. The `Result` leaves room for setup
/// errors.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let max_connections = config.max_connections.min(connection_budget()).max(1);
    if max_connections < config.max_connections {
        tracing::warn!(
            requested = config.max_connections,
            max_connections,
            "the open-file limit leaves room for fewer connections; raise `ulimit -n`"
        );
    }
    // One permit per served connection, held by its task until the connection ends.
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accepting a connection failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream, peer, max_connections);
            continue;
        };
        // Without it, a small answer written in two parts (an SSE priming event, then the
        // JSON-RPC reply) waits for the client's delayed ACK: about 40 ms per request.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
        }
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the cap with a `503` if its socket takes it at once, and closes it.
fn refuse(stream: TcpStream, peer: SocketAddr, max_connections: usize) {
    tracing::warn!(%peer, max_connections, "too many connections; refusing one");
    // A fresh socket's send buffer is empty, so this writes all of it or fails; either way
    // the connection is closed next, and nothing waits on a client that does not read.
    let _ = stream.try_write(OVER_CAPACITY);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(bound: &str, token: Option<&str>) -> Guard {
        Guard::new(
            bound.parse().unwrap(),
            &["Tatbot.LAN".to_owned()],
            token.map(str::to_owned),
        )
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

    /// With a token, only `Bearer <token>` or Basic credentials with it as password pass.
    #[test]
    fn token_rules() {
        let guard = guard("0.0.0.0", Some("s3cret"));
        let host = (header::HOST, "127.0.0.1:8000");
        assert_eq!(
            guard.check(&headers(std::slice::from_ref(&host))),
            Err(Rejection::Unauthorized)
        );
        let basic = |credentials: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            )
        };
        for wrong in [
            "Bearer nope".to_owned(),
            "Basic s3cret".to_owned(),
            "Bearer s3cret2".to_owned(),
            "s3cret".to_owned(),
            basic("s3cret:nope"),
            basic("s3cret"),
        ] {
            let request = headers(&[host.clone(), (header::AUTHORIZATION, &wrong)]);
            assert_eq!(guard.check(&request), Err(Rejection::Unauthorized), "{wrong}");
        }
        for right in [
            "Bearer s3cret".to_owned(),
            "bearer s3cret".to_owned(),
            basic("anyone:s3cret"),
            basic(":s3cret"),
        ] {
            let request = headers(&[host.clone(), (header::AUTHORIZATION, &right)]);
            assert_eq!(guard.check(&request), Ok(()), "{right}");
        }
    }

    /// Loopback needs no token; anything else does; an empty or blank token is refused everywhere.
    #[test]
    fn bind_rules() {
        let loopback: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        let any6: SocketAddr = "[::]:8000".parse().unwrap();
        assert!(check_bind(&loopback, None).is_ok());
        assert!(check_bind(&"[::1]:8000".parse().unwrap(), None).is_ok());
        assert!(matches!(check_bind(&any, None), Err(BindError::TokenRequired { .. })));
        assert!(matches!(check_bind(&any6, None), Err(BindError::TokenRequired { .. })));
        assert!(check_bind(&any, Some("t")).is_ok());
        for blank in ["", " ", "\t \n"] {
            assert_eq!(
                check_bind(&loopback, Some(blank)),
                Err(BindError::EmptyToken),
                "{blank:?}"
            );
            assert_eq!(check_bind(&any, Some(blank)), Err(BindError::EmptyToken), "{blank:?}");
        }
    }

    /// The refusal is a whole HTTP answer: its Content-Length is its body's.
    #[test]
    fn refusal_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{text}");
    }

    /// A hostile Host header is logged short and without control characters.
    #[test]
    fn rejected_values_are_printable() {
        let logged = printable(&format!("evil\u{1b}[2J{}", "x".repeat(500)));
        assert!(logged.starts_with("evil\\u{1b}[2J") && logged.len() < 220, "{logged}");
    }
}

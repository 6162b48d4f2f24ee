//! Section 8: MCP sessions over streamable HTTP, with rmcp's own client (issue #18 point 5).
//!
//! `tatbot-state mcp --transport http` is started as a child of this executable on
//! `127.0.0.1:0` (as in [`memory`](super::memory)), and then, from this process:
//!
//! 1. **One request at a time.** One rmcp session sends `ping` and reads a small resource,
//!    one request at a time: p50/p99 of each. rmcp's client reads each answer's SSE stream only
//!    up to the answer and drops it, so its HTTP client closes the connection every time: these
//!    requests each go on a new connection.
//!    Then one session on one kept-alive connection, with a minimal HTTP/1.1 client that reads
//!    each answer to its end (as `curl` or Python's `http.client` do): `initialize`,
//!    `notifications/initialized`, then `ping`s, p50/p99. The server closing that connection is
//!    an error.
//! 2. **Many sessions at once.** `sessions` clients start together; each opens a session
//!    (`initialize`, `notifications/initialized`, the standalone SSE stream that rmcp's client
//!    opens by itself), subscribes to the followed session's progress (`resources/subscribe`)
//!    and reads it (`resources/read`). The figure is the wall time until every client has done
//!    all three, with each client's own time (p50/p99). They all stay open until the last one
//!    is done, so the server holds every session and its streams at once, and then hang up.
//!    The server's peak resident set (`VmHWM`) is read then.
//!
//! Everything is bounded: a deadline for the whole section and one per request; clients that
//! fail are counted, not retried.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::future::join_all;
use rmcp::model::{ClientRequest, PingRequest, ReadResourceRequestParams, ServerResult, SubscribeRequestParams};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt as _};
use tatbot_state::{Endpoint, SessionId};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use crate::cmd::bench::memory::{self, Server};
use crate::cmd::bench::stats::Samples;

/// Deadline of the whole many-sessions step.
const SESSIONS_DEADLINE: Duration = Duration::from_secs(120);
/// Deadline of one request of the kept-alive step.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests of each kind timed on the kept-alive connection, after as many untimed.
const KEPT_ALIVE_REQUESTS: usize = 200;
/// The largest answer the kept-alive client reads.
const MAX_BODY: usize = 1 << 20;
/// The MCP protocol revision of the kept-alive client (the session model of 2025-11).
const MCP_PROTOCOL: &str = "2025-11-25";

/// What the section measured.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    /// Sessions that were started together.
    pub started: usize,
    /// Those that initialized, subscribed and read within the deadline.
    pub completed: usize,
    /// Wall time from the start until the last of them had read, ms.
    pub wall_ms: f64,
    /// One session's own time (initialize, subscribe, read), p50 and p99, ms.
    pub session_p50_ms: Option<f64>,
    /// See `session_p50_ms`.
    pub session_p99_ms: Option<f64>,
    /// The first failure of a session, if any, on one line.
    pub first_error: Option<String>,
    /// The server's peak resident set once every session was open, MiB.
    pub peak_rss_mb: Option<f64>,
    /// `ping` on a kept-alive connection, p50 and p99, ms.
    pub ping_p50_ms: Option<f64>,
    /// See `ping_p50_ms`.
    pub ping_p99_ms: Option<f64>,
    /// `ping` from rmcp's client (a new connection each), p50 and p99, ms.
    pub rmcp_ping_p50_ms: Option<f64>,
    /// See `rmcp_ping_p50_ms`.
    pub rmcp_ping_p99_ms: Option<f64>,
    /// `resources/read` of `state://status` from rmcp's client, p50 and p99, ms.
    pub read_p50_ms: Option<f64>,
    /// See `read_p50_ms`.
    pub read_p99_ms: Option<f64>,
}

/// Starts the MCP server against `endpoint`, runs both steps with `sessions` clients following
/// `session`, and stops the server.
///
/// # Errors
///
/// The server did not start, or the kept-alive session could not be opened.
pub async fn measure(endpoint: &Endpoint, session: &SessionId, sessions: usize) -> anyhow::Result<Sessions> {
    // The clients hold two connections per session, in this process.
    crate::cmd::mcp::raise_fd_limit();
    let mut running = memory::start(Server::Mcp, endpoint).await?;
    let outcome = async {
        let mut report = Sessions::default();
        one_at_a_time(running.addr, &mut report).await?;
        kept_alive(running.addr, &mut report).await?;
        many_sessions(running.addr, session, sessions, &mut report).await;
        report.peak_rss_mb = Some(memory::read_memory(running.pid)?.hwm);
        Ok(report)
    }
    .await;
    running.stop().await;
    outcome
}

/// Step 2; see the module docs.
async fn many_sessions(addr: SocketAddr, session: &SessionId, sessions: usize, report: &mut Sessions) {
    let uri = format!("state://stroke/progress/{session}");
    // Every client waits here once done, so that all sessions are open at once until the last.
    let done = Arc::new(Barrier::new(sessions + 1));
    let start = Instant::now();
    let clients = (0..sessions).map(|_| {
        let uri = uri.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let opened = Instant::now();
            let outcome = tokio::time::timeout(SESSIONS_DEADLINE, open_subscribe_read(addr, &uri)).await;
            let elapsed = opened.elapsed();
            let outcome = match outcome {
                Ok(Ok(client)) => Ok((client, elapsed)),
                Ok(Err(err)) => Err(format!("{err:#}")),
                Err(_) => Err(format!("not done within {} s", SESSIONS_DEADLINE.as_secs())),
            };
            // Failed clients wait too: the barrier counts every client.
            done.wait().await;
            outcome
        })
    });
    let clients: Vec<_> = clients.collect();
    done.wait().await;
    let wall = start.elapsed();
    let mut times = Samples::with_capacity(sessions);
    let mut open = Vec::with_capacity(sessions);
    let mut first_error = None;
    for outcome in join_all(clients).await {
        match outcome {
            Ok(Ok((client, elapsed))) => {
                times.push(elapsed);
                open.push(client);
            }
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            Err(err) => {
                first_error.get_or_insert(format!("bug: a client task failed: {err}"));
            }
        }
    }
    let completed = open.len();
    // Hang up together, each with a bounded wait.
    join_all(open.into_iter().map(|client| async move {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.cancel()).await;
    }))
    .await;
    report.started = sessions;
    report.completed = completed;
    report.wall_ms = wall.as_secs_f64() * 1000.0;
    report.session_p50_ms = ms(times.percentile_us(0.5));
    report.session_p99_ms = ms(times.percentile_us(0.99));
    report.first_error = first_error;
}

/// One client: a session, a subscription to `uri`, a read of it.
async fn open_subscribe_read(addr: SocketAddr, uri: &str) -> anyhow::Result<RunningService<RoleClient, ()>> {
    let client = connect(addr).await?;
    #[expect(deprecated, reason = "resources/subscribe is the 2025-11 session model benched here")]
    client
        .subscribe(SubscribeRequestParams::new(uri))
        .await
        .context("resources/subscribe")?;
    client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .context("resources/read")?;
    Ok(client)
}

/// A session with rmcp's streamable HTTP client.
async fn connect(addr: SocketAddr) -> anyhow::Result<RunningService<RoleClient, ()>> {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("http://{addr}/mcp"));
    let transport = StreamableHttpClientTransport::from_config(config);
    ().serve(transport).await.context("initialize")
}

/// Step 1 with rmcp's client; see the module docs.
async fn one_at_a_time(addr: SocketAddr, report: &mut Sessions) -> anyhow::Result<()> {
    let client = tokio::time::timeout(REQUEST_TIMEOUT, connect(addr))
        .await
        .context("the kept-alive session did not open in time")??;
    let outcome = async {
        let mut pings = Samples::with_capacity(KEPT_ALIVE_REQUESTS);
        let mut reads = Samples::with_capacity(KEPT_ALIVE_REQUESTS);
        for round in 0..2 * KEPT_ALIVE_REQUESTS {
            let started = Instant::now();
            let answer = tokio::time::timeout(
                REQUEST_TIMEOUT,
                client.send_request(ClientRequest::PingRequest(PingRequest::default())),
            )
            .await
            .context("ping timed out")?
            .context("ping")?;
            let ping = started.elapsed();
            anyhow::ensure!(
                matches!(answer, ServerResult::EmptyResult(_)),
                "ping: unexpected answer {answer:?}"
            );
            let started = Instant::now();
            tokio::time::timeout(
                REQUEST_TIMEOUT,
                client.read_resource(ReadResourceRequestParams::new("state://status")),
            )
            .await
            .context("resources/read timed out")?
            .context("resources/read of state://status")?;
            let read = started.elapsed();
            if round >= KEPT_ALIVE_REQUESTS {
                pings.push(ping);
                reads.push(read);
            }
        }
        report.rmcp_ping_p50_ms = ms(pings.percentile_us(0.5));
        report.rmcp_ping_p99_ms = ms(pings.percentile_us(0.99));
        report.read_p50_ms = ms(reads.percentile_us(0.5));
        report.read_p99_ms = ms(reads.percentile_us(0.99));
        Ok(())
    }
    .await;
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.cancel()).await;
    outcome
}

/// Step 1 on one kept-alive connection; see the module docs.
async fn kept_alive(addr: SocketAddr, report: &mut Sessions) -> anyhow::Result<()> {
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let mut connection = BufReader::new(stream);
    let initialize = format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{MCP_PROTOCOL}","capabilities":{{}},"clientInfo":{{"name":"bench","version":"1"}}}}}}"#
    );
    let (head, _) = exchange(&mut connection, addr, None, &initialize).await?;
    let session = head.session.context("the initialize answer has no mcp-session-id")?;
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    exchange(&mut connection, addr, Some(&session), initialized).await?;
    let mut pings = Samples::with_capacity(KEPT_ALIVE_REQUESTS);
    for id in 1..=2 * KEPT_ALIVE_REQUESTS {
        let ping = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        let started = Instant::now();
        let (_, body) = exchange(&mut connection, addr, Some(&session), &ping).await?;
        let elapsed = started.elapsed();
        let answer = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
        anyhow::ensure!(body.contains(&answer), "ping {id}: unexpected answer {body:?}");
        if id > KEPT_ALIVE_REQUESTS {
            pings.push(elapsed);
        }
    }
    report.ping_p50_ms = ms(pings.percentile_us(0.5));
    report.ping_p99_ms = ms(pings.percentile_us(0.99));
    Ok(())
}

/// What [`exchange`] needs of an answer's head.
struct Head {
    /// `mcp-session-id`, if sent.
    session: Option<String>,
}

/// POSTs `body` to `/mcp` on `connection` and reads the whole answer (chunked or with a
/// length), leaving the connection ready for the next request; gives the head and the body.
async fn exchange(
    connection: &mut BufReader<TcpStream>,
    addr: SocketAddr,
    session: Option<&str>,
    body: &str,
) -> anyhow::Result<(Head, String)> {
    let session_header = session.map_or_else(String::new, |id| {
        format!("Mcp-Session-Id: {id}\r\nMcp-Protocol-Version: {MCP_PROTOCOL}\r\n")
    });
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{session_header}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        connection.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        connection.read_line(&mut line).await?;
        anyhow::ensure!(!line.is_empty(), "the server closed the kept-alive connection");
        anyhow::ensure!(
            line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.1 202"),
            "answered {}",
            line.trim_end()
        );
        let (mut chunked, mut length, mut head) = (false, 0usize, Head { session: None });
        loop {
            line.clear();
            connection.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "content-length" => length = value.parse().context("content-length")?,
                "mcp-session-id" => head.session = Some(value.to_owned()),
                "connection" => {
                    anyhow::ensure!(!value.eq_ignore_ascii_case("close"), "the server closes the connection")
                }
                _ => {}
            }
        }
        let mut body = Vec::new();
        if !chunked {
            anyhow::ensure!(length <= MAX_BODY, "an answer of {length} bytes");
            body.resize(length, 0);
            connection.read_exact(&mut body).await?;
            return Ok((head, String::from_utf8_lossy(&body).into_owned()));
        }
        loop {
            line.clear();
            connection.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or_default(), 16)
                .with_context(|| format!("a chunk size {:?}", line.trim_end()))?;
            anyhow::ensure!(body.len() + size <= MAX_BODY, "an answer over {MAX_BODY} bytes");
            let start = body.len();
            body.resize(start + size + 2, 0);
            connection.read_exact(&mut body[start..]).await?;
            body.truncate(start + size);
            if size == 0 {
                return Ok((head, String::from_utf8_lossy(&body).into_owned()));
            }
        }
    })
    .await
    .context("the kept-alive request timed out")?
}

/// Microseconds to milliseconds.
fn ms(us: Option<f64>) -> Option<f64> {
    us.map(|us| us / 1000.0)
}

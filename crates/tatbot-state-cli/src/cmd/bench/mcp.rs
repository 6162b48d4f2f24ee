//! Section 8: MCP sessions over streamable HTTP, with rmcp's own client (issue #18 point 5).
//!
//! `tatbot-state mcp --transport http` is started as a child of this executable on
//! `127.0.0.1:0` (as in [`memory`](super::memory)), and then, from this process:
//!
//! 1. **A kept-alive connection.** One session sends `ping` and reads a small resource, one
//!    request at a time, on the connection its HTTP client keeps alive: p50/p99 of each.
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
use tokio::sync::Barrier;

use crate::cmd::bench::memory::{self, Server};
use crate::cmd::bench::stats::Samples;

/// Deadline of the whole many-sessions step.
const SESSIONS_DEADLINE: Duration = Duration::from_secs(120);
/// Deadline of one request of the kept-alive step.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests of each kind timed on the kept-alive connection, after as many untimed.
const KEPT_ALIVE_REQUESTS: usize = 200;

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
    /// `resources/read` of `state://status` on a kept-alive connection, p50 and p99, ms.
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

/// Step 1; see the module docs.
async fn kept_alive(addr: SocketAddr, report: &mut Sessions) -> anyhow::Result<()> {
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
        report.ping_p50_ms = ms(pings.percentile_us(0.5));
        report.ping_p99_ms = ms(pings.percentile_us(0.99));
        report.read_p50_ms = ms(reads.percentile_us(0.5));
        report.read_p99_ms = ms(reads.percentile_us(0.99));
        Ok(())
    }
    .await;
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.cancel()).await;
    outcome
}

/// Microseconds to milliseconds.
fn ms(us: Option<f64>) -> Option<f64> {
    us.map(|us| us / 1000.0)
}

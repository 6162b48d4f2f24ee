//! Section 6: peak memory of `tatbot-state mcp --transport http` and `tatbot-state viz` with
//! many clients following a running session.
//!
//! Each server is started as a child process of this executable on `127.0.0.1:0` (its address
//! is read from the line it prints when it listens), pointed at the benched Redis. Clients
//! then connect from this process: for viz, one SSE stream each on `/api/stream`; for MCP, one
//! session each (`initialize`, the standalone SSE stream of `GET /mcp`, and
//! `resources/subscribe` to the running session's progress). While a producer updates that
//! session, the clients hold on for a while; then the server's peak resident set (`VmHWM` in
//! `/proc/<pid>/status`, the kernel's high-water mark) is read, the clients hang up and the
//! server gets SIGTERM (SIGKILL after a deadline; `kill_on_drop` covers early returns).
//!
//! The clients are a deliberately small HTTP/1.1 implementation over loopback TCP, enough for
//! these two servers: requests with `Connection: close` read to the end, streams are drained
//! and scanned for one marker. It is not a general HTTP client.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::join_all;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tatbot_state::{Endpoint, NodeId, SessionId, keys};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::cmd::server::link;

/// How long a server gets to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one client request (connect, send, whole answer) or stream opening.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer a client reads to the end.
const MAX_BODY: u64 = 1 << 20;
/// How long a server that announced its address gets before its idle memory is read.
const SETTLE: Duration = Duration::from_millis(500);
/// The MCP protocol revision the clients speak (the subscribe model of 2025-11).
const MCP_PROTOCOL: &str = "2025-11-25";

/// What one server used.
#[derive(Debug, Clone, Copy)]
pub struct Peak {
    /// Resident set once listening, before any client (`VmRSS`), MiB.
    pub idle_mb: f64,
    /// Peak resident set (`VmHWM`), MiB.
    pub hwm_mb: f64,
    /// Resident set at the end of the hold (`VmRSS`), MiB.
    pub rss_mb: f64,
    /// Its anonymous part (`RssAnon`: heap and stacks, not the mapped binary), MiB.
    pub anon_mb: f64,
    /// The anonymous part before any client, MiB.
    pub idle_anon_mb: f64,
    /// Clients the server accepted (a stream open, for MCP also subscribed).
    pub connected: usize,
    /// Clients that received at least one update while holding.
    pub updated: usize,
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// `tatbot-state mcp --transport http`.
    Mcp,
    /// `tatbot-state viz`.
    Viz,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Mcp => "mcp",
            Server::Viz => "viz",
        }
    }
}

/// Starts `server` against `endpoint`, connects `clients` clients following `session`, holds
/// for `hold`, and returns the peak memory.
///
/// # Errors
///
/// The server did not start or print its address in time, or `/proc` has no status for it.
/// Clients that fail to connect are counted, not errors.
pub async fn measure(
    server: Server,
    endpoint: &Endpoint,
    session: &SessionId,
    clients: usize,
    hold: Duration,
) -> anyhow::Result<Peak> {
    let mut running = start(server, endpoint).await?;
    let (addr, pid) = (running.addr, running.pid);
    let outcome = async {
        tokio::time::sleep(SETTLE).await;
        let idle = read_memory(pid)?;
        let streams: Vec<Option<ClientStream>> = match server {
            Server::Viz => join_all((0..clients).map(|_| open_viz_stream(addr))).await,
            Server::Mcp => join_all((0..clients).map(|index| open_mcp_session(addr, index, session))).await,
        };
        let connected = streams.iter().flatten().count();
        tokio::time::sleep(hold).await;
        let held = read_memory(pid)?;
        let updated = streams
            .iter()
            .flatten()
            .filter(|stream| stream.updated.load(Ordering::Relaxed))
            .count();
        // Dropping the streams hangs up before the server is stopped.
        drop(streams);
        Ok(Peak {
            idle_mb: idle.rss,
            idle_anon_mb: idle.anon,
            hwm_mb: held.hwm,
            rss_mb: held.rss,
            anon_mb: held.anon,
            connected,
            updated,
        })
    }
    .await;
    running.stop().await;
    outcome
}

/// A server started by [`start`]; [`Running::stop`] stops it (and dropping it kills it).
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id, for `/proc` and signals.
    pub pid: u32,
    /// The process; `kill_on_drop`, so an early return does not leave it running.
    child: Child,
}

impl Running {
    /// SIGTERM, a bounded wait, then SIGKILL.
    pub async fn stop(&mut self) {
        stop(&mut self.child, self.pid).await;
    }
}

/// Starts `server` against `endpoint` on `127.0.0.1:0` and waits until it says where it listens.
///
/// # Errors
///
/// The server did not start, or did not print its address within [`STARTUP_TIMEOUT`].
pub async fn start(server: Server, endpoint: &Endpoint) -> anyhow::Result<Running> {
    let exe = std::env::current_exe().context("finding this executable to start the server")?;
    let mut child = spawn(&exe, server, endpoint)?;
    let pid = child
        .id()
        .context("bug: the server child has no pid right after spawning")?;
    let addr = tokio::time::timeout(STARTUP_TIMEOUT, announced_address(&mut child, server))
        .await
        .with_context(|| {
            format!(
                "{} printed no address within {} s",
                server.name(),
                STARTUP_TIMEOUT.as_secs()
            )
        })??;
    Ok(Running { addr, pid, child })
}

/// The node ids the servers run as; the MCP server sends heartbeats as its node.
const NODES: [&str; 2] = ["bench-mcp", "bench-viz"];

/// Removes what the servers' heartbeats left (the heartbeat key and the registry entry), so a
/// given server does not list the bench's nodes. Failures are only logged.
pub async fn forget_nodes(endpoint: &Endpoint) {
    let forget = async {
        let mut connection = link::connect(endpoint, REQUEST_TIMEOUT).await?;
        for node in NODES {
            let Ok(node_id) = NodeId::new(node) else { continue };
            let mut pipe = redis::pipe();
            pipe.unlink(keys::health(&node_id))
                .ignore()
                .zrem(keys::NODE_REGISTRY, node)
                .ignore();
            link::within(REQUEST_TIMEOUT, pipe.query_async::<()>(&mut connection)).await?;
        }
        Ok::<(), redis::RedisError>(())
    };
    if let Err(err) = forget.await {
        tracing::warn!(error = %err, "cannot remove the bench servers' heartbeats");
    }
}

/// Starts the server on `127.0.0.1:0` for `endpoint`, with only the credentials we pass.
fn spawn(exe: &Path, server: Server, endpoint: &Endpoint) -> anyhow::Result<Child> {
    let mut command = Command::new(exe);
    command.args(["-h", &endpoint.host, "-p", &endpoint.port.to_string()]);
    command.args(["--user", endpoint.username.as_deref().unwrap_or("")]);
    // Settings from the environment or the machine's files must not mix in: REDIS_* is
    // removed, the password comes by environment (never argv) and "" means none.
    for var in [
        "REDIS_URL",
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_PASSWORD",
        "REDIS_USERNAME",
    ] {
        command.env_remove(var);
    }
    match &endpoint.password {
        Some(password) => command.env("REDIS_PASSWORD", password),
        None => command.args(["-a", ""]),
    };
    match server {
        Server::Mcp => command.args(["--node-id", NODES[0], "mcp", "--transport", "http"]),
        Server::Viz => command.args(["--node-id", NODES[1], "viz"]),
    };
    command
        .args(["--bind", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), server.name()))
}

/// Reads the address the server announces (viz: first stdout line; MCP: a stderr line), then
/// keeps draining both pipes so the server never blocks on a full one.
async fn announced_address(child: &mut Child, server: Server) -> anyhow::Result<SocketAddr> {
    let stdout = child.stdout.take().context("bug: stdout is not piped")?;
    let stderr = child.stderr.take().context("bug: stderr is not piped")?;
    let (mut announcing, other): (Box<dyn AsyncRead + Unpin + Send>, Box<dyn AsyncRead + Unpin + Send>) = match server {
        Server::Viz => (Box::new(stdout), Box::new(stderr)),
        Server::Mcp => (Box::new(stderr), Box::new(stdout)),
    };
    tokio::spawn(drain(other));
    let mut reader = BufReader::new(&mut announcing);
    let mut line = String::new();
    let mut last = String::new();
    let addr = loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .await
            .context("reading the server's output")?
            == 0
        {
            let last = if last.is_empty() { "no output" } else { last.as_str() };
            anyhow::bail!("{} exited before listening: {last}", server.name());
        }
        if let Some(addr) = address_in(&line) {
            break addr;
        }
        line.trim().clone_into(&mut last);
    };
    // Lines the reader buffered past the address are log lines; losing them is harmless.
    drop(reader);
    tokio::spawn(drain(announcing));
    Ok(addr)
}

/// Reads and discards everything.
async fn drain(mut pipe: Box<dyn AsyncRead + Unpin + Send>) {
    let mut buffer = [0u8; 4096];
    while matches!(pipe.read(&mut buffer).await, Ok(n) if n > 0) {}
}

/// The `host:port` after `http://` in a line, if any.
fn address_in(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("http://")?;
    rest.split(['/', ' ']).next()?.trim().parse().ok()
}

/// Memory of a process, MiB, from `/proc/<pid>/status`.
pub struct Memory {
    /// `VmHWM`: the peak resident set.
    pub hwm: f64,
    /// `VmRSS`: the resident set now.
    rss: f64,
    /// `RssAnon`: its anonymous part.
    anon: f64,
}

pub fn read_memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}: is this Linux?"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))?;
        Ok(kib / 1024.0)
    };
    Ok(Memory {
        hwm: field("VmHWM:")?,
        rss: field("VmRSS:")?,
        anon: field("RssAnon:")?,
    })
}

/// SIGTERM, a bounded wait, then SIGKILL.
async fn stop(child: &mut Child, pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        // The child is not reaped yet, so the pid is still its own; ESRCH means it exited.
        let _ = signal::kill(Pid::from_raw(raw), Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
        tracing::warn!(pid, "the server ignored SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

/// An answer's status line and headers (names lowercased).
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Sends one request and reads the answer's head.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(Head, BufReader<TcpStream>)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        text.push_str(name);
        text.push_str(": ");
        text.push_str(value);
        text.push_str("\r\n");
    }
    if !body.is_empty() {
        text.push_str("Content-Type: application/json\r\nContent-Length: ");
        text.push_str(&body.len().to_string());
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).await.context("sending a request")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.context("reading the status line")?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", line.trim()))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.context("reading headers")? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    Ok((Head { status, headers }, reader))
}

/// A request with `Connection: close` whose whole answer is read; fails unless the status is
/// `expect`.
async fn exchange(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &str,
    expect: u16,
) -> anyhow::Result<(Head, String)> {
    let mut all = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    let (head, reader) = request(addr, "POST", "/mcp", &all, body).await?;
    let mut text = String::new();
    reader
        .take(MAX_BODY)
        .read_to_string(&mut text)
        .await
        .context("reading an answer")?;
    if head.status != expect {
        anyhow::bail!("HTTP {} to {body}: {}", head.status, text.trim());
    }
    Ok((head, text))
}

/// A client's open stream, read by a task of its own; dropping it hangs up.
struct ClientStream {
    /// Reads the stream until it ends; aborted on drop, which closes the connection.
    task: JoinHandle<()>,
    /// Set by the task once the stream carried an update.
    updated: Arc<AtomicBool>,
}

impl ClientStream {
    /// Starts reading `reader`, watching for `marker`.
    fn watch(reader: BufReader<TcpStream>, marker: &'static [u8]) -> ClientStream {
        let updated = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(read_stream(reader, marker, updated.clone()));
        ClientStream { task, updated }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a stream to its end, setting `seen` once `marker` appeared in it.
async fn read_stream(mut reader: BufReader<TcpStream>, marker: &'static [u8], seen: Arc<AtomicBool>) {
    let mut buffer = vec![0u8; 8192];
    // The tail of what was read, so a marker split between two reads is still found.
    let mut window: Vec<u8> = Vec::new();
    while let Ok(n) = reader.read(&mut buffer).await
        && n > 0
    {
        if seen.load(Ordering::Relaxed) {
            continue;
        }
        window.extend_from_slice(&buffer[..n]);
        if window.windows(marker.len()).any(|part| part == marker) {
            seen.store(true, Ordering::Relaxed);
        }
        let keep = marker.len().saturating_sub(1).min(window.len());
        window.drain(..window.len() - keep);
    }
}

/// Opens one dashboard stream; `None` when the server refused it (it caps open streams).
async fn open_viz_stream(addr: SocketAddr) -> Option<ClientStream> {
    let opening = request(addr, "GET", "/api/stream", &[("Accept", "text/event-stream")], "");
    let (head, reader) = tokio::time::timeout(REQUEST_TIMEOUT, opening).await.ok()?.ok()?;
    if head.status != 200 {
        return None;
    }
    Some(ClientStream::watch(reader, b"event: change"))
}

/// Opens one MCP session that subscribes to `session`'s progress; `None` when any step failed.
async fn open_mcp_session(addr: SocketAddr, index: usize, session: &SessionId) -> Option<ClientStream> {
    match tokio::time::timeout(REQUEST_TIMEOUT, mcp_session(addr, index, session)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            tracing::debug!(error = %format!("{err:#}"), "an MCP client could not follow");
            None
        }
        Err(_) => None,
    }
}

async fn mcp_session(addr: SocketAddr, index: usize, session: &SessionId) -> anyhow::Result<ClientStream> {
    const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");
    let initialize = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": MCP_PROTOCOL, "capabilities": {},
            "clientInfo": {"name": format!("tatbot-bench-{index}"), "version": env!("CARGO_PKG_VERSION")},
        },
    });
    let (head, _) = exchange(addr, &[ACCEPT], &initialize.to_string(), 200).await?;
    let id = head
        .header("mcp-session-id")
        .context("the initialize answer has no Mcp-Session-Id")?
        .to_owned();
    let session_headers = [
        ACCEPT,
        ("Mcp-Session-Id", id.as_str()),
        ("MCP-Protocol-Version", MCP_PROTOCOL),
    ];
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    exchange(addr, &session_headers, initialized, 202).await?;

    let stream_headers = [
        ("Accept", "text/event-stream"),
        ("Mcp-Session-Id", id.as_str()),
        ("MCP-Protocol-Version", MCP_PROTOCOL),
    ];
    let (head, reader) = request(addr, "GET", "/mcp", &stream_headers, "").await?;
    if head.status != 200 {
        anyhow::bail!("GET /mcp answered HTTP {}", head.status);
    }
    let stream = ClientStream::watch(reader, b"notifications/resources/updated");

    let uri = format!("state://stroke/progress/{session}");
    let subscribe = serde_json::json!({
        "jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": uri},
    });
    exchange(addr, &session_headers, &subscribe.to_string(), 200).await?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The addresses the two servers print are found; other lines give none.
    #[test]
    fn finds_announced_addresses() {
        assert_eq!(
            address_in("http://127.0.0.1:41234/\n"),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(
            address_in("serving MCP on http://127.0.0.1:8000/mcp for Redis at 127.0.0.1:6379; Ctrl-C to stop"),
            Some("127.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(address_in("WARN something else"), None);
    }
}

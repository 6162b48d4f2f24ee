//! The streamable HTTP session model (2025-11) over raw HTTP/1.1, against
//! [`tatbot_state_mcp::serve_http`] on port 0: what rmcp's client hides (event ids, priming
//! events, which stream carries what, `DELETE`), checked on the wire.
//!
//! The client here is deliberately small: one request per connection (`Connection: close`),
//! chunked bodies decoded, SSE events split on blank lines. It is not a general HTTP client.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tatbot_state::{CancellationToken, ProgressUpdate, SessionPlan};
use tatbot_state_mcp::{ConfigDescription, HttpOptions, serve_http};
use tatbot_state_testkit::RedisServer;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::{DEADLINE, manager};

/// The protocol revision of the session model.
pub(crate) const PROTOCOL: &str = "2025-11-25";

/// A session answers each request on that request's POST stream (a priming event, then the
/// answer, both numbered `index/stream`), sends its notifications on the GET stream numbered
/// from 0 after rmcp's priming event, and is gone after `DELETE`: its GET stream ends and its
/// id is answered 404.
#[tokio::test]
async fn session_streams_and_delete() {
    let redis = RedisServer::start();
    let robot = manager(&redis, "hog").await;
    let stroke_session = robot
        .start_stroke_session(&SessionPlan {
            total_strokes: 2,
            stroke_length: 2,
            scene: "demo".into(),
        })
        .await
        .unwrap();
    let (addr, _stop) = serve(&redis).await;

    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    });
    let mut answer = request(addr, "POST", None, Some(&initialize)).await;
    assert_eq!(answer.status, 200);
    let session = answer.header("mcp-session-id").expect("a session id").to_owned();
    let events = answer.events().await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[0].id.as_deref(), events[0].retry), (Some("0"), Some(3000)));
    assert_eq!(events[1].json()["result"]["protocolVersion"], PROTOCOL);

    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        request(addr, "POST", Some(&session), Some(&initialized)).await.status,
        202
    );

    let mut standalone = request(addr, "GET", Some(&session), None).await;
    assert_eq!(standalone.status, 200);
    let priming = standalone.next_event().await.expect("rmcp's priming event");
    assert_eq!((priming.id.as_deref(), priming.retry), (Some("0"), Some(3000)));

    let progress_uri = format!("state://stroke/progress/{stroke_session}");
    let subscribe = json!({
        "jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": progress_uri},
    });
    let mut answer = request(addr, "POST", Some(&session), Some(&subscribe)).await;
    assert_eq!(answer.status, 200);
    let events = answer.events().await;
    let ids: Vec<&str> = events.iter().filter_map(|event| event.id.as_deref()).collect();
    let stream = ids
        .first()
        .and_then(|id| id.strip_prefix("0/"))
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(ids, [format!("0/{stream}"), format!("1/{stream}")]);
    assert_eq!(events[1].json(), json!({"jsonrpc": "2.0", "id": 2, "result": {}}));

    robot
        .update_stroke_progress(&stroke_session, &ProgressUpdate::new(1, 1))
        .await
        .unwrap();
    let notification = standalone.next_event().await.expect("a notification on the GET stream");
    assert_eq!(notification.id.as_deref(), Some("0"));
    assert_eq!(
        notification.json(),
        json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": progress_uri}})
    );

    // Issue #13 point 6: 200, as the Python SDK expects (it logs "Session termination
    // failed: 202" for rmcp's 202).
    assert_eq!(request(addr, "DELETE", Some(&session), None).await.status, 200);
    assert!(
        standalone.next_event().await.is_none(),
        "the GET stream ends with the session"
    );
    assert_eq!(
        request(addr, "POST", Some(&session), Some(&subscribe)).await.status,
        404
    );
}

/// Serves MCP over HTTP in this process on a free port; the guard stops it.
async fn serve(redis: &RedisServer) -> (SocketAddr, tokio_util::sync::DropGuard) {
    serve_with(redis, HttpOptions::default()).await
}

/// [`serve`] with `options`.
pub(crate) async fn serve_with(redis: &RedisServer, options: HttpOptions) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ConfigDescription {
        target: format!("{}:{} (no password)", redis.host(), redis.port()),
        fields: Vec::new(),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_http(
        listener,
        manager(redis, "mcp").await,
        config,
        options,
        shutdown.clone(),
    ));
    (addr, shutdown.drop_guard())
}

/// An answer whose head has been read; its body is read on demand.
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Body bytes read but not yet parsed into events.
    unparsed: Vec<u8>,
}

/// One SSE event.
#[derive(Debug)]
pub(crate) struct Event {
    id: Option<String>,
    retry: Option<u64>,
    pub(crate) data: String,
}

impl Event {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|err| panic!("{err}: {:?}", self.data))
    }
}

/// Sends one request with the headers an MCP client sends and reads the answer's head.
pub(crate) async fn request(addr: SocketAddr, method: &str, session: Option<&str>, body: Option<&Value>) -> Answer {
    let body = body.map(Value::to_string).unwrap_or_default();
    request_raw(addr, method, session, &body).await
}

/// [`request`] with a body of any bytes (empty for none), JSON or not.
pub(crate) async fn request_raw(addr: SocketAddr, method: &str, session: Option<&str>, body: &str) -> Answer {
    tokio::time::timeout(DEADLINE, send(addr, method, session, body))
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within {DEADLINE:?}"))
}

async fn send(addr: SocketAddr, method: &str, session: Option<&str>, body: &str) -> Answer {
    let accept = if method == "GET" {
        "text/event-stream"
    } else {
        "application/json, text/event-stream"
    };
    let mut text = format!("{method} /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: {accept}\r\n");
    if let Some(session) = session {
        text.push_str(&format!(
            "Mcp-Session-Id: {session}\r\nMCP-Protocol-Version: {PROTOCOL}\r\n"
        ));
    }
    if !body.is_empty() {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.unwrap() == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    Answer {
        status,
        headers,
        reader,
        chunked,
        unparsed: Vec::new(),
    }
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The next SSE event, `None` once the body ended; at most [`DEADLINE`].
    async fn next_event(&mut self) -> Option<Event> {
        tokio::time::timeout(DEADLINE, self.read_event())
            .await
            .unwrap_or_else(|_| panic!("no event and no end within {DEADLINE:?}"))
    }

    /// The whole body as text (not for SSE streams, which do not end).
    pub(crate) async fn body(&mut self) -> String {
        let mut body = std::mem::take(&mut self.unparsed);
        while let Some(bytes) = tokio::time::timeout(DEADLINE, self.read_body())
            .await
            .unwrap_or_else(|_| panic!("no end of the body within {DEADLINE:?}"))
        {
            body.extend_from_slice(&bytes);
        }
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Every event until the body ends.
    pub(crate) async fn events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event().await {
            events.push(event);
        }
        events
    }

    async fn read_event(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.unparsed.windows(2).position(|pair| pair == b"\n\n") {
                let block: Vec<u8> = self.unparsed.drain(..end + 2).collect();
                if let Some(event) = parse_event(&String::from_utf8_lossy(&block)) {
                    return Some(event);
                }
                continue;
            }
            let bytes = self.read_body().await?;
            self.unparsed.extend_from_slice(&bytes);
        }
    }

    /// The next piece of the body (one chunk when chunked), `None` at its end.
    async fn read_body(&mut self) -> Option<Vec<u8>> {
        if !self.chunked {
            let mut buffer = vec![0u8; 4096];
            let n = self.reader.read(&mut buffer).await.ok()?;
            buffer.truncate(n);
            return (n > 0).then_some(buffer);
        }
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line).await.ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or_else(|_| panic!("chunk size {size_line:?}"));
        if size == 0 {
            return None;
        }
        let mut chunk = vec![0u8; size + 2];
        self.reader.read_exact(&mut chunk).await.ok()?;
        chunk.truncate(size);
        Some(chunk)
    }
}

/// An SSE event from its lines; `None` for a comment-only block (a keep-alive).
fn parse_event(block: &str) -> Option<Event> {
    let mut event = Event {
        id: None,
        retry: None,
        data: String::new(),
    };
    let mut any = false;
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => event.id = Some(value.to_owned()),
            "retry" => event.retry = value.parse().ok(),
            "data" => event.data.push_str(value),
            _ => continue,
        }
        any = true;
    }
    any.then_some(event)
}

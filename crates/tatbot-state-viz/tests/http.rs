//! A minimal HTTP/1.0 client over TCP: enough for JSON requests and reading an SSE stream.
//!
//! HTTP/1.0 keeps the server from chunking the body, so SSE lines arrive as written.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a request or an awaited SSE event may take.
pub const LIMIT: Duration = Duration::from_secs(15);

/// Sends `method path` with extra header lines and returns (status, body) after the server closes.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// Sends `GET path` with the given header lines (which replace the default `Host:
/// localhost` when they name a `Host`) and returns (status, head, body) after the server closes.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("GET {path} HTTP/1.0\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// One received SSE event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// An open `/api/stream`.
pub struct SseStream {
    stream: TcpStream,
    buffer: String,
    headers_done: bool,
}

impl SseStream {
    /// Opens the stream, optionally with `Last-Event-ID`.
    pub async fn open(addr: SocketAddr, last_event_id: Option<&str>) -> SseStream {
        SseStream::open_with(addr, "/api/stream", last_event_id, None).await
    }

    /// Opens `path` (`/api/stream` with a query, say), optionally with `Last-Event-ID` and a
    /// socket receive buffer of about `receive_buffer` bytes (a slow reader's fills up soon).
    pub async fn open_with(
        addr: SocketAddr,
        path: &str,
        last_event_id: Option<&str>,
        receive_buffer: Option<u32>,
    ) -> SseStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let mut head = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        SseStream {
            stream,
            buffer: String::new(),
            headers_done: false,
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the server closed.
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(LIMIT, self.next_unbounded())
            .await
            .expect("an SSE event in time")
    }

    async fn next_unbounded(&mut self) -> Option<SseEvent> {
        loop {
            if !self.headers_done
                && let Some((head, rest)) = self.buffer.split_once("\r\n\r\n")
            {
                assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
                self.buffer = rest.to_owned();
                self.headers_done = true;
            }
            if self.headers_done
                && let Some((block, rest)) = self.buffer.split_once("\n\n")
            {
                let block = block.to_owned();
                self.buffer = rest.to_owned();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event.event = value.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("id:") {
                        event.id = Some(value.trim_start().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        event.data.push_str(value.trim_start());
                    }
                }
                if event.event.is_empty() && event.data.is_empty() {
                    continue;
                }
                return Some(event);
            }
            let mut chunk = [0u8; 8192];
            let read = self.stream.read(&mut chunk).await.ok()?;
            if read == 0 {
                return None;
            }
            self.buffer.push_str(&String::from_utf8_lossy(&chunk[..read]));
        }
    }
}

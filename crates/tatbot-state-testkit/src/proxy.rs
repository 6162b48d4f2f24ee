//! [`ReplyProxy`]: a loopback TCP proxy in front of a [`crate::RedisServer`] that can hold the
//! server's replies, let a chosen number of held bytes through, and cut every connection on
//! command.
//!
//! Fault tests use it to force the interleavings a real network produces only by chance: a
//! request that Redis applied while its reply never reached the client, a reply that arrives
//! after Redis was restarted, a connection that dies between two pipelines' replies.
//!
//! Requests (client to server) are always forwarded at once; only replies are held. When the
//! server closes a connection while its replies are held, the client side stays open until
//! [`ReplyProxy::cut`] or [`ReplyProxy::pass`], so a test decides when the client notices.
//! Each connection is two threads with blocking sockets; the proxy listens on 127.0.0.1 only
//! and stops (closing every connection) when dropped.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// How long the accept loop sleeps between polls of its non-blocking listener.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// A loopback proxy that can hold, release and cut the replies of the connections through it.
pub struct ReplyProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept thread; joined on drop after `stopped` is set.
    accept: Option<thread::JoinHandle<()>>,
}

/// What the test and the pump threads share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when bytes are held, released, or a connection closes.
    changed: Condvar,
    /// The proxy is being dropped: the accept thread ends.
    stopped: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Replies are held instead of forwarded.
    holding: bool,
    /// Every connection made so far; closed ones stay with `open` false.
    conns: Vec<Conn>,
}

/// One proxied connection.
struct Conn {
    /// Where replies go: the client's socket.
    client: TcpStream,
    /// The server's socket.
    upstream: TcpStream,
    /// Replies read from the server and not forwarded yet.
    held: Vec<u8>,
    /// The server closed its side while replies were held.
    upstream_closed: bool,
    open: bool,
}

impl ReplyProxy {
    /// Starts a proxy on a free loopback port, forwarding to `target`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub fn start(target: SocketAddr) -> ReplyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the proxy");
        let addr = listener.local_addr().expect("the proxy's own address");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        let accept = thread::Builder::new()
            .name("testkit-proxy-accept".to_owned())
            .spawn(move || accept_loop(&listener, target, &accept_shared))
            .expect("spawn the proxy's accept thread");
        ReplyProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections made through the proxy so far, closed ones included.
    pub fn connections(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// From now on, replies on every connection are held, not forwarded.
    pub fn hold(&self) {
        self.shared.lock().holding = true;
    }

    /// Bytes of replies held now, over all connections.
    pub fn held(&self) -> usize {
        self.shared.lock().conns.iter().map(|conn| conn.held.len()).sum()
    }

    /// Waits until at least `bytes` of replies are held; false when `limit` passes first.
    pub fn wait_held(&self, bytes: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.shared.lock();
        loop {
            let held: usize = state.conns.iter().map(|conn| conn.held.len()).sum();
            if held >= bytes {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Complete RESP replies held now, over all connections.
    pub fn held_replies(&self) -> usize {
        let state = self.shared.lock();
        state.conns.iter().map(|conn| reply_ends(&conn.held).len()).sum()
    }

    /// Waits until at least `count` complete replies are held; false when `limit` passes first.
    pub fn wait_held_replies(&self, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.shared.lock();
        loop {
            let held: usize = state.conns.iter().map(|conn| reply_ends(&conn.held).len()).sum();
            if held >= count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Forwards the first `count` complete replies held on every connection and keeps holding
    /// the rest.
    pub fn release_replies(&self, count: usize) {
        let mut state = self.shared.lock();
        for conn in state.conns.iter_mut().filter(|conn| conn.open) {
            let ends = reply_ends(&conn.held);
            let Some(&end) = ends.get(count.min(ends.len()).wrapping_sub(1)) else {
                continue;
            };
            let out: Vec<u8> = conn.held.drain(..end).collect();
            if conn.client.write_all(&out).is_err() {
                close(conn);
            }
        }
        self.shared.changed.notify_all();
    }

    /// Stops holding: forwards everything held, and closes the connections whose server side
    /// closed meanwhile.
    pub fn pass(&self) {
        let mut state = self.shared.lock();
        state.holding = false;
        for conn in state.conns.iter_mut().filter(|conn| conn.open) {
            let out = std::mem::take(&mut conn.held);
            if conn.client.write_all(&out).is_err() || conn.upstream_closed {
                close(conn);
            }
        }
        self.shared.changed.notify_all();
    }

    /// Closes every connection now, dropping held replies, and stops holding; new connections
    /// forward normally.
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        state.holding = false;
        for conn in state.conns.iter_mut().filter(|conn| conn.open) {
            conn.held.clear();
            close(conn);
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for ReplyProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A pump thread that panicked left the state as consistent as any single push.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The end offsets of the complete RESP2/RESP3 replies at the start of `bytes`.
fn reply_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while let Some(end) = reply_end(bytes, at) {
        ends.push(end);
        at = end;
    }
    ends
}

/// Where the reply starting at `at` ends, if it is complete.
fn reply_end(bytes: &[u8], at: usize) -> Option<usize> {
    let line_end = at + bytes.get(at..)?.windows(2).position(|pair| pair == b"\r\n")?;
    let after_line = line_end + 2;
    let kind = *bytes.get(at)?;
    let number = || -> Option<i64> { std::str::from_utf8(&bytes[at + 1..line_end]).ok()?.parse().ok() };
    match kind {
        // Blob string, blob error, verbatim string: a length, then that many bytes and CRLF.
        b'$' | b'!' | b'=' => {
            let len = number()?;
            if len < 0 {
                return Some(after_line);
            }
            let end = after_line + usize::try_from(len).ok()? + 2;
            (end <= bytes.len()).then_some(end)
        }
        // Aggregates: a count of replies (maps and attributes count pairs).
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = number()?;
            let items = if matches!(kind, b'%' | b'|') { count * 2 } else { count };
            let mut end = after_line;
            for _ in 0..items.max(0) {
                end = reply_end(bytes, end)?;
            }
            // An attribute precedes the reply it describes.
            if kind == b'|' { reply_end(bytes, end) } else { Some(end) }
        }
        _ => Some(after_line),
    }
}

fn close(conn: &mut Conn) {
    conn.open = false;
    let _ = conn.client.shutdown(Shutdown::Both);
    let _ = conn.upstream.shutdown(Shutdown::Both);
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stopped.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(_) => return,
        };
        if let Err(err) = connect(client, target, shared) {
            eprintln!("tatbot-state-testkit proxy: cannot forward a connection: {err}");
        }
    }
}

/// Connects `client` to `target` and starts its two pump threads.
fn connect(client: TcpStream, target: SocketAddr, shared: &Arc<Shared>) -> io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_nodelay(true)?;
    let upstream = match TcpStream::connect(target) {
        Ok(upstream) => upstream,
        Err(err) => {
            // A client of a dead server sees its connection refused, as without the proxy.
            let _ = client.shutdown(Shutdown::Both);
            return Err(err);
        }
    };
    upstream.set_nodelay(true)?;
    let (client_read, upstream_write) = (client.try_clone()?, upstream.try_clone()?);
    let upstream_read = upstream.try_clone()?;
    let index = {
        let mut state = shared.lock();
        state.conns.push(Conn {
            client,
            upstream,
            held: Vec::new(),
            upstream_closed: false,
            open: true,
        });
        state.conns.len() - 1
    };
    thread::Builder::new()
        .name("testkit-proxy-up".to_owned())
        .spawn(move || forward_requests(client_read, upstream_write))?;
    let replies_shared = shared.clone();
    thread::Builder::new()
        .name("testkit-proxy-down".to_owned())
        .spawn(move || forward_replies(upstream_read, index, &replies_shared))?;
    Ok(())
}

/// Client to server, always at once, until either side closes.
fn forward_requests(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Server to client: forwarded, or held while the proxy holds.
fn forward_replies(mut from: TcpStream, index: usize, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = from.read(&mut buf);
        let mut state = shared.lock();
        let holding = state.holding;
        let conn = &mut state.conns[index];
        if !conn.open {
            return;
        }
        match read {
            Ok(0) | Err(_) => {
                if holding {
                    // The client learns of it when the test cuts or passes.
                    conn.upstream_closed = true;
                } else {
                    close(conn);
                }
                shared.changed.notify_all();
                return;
            }
            Ok(n) if holding => conn.held.extend_from_slice(&buf[..n]),
            Ok(n) => {
                let _ = conn.client.write_all(&buf[..n]);
            }
        }
        shared.changed.notify_all();
    }
}

//! [`Direct`]: a Redis connection that the awaiting task reads and writes itself.
//!
//! redis-rs's multiplexed connection runs a driver task per connection: a request goes to it
//! over a channel, and its answer comes back over another, so every round trip crosses between
//! tasks twice and, on a runtime with several workers, usually between threads. On a small
//! virtual machine waking another thread is a system call with an inter-processor interrupt,
//! 8 to 17 us at the median here (docs/PERFORMANCE.md, issue #18): a `PING` took 42 us through
//! the multiplexed connection and 26 us written and read by the awaiting task itself.
//!
//! So the paths that wait for one answer at a time, the awaited updates, the subscription and
//! the follower's blocking read, use this instead: a plain socket, the request written and
//! the answer parsed in the task that awaits it, woken by the I/O driver directly. It speaks
//! RESP3 after `HELLO 3`, with the credentials of the client it was made from, like the shared
//! connection, so answers decode to the same values.
//!
//! A round trip abandoned half way (a timeout, a dropped future) leaves answers on the wire
//! that belong to nobody; [`Direct::is_clean`] says so and the owner opens a new one.
//! Answers are framed before they are parsed: a server that sends bytes that are no RESP, or
//! an element count beyond any real answer, is an error of the connection, never a panic.
//! The parse is redis-rs's own ([`redis::parse_redis_value`]), so answers are the same values
//! the shared connection gives; only the framing (where one answer ends) is ours, because
//! redis-rs keeps its incremental decoder private (`ValueCodec` is `doc(hidden)`), and the
//! `redis-protocol` crate's RESP3 decoder, tried instead, refuses RESP2's null bulk string
//! (`$-1`) and waits forever on a count of 10^14 elements where this one fails at once.

use std::time::{Duration, Instant};

use redis::{ConnectionAddr, RedisError, RedisResult, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// More elements than any answer of ours has: a header announcing more is a broken stream.
const MAX_ELEMENTS: i64 = 1 << 32;

/// One Redis connection read and written by the task that awaits the answer; see the module
/// docs.
pub(crate) struct Direct {
    stream: TcpStream,
    /// Bytes read and not yet parsed start at `start`.
    buffer: Vec<u8>,
    start: usize,
    /// Answers owed by the server to requests already written.
    pending: usize,
}

impl Direct {
    /// Connects to the server `client` names, within `limit`, and says `HELLO 3` with its
    /// credentials. `None` when the client's address is not plain TCP (the caller then uses
    /// the multiplexed connection).
    ///
    /// # Errors
    ///
    /// The server could not be reached, refused the credentials, or did not answer in time.
    pub(crate) async fn connect(client: &redis::Client, limit: Duration) -> RedisResult<Option<Direct>> {
        let info = client.get_connection_info();
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Ok(None);
        };
        let settings = info.redis_settings();
        let open = async {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let mut direct = Direct {
                stream,
                buffer: Vec::with_capacity(READ_CHUNK),
                start: 0,
                pending: 0,
            };
            let mut hello = redis::cmd("HELLO");
            hello.arg(3);
            if let Some(password) = settings.password() {
                hello
                    .arg("AUTH")
                    .arg(settings.username().unwrap_or("default"))
                    .arg(password);
            }
            direct
                .query(&hello.get_packed_command(), 1)
                .await?
                .pop()
                .map(Value::extract_error)
                .transpose()?;
            if settings.db() != 0 {
                let select = redis::cmd("SELECT").arg(settings.db()).get_packed_command();
                direct
                    .query(&select, 1)
                    .await?
                    .pop()
                    .map(Value::extract_error)
                    .transpose()?;
            }
            Ok::<_, RedisError>(direct)
        };
        match tokio::time::timeout(limit, open).await {
            Ok(opened) => opened.map(Some),
            Err(_) => Err(timed_out("connect")),
        }
    }

    /// Every request written was answered, and the server did not close the connection while
    /// it was idle (checked without waiting): it can carry the next request.
    pub(crate) fn is_clean(&self) -> bool {
        if self.pending != 0 || self.start != self.buffer.len() {
            return false;
        }
        let mut probe = [0u8; 1];
        // Anything but "nothing to read yet" (a close, a reset, bytes nobody asked for) makes
        // the connection unusable.
        matches!(self.stream.try_read(&mut probe), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes `packed` (one or more commands) that `answers` answers will follow.
    ///
    /// # Errors
    ///
    /// The socket failed.
    pub(crate) async fn send(&mut self, packed: &[u8], answers: usize) -> RedisResult<()> {
        self.pending += answers;
        self.stream.write_all(packed).await?;
        Ok(())
    }

    /// The next answer; cancel-safe: a read abandoned before the whole answer arrived keeps
    /// what it read for the next call.
    ///
    /// # Errors
    ///
    /// The socket failed or closed, or the server sent something that is not RESP.
    pub(crate) async fn next_answer(&mut self) -> RedisResult<Value> {
        self.next_answer_spinning(None).await
    }

    /// [`Direct::next_answer`], reading the socket without waiting until `spin_until` (yielding
    /// to other tasks between reads), so that an answer that comes by then is read by this
    /// task as it arrives, with no wake-up through the runtime's I/O driver.
    async fn next_answer_spinning(&mut self, spin_until: Option<Instant>) -> RedisResult<Value> {
        loop {
            if let Some(end) = frame_end(&self.buffer[self.start..])? {
                let value = redis::parse_redis_value(&self.buffer[self.start..self.start + end])?;
                self.start += end;
                if self.start == self.buffer.len() {
                    self.buffer.clear();
                    self.start = 0;
                }
                self.pending = self.pending.saturating_sub(1);
                return Ok(value);
            }
            if self.start > 0 {
                self.buffer.drain(..self.start);
                self.start = 0;
            }
            // `read_buf` into spare capacity: the buffer's length only grows by what was read,
            // so a read abandoned half way leaves nothing behind.
            self.buffer.reserve(READ_CHUNK);
            if spin_until.is_some_and(|until| Instant::now() < until) {
                match self.stream.try_read_buf(&mut self.buffer) {
                    Ok(0) => return Err(closed()),
                    Ok(_) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => tokio::task::yield_now().await,
                    Err(err) => return Err(err.into()),
                }
                continue;
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(closed());
            }
        }
    }

    /// Writes `packed` and reads its `answers` answers, each as the server gave it (an error
    /// answer is a [`Value::ServerError`]).
    ///
    /// # Errors
    ///
    /// The socket failed or the server sent something that is not RESP.
    pub(crate) async fn query(&mut self, packed: &[u8], answers: usize) -> RedisResult<Vec<Value>> {
        self.query_spinning(packed, answers, Duration::ZERO).await
    }

    /// [`Direct::query`], reading the answers without waiting for up to `spin` after the
    /// request went out (see [`Direct::next_answer_spinning`]).
    ///
    /// # Errors
    ///
    /// As [`Direct::query`].
    pub(crate) async fn query_spinning(
        &mut self,
        packed: &[u8],
        answers: usize,
        spin: Duration,
    ) -> RedisResult<Vec<Value>> {
        self.send(packed, answers).await?;
        let spin_until = (!spin.is_zero()).then(|| Instant::now() + spin);
        let mut values = Vec::with_capacity(answers);
        for _ in 0..answers {
            values.push(self.next_answer_spinning(spin_until).await?);
        }
        Ok(values)
    }
}

/// The server closed the connection.
fn closed() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "redis closed the connection",
    ))
}

/// An error that [`RedisError::is_timeout`] recognises, for a round trip over its deadline.
pub(crate) fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("redis did not answer the {what} in time"),
    ))
}

/// The length of the first whole RESP2 or RESP3 value in `bytes`, `None` when it has not all
/// arrived yet.
///
/// Iterative, so a deeply nested answer cannot exhaust the stack.
///
/// # Errors
///
/// A type byte RESP does not have, or a length that is not a number or is out of range.
fn frame_end(bytes: &[u8]) -> RedisResult<Option<usize>> {
    let mut at = 0;
    // Values still to frame, counting the one asked for.
    let mut remaining: i64 = 1;
    while remaining > 0 {
        let Some(&kind) = bytes.get(at) else { return Ok(None) };
        let Some(line_len) = bytes[at..].windows(2).position(|pair| pair == b"\r\n") else {
            return Ok(None);
        };
        if line_len == 0 {
            // A line with no type byte.
            return Err(protocol_error(b'?', b""));
        }
        let line = &bytes[at + 1..at + line_len];
        let next = at + line_len + 2;
        remaining -= 1;
        let count = || -> RedisResult<i64> {
            std::str::from_utf8(line)
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
                .filter(|count| (-1..=MAX_ELEMENTS).contains(count))
                .ok_or_else(|| protocol_error(kind, line))
        };
        at = match kind {
            b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => next,
            b'$' | b'=' | b'!' => match count()? {
                -1 => next,
                len => {
                    let end = next + usize::try_from(len).map_err(|_| protocol_error(kind, line))? + 2;
                    if bytes.len() < end {
                        return Ok(None);
                    }
                    end
                }
            },
            b'*' | b'~' | b'>' => {
                remaining += count()?.max(0);
                next
            }
            b'%' => {
                remaining += 2 * count()?.max(0);
                next
            }
            // An attribute: its pairs, then the value it describes.
            b'|' => {
                remaining += 2 * count()?.max(0) + 1;
                next
            }
            _ => return Err(protocol_error(kind, line)),
        };
    }
    Ok(Some(at))
}

fn protocol_error(kind: u8, line: &[u8]) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "redis sent a line that is not RESP: {:?}",
            crate::decode::preview(&format!("{}{}", kind as char, String::from_utf8_lossy(line)))
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole values are framed whatever their type; a cut one waits for more bytes.
    #[test]
    fn frames_whole_values_only() {
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":42\r\n",
            b"$5\r\nhe\r\no\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"%1\r\n+k\r\n+v\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n",
            b"_\r\n",
            b"*0\r\n",
        ];
        for case in cases {
            assert_eq!(frame_end(case).expect("valid"), Some(case.len()), "{case:?}");
            for cut in 0..case.len() {
                assert_eq!(
                    frame_end(&case[..cut]).expect("valid prefix"),
                    None,
                    "{case:?} cut at {cut}"
                );
            }
            let mut two = case.to_vec();
            two.extend_from_slice(b"+next\r\n");
            assert_eq!(frame_end(&two).expect("valid"), Some(case.len()));
        }
    }

    /// Bytes that are no RESP are an error, not a panic or a wait.
    #[test]
    fn rejects_what_is_not_resp() {
        for case in [
            &b"HTTP/1.1 400\r\n"[..],
            b"\r\n",
            b"*1\r\n\r\n",
            b"$x\r\n",
            b"*-5\r\n",
            b"*99999999999999\r\n",
            b"$-2\r\n",
        ] {
            assert!(frame_end(case).is_err(), "{case:?}");
        }
    }
}

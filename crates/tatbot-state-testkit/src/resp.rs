//! A deliberately tiny RESP client: encode one command, read one complete reply.
//!
//! The test kit must not depend on the `redis` crate (the crate under test uses it, and a
//! bug there should not hide behind a bug in its own test harness), so it speaks the wire
//! protocol directly. Replies are returned as the raw bytes Redis sent, which is exactly
//! what `RedisServer::command` promises its callers.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One TCP connection to a Redis server with a read/write timeout on every operation.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to `addr`, applying `timeout` to the connect and to every later read and write.
    pub(crate) fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        // Commands are tiny and sent one at a time, so Nagle would only add latency.
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends the commands back to back (pipelined) without reading any reply.
    pub(crate) fn send(&mut self, commands: &[&[&str]]) -> io::Result<()> {
        let mut buf = Vec::new();
        for args in commands {
            encode(args, &mut buf)?;
        }
        self.reader.get_mut().write_all(&buf)
    }

    /// Reads exactly one complete reply and returns its raw RESP text.
    pub(crate) fn read(&mut self) -> io::Result<String> {
        let mut out = Vec::new();
        read_reply(&mut self.reader, &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Sends one command and reads its reply.
    pub(crate) fn call(&mut self, args: &[&str]) -> io::Result<String> {
        self.send(&[args])?;
        self.read()
    }
}

/// Appends `args` to `buf` as a RESP array of bulk strings, the form Redis expects from clients.
fn encode(args: &[&str], buf: &mut Vec<u8>) -> io::Result<()> {
    if args.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a Redis command needs at least one argument (the command name)",
        ));
    }
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        buf.extend_from_slice(arg.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// Reads one complete RESP2 or RESP3 reply from `r`, appending its raw bytes to `out`.
///
/// RESP3 types are handled too because a test may switch the connection with `HELLO 3`
/// and still expects to get whole replies back.
pub(crate) fn read_reply(r: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let n = r.read_until(b'\n', out)?;
    let line = &out[start..];
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete reply was received",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a reply line",
        ));
    }
    let kind = line[0];
    let header = &line[1..line.len() - 2];
    match kind {
        // Simple string, error, integer, null, double, boolean and big number: one line each.
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(()),
        // Bulk string, bulk error and verbatim string: a length line followed by the payload.
        b'$' | b'!' | b'=' => {
            let len = parse_len(header)?;
            if len < 0 {
                return Ok(());
            }
            let len = usize::try_from(len).map_err(invalid)?;
            let payload_start = out.len();
            out.resize(payload_start + len + 2, 0);
            r.read_exact(&mut out[payload_start..])?;
            Ok(())
        }
        // Array, set and push: a count followed by that many nested replies.
        b'*' | b'~' | b'>' => read_children(r, out, parse_len(header)?, 1),
        // Map: a count of key/value pairs.
        b'%' => read_children(r, out, parse_len(header)?, 2),
        // Attribute: a map that is followed by the reply it annotates.
        b'|' => {
            read_children(r, out, parse_len(header)?, 2)?;
            read_reply(r, out)
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected RESP type byte {:?}", char::from(other)),
        )),
    }
}

/// Reads `count * per_item` nested replies; a negative count is a RESP2 null array.
fn read_children(r: &mut impl BufRead, out: &mut Vec<u8>, count: i64, per_item: i64) -> io::Result<()> {
    for _ in 0..count.max(0) * per_item {
        read_reply(r, out)?;
    }
    Ok(())
}

/// Parses the decimal length or count in a RESP header line.
fn parse_len(header: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(header)
        .map_err(invalid)?
        .parse::<i64>()
        .map_err(invalid)
}

/// Wraps a parse failure as `InvalidData`, since it means the peer is not speaking RESP.
fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> io::Result<String> {
        let mut r = io::Cursor::new(input);
        let mut out = Vec::new();
        read_reply(&mut r, &mut out)?;
        Ok(String::from_utf8(out).expect("test input is ASCII"))
    }

    #[test]
    fn encodes_commands_as_bulk_string_arrays() {
        let mut buf = Vec::new();
        encode(&["SET", "k", ""], &mut buf).expect("non-empty command encodes");
        assert_eq!(buf, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert!(encode(&[], &mut buf).is_err());
    }

    #[test]
    fn reads_exactly_one_reply_of_each_shape() {
        assert_eq!(parse(b"+PONG\r\n+EXTRA\r\n").unwrap(), "+PONG\r\n");
        assert_eq!(parse(b"$5\r\nhe\r\no\r\n").unwrap(), "$5\r\nhe\r\no\r\n");
        assert_eq!(parse(b"$-1\r\n").unwrap(), "$-1\r\n");
        assert_eq!(
            parse(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n:9\r\n").unwrap(),
            "*2\r\n:1\r\n*1\r\n$1\r\nx\r\n"
        );
        assert_eq!(parse(b"%1\r\n+k\r\n+v\r\n").unwrap(), "%1\r\n+k\r\n+v\r\n");
        assert_eq!(parse(b"|1\r\n+a\r\n+b\r\n:5\r\n").unwrap(), "|1\r\n+a\r\n+b\r\n:5\r\n");
    }

    #[test]
    fn truncated_input_is_an_eof_error() {
        let err = parse(b"$5\r\nhe").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = parse(b"").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}

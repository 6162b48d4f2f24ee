//! Raw Redis connections for the operations commands (`server`, `doctor`, `demo`).
//!
//! The library's [`tatbot_state::StateManager`] authenticates while it connects and retries
//! behind the caller's back, which is what a node wants and exactly what a diagnosis must not
//! do: `doctor` has to see the server's first answer (`NOAUTH`, `WRONGPASS`, `NOPERM`) and
//! `server stop` must send `SHUTDOWN` once. So these helpers open a plain multiplexed
//! connection with the `redis` crate, send no `CLIENT SETINFO`, authenticate only when asked,
//! and put a deadline on every step, so that a paused or vanished server gives an error
//! instead of a hang.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, FromRedisValue, IntoConnectionInfo, RedisConnectionInfo, RedisError,
};
use tatbot_state::Endpoint;

use crate::exit::{self, Coded};

/// How the first answer of a server is classified, to pick an exit code and a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing answered: refused, timed out, reset, or the host is unknown.
    Unreachable,
    /// The server refused the credentials or wants some (`WRONGPASS`, `NOAUTH`).
    Auth,
    /// The ACL user may not run the command (`NOPERM`).
    Permission,
    /// Any other error reply or protocol problem.
    Other,
}

/// Classifies a driver error.
pub fn classify(err: &RedisError) -> Failure {
    match err.code() {
        Some("WRONGPASS" | "NOAUTH") => return Failure::Auth,
        Some("NOPERM") => return Failure::Permission,
        _ => {}
    }
    if matches!(err.kind(), redis::ErrorKind::AuthenticationFailed) {
        return Failure::Auth;
    }
    if err.is_io_error() || err.is_timeout() || err.is_connection_refusal() || err.is_connection_dropped() {
        return Failure::Unreachable;
    }
    Failure::Other
}

/// The documented exit code for a failure.
pub fn exit_code(failure: Failure) -> u8 {
    match failure {
        Failure::Unreachable => exit::UNREACHABLE,
        Failure::Auth | Failure::Permission => exit::AUTH,
        Failure::Other => exit::FAILURE,
    }
}

/// Turns a driver error met while `doing` something at `endpoint` into a one-line error
/// carrying the right exit code and a hint.
pub fn to_error(err: &RedisError, endpoint: &Endpoint, doing: &str) -> anyhow::Error {
    let failure = classify(err);
    let hint = match failure {
        Failure::Unreachable => "is redis-server running? Start it with `tatbot-state server start`, or check -h/-p",
        Failure::Auth => "check the password (-a or REDIS_PASSWORD) and, for ACL users, --user or REDIS_USERNAME",
        Failure::Permission => "the ACL user lacks a permission; use an admin user",
        Failure::Other => "see the server log",
    };
    anyhow::Error::new(Coded(
        exit_code(failure),
        format!("{doing} at {endpoint}: {}: {hint}", one_line(err)),
    ))
}

/// The error as one line (the driver sometimes spreads details over several).
pub fn one_line(err: &RedisError) -> String {
    let text = err.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    text.trim_end_matches('.').to_owned()
}

/// Connection details for the driver; credentials only when `authenticate` is set.
pub fn connection_info(endpoint: &Endpoint, authenticate: bool) -> Result<redis::ConnectionInfo, RedisError> {
    let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
    if authenticate {
        if let Some(username) = &endpoint.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &endpoint.password {
            settings = settings.set_password(password);
        }
    }
    let info = ConnectionAddr::Tcp(endpoint.host.clone(), endpoint.port).into_connection_info()?;
    Ok(info.set_redis_settings(settings))
}

/// Opens a connection to `endpoint` and authenticates with its credentials; `timeout` bounds
/// the connect (with the `AUTH`) and every later command.
///
/// # Errors
///
/// The server did not answer in time, refused the connection or the credentials.
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<MultiplexedConnection, RedisError> {
    open(connection_info(endpoint, true)?, timeout).await
}

/// Opens a connection to `endpoint` without sending anything, so the caller sees the
/// server's first answer (`NOAUTH`, `WRONGPASS`) to its own `PING` or `AUTH`.
///
/// # Errors
///
/// The server did not answer in time or refused the connection.
pub async fn connect_unauthenticated(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<MultiplexedConnection, RedisError> {
    open(connection_info(endpoint, false)?, timeout).await
}

async fn open(info: redis::ConnectionInfo, timeout: Duration) -> Result<MultiplexedConnection, RedisError> {
    let client = redis::Client::open(info)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    within(timeout, client.get_multiplexed_async_connection_with_config(&config)).await
}

/// Opens a pub/sub connection to `endpoint` with its credentials.
///
/// # Errors
///
/// As [`connect`].
pub async fn connect_pubsub(endpoint: &Endpoint, timeout: Duration) -> Result<PubSub, RedisError> {
    let client = redis::Client::open(connection_info(endpoint, true)?)?;
    within(timeout, client.get_async_pubsub()).await
}

/// Runs one command with a deadline.
///
/// # Errors
///
/// An error reply, a broken connection, or no answer within `timeout`.
pub async fn call<T: FromRedisValue>(
    connection: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> Result<T, RedisError> {
    within(timeout, cmd.query_async(connection)).await
}

/// Awaits `future` for at most `timeout`; running out of time is an I/O timeout error, so
/// [`classify`] calls it unreachable.
pub async fn within<T>(
    timeout: Duration,
    future: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {} ms", timeout.as_millis()),
        ))),
    }
}

/// `CONFIG GET name`: the value, or `None` when the server has no such parameter.
///
/// # Errors
///
/// As [`call`]; ACL users often lack `CONFIG` (`NOPERM`).
pub async fn config_get(
    connection: &mut MultiplexedConnection,
    name: &str,
    timeout: Duration,
) -> Result<Option<String>, RedisError> {
    let pairs: Vec<String> = call(connection, redis::cmd("CONFIG").arg("GET").arg(name), timeout).await?;
    Ok(pairs
        .chunks(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair.get(1).cloned()))
}

/// `INFO` of the given sections, parsed into `field -> value`.
///
/// # Errors
///
/// As [`call`].
pub async fn info(
    connection: &mut MultiplexedConnection,
    sections: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<String, String>, RedisError> {
    let text: String = call(connection, redis::cmd("INFO").arg(sections), timeout).await?;
    Ok(parse_info(&text))
}

/// Parses `INFO` text: `field:value` lines; section headers (`# Server`) and blanks are skipped.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(field, value)| (field.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Whether a `bind` entry only accepts local clients; `-` marks an optional address.
pub fn is_loopback_bind(entry: &str) -> bool {
    let address = entry.trim_start_matches('-');
    match address.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => address == "localhost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// INFO text parses into fields, skipping headers, blanks and CRLF endings.
    #[test]
    fn parses_info() {
        let info =
            parse_info("# Server\r\nredis_version:7.0.15\r\nprocess_id:42\r\n\r\n# Persistence\r\naof_enabled:1\r\n");
        assert_eq!(info.get("redis_version").map(String::as_str), Some("7.0.15"));
        assert_eq!(info.get("process_id").map(String::as_str), Some("42"));
        assert_eq!(info.get("aof_enabled").map(String::as_str), Some("1"));
        assert_eq!(info.len(), 3);
    }

    /// Loopback bind entries are recognised with and without the optional marker.
    #[test]
    fn loopback_binds() {
        for entry in ["127.0.0.1", "-::1", "::1", "127.0.0.2", "localhost"] {
            assert!(is_loopback_bind(entry), "{entry}");
        }
        for entry in ["192.168.1.97", "*", "-::*", "0.0.0.0", ""] {
            assert!(!is_loopback_bind(entry), "{entry}");
        }
    }
}

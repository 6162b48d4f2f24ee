//! Where Redis is and how the manager talks to it: [`Endpoint`], [`ManagerConfig`], connecting.
//!
//! The manager never reads files or the environment; binaries resolve an [`Endpoint`] with
//! [`crate::config::resolve`] and pass it in. Every network call has a timeout: connecting
//! gives up after `connect_timeout`, and each command after `response_timeout`, so a paused or
//! vanished server produces an error instead of a hang.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo};

use crate::error::{Error, Result};
use crate::ids::NodeId;
use crate::redacted::Redacted;

/// Default Redis port.
pub const DEFAULT_PORT: u16 = 6379;
/// How long ended sessions are kept by default: 7 days.
pub const DEFAULT_SESSION_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Heartbeat TTL of the wire contract.
pub const HEALTH_TTL: Duration = Duration::from_secs(60);
/// `MAXLEN ~` of history streams, as the reference.
pub const DEFAULT_HISTORY_MAXLEN: usize = 10_000;
/// `MAXLEN ~` of our durable event log.
pub const DEFAULT_EVENT_LOG_MAXLEN: usize = 20_000;
/// `MAXLEN ~` of our error log.
pub const DEFAULT_ERROR_LOG_MAXLEN: usize = 10_000;
/// Errors older than this are trimmed from our error log.
pub const DEFAULT_ERROR_LOG_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default per-command timeout.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default [`ManagerConfig::reply_spin`]: longer than a loopback or LAN round trip of an update
/// (40 to 130 us here), so the answer is usually read by the awaiting thread as it arrives.
/// Waiting for it instead costs a wake-up of that thread by the runtime's I/O driver, another
/// thread: 10 to 20 us on a small virtual machine (docs/PERFORMANCE.md, issue #18 point 4).
/// The price is a core busy for up to this long per awaited write.
pub const DEFAULT_REPLY_SPIN: Duration = Duration::from_micros(200);

/// A Redis server address and credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP literal to connect to.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user name, if any (`default` when `None`).
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
}

impl Endpoint {
    /// `host:port` with no credentials, IPv6 in brackets.
    pub fn new(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
            username: None,
            password: None,
        }
    }

    /// Adds a password.
    pub fn with_password(mut self, password: impl Into<String>) -> Endpoint {
        self.password = Some(password.into());
        self
    }

    /// Adds an ACL user name.
    pub fn with_username(mut self, username: impl Into<String>) -> Endpoint {
        self.username = Some(username.into());
        self
    }

    pub(crate) fn connection_info(&self) -> Result<ConnectionInfo> {
        let mut redis_info = RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3);
        if let Some(username) = &self.username {
            redis_info = redis_info.set_username(username);
        }
        if let Some(password) = &self.password {
            redis_info = redis_info.set_password(password);
        }
        let info = ConnectionAddr::Tcp(self.host.clone(), self.port)
            .into_connection_info()
            .map_err(|err| Error::from_connect(&self.to_string(), err))?;
        Ok(info.set_redis_settings(redis_info))
    }
}

/// `host:port`, never the password.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Redacts the password.
impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &Redacted(&self.password))
            .finish()
    }
}

/// Everything a [`crate::StateManager`] needs; defaults are the named constants above.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The server; with [`ManagerConfig::sentinel`], only its credentials are used (for the
    /// master the Sentinels name) and its address is the one shown before the first lookup.
    pub endpoint: Endpoint,
    /// Find the master through Redis Sentinel instead of dialling `endpoint`, and follow its
    /// failovers ([`crate::sentinel`]).
    pub sentinel: Option<crate::sentinel::SentinelTarget>,
    /// This node's id: it is written into every document and event.
    pub node_id: NodeId,
    /// Ended sessions' progress and history expire after this long.
    pub session_retention: Duration,
    /// How long a session this manager starts stays live without a write or a lease renewal
    /// ([`crate::model::SessionState::Stale`] after it); stored in the session's document as
    /// `lease_secs`, so every reader judges it by the owner's lease.
    pub session_lease: Duration,
    /// TTL of heartbeats.
    pub health_ttl: Duration,
    /// `MAXLEN ~` of history streams.
    pub history_maxlen: usize,
    /// `MAXLEN ~` of the durable event log.
    pub event_log_maxlen: usize,
    /// `MAXLEN ~` of the error log.
    pub error_log_maxlen: usize,
    /// Age past which errors are trimmed from the error log.
    pub error_log_max_age: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-command timeout.
    pub response_timeout: Duration,
    /// How long an awaited write on the direct connection keeps reading its socket without
    /// waiting (yielding to other tasks between reads) before it waits for the answer the usual
    /// way; see [`DEFAULT_REPLY_SPIN`]. Zero always waits.
    pub reply_spin: Duration,
}

impl ManagerConfig {
    /// Every default, for node `node_id`, with the Redis target resolved exactly as the CLI
    /// resolves it without flags: the Hydra YAML, an env file, `REDIS_URL`, `REDIS_HOST`,
    /// `REDIS_PORT`, `REDIS_PASSWORD`, `REDIS_USERNAME`, and for Sentinel `REDIS_SENTINELS`,
    /// `REDIS_MASTER_NAME`, `REDIS_SENTINEL_PASSWORD` (see [`crate::config`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the configuration is bad.
    pub fn from_env(node_id: NodeId) -> Result<ManagerConfig> {
        let inputs = crate::config::ConfigInputs::from_env();
        let target = inputs.resolve()?;
        let sentinel = crate::config::resolve_sentinel(&inputs, &crate::config::SentinelInputs::default())?;
        let mut config = ManagerConfig::new(Endpoint::from(&target), node_id);
        config.sentinel = sentinel.map(|settings| settings.target());
        Ok(config)
    }

    /// A config with every default for `endpoint` and `node_id`.
    pub fn new(endpoint: Endpoint, node_id: NodeId) -> ManagerConfig {
        ManagerConfig {
            endpoint,
            sentinel: None,
            node_id,
            session_retention: DEFAULT_SESSION_RETENTION,
            session_lease: crate::model::DEFAULT_SESSION_LEASE,
            health_ttl: HEALTH_TTL,
            history_maxlen: DEFAULT_HISTORY_MAXLEN,
            event_log_maxlen: DEFAULT_EVENT_LOG_MAXLEN,
            error_log_maxlen: DEFAULT_ERROR_LOG_MAXLEN,
            error_log_max_age: DEFAULT_ERROR_LOG_MAX_AGE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            reply_spin: DEFAULT_REPLY_SPIN,
        }
    }
}

/// The settings of the shared connection.
pub(crate) fn manager_config(config: &ManagerConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
}

/// The manager's shared connection: redis-rs's [`ConnectionManager`], with one more attempt
/// for a request whose connection was refused.
///
/// While Redis is down, the connection's reconnect fails and keeps that failure for the next
/// request, which got it even when Redis was back (the first call after an outage longer than
/// the reconnect attempts failed). Such a request never left the process, so it is made once
/// more, which reconnects. Errors that may follow a sent request (a reset, an end of file, a
/// timeout) are not repeated: nothing is sent twice.
#[derive(Clone)]
pub(crate) struct Shared(pub(crate) ConnectionManager);

impl redis::aio::ConnectionLike for Shared {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            match self.0.req_packed_command(cmd).await {
                Err(err) if err.is_connection_refusal() => self.0.req_packed_command(cmd).await,
                done => done,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            match self.0.req_packed_commands(pipeline, offset, count).await {
                Err(err) if err.is_connection_refusal() => self.0.req_packed_commands(pipeline, offset, count).await,
                done => done,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// A multiplexed connection of its own through `client` (`target` names it in errors), for
/// reads that must not wait behind the shared connection: `response_timeout` per answer (a
/// blocking read adds its block to it), the whole attempt within twice `connect_timeout`.
pub(crate) async fn dedicated(
    client: &redis::Client,
    target: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
    operation: &'static str,
) -> Result<redis::aio::MultiplexedConnection> {
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout));
    let limit = connect_timeout * 2;
    match tokio::time::timeout(limit, client.get_multiplexed_async_connection_with_config(&settings)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(Error::from_connect(target, err)),
        Err(_) => Err(Error::Timeout {
            operation,
            after: limit,
        }),
    }
}

/// A shared connection that connects on first use, so it can be made while Redis is down.
pub(crate) fn lazy(client: &redis::Client, manager_config: &ConnectionManagerConfig) -> Result<ConnectionManager> {
    ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
        .map_err(|err| Error::from_connect("redis", err))
}

/// Opens the shared connection now and checks that the server accepts it.
pub(crate) async fn connect(
    config: &ManagerConfig,
    endpoint: &Endpoint,
    client: &redis::Client,
    manager_config: &ConnectionManagerConfig,
) -> Result<ConnectionManager> {
    let target = endpoint.to_string();
    // The driver retries inside `new`; the outer timeout bounds the whole attempt.
    let limit = config.connect_timeout * 3;
    let attempt = ConnectionManager::new_with_config(client.clone(), manager_config.clone());
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(err)) => {
            let err = Error::from_connect(&target, err);
            // A server that answered something the driver cannot parse may be no Redis at all.
            if let Error::Unreachable { source, .. } = &err
                && !source.is_io_error()
                && !source.is_timeout()
                && let Some(answered) = not_redis(endpoint, config.connect_timeout).await
            {
                return Err(Error::NotRedis { target, answered });
            }
            Err(err)
        }
        Err(_) => Err(Error::Unreachable {
            target,
            source: redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {limit:?}"),
            )),
        }),
    }
}

/// Sends `PING` over a plain TCP connection to `endpoint` and tells what answered when it was
/// not Redis: `HTTP` for a web server, else the start of the answer; `None` for an answer Redis
/// could give (`+PONG`, an error reply such as `-NOAUTH`), or no answer at all.
async fn not_redis(endpoint: &Endpoint, limit: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = vec![0u8; 64];
        let read = stream.read(&mut answer).await?;
        answer.truncate(read);
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(limit, probe).await.ok()?.ok()?;
    match answer.first() {
        None | Some(b'+' | b'-') => None,
        Some(_) if answer.starts_with(b"HTTP/") => Some("HTTP".to_owned()),
        Some(_) => {
            let text = String::from_utf8_lossy(&answer);
            let first_line = text.lines().next().unwrap_or_default();
            Some(format!("{:?}", first_line.chars().take(32).collect::<String>()))
        }
    }
}

/// The address to dial (after any inventory fallback) and the credentials.
impl From<&crate::config::RedisTarget> for Endpoint {
    fn from(target: &crate::config::RedisTarget) -> Endpoint {
        Endpoint {
            host: target.connect_host.clone(),
            port: target.port.value,
            username: target.username.value.clone(),
            password: target.password.value.clone(),
        }
    }
}

//! The library's error type.
//!
//! Every fallible call returns [`Result`]. Variants are the cases a caller can act on: the
//! server is unreachable, credentials were refused, a stored value does not decode (with the key
//! that holds it), an identifier is invalid. Each `Display` is one line, and where a person can
//! do something about it the line ends with a hint.

use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in a `tatbot-state` call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An identifier (node id, session id, error category) failed validation.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidId {
        /// What the identifier is for: "node id", "session id", "error category".
        kind: &'static str,
        /// The rejected input, as given.
        value: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// No connection to Redis could be made.
    #[error("cannot reach Redis at {target}: {source}. Is it running? Try `tatbot-state doctor`")]
    Unreachable {
        /// `host:port` that was tried.
        target: String,
        /// What the driver reported.
        source: redis::RedisError,
    },

    /// Redis refused the username or password.
    #[error(
        "Redis at {target} refused the credentials: {source}. Check REDIS_PASSWORD (and REDIS_USERNAME for ACL users)"
    )]
    Auth {
        /// `host:port` that was tried.
        target: String,
        /// What the server answered.
        source: redis::RedisError,
    },

    /// The ACL user may not run a command this call needs.
    #[error(
        "Redis denied {operation}: {source}. The configured user lacks the permission \
         (the robot user writes, the viewer user reads and lists; see docs/RELIABILITY.md, Roles)"
    )]
    PermissionDenied {
        /// The library operation that was refused.
        operation: &'static str,
        /// What the server answered.
        source: redis::RedisError,
    },

    /// A command did not answer in time.
    #[error("Redis did not answer {operation} within {after:?}. Is the server overloaded or paused?")]
    Timeout {
        /// The library operation that timed out.
        operation: &'static str,
        /// The timeout that expired.
        after: Duration,
    },

    /// The connection failed while a command was in flight, or the server answered an error.
    #[error("Redis command for {operation} failed: {source}")]
    Redis {
        /// The library operation that failed.
        operation: &'static str,
        /// What the driver reported.
        source: redis::RedisError,
    },

    /// A stored value or a published message is not the JSON document the wire contract describes.
    #[error("{key}: cannot decode {what}: {source}")]
    Decode {
        /// The Redis key (or `channel <name>`) holding the bad value.
        key: String,
        /// Which document or field was being decoded.
        what: &'static str,
        /// Why it failed.
        source: serde_json::Error,
    },

    /// A stored value that is not JSON in a place we only parse inside Redis (a Lua script).
    #[error("{key}: stored value is corrupt ({detail}); fix or delete the key")]
    Corrupt {
        /// The Redis key holding the bad value.
        key: String,
        /// What the server-side decoder said.
        detail: String,
    },

    /// A value exceeds a size bound, or another input is out of range.
    #[error("{0}")]
    InvalidInput(String),

    /// The session has no progress hash (never started, or expired after its retention).
    #[error("no stroke session {0:?}: it was never started or has expired. List sessions with `tatbot-state sessions`")]
    SessionNotFound(String),

    /// The parameter is not declared.
    #[error("{0}: no such parameter; declare it first (see `tatbot-state param list`)")]
    ParamNotFound(String),

    /// A watcher fell behind a capped log (or Redis lost entries); the message says how many
    /// changes are gone. The watcher carries on after it.
    #[error("{0}")]
    WatchGap(String),

    /// Resolving the configuration failed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    /// A producer could not store writes queued before a flush: dropped from a full queue, or
    /// refused by Redis. Each is counted in [`crate::ProducerStats`] and reported in the
    /// stored errors.
    #[error("the producer could not store {dropped} dropped and {rejected} refused writes")]
    NotStored {
        /// Writes dropped because the queue was full, since the last flush said so.
        dropped: u64,
        /// Writes Redis refused, since the last flush said so.
        rejected: u64,
    },

    /// A producer's writer has stopped (closed or shut down); nothing more is written.
    #[error("the producer's writer has stopped")]
    ProducerStopped,

    /// A producer closed before its last writes had been on the server for the fsync horizon,
    /// so a crash of Redis now could still lose them, with nobody left to replay them.
    #[error("Redis was not reachable for {horizon:?} after the last writes; a Redis crash now could lose them")]
    NotDurable {
        /// The fsync horizon the producer waits out ([`crate::ProducerConfig::durability_horizon`]).
        horizon: Duration,
    },

    /// A recording could not be written, or a file is not a recording this version can replay.
    #[error("{0}")]
    Recording(String),

    /// A subscription's connection closed; re-subscribe to continue.
    #[error("subscription to Redis closed (connection lost)")]
    SubscriptionClosed,
}

impl Error {
    /// Classifies a driver error raised while running `operation`.
    pub(crate) fn from_redis(operation: &'static str, err: redis::RedisError) -> Error {
        if err.is_timeout() {
            // The driver reports its response timeout without the duration, so the manager
            // replaces this with the configured value where it knows it.
            return Error::Timeout {
                operation,
                after: Duration::ZERO,
            };
        }
        if err.code() == Some("NOPERM") {
            return Error::PermissionDenied { operation, source: err };
        }
        if let Some(detail) = err.detail().filter(|_| err.code() == Some("TATBOT_CORRUPT")) {
            let (key, detail) = detail.split_once(' ').unwrap_or((detail, "invalid JSON"));
            return Error::Corrupt {
                key: key.to_owned(),
                detail: detail.to_owned(),
            };
        }
        if err.code() == Some("TATBOT_NOSESSION") {
            return Error::SessionNotFound(err.detail().unwrap_or_default().to_owned());
        }
        Error::Redis { operation, source: err }
    }

    /// Classifies a driver error raised while connecting to `target`.
    pub(crate) fn from_connect(target: &str, err: redis::RedisError) -> Error {
        let is_auth = matches!(err.kind(), redis::ErrorKind::AuthenticationFailed)
            || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
            || err.to_string().contains("WRONGPASS")
            || err.to_string().contains("NOAUTH");
        if is_auth {
            return Error::Auth {
                target: target.to_owned(),
                source: err,
            };
        }
        Error::Unreachable {
            target: target.to_owned(),
            source: err,
        }
    }

    /// True when the error means Redis could not be reached or the connection broke.
    pub fn is_connection_error(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout { .. } | Error::SubscriptionClosed => true,
            Error::Redis { source, .. } => {
                source.is_io_error() || source.is_connection_dropped() || source.is_connection_refusal()
            }
            _ => false,
        }
    }
}

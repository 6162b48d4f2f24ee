//! The library's error type.
//!
//! Every fallible call returns [`Result`]. Variants are the cases a caller can act on: the
//! server is unreachable, credentials were refused, a stored value does not decode (with the key
//! that holds it), an identifier or other input is invalid, a concurrent writer won a race.
//!
//! Each `Display` is one line that says what went wrong and never repeats its source: a
//! variant that keeps the driver's or parser's error exposes it through
//! [`std::error::Error::source`] only, and whoever prints the error prints the chain once
//! ([`Report`] does that, skipping a cause whose text is already shown).
//! Messages name no command of a binary, no environment variable to set and no site's address:
//! binaries add such hints where they print the final error line.

use std::fmt;
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
    #[error("cannot reach Redis at {target}")]
    Unreachable {
        /// `host:port` that was tried.
        target: String,
        /// What the driver reported.
        source: redis::RedisError,
    },

    /// No Sentinel named a reachable server that confirms it is the master (during a failover,
    /// or when every Sentinel is down).
    #[error("no Sentinel names a reachable Redis master {master_name:?} ({tried})")]
    NoMaster {
        /// The master name asked for.
        master_name: String,
        /// What each Sentinel answered, or why it could not be asked.
        tried: String,
    },

    /// A Sentinel announced a new master while a write was in flight (`sent`: the old master
    /// answered it, and what an old master wrote is lost when the Sentinels make it a replica,
    /// so the write may or may not be kept), or before the shared connection had moved to the
    /// new one (nothing was sent).
    #[error("the Redis master changed during {operation}: {}", switched_outcome(*.sent))]
    MasterSwitched {
        /// The library operation whose answer does not count, or that was not sent.
        operation: &'static str,
        /// Whether the write went out (to the old master).
        sent: bool,
    },

    /// Something answered at the address, but not as Redis does (a web server, say).
    #[error("{target} is not a Redis server: it answered {answered}")]
    NotRedis {
        /// `host:port` that was tried.
        target: String,
        /// What it answered to `PING`: `HTTP`, or the start of its answer.
        answered: String,
    },

    /// Redis refused the username or password.
    #[error("Redis at {target} refused the credentials")]
    Auth {
        /// `host:port` that was tried.
        target: String,
        /// What the server answered.
        source: redis::RedisError,
    },

    /// The ACL user may not run a command this call needs.
    #[error(
        "Redis denied {operation}: the configured user lacks the permission \
         (the robot user writes, the viewer user reads and lists; see docs/RELIABILITY.md, Roles)"
    )]
    PermissionDenied {
        /// The library operation that was refused.
        operation: &'static str,
        /// What the server answered.
        source: redis::RedisError,
    },

    /// A command did not answer in time.
    #[error("Redis did not answer {operation} within {after:?}")]
    Timeout {
        /// The library operation that timed out.
        operation: &'static str,
        /// The timeout that expired.
        after: Duration,
    },

    /// The connection failed while a command was in flight, or the server answered an error.
    #[error("Redis command for {operation} failed")]
    Redis {
        /// The library operation that failed.
        operation: &'static str,
        /// What the driver reported.
        source: redis::RedisError,
    },

    /// A stored value or a published message is not the JSON document the wire contract describes.
    #[error("{key}: cannot decode {what}")]
    Decode {
        /// The Redis key (or `channel <name>`) holding the bad value.
        key: String,
        /// Which document or field was being decoded.
        what: &'static str,
        /// Why it failed.
        source: serde_json::Error,
    },

    /// A stored value breaks the wire contract in a way the JSON decoder does not see: not JSON
    /// where a Lua script parses it, a missing field, the wrong kind of document.
    #[error("{key}: stored value is corrupt ({detail}); fix or delete the key")]
    Corrupt {
        /// The Redis key (or stream entry) holding the bad value.
        key: String,
        /// What is wrong with it.
        detail: String,
    },

    /// The caller's input breaks a rule: a parameter value out of bounds, a YAML document that
    /// is not a map, a malformed cursor or channel name. Never used for stored data.
    #[error("{0}")]
    InvalidInput(String),

    /// The caller's input is larger than a bound the library enforces.
    #[error("{what} is {len} bytes; the limit is {limit}")]
    TooLarge {
        /// What is too large: "event", "scene", "parameter file x.yaml".
        what: String,
        /// Its size in bytes.
        len: usize,
        /// The bound in bytes.
        limit: usize,
    },

    /// A race with other writers was lost: a compare-and-set found the version moved on, or
    /// others kept changing what a write depends on through all of its retries. Nothing was
    /// written; reading again and retrying may succeed.
    #[error("{0}")]
    Conflict(String),

    /// A component was used before it connected (a bug of the caller or of the library).
    #[error("{0}: not connected to Redis")]
    NotConnected(&'static str),

    /// Redis answered a well-formed command with a reply of the wrong shape.
    #[error("Redis gave {operation} an unexpected reply: {detail}")]
    UnexpectedReply {
        /// The library operation that got the reply.
        operation: &'static str,
        /// What was wrong with it.
        detail: String,
    },

    /// A value could not be written in an output format (YAML), which does not happen for the
    /// values this library makes.
    #[error("cannot write {what} as {format}: {detail}")]
    Encode {
        /// What was being written.
        what: String,
        /// The format: "YAML".
        format: &'static str,
        /// What the writer said.
        detail: String,
    },

    /// The session has no progress hash (never started, or expired after its retention).
    #[error("no stroke session {0:?}: it was never started or has expired")]
    SessionNotFound(String),

    /// The parameter is not declared.
    #[error("{0}: no such parameter")]
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

    /// A key that should hold `kind` ("stream", "sorted set") holds another client's value of
    /// another type.
    pub(crate) fn wrong_type(key: &str, kind: &str) -> Error {
        Error::Corrupt {
            key: key.to_owned(),
            detail: format!("the key is not a {kind}"),
        }
    }

    /// True when the error means Redis could not be reached or the connection broke.
    pub fn is_connection_error(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::SubscriptionClosed
            | Error::NotConnected(_)
            | Error::NoMaster { .. }
            | Error::MasterSwitched { .. } => true,
            Error::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || matches!(source.code(), Some("READONLY" | "NOREPLICAS" | "MASTERDOWN"))
            }
            _ => false,
        }
    }
}

/// What became of a write refused with [`Error::MasterSwitched`].
fn switched_outcome(sent: bool) -> &'static str {
    if sent {
        "the old master answered, and the write may or may not be kept"
    } else {
        "nothing was sent; the next call goes to the new master"
    }
}

/// An error and its chain of sources as one line: `outer: cause: root cause`.
///
/// A cause whose text the line already contains is skipped, so a driver error that wraps an
/// I/O error with the same message is said once. Binaries print their final error with it
/// (after adding their own context), and anything that logs an [`Error`] can use
/// [`Error::report`] to keep the driver's detail that `Display` alone leaves to `source()`.
#[derive(Clone, Copy)]
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(err) = cause {
            let text = err.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = err.source();
        }
        f.write_str(&line)
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// This error with its sources, each said once (see [`Report`]).
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages a failover during a write and a broken shared key give.
    #[test]
    fn switched_and_wrong_type_messages() {
        let answered = Error::MasterSwitched {
            operation: "update_stroke_progress",
            sent: true,
        };
        assert_eq!(
            answered.to_string(),
            "the Redis master changed during update_stroke_progress: the old master answered, and the write may or may not be kept"
        );
        let unsent = Error::MasterSwitched {
            operation: "report_error",
            sent: false,
        };
        assert_eq!(
            unsent.to_string(),
            "the Redis master changed during report_error: nothing was sent; the next call goes to the new master"
        );
        assert!(answered.is_connection_error() && unsent.is_connection_error());
        assert_eq!(
            Error::wrong_type("tatbot:errors", "stream").to_string(),
            "tatbot:errors: stored value is corrupt (the key is not a stream); fix or delete the key"
        );
    }

    /// A driver error that wraps an I/O error with the same text is said once, after the
    /// library's own message.
    #[test]
    fn report_says_each_cause_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let err = Error::Unreachable {
            target: "127.0.0.1:1".to_owned(),
            source: redis::RedisError::from(io),
        };
        assert_eq!(err.to_string(), "cannot reach Redis at 127.0.0.1:1");
        assert_eq!(
            err.report().to_string(),
            "cannot reach Redis at 127.0.0.1:1: Connection refused (os error 111)"
        );
    }

    /// Issue #12: no message names a command of a binary, an environment variable to set or a
    /// site's address; binaries add that advice.
    #[test]
    fn messages_give_no_binary_advice() {
        let driver = || redis::RedisError::from(std::io::Error::other("boom"));
        let errors = [
            Error::Unreachable {
                target: "h:1".to_owned(),
                source: driver(),
            },
            Error::Auth {
                target: "h:1".to_owned(),
                source: driver(),
            },
            Error::PermissionDenied {
                operation: "op",
                source: driver(),
            },
            Error::Timeout {
                operation: "op",
                after: Duration::from_secs(1),
            },
            Error::SessionNotFound("s".to_owned()),
            Error::ParamNotFound("p".to_owned()),
            Error::SubscriptionClosed,
        ];
        for err in errors {
            let text = err.to_string();
            for word in ["tatbot-state", "REDIS_", "192.168.", "doctor", "Try "] {
                assert!(!text.contains(word), "{text:?} contains {word:?}");
            }
            assert!(!text.contains("boom"), "{text:?} repeats its source");
        }
    }
}

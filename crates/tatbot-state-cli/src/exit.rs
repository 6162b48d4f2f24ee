//! Exit codes, documented in `tatbot-state --help` and docs/OPERATIONS.md.

use tatbot_state::Error;
use tatbot_state::config::ConfigError;
use tatbot_state::http::BindError;

/// Everything worked (for `doctor`: every check passed).
pub const SUCCESS: u8 = 0;
/// A command failed for a reason not listed below, or a `doctor` check failed.
pub const FAILURE: u8 = 1;
/// Bad usage: unknown flag, a flag value that does not parse (clap's code), or an argument
/// the library rejects (an invalid id, a value that breaks a parameter's rules, input too large).
pub const USAGE: u8 = 2;
/// Redis could not be reached (refused, timed out, host unknown).
pub const UNREACHABLE: u8 = 3;
/// Redis refused the credentials or the ACL user lacks a permission.
pub const AUTH: u8 = 4;
/// The session, node or parameter asked for does not exist.
pub const NOT_FOUND: u8 = 5;
/// The configuration (YAML, env file, environment, flags) is invalid.
pub const CONFIG: u8 = 6;
/// Data stored in Redis breaks the wire contract (not JSON, a missing field); fix or delete it.
pub const CORRUPT: u8 = 7;
/// A race with other writers was lost (`param set --if-version` found another version, or
/// others kept changing the parameters through every retry); nothing was written.
pub const CONFLICT: u8 = 8;

/// The text appended to `--help`.
pub const HELP: &str = "Exit codes: 0 success, 1 failure (or a doctor check failed), 2 bad usage, \
3 Redis unreachable, 4 credentials refused, 5 session, node or parameter not found, 6 invalid configuration, \
7 corrupt data in Redis, 8 lost a race with other writers (try again).";

/// Maps an error chain to an exit code by the first library error found in it.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(err) = cause.downcast_ref::<Error>() {
            return match err {
                Error::Unreachable { .. }
                | Error::Timeout { .. }
                | Error::SubscriptionClosed
                | Error::NoMaster { .. }
                | Error::MasterSwitched { .. } => UNREACHABLE,
                Error::Auth { .. } | Error::PermissionDenied { .. } => AUTH,
                Error::SessionNotFound(_) | Error::ParamNotFound(_) => NOT_FOUND,
                Error::Config(_) | Error::NotRedis { .. } => CONFIG,
                Error::InvalidId { .. } | Error::InvalidInput(_) | Error::TooLarge { .. } => USAGE,
                Error::Decode { .. } | Error::Corrupt { .. } => CORRUPT,
                Error::Conflict(_) => CONFLICT,
                _ if err.is_connection_error() => UNREACHABLE,
                _ => FAILURE,
            };
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return CONFIG;
        }
        if cause.downcast_ref::<BindError>().is_some() {
            return USAGE;
        }
        if let Some(code) = cause.downcast_ref::<Coded>() {
            return code.0;
        }
    }
    FAILURE
}

/// An error that carries its exit code, for failures the library does not classify
/// (for example "no such node").
#[derive(Debug)]
pub struct Coded(pub u8, pub String);

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Coded {}

/// An `anyhow` error with the "not found" exit code.
pub fn not_found(message: String) -> anyhow::Error {
    anyhow::Error::new(Coded(NOT_FOUND, message))
}

/// True when the chain bottoms out in a broken pipe (the reader of stdout went away).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #12: each class of library error has its own code; corrupt data and lost races
    /// are not "bad usage".
    #[test]
    fn each_error_class_has_its_code() {
        let decode = serde_json::from_str::<serde_json::Value>("{").expect_err("not JSON");
        let cases = [
            (Error::InvalidInput("x".to_owned()), USAGE),
            (
                Error::TooLarge {
                    what: "event".to_owned(),
                    len: 2,
                    limit: 1,
                },
                USAGE,
            ),
            (
                Error::Decode {
                    key: "k".to_owned(),
                    what: "doc",
                    source: decode,
                },
                CORRUPT,
            ),
            (
                Error::Corrupt {
                    key: "k".to_owned(),
                    detail: "d".to_owned(),
                },
                CORRUPT,
            ),
            (Error::Conflict("c".to_owned()), CONFLICT),
            (Error::NotConnected("follow"), UNREACHABLE),
            (
                Error::MasterSwitched {
                    operation: "update_stroke_progress",
                    sent: true,
                },
                UNREACHABLE,
            ),
            (
                Error::UnexpectedReply {
                    operation: "op",
                    detail: "d".to_owned(),
                },
                FAILURE,
            ),
            (Error::SessionNotFound("s".to_owned()), NOT_FOUND),
        ];
        for (err, code) in cases {
            let shown = err.to_string();
            assert_eq!(code_for(&anyhow::Error::new(err).context("doing it")), code, "{shown}");
        }
    }
}

//! The final error line: the error chain said once, then a hint where a person can act.
//!
//! The library's messages say what went wrong and keep the driver's error as their source; they
//! name no command of this binary, no environment variable and no site address. This module adds
//! that advice, once, at the end of the one line `main` prints, so the same failure reads the
//! same whichever subcommand hit it.

use tatbot_state::Error;
use tatbot_state::config::{ConfigError, Source};
use tatbot_state::http::BindError;

/// The IP shown in examples: the address of the node that normally runs Redis.
const EXAMPLE_IP: &str = "192.168.1.97";

/// `err` and its causes as one line, each cause said once (a cause whose text the line already
/// holds is skipped), followed by `; hint: ...` when one applies.
pub fn line(err: &anyhow::Error) -> String {
    let root: &(dyn std::error::Error + 'static) = err.as_ref();
    // The driver's messages may span lines; the report is one.
    let mut line = tatbot_state::Report(root)
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(hint) = err.chain().find_map(hint_for) {
        line.push_str("; hint: ");
        line.push_str(&hint);
    }
    line
}

/// The hint for one error of the chain, if it is one this binary knows how to advise on.
fn hint_for(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(err) = cause.downcast_ref::<Error>() {
        return match err {
            Error::Config(config) => config_hint(config),
            other => hint(other).map(str::to_owned),
        };
    }
    if let Some(config) = cause.downcast_ref::<ConfigError>() {
        return config_hint(config);
    }
    if let Some(BindError::TokenRequired { .. }) = cause.downcast_ref::<BindError>() {
        return Some("pass --token (or its environment variable), or bind 127.0.0.1".to_owned());
    }
    if cause
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    {
        return Some(
            "another process listens there: find it with `ss -ltnp`, or pass another port (--bind IP:0 picks a free one)"
                .to_owned(),
        );
    }
    None
}

/// What a person can do about a library error, naming this binary's commands and flags.
pub fn hint(err: &Error) -> Option<&'static str> {
    Some(match err {
        Error::Unreachable { .. } => "is it running? Check with `tatbot-state doctor`",
        Error::NotRedis { .. } => "is -p (REDIS_PORT) the Redis port? The dashboard and MCP listen on others",
        Error::Auth { .. } => "check REDIS_PASSWORD (and REDIS_USERNAME for ACL users), or -a and --user",
        Error::Timeout { .. } => "is the server overloaded or paused? Check with `tatbot-state doctor`",
        Error::SubscriptionClosed => "check the server with `tatbot-state doctor`",
        Error::NoMaster { .. } => {
            "a failover may be under way (it takes a few seconds); check the sentinels and --master-name (REDIS_MASTER_NAME) with `tatbot-state doctor`"
        }
        Error::MasterSwitched { .. } => {
            "a failover just happened: read the value back (`tatbot-state progress`, `history` or `param get`) and write it again if it is missing"
        }
        Error::SessionNotFound(_) => "list sessions with `tatbot-state sessions`",
        Error::ParamNotFound(_) => "declare it first; list parameters with `tatbot-state param list`",
        _ => return None,
    })
}

/// The hint for a configuration error: only an unresolvable host has one.
fn config_hint(err: &ConfigError) -> Option<String> {
    let ConfigError::Unresolvable { host_source, .. } = err else {
        return None;
    };
    // A flag beats REDIS_HOST, so telling a user who passed --host to set the variable would
    // not help them.
    Some(match host_source {
        Source::Flag(flag) => format!("pass the Redis IP instead, e.g. {flag} {EXAMPLE_IP}"),
        _ => format!("set REDIS_HOST to the Redis IP, e.g. export REDIS_HOST={EXAMPLE_IP}"),
    })
}

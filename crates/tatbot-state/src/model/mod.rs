//! Serde types for every stored document and pub/sub event of the wire contract.
//!
//! Field names, types and defaults follow `../shared/WIRE.md` exactly. Each document keeps the
//! fields it does not know in `extra` and writes them back unchanged, so a newer Python node's
//! additions survive a round trip through a Rust node. Missing fields take the contract's
//! defaults, as pydantic fills them on the Python side; `timestamp` and `node_id` are required.

mod event;
mod health;
mod robot;
mod stroke;

pub use event::types as event_types;
pub use event::{ErrorEvent, Event, ProgressUpdateEvent, SessionEndEvent, SessionStartEvent, StateUpdateEvent};
pub use health::{KnownNode, NodeHealth, is_percent};
pub use robot::RobotState;
pub use stroke::{
    DEFAULT_SESSION_LEASE, HistoryCursor, HistoryEntry, MAX_SESSION_LEASE, ProgressUpdate, SessionPlan, SessionState,
    StrokeProgress,
};

/// The largest stored document or event body we decode (1 MiB); anything larger is refused
/// with an error rather than parsed, so a runaway writer cannot make readers allocate without
/// bound. Real documents are well under 2 KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// How far ahead of this machine's clock a stored timestamp may be before it counts as outside
/// its domain (one day: wide enough for a node that writes local time instead of UTC, far too
/// narrow for a year-9999 timestamp to win "latest").
pub const MAX_FUTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Why `timestamp` is outside its domain (too far in the future), if it is.
pub(crate) fn future_problem(what: &str, timestamp: crate::timestamp::Timestamp) -> Option<String> {
    let limit_ms = i64::try_from(MAX_FUTURE_SKEW.as_millis()).unwrap_or(i64::MAX);
    let ahead_ms = timestamp
        .unix_millis()
        .saturating_sub(crate::timestamp::Timestamp::now().unix_millis());
    (ahead_ms > limit_ms).then(|| format!("{what} {timestamp} is in the future"))
}

/// Unknown JSON fields, kept in the order they arrived.
pub type Extra = serde_json::Map<String, serde_json::Value>;

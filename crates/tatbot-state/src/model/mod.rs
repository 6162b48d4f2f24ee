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
pub use health::NodeHealth;
pub use robot::RobotState;
pub use stroke::{HistoryEntry, StrokeProgress};

/// The largest stored document or event body we decode (1 MiB); anything larger is refused
/// with an error rather than parsed, so a runaway writer cannot make readers allocate without
/// bound. Real documents are well under 2 KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Unknown JSON fields, kept in the order they arrived.
pub type Extra = serde_json::Map<String, serde_json::Value>;

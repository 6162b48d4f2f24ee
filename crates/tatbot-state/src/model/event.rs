//! Pub/sub events, one JSON object per message with a `type`.
//!
//! [`Event`] has a variant per type of the wire contract and [`Event::Other`] for everything
//! else: a type we do not know, or an object without a type, is kept whole as raw JSON and never
//! rejected. A known type whose fields are malformed is a decode error, reported to the reader
//! with the channel it came from.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Extra;
use crate::timestamp::Timestamp;

/// `state_update` on `robot:events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateUpdateEvent {
    /// The robot node.
    pub node_id: String,
    /// When the state was written.
    pub timestamp: Timestamp,
    /// Left arm connected.
    #[serde(default)]
    pub is_connected_l: bool,
    /// Right arm connected.
    #[serde(default)]
    pub is_connected_r: bool,
    /// Named pose.
    #[serde(default)]
    pub current_pose: String,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `session_start` on `stroke:events:session`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStartEvent {
    /// The new session.
    pub session_id: String,
    /// The node that started it.
    pub node_id: String,
    /// Strokes planned.
    #[serde(default)]
    pub total_strokes: i64,
    /// Scene being tattooed.
    #[serde(default)]
    pub scene_name: String,
    /// When it started.
    pub timestamp: Timestamp,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `session_end` on `stroke:events:session`; our `session_pause` and `session_resume` share its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEndEvent {
    /// The session.
    pub session_id: String,
    /// The node that ended it.
    pub node_id: String,
    /// When.
    pub timestamp: Timestamp,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `progress_update` on `stroke:events:progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressUpdateEvent {
    /// The session.
    pub session_id: String,
    /// The writer.
    pub node_id: String,
    /// Stroke index.
    #[serde(default)]
    pub stroke_idx: i64,
    /// Pose index.
    #[serde(default)]
    pub pose_idx: i64,
    /// Strokes in the session.
    #[serde(default)]
    pub total_strokes: i64,
    /// Poses per stroke.
    #[serde(default)]
    pub stroke_length: i64,
    /// Left description.
    #[serde(default)]
    pub description_l: String,
    /// Right description.
    #[serde(default)]
    pub description_r: String,
    /// When.
    pub timestamp: Timestamp,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `error` on `error:events:{category}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "record", derive(schemars::JsonSchema))]
pub struct ErrorEvent {
    /// The category (also the channel suffix).
    #[serde(default)]
    pub category: String,
    /// What went wrong, for a person.
    #[serde(default)]
    pub message: String,
    /// Structured context.
    #[serde(default = "empty_object")]
    pub details: Value,
    /// The reporting node.
    pub node_id: String,
    /// When.
    pub timestamp: Timestamp,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

fn empty_object() -> Value {
    Value::Object(Extra::new())
}

/// A decoded pub/sub message body.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// `state_update`.
    StateUpdate(StateUpdateEvent),
    /// `session_start`.
    SessionStart(SessionStartEvent),
    /// `session_end`.
    SessionEnd(SessionEndEvent),
    /// `session_pause` (ours).
    SessionPause(SessionEndEvent),
    /// `session_resume` (ours).
    SessionResume(SessionEndEvent),
    /// `progress_update`.
    ProgressUpdate(ProgressUpdateEvent),
    /// `error`.
    Error(ErrorEvent),
    /// Any other JSON value, kept whole (an unknown `type`, or no `type` at all).
    Other(Value),
}

/// The `type` strings of the contract, plus ours.
pub mod types {
    /// `state_update`.
    pub const STATE_UPDATE: &str = "state_update";
    /// `session_start`.
    pub const SESSION_START: &str = "session_start";
    /// `session_end`.
    pub const SESSION_END: &str = "session_end";
    /// `session_pause` (ours).
    pub const SESSION_PAUSE: &str = "session_pause";
    /// `session_resume` (ours).
    pub const SESSION_RESUME: &str = "session_resume";
    /// `session_abort` (ours): an operator ended a session with a reason.
    pub const SESSION_ABORT: &str = "session_abort";
    /// `session_stale` (ours): a session's owner let its lease lapse; published once per
    /// session.
    pub const SESSION_STALE: &str = "session_stale";
    /// `progress_update`.
    pub const PROGRESS_UPDATE: &str = "progress_update";
    /// `error`.
    pub const ERROR: &str = "error";
}

impl Event {
    /// Decodes a message body.
    ///
    /// # Errors
    ///
    /// The body is larger than [`crate::model::MAX_DOCUMENT_BYTES`], is not JSON, or names a
    /// known `type` but its fields don't fit that type.
    pub fn from_json(payload: &[u8]) -> serde_json::Result<Event> {
        if payload.len() > crate::model::MAX_DOCUMENT_BYTES {
            return Err(serde::de::Error::custom(format_args!(
                "message is {} bytes; the limit is {}",
                payload.len(),
                crate::model::MAX_DOCUMENT_BYTES
            )));
        }
        let value: Value = serde_json::from_slice(payload)?;
        let Value::Object(mut object) = value else {
            return Ok(Event::Other(value));
        };
        let Some(Value::String(kind)) = object.get("type") else {
            return Ok(Event::Other(Value::Object(object)));
        };
        let kind = kind.clone();
        let known = [
            types::STATE_UPDATE,
            types::SESSION_START,
            types::SESSION_END,
            types::SESSION_PAUSE,
            types::SESSION_RESUME,
            types::PROGRESS_UPDATE,
            types::ERROR,
        ];
        if !known.contains(&kind.as_str()) {
            return Ok(Event::Other(Value::Object(object)));
        }
        object.shift_remove("type");
        let body = Value::Object(object);
        Ok(match kind.as_str() {
            types::STATE_UPDATE => Event::StateUpdate(serde_json::from_value(body)?),
            types::SESSION_START => Event::SessionStart(serde_json::from_value(body)?),
            types::SESSION_END => Event::SessionEnd(serde_json::from_value(body)?),
            types::SESSION_PAUSE => Event::SessionPause(serde_json::from_value(body)?),
            types::SESSION_RESUME => Event::SessionResume(serde_json::from_value(body)?),
            types::PROGRESS_UPDATE => Event::ProgressUpdate(serde_json::from_value(body)?),
            _ => Event::Error(serde_json::from_value(body)?),
        })
    }

    /// The `type` field, or `None` for an [`Event::Other`] without one.
    pub fn event_type(&self) -> Option<&str> {
        Some(match self {
            Event::StateUpdate(_) => types::STATE_UPDATE,
            Event::SessionStart(_) => types::SESSION_START,
            Event::SessionEnd(_) => types::SESSION_END,
            Event::SessionPause(_) => types::SESSION_PAUSE,
            Event::SessionResume(_) => types::SESSION_RESUME,
            Event::ProgressUpdate(_) => types::PROGRESS_UPDATE,
            Event::Error(_) => types::ERROR,
            Event::Other(value) => return value.get("type").and_then(Value::as_str),
        })
    }

    /// The session the event is about, if any; for a type this version does not model (such as
    /// `session_stale` and `session_abort`), its `session_id` field when it is a string.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            Event::SessionStart(event) => Some(&event.session_id),
            Event::SessionEnd(event) | Event::SessionPause(event) | Event::SessionResume(event) => {
                Some(&event.session_id)
            }
            Event::ProgressUpdate(event) => Some(&event.session_id),
            Event::Other(value) => value.get("session_id").and_then(Value::as_str),
            _ => None,
        }
    }

    /// The event as a JSON value with `type` first, fields in the contract's order.
    pub fn to_value(&self) -> Value {
        let body = match self {
            Event::StateUpdate(event) => serde_json::to_value(event),
            Event::SessionStart(event) => serde_json::to_value(event),
            Event::SessionEnd(event) | Event::SessionPause(event) | Event::SessionResume(event) => {
                serde_json::to_value(event)
            }
            Event::ProgressUpdate(event) => serde_json::to_value(event),
            Event::Error(event) => serde_json::to_value(event),
            Event::Other(value) => return value.clone(),
        };
        // Our event structs contain only strings, numbers, booleans and JSON values, which
        // always serialize; an error here would be a bug in a derive.
        let Ok(Value::Object(fields)) = body else {
            return Value::Null;
        };
        let mut object = Extra::with_capacity(fields.len() + 1);
        if let Some(kind) = self.event_type() {
            object.insert("type".to_owned(), Value::String(kind.to_owned()));
        }
        object.extend(fields);
        Value::Object(object)
    }

    /// The message body as Python's `json.dumps` would write it.
    pub fn to_json(&self) -> String {
        crate::pyjson::to_string(&self.to_value()).unwrap_or_default()
    }
}

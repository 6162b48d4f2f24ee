//! Writes as values: each [`Op`] is one script invocation, built the same way whether the
//! caller awaits it ([`crate::StateManager`]) or queues it ([`crate::Producer`]).
//!
//! An op carries everything it writes, stamped when it was made, so sending it late (after a
//! reconnect) or twice (after a Redis restart) writes what the caller meant at the time.

use std::fmt::Write as _;

use redis::ScriptInvocation;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::connection::ManagerConfig;
use crate::error::{Error, Result};
use crate::fastpath::{DocCache, FastArgs};
use crate::ids::{NodeId, SessionId};
use crate::keys;
use crate::model::{Event, NodeHealth, ProgressUpdate, RobotState, event_types};
use crate::pyjson::json_string;
use crate::scripts;
use crate::timestamp::Timestamp;

/// One write.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Merge `update` (stamped `at`) into a session's progress, append history, publish
    /// `progress_update`. The JSON patch is built when the op is sent, not when it is made, so
    /// a producer call does no JSON or timestamp formatting on the robot's thread.
    Progress {
        session_id: SessionId,
        update: ProgressUpdate,
        at: Timestamp,
    },
    /// Re-create a session from a producer's copy of its document when Redis lost it, and
    /// announce it with `session_start`; nothing when it exists. Queued after a producer starts
    /// a session, so the start is replayed like any other recent write after a restart.
    Ensure {
        session_id: SessionId,
        /// The progress document to store.
        document: String,
        /// The session index's score: when the session started.
        start_ms: i64,
        /// The `session_start` event.
        event: String,
        /// The document says the session ended: the keys get the retention TTL.
        ended: bool,
    },
    /// End, pause or resume a session.
    RunState {
        session_id: SessionId,
        patch: Map<String, Value>,
        kind: RunState,
    },
    /// Store a robot state snapshot and publish `state_update`.
    RobotState {
        key: String,
        state: String,
        last_updated: String,
        event: String,
    },
    /// Store a heartbeat.
    Health {
        key: String,
        node_id: String,
        health: String,
        heartbeat_ms: i64,
    },
    /// Publish and store an error.
    Error {
        channel: String,
        event: String,
        min_id_ms: i64,
    },
}

/// Which run-state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunState {
    Pause,
    Resume,
    End,
    /// An operator's abort: ends the session with a reason.
    Abort,
}

impl RunState {
    fn event_type(self) -> &'static str {
        match self {
            RunState::Pause => event_types::SESSION_PAUSE,
            RunState::Resume => event_types::SESSION_RESUME,
            RunState::End => event_types::SESSION_END,
            RunState::Abort => event_types::SESSION_ABORT,
        }
    }
}

impl Op {
    /// Snapshots (robot state, heartbeats) are superseded by a newer write to the same key;
    /// this is that key.
    pub(crate) fn snapshot_key(&self) -> Option<&str> {
        match self {
            Op::RobotState { key, .. } | Op::Health { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The session whose progress document this op changes.
    pub(crate) fn session(&self) -> Option<&SessionId> {
        match self {
            Op::Progress { session_id, .. } | Op::RunState { session_id, .. } | Op::Ensure { session_id, .. } => {
                Some(session_id)
            }
            _ => None,
        }
    }

    /// Plans the fast path of a progress update from what `docs` knows, and keeps `docs` in
    /// step with what this op will store: a run-state change makes the session unknown.
    pub(crate) fn plan(&self, docs: &mut DocCache, node_id: &NodeId) -> Option<FastArgs> {
        match self {
            Op::Progress { session_id, update, at } => docs.plan(session_id, update, *at, node_id),
            Op::RunState { session_id, .. } | Op::Ensure { session_id, .. } => {
                docs.forget(session_id);
                None
            }
            _ => None,
        }
    }

    /// The invocation, with writer revision `rev_key` (`""` for none) and sequence `seq`, and
    /// for a progress update the fast path's arguments when there are some.
    pub(crate) fn invocation(
        &self,
        config: &ManagerConfig,
        rev_key: &str,
        seq: u64,
        fast: Option<&FastArgs>,
    ) -> ScriptInvocation<'static> {
        match self {
            Op::Progress { session_id, update, at } => {
                let mut invocation = scripts::UPDATE.prepare_invoke();
                invocation
                    .key(keys::progress(session_id))
                    .key(keys::history(session_id))
                    .key(keys::EVENT_LOG)
                    .arg(rev_key)
                    .arg(seq)
                    .arg(progress_patch(update, *at, &config.node_id))
                    .arg(session_id.as_str())
                    .arg(config.history_maxlen)
                    .arg(config.event_log_maxlen)
                    .arg(keys::PROGRESS_EVENTS);
                if let Some(fast) = fast {
                    invocation
                        .arg(&fast.expected)
                        .arg(&fast.document)
                        .arg(&fast.description_l)
                        .arg(&fast.description_r)
                        .arg(&fast.event)
                        .arg(update.stroke_idx)
                        .arg(update.pose_idx)
                        .arg(config.node_id.as_str());
                }
                invocation
            }
            Op::Ensure {
                session_id,
                document,
                start_ms,
                event,
                ended,
            } => {
                let retention = if *ended {
                    config.session_retention.as_secs().max(1)
                } else {
                    0
                };
                let mut invocation = scripts::ENSURE.prepare_invoke();
                invocation
                    .key(keys::progress(session_id))
                    .key(keys::SESSION_INDEX)
                    .key(keys::EVENT_LOG)
                    .arg(rev_key)
                    .arg(seq)
                    .arg(document)
                    .arg(session_id.as_str())
                    .arg(*start_ms)
                    .arg(config.event_log_maxlen)
                    .arg(keys::SESSION_EVENTS)
                    .arg(event)
                    .arg(retention);
                invocation
            }
            Op::RunState {
                session_id,
                patch,
                kind,
            } => {
                let retention = config.session_retention.as_secs().max(1);
                let retention = if matches!(kind, RunState::End | RunState::Abort) {
                    retention
                } else {
                    0
                };
                let now_ms = patch.get("timestamp").and_then(Value::as_str).map_or(0, |text| {
                    crate::timestamp::Timestamp::parse(text).map_or(0, |ts| ts.unix_millis())
                });
                let retention_ms = i64::try_from(config.session_retention.as_millis()).unwrap_or(i64::MAX);
                let mut invocation = scripts::RUN_STATE.prepare_invoke();
                invocation
                    .key(keys::progress(session_id))
                    .key(keys::history(session_id))
                    .key(keys::EVENT_LOG)
                    .key(keys::SESSION_INDEX)
                    .key(keys::stale_claim(session_id))
                    .arg(rev_key)
                    .arg(seq)
                    .arg(Value::Object(patch.clone()).to_string())
                    .arg(session_id.as_str())
                    .arg(retention)
                    .arg(config.event_log_maxlen)
                    .arg(keys::SESSION_EVENTS)
                    .arg(kind.event_type())
                    .arg(now_ms.saturating_sub(retention_ms));
                invocation
            }
            Op::RobotState {
                key,
                state,
                last_updated,
                event,
            } => {
                let mut invocation = scripts::ROBOT.prepare_invoke();
                invocation
                    .key(key)
                    .key(keys::EVENT_LOG)
                    .arg(rev_key)
                    .arg(seq)
                    .arg(state)
                    .arg(last_updated)
                    .arg(event)
                    .arg(config.event_log_maxlen)
                    .arg(keys::ROBOT_EVENTS);
                invocation
            }
            Op::Health {
                key,
                node_id,
                health,
                heartbeat_ms,
            } => {
                let mut invocation = scripts::HEARTBEAT.prepare_invoke();
                invocation
                    .key(key)
                    .key(keys::NODE_REGISTRY)
                    .arg(rev_key)
                    .arg(seq)
                    .arg(health)
                    .arg(config.health_ttl.as_secs().max(1))
                    .arg(node_id)
                    .arg(heartbeat_ms);
                invocation
            }
            Op::Error {
                channel,
                event,
                min_id_ms,
            } => {
                let mut invocation = scripts::ERROR.prepare_invoke();
                invocation
                    .key(keys::ERROR_LOG)
                    .key(keys::EVENT_LOG)
                    .arg(rev_key)
                    .arg(seq)
                    .arg(channel)
                    .arg(event)
                    .arg(config.error_log_maxlen)
                    .arg((*min_id_ms).max(0))
                    .arg(config.event_log_maxlen);
                invocation
            }
        }
    }
}

/// The JSON patch of a progress update: the fields it names, stamped and signed. Written
/// directly rather than through a `serde_json` map: it is built for every update the
/// producer's writer sends.
fn progress_patch(update: &ProgressUpdate, at: Timestamp, node_id: &NodeId) -> String {
    let mut patch = format!(
        "{{\"timestamp\":\"{at}\",\"node_id\":{},\"stroke_idx\":{},\"pose_idx\":{}",
        json_string(node_id.as_str()),
        update.stroke_idx,
        update.pose_idx
    );
    for (name, text) in [
        ("stroke_description_l", &update.description_l),
        ("stroke_description_r", &update.description_r),
    ] {
        if let Some(text) = text {
            let _ = write!(patch, ",\"{name}\":{}", json_string(text));
        }
    }
    for (name, offset) in [
        ("offset_idx_l", update.offset_idx_l),
        ("offset_idx_r", update.offset_idx_r),
    ] {
        if let Some(offset) = offset {
            let _ = write!(patch, ",\"{name}\":{offset}");
        }
    }
    patch.push('}');
    patch
}

/// The op storing `state` under its node's key.
pub(crate) fn robot_state_op(state: &RobotState) -> Result<Op> {
    let node_id = NodeId::new(state.node_id.as_str())?;
    let event = Event::StateUpdate(crate::model::StateUpdateEvent {
        node_id: state.node_id.clone(),
        timestamp: state.timestamp,
        is_connected_l: state.is_connected_l,
        is_connected_r: state.is_connected_r,
        current_pose: state.current_pose.clone(),
        extra: Default::default(),
    });
    Ok(Op::RobotState {
        key: keys::robot_state(&node_id),
        state: encode_json("state", state)?,
        last_updated: Timestamp::now().to_string(),
        event: event.to_json(),
    })
}

/// The op storing a heartbeat under its node's key.
pub(crate) fn health_op(health: &NodeHealth) -> Result<Op> {
    let node_id = NodeId::new(health.node_id.as_str())?;
    Ok(Op::Health {
        key: keys::health(&node_id),
        node_id: node_id.to_string(),
        health: encode_json("health", health)?,
        heartbeat_ms: health.last_heartbeat.unix_millis(),
    })
}

/// `value` as JSON text; `what` names it in the error.
pub(crate) fn encode_json<T: Serialize>(what: &'static str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Decode {
        key: format!("(encoding {what})"),
        what,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patch names exactly the fields the update sets, as valid JSON.
    #[test]
    fn patch_names_what_the_update_sets() {
        let at = Timestamp::parse("2026-11-25T10:00:00.5").unwrap();
        let node = NodeId::new("ook").unwrap();
        let patch: Value = serde_json::from_str(&progress_patch(&ProgressUpdate::new(3, 4), at, &node)).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"timestamp": "2026-11-25T10:00:00.500000", "node_id": "ook", "stroke_idx": 3, "pose_idx": 4})
        );
        let update = ProgressUpdate {
            description_l: Some("say \"hi\"\n".into()),
            offset_idx_r: Some(-2),
            ..ProgressUpdate::new(0, 1)
        };
        let patch: Value = serde_json::from_str(&progress_patch(&update, at, &node)).unwrap();
        assert_eq!(patch["stroke_description_l"], "say \"hi\"\n");
        assert_eq!(patch["offset_idx_r"], -2);
        assert!(patch.get("stroke_description_r").is_none() && patch.get("offset_idx_l").is_none());
    }
}

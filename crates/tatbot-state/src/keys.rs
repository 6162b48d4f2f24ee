//! The key schema: every Redis key, channel and stream name, and the only place they are built.
//!
//! The first group is the wire contract with the Python nodes (`../shared/WIRE.md`); those names
//! must not change. The second group is ours, all under the `tatbot:` prefix, which no Python
//! node scans: the contract forbids new keys matching `node:health:*` or `stroke:progress:*`,
//! because Python parses everything after those prefixes as a node or session id.
//! docs/WIRE.md documents both groups.

use crate::ids::{Category, NodeId, ParamName, SessionId};

/// Prefix of `robot:state:{node_id}` hashes.
pub const ROBOT_STATE_PREFIX: &str = "robot:state:";
/// Prefix of `stroke:progress:{session_id}` hashes.
pub const PROGRESS_PREFIX: &str = "stroke:progress:";
/// Prefix of `node:health:{node_id}` hashes (60 s TTL).
pub const HEALTH_PREFIX: &str = "node:health:";
/// Prefix of `stream:stroke_history:{session_id}` streams.
pub const HISTORY_PREFIX: &str = "stream:stroke_history:";
/// `SCAN` pattern for progress hashes.
pub const PROGRESS_PATTERN: &str = "stroke:progress:*";
/// `SCAN` pattern for health hashes.
pub const HEALTH_PATTERN: &str = "node:health:*";
/// `SCAN` pattern for robot state hashes.
pub const ROBOT_STATE_PATTERN: &str = "robot:state:*";

/// Channel of `state_update` events.
pub const ROBOT_EVENTS: &str = "robot:events";
/// Channel of `session_start` and `session_end` events.
pub const SESSION_EVENTS: &str = "stroke:events:session";
/// Channel of `progress_update` events.
pub const PROGRESS_EVENTS: &str = "stroke:events:progress";
/// Prefix of `error:events:{category}` channels.
pub const ERROR_EVENTS_PREFIX: &str = "error:events:";
/// The patterns an operator watches by default.
pub const DEFAULT_EVENT_PATTERNS: [&str; 3] = ["stroke:events:*", "robot:events", "error:events:*"];

/// Hash field holding the RobotState JSON.
pub const FIELD_STATE: &str = "state";
/// Hash field holding the robot state's write time.
pub const FIELD_LAST_UPDATED: &str = "last_updated";
/// Hash field holding the StrokeProgress JSON.
pub const FIELD_PROGRESS: &str = "progress";
/// Hash field holding the NodeHealth JSON.
pub const FIELD_HEALTH: &str = "health";

/// Ours: sorted set of session ids scored by start time in Unix milliseconds.
pub const SESSION_INDEX: &str = "tatbot:sessions";
/// Ours: prefix of the per-second counters that make session ids unique.
pub const SESSION_SEQ_PREFIX: &str = "tatbot:session_seq:";
/// Ours: sorted set of node ids that ever sent a heartbeat, scored by last heartbeat (Unix ms).
pub const NODE_REGISTRY: &str = "tatbot:nodes";
/// Ours: capped stream of reported errors (bounded length and age).
pub const ERROR_LOG: &str = "tatbot:errors";
/// Ours: capped stream of every event we publish, in order (the durable event log).
pub const EVENT_LOG: &str = "tatbot:events";
/// Ours: hash of producer counters (field: writer id, value: JSON with `stats` and `updated`).
pub const PRODUCERS: &str = "tatbot:producers";
/// Ours: string set for a minute by the producer that takes stale records out of
/// [`PRODUCERS`], so that one producer of the fleet does it at a time, once a minute at most.
pub const PRODUCERS_PRUNING: &str = "tatbot:producers_pruning";
/// Ours: prefix of the per-producer revision counters that make replays idempotent.
pub const WRITER_REV_PREFIX: &str = "tatbot:rev:";

/// `robot:state:{node_id}`.
pub fn robot_state(node_id: &NodeId) -> String {
    format!("{ROBOT_STATE_PREFIX}{node_id}")
}

/// `stroke:progress:{session_id}`.
pub fn progress(session_id: &SessionId) -> String {
    format!("{PROGRESS_PREFIX}{session_id}")
}

/// `node:health:{node_id}`.
pub fn health(node_id: &NodeId) -> String {
    format!("{HEALTH_PREFIX}{node_id}")
}

/// `stream:stroke_history:{session_id}`.
pub fn history(session_id: &SessionId) -> String {
    format!("{HISTORY_PREFIX}{session_id}")
}

/// `error:events:{category}`.
pub fn error_channel(category: &Category) -> String {
    format!("{ERROR_EVENTS_PREFIX}{category}")
}

/// The base session id for a node at a Unix second: `stroke_{node_id}_{unix_seconds}`.
pub fn session_base(node_id: &NodeId, unix_seconds: i64) -> String {
    format!("stroke_{node_id}_{unix_seconds}")
}

/// `tatbot:session_seq:{base}`: counts sessions started with the same base id.
pub fn session_seq(base: &str) -> String {
    format!("{SESSION_SEQ_PREFIX}{base}")
}

/// `tatbot:rev:{writer_id}`: the last op sequence number a producer had applied.
pub fn writer_rev(writer_id: &str) -> String {
    format!("{WRITER_REV_PREFIX}{writer_id}")
}

/// Ours: prefix of the claims that make `session_stale` exactly-once per session.
pub const STALE_CLAIM_PREFIX: &str = "tatbot:stale:";

/// `tatbot:stale:{session_id}`: set (`SET NX`) by the watcher that announces the session
/// stale, so no other watcher announces it again.
pub fn stale_claim(session_id: &SessionId) -> String {
    format!("{STALE_CLAIM_PREFIX}{session_id}")
}

/// Ours: the channel `tatbot-state bench` uses for its plain pub/sub baseline.
pub const BENCH_CHANNEL: &str = "tatbot:bench";

/// `tatbot:doctor:{nonce}`: the private channel of one `doctor` pub/sub round trip.
pub fn doctor_channel(nonce: &str) -> String {
    format!("tatbot:doctor:{nonce}")
}

/// The part of `key` after `prefix`, if `key` starts with it.
pub fn strip<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)
}

/// Ours: prefix of the parameter hashes `tatbot:param:{name}`.
pub const PARAM_PREFIX: &str = "tatbot:param:";
/// Ours: sorted set of every declared parameter name, all scored 0 so `ZRANGEBYLEX` lists them
/// by name.
pub const PARAM_INDEX: &str = "tatbot:params";
/// Ours: capped stream of every parameter change (the audit log the watch tails).
pub const PARAM_LOG: &str = "tatbot:param_log";
/// Ours: counter numbering the audit log's entries, so a watcher can tell a gap.
pub const PARAM_SEQ: &str = "tatbot:param_seq";

/// `tatbot:param:{name}`: one parameter's descriptor, value, version, actor and time.
pub fn param(name: &ParamName) -> String {
    format!("{PARAM_PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wire key is spelled as WIRE.md gives it.
    #[test]
    fn wire_names() {
        let node = NodeId::new("hog").unwrap();
        let session = SessionId::new("stroke_hog_1795626937").unwrap();
        assert_eq!(robot_state(&node), "robot:state:hog");
        assert_eq!(health(&node), "node:health:hog");
        assert_eq!(progress(&session), "stroke:progress:stroke_hog_1795626937");
        assert_eq!(history(&session), "stream:stroke_history:stroke_hog_1795626937");
        assert_eq!(
            error_channel(&Category::new("hardware").unwrap()),
            "error:events:hardware"
        );
        assert_eq!(session_base(&node, 1795626937), "stroke_hog_1795626937");
    }

    /// None of our keys can match a pattern that Python nodes scan and parse.
    #[test]
    fn ours_stay_outside_python_patterns() {
        for key in [
            SESSION_INDEX,
            NODE_REGISTRY,
            ERROR_LOG,
            EVENT_LOG,
            &session_seq("stroke_hog_1"),
        ] {
            assert!(key.starts_with("tatbot:"), "{key}");
            assert!(
                !key.starts_with(HEALTH_PREFIX) && !key.starts_with(PROGRESS_PREFIX),
                "{key}"
            );
        }
    }

    /// Parameter keys are spelled as docs/WIRE.md gives them and stay outside Python's patterns.
    #[test]
    fn param_names() {
        let name = ParamName::new("arms.goal_time_slow").unwrap();
        assert_eq!(param(&name), "tatbot:param:arms.goal_time_slow");
        for key in [PARAM_INDEX, PARAM_LOG, PARAM_SEQ, &param(&name)] {
            assert!(key.starts_with("tatbot:"), "{key}");
            assert!(
                !key.starts_with(HEALTH_PREFIX) && !key.starts_with(PROGRESS_PREFIX),
                "{key}"
            );
        }
    }
}

//! `StrokeProgress` (the `stroke:progress:{session_id}` document), history stream entries, and
//! the typed arguments of session calls ([`SessionPlan`], [`ProgressUpdate`], [`HistoryCursor`]).

use serde::{Deserialize, Serialize};

use crate::ids::{EntryId, NodeId};
use crate::model::Extra;
use crate::timestamp::Timestamp;

/// Where a stroke session is: which stroke and pose, and whether it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrokeProgress {
    /// When the document was last written.
    pub timestamp: Timestamp,
    /// The node that last wrote it.
    pub node_id: String,
    /// Current stroke, 0-based.
    #[serde(default)]
    pub stroke_idx: i64,
    /// Current pose within the stroke, 0-based.
    #[serde(default)]
    pub pose_idx: i64,
    /// Strokes in the session.
    #[serde(default)]
    pub total_strokes: i64,
    /// Poses per stroke.
    #[serde(default)]
    pub stroke_length: i64,
    /// Left arm's stroke description.
    #[serde(default)]
    pub stroke_description_l: String,
    /// Right arm's stroke description.
    #[serde(default)]
    pub stroke_description_r: String,
    /// Left arm's needle offset index.
    #[serde(default)]
    pub offset_idx_l: i64,
    /// Right arm's needle offset index.
    #[serde(default)]
    pub offset_idx_r: i64,
    /// True from start until end.
    #[serde(default)]
    pub is_executing: bool,
    /// True while paused.
    #[serde(default)]
    pub is_paused: bool,
    /// The scene being tattooed.
    #[serde(default = "default_scene")]
    pub scene_name: String,
    /// The dataset, if any.
    #[serde(default)]
    pub dataset_name: Option<String>,
    /// Fields this version does not know, kept as they came.
    #[serde(flatten)]
    pub extra: Extra,
}

fn default_scene() -> String {
    "default".to_owned()
}

/// What a stroke session will do, as [`crate::StateManager::start_stroke_session`] takes it:
/// named fields, so the two counts cannot be swapped silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPlan {
    /// Strokes in the session.
    pub total_strokes: u32,
    /// Poses per stroke.
    pub stroke_length: u32,
    /// The scene being tattooed (`scene_name` on the wire); at most
    /// [`crate::manager::MAX_TEXT_LEN`] bytes.
    pub scene: String,
}

/// What a progress update changes; fields left `None` keep their stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgressUpdate {
    /// Current stroke, 0-based.
    pub stroke_idx: u32,
    /// Current pose within the stroke, 0-based.
    pub pose_idx: u32,
    /// New left description.
    pub description_l: Option<String>,
    /// New right description.
    pub description_r: Option<String>,
    /// New left offset index.
    pub offset_idx_l: Option<i64>,
    /// New right offset index.
    pub offset_idx_r: Option<i64>,
}

impl ProgressUpdate {
    /// An update of the stroke and pose only.
    pub fn new(stroke_idx: u32, pose_idx: u32) -> ProgressUpdate {
        ProgressUpdate {
            stroke_idx,
            pose_idx,
            ..ProgressUpdate::default()
        }
    }

    /// Also sets both descriptions.
    pub fn descriptions(mut self, left: impl Into<String>, right: impl Into<String>) -> ProgressUpdate {
        self.description_l = Some(left.into());
        self.description_r = Some(right.into());
        self
    }

    /// Also sets both offset indices.
    pub fn offsets(mut self, left: i64, right: i64) -> ProgressUpdate {
        self.offset_idx_l = Some(left);
        self.offset_idx_r = Some(right);
        self
    }

    /// Merges this update, stamped `at` by `node_id`, into `doc` as the update script does.
    pub(crate) fn apply_to(&self, doc: &mut StrokeProgress, at: Timestamp, node_id: &NodeId) {
        doc.timestamp = at;
        doc.node_id = node_id.to_string();
        doc.stroke_idx = self.stroke_idx.into();
        doc.pose_idx = self.pose_idx.into();
        if let Some(text) = &self.description_l {
            doc.stroke_description_l.clone_from(text);
        }
        if let Some(text) = &self.description_r {
            doc.stroke_description_r.clone_from(text);
        }
        if let Some(offset) = self.offset_idx_l {
            doc.offset_idx_l = offset;
        }
        if let Some(offset) = self.offset_idx_r {
            doc.offset_idx_r = offset;
        }
    }
}

/// Where a history read starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HistoryCursor {
    /// From the first entry.
    #[default]
    Start,
    /// After this entry (exclusive): pass the id of the last entry read to get the next page.
    After(EntryId),
}

impl From<EntryId> for HistoryCursor {
    fn from(id: EntryId) -> HistoryCursor {
        HistoryCursor::After(id)
    }
}

/// One entry of `stream:stroke_history:{session_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "record", derive(schemars::JsonSchema))]
pub struct HistoryEntry {
    /// The stream entry id (`<ms>-<seq>`).
    pub id: EntryId,
    /// Stroke index, as written.
    pub stroke_idx: i64,
    /// Pose index, as written.
    pub pose_idx: i64,
    /// Left description.
    pub description_l: String,
    /// Right description.
    pub description_r: String,
    /// The writer's node id.
    pub node_id: String,
}

impl StrokeProgress {
    /// Progress through the session from 0.0 to 1.0, by poses done.
    pub fn fraction(&self) -> f64 {
        let total = self.total_strokes.saturating_mul(self.stroke_length.max(1));
        if total <= 0 {
            return 0.0;
        }
        let done = self.stroke_idx * self.stroke_length.max(1) + self.pose_idx + 1;
        (done as f64 / total as f64).clamp(0.0, 1.0)
    }

    /// Why the document holds values outside their domain, if it does: a stroke or pose index
    /// outside `0..total` (and so a total below 1), or a timestamp more than
    /// [`crate::model::MAX_FUTURE_SKEW`] in the future.
    ///
    /// Any writer on the LAN can store such a document; views show it as invalid rather than
    /// take its figures at face value, and it never wins "latest active session".
    pub fn problem(&self) -> Option<String> {
        if !(0..self.total_strokes).contains(&self.stroke_idx) {
            return Some(format!(
                "stroke_idx {} is outside 0..{} (total_strokes)",
                self.stroke_idx, self.total_strokes
            ));
        }
        if !(0..self.stroke_length).contains(&self.pose_idx) {
            return Some(format!(
                "pose_idx {} is outside 0..{} (stroke_length)",
                self.pose_idx, self.stroke_length
            ));
        }
        crate::model::future_problem("timestamp", self.timestamp)
    }
}

/// How long a session stays live without a write or a lease renewal from its owner, when its
/// document does not say (`lease_secs`): sessions written by the Python nodes, and ours by
/// default.
pub const DEFAULT_SESSION_LEASE: std::time::Duration = std::time::Duration::from_secs(15);
/// The longest lease a document may ask for (one hour); a larger `lease_secs` is clamped so a
/// hostile writer cannot make a dead session look live for days.
pub const MAX_SESSION_LEASE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A session's run state as every view shows it, derived from its document and the clock.
///
/// A session is [`SessionState::Stale`] when it claims to run but neither its owner's writes
/// (the document's `timestamp`) nor its owner's lease renewals (`lease_renewed`) happened
/// within its lease: the robot that owned it died or lost Redis. No writer is needed for a
/// session to become stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Started, not paused, owner alive.
    Executing,
    /// Paused, owner alive.
    Paused,
    /// Executing or paused, but the owner's lease lapsed.
    Stale,
    /// Ended by its owner or an operator.
    Ended,
    /// Aborted by an operator (`sessions abort`), with a reason.
    Aborted,
}

impl SessionState {
    /// The state as text: `executing`, `paused`, `stale`, `ended`, `aborted`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Executing => "executing",
            SessionState::Paused => "paused",
            SessionState::Stale => "stale",
            SessionState::Ended => "ended",
            SessionState::Aborted => "aborted",
        }
    }

    /// True for executing and paused sessions, whose owner is alive.
    pub fn is_live(self) -> bool {
        matches!(self, SessionState::Executing | SessionState::Paused)
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StrokeProgress {
    /// The lease the owner promised (`lease_secs`, clamped to 1 s..[`MAX_SESSION_LEASE`]), or
    /// [`DEFAULT_SESSION_LEASE`] when the document has none or a value that is not a number.
    pub fn lease(&self) -> std::time::Duration {
        let Some(secs) = self.extra.get("lease_secs").and_then(serde_json::Value::as_f64) else {
            return DEFAULT_SESSION_LEASE;
        };
        if !secs.is_finite() {
            return DEFAULT_SESSION_LEASE;
        }
        std::time::Duration::from_secs_f64(secs.clamp(1.0, MAX_SESSION_LEASE.as_secs_f64()))
    }

    /// The last sign of life of the owner: the later of the last write (`timestamp`) and the
    /// last lease renewal (`lease_renewed`, when it parses).
    pub fn last_alive(&self) -> Timestamp {
        let renewed = self
            .extra
            .get("lease_renewed")
            .and_then(serde_json::Value::as_str)
            .and_then(|text| Timestamp::parse(text).ok());
        renewed.map_or(self.timestamp, |renewed| renewed.max(self.timestamp))
    }

    /// The session's owner as `node/instance` (`owner_node_id`, `owner_instance`), when the
    /// document names one; sessions of the Python nodes have none.
    pub fn owner(&self) -> Option<String> {
        let node = self.extra.get("owner_node_id")?.as_str()?;
        let instance = self.extra.get("owner_instance").and_then(serde_json::Value::as_str);
        Some(match instance {
            Some(instance) => format!("{node}/{instance}"),
            None => node.to_owned(),
        })
    }

    /// Why an operator aborted the session, when one did.
    pub fn abort_reason(&self) -> Option<&str> {
        self.extra.get("abort_reason")?.as_str()
    }

    /// The run state at `now`; see [`SessionState`].
    pub fn state_at(&self, now: Timestamp) -> SessionState {
        if !self.is_executing {
            if self.extra.get("aborted").and_then(serde_json::Value::as_bool) == Some(true) {
                return SessionState::Aborted;
            }
            return SessionState::Ended;
        }
        let silent_ms = now.unix_millis().saturating_sub(self.last_alive().unix_millis());
        let lease_ms = i64::try_from(self.lease().as_millis()).unwrap_or(i64::MAX);
        if silent_ms > lease_ms {
            return SessionState::Stale;
        }
        if self.is_paused {
            return SessionState::Paused;
        }
        SessionState::Executing
    }

    /// The run state now.
    pub fn state(&self) -> SessionState {
        self.state_at(Timestamp::now())
    }

    /// Whole seconds since the last write (`timestamp`) at `now`; 0 for a future timestamp.
    pub fn age_secs_at(&self, now: Timestamp) -> u64 {
        let ms = now.unix_millis().saturating_sub(self.timestamp.unix_millis()).max(0);
        u64::try_from(ms / 1000).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(extra: serde_json::Value) -> StrokeProgress {
        let mut value = serde_json::json!({
            "timestamp": "2026-12-06T10:00:00", "node_id": "n", "stroke_idx": 0, "pose_idx": 0,
            "total_strokes": 2, "stroke_length": 2, "is_executing": true,
        });
        value
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    /// A session is stale once its lease passed without a write or a renewal, and not before.
    #[test]
    fn stale_after_the_lease() {
        let progress = doc(serde_json::json!({"lease_secs": 5}));
        assert_eq!(progress.state_at(at("2026-12-06T10:00:05")), SessionState::Executing);
        assert_eq!(progress.state_at(at("2026-12-06T10:00:06")), SessionState::Stale);
        let renewed = doc(serde_json::json!({"lease_secs": 5, "lease_renewed": "2026-12-06T10:00:04"}));
        assert_eq!(renewed.state_at(at("2026-12-06T10:00:08")), SessionState::Executing);
        // Without `lease_secs` (a Python session) the default applies.
        let python = doc(serde_json::json!({}));
        assert_eq!(python.state_at(at("2026-12-06T10:00:15")), SessionState::Executing);
        assert_eq!(python.state_at(at("2026-12-06T10:00:16")), SessionState::Stale);
    }

    /// A hostile `lease_secs` is clamped or ignored, never trusted for days.
    #[test]
    fn hostile_lease_is_bounded() {
        assert_eq!(doc(serde_json::json!({"lease_secs": 1e12})).lease(), MAX_SESSION_LEASE);
        assert_eq!(
            doc(serde_json::json!({"lease_secs": "x"})).lease(),
            DEFAULT_SESSION_LEASE
        );
        assert_eq!(doc(serde_json::json!({"lease_secs": -3})).lease().as_secs(), 1);
    }

    /// Ended and aborted sessions are never stale.
    #[test]
    fn ended_and_aborted() {
        let mut progress = doc(serde_json::json!({}));
        progress.is_executing = false;
        assert_eq!(progress.state_at(at("2027-01-01T00:00:00")), SessionState::Ended);
        progress.extra.insert("aborted".into(), true.into());
        assert_eq!(progress.state_at(at("2027-01-01T00:00:00")), SessionState::Aborted);
    }
}

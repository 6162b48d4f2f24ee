//! `StrokeProgress` (the `stroke:progress:{session_id}` document) and history stream entries.

use serde::{Deserialize, Serialize};

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

/// One entry of `stream:stroke_history:{session_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "record", derive(schemars::JsonSchema))]
pub struct HistoryEntry {
    /// The stream entry id (`<ms>-<seq>`).
    pub id: String,
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
}

//! `RobotState`: the snapshot stored in `robot:state:{node_id}`.

use serde::{Deserialize, Serialize};

use crate::model::Extra;
use crate::timestamp::Timestamp;

/// Both arms' connection and joint state, written by the robot node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "record", derive(schemars::JsonSchema))]
pub struct RobotState {
    /// When the state was sampled.
    pub timestamp: Timestamp,
    /// The node that wrote it.
    pub node_id: String,
    /// Left arm connected.
    #[serde(default)]
    pub is_connected_l: bool,
    /// Right arm connected.
    #[serde(default)]
    pub is_connected_r: bool,
    /// Left arm joint positions (radians), if known.
    #[serde(default)]
    pub joints_l: Option<Vec<f64>>,
    /// Right arm joint positions (radians), if known.
    #[serde(default)]
    pub joints_r: Option<Vec<f64>>,
    /// Left arm joint velocities, if known.
    #[serde(default)]
    pub velocities_l: Option<Vec<f64>>,
    /// Right arm joint velocities, if known.
    #[serde(default)]
    pub velocities_r: Option<Vec<f64>>,
    /// Named pose ("connecting", "ready", ...).
    #[serde(default = "unknown_pose")]
    pub current_pose: String,
    /// Seconds for slow moves.
    #[serde(default = "default_goal_time_slow")]
    pub goal_time_slow: f64,
    /// Seconds for fast moves.
    #[serde(default = "default_goal_time_fast")]
    pub goal_time_fast: f64,
    /// Fields this version does not know, kept as they came.
    #[serde(flatten)]
    pub extra: Extra,
}

fn unknown_pose() -> String {
    "unknown".to_owned()
}

fn default_goal_time_slow() -> f64 {
    2.0
}

fn default_goal_time_fast() -> f64 {
    0.5
}

impl RobotState {
    /// A state with the contract's defaults, stamped now.
    pub fn new(node_id: &str) -> RobotState {
        RobotState {
            timestamp: Timestamp::now(),
            node_id: node_id.to_owned(),
            is_connected_l: false,
            is_connected_r: false,
            joints_l: None,
            joints_r: None,
            velocities_l: None,
            velocities_r: None,
            current_pose: unknown_pose(),
            goal_time_slow: default_goal_time_slow(),
            goal_time_fast: default_goal_time_fast(),
            extra: Extra::new(),
        }
    }
}

//! `NodeHealth`: the heartbeat stored in `node:health:{node_id}` with a 60 s TTL, and
//! [`KnownNode`], a member of the node registry.

use serde::{Deserialize, Serialize};

use crate::model::Extra;
use crate::timestamp::Timestamp;

/// A node that once sent a heartbeat through tatbot-state, from the `tatbot:nodes` registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KnownNode {
    /// The node id as the registry holds it; shared data, so it is not validated here.
    pub node_id: String,
    /// Unix time in milliseconds of its last heartbeat (the registry's score).
    pub last_heartbeat_ms: i64,
}

/// One node's resource use and reachability at its last heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "record", derive(schemars::JsonSchema))]
pub struct NodeHealth {
    /// When the sample was taken.
    pub timestamp: Timestamp,
    /// The node described.
    pub node_id: String,
    /// CPU use over the last interval, 0 to 100.
    #[serde(default)]
    pub cpu_percent: f64,
    /// Memory in use, 0 to 100.
    #[serde(default)]
    pub memory_percent: f64,
    /// Root disk in use, 0 to 100.
    #[serde(default)]
    pub disk_percent: f64,
    /// Whether an NVIDIA GPU was visible.
    #[serde(default)]
    pub gpu_available: bool,
    /// GPU utilisation, when a GPU is visible.
    #[serde(default)]
    pub gpu_percent: Option<f64>,
    /// GPU memory in use, when a GPU is visible.
    #[serde(default)]
    pub gpu_memory_percent: Option<f64>,
    /// Whether the node considers itself reachable.
    #[serde(default = "yes")]
    pub is_reachable: bool,
    /// Round trip to Redis measured by the node.
    #[serde(default)]
    pub ping_latency_ms: Option<f64>,
    /// Whether the node runs an MCP server.
    #[serde(default)]
    pub mcp_server_running: bool,
    /// The MCP server's port, when it runs.
    #[serde(default)]
    pub mcp_port: Option<u16>,
    /// When the heartbeat was sent.
    pub last_heartbeat: Timestamp,
    /// Fields this version does not know, kept as they came.
    #[serde(flatten)]
    pub extra: Extra,
}

fn yes() -> bool {
    true
}

impl NodeHealth {
    /// Why the heartbeat holds values outside their domain, if it does: a percentage that is
    /// not a number from 0 to 100, a negative or non-finite ping, or a heartbeat more than
    /// [`crate::model::MAX_FUTURE_SKEW`] in the future. Views show such figures as invalid.
    pub fn problem(&self) -> Option<String> {
        let percents = [
            ("cpu_percent", Some(self.cpu_percent)),
            ("memory_percent", Some(self.memory_percent)),
            ("disk_percent", Some(self.disk_percent)),
            ("gpu_percent", self.gpu_percent),
            ("gpu_memory_percent", self.gpu_memory_percent),
        ];
        for (name, value) in percents {
            if let Some(value) = value.filter(|value| !is_percent(*value)) {
                return Some(format!("{name} {value:e} is outside 0..=100"));
            }
        }
        if let Some(ms) = self.ping_latency_ms.filter(|ms| !(ms.is_finite() && *ms >= 0.0)) {
            return Some(format!("ping_latency_ms {ms:e} is not a duration"));
        }
        crate::model::future_problem("last_heartbeat", self.last_heartbeat)
    }

    /// A heartbeat with zeroed metrics, stamped now.
    pub fn new(node_id: &str) -> NodeHealth {
        let now = Timestamp::now();
        NodeHealth {
            timestamp: now,
            node_id: node_id.to_owned(),
            cpu_percent: 0.0,
            memory_percent: 0.0,
            disk_percent: 0.0,
            gpu_available: false,
            gpu_percent: None,
            gpu_memory_percent: None,
            is_reachable: true,
            ping_latency_ms: None,
            mcp_server_running: false,
            mcp_port: None,
            last_heartbeat: now,
            extra: Extra::new(),
        }
    }
}

/// Whether `value` is a percentage: a number from 0 to 100.
pub fn is_percent(value: f64) -> bool {
    (0.0..=100.0).contains(&value)
}

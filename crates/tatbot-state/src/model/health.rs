//! `NodeHealth`: the heartbeat stored in `node:health:{node_id}` with a 60 s TTL.

use serde::{Deserialize, Serialize};

use crate::model::Extra;
use crate::timestamp::Timestamp;

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

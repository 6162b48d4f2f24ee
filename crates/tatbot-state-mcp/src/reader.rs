//! [`Reader`]: the only view of Redis this crate's resources have, and it can only read.
//!
//! MCP is for orchestration and read-only summaries; it never writes state. Rather than
//! trusting every handler to call only reading methods of [`StateManager`], the server holds
//! its manager inside a `Reader`, which exposes the reading and subscribing methods and nothing
//! else. The same goes for parameters: [`Params`] can declare, set and load, so the reader
//! makes one per call and passes on only `list_entries`, `get` and `watch`. Its connection therefore
//! sends only reads (`HGET`, `HSTRLEN`, `HMGET`, `HLEN`, `ZCARD`, `XLEN`, `MEMORY USAGE`, `SCAN`,
//! `ZRANGE`, `ZRANGEBYLEX`, `XRANGE`, `XREVRANGE`, `GET`, `INFO`), and, on connections of their
//! own, `PSUBSCRIBE` and the parameter watch's `XREAD BLOCK`. The node heartbeat, the one write
//! the MCP process makes, runs on a separate manager (see [`crate::heartbeat`]).

use tatbot_state::model::{ErrorEvent, NodeHealth, RobotState, StrokeProgress};
use tatbot_state::params::{Prefix, Watch};
use tatbot_state::{
    Entry, KnownNode, NodeId, Param, ParamName, Result, SessionId, SessionInfo, StateManager, Subscription,
    SystemStatus,
};

/// A [`StateManager`] restricted to reads and subscriptions.
#[derive(Clone)]
pub struct Reader {
    manager: StateManager,
}

impl Reader {
    /// Wraps `manager`; nothing can reach its writing methods afterwards.
    pub fn new(manager: StateManager) -> Reader {
        Reader { manager }
    }

    /// The address of the server (with Sentinel, the master last found), for messages (never
    /// the password).
    pub fn target(&self) -> String {
        self.manager.current_master().to_string()
    }

    /// See [`StateManager::ping`].
    pub async fn ping(&self) -> Result<std::time::Duration> {
        self.manager.ping().await
    }

    /// See [`StateManager::system_status`].
    pub async fn system_status(&self) -> SystemStatus {
        self.manager.system_status().await
    }

    /// See [`StateManager::latest_active_session`].
    pub async fn latest_active_session(&self) -> Result<Option<SessionInfo>> {
        self.manager.latest_active_session().await
    }

    /// See [`StateManager::get_stroke_progress`].
    pub async fn get_stroke_progress(&self, session_id: &SessionId) -> Result<Option<StrokeProgress>> {
        self.manager.get_stroke_progress(session_id).await
    }

    /// See [`StateManager::list_sessions`].
    pub async fn list_sessions(&self) -> Result<Vec<Entry<StrokeProgress>>> {
        self.manager.list_sessions().await
    }

    /// See [`StateManager::get_node_health`].
    pub async fn get_node_health(&self, node_id: &NodeId) -> Result<Option<NodeHealth>> {
        self.manager.get_node_health(node_id).await
    }

    /// See [`StateManager::get_all_nodes_health`].
    pub async fn get_all_nodes_health(&self) -> Result<Vec<Entry<NodeHealth>>> {
        self.manager.get_all_nodes_health().await
    }

    /// See [`StateManager::get_robot_state`].
    pub async fn get_robot_state(&self, node_id: &NodeId) -> Result<Option<RobotState>> {
        self.manager.get_robot_state(node_id).await
    }

    /// See [`StateManager::get_all_robot_states`].
    pub async fn get_all_robot_states(&self) -> Result<Vec<Entry<RobotState>>> {
        self.manager.get_all_robot_states().await
    }

    /// See [`StateManager::known_nodes`].
    pub async fn known_nodes(&self) -> Result<Vec<KnownNode>> {
        self.manager.known_nodes().await
    }

    /// See [`StateManager::list_errors`].
    pub async fn list_errors(&self, count: usize) -> Result<Vec<Entry<ErrorEvent>>> {
        self.manager.list_errors(count).await
    }

    /// See [`Params::list_entries`]: a corrupt parameter is reported in its entry.
    pub async fn list_params(&self, prefix: &Prefix) -> Result<Vec<Entry<Param>>> {
        self.manager.params().list_entries(prefix).await
    }

    /// See [`Params::get`].
    pub async fn get_param(&self, name: &ParamName) -> Result<Option<Param>> {
        self.manager.params().get(name).await
    }

    /// See [`Params::watch`].
    pub async fn watch_params(&self, prefix: &Prefix) -> Result<Watch> {
        self.manager.params().watch(prefix).await
    }

    /// See [`StateManager::subscribe`].
    pub async fn subscribe(&self, patterns: &[&str]) -> Result<Subscription> {
        self.manager.subscribe(patterns).await
    }
}

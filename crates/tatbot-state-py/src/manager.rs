//! [`Target`] (where to connect, resolved as the CLI resolves it) and [`Manager`] (one
//! connected [`StateManager`]), with the parameter calls.
//!
//! Each method validates its Python arguments at once (a bad one raises before anything is
//! sent) and returns a [`Call`] for the Redis work. Documents come in and go out as JSON text:
//! the Python side owns the pydantic models and the old API's defaults.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use serde_json::{Map, Value, json};
use tatbot_state::config::ConfigInputs;
use tatbot_state::heartbeat::{HeartbeatOptions, MetricsSampler};
use tatbot_state::model::{Event, NodeHealth, RobotState};
use tatbot_state::params::{CasOutcome, Prefix};
use tatbot_state::{
    Category, Descriptor, Endpoint, ManagerConfig, NodeId, ParamName, ParamValue, ProgressUpdate, SessionId,
    SessionPlan, StateManager,
};

use crate::streams::{Follower, Subscription};
use crate::{Call, ConflictError, Reply, parse_json, py_error, to_json, to_u32};

/// A Redis target and node id, resolved from the arguments, then the Hydra YAML, the env file
/// and the `REDIS_*` variables, exactly as the CLI resolves them.
#[pyclass(frozen, module = "tatbot_state._native")]
pub(crate) struct Target {
    config: ManagerConfig,
}

#[pymethods]
impl Target {
    /// Resolves the target; arguments given win over every other source.
    #[new]
    #[pyo3(signature = (node_id, host=None, port=None, password=None))]
    fn new(node_id: &str, host: Option<String>, port: Option<i64>, password: Option<String>) -> PyResult<Target> {
        crate::guard(|| {
            let node_id = NodeId::new(node_id).map_err(py_error)?;
            let mut inputs = ConfigInputs::from_env();
            if let Some(host) = host {
                if host.trim().is_empty() {
                    return Err(PyValueError::new_err(
                        "redis_host is empty; hint: pass a host name or IP, or None to use the configuration",
                    ));
                }
                inputs = inputs.host(host);
            }
            if let Some(port) = port {
                let port = u16::try_from(port)
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| PyValueError::new_err(format!("redis_port must be from 1 to 65535, got {port}")))?;
                inputs = inputs.port(port);
            }
            if let Some(password) = password {
                inputs = inputs.password(password);
            }
            let target = inputs.resolve().map_err(|err| py_error(err.into()))?;
            // Awaited calls come from the asyncio loop through the bridge, which hands the answer
            // back through a socket anyway; reading the answer by spinning on the runtime's one
            // worker made them twice as slow (docs/PERFORMANCE.md, "Python package").
            Ok(Target {
                config: ManagerConfig {
                    reply_spin: std::time::Duration::ZERO,
                    ..ManagerConfig::new(Endpoint::from(&target), node_id)
                },
            })
        })
    }

    /// Host name or IP to connect to.
    #[getter]
    fn host(&self) -> &str {
        &self.config.endpoint.host
    }

    /// TCP port.
    #[getter]
    fn port(&self) -> u16 {
        self.config.endpoint.port
    }

    /// This node's id.
    #[getter]
    fn node_id(&self) -> &str {
        self.config.node_id.as_str()
    }

    /// Whether `other` names the same server, credentials and node.
    fn same_as(&self, other: &Target) -> bool {
        self.config.endpoint == other.config.endpoint && self.config.node_id == other.config.node_id
    }

    /// `host:port as node NODE`, without credentials.
    fn describe(&self) -> String {
        format!("{} as node {}", self.config.endpoint, self.config.node_id)
    }

    /// Connects and checks that the server answers (and accepts the credentials).
    fn connect(&self) -> Call {
        let config = self.config.clone();
        Call::new(async move {
            let state = StateManager::connect(config).await.map_err(py_error)?;
            Ok(Reply::Manager(Manager::new(state)))
        })
    }
}

/// One connected manager; its clones (producers, followers) share its connection.
#[pyclass(frozen, module = "tatbot_state._native")]
pub(crate) struct Manager {
    state: StateManager,
    /// The CPU sampler of `update_node_health(None)`, kept so CPU use covers the time between
    /// heartbeats; made at the first such call.
    sampler: Arc<tokio::sync::Mutex<Option<MetricsSampler>>>,
}

impl Manager {
    pub(crate) fn new(state: StateManager) -> Manager {
        Manager {
            state,
            sampler: Arc::default(),
        }
    }
}

fn session_id(text: &str) -> PyResult<SessionId> {
    SessionId::new(text).map_err(py_error)
}

fn node_id_or(state: &StateManager, node_id: Option<&str>) -> PyResult<NodeId> {
    match node_id {
        None => Ok(state.node_id().clone()),
        Some(text) => NodeId::new(text).map_err(py_error),
    }
}

fn param_name(text: &str) -> PyResult<ParamName> {
    ParamName::new(text).map_err(py_error)
}

fn prefix(text: &str) -> PyResult<Prefix> {
    if text.is_empty() {
        return Ok(Prefix::all());
    }
    Prefix::new(text).map_err(py_error)
}

/// A document of type `T` from the Python side's JSON, or `ValueError`.
pub(crate) fn document<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> PyResult<T> {
    parse_json(what, json)
}

/// The progress update the old API makes: it always sets both descriptions and offsets.
pub(crate) fn progress_update(
    stroke_idx: i64,
    pose_idx: i64,
    descriptions: (String, String),
    offsets: (i64, i64),
) -> PyResult<ProgressUpdate> {
    Ok(
        ProgressUpdate::new(to_u32("stroke_idx", stroke_idx)?, to_u32("pose_idx", pose_idx)?)
            .descriptions(descriptions.0, descriptions.1)
            .offsets(offsets.0, offsets.1),
    )
}

/// The `details` of an error report: a JSON object, or `ValueError`.
pub(crate) fn error_details(details_json: &str) -> PyResult<Value> {
    let details: Value = parse_json("details", details_json)?;
    if !details.is_object() {
        return Err(PyValueError::new_err(format!(
            "details must be a dict (a JSON object), got {details}"
        )));
    }
    Ok(details)
}

#[pymethods]
impl Manager {
    /// This node's id.
    #[getter]
    fn node_id(&self) -> &str {
        self.state.node_id().as_str()
    }

    /// One `PING` round trip, in seconds.
    fn ping(&self) -> Call {
        let state = self.state.clone();
        Call::new(async move {
            let rtt = state.ping().await.map_err(py_error)?;
            Ok(Reply::Text(rtt.as_secs_f64().to_string()))
        })
    }

    /// Starts a stroke session; answers its id.
    fn start_stroke_session(&self, total_strokes: i64, stroke_length: i64, scene_name: String) -> PyResult<Call> {
        let total_strokes = to_u32("total_strokes", total_strokes)?;
        let stroke_length = to_u32("stroke_length", stroke_length)?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            let plan = SessionPlan {
                total_strokes,
                stroke_length,
                scene: scene_name,
            };
            let session_id = state.start_stroke_session(&plan).await.map_err(py_error)?;
            Ok(Reply::Text(session_id.to_string()))
        }))
    }

    /// Stores a progress update: document, history entry and event in one round trip.
    #[expect(clippy::too_many_arguments, reason = "the old Python API's keyword arguments")]
    fn update_stroke_progress(
        &self,
        session_id: &str,
        stroke_idx: i64,
        pose_idx: i64,
        stroke_description_l: String,
        stroke_description_r: String,
        offset_idx_l: i64,
        offset_idx_r: i64,
    ) -> PyResult<Call> {
        let session_id = self::session_id(session_id)?;
        let update = progress_update(
            stroke_idx,
            pose_idx,
            (stroke_description_l, stroke_description_r),
            (offset_idx_l, offset_idx_r),
        )?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            state
                .update_stroke_progress(&session_id, &update)
                .await
                .map_err(py_error)?;
            Ok(Reply::None)
        }))
    }

    /// The progress JSON of `session_id`, or of the latest live session when `None`; `None`
    /// when there is none.
    #[pyo3(signature = (session_id=None))]
    fn get_stroke_progress(&self, session_id: Option<&str>) -> PyResult<Call> {
        let session_id = session_id.map(self::session_id).transpose()?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            let progress = match session_id {
                Some(session_id) => state.get_stroke_progress(&session_id).await,
                None => state
                    .latest_active_session()
                    .await
                    .map(|found| found.map(|info| info.progress)),
            }
            .map_err(py_error)?;
            Ok(Reply::MaybeText(progress.as_ref().map(to_json).transpose()?))
        }))
    }

    /// The id of the latest live session, or `None`.
    fn latest_session_id(&self) -> Call {
        let state = self.state.clone();
        Call::new(async move {
            let found = state.latest_active_session().await.map_err(py_error)?;
            Ok(Reply::MaybeText(found.map(|info| info.session_id.to_string())))
        })
    }

    /// Ends a session.
    fn end_stroke_session(&self, session_id: &str) -> PyResult<Call> {
        let session_id = self::session_id(session_id)?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            state.end_stroke_session(&session_id).await.map_err(py_error)?;
            Ok(Reply::None)
        }))
    }

    /// Stores a robot state given as RobotState JSON.
    fn update_robot_state(&self, state_json: &str) -> PyResult<Call> {
        let robot_state: RobotState = document("robot_state", state_json)?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            state.update_robot_state(&robot_state).await.map_err(py_error)?;
            Ok(Reply::None)
        }))
    }

    /// The RobotState JSON of `node_id` (this node when `None`), or `None`.
    #[pyo3(signature = (node_id=None))]
    fn get_robot_state(&self, node_id: Option<&str>) -> PyResult<Call> {
        let node_id = node_id_or(&self.state, node_id)?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            let found = state.get_robot_state(&node_id).await.map_err(py_error)?;
            Ok(Reply::MaybeText(found.as_ref().map(to_json).transpose()?))
        }))
    }

    /// Stores a heartbeat given as NodeHealth JSON; with `None`, samples this machine (CPU,
    /// memory, disk, GPU, Redis round trip) and renews the leases of the sessions it started.
    #[pyo3(signature = (health_json=None))]
    fn update_node_health(&self, health_json: Option<&str>) -> PyResult<Call> {
        let health: Option<NodeHealth> = health_json.map(|json| document("health", json)).transpose()?;
        let state = self.state.clone();
        let sampler = self.sampler.clone();
        Ok(Call::new(async move {
            match health {
                Some(health) => state.update_node_health(&health).await.map_err(py_error)?,
                None => {
                    let options = HeartbeatOptions::default();
                    let mut sampler = sampler.lock().await;
                    let sampler = sampler.get_or_insert_with(|| MetricsSampler::new(&options.disk_path));
                    state.send_heartbeat(sampler, &options).await.map_err(py_error)?;
                }
            }
            Ok(Reply::None)
        }))
    }

    /// The NodeHealth JSON of `node_id` (this node when `None`), or `None` (offline).
    #[pyo3(signature = (node_id=None))]
    fn get_node_health(&self, node_id: Option<&str>) -> PyResult<Call> {
        let node_id = node_id_or(&self.state, node_id)?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            let found = state.get_node_health(&node_id).await.map_err(py_error)?;
            Ok(Reply::MaybeText(found.as_ref().map(to_json).transpose()?))
        }))
    }

    /// `{"nodes": {node_id: NodeHealth}, "corrupt": [{"key", "error"}]}` as JSON: every live
    /// heartbeat, and each one that did not decode reported apart.
    fn get_all_nodes_health(&self) -> Call {
        let state = self.state.clone();
        Call::new(async move {
            let entries = state.get_all_nodes_health().await.map_err(py_error)?;
            let mut nodes = Map::new();
            let mut corrupt = Vec::new();
            for entry in entries {
                match entry.value {
                    Ok(health) => {
                        nodes.insert(entry.id, serde_json::to_value(&health).unwrap_or(Value::Null));
                    }
                    Err(err) => corrupt.push(json!({"key": entry.key, "error": err.report().to_string()})),
                }
            }
            Ok(Reply::Text(json!({"nodes": nodes, "corrupt": corrupt}).to_string()))
        })
    }

    /// Publishes an event (a JSON object) on `channel` and logs it; answers the receivers.
    fn publish_event(&self, channel: String, event_json: &str) -> PyResult<Call> {
        let event = Event::from_json(event_json.as_bytes())
            .map_err(|err| PyValueError::new_err(format!("event_data is not a valid event: {err}")))?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            let receivers = state.publish_event(&channel, &event).await.map_err(py_error)?;
            Ok(Reply::Int(receivers as u64))
        }))
    }

    /// Subscribes to channel patterns (`stroke:events:*`) on a connection of its own.
    fn subscribe(&self, patterns: Vec<String>) -> PyResult<Call> {
        if patterns.is_empty() {
            return Err(PyValueError::new_err(
                "subscribe_events needs at least one channel or pattern, such as \"stroke:events:*\"",
            ));
        }
        let state = self.state.clone();
        Ok(Call::new(async move {
            let borrowed: Vec<&str> = patterns.iter().map(String::as_str).collect();
            let subscription = state.subscribe(&borrowed).await.map_err(py_error)?;
            Ok(Reply::Subscription(Subscription::new(subscription)))
        }))
    }

    /// Stores and publishes an error report; `details_json` is a JSON object.
    fn report_error(&self, category: &str, message: String, details_json: &str) -> PyResult<Call> {
        let category = Category::new(category).map_err(py_error)?;
        let details = error_details(details_json)?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            state
                .report_error(&category, &message, details)
                .await
                .map_err(py_error)?;
            Ok(Reply::None)
        }))
    }

    /// Deletes a session's progress and history; answers whether anything was there.
    fn clear_session_data(&self, session_id: &str) -> PyResult<Call> {
        let session_id = self::session_id(session_id)?;
        let state = self.state.clone();
        Ok(Call::new(async move {
            let deleted = state.clear_session_data(&session_id).await.map_err(py_error)?;
            Ok(Reply::Bool(deleted))
        }))
    }

    /// The system summary as JSON; never fails (an unreachable Redis is in `error`).
    fn system_status(&self) -> Call {
        let state = self.state.clone();
        Call::new(async move {
            // The first look after an outage works: the library's shared connection makes a
            // request whose connection was refused once more.
            let status = state.system_status().await;
            Ok(Reply::Text(to_json(&status)?))
        })
    }

    /// Starts a producer on the shared runtime; its writer is awake when a steady loop's next
    /// call is due (`Wake::Anticipate`), or, with `poll_interval_us`, polled (`Wake::Poll`).
    #[pyo3(signature = (max_queued=None, poll_interval_us=None))]
    fn producer(&self, max_queued: Option<i64>, poll_interval_us: Option<i64>) -> PyResult<crate::producer::Producer> {
        crate::producer::Producer::start(&self.state, max_queued, poll_interval_us)
    }

    /// Follows everything, or one session, from a cursor (`None`: a snapshot first).
    #[pyo3(signature = (session_id=None, cursor=None))]
    fn follow(&self, session_id: Option<&str>, cursor: Option<&str>) -> PyResult<Follower> {
        Follower::start(&self.state, session_id, cursor)
    }

    /// Declares a parameter (`descriptor_json`: `{"default", "description", "min", "max",
    /// "step", "read_only"}`); answers the Param JSON.
    fn param_declare(&self, name: &str, descriptor_json: &str) -> PyResult<Call> {
        let name = param_name(name)?;
        let raw: Map<String, Value> = parse_json("descriptor", descriptor_json)?;
        let default: ParamValue =
            serde_json::from_value(raw.get("default").cloned().unwrap_or(Value::Null)).map_err(|_| {
                PyValueError::new_err(format!(
                    "{name}: default must be a bool, int, float, str or a list of one of them"
                ))
            })?;
        let mut descriptor = Descriptor::new(default);
        if let Some(text) = raw.get("description").and_then(Value::as_str) {
            descriptor = descriptor.description(text);
        }
        if let Some(min) = raw.get("min").and_then(Value::as_f64) {
            descriptor = descriptor.min(min);
        }
        if let Some(max) = raw.get("max").and_then(Value::as_f64) {
            descriptor = descriptor.max(max);
        }
        if let Some(step) = raw.get("step").and_then(Value::as_f64) {
            descriptor = descriptor.step(step);
        }
        if raw.get("read_only").and_then(Value::as_bool) == Some(true) {
            descriptor = descriptor.read_only();
        }
        let params = self.state.params();
        Ok(Call::new(async move {
            let param = params.declare(&name, &descriptor).await.map_err(py_error)?;
            Ok(Reply::Text(to_json(&param)?))
        }))
    }

    /// The Param JSON of `name`, or `None` when it is not declared.
    fn param_get(&self, name: &str) -> PyResult<Call> {
        let name = param_name(name)?;
        let params = self.state.params();
        Ok(Call::new(async move {
            let param = params.get(&name).await.map_err(py_error)?;
            Ok(Reply::MaybeText(param.as_ref().map(to_json).transpose()?))
        }))
    }

    /// Sets a value (JSON), validated against the declaration; with `if_version`, only when
    /// the version still matches. Answers the Param JSON.
    #[pyo3(signature = (name, value_json, if_version=None))]
    fn param_set(&self, name: &str, value_json: &str, if_version: Option<u64>) -> PyResult<Call> {
        let name = param_name(name)?;
        let value: ParamValue = serde_json::from_str(value_json).map_err(|_| {
            PyValueError::new_err(format!(
                "{name}: value must be a bool, int, float, str or a list of one of them"
            ))
        })?;
        let params = self.state.params();
        Ok(Call::new(async move {
            let param = match if_version {
                None => params.set(&name, &value).await.map_err(py_error)?,
                Some(version) => match params.set_if_version(&name, &value, version).await.map_err(py_error)? {
                    CasOutcome::Applied(param) => *param,
                    CasOutcome::Conflict { version: now } => {
                        return Err(ConflictError::new_err(format!(
                            "{name}: version is {now}, not {version}; nothing was written"
                        )));
                    }
                },
            };
            Ok(Reply::Text(to_json(&param)?))
        }))
    }

    /// `{"params": [Param], "corrupt": [{"key", "error"}]}` as JSON, under `prefix` ("" for all).
    fn param_list(&self, prefix: &str) -> PyResult<Call> {
        let prefix = self::prefix(prefix)?;
        let params = self.state.params();
        Ok(Call::new(async move {
            let entries = params.list_entries(&prefix).await.map_err(py_error)?;
            let mut listed = Vec::new();
            let mut corrupt = Vec::new();
            for entry in entries {
                match entry.value {
                    Ok(param) => listed.push(serde_json::to_value(&param).unwrap_or(Value::Null)),
                    Err(err) => corrupt.push(json!({"key": entry.key, "error": err.report().to_string()})),
                }
            }
            Ok(Reply::Text(json!({"params": listed, "corrupt": corrupt}).to_string()))
        }))
    }

    /// The parameters under `prefix` as a YAML tree.
    fn param_dump(&self, prefix: &str) -> PyResult<Call> {
        let prefix = self::prefix(prefix)?;
        let params = self.state.params();
        Ok(Call::new(async move {
            Ok(Reply::Text(params.dump(&prefix).await.map_err(py_error)?))
        }))
    }

    /// Loads a YAML tree under `prefix`; answers the plan JSON (`changes`, `unchanged`,
    /// `skipped`, `errors`). A plan with errors applied nothing.
    fn param_load(&self, text: String, prefix: &str) -> PyResult<Call> {
        let prefix = self::prefix(prefix)?;
        let params = self.state.params();
        Ok(Call::new(async move {
            let plan = params.load(&text, &prefix).await.map_err(py_error)?;
            Ok(Reply::Text(to_json(&plan)?))
        }))
    }
}

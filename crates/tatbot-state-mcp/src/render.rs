//! The text and JSON forms of every resource.
//!
//! Each function turns what the library read into a [`Rendered`]: a text form for people (and
//! for scripts that grep the line labels the old Python server printed: `Redis Connected`,
//! `Active Sessions`, `Nodes Online`, `Stroke`, `Pose`, `Scene`, `Executing`) and a JSON form for
//! programs. Text shows 1-based stroke and pose positions (`Stroke: 3/3` is the last of three), as
//! the CLI does; JSON carries the stored 0-based documents unchanged. Parameters are the
//! library's [`Param`], serialized as `tatbot-state param get --json` prints it; their values
//! appear in text as compact JSON (`2.0`, `"fast"`, `[1,2]`), so the type shows.
//!
//! Nothing here shows an age relative to now: a resource changes only when the state does, so a
//! client that caches a read between update notifications never shows a stale "5s ago".

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};
use tatbot_state::model::{ErrorEvent, NodeHealth, RobotState, SessionState, StrokeProgress};
use tatbot_state::{Entry, KnownNode, NodeId, Param, ParamType, SessionId, SystemStatus};

/// How many sessions `state://sessions` lists, newest first.
pub const MAX_LISTED_SESSIONS: usize = 50;
/// How many errors `state://errors` lists, newest first.
pub const MAX_LISTED_ERRORS: usize = 20;

/// One resource in both forms.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// `text/plain`, for people.
    pub text: String,
    /// `application/json`, for programs.
    pub json: Value,
}

/// One row of `state://config`: a field of the Redis target, its value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigRow {
    /// `host`, `port`, `password`, ...
    pub field: String,
    /// The value, with the password redacted.
    pub value: String,
    /// Which source supplied it (flag, environment, env file, YAML, default).
    pub source: String,
}

/// The effective Redis target as `state://config` shows it; never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigDescription {
    /// One-line summary such as `127.0.0.1:6379 (no password)`.
    pub target: String,
    /// One row per field.
    pub fields: Vec<ConfigRow>,
}

impl From<&tatbot_state::config::RedisTarget> for ConfigDescription {
    fn from(target: &tatbot_state::config::RedisTarget) -> ConfigDescription {
        ConfigDescription {
            target: target.display_redacted(),
            fields: target
                .describe()
                .into_iter()
                .map(|(field, value, source)| ConfigRow {
                    field: field.to_owned(),
                    value,
                    source,
                })
                .collect(),
        }
    }
}

/// A session's run state: `executing`, `paused`, `stale` (its owner's lease lapsed), `ended` or
/// `aborted`.
fn run_state(progress: &StrokeProgress) -> &'static str {
    progress.state().as_str()
}

/// `state://status`.
pub fn status(status: &SystemStatus) -> Rendered {
    let mut text = String::new();
    // Writing to a String cannot fail; here and below the fmt::Result is ignored for that reason.
    let _ = writeln!(text, "Redis Connected: {}", status.redis_connected);
    let _ = writeln!(
        text,
        "Redis Version: {}",
        status.redis_version.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(text, "Active Sessions: {}", status.active_sessions);
    let _ = writeln!(text, "Paused Sessions: {}", status.paused_sessions);
    let _ = writeln!(text, "Stale Sessions: {}", status.stale_sessions);
    let _ = writeln!(text, "Total Sessions: {}", status.total_sessions);
    let _ = writeln!(text, "Nodes Online: {}/{}", status.nodes_online, status.nodes_known);
    let _ = writeln!(text, "Corrupt Entries: {}", status.corrupt.len());
    for corrupt in &status.corrupt {
        let _ = writeln!(text, "  {}: {}", corrupt.key, corrupt.error);
    }
    if let Some(error) = &status.error {
        let _ = writeln!(text, "Error: {error}");
        let _ = writeln!(text, "Check the connection with `tatbot-state doctor`.");
    }
    Rendered {
        text,
        json: to_value(status),
    }
}

/// `state://stroke/progress` when a session is executing.
pub fn latest_progress(session_id: &SessionId, progress: &StrokeProgress) -> Rendered {
    let mut rendered = session_progress(session_id, progress);
    if let Value::Object(fields) = &mut rendered.json {
        fields.insert("active".to_owned(), Value::Bool(true));
    }
    rendered
}

/// `state://stroke/progress` when no session is executing.
pub fn no_active_session() -> Rendered {
    Rendered {
        text: "No active stroke session\n".to_owned(),
        json: json!({"active": false, "session_id": null, "state": null, "fraction": null, "progress": null}),
    }
}

/// `state://stroke/progress/{session_id}`.
pub fn session_progress(session_id: &SessionId, progress: &StrokeProgress) -> Rendered {
    let mut text = String::new();
    let _ = writeln!(text, "Session: {session_id}");
    let _ = writeln!(text, "Node: {}", progress.node_id);
    let _ = writeln!(text, "Scene: {}", progress.scene_name);
    if let Some(dataset) = &progress.dataset_name {
        let _ = writeln!(text, "Dataset: {dataset}");
    }
    let _ = writeln!(
        text,
        "Stroke: {}",
        position(progress.stroke_idx, progress.total_strokes)
    );
    let _ = writeln!(text, "Pose: {}", position(progress.pose_idx, progress.stroke_length));
    let state = progress.state();
    // A stale session is not shown as executing: its robot stopped answering.
    let _ = writeln!(
        text,
        "Executing: {}",
        progress.is_executing && state != SessionState::Stale
    );
    let _ = writeln!(text, "Paused: {}", progress.is_paused);
    let _ = writeln!(text, "State: {state}");
    let age_secs = progress.age_secs_at(tatbot_state::Timestamp::now());
    let _ = writeln!(text, "Last Update: {age_secs} s ago");
    if let Some(owner) = progress.owner() {
        let _ = writeln!(text, "Owner: {owner}");
    }
    if let Some(reason) = progress.abort_reason() {
        let _ = writeln!(text, "Abort Reason: {}", shown(reason));
    }
    match progress.problem() {
        None => {
            let _ = writeln!(text, "Progress: {:.1}%", 100.0 * progress.fraction());
        }
        Some(problem) => {
            let _ = writeln!(text, "Progress: invalid ({})", shown(&problem));
        }
    }
    let _ = writeln!(
        text,
        "Left: {} (offset {})",
        progress.stroke_description_l, progress.offset_idx_l
    );
    let _ = writeln!(
        text,
        "Right: {} (offset {})",
        progress.stroke_description_r, progress.offset_idx_r
    );
    let _ = writeln!(text, "Updated: {}", progress.timestamp);
    Rendered {
        text,
        json: json!({
            "session_id": session_id.as_str(),
            "state": run_state(progress),
            "age_secs": age_secs,
            "fraction": progress.fraction(),
            "progress": progress,
        }),
    }
}

/// `state://sessions`: every stored session, the newest [`MAX_LISTED_SESSIONS`] listed.
pub fn sessions(entries: Vec<Entry<StrokeProgress>>) -> Rendered {
    let total = entries.len();
    let (mut sessions, corrupt): (Vec<_>, Vec<_>) = entries.into_iter().partition(|entry| entry.value.is_ok());
    // Newest first by the document's own timestamp, which every write refreshes.
    sessions.sort_by_key(|entry| std::cmp::Reverse(entry.value.as_ref().ok().map(|progress| progress.timestamp)));
    let count = |state: &str| {
        sessions
            .iter()
            .filter(|entry| entry.value.as_ref().is_ok_and(|progress| run_state(progress) == state))
            .count()
    };
    let (executing, paused, stale) = (count("executing"), count("paused"), count("stale"));
    sessions.truncate(MAX_LISTED_SESSIONS);

    let mut text = format!("Sessions: {total} stored ({executing} executing, {paused} paused, {stale} stale)\n");
    let now = tatbot_state::Timestamp::now();
    let mut rows = Vec::with_capacity(sessions.len());
    let mut listed = Vec::with_capacity(sessions.len());
    for entry in &sessions {
        let Ok(progress) = &entry.value else { continue };
        rows.push(vec![
            entry.id.clone(),
            progress.node_id.clone(),
            progress.scene_name.clone(),
            position(progress.stroke_idx, progress.total_strokes),
            position(progress.pose_idx, progress.stroke_length),
            run_state(progress).to_owned(),
            format!("{} s ago", progress.age_secs_at(now)),
        ]);
        listed.push(json!({
            "session_id": entry.id,
            "state": run_state(progress),
            "age_secs": progress.age_secs_at(now),
            "fraction": progress.fraction(),
            "progress": progress,
        }));
    }
    if !rows.is_empty() {
        text.push_str(&table(
            &["SESSION", "NODE", "SCENE", "STROKE", "POSE", "STATE", "UPDATED"],
            &rows,
        ));
    }
    if sessions.len() < total - corrupt.len() {
        let _ = writeln!(text, "(newest {} shown)", sessions.len());
    }
    let corrupt = corrupt_list(&corrupt, &mut text);
    Rendered {
        text,
        json: json!({
            "total": total,
            "executing": executing,
            "paused": paused,
            "stale": stale,
            "sessions": listed,
            "corrupt": corrupt,
        }),
    }
}

/// `state://health/{node_id}`; `health` is `None` when the heartbeat expired or never came.
pub fn node_health(node_id: &NodeId, health: Option<&NodeHealth>) -> Rendered {
    let Some(health) = health else {
        return Rendered {
            text: format!("Node: {node_id}\nOnline: false\nNo heartbeat from node {node_id} (expired or never sent)\n"),
            json: json!({"node_id": node_id.as_str(), "online": false, "health": null}),
        };
    };
    let gpu = match health.gpu_percent {
        Some(percent) if health.gpu_available => format!(
            "{percent:.1}% (memory {})",
            health
                .gpu_memory_percent
                .map_or_else(|| "-".to_owned(), |memory| format!("{memory:.1}%"))
        ),
        _ => "none".to_owned(),
    };
    let mut text = String::new();
    let _ = writeln!(text, "Node: {}", health.node_id);
    let _ = writeln!(text, "Online: true");
    let _ = writeln!(text, "Last Heartbeat: {}", health.last_heartbeat);
    let _ = writeln!(text, "Reachable: {}", health.is_reachable);
    let _ = writeln!(text, "CPU: {}", percent(health.cpu_percent));
    let _ = writeln!(text, "Memory: {}", percent(health.memory_percent));
    let _ = writeln!(text, "Disk: {}", percent(health.disk_percent));
    let _ = writeln!(text, "GPU: {gpu}");
    let _ = writeln!(
        text,
        "Ping: {}",
        health
            .ping_latency_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2} ms"))
    );
    let _ = writeln!(text, "MCP: {}", mcp_state(health));
    Rendered {
        text,
        json: json!({"node_id": node_id.as_str(), "online": true, "health": health}),
    }
}

fn mcp_state(health: &NodeHealth) -> String {
    match (health.mcp_server_running, health.mcp_port) {
        (true, Some(port)) => format!("running on port {port}"),
        (true, None) => "running (stdio)".to_owned(),
        (false, _) => "not running".to_owned(),
    }
}

/// `state://nodes`: live heartbeats plus the nodes of the registry whose heartbeat expired.
///
/// `known` is the registry: node ids with the time of their last heartbeat (Unix ms).
/// `known` is the node registry, or why it could not be read (another client's value under its
/// key): then the live nodes alone are listed, and the registry is a corrupt entry.
pub fn nodes(live: Vec<Entry<NodeHealth>>, known: tatbot_state::Result<Vec<KnownNode>>) -> Rendered {
    let (known, registry) = match known {
        Ok(known) => (known, None),
        Err(err) => (
            Vec::new(),
            Some(Entry {
                id: tatbot_state::keys::NODE_REGISTRY.to_owned(),
                key: tatbot_state::keys::NODE_REGISTRY.to_owned(),
                value: Err(err),
            }),
        ),
    };
    let mut last_seen: BTreeMap<String, Option<i64>> = known
        .into_iter()
        .map(|node| (node.node_id, Some(node.last_heartbeat_ms)))
        .collect();
    let (live, corrupt): (Vec<_>, Vec<_>) = live.into_iter().partition(|entry| entry.value.is_ok());
    let live: BTreeMap<String, NodeHealth> = live
        .into_iter()
        .filter_map(|entry| Some((entry.id, entry.value.ok()?)))
        .collect();
    for node in live.keys().chain(corrupt.iter().map(|entry| &entry.id)) {
        last_seen.entry(node.clone()).or_insert(None);
    }
    let online = live.len() + corrupt.len();

    let mut text = format!("Nodes Online: {online}/{}\n", last_seen.len());
    let mut rows = Vec::with_capacity(last_seen.len());
    let mut listed = Vec::with_capacity(last_seen.len());
    for (node, seen_ms) in &last_seen {
        if corrupt.iter().any(|entry| &entry.id == node) {
            continue;
        }
        match live.get(node) {
            Some(health) => {
                rows.push(vec![
                    node.clone(),
                    "yes".to_owned(),
                    health.last_heartbeat.to_string(),
                    percent(health.cpu_percent),
                    percent(health.memory_percent),
                    percent(health.disk_percent),
                    mcp_state(health),
                ]);
                listed.push(json!({"node_id": node, "online": true, "last_seen_unix_ms": seen_ms, "health": health}));
            }
            None => {
                rows.push(vec![
                    node.clone(),
                    "no".to_owned(),
                    seen_ms.map_or_else(String::new, |ms| format!("{ms} (unix ms)")),
                ]);
                listed.push(json!({"node_id": node, "online": false, "last_seen_unix_ms": seen_ms, "health": null}));
            }
        }
    }
    if !rows.is_empty() {
        text.push_str(&table(
            &["NODE", "ONLINE", "LAST HEARTBEAT", "CPU", "MEMORY", "DISK", "MCP"],
            &rows,
        ));
    }
    let mut corrupt = corrupt;
    corrupt.extend(registry);
    let corrupt = corrupt_list(&corrupt, &mut text);
    Rendered {
        text,
        json: json!({"online": online, "known": last_seen.len(), "nodes": listed, "corrupt": corrupt}),
    }
}

/// `state://config`.
pub fn config(config: &ConfigDescription) -> Rendered {
    let mut text = format!("Redis Target: {}\n", config.target);
    let rows: Vec<Vec<String>> = config
        .fields
        .iter()
        .map(|row| vec![row.field.clone(), row.value.clone(), row.source.clone()])
        .collect();
    text.push_str(&table(&["FIELD", "VALUE", "SOURCE"], &rows));
    Rendered {
        text,
        json: to_value(config),
    }
}

/// `state://errors`: the newest stored errors, newest first.
pub fn errors(entries: Vec<Entry<ErrorEvent>>) -> Rendered {
    let (events, corrupt): (Vec<_>, Vec<_>) = entries.into_iter().partition(|entry| entry.value.is_ok());
    let events: Vec<ErrorEvent> = events.into_iter().filter_map(|entry| entry.value.ok()).collect();
    let mut text = format!("Errors: {} (newest first, at most {MAX_LISTED_ERRORS})\n", events.len());
    for event in &events {
        let _ = writeln!(
            text,
            "{} [{}] {}: {}",
            event.timestamp, event.category, event.node_id, event.message
        );
    }
    let corrupt = corrupt_list(&corrupt, &mut text);
    Rendered {
        text,
        json: json!({"errors": events, "corrupt": corrupt}),
    }
}

/// `state://params`: every parameter, by name, one line each; corrupt ones are listed after
/// the others with their errors (`"corrupt"` in JSON), never failing the read.
pub fn params(entries: Vec<Entry<Param>>) -> Rendered {
    let (params, corrupt): (Vec<_>, Vec<_>) = entries.into_iter().partition(|entry| entry.value.is_ok());
    let params: Vec<Param> = params.into_iter().filter_map(|entry| entry.value.ok()).collect();
    let mut text = format!("Parameters: {}\n", params.len());
    for param in &params {
        let line = format!(
            "{} = {} ({}, v{}, set by {} at {})",
            param.name, param.value, param.descriptor.param_type, param.version, param.actor, param.updated
        );
        let _ = writeln!(text, "{}", shown(&line));
    }
    let corrupt = corrupt_list(&corrupt, &mut text);
    Rendered {
        text,
        json: json!({"count": params.len(), "params": params, "corrupt": corrupt}),
    }
}

/// `state://params/{name}`: one parameter with its declaration.
pub fn param(param: &Param) -> Rendered {
    let descriptor = &param.descriptor;
    let is_int = descriptor.param_type.element() == ParamType::Int;
    // Int bounds are whole numbers stored as f64; `{:?}` keeps the ".0" of a whole float.
    let bound = |bound: Option<f64>| match bound {
        None => "-".to_owned(),
        Some(bound) if is_int => format!("{bound:.0}"),
        Some(bound) => format!("{bound:?}"),
    };
    let mut text = String::new();
    let _ = writeln!(text, "Name: {}", param.name);
    let _ = writeln!(text, "Type: {}", descriptor.param_type);
    let _ = writeln!(text, "Value: {}", param.value);
    let _ = writeln!(text, "Version: {}", param.version);
    let _ = writeln!(text, "Set By: {}", param.actor);
    let _ = writeln!(text, "Updated: {}", param.updated);
    let _ = writeln!(text, "Default: {}", descriptor.default);
    if descriptor.param_type.is_numeric() {
        let _ = writeln!(text, "Min: {}", bound(descriptor.min));
        let _ = writeln!(text, "Max: {}", bound(descriptor.max));
        let _ = writeln!(text, "Step: {}", bound(descriptor.step));
    }
    let _ = writeln!(text, "Read Only: {}", descriptor.read_only);
    let _ = writeln!(text, "Description: {}", descriptor.description);
    Rendered {
        text,
        json: to_value(param),
    }
}

/// Appends the entries that did not decode to `text` and returns them as JSON.
/// `state://robot/{node_id}`: one robot's connection, pose and joints.
pub fn robot(state: &RobotState) -> Rendered {
    let connected = |is_connected: bool| if is_connected { "connected" } else { "disconnected" };
    let mut text = String::new();
    let _ = writeln!(text, "Node: {}", shown(&state.node_id));
    let _ = writeln!(text, "Updated: {}", state.timestamp);
    let _ = writeln!(text, "Pose: {}", shown(&state.current_pose));
    let _ = writeln!(text, "Left Arm: {}", connected(state.is_connected_l));
    let _ = writeln!(text, "  Joints: {}", joints(state.joints_l.as_deref()));
    let _ = writeln!(text, "  Velocities: {}", joints(state.velocities_l.as_deref()));
    let _ = writeln!(text, "Right Arm: {}", connected(state.is_connected_r));
    let _ = writeln!(text, "  Joints: {}", joints(state.joints_r.as_deref()));
    let _ = writeln!(text, "  Velocities: {}", joints(state.velocities_r.as_deref()));
    let _ = writeln!(
        text,
        "Goal Times: slow {}s, fast {}s",
        state.goal_time_slow, state.goal_time_fast
    );
    Rendered {
        text,
        json: to_value(state),
    }
}

/// `state://robot`: every stored robot state, with the corrupt ones listed apart.
pub fn robots(entries: Vec<Entry<RobotState>>) -> Rendered {
    let (mut robots, corrupt): (Vec<_>, Vec<_>) = entries.into_iter().partition(|entry| entry.value.is_ok());
    robots.sort_by(|a, b| a.id.cmp(&b.id));
    let mut text = format!("Robots: {}\n", robots.len());
    let mut rows = Vec::with_capacity(robots.len());
    let mut listed = Vec::with_capacity(robots.len());
    for entry in &robots {
        let Ok(state) = &entry.value else { continue };
        let arm = |is_connected: bool| if is_connected { "up" } else { "down" }.to_owned();
        rows.push(vec![
            entry.id.clone(),
            state.current_pose.clone(),
            arm(state.is_connected_l),
            arm(state.is_connected_r),
            state.timestamp.to_string(),
            joints(state.joints_l.as_deref()),
            joints(state.joints_r.as_deref()),
        ]);
        listed.push(json!({"node_id": entry.id, "state": state}));
    }
    if !rows.is_empty() {
        text.push_str(&table(
            &["NODE", "POSE", "LEFT", "RIGHT", "UPDATED", "JOINTS L", "JOINTS R"],
            &rows,
        ));
    }
    let corrupt = corrupt_list(&corrupt, &mut text);
    Rendered {
        text,
        json: json!({"robots": listed, "corrupt": corrupt}),
    }
}

fn corrupt_list<T>(corrupt: &[Entry<T>], text: &mut String) -> Vec<Value> {
    if !corrupt.is_empty() {
        let _ = writeln!(text, "Corrupt Entries: {}", corrupt.len());
    }
    corrupt
        .iter()
        .map(|entry| {
            let error = entry.value.as_ref().err().map(ToString::to_string).unwrap_or_default();
            let _ = writeln!(text, "  {}: {}", shown(&entry.key), shown(&error));
            json!({"key": entry.key, "error": error})
        })
        .collect()
}

/// Our documents hold only strings, numbers, booleans and JSON values, which always serialize;
/// a failure would be a bug in a derive, shown as `null` rather than failing the read.
fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

use tatbot_state::text::{joints, percent, position, shown, table};

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> StrokeProgress {
        serde_json::from_value(json!({
            "timestamp": tatbot_state::Timestamp::now(),
            "node_id": "hog",
            "stroke_idx": 2,
            "pose_idx": 3,
            "total_strokes": 3,
            "stroke_length": 4,
            "is_executing": true,
            "scene_name": "demo",
        }))
        .unwrap()
    }

    /// Issue #13 point 2: a session silent past its lease reads `stale`, not executing, with
    /// the age of its last update.
    #[test]
    fn stale_session_is_not_executing() {
        let mut stale = progress();
        stale.timestamp = tatbot_state::Timestamp::parse("2026-11-25T17:15:37").unwrap();
        let session_id = SessionId::new("stroke_hog_1").unwrap();
        let rendered = session_progress(&session_id, &stale);
        for line in ["Executing: false\n", "State: stale\n", " s ago\n"] {
            assert!(rendered.text.contains(line), "{}", rendered.text);
        }
        assert_eq!(rendered.json["state"], "stale");
        assert_eq!(
            rendered.json["progress"]["is_executing"], true,
            "JSON keeps the stored document"
        );
    }

    /// Progress text is 1-based and keeps the old labels; JSON keeps the stored 0-based document.
    #[test]
    fn progress_lines() {
        let session_id = SessionId::new("stroke_hog_1").unwrap();
        let rendered = latest_progress(&session_id, &progress());
        for line in ["Stroke: 3/3\n", "Pose: 4/4\n", "Scene: demo\n", "Executing: true\n"] {
            assert!(rendered.text.contains(line), "{}", rendered.text);
        }
        assert_eq!(rendered.json["active"], true);
        assert_eq!(rendered.json["progress"]["stroke_idx"], 2);
        assert_eq!(rendered.json["fraction"], 1.0);
        assert_eq!(no_active_session().text, "No active stroke session\n");
    }

    fn goal_time() -> Param {
        Param {
            name: tatbot_state::ParamName::new("arms.goal_time_slow").unwrap(),
            value: 2.5.into(),
            version: 3,
            actor: NodeId::new("hog").unwrap(),
            updated: tatbot_state::Timestamp::parse("2026-11-25T17:15:37.792132").unwrap(),
            descriptor: tatbot_state::Descriptor::new(2.0)
                .description("slow move time, s")
                .range(0.1, 5.0),
        }
    }

    /// The list has one line per parameter with its type, version, actor and time; JSON keeps
    /// the library's form.
    #[test]
    fn params_lines() {
        let entry = |param: Param| Entry {
            id: param.name.to_string(),
            key: format!("tatbot:param:{}", param.name),
            value: Ok(param),
        };
        let rendered = params(vec![entry(goal_time())]);
        assert_eq!(
            rendered.text,
            "Parameters: 1\narms.goal_time_slow = 2.5 (float, v3, set by hog at 2026-11-25T17:15:37.792132)\n"
        );
        assert_eq!(rendered.json["count"], 1);
        assert_eq!(rendered.json["params"][0]["descriptor"]["type"], "float");
        assert_eq!(params(Vec::new()).text, "Parameters: 0\n");
    }

    /// One parameter shows its whole declaration; a float bound keeps its ".0".
    #[test]
    fn param_lines() {
        let rendered = param(&goal_time());
        for line in [
            "Name: arms.goal_time_slow\n",
            "Type: float\n",
            "Value: 2.5\n",
            "Version: 3\n",
            "Set By: hog\n",
            "Default: 2.0\n",
            "Min: 0.1\n",
            "Max: 5.0\n",
            "Step: -\n",
            "Read Only: false\n",
            "Description: slow move time, s\n",
        ] {
            assert!(rendered.text.contains(line), "{line:?} in {}", rendered.text);
        }
        assert_eq!(rendered.json["descriptor"]["max"], 5.0);
        assert_eq!(rendered.json["value"], 2.5);
    }

    /// The config resource shows the target and the source of each field.
    #[test]
    fn config_table() {
        let config = ConfigDescription {
            target: "127.0.0.1:6379 (password set)".to_owned(),
            fields: vec![ConfigRow {
                field: "password".to_owned(),
                value: "(set)".to_owned(),
                source: "flag".to_owned(),
            }],
        };
        let rendered = self::config(&config);
        assert_eq!(
            rendered.text,
            "Redis Target: 127.0.0.1:6379 (password set)\nFIELD     VALUE  SOURCE\npassword  (set)  flag\n"
        );
        assert_eq!(rendered.json["fields"][0]["source"], "flag");
    }
}

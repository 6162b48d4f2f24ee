//! [`StateManager`]: every read and write of tatbot state.
//!
//! One manager holds one auto-reconnecting multiplexed connection, shared by clones. Every write
//! is one atomic round trip: a Lua script (see `scripts.rs`) that writes the document, the
//! history entry, the event and the event log entry together, so a crash or a second writer
//! never sees half an update. Every event we publish is also appended to our
//! durable event log [`keys::EVENT_LOG`], so a viewer that was away can replay it.
//!
//! Listing never uses `KEYS`: sessions and nodes are found with `SCAN` (which also finds the
//! ones Python nodes wrote) and their documents fetched in pipelined batches. A value that does
//! not decode is reported per entry, naming its key, and never fails a whole listing.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Value as RedisValue};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::connection::{self, ManagerConfig};
use crate::error::{Error, Result};
use crate::fastpath::DocCache;
use crate::ids::{Category, NodeId, SessionId};
use crate::keys;
use crate::model::{ErrorEvent, Event, HistoryEntry, NodeHealth, RobotState, StrokeProgress};
use crate::ops::{Op, RunState};
use crate::scripts;
use crate::subscribe::Subscription;
use crate::timestamp::Timestamp;

/// Longest description, scene name or error message we store (bytes).
pub const MAX_TEXT_LEN: usize = 4096;
/// Keys per `SCAN` step and per pipelined read batch.
const SCAN_BATCH: usize = 1000;
/// How long a per-second session counter lives; far longer than any clock step between nodes.
const SESSION_SEQ_TTL_SECS: u64 = 120;
/// Sessions a manager remembers having started, for producers that must re-create one.
const MAX_STARTED: usize = 16;

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

/// One listed item: its id, its key, and its decoded value or the reason it did not decode.
#[derive(Debug)]
pub struct Entry<T> {
    /// Session id, node id or stream entry id.
    pub id: String,
    /// The Redis key it came from.
    pub key: String,
    /// The decoded document.
    pub value: Result<T>,
}

/// A value that did not decode, as reported by [`StateManager::system_status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorruptEntry {
    /// The key.
    pub key: String,
    /// Why it did not decode.
    pub error: String,
}

/// The system summary.
#[derive(Debug, Clone, Serialize)]
pub struct SystemStatus {
    /// Whether Redis answered.
    pub redis_connected: bool,
    /// `redis_version` from `INFO server`.
    pub redis_version: Option<String>,
    /// Sessions executing now (started, not ended, not paused).
    pub active_sessions: usize,
    /// Sessions paused now.
    pub paused_sessions: usize,
    /// Sessions stored (executing, paused or ended within the retention).
    pub total_sessions: usize,
    /// Nodes with a live heartbeat.
    pub nodes_online: usize,
    /// Nodes ever seen (heartbeat registry plus live heartbeats).
    pub nodes_known: usize,
    /// Producer updates dropped because a producer's queue was full, over all producers that
    /// reported in the last week (`tatbot:producers`).
    pub dropped_updates: u64,
    /// Producer writes Redis refused (unknown session, corrupt document, permission), over the
    /// same producers.
    pub rejected_updates: u64,
    /// Sessions producers re-created after Redis lost them (a restart without their data).
    pub restored_sessions: u64,
    /// Producers that reported their counters in the last minute.
    pub producers_active: usize,
    /// Values that did not decode.
    pub corrupt: Vec<CorruptEntry>,
    /// Why Redis was not reachable, when it was not.
    pub error: Option<String>,
    /// When the summary was made.
    pub timestamp: Timestamp,
}

/// A session found by a listing, with its decoded progress.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// The session id.
    pub session_id: SessionId,
    /// Its progress.
    pub progress: StrokeProgress,
}

/// Reads, writes, publishes and subscribes tatbot state on one Redis server.
///
/// Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct StateManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: ManagerConfig,
    /// Opens the dedicated connections that subscriptions need.
    client: redis::Client,
    /// Settings for (re)making the shared connection.
    manager_config: ConnectionManagerConfig,
    /// The shared multiplexed connection. The driver reconnects it after a reset, but not after
    /// a timeout, which is what a half-open connection (peer silent, no reset) produces; so on a
    /// timeout we swap in a fresh lazy connection here. The lock is held only to clone or swap.
    connection: RwLock<ConnectionManager>,
    /// The progress documents this manager last stored, for the update's fast path.
    docs: Mutex<DocCache>,
    /// The sessions this manager started last, oldest first: what a producer needs to
    /// re-create one that a Redis restart lost.
    started: Mutex<VecDeque<StartedSession>>,
}

/// A session as its start stored it.
#[derive(Debug, Clone)]
pub(crate) struct StartedSession {
    pub session_id: SessionId,
    pub progress: StrokeProgress,
    pub start_ms: i64,
}

impl StateManager {
    /// Connects and checks that the server answers (and accepts the credentials).
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] when nothing answers within the connect timeout, [`Error::Auth`]
    /// when the credentials are refused.
    pub async fn connect(config: ManagerConfig) -> Result<StateManager> {
        let (client, manager_config) = connection::client(&config)?;
        let connection = connection::connect(&config, &client, &manager_config).await?;
        let manager = StateManager::from_parts(config, client, manager_config, connection);
        tracing::info!(target = %manager.inner.config.endpoint, node_id = %manager.inner.config.node_id, "connected to redis");
        Ok(manager)
    }

    /// Makes a manager without touching the network; it connects on first use. Calls fail
    /// while Redis is unreachable and work once it is up, so a producer can start before Redis.
    ///
    /// # Errors
    ///
    /// Only an endpoint the driver cannot represent.
    pub fn connect_lazy(config: ManagerConfig) -> Result<StateManager> {
        let (client, manager_config) = connection::client(&config)?;
        let connection = connection::lazy(&client, &manager_config)?;
        Ok(StateManager::from_parts(config, client, manager_config, connection))
    }

    fn from_parts(
        config: ManagerConfig,
        client: redis::Client,
        manager_config: ConnectionManagerConfig,
        connection: ConnectionManager,
    ) -> StateManager {
        let connection = RwLock::new(connection);
        StateManager {
            inner: Arc::new(Inner {
                config,
                client,
                manager_config,
                connection,
                docs: Mutex::new(DocCache::default()),
                started: Mutex::default(),
            }),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.config.node_id
    }

    /// The configuration the manager runs with.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// The client, for components that need a connection of their own.
    pub(crate) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    pub(crate) fn connection(&self) -> ConnectionManager {
        // A poisoned lock only means a panic elsewhere while cloning or swapping; the
        // connection inside is still valid.
        self.inner
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the shared connection with a fresh one that connects on next use.
    fn replace_connection(&self) {
        match connection::lazy(&self.inner.client, &self.inner.manager_config) {
            Ok(fresh) => {
                *self.inner.connection.write().unwrap_or_else(PoisonError::into_inner) = fresh;
                tracing::warn!(target = %self.inner.config.endpoint, "redis did not answer in time; replaced the connection");
            }
            Err(err) => tracing::warn!(error = %err, "cannot replace the redis connection"),
        }
    }

    pub(crate) fn redis_error(&self, operation: &'static str, err: redis::RedisError) -> Error {
        match Error::from_redis(operation, err) {
            Error::Timeout { operation, .. } => {
                self.replace_connection();
                Error::Timeout {
                    operation,
                    after: self.inner.config.response_timeout,
                }
            }
            other => other,
        }
    }

    /// Measures one `PING` round trip.
    ///
    /// # Errors
    ///
    /// Redis did not answer.
    pub async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection())
            .await
            .map_err(|err| self.redis_error("ping", err))?;
        Ok(started.elapsed())
    }

    /// Starts a stroke session and announces it with `session_start`.
    ///
    /// The id is `stroke_{node_id}_{unix_seconds}`, as the Python nodes make it; a second session
    /// started by this node in the same second gets `_2`, then `_3`, and so on.
    ///
    /// # Errors
    ///
    /// A scene name longer than [`MAX_TEXT_LEN`], or a Redis failure.
    pub async fn start_stroke_session(
        &self,
        total_strokes: u32,
        stroke_length: u32,
        scene_name: &str,
    ) -> Result<SessionId> {
        check_text("scene name", scene_name)?;
        let now = Timestamp::now();
        let node_id = self.node_id();
        let mut progress = StrokeProgress {
            timestamp: now,
            node_id: node_id.to_string(),
            stroke_idx: 0,
            pose_idx: 0,
            total_strokes: total_strokes.into(),
            stroke_length: stroke_length.into(),
            stroke_description_l: String::new(),
            stroke_description_r: String::new(),
            offset_idx_l: 0,
            offset_idx_r: 0,
            is_executing: true,
            is_paused: false,
            scene_name: scene_name.to_owned(),
            dataset_name: None,
            extra: Default::default(),
        };
        progress.extra.clear();
        let base = keys::session_base(node_id, now.as_datetime().timestamp());
        let document = encode_json("progress", &progress)?;
        let stored = document.clone();
        let session_id: String = scripts::START
            .key(keys::SESSION_INDEX)
            .key(keys::EVENT_LOG)
            .arg(&base)
            .arg(keys::session_seq(&base))
            .arg(keys::PROGRESS_PREFIX)
            .arg(document)
            .arg(now.unix_millis())
            .arg(self.inner.config.event_log_maxlen)
            .arg(keys::SESSION_EVENTS)
            .arg(node_id.as_str())
            .arg(total_strokes)
            .arg(scene_name)
            .arg(now.to_string())
            .arg(SESSION_SEQ_TTL_SECS)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|err| self.redis_error("start_stroke_session", err))?;
        tracing::debug!(session_id = %session_id, "stroke session started");
        let session_id = SessionId::new(session_id)?;
        self.docs().learn_built(&session_id, &progress, stored);
        let mut started = self.inner.started.lock().unwrap_or_else(PoisonError::into_inner);
        if started.len() >= MAX_STARTED {
            started.pop_front();
        }
        started.push_back(StartedSession {
            session_id: session_id.clone(),
            progress,
            start_ms: now.unix_millis(),
        });
        Ok(session_id)
    }

    /// The sessions this manager started most recently.
    pub(crate) fn started_sessions(&self) -> Vec<StartedSession> {
        let started = self.inner.started.lock().unwrap_or_else(PoisonError::into_inner);
        started.iter().cloned().collect()
    }

    /// Forgets a started session: it ended or was cleared, and must never be re-created.
    fn forget_started(&self, session_id: &SessionId) {
        let mut started = self.inner.started.lock().unwrap_or_else(PoisonError::into_inner);
        started.retain(|session| session.session_id != *session_id);
    }

    /// The op that re-creates `session_id` with `progress` when Redis lost it.
    pub(crate) fn ensure_op(&self, session_id: &SessionId, progress: &StrokeProgress, start_ms: i64) -> Result<Op> {
        let started_at =
            chrono::DateTime::from_timestamp_millis(start_ms).map_or(progress.timestamp, Timestamp::from_datetime);
        let event = Event::SessionStart(crate::model::SessionStartEvent {
            session_id: session_id.to_string(),
            node_id: progress.node_id.clone(),
            total_strokes: progress.total_strokes,
            scene_name: progress.scene_name.clone(),
            timestamp: started_at,
            extra: Default::default(),
        });
        Ok(Op::Ensure {
            session_id: session_id.clone(),
            document: encode_json("progress", progress)?,
            start_ms,
            event: event.to_json(),
            ended: !progress.is_executing,
        })
    }

    /// Records progress: merges the named fields into the progress document, appends one
    /// history entry and publishes `progress_update`, atomically and in one round trip.
    ///
    /// Fields the update leaves `None`, and fields another writer set, are kept.
    /// Returns the history entry id.
    ///
    /// # Errors
    ///
    /// [`Error::SessionNotFound`], [`Error::Corrupt`] when the stored document is not JSON, a
    /// description longer than [`MAX_TEXT_LEN`], or a Redis failure.
    pub async fn update_stroke_progress(&self, session_id: &SessionId, update: &ProgressUpdate) -> Result<String> {
        let op = self.progress_op(session_id, update)?;
        let reply = self.apply(&op, "update_stroke_progress").await?;
        Ok(self.docs().observe(session_id, reply).unwrap_or_default())
    }

    /// The cache of stored progress documents; a poisoned lock only means a panic elsewhere
    /// while the cache, a hint, was being changed.
    fn docs(&self) -> std::sync::MutexGuard<'_, DocCache> {
        self.inner.docs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The op for a progress update, stamped now.
    pub(crate) fn progress_op(&self, session_id: &SessionId, update: &ProgressUpdate) -> Result<Op> {
        for (what, text) in [
            ("left description", &update.description_l),
            ("right description", &update.description_r),
        ] {
            if let Some(text) = text {
                check_text(what, text)?;
            }
        }
        Ok(Op::Progress {
            session_id: session_id.clone(),
            update: update.clone(),
            at: Timestamp::now(),
        })
    }

    /// The op for a run-state change, stamped now.
    pub(crate) fn run_state_op(&self, session_id: &SessionId, kind: RunState) -> Op {
        let mut patch = Map::new();
        patch.insert("timestamp".into(), json!(Timestamp::now()));
        patch.insert("node_id".into(), json!(self.node_id()));
        match kind {
            RunState::Pause => patch.insert("is_paused".into(), true.into()),
            RunState::Resume => patch.insert("is_paused".into(), false.into()),
            RunState::End => {
                patch.insert("is_executing".into(), false.into());
                patch.insert("is_paused".into(), false.into())
            }
        };
        Op::RunState {
            session_id: session_id.clone(),
            patch,
            kind,
        }
    }

    /// Runs one op now (no writer revision) and returns the script's answer.
    async fn apply(&self, op: &Op, operation: &'static str) -> Result<redis::Value> {
        let fast = op.plan(&mut self.docs(), self.node_id());
        let reply = op
            .invocation(&self.inner.config, "", 0, fast.as_ref())
            .invoke_async(&mut self.connection())
            .await
            .map_err(|err| self.redis_error(operation, err));
        if reply.is_err()
            && let Some(session_id) = op.session()
        {
            self.docs().forget(session_id);
        }
        reply
    }

    /// Marks the session paused (`is_paused: true`) and publishes `session_pause`.
    ///
    /// # Errors
    ///
    /// As [`StateManager::update_stroke_progress`].
    pub async fn pause_stroke_session(&self, session_id: &SessionId) -> Result<()> {
        self.apply(&self.run_state_op(session_id, RunState::Pause), "pause_stroke_session")
            .await?;
        Ok(())
    }

    /// Clears `is_paused` and publishes `session_resume`.
    ///
    /// # Errors
    ///
    /// As [`StateManager::update_stroke_progress`].
    pub async fn resume_stroke_session(&self, session_id: &SessionId) -> Result<()> {
        self.apply(
            &self.run_state_op(session_id, RunState::Resume),
            "resume_stroke_session",
        )
        .await?;
        Ok(())
    }

    /// Ends the session (`is_executing: false`), publishes `session_end`, and lets its progress
    /// and history expire after the configured retention.
    ///
    /// # Errors
    ///
    /// As [`StateManager::update_stroke_progress`].
    pub async fn end_stroke_session(&self, session_id: &SessionId) -> Result<()> {
        self.apply(&self.run_state_op(session_id, RunState::End), "end_stroke_session")
            .await?;
        self.forget_started(session_id);
        Ok(())
    }

    /// One session's progress, or `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the key when the stored value is not a StrokeProgress.
    pub async fn get_stroke_progress(&self, session_id: &SessionId) -> Result<Option<StrokeProgress>> {
        let key = keys::progress(session_id);
        let raw: Option<String> = self
            .connection()
            .hget(&key, keys::FIELD_PROGRESS)
            .await
            .map_err(|err| self.redis_error("get_stroke_progress", err))?;
        raw.map(|raw| decode_json(&key, "StrokeProgress", &raw)).transpose()
    }

    /// Every stored session (ours and the Python nodes'), each decoded or with its error.
    ///
    /// # Errors
    ///
    /// A Redis failure; a bad value is reported in its [`Entry`].
    pub async fn list_sessions(&self) -> Result<Vec<Entry<StrokeProgress>>> {
        let found = self.scan(keys::PROGRESS_PATTERN).await?;
        self.read_documents(found, keys::PROGRESS_PREFIX, keys::FIELD_PROGRESS, "StrokeProgress")
            .await
    }

    /// The most recently written session that is executing, from any node.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn latest_active_session(&self) -> Result<Option<SessionInfo>> {
        let sessions = self.list_sessions().await?;
        Ok(sessions
            .into_iter()
            .filter_map(|entry| {
                let progress = entry.value.ok()?;
                let session_id = SessionId::new(entry.id).ok()?;
                Some(SessionInfo { session_id, progress })
            })
            .filter(|info| info.progress.is_executing)
            .max_by_key(|info| info.progress.timestamp))
    }

    /// Up to `count` history entries of a session, oldest first, after entry id `after`
    /// (exclusive) or from the start.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the stream and entry when an entry lacks a field or holds a
    /// non-integer index, or a Redis failure.
    pub async fn get_history(
        &self,
        session_id: &SessionId,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<HistoryEntry>> {
        let key = keys::history(session_id);
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: redis::streams::StreamRangeReply = self
            .connection()
            .xrange_count(&key, start, "+", count)
            .await
            .map_err(|err| self.redis_error("get_history", err))?;
        reply.ids.into_iter().map(|entry| decode_history(&key, entry)).collect()
    }

    /// Stores the robot state (`state` and `last_updated`) and publishes `state_update`.
    ///
    /// # Errors
    ///
    /// An invalid `state.node_id`, or a Redis failure.
    pub async fn update_robot_state(&self, state: &RobotState) -> Result<()> {
        self.apply(&robot_state_op(state)?, "update_robot_state").await?;
        Ok(())
    }

    /// One node's robot state, or `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the key, or a Redis failure.
    pub async fn get_robot_state(&self, node_id: &NodeId) -> Result<Option<RobotState>> {
        let key = keys::robot_state(node_id);
        let raw: Option<String> = self
            .connection()
            .hget(&key, keys::FIELD_STATE)
            .await
            .map_err(|err| self.redis_error("get_robot_state", err))?;
        raw.map(|raw| decode_json(&key, "RobotState", &raw)).transpose()
    }

    /// Stores a heartbeat with the health TTL and records the node in our registry.
    ///
    /// # Errors
    ///
    /// An invalid `health.node_id`, or a Redis failure.
    pub async fn update_node_health(&self, health: &NodeHealth) -> Result<()> {
        self.apply(&health_op(health)?, "update_node_health").await?;
        Ok(())
    }

    /// One node's last heartbeat, or `None` when it has expired or never came.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the key, or a Redis failure.
    pub async fn get_node_health(&self, node_id: &NodeId) -> Result<Option<NodeHealth>> {
        let mut healths = self.get_nodes_health(std::slice::from_ref(node_id)).await?;
        healths.pop().flatten().transpose()
    }

    /// Several nodes' heartbeats in one round trip, in the order asked.
    ///
    /// # Errors
    ///
    /// A Redis failure; a bad value is reported in its slot.
    pub async fn get_nodes_health(&self, node_ids: &[NodeId]) -> Result<Vec<Option<Result<NodeHealth>>>> {
        let mut pipe = redis::pipe();
        for node_id in node_ids {
            pipe.hget(keys::health(node_id), keys::FIELD_HEALTH);
        }
        let raws: Vec<Option<String>> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(|err| self.redis_error("get_nodes_health", err))?;
        Ok(node_ids
            .iter()
            .zip(raws)
            .map(|(node_id, raw)| raw.map(|raw| decode_json(&keys::health(node_id), "NodeHealth", &raw)))
            .collect())
    }

    /// Every live heartbeat (ours and the Python nodes'), each decoded or with its error.
    ///
    /// # Errors
    ///
    /// A Redis failure; a bad value is reported in its [`Entry`].
    pub async fn get_all_nodes_health(&self) -> Result<Vec<Entry<NodeHealth>>> {
        let found = self.scan(keys::HEALTH_PATTERN).await?;
        self.read_documents(found, keys::HEALTH_PREFIX, keys::FIELD_HEALTH, "NodeHealth")
            .await
    }

    /// Nodes that ever sent a heartbeat through tatbot-state, with the time of the last one.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn known_nodes(&self) -> Result<Vec<(String, i64)>> {
        self.connection()
            .zrange_withscores(keys::NODE_REGISTRY, 0, -1)
            .await
            .map_err(|err| self.redis_error("known_nodes", err))
    }

    /// Publishes an event on `channel` (as Python's `json.dumps` would write it) and appends it
    /// to the durable event log. Returns how many subscribers received it.
    ///
    /// # Errors
    ///
    /// An empty or oversized channel name, an event over
    /// [`crate::model::MAX_DOCUMENT_BYTES`], or a Redis failure.
    pub async fn publish_event(&self, channel: &str, event: &Event) -> Result<usize> {
        if channel.is_empty() || channel.len() > 256 || channel.contains(char::is_whitespace) {
            return Err(Error::InvalidInput(format!(
                "invalid channel name {channel:?}: 1-256 characters without spaces"
            )));
        }
        let payload = event.to_json();
        if payload.len() > crate::model::MAX_DOCUMENT_BYTES {
            // Redis would cut off every subscriber whose output buffer it overflows.
            return Err(Error::InvalidInput(format!(
                "event is {} bytes; the limit is {}",
                payload.len(),
                crate::model::MAX_DOCUMENT_BYTES
            )));
        }
        let mut pipe = redis::pipe();
        pipe.atomic().publish(channel, &payload);
        self.log_event(&mut pipe, channel, &payload);
        let (receivers,): (usize,) = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(|err| self.redis_error("publish_event", err))?;
        Ok(receivers)
    }

    fn log_event(&self, pipe: &mut redis::Pipeline, channel: &str, payload: &str) {
        pipe.cmd("XADD")
            .arg(keys::EVENT_LOG)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.inner.config.event_log_maxlen)
            .arg("*")
            .arg("channel")
            .arg(channel)
            .arg("payload")
            .arg(payload)
            .ignore();
    }

    /// Subscribes to channel patterns (`PSUBSCRIBE`) on a dedicated connection.
    ///
    /// # Errors
    ///
    /// The connection could not be opened.
    pub async fn subscribe(&self, patterns: &[&str]) -> Result<Subscription> {
        Subscription::open(&self.inner.client, &self.inner.config, patterns).await
    }

    /// Publishes an `error` event on `error:events:{category}` and stores it in our error log,
    /// which keeps the last [`ManagerConfig::error_log_maxlen`] errors of the last
    /// [`ManagerConfig::error_log_max_age`]. Errors are rare, so the log is trimmed exactly
    /// rather than with `~`, and the bounds hold to the entry.
    ///
    /// # Errors
    ///
    /// A message longer than [`MAX_TEXT_LEN`], or a Redis failure.
    pub async fn report_error(&self, category: &Category, message: &str, details: Value) -> Result<()> {
        let op = self.error_op(category, message, details)?;
        self.apply(&op, "report_error").await?;
        Ok(())
    }

    /// The op for an error report, stamped now.
    pub(crate) fn error_op(&self, category: &Category, message: &str, details: Value) -> Result<Op> {
        check_text("error message", message)?;
        let now = Timestamp::now();
        let event = ErrorEvent {
            category: category.to_string(),
            message: message.to_owned(),
            details,
            node_id: self.node_id().to_string(),
            timestamp: now,
            extra: Default::default(),
        };
        let max_age_ms = i64::try_from(self.inner.config.error_log_max_age.as_millis()).unwrap_or(i64::MAX);
        Ok(Op::Error {
            channel: keys::error_channel(category),
            event: Event::Error(event).to_json(),
            min_id_ms: now.unix_millis().saturating_sub(max_age_ms),
        })
    }

    /// The newest `count` stored errors, newest first.
    ///
    /// # Errors
    ///
    /// A Redis failure; a bad entry is reported in its [`Entry`].
    pub async fn list_errors(&self, count: usize) -> Result<Vec<Entry<ErrorEvent>>> {
        let reply: redis::streams::StreamRangeReply = self
            .connection()
            .xrevrange_count(keys::ERROR_LOG, "+", "-", count)
            .await
            .map_err(|err| self.redis_error("list_errors", err))?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| {
                let key = format!("{} entry {}", keys::ERROR_LOG, entry.id);
                let value = match entry.get::<String>("payload") {
                    None => Err(Error::InvalidInput(format!("{key}: no payload field"))),
                    Some(payload) => match Event::from_json(payload.as_bytes()) {
                        Ok(Event::Error(event)) => Ok(event),
                        Ok(_) => Err(Error::InvalidInput(format!("{key}: payload is not an error event"))),
                        Err(source) => Err(Error::Decode {
                            key: key.clone(),
                            what: "ErrorEvent",
                            source,
                        }),
                    },
                };
                Entry {
                    id: entry.id,
                    key: keys::ERROR_LOG.to_owned(),
                    value,
                }
            })
            .collect())
    }

    /// Deletes a session's progress and history. Returns whether anything was deleted.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn clear_session_data(&self, session_id: &SessionId) -> Result<bool> {
        self.docs().forget(session_id);
        self.forget_started(session_id);
        let (deleted,): (usize,) = redis::pipe()
            .atomic()
            .del(&[keys::progress(session_id), keys::history(session_id)])
            .zrem(keys::SESSION_INDEX, session_id.as_str())
            .ignore()
            .query_async(&mut self.connection())
            .await
            .map_err(|err| self.redis_error("clear_session_data", err))?;
        Ok(deleted > 0)
    }

    /// The system summary. Never fails: an unreachable server gives `redis_connected: false`
    /// with the reason, and values that do not decode are listed in `corrupt`.
    pub async fn system_status(&self) -> SystemStatus {
        let mut status = SystemStatus {
            redis_connected: false,
            redis_version: None,
            active_sessions: 0,
            paused_sessions: 0,
            total_sessions: 0,
            nodes_online: 0,
            nodes_known: 0,
            dropped_updates: 0,
            rejected_updates: 0,
            restored_sessions: 0,
            producers_active: 0,
            corrupt: Vec::new(),
            error: None,
            timestamp: Timestamp::now(),
        };
        if let Err(err) = self.fill_status(&mut status).await {
            status.error = Some(err.to_string());
        }
        status
    }

    async fn fill_status(&self, status: &mut SystemStatus) -> Result<()> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.connection())
            .await
            .map_err(|err| self.redis_error("system_status", err))?;
        status.redis_connected = true;
        status.redis_version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .map(|version| version.trim().to_owned());

        for entry in self.list_sessions().await? {
            status.total_sessions += 1;
            match entry.value {
                Ok(progress) if progress.is_executing && progress.is_paused => status.paused_sessions += 1,
                Ok(progress) if progress.is_executing => status.active_sessions += 1,
                Ok(_) => {}
                Err(err) => status.corrupt.push(CorruptEntry {
                    key: entry.key,
                    error: err.to_string(),
                }),
            }
        }
        let mut known: BTreeSet<String> = self.known_nodes().await?.into_iter().map(|(node, _)| node).collect();
        for entry in self.get_all_nodes_health().await? {
            status.nodes_online += 1;
            known.insert(entry.id);
            if let Err(err) = entry.value {
                status.corrupt.push(CorruptEntry {
                    key: entry.key,
                    error: err.to_string(),
                });
            }
        }
        status.nodes_known = known.len();
        let producers: Vec<(String, String)> = self
            .connection()
            .hgetall(keys::PRODUCERS)
            .await
            .map_err(|err| self.redis_error("system_status", err))?;
        let now = Timestamp::now().unix_millis();
        for (writer, record) in producers {
            let key = format!("{} field {writer}", keys::PRODUCERS);
            match decode_json::<Value>(&key, "producer stats", &record) {
                Ok(record) => {
                    let count = |name: &str| record["stats"][name].as_u64().unwrap_or(0);
                    status.dropped_updates = status.dropped_updates.saturating_add(count("dropped"));
                    status.rejected_updates = status.rejected_updates.saturating_add(count("rejected"));
                    status.restored_sessions = status.restored_sessions.saturating_add(count("restored"));
                    let updated = record["updated"].as_str().and_then(|text| Timestamp::parse(text).ok());
                    if updated.is_some_and(|at| now - at.unix_millis() < 60_000) {
                        status.producers_active += 1;
                    }
                }
                Err(err) => status.corrupt.push(CorruptEntry {
                    key,
                    error: err.to_string(),
                }),
            }
        }
        Ok(())
    }

    /// All keys matching `pattern`, by `SCAN` (never `KEYS`, which blocks the server).
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>> {
        scan_keys(&mut self.connection(), pattern, SCAN_BATCH)
            .await
            .map_err(|err| self.redis_error("scan", err))
    }

    /// Fetches `field` of each hash in pipelined batches and decodes it.
    pub(crate) async fn read_documents<T: serde::de::DeserializeOwned>(
        &self,
        found: Vec<String>,
        prefix: &str,
        field: &str,
        what: &'static str,
    ) -> Result<Vec<Entry<T>>> {
        let mut connection = self.connection();
        let mut entries = Vec::with_capacity(found.len());
        for chunk in found.chunks(SCAN_BATCH) {
            let mut pipe = redis::pipe();
            // A key of the wrong type (WRONGTYPE) is that entry's error, not the batch's.
            pipe.ignore_errors();
            for key in chunk {
                pipe.hget(key, field);
            }
            let values: Vec<redis::RedisResult<RedisValue>> = pipe
                .query_async(&mut connection)
                .await
                .map_err(|err| self.redis_error("read documents", err))?;
            for (key, value) in chunk.iter().zip(values) {
                let raw = match value {
                    // Expired between SCAN and HGET: it is gone, not corrupt.
                    Ok(RedisValue::Nil) => continue,
                    Ok(RedisValue::BulkString(bytes)) => String::from_utf8(bytes)
                        .map_err(|_| Error::InvalidInput(format!("{key}: field {field} is not UTF-8"))),
                    Ok(other) => Err(Error::InvalidInput(format!(
                        "{key}: field {field} is not a string ({other:?})"
                    ))),
                    Err(err) => Err(Error::InvalidInput(format!("{key}: {err}"))),
                };
                let value = raw.and_then(|raw| decode_json(key, what, &raw));
                let id = keys::strip(key, prefix).unwrap_or(key).to_owned();
                entries.push(Entry {
                    id,
                    key: key.clone(),
                    value,
                });
            }
        }
        Ok(entries)
    }
}

/// All keys matching `pattern`, by `SCAN` with `COUNT count`, each once.
pub(crate) async fn scan_keys<C: redis::aio::ConnectionLike>(
    connection: &mut C,
    pattern: &str,
    count: usize,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut found = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(connection)
            .await?;
        found.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // SCAN may return a key more than once.
    found.sort_unstable();
    found.dedup();
    Ok(found)
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

fn check_text(what: &str, text: &str) -> Result<()> {
    if text.len() > MAX_TEXT_LEN {
        return Err(Error::InvalidInput(format!(
            "{what} is {} bytes; the limit is {MAX_TEXT_LEN}",
            text.len()
        )));
    }
    Ok(())
}

fn encode_json<T: Serialize>(what: &'static str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Decode {
        key: format!("(encoding {what})"),
        what,
        source,
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(key: &str, what: &'static str, raw: &str) -> Result<T> {
    if raw.len() > crate::model::MAX_DOCUMENT_BYTES {
        return Err(Error::InvalidInput(format!(
            "{key}: {what} is {} bytes; the limit is {}",
            raw.len(),
            crate::model::MAX_DOCUMENT_BYTES
        )));
    }
    serde_json::from_str(raw).map_err(|source| Error::Decode {
        key: key.to_owned(),
        what,
        source,
    })
}

fn decode_history(key: &str, entry: redis::streams::StreamId) -> Result<HistoryEntry> {
    history_entry(key, &entry.id, |field| entry.get::<String>(field))
}

/// A history stream entry from its id and a lookup of its fields (text), with errors naming
/// the stream, the entry and the field.
pub(crate) fn history_entry(key: &str, id: &str, field: impl Fn(&str) -> Option<String>) -> Result<HistoryEntry> {
    let text = |name: &str| -> Result<String> {
        field(name).ok_or_else(|| Error::InvalidInput(format!("{key} entry {id}: missing or non-text field {name:?}")))
    };
    let number = |name: &str| -> Result<i64> {
        let raw = text(name)?;
        raw.parse()
            .map_err(|_| Error::InvalidInput(format!("{key} entry {id}: field {name:?} is {raw:?}, not an integer")))
    };
    Ok(HistoryEntry {
        stroke_idx: number("stroke_idx")?,
        pose_idx: number("pose_idx")?,
        description_l: text("description_l")?,
        description_r: text("description_r")?,
        node_id: text("node_id")?,
        id: id.to_owned(),
    })
}

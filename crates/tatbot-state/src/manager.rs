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
//! not decode (wrong type, over the size bound, not JSON, a key whose id is invalid) is reported
//! per entry, naming its key, and never fails a whole listing; the rules are `decode.rs`'s, which
//! every read path shares.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Value as RedisValue};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;
use crate::connection::{self, ManagerConfig};
use crate::decode;
use crate::direct::{self, Direct};
use crate::error::{Error, Result};
use crate::fastpath::DocCache;
use crate::follow::io::{
    Direction, Oversized, find_oversized, key_entry, oversized_collection, oversized_logs, read_fields, read_log_pages,
};
use crate::ids::{Category, EntryId, NodeId, SessionId};
use crate::keys;
use crate::model::{
    ErrorEvent, Event, HistoryCursor, HistoryEntry, KnownNode, NodeHealth, ProgressUpdate, RobotState, SessionPlan,
    SessionState, StrokeProgress,
};
use crate::ops::{Op, RunState, encode_json, health_op, robot_state_op};
use crate::scripts;
use crate::sentinel::{self, Locator};
use crate::subscribe::Subscription;
use crate::timestamp::Timestamp;

/// Longest description, scene name or error message we store (bytes).
pub const MAX_TEXT_LEN: usize = 4096;
/// Keys per `SCAN` step and per pipelined read batch.
const SCAN_BATCH: usize = 1000;
/// How long a per-second session counter lives; far longer than any clock step between nodes.
const SESSION_SEQ_TTL_SECS: u64 = 120;
/// First delay of [`StateManager::connect_waiting`].
pub const WAIT_FIRST_RETRY: Duration = Duration::from_millis(250);
/// Cap on the delay of [`StateManager::connect_waiting`].
pub const WAIT_MAX_RETRY: Duration = Duration::from_secs(8);
/// Sessions a manager remembers having started, for producers that must re-create one.
/// How long a `session_stale` claim lasts when nobody ends the session (30 days): a session
/// left stale that long may be announced again. Ending or aborting it shortens the claim to the
/// session's retention.
const STALE_CLAIM_TTL_SECS: u64 = 30 * 24 * 3600;
const MAX_STARTED: usize = 16;

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

/// One value looked up by name, in the order asked ([`StateManager::get_nodes_health`],
/// [`crate::Params::get_many`]): found and decoded, absent, or present but undecodable.
#[derive(Debug)]
pub enum Lookup<T> {
    /// The value is stored and decoded.
    Found(T),
    /// Nothing is stored under the name (never written, or expired).
    Missing,
    /// Something is stored but does not decode; the error names the key.
    Corrupt(Error),
}

impl<T> Lookup<T> {
    /// The value, `None` when missing, or the decode error.
    ///
    /// # Errors
    ///
    /// The [`Lookup::Corrupt`] error.
    pub fn into_result(self) -> Result<Option<T>> {
        match self {
            Lookup::Found(value) => Ok(Some(value)),
            Lookup::Missing => Ok(None),
            Lookup::Corrupt(err) => Err(err),
        }
    }

    /// The value when it was found and decoded.
    pub fn found(&self) -> Option<&T> {
        match self {
            Lookup::Found(value) => Some(value),
            Lookup::Missing | Lookup::Corrupt(_) => None,
        }
    }
}

impl<T> From<Result<Option<T>>> for Lookup<T> {
    fn from(read: Result<Option<T>>) -> Lookup<T> {
        match read {
            Ok(Some(value)) => Lookup::Found(value),
            Ok(None) => Lookup::Missing,
            Err(err) => Lookup::Corrupt(err),
        }
    }
}

/// A value that did not decode, as reported by [`StateManager::system_status`] and the follow
/// API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// Sessions executing now (started, not ended, not paused, owner's lease alive).
    pub active_sessions: usize,
    /// Sessions paused now (owner's lease alive).
    pub paused_sessions: usize,
    /// Sessions that claim to run but whose owner's lease lapsed (its robot died or lost
    /// Redis); counted apart from executing and paused ones.
    pub stale_sessions: usize,
    /// Sessions stored (executing, paused or ended within the retention).
    pub total_sessions: usize,
    /// Nodes with a live heartbeat.
    pub nodes_online: usize,
    /// Nodes ever seen (heartbeat registry plus live heartbeats).
    pub nodes_known: usize,
    /// Producer updates dropped because a producer's queue was full, over the producers that
    /// reported in the last week and are still running or kept their record (`tatbot:producers`:
    /// a producer that stops with nothing dropped, refused or restored takes its record out).
    pub dropped_updates: u64,
    /// Producer writes Redis refused (unknown session, corrupt document, permission), over the
    /// same producers.
    pub rejected_updates: u64,
    /// Sessions producers re-created after Redis lost them (a restart without their data).
    pub restored_sessions: u64,
    /// Producers that reported their counters in the last minute (a producer that stopped
    /// cleanly has taken its record out).
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

/// How long after a failed attempt to open the direct connection awaited calls use only the
/// shared one.
const DIRECT_RETRY: Duration = Duration::from_secs(1);

struct Inner {
    config: ManagerConfig,
    /// Finds the master for every (re)connect: the fixed endpoint, or through Sentinel.
    locator: Locator,
    /// Settings for (re)making the shared connection.
    manager_config: ConnectionManagerConfig,
    /// The shared multiplexed connection and the client it was made from. The driver reconnects
    /// it after a reset, but always to the same address, and not after a timeout, which is what
    /// a half-open connection (peer silent, no reset) produces; so on a timeout, and with
    /// Sentinel on any sign that the master moved, we swap in a fresh lazy connection here (to
    /// the master the Sentinels name now). The lock is held only to clone or swap.
    connection: RwLock<(redis::Client, ConnectionManager)>,
    /// Set while a task looks the master up again, so a burst of failing calls starts one.
    relocating: AtomicBool,
    /// Counts the master switches the Sentinels announced; the producer's writer and other
    /// long-lived connections watch it to move at once. Receivers live in those tasks.
    switches: watch::Sender<u64>,
    /// The count of [`Inner::switches`] when the shared connection's master was last looked up
    /// successfully: a write finds the connection behind an announcement when this is lower.
    located_at: AtomicU64,
    /// The old master's address in the last `+switch-master` announcement: a lookup that still
    /// finds the master there was answered by a Sentinel that has not heard of the switch.
    switched_from: Mutex<Option<(String, u16)>>,
    /// Stops the `+switch-master` listener when the last clone of the manager goes.
    _switch_watch: Option<DropGuard>,
    /// The progress documents this manager last stored, for the update's fast path.
    docs: Mutex<DocCache>,
    /// The connection awaited updates take when no other call holds it: read and written by
    /// the awaiting task, one thread hop fewer each way than the shared connection
    /// ([`crate::direct`]). It remembers the address it was opened to, and is dropped when the
    /// shared connection moves elsewhere.
    direct: tokio::sync::Mutex<Option<((String, u16), Direct)>>,
    /// When opening the direct connection last failed: for [`DIRECT_RETRY`] after it, awaited
    /// calls go straight to the shared connection instead of waiting for a second connect
    /// that would fail the same way.
    direct_failed: Mutex<Option<Instant>>,
    /// The sessions this manager started last, oldest first: what a producer needs to
    /// re-create one that a Redis restart lost.
    started: Mutex<VecDeque<StartedSession>>,
    /// This manager's instance id (random per process), written as `owner_instance` into the
    /// sessions it starts: only this instance renews their leases.
    instance: String,
}

/// The host and port a client connects to over plain TCP.
fn tcp_address(client: &redis::Client) -> Option<(String, u16)> {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => Some((host.clone(), *port)),
        _ => None,
    }
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
        let locator = Locator::new(&config);
        let client = locator.client().await?;
        let manager_config = connection::manager_config(&config);
        let connection = connection::connect(&config, &locator.current(), &client, &manager_config).await?;
        let manager = StateManager::from_parts(config, locator, client, manager_config, connection);
        tracing::info!(target = %manager.inner.locator.current(), node_id = %manager.inner.config.node_id, "connected to redis");
        Ok(manager)
    }

    /// Connects as node `node_id` to the Redis the configuration names, resolved as the CLI
    /// does ([`ManagerConfig::from_env`]).
    ///
    /// # Errors
    ///
    /// An invalid node id, a bad configuration, or as [`StateManager::connect`].
    pub async fn connect_default(node_id: &str) -> Result<StateManager> {
        StateManager::connect(ManagerConfig::from_env(NodeId::new(node_id)?)?).await
    }

    /// Connects, waiting as long as it takes for an unreachable server to come up (a fleet boots
    /// in any order), with a capped backoff of [`WAIT_FIRST_RETRY`] doubling to
    /// [`WAIT_MAX_RETRY`]. Each wait is logged at `warn` ("waiting for Redis at HOST:PORT: why;
    /// retry in N s") while the delay grows or the reason changes.
    ///
    /// # Errors
    ///
    /// [`Error::Auth`] (and any other error that waiting cannot cure) at once; the last
    /// connection error when `shutdown` fires first.
    pub async fn connect_waiting(config: ManagerConfig, shutdown: &CancellationToken) -> Result<StateManager> {
        let target = Locator::new(&config).describe();
        let mut backoff = Backoff::new(WAIT_FIRST_RETRY, WAIT_MAX_RETRY);
        let mut said: Option<(String, Duration)> = None;
        loop {
            let err = match StateManager::connect(config.clone()).await {
                Ok(manager) => {
                    if said.is_some() {
                        tracing::info!(target = %target, "redis is up");
                    }
                    return Ok(manager);
                }
                Err(err) if err.is_connection_error() => err,
                Err(err) => return Err(err),
            };
            let reason = match &err {
                Error::Unreachable { source, .. } => source.to_string(),
                Error::Timeout { after, .. } => format!("no answer within {after:?}"),
                other => other.to_string(),
            };
            let delay = backoff.next_delay();
            if said.as_ref() != Some(&(reason.clone(), delay)) {
                tracing::warn!("waiting for Redis at {target}: {reason}; retry in {}", humane(delay));
                said = Some((reason, delay));
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(err),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Makes a manager without touching the network; it connects on first use. Calls fail
    /// while Redis is unreachable and work once it is up, so a producer can start before Redis.
    ///
    /// # Errors
    ///
    /// Only an endpoint the driver cannot represent.
    ///
    /// With a Sentinel target, the first connection is tried at [`ManagerConfig::endpoint`]'s
    /// address and the master is looked up at once when a runtime is running (else on the
    /// first failing call).
    pub fn connect_lazy(config: ManagerConfig) -> Result<StateManager> {
        let locator = Locator::new(&config);
        let target = config.endpoint.to_string();
        let client =
            redis::Client::open(config.endpoint.connection_info()?).map_err(|err| Error::from_connect(&target, err))?;
        let manager_config = connection::manager_config(&config);
        let connection = connection::lazy(&client, &manager_config)?;
        let manager = StateManager::from_parts(config, locator, client, manager_config, connection);
        if manager.inner.locator.sentinel().is_some() {
            manager.relocate();
        }
        Ok(manager)
    }

    fn from_parts(
        config: ManagerConfig,
        locator: Locator,
        client: redis::Client,
        manager_config: ConnectionManagerConfig,
        connection: ConnectionManager,
    ) -> StateManager {
        let (switches, _) = watch::channel(0);
        let switch_shutdown = CancellationToken::new();
        let listen = locator
            .sentinel()
            .cloned()
            .zip(tokio::runtime::Handle::try_current().ok());
        let _switch_watch = listen.is_some().then(|| switch_shutdown.clone().drop_guard());
        let manager = StateManager {
            inner: Arc::new(Inner {
                config,
                locator,
                manager_config,
                connection: RwLock::new((client, connection)),
                relocating: AtomicBool::new(false),
                switches,
                located_at: AtomicU64::new(0),
                switched_from: Mutex::new(None),
                _switch_watch,
                docs: Mutex::new(DocCache::default()),
                direct: tokio::sync::Mutex::new(None),
                direct_failed: Mutex::new(None),
                started: Mutex::default(),
                instance: format!("{:08x}", crate::producer::rand_u32()),
            }),
        };
        if let Some((target, runtime)) = listen {
            // The listener holds only a weak reference, so it never keeps the manager alive;
            // the drop guard above stops it with the last clone.
            let weak = Arc::downgrade(&manager.inner);
            let on_switch = move |old: Option<(String, u16)>| {
                if let Some(inner) = weak.upgrade() {
                    *inner.switched_from.lock().unwrap_or_else(PoisonError::into_inner) = old;
                    inner.switches.send_modify(|count| *count += 1);
                    StateManager { inner }.relocate();
                }
            };
            runtime.spawn(sentinel::watch_switches(target, on_switch, switch_shutdown));
        }
        manager
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.config.node_id
    }

    /// The configuration the manager runs with.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// Finds the master, for components that open connections of their own: ask it for a
    /// client on every (re)connect.
    pub(crate) fn locator(&self) -> &Locator {
        &self.inner.locator
    }

    /// A receiver that changes each time a Sentinel announces a new master (never without
    /// Sentinel).
    pub(crate) fn switches(&self) -> watch::Receiver<u64> {
        self.inner.switches.subscribe()
    }

    /// The Redis server in use: the fixed endpoint, or the master last found through Sentinel.
    pub fn current_master(&self) -> crate::connection::Endpoint {
        self.inner.locator.current()
    }

    pub(crate) fn connection(&self) -> crate::connection::Shared {
        // A poisoned lock only means a panic elsewhere while cloning or swapping; the
        // connection inside is still valid.
        crate::connection::Shared(
            self.inner
                .connection
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .1
                .clone(),
        )
    }

    /// Replaces the shared connection with a fresh one (made from `client`) that connects on
    /// next use; false when none could be made (the old one stays).
    fn replace_connection(inner: &Inner, client: redis::Client) -> bool {
        match connection::lazy(&client, &inner.manager_config) {
            Ok(fresh) => {
                *inner.connection.write().unwrap_or_else(PoisonError::into_inner) = (client, fresh);
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot replace the redis connection");
                false
            }
        }
    }

    /// The client the shared connection was made from.
    fn client(inner: &Inner) -> redis::Client {
        inner
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Swaps in a fresh connection: without Sentinel at once, to the same server; with it, in
    /// a task that looks the master up first (one task at a time; without a runtime, at once to
    /// the same server).
    fn relocate(&self) {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (Some(_), Some(runtime)) = (self.inner.locator.sentinel(), runtime) else {
            StateManager::replace_connection(&self.inner, StateManager::client(&self.inner));
            tracing::warn!(target = %self.inner.locator.current(), "redis did not answer in time; replaced the connection");
            return;
        };
        if self.inner.relocating.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        runtime.spawn(async move {
            loop {
                let announced = *inner.switches.borrow();
                // A failed lookup (mid-failover) still replaces the connection, which a timeout
                // may have left half-open; the next failing call or switch looks again.
                let (client, located) = match inner.locator.client().await {
                    Ok(client) => {
                        let from = inner
                            .switched_from
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone();
                        let stale = from.is_some() && tcp_address(&client) == from;
                        (client, !stale)
                    }
                    Err(err) => {
                        tracing::debug!(error = %err.report(), "cannot locate the redis master yet");
                        (StateManager::client(&inner), false)
                    }
                };
                if StateManager::replace_connection(&inner, client) && located {
                    inner.located_at.fetch_max(announced, Ordering::AcqRel);
                }
                // A switch announced during the lookup found this task running: look again.
                if !located || *inner.switches.borrow() == announced {
                    break;
                }
            }
            inner.relocating.store(false, Ordering::Release);
        });
    }

    pub(crate) fn redis_error(&self, operation: &'static str, err: redis::RedisError) -> Error {
        if self.inner.locator.sentinel().is_some() && sentinel::is_failover_signal(&err) && !err.is_timeout() {
            self.relocate();
        }
        match Error::from_redis(operation, err) {
            Error::Timeout { operation, .. } => {
                self.relocate();
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
    pub async fn start_stroke_session(&self, plan: &SessionPlan) -> Result<SessionId> {
        let SessionPlan {
            total_strokes,
            stroke_length,
            scene: scene_name,
        } = plan;
        let (total_strokes, stroke_length, scene_name) = (*total_strokes, *stroke_length, scene_name.as_str());
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
        // In the order the scripts re-encode unknown fields (sorted), so the fast path's copy
        // of the document matches what Redis stores.
        progress.extra.insert(
            "lease_secs".into(),
            json!(self.inner.config.session_lease.as_secs().max(1)),
        );
        progress
            .extra
            .insert("owner_instance".into(), json!(self.inner.instance));
        progress.extra.insert("owner_node_id".into(), json!(node_id));
        let base = keys::session_base(node_id, now.as_datetime().timestamp());
        let document = encode_json("progress", &progress)?;
        let stored = document.clone();
        let mut start = scripts::START.prepare_invoke();
        start
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
            .arg(SESSION_SEQ_TTL_SECS);
        let session_id: String = self.invoke_acknowledged("start_stroke_session", &start).await?;
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
    /// description longer than [`MAX_TEXT_LEN`], a Redis failure, or
    /// [`Error::UnexpectedReply`] when Redis answers without an entry id.
    pub async fn update_stroke_progress(&self, session_id: &SessionId, update: &ProgressUpdate) -> Result<EntryId> {
        let op = self.progress_op(session_id, update.clone())?;
        let reply = self.apply(&op, "update_stroke_progress").await?;
        let Some(id) = self.docs().observe(session_id, reply) else {
            return Err(Error::UnexpectedReply {
                operation: "update_stroke_progress",
                detail: "no history entry id".to_owned(),
            });
        };
        id.parse().map_err(|_| Error::UnexpectedReply {
            operation: "update_stroke_progress",
            detail: format!("{id:?} is not a stream entry id"),
        })
    }

    /// The cache of stored progress documents; a poisoned lock only means a panic elsewhere
    /// while the cache, a hint, was being changed.
    fn docs(&self) -> std::sync::MutexGuard<'_, DocCache> {
        self.inner.docs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The op for a progress update, stamped now.
    pub(crate) fn progress_op(&self, session_id: &SessionId, update: ProgressUpdate) -> Result<Op> {
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
            update,
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
            RunState::End | RunState::Abort => {
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

    /// Awaits a write's answer. Under Sentinel a success counts only when the write went out
    /// on a connection to the master looked up after the last `+switch-master` announcement
    /// this manager heard (it listens to one Sentinel), and no announcement came before the
    /// answer: an old master frozen past a failover still answers when it wakes, and what it
    /// wrote is lost when the Sentinels make it a replica ([`Error::MasterSwitched`]). An error
    /// reply is reported as such: nothing was written. `write` is not polled, so nothing is
    /// sent (and no connection taken), before the check. Without Sentinel nothing is announced
    /// and the checks always pass.
    pub(crate) async fn acknowledged<T>(
        &self,
        operation: &'static str,
        write: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let mark = self.switch_mark(operation)?;
        let answer = write.await.map_err(|err| self.redis_error(operation, err))?;
        self.no_switch_since(mark, operation)?;
        Ok(answer)
    }

    /// The error of a read of `key`, which should hold `kind` ("stream", "sorted set"):
    /// [`Error::wrong_type`] when another client stored another type there, else the Redis
    /// failure of `operation`.
    fn shared_read_error(&self, operation: &'static str, err: redis::RedisError, key: &str, kind: &str) -> Error {
        if decode::is_wrong_type(&err) {
            Error::wrong_type(key, kind)
        } else {
            self.redis_error(operation, err)
        }
    }

    /// Runs a write script on the shared connection, acknowledged as
    /// [`StateManager::acknowledged`] says.
    async fn invoke_acknowledged<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.acknowledged(operation, async {
            invocation.invoke_async(&mut self.connection()).await
        })
        .await
    }

    /// Before a write goes out (see [`StateManager::acknowledged`]): the announcements so far, or
    /// [`Error::MasterSwitched`] when the shared connection has not moved past the last one.
    pub(crate) fn switch_mark(&self, operation: &'static str) -> Result<u64> {
        let announced = *self.inner.switches.borrow();
        if self.inner.located_at.load(Ordering::Acquire) < announced {
            // The move is under way (or its lookup failed mid-failover: this starts another).
            self.relocate();
            return Err(Error::MasterSwitched { operation, sent: false });
        }
        Ok(announced)
    }

    /// After a write's answer came (see [`StateManager::acknowledged`]): [`Error::MasterSwitched`]
    /// when a new master was announced since `mark`.
    pub(crate) fn no_switch_since(&self, mark: u64, operation: &'static str) -> Result<()> {
        if *self.inner.switches.borrow() == mark {
            Ok(())
        } else {
            Err(Error::MasterSwitched { operation, sent: true })
        }
    }

    /// Runs one op now (no writer revision) and returns the script's answer.
    async fn apply(&self, op: &Op, operation: &'static str) -> Result<redis::Value> {
        let fast = op.plan(&mut self.docs(), self.node_id());
        let invocation = op.invocation(&self.inner.config, "", 0, fast.as_ref());
        let write = async {
            match self.apply_direct(&invocation).await {
                Some(reply) => reply,
                None => invocation.invoke_async(&mut self.connection()).await,
            }
        };
        let reply = self.acknowledged(operation, write).await;
        if reply.is_err()
            && let Some(session_id) = op.session()
        {
            self.docs().forget(session_id);
        }
        reply
    }

    /// Runs `invocation` on the direct connection, opened if needed. `None` leaves the call to
    /// the shared connection: another call holds the direct one, it cannot be opened (the
    /// shared connection then reports why, and reconnects as it does), or the server does not
    /// have the script yet (the shared path loads it).
    async fn apply_direct(&self, invocation: &redis::ScriptInvocation<'_>) -> Option<redis::RedisResult<RedisValue>> {
        let mut slot = self.inner.direct.try_lock().ok()?;
        let client = StateManager::client(&self.inner);
        let address = tcp_address(&client)?;
        // A connection to a server no longer in use (Sentinel named another), one owing answers
        // to an abandoned call, or one the server closed while it was idle, goes.
        if slot
            .as_ref()
            .is_some_and(|(opened_to, direct)| *opened_to != address || !direct.is_clean())
        {
            *slot = None;
        }
        if slot.is_none() {
            let failed_lately = self
                .inner
                .direct_failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|at| at.elapsed() < DIRECT_RETRY);
            if failed_lately {
                return None;
            }
            match Direct::connect(&client, self.inner.config.connect_timeout).await {
                Ok(direct) => *slot = Some((address, direct?)),
                Err(_) => {
                    *self.inner.direct_failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    return None;
                }
            }
        }
        let (_, direct) = slot.as_mut()?;
        let packed = redis::Cmd::invoke_script(invocation).get_packed_command();
        let config = &self.inner.config;
        let answer = tokio::time::timeout(
            config.response_timeout,
            direct.query_spinning(&packed, 1, config.reply_spin),
        )
        .await;
        let answer = match answer {
            Ok(Ok(mut answers)) => answers
                .pop()
                .map_or_else(|| Err(direct::timed_out("script")), RedisValue::extract_error),
            Ok(Err(err)) => {
                *slot = None;
                Err(err)
            }
            Err(_) => {
                *slot = None;
                Err(direct::timed_out("script"))
            }
        };
        match answer {
            Err(err) if err.code() == Some("NOSCRIPT") => None,
            answer => Some(answer),
        }
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

    /// Aborts a session on an operator's word (its robot died, or must not go on): ends it with
    /// `aborted: true` and `abort_reason` in its document, publishes `session_abort` with the
    /// reason, and lets it expire after the retention like an ended session.
    ///
    /// # Errors
    ///
    /// As [`StateManager::update_stroke_progress`]; a reason over [`MAX_TEXT_LEN`].
    pub async fn abort_stroke_session(&self, session_id: &SessionId, reason: &str) -> Result<()> {
        check_text("abort reason", reason)?;
        let mut op = self.run_state_op(session_id, RunState::Abort);
        if let Op::RunState { patch, .. } = &mut op {
            patch.insert("aborted".into(), true.into());
            patch.insert("abort_reason".into(), reason.into());
        }
        self.apply(&op, "abort_stroke_session").await?;
        self.forget_started(session_id);
        Ok(())
    }

    /// Renews the lease of every session this manager started that still executes (see
    /// [`crate::model::SessionState::Stale`]); the heartbeat calls it. Returns how many were
    /// renewed.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn renew_session_leases(&self) -> Result<usize> {
        let now = Timestamp::now().to_string();
        let mut renewed = 0;
        for started in self.started_sessions() {
            let mut renew = scripts::RENEW.prepare_invoke();
            renew
                .key(keys::progress(&started.session_id))
                .arg(&self.inner.instance)
                .arg(&now);
            let done: i64 = self.invoke_acknowledged("renew_session_leases", &renew).await?;
            if done == 1 {
                // The stored document changed under the fast path's copy.
                self.docs().forget(&started.session_id);
                renewed += 1;
            }
        }
        Ok(renewed)
    }

    /// Announces each stale session among `sessions` with one `session_stale` event, exactly
    /// once per session whichever watcher calls this first: the claim (`SET NX` on
    /// [`keys::stale_claim`]) and the event are one atomic step, made only while the document is
    /// still the one judged stale. Returns the sessions this call announced.
    ///
    /// # Errors
    ///
    /// A Redis failure, or [`Error::PermissionDenied`] for a user that may not write (a viewer
    /// only watches; another watcher announces).
    pub async fn announce_stale_sessions(&self, sessions: &[(SessionId, StrokeProgress)]) -> Result<Vec<SessionId>> {
        let now = Timestamp::now();
        let mut announced = Vec::new();
        for (session_id, progress) in sessions {
            if progress.state_at(now) != crate::model::SessionState::Stale {
                continue;
            }
            let renewed = progress
                .extra
                .get("lease_renewed")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let age_secs = progress.age_secs_at(now);
            let event = json!({
                "type": crate::model::event_types::SESSION_STALE,
                "session_id": session_id,
                "node_id": progress.node_id,
                "owner": progress.owner(),
                "last_update": progress.timestamp,
                "age_secs": age_secs,
                "lease_secs": progress.lease().as_secs(),
                "timestamp": now,
            });
            let mut stale = scripts::STALE.prepare_invoke();
            stale
                .key(keys::progress(session_id))
                .key(keys::stale_claim(session_id))
                .key(keys::EVENT_LOG)
                .arg(progress.timestamp.to_string())
                .arg(renewed)
                .arg(event.to_string())
                .arg(STALE_CLAIM_TTL_SECS)
                .arg(self.inner.config.event_log_maxlen)
                .arg(keys::SESSION_EVENTS);
            let done: i64 = self.invoke_acknowledged("announce_stale_sessions", &stale).await?;
            if done == 1 {
                tracing::warn!(session_id = %session_id, age_secs, "session is stale: its owner's lease lapsed");
                announced.push(session_id.clone());
            }
        }
        Ok(announced)
    }

    /// One session's progress, or `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the key when the stored value is not a StrokeProgress.
    pub async fn get_stroke_progress(&self, session_id: &SessionId) -> Result<Option<StrokeProgress>> {
        let key = keys::progress(session_id);
        let raw = self
            .read_field(&key, keys::FIELD_PROGRESS, "get_stroke_progress")
            .await?;
        raw.map(|raw| decode::document(&key, "StrokeProgress", &raw))
            .transpose()
    }

    /// Every stored session (ours and the Python nodes'), each decoded or with its error.
    ///
    /// # Errors
    ///
    /// A Redis failure; a bad value is reported in its [`Entry`].
    pub async fn list_sessions(&self) -> Result<Vec<Entry<StrokeProgress>>> {
        let found = self.scan(keys::PROGRESS_PATTERN).await?;
        self.read_documents(
            found,
            keys::PROGRESS_PREFIX,
            keys::FIELD_PROGRESS,
            ("StrokeProgress", "session id"),
        )
        .await
    }

    /// The most recently written session that is executing or paused with its owner alive, from
    /// any node; sessions whose
    /// document holds values outside their domain ([`StrokeProgress::problem`]) are left out.
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
            // A document with values outside their domain (a timestamp far in the future
            // would always win) is not a candidate.
            // A stale session (its robot died) is not active either.
            .filter(|info| info.progress.state().is_live() && info.progress.problem().is_none())
            .max_by_key(|info| info.progress.timestamp))
    }

    /// Up to `count` history entries of a session, oldest first, from where `from` says.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the stream and entry when an entry lacks a field, holds a
    /// non-integer index or a field over the size bound, or a Redis failure. To read past bad
    /// entries, use [`StateManager::history_entries`].
    pub async fn get_history(
        &self,
        session_id: &SessionId,
        from: &HistoryCursor,
        count: usize,
    ) -> Result<Vec<HistoryEntry>> {
        self.history_entries(session_id, from, count)
            .await?
            .into_iter()
            .map(|entry| entry.value)
            .collect()
    }

    /// Up to `count` history entries of a session, oldest first, from where `from` says, each
    /// decoded or with the reason it did not decode; the
    /// [`Entry::id`] is the stream entry id, so a reader pages on past a bad entry.
    ///
    /// A history that takes more than 32 MiB in Redis (only another client's entries make it
    /// so; asked first, with `MEMORY USAGE`) is read one entry per round trip up to 32 MiB; an
    /// entry with the error saying so, named after the last entry read, comes last, and a reader
    /// paging on from it reads the rest.
    ///
    /// # Errors
    ///
    /// A Redis failure, or [`Error::Corrupt`] when the history key is not a stream; a bad entry
    /// is reported in its [`Entry`].
    pub async fn history_entries(
        &self,
        session_id: &SessionId,
        from: &HistoryCursor,
        count: usize,
    ) -> Result<Vec<Entry<HistoryEntry>>> {
        let key = keys::history(session_id);
        let start = match from {
            HistoryCursor::Start => "-".to_owned(),
            HistoryCursor::After(id) => format!("({id}"),
        };
        let (reply, cut) = self
            .read_log("get_history", &key, Direction::Forward, start, count)
            .await?;
        let mut entries: Vec<Entry<HistoryEntry>> = reply
            .ids
            .into_iter()
            .map(|entry| Entry {
                value: decode::history_entry(&key, &entry.id, |field| entry.get::<String>(field)),
                id: entry.id,
                key: key.clone(),
            })
            .collect();
        push_cut(&mut entries, &key, cut);
        Ok(entries)
    }

    /// Up to `count` entries of the log `key` from `start` in `direction`: one read when the log
    /// takes at most [`MAX_LOG_READ_BYTES`] in Redis, asked first, else one entry per round trip
    /// within that bound (see [`read_log_pages`]), with the report of a read that stopped there.
    async fn read_log(
        &self,
        operation: &'static str,
        key: &str,
        direction: Direction,
        start: String,
        count: usize,
    ) -> Result<(redis::streams::StreamRangeReply, Option<Error>)> {
        let mut connection = self.connection();
        let sizes = oversized_logs(&mut connection, &[key])
            .await
            .map_err(|err| self.redis_error(operation, err))?;
        let read_error = |err: redis::RedisError| self.shared_read_error(operation, err, key, "stream");
        let Some(size) = sizes.get(key) else {
            let reply = direction
                .read(key, &start, count)
                .query_async(&mut connection)
                .await
                .map_err(read_error)?;
            return Ok((reply, None));
        };
        let pages = read_log_pages(&mut connection, key, direction, start, count, 0, |_| false)
            .await
            .map_err(read_error)?;
        let reply: redis::streams::StreamRangeReply =
            redis::from_redis_value_ref(&pages.entries).map_err(|err| read_error(err.into()))?;
        let cut = pages.cut_detail(*size, 0).map(|detail| Error::Corrupt {
            key: key.to_owned(),
            detail,
        });
        Ok((reply, cut))
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
        let raw = self.read_field(&key, keys::FIELD_STATE, "get_robot_state").await?;
        raw.map(|raw| decode::document(&key, "RobotState", &raw)).transpose()
    }

    /// Every stored robot state (ours and the Python nodes'), each decoded or with its error.
    ///
    /// # Errors
    ///
    /// A Redis failure; a bad value is reported in its [`Entry`].
    pub async fn get_all_robot_states(&self) -> Result<Vec<Entry<RobotState>>> {
        let found = self.scan(keys::ROBOT_STATE_PATTERN).await?;
        self.read_documents(
            found,
            keys::ROBOT_STATE_PREFIX,
            keys::FIELD_STATE,
            ("RobotState", "node id"),
        )
        .await
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

    /// Deletes this manager's own heartbeat, so that its node shows offline at once instead of
    /// when the TTL runs out; the node registry keeps it as a known node. A heartbeat agent
    /// that stops on purpose calls this; one that is killed still expires by TTL.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn remove_node_health(&self) -> Result<()> {
        let key = keys::health(self.node_id());
        let _: i64 = self
            .acknowledged("remove_node_health", async { self.connection().del(&key).await })
            .await?;
        Ok(())
    }

    /// One node's last heartbeat, or `None` when it has expired or never came.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the key, or a Redis failure.
    pub async fn get_node_health(&self, node_id: &NodeId) -> Result<Option<NodeHealth>> {
        let mut healths = self.get_nodes_health(std::slice::from_ref(node_id)).await?;
        healths.pop().map_or(Ok(None), Lookup::into_result)
    }

    /// Several nodes' heartbeats, in the order asked: their lengths, then those within the size
    /// bound (two round trips).
    ///
    /// # Errors
    ///
    /// A Redis failure; a bad value is reported in its [`Lookup`].
    pub async fn get_nodes_health(&self, node_ids: &[NodeId]) -> Result<Vec<Lookup<NodeHealth>>> {
        let fields: Vec<(String, &'static str)> = node_ids
            .iter()
            .map(|node_id| (keys::health(node_id), keys::FIELD_HEALTH))
            .collect();
        // Values over the size bound are not read (see `read_field`); a key of the wrong type
        // (WRONGTYPE) is that slot's error, not the call's.
        let (oversized, replies) = read_fields(&mut self.connection(), &fields)
            .await
            .map_err(|err| self.redis_error("get_nodes_health", err))?;
        Ok(fields
            .iter()
            .zip(replies)
            .map(|((key, _), reply)| {
                oversized
                    .field_text(key, keys::FIELD_HEALTH, reply)
                    .map(|raw| raw.and_then(|raw| decode::document(key, "NodeHealth", &raw)))
                    .map_or(Lookup::Missing, |read| Lookup::from(read.map(Some)))
            })
            .collect())
    }

    /// Every live heartbeat (ours and the Python nodes'), each decoded or with its error.
    ///
    /// # Errors
    ///
    /// A Redis failure; a bad value is reported in its [`Entry`].
    pub async fn get_all_nodes_health(&self) -> Result<Vec<Entry<NodeHealth>>> {
        let found = self.scan(keys::HEALTH_PATTERN).await?;
        self.read_documents(
            found,
            keys::HEALTH_PREFIX,
            keys::FIELD_HEALTH,
            ("NodeHealth", "node id"),
        )
        .await
    }

    /// Nodes that ever sent a heartbeat through tatbot-state, with the time of the last one.
    ///
    /// # Errors
    ///
    /// A Redis failure, or [`Error::Corrupt`] when the registry's key holds another type, or
    /// more than 20,000 members, or takes more than 8 MiB in Redis (asked first, with `ZCARD`
    /// and `MEMORY USAGE`; such a registry is not read).
    pub async fn known_nodes(&self) -> Result<Vec<KnownNode>> {
        let mut connection = self.connection();
        if let Some(detail) = oversized_collection(&mut connection, keys::NODE_REGISTRY, "ZCARD")
            .await
            .map_err(|err| self.redis_error("known_nodes", err))?
        {
            return Err(Error::Corrupt {
                key: keys::NODE_REGISTRY.to_owned(),
                detail,
            });
        }
        // Bytes and any number: another client's member or score must not fail the whole read.
        let members: Vec<(Vec<u8>, f64)> = connection
            .zrange_withscores(keys::NODE_REGISTRY, 0, -1)
            .await
            .map_err(|err| self.shared_read_error("known_nodes", err, keys::NODE_REGISTRY, "sorted set"))?;
        Ok(members
            .into_iter()
            .map(|(node_id, score)| KnownNode {
                node_id: String::from_utf8_lossy(&node_id).into_owned(),
                // Scores are Unix milliseconds; another client's saturate (`as` does).
                last_heartbeat_ms: score as i64,
            })
            .collect())
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
            return Err(Error::TooLarge {
                what: "event".to_owned(),
                len: payload.len(),
                limit: crate::model::MAX_DOCUMENT_BYTES,
            });
        }
        let mut publish = scripts::PUBLISH.prepare_invoke();
        publish
            .key(keys::EVENT_LOG)
            .arg(channel)
            .arg(&payload)
            .arg(self.inner.config.event_log_maxlen);
        self.invoke_acknowledged("publish_event", &publish).await
    }

    /// Subscribes to channel patterns (`PSUBSCRIBE`) on a dedicated connection.
    ///
    /// # Errors
    ///
    /// No pattern was given ([`Error::InvalidInput`]), or the connection could not be opened.
    pub async fn subscribe(&self, patterns: &[&str]) -> Result<Subscription> {
        Subscription::open(&self.inner.locator, &self.inner.config, patterns).await
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

    /// The newest `count` stored errors, newest first; an error log over 32 MiB in Redis is read
    /// within that bound, as [`StateManager::history_entries`] reads a history.
    ///
    /// # Errors
    ///
    /// A Redis failure; a bad entry is reported in its [`Entry`].
    pub async fn list_errors(&self, count: usize) -> Result<Vec<Entry<ErrorEvent>>> {
        let (reply, cut) = self
            .read_log(
                "list_errors",
                keys::ERROR_LOG,
                Direction::Backward,
                "+".to_owned(),
                count,
            )
            .await?;
        let mut entries: Vec<Entry<ErrorEvent>> = reply
            .ids
            .into_iter()
            .map(|entry| {
                let key = format!("{} entry {}", keys::ERROR_LOG, entry.id);
                let value = match entry.get::<String>("payload") {
                    None => Err(Error::Corrupt {
                        key: key.clone(),
                        detail: "no payload field".to_owned(),
                    }),
                    Some(payload) => match Event::from_json(payload.as_bytes()) {
                        Ok(Event::Error(event)) => Ok(event),
                        Ok(_) => Err(Error::Corrupt {
                            key: key.clone(),
                            detail: "payload is not an error event".to_owned(),
                        }),
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
            .collect();
        push_cut(&mut entries, keys::ERROR_LOG, cut);
        Ok(entries)
    }

    /// Deletes a session's progress and history. Returns whether anything was deleted.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn clear_session_data(&self, session_id: &SessionId) -> Result<bool> {
        self.docs().forget(session_id);
        self.forget_started(session_id);
        let mut clear = scripts::CLEAR.prepare_invoke();
        clear
            .key(keys::progress(session_id))
            .key(keys::history(session_id))
            .key(keys::SESSION_INDEX)
            .arg(session_id.as_str());
        let deleted: usize = self.invoke_acknowledged("clear_session_data", &clear).await?;
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
            stale_sessions: 0,
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
            status.error = Some(err.report().to_string());
        }
        status
    }

    async fn fill_status(&self, status: &mut SystemStatus) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO")
            .arg("server")
            .cmd("TYPE")
            .arg(keys::SESSION_INDEX)
            .cmd("XINFO")
            .arg("STREAM")
            .arg(keys::EVENT_LOG)
            .cmd("XINFO")
            .arg("STREAM")
            .arg(keys::ERROR_LOG)
            .ignore_errors();
        let replies: Vec<redis::RedisResult<redis::Value>> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(|err| self.redis_error("system_status", err))?;
        let mut replies = replies.into_iter();
        let mut text = || {
            replies
                .next()
                .and_then(redis::RedisResult::ok)
                .and_then(|value| redis::from_redis_value::<String>(value).ok())
        };
        let (info, index) = (text().unwrap_or_default(), text());
        let logs: Vec<_> = replies.collect();
        status.redis_connected = true;
        // Another client's value under a shared structure's key, or a log whose last possible
        // id another client used up: writes skip it (scripts.rs), readers report it.
        if index.is_some_and(|found| found != "zset" && found != "none") {
            status
                .corrupt
                .push(crate::follow::io::wrong_type(keys::SESSION_INDEX, "sorted set"));
        }
        for (key, reply) in [keys::EVENT_LOG, keys::ERROR_LOG].into_iter().zip(&logs) {
            status.corrupt.extend(crate::follow::io::broken_log(key, Some(reply)));
        }
        status.redis_version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .map(|version| version.trim().to_owned());

        let now = Timestamp::now();
        let mut stale = Vec::new();
        for entry in self.list_sessions().await? {
            status.total_sessions += 1;
            match entry.value {
                Ok(progress) => match progress.state_at(now) {
                    SessionState::Executing => status.active_sessions += 1,
                    SessionState::Paused => status.paused_sessions += 1,
                    SessionState::Stale => {
                        status.stale_sessions += 1;
                        if let Ok(session_id) = SessionId::new(entry.id) {
                            stale.push((session_id, progress));
                        }
                    }
                    SessionState::Ended | SessionState::Aborted => {}
                },
                Err(err) => status.corrupt.push(CorruptEntry {
                    key: entry.key,
                    error: err.report().to_string(),
                }),
            }
        }
        // Whoever looks first announces a stale session; a viewer may not, which is fine.
        if let Err(err) = self.announce_stale_sessions(&stale).await {
            tracing::debug!(error = %err, "cannot announce stale sessions");
        }
        let mut known: BTreeSet<String> = match self.known_nodes().await {
            Ok(nodes) => nodes.into_iter().map(|node| node.node_id).collect(),
            // Of another type or too large: the heartbeats still count.
            Err(Error::Corrupt { key, detail }) => {
                status.corrupt.push(key_entry(&key, &detail));
                BTreeSet::new()
            }
            Err(err) => return Err(err),
        };
        for entry in self.get_all_nodes_health().await? {
            status.nodes_online += 1;
            known.insert(entry.id);
            if let Err(err) = entry.value {
                status.corrupt.push(CorruptEntry {
                    key: entry.key,
                    error: err.report().to_string(),
                });
            }
        }
        status.nodes_known = known.len();
        let mut connection = self.connection();
        let oversized = oversized_collection(&mut connection, keys::PRODUCERS, "HLEN")
            .await
            .map_err(|err| self.redis_error("system_status", err))?;
        let producers: Vec<(Vec<u8>, Vec<u8>)> = match oversized {
            // Another client's: our producers' counters are not summed, and that is said.
            Some(detail) => {
                status.corrupt.push(key_entry(keys::PRODUCERS, &detail));
                Vec::new()
            }
            None => match connection.hgetall(keys::PRODUCERS).await {
                Ok(producers) => producers,
                Err(err) if decode::is_wrong_type(&err) => {
                    status
                        .corrupt
                        .push(crate::follow::io::wrong_type(keys::PRODUCERS, "hash"));
                    Vec::new()
                }
                Err(err) => return Err(self.redis_error("system_status", err)),
            },
        };
        let now = Timestamp::now().unix_millis();
        for (writer, record) in producers {
            let (writer, record) = (String::from_utf8_lossy(&writer), String::from_utf8_lossy(&record));
            let key = format!("{} field {writer}", keys::PRODUCERS);
            match decode::document::<Value>(&key, "producer stats", &record) {
                Ok(record) => {
                    // Hostile counters (`u64::MAX` from any writer) saturate rather than wrap.
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
                    error: err.report().to_string(),
                }),
            }
        }
        Ok(())
    }

    /// One hash field's text; a key of the wrong type, a value that is not a string or one
    /// over the size bound is [`Error::Corrupt`] naming the key.
    ///
    /// Its length comes first (`HSTRLEN`), and a value over the size bound is not read: a
    /// client asking every second would otherwise make Redis send another client's 50 MB value
    /// every second (see [`crate::follow::io::Oversized`]).
    async fn read_field(&self, key: &str, field: &'static str, operation: &'static str) -> Result<Option<String>> {
        let (oversized, mut replies) = read_fields(&mut self.connection(), &[(key.to_owned(), field)])
            .await
            .map_err(|err| self.redis_error(operation, err))?;
        match replies.pop() {
            Some(Err(err)) if !decode::is_wrong_type(&err) => Err(self.redis_error(operation, err)),
            Some(reply) => oversized.field_text(key, field, reply).transpose(),
            None => Ok(None),
        }
    }

    /// All keys matching `pattern`, by `SCAN` (never `KEYS`, which blocks the server).
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>> {
        scan_keys(&mut self.connection(), pattern, SCAN_BATCH)
            .await
            .map_err(|err| self.redis_error("scan", err))
    }

    /// Fetches `field` of each hash in pipelined batches and decodes it; a key whose suffix
    /// is not a valid `id_kind` is an entry with that error.
    ///
    /// Values over the size bound are not read (see `read_field`): each round trip reads one
    /// batch, its lengths known, and asks the next batch's lengths (`HSTRLEN`), and the batch
    /// before is decoded while Redis works on it, so that the lengths cost no round trip of
    /// their own and Redis's time overlaps ours (`status` over 10,000 sessions).
    pub(crate) async fn read_documents<T: serde::de::DeserializeOwned>(
        &self,
        found: Vec<String>,
        prefix: &str,
        field: &'static str,
        (what, id_kind): (&'static str, &'static str),
    ) -> Result<Vec<Entry<T>>> {
        let mut connection = self.connection();
        let mut entries = Vec::with_capacity(found.len());
        let batches: Vec<&[String]> = found.chunks(SCAN_BATCH).collect();
        let Some(first) = batches.first() else {
            return Ok(entries);
        };
        let fields: Vec<(String, &'static str)> = first.iter().map(|key| (key.clone(), field)).collect();
        let mut oversized = find_oversized(&mut connection, &fields)
            .await
            .map_err(|err| self.redis_error("read documents", err))?;
        // The batch read last, with its answers, waiting to be decoded.
        let mut read: Option<BatchRead<'_>> = None;
        let decode_batch = |(batch, oversized, values): BatchRead<'_>, entries: &mut Vec<Entry<T>>| {
            for (key, value) in batch.iter().zip(values) {
                // Expired between SCAN and HGET: it is gone, not corrupt.
                let Some(raw) = oversized.field_text(key, field, value) else {
                    continue;
                };
                let id = keys::strip(key, prefix).unwrap_or(key).to_owned();
                // A key whose id breaks the id rules names nothing we could read or write.
                let value = crate::ids::validate(id_kind, &id)
                    .map_err(|err| invalid_id_key(key, &err))
                    .and(raw)
                    .and_then(|raw| decode::document(key, what, &raw));
                entries.push(Entry {
                    id,
                    key: key.clone(),
                    value,
                });
            }
        };
        for (index, batch) in batches.iter().enumerate() {
            let mut pipe = redis::pipe();
            // A key of the wrong type (WRONGTYPE) is that entry's error, not the batch's.
            pipe.ignore_errors();
            for key in *batch {
                oversized.queue_read(&mut pipe, key, field);
            }
            let next = batches.get(index + 1).copied().unwrap_or_default();
            for key in next {
                pipe.cmd("HSTRLEN").arg(key).arg(field);
            }
            // The request's first poll hands it to the connection's task; the decode yields
            // once first, so that the task writes it before the batch before is decoded.
            let (values, ()) = tokio::join!(
                pipe.query_async::<Vec<redis::RedisResult<RedisValue>>>(&mut connection),
                async {
                    if let Some(batch) = read.take() {
                        tokio::task::yield_now().await;
                        decode_batch(batch, &mut entries);
                    }
                }
            );
            let mut values = values.map_err(|err| self.redis_error("read documents", err))?;
            let lengths = values.split_off(batch.len().min(values.len()));
            let next_oversized = Oversized::from_lengths(next, lengths);
            read = Some((batch, std::mem::replace(&mut oversized, next_oversized), values));
        }
        if let Some(batch) = read {
            decode_batch(batch, &mut entries);
        }
        Ok(entries)
    }
}

/// One batch of [`StateManager::read_documents`] read and waiting to be decoded: its keys,
/// those over the size bound, and the answers.
type BatchRead<'a> = (&'a [String], Oversized, Vec<redis::RedisResult<RedisValue>>);

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

/// Appends the report of a log read that stopped at its bound, as an entry named after the
/// last entry read (a reader paging on from it reads the rest).
fn push_cut<T>(entries: &mut Vec<Entry<T>>, key: &str, cut: Option<Error>) {
    if let Some(cut) = cut {
        let id = entries.last().map(|entry| entry.id.clone()).unwrap_or_default();
        entries.push(Entry {
            id,
            key: key.to_owned(),
            value: Err(cut),
        });
    }
}

fn check_text(what: &str, text: &str) -> Result<()> {
    if text.len() > MAX_TEXT_LEN {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            len: text.len(),
            limit: MAX_TEXT_LEN,
        });
    }
    Ok(())
}

/// The error of a key whose id part breaks the id rules (kept short: the key may be huge).
pub(crate) fn invalid_id_key(key: &str, err: &Error) -> Error {
    let detail = match err {
        Error::InvalidId { kind, reason, .. } => format!("the key does not end in a valid {kind}: {reason}"),
        other => other.to_string(),
    };
    Error::Corrupt {
        key: key.to_owned(),
        detail,
    }
}

/// A delay as people say it: `250 ms`, `4 s`.
fn humane(delay: Duration) -> String {
    if delay < Duration::from_secs(1) {
        format!("{} ms", delay.as_millis())
    } else {
        format!("{} s", delay.as_secs())
    }
}

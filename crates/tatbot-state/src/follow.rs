//! Following the system live without missing anything: a consistent snapshot, then every change.
//!
//! [`StateManager::follow`](crate::StateManager::follow) returns a [`Follower`]. Its first item is a [`Snapshot`] (sessions with their
//! progress, nodes with their health, recent events and errors) taken atomically with a
//! [`Cursor`]; every later item is a [`Change`] that carries the cursor just after it. Hand the
//! last cursor you processed back to [`StateManager::follow`](crate::StateManager::follow) and the new follower replays exactly what came
//! after it, from the streams, instead of taking a snapshot.
//!
//! # Where changes come from
//!
//! - Our durable event log `tatbot:events` gives session starts, pauses, resumes and ends,
//!   robot state updates, errors and unknown events, in order. It is tailed with `XREAD BLOCK`
//!   on a connection of the follower's own, because a blocked connection can run nothing else.
//! - Progress comes from the history streams `stream:stroke_history:{session}`, which every
//!   writer appends to, Python nodes included (they don't write our event log). The same
//!   `XREAD` tails the history stream of every executing session; the `progress_update`
//!   entries of the event log are skipped because the history entry carries the same step.
//! - Session documents (offsets, pause and run flags) are re-read after a session event and at
//!   each poll, once that session's history is drained, and sent when they changed.
//! - Node health has no events: heartbeats are polled every [`FollowConfig::poll_interval`]
//!   (1 s by default) and a [`ChangeKind::Node`] is sent when one changed or expired. The same
//!   poll finds sessions started by Python nodes, which are then replayed from their first
//!   history entry, so their progress is complete too.
//!
//! # Order
//!
//! Within one stream the order is Redis's. Across streams it is not total: a session's
//! history entries written before one of its session events are delivered before that event,
//! and a session is announced (its document) before its first history entry.
//!
//! # Failures and gaps
//!
//! When Redis goes away the follower sends [`FollowItem::ConnectionLost`], reconnects with
//! capped exponential backoff, sends [`FollowItem::Reconnected`] and resumes from its cursor.
//! Before resuming, and with every read (in the same pipeline, just before it), it compares
//! the cursor with each stream's `max-deleted-entry-id` and `last-generated-id` (`XINFO
//! STREAM`): if an entry after the cursor was trimmed, or the stream went back (data lost in a
//! restart), it sends [`FollowItem::Resync`] and a fresh snapshot rather than skip silently.
//! Deletions are looked for from the cursor before the previous read, so what was deleted
//! during a read is found by the next read's checks at the latest. In three narrow cases the
//! resync then comes after the entries read past the gap instead of before them, when the next
//! read is answered (at the next entry, or at the end of its block), and a follower resumed
//! from one of their cursors in between does not report the gap: one script
//! or `MULTI` that both wrote what a waiting read was woken for and deleted entries it wrote
//! (which no client could read); a read's pipeline that reached Redis in two parts with
//! another client's deletion in between; and, before Redis 7.2, a deletion between the
//! blocking read and the re-read of the event log behind it.
//!
//! # Hostile data
//!
//! Any writer on the LAN can store anything under our keys. A key of the wrong type (a list
//! at `stroke:progress:x`), a document over [`crate::model::MAX_DOCUMENT_BYTES`] or one that
//! does not decode, a key whose id is invalid, or a history entry that does not decode is
//! reported as corrupt, naming its key, and the follow goes on: in [`Snapshot::corrupt`], and
//! as a [`ChangeKind::Corrupt`] when the follower finds it later (once per key until that key
//! reads well again). Decoding is `decode.rs`'s, which every read path shares, so the follow
//! path and `StateManager::system_status` agree on what is corrupt. An event log of another
//! type (`tatbot:events` set to a string) is reported the same way, and the follower reads
//! without it (tailed histories, and polls for sessions, documents, nodes and robots) until it
//! is a stream again or gone; a cursor that was in it is a gap. A node registry of another type
//! is reported, and the heartbeats alone name the nodes.
//!
//! # Memory
//!
//! The follower does its work inside [`Follower::next`]: the consumer's task reads the
//! follower's connections itself, so a change reaches it with no hand-off between tasks
//! (issue #18). Items it found beyond the one returned wait in a buffer of [`FOLLOW_BUFFER`]
//! items; when that is full the follower stops reading Redis until the consumer takes some. A
//! consumer that stops calling `next` stops the follower; when it calls again the follower
//! continues from its cursor, or resyncs if the log was trimmed meanwhile. Nothing grows.

mod cursor;
pub(crate) mod io;
mod task;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::Result;
use crate::ids::{NodeId, SessionId};
use crate::keys;
use crate::manager::{CorruptEntry, StateManager};
use crate::model::{HistoryEntry, NodeHealth, RobotState, StrokeProgress, event_types};

pub use crate::ids::EntryId;
pub use cursor::Cursor;

/// Items a follower may find ahead of the consumer before it stops reading Redis.
pub const FOLLOW_BUFFER: usize = 256;
/// Default `XREAD BLOCK` time: also the longest a poll can be delayed by a quiet log.
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(1);
/// Default interval of the heartbeat and session poll.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default entries per stream per read.
pub const DEFAULT_BATCH: usize = 500;
/// Default number of events kept in [`Snapshot::recent_events`].
pub const DEFAULT_RECENT_EVENTS: usize = 50;
/// Default number of errors kept in [`Snapshot::recent_errors`].
pub const DEFAULT_RECENT_ERRORS: usize = 20;
/// Longest wait between two reconnect attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most entries [`Snapshot::corrupt`] keeps; past it the oldest reports are dropped, so a
/// writer that stores thousands of bad keys cannot grow a consumer's view without bound.
pub const MAX_CORRUPT_ENTRIES: usize = 100;

/// What to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every session, node, event and error.
    All,
    /// One session: its document, its history and its session events; no nodes or errors.
    Session(SessionId),
}

impl Scope {
    fn includes_session(&self, session_id: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Session(wanted) => wanted.as_str() == session_id,
        }
    }

    fn is_all(&self) -> bool {
        matches!(self, Scope::All)
    }
}

/// Tuning of a follower; the defaults are the `DEFAULT_*` constants of this module.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// How long one `XREAD` blocks when nothing arrives.
    pub block: Duration,
    /// How often heartbeats and session documents are polled.
    pub poll_interval: Duration,
    /// Entries read per stream per round trip.
    pub batch: usize,
    /// Events kept in a snapshot's `recent_events`.
    pub recent_events: usize,
    /// Errors kept in a snapshot's `recent_errors`.
    pub recent_errors: usize,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
}

impl Default for FollowConfig {
    fn default() -> FollowConfig {
        FollowConfig {
            block: DEFAULT_BLOCK,
            poll_interval: DEFAULT_POLL_INTERVAL,
            batch: DEFAULT_BATCH,
            recent_events: DEFAULT_RECENT_EVENTS,
            recent_errors: DEFAULT_RECENT_ERRORS,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

/// One entry of the event log (or of the error log), decoded as far as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// The entry id in the stream it was read from.
    pub id: String,
    /// The channel the event was published on.
    pub channel: String,
    /// The event's `type`, when it has one.
    pub event_type: Option<String>,
    /// The session it is about, when it names one.
    pub session_id: Option<String>,
    /// The event JSON; a payload that is not JSON is kept as a string.
    pub payload: Value,
}

impl LoggedEvent {
    fn is_error(&self) -> bool {
        self.event_type.as_deref() == Some(event_types::ERROR)
    }

    fn is_progress(&self) -> bool {
        self.event_type.as_deref() == Some(event_types::PROGRESS_UPDATE)
    }
}

/// A node as the follower sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node id.
    pub node_id: String,
    /// Its last heartbeat while it is live; `None` once the 60 s TTL let it expire (offline).
    pub health: Option<NodeHealth>,
    /// When it was last heard of (Unix ms): its last heartbeat, or our node registry's score.
    pub last_seen_ms: Option<i64>,
    /// The node's clock minus Redis's clock, estimated when the heartbeat was seen: the
    /// heartbeat's `last_heartbeat` against the Redis time at which the key's TTL was set
    /// (from `PTTL`, assuming the heartbeat TTL of the manager's config). `None` when unknown.
    pub clock_skew_ms: Option<i64>,
}

/// A consistent picture of the system, and the cursor it corresponds to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Applying the changes after this cursor to this snapshot gives the current state.
    pub cursor: Cursor,
    /// Redis's clock when the snapshot was taken (Unix ms).
    pub server_time_ms: i64,
    /// Every stored session with its progress document, by session id.
    pub sessions: BTreeMap<String, StrokeProgress>,
    /// Live and known nodes, by node id.
    pub nodes: BTreeMap<String, NodeView>,
    /// Every robot state snapshot (`robot:state:*`), by node id; empty for a session scope.
    #[serde(default)]
    pub robots: BTreeMap<String, RobotState>,
    /// The newest events of the log except progress updates, oldest first.
    pub recent_events: Vec<LoggedEvent>,
    /// The newest errors of the error log, oldest first.
    pub recent_errors: Vec<LoggedEvent>,
    /// How many events `recent_events` keeps when changes are applied.
    pub recent_events_limit: usize,
    /// How many errors `recent_errors` keeps when changes are applied.
    pub recent_errors_limit: usize,
    /// Keys (and history entries) whose stored value is corrupt, with why; at most
    /// [`MAX_CORRUPT_ENTRIES`].
    #[serde(default)]
    pub corrupt: Vec<CorruptEntry>,
}

impl Snapshot {
    /// Applies one change, so that a consumer can keep its own view current.
    pub fn apply(&mut self, change: &Change) {
        self.cursor = change.cursor.clone();
        match &change.kind {
            ChangeKind::Progress { session_id, entry } => {
                if let Some(progress) = self.sessions.get_mut(session_id.as_str()) {
                    apply_entry(progress, entry);
                }
            }
            ChangeKind::Session { session_id, progress } => {
                self.sessions.insert(session_id.to_string(), (**progress).clone());
                self.forget_corrupt(&keys::progress(session_id));
            }
            ChangeKind::SessionRemoved { session_id } => {
                self.sessions.remove(session_id.as_str());
                self.forget_corrupt(&keys::progress(session_id));
            }
            ChangeKind::Corrupt { key, error } => {
                self.forget_corrupt(key);
                self.corrupt.push(CorruptEntry {
                    key: key.clone(),
                    error: error.clone(),
                });
                if self.corrupt.len() > MAX_CORRUPT_ENTRIES {
                    let excess = self.corrupt.len() - MAX_CORRUPT_ENTRIES;
                    self.corrupt.drain(..excess);
                }
            }
            ChangeKind::Event { event } => {
                // Read from the event log: it is a stream again.
                self.forget_corrupt(keys::EVENT_LOG);
                if event.is_error() {
                    push_bounded(&mut self.recent_errors, event.clone(), self.recent_errors_limit);
                }
                if !event.is_progress() {
                    push_bounded(&mut self.recent_events, event.clone(), self.recent_events_limit);
                }
            }
            ChangeKind::Node { node } => {
                if node.health.is_some()
                    && let Ok(node_id) = NodeId::new(node.node_id.as_str())
                {
                    self.forget_corrupt(&keys::health(&node_id));
                }
                self.nodes.insert(node.node_id.clone(), (**node).clone());
            }
            ChangeKind::Robot { node_id, state } => {
                if let Ok(id) = NodeId::new(node_id.as_str()) {
                    self.forget_corrupt(&keys::robot_state(&id));
                }
                match state {
                    Some(state) => {
                        self.robots.insert(node_id.clone(), (**state).clone());
                    }
                    None => {
                        self.robots.remove(node_id);
                    }
                }
            }
        }
    }

    fn forget_corrupt(&mut self, key: &str) {
        self.corrupt.retain(|entry| entry.key != key);
    }
}

/// What a history entry tells about its session's document.
fn apply_entry(progress: &mut StrokeProgress, entry: &HistoryEntry) {
    progress.stroke_idx = entry.stroke_idx;
    progress.pose_idx = entry.pose_idx;
    progress.stroke_description_l.clone_from(&entry.description_l);
    progress.stroke_description_r.clone_from(&entry.description_r);
    progress.node_id.clone_from(&entry.node_id);
}

fn push_bounded(list: &mut Vec<LoggedEvent>, event: LoggedEvent, limit: usize) {
    list.push(event);
    if list.len() > limit {
        let excess = list.len() - limit;
        list.drain(..excess);
    }
}

/// One change, with the cursor just after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Resume from here to receive what comes after this change.
    pub cursor: Cursor,
    /// What changed.
    #[serde(flatten)]
    pub kind: ChangeKind,
}

/// What a [`Change`] is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChangeKind {
    /// A history entry: the session reached this stroke and pose.
    Progress {
        /// The session.
        session_id: SessionId,
        /// The entry, with its stream id.
        entry: HistoryEntry,
    },
    /// A session's document, new or changed (offsets, flags, end).
    Session {
        /// The session.
        session_id: SessionId,
        /// Its document as stored.
        progress: Box<StrokeProgress>,
    },
    /// A session's document is gone (cleared, or expired after its retention).
    SessionRemoved {
        /// The session.
        session_id: SessionId,
    },
    /// An event from the log other than a progress update.
    Event {
        /// The event.
        event: LoggedEvent,
    },
    /// A node's heartbeat changed, appeared or expired.
    Node {
        /// The node as it is now.
        node: Box<NodeView>,
    },
    /// A robot state snapshot (`robot:state:{node_id}`) changed, appeared or was deleted.
    Robot {
        /// The node whose robot it is.
        node_id: String,
        /// The state as stored now; `None` once the key is gone.
        state: Option<Box<RobotState>>,
    },
    /// A key (or a history entry) holds a value that is corrupt: the wrong type, over the size
    /// bound, not the document the wire contract describes, or under an invalid id. Sent once
    /// per key until it reads well again (a later `Session` or `Node` change for it clears it).
    Corrupt {
        /// The key; for a history entry its stream (the error names the entry).
        key: String,
        /// Why, for a person.
        error: String,
    },
}

/// What a [`Follower`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowItem {
    /// A fresh picture: replace everything you hold with it.
    Snapshot(Box<Snapshot>),
    /// One change after the last snapshot or change.
    Change(Change),
    /// What the cursor pointed at is gone (trimmed, or lost by Redis); a snapshot follows.
    Resync {
        /// Why, for a person.
        reason: String,
    },
    /// Redis could not be reached; the follower keeps trying.
    ConnectionLost {
        /// The failure, for a person.
        error: String,
    },
    /// Redis answers again; the follower resumes from its cursor.
    Reconnected,
}

/// A live follow of the system; see the [module docs](self).
///
/// Dropping it stops the follow and closes its Redis connections.
pub struct Follower {
    /// Items found and not returned yet; the follow waits when [`FOLLOW_BUFFER`] are unread.
    rx: mpsc::Receiver<FollowItem>,
    /// The follow itself, run by [`Follower::next`]; `None` once it ended.
    follow: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Cancels the follow's token when the follower is dropped.
    _stop: DropGuard,
}

impl Follower {
    /// The next item; `None` only after the follow stopped (cancelled with the follower's
    /// parent token). Runs the follow until it has an item. Cancel-safe: dropping the future
    /// loses nothing, and the follow goes on at the next call.
    pub async fn next(&mut self) -> Option<FollowItem> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(item) = self.rx.poll_recv(cx) {
                return Poll::Ready(item);
            }
            let Some(follow) = self.follow.as_mut() else {
                return Poll::Pending;
            };
            if follow.as_mut().poll(cx).is_ready() {
                // Its end dropped the sender: what is buffered comes, then `None`.
                self.follow = None;
            }
            // What the follow found during this poll, at once: it yields after handing over
            // an item, and waiting for the task to be scheduled again would cost a wake-up.
            self.rx.poll_recv(cx)
        })
        .await
    }
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("unread", &self.rx.len())
            .field("running", &self.follow.is_some())
            .finish_non_exhaustive()
    }
}

impl StateManager {
    /// Follows `scope` with the default [`FollowConfig`]; see [`StateManager::follow_with`].
    pub fn follow(&self, scope: Scope, resume: Option<Cursor>) -> Follower {
        self.follow_with(scope, resume, FollowConfig::default(), &CancellationToken::new())
    }

    /// Follows `scope`: from `resume` when given (replaying what came after it, or a resync and
    /// a snapshot when that is gone), else from a fresh snapshot.
    ///
    /// The follower has two connections of its own and does its work while the consumer awaits
    /// [`Follower::next`]: the snapshot is taken (or the replay from `resume` starts) at the
    /// first call, so a consumer that wants the changes from now on reads it from now on, as
    /// the viz and the monitor do. It stops when the [`Follower`] is dropped or `shutdown` is
    /// cancelled.
    pub fn follow_with(
        &self,
        scope: Scope,
        resume: Option<Cursor>,
        config: FollowConfig,
        shutdown: &CancellationToken,
    ) -> Follower {
        let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
        let token = shutdown.child_token();
        let task = task::FollowTask::new(self, scope, config, tx);
        let stop = token.clone();
        let follow = async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task.run(resume) => {}
            }
        };
        Follower {
            rx,
            follow: Some(Box::pin(follow)),
            _stop: token.drop_guard(),
        }
    }

    /// Takes one consistent snapshot of `scope`, as a follower's first item.
    ///
    /// Opens a connection of its own for the call.
    ///
    /// # Errors
    ///
    /// Redis could not be reached or failed.
    pub async fn snapshot(&self, scope: &Scope, config: &FollowConfig) -> Result<Snapshot> {
        let connections = io::Connections::open(self.config(), self.locator(), config.block).await?;
        io::read_snapshot(&connections.commands, self.config(), scope, config).await
    }

    /// Every event of `session_id` the event log `tatbot:events` still holds, oldest first:
    /// its start, pauses, resumes, end and errors, however long ago (a snapshot's
    /// `recent_events` has only the last few of the whole fleet). Progress updates are left
    /// out (the history stream has them). At most `limit` events, the oldest, and at most
    /// [`SESSION_EVENTS_SCAN`] log entries are read, so a log grown past its bound by a hostile
    /// writer cannot make this unbounded; an entry that does not decode is skipped. A log that
    /// takes more than 32 MiB in Redis (only another client's entries make it so) is read one
    /// entry per round trip, newest first back to the session's start, at most 20,000 entries
    /// and 32 MiB; when the read stops before the start, an event whose payload says so comes
    /// first (with no id), in place of the newest event kept. A smaller log is read in pages
    /// until they take 32 MiB too (its entries can repeat long field names the log stores
    /// once), and such an event comes last when the read stops there.
    ///
    /// # Errors
    ///
    /// Redis could not be reached or failed.
    pub async fn session_events(&self, session_id: &SessionId, limit: usize) -> Result<Vec<LoggedEvent>> {
        let mut connection = self.connection();
        let mut events = Vec::new();
        if limit == 0 {
            return Ok(events);
        }
        let big = io::oversized_logs(&mut connection, &[keys::EVENT_LOG])
            .await
            .map_err(|err| self.redis_error("session events", err))?;
        if let Some(size) = big.get(keys::EVENT_LOG) {
            // Pages of 2,000 entries of any size: one entry per round trip instead, within the
            // bound of one read, newest first, back to the session's start (nothing of the
            // session comes before it), so that a recent session's events are found first.
            // Decoded only when it names the session, as the events kept are.
            let is_start = |entry: io::RawEntry| {
                session_events_among(std::slice::from_ref(&entry), session_id)
                    .any(|event| event.event_type.as_deref() == Some(event_types::SESSION_START))
            };
            let mut started = false;
            let pages = io::read_log_pages(
                &mut connection,
                keys::EVENT_LOG,
                io::Direction::Backward,
                "+".to_owned(),
                HUGE_LOG_SCAN,
                0,
                |entry| {
                    started = io::parse_entry(entry).is_some_and(is_start);
                    started
                },
            )
            .await
            .map_err(|err| self.redis_error("session events", err))?;
            let mut entries = io::parse_entries(&pages.entries);
            entries.reverse();
            events.extend(session_events_among(&entries, session_id));
            events.truncate(limit);
            let stopped = pages.cut_detail(*size, 0).or_else(|| {
                (!started && pages.read == HUGE_LOG_SCAN).then(|| {
                    format!("the log takes {size} bytes in Redis; the read stopped after {HUGE_LOG_SCAN} entries without the session's start")
                })
            });
            if let Some(detail) = stopped {
                // In place of the newest event kept, so that `limit` holds.
                events.truncate(limit - 1);
                events.insert(0, read_stopped(session_id, &detail));
            }
            return Ok(events);
        }
        let mut start = "-".to_owned();
        let mut scanned = 0;
        // Entries repeat the field names a stream node stores once, so a log within the bound
        // in Redis can still send far more: the pages stop at the bound too.
        let mut bytes = 0;
        while scanned < SESSION_EVENTS_SCAN && events.len() < limit {
            if bytes >= io::MAX_LOG_READ_BYTES {
                events.truncate(limit - 1);
                let detail = format!(
                    "the read stopped after {scanned} entries ({bytes} bytes), the most one read takes is {}, and the log may hold more",
                    io::MAX_LOG_READ_BYTES
                );
                events.push(read_stopped(session_id, &detail));
                return Ok(events);
            }
            let reply: redis::Value = redis::cmd("XRANGE")
                .arg(keys::EVENT_LOG)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(SESSION_EVENTS_PAGE)
                .query_async(&mut connection)
                .await
                .or_else(|err| match err.code() {
                    // Something else under the log's key: no events to show.
                    Some("WRONGTYPE") => Ok(redis::Value::Nil),
                    _ => Err(self.redis_error("session events", err)),
                })?;
            bytes += io::reply_bytes(&reply) as u64;
            let page = io::parse_entries(&reply);
            scanned += page.len();
            events.extend(session_events_among(&page, session_id));
            match page.last() {
                Some(last) if page.len() == SESSION_EVENTS_PAGE => start = format!("({}", last.id_text),
                _ => break,
            }
        }
        events.truncate(limit);
        Ok(events)
    }
}

/// The event [`StateManager::session_events`] gives in place of those it did not read, at the
/// end of the log where they may be, saying why (`detail`); it has no id.
fn read_stopped(session_id: &SessionId, detail: &str) -> LoggedEvent {
    LoggedEvent {
        id: String::new(),
        channel: String::new(),
        event_type: None,
        session_id: Some(session_id.to_string()),
        payload: Value::String(format!("(corrupt: {}: {detail})", keys::EVENT_LOG)),
    }
}

/// The events of `session_id` among `entries` of the event log, progress updates left out.
fn session_events_among<'a>(
    entries: &'a [io::RawEntry],
    session_id: &'a SessionId,
) -> impl Iterator<Item = LoggedEvent> + 'a {
    entries
        .iter()
        // Most entries are other sessions' progress: skip them before parsing JSON.
        .filter(|entry| {
            entry
                .field("payload")
                .is_some_and(|payload| payload.contains(session_id.as_str()))
        })
        .map(io::decode_logged)
        .filter(|event| event.session_id.as_deref() == Some(session_id.as_str()) && !event.is_progress())
}

/// The most entries [`StateManager::session_events`] reads, one per round trip, from an event
/// log over [`io::MAX_LOG_READ_BYTES`] in Redis (which only another client's entries make it):
/// two seconds of round trips on a LAN.
const HUGE_LOG_SCAN: usize = 20_000;

/// Event-log entries [`StateManager::session_events`] reads per round trip.
const SESSION_EVENTS_PAGE: usize = 2_000;
/// The most event-log entries [`StateManager::session_events`] reads: five times the log's
/// default bound.
pub const SESSION_EVENTS_SCAN: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;

    fn progress(stroke_idx: i64) -> StrokeProgress {
        serde_json::from_value(serde_json::json!({
            "timestamp": Timestamp::now(), "node_id": "hog", "stroke_idx": stroke_idx, "total_strokes": 4,
        }))
        .unwrap()
    }

    fn event(id: &str, event_type: &str) -> LoggedEvent {
        LoggedEvent {
            id: id.into(),
            channel: "c".into(),
            event_type: Some(event_type.into()),
            session_id: None,
            payload: Value::Null,
        }
    }

    /// Applying changes updates progress from history entries and bounds the event lists.
    #[test]
    fn apply_folds_changes() {
        let session_id = SessionId::new("stroke_hog_1").unwrap();
        let mut snapshot = Snapshot {
            cursor: Cursor::default(),
            server_time_ms: 0,
            sessions: BTreeMap::from([(session_id.to_string(), progress(0))]),
            nodes: BTreeMap::new(),
            robots: BTreeMap::new(),
            recent_events: Vec::new(),
            recent_errors: Vec::new(),
            recent_events_limit: 2,
            recent_errors_limit: 1,
            corrupt: Vec::new(),
        };
        let entry = HistoryEntry {
            id: "5-0".parse().unwrap(),
            stroke_idx: 3,
            pose_idx: 2,
            description_l: "l".into(),
            description_r: "r".into(),
            node_id: "eek".into(),
        };
        let mut cursor = Cursor::default();
        cursor.history.insert(session_id.clone(), "5-0".parse().unwrap());
        snapshot.apply(&Change {
            cursor: cursor.clone(),
            kind: ChangeKind::Progress {
                session_id: session_id.clone(),
                entry,
            },
        });
        let stored = &snapshot.sessions[session_id.as_str()];
        assert_eq!(
            (stored.stroke_idx, stored.pose_idx, stored.node_id.as_str()),
            (3, 2, "eek")
        );
        assert_eq!(snapshot.cursor, cursor);
        for (id, kind) in [
            ("1-0", "error"),
            ("2-0", "progress_update"),
            ("3-0", "session_end"),
            ("4-0", "error"),
        ] {
            snapshot.apply(&Change {
                cursor: cursor.clone(),
                kind: ChangeKind::Event { event: event(id, kind) },
            });
        }
        let ids = |list: &[LoggedEvent]| list.iter().map(|event| event.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&snapshot.recent_events), ["3-0", "4-0"]);
        assert_eq!(ids(&snapshot.recent_errors), ["4-0"]);
    }

    /// A change serializes flat, with its kind and cursor, as the dashboard receives it.
    #[test]
    fn change_json_shape() {
        let change = Change {
            cursor: "1;7-0".parse().unwrap(),
            kind: ChangeKind::SessionRemoved {
                session_id: SessionId::new("s").unwrap(),
            },
        };
        let json = serde_json::to_value(&change).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cursor": "1;7-0", "kind": "session_removed", "session_id": "s"})
        );
        assert_eq!(serde_json::from_value::<Change>(json).unwrap(), change);
    }
}

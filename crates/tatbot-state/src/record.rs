//! Recording the shared state as timed messages, for MCAP files and Foxglove (feature `record`).
//!
//! A recording is a sequence of [`Message`]s on six [`Topic`]s: progress history, session
//! events, robot state, node health, errors and parameter changes. Each message is one JSON
//! document whose JSON Schema (generated from the library's types with `schemars`) is
//! [`Topic::json_schema`].
//!
//! # Layout
//!
//! - [`Recorder`] reads what Redis holds ([`Recorder::backlog`]) and then what arrives
//!   ([`Recorder::next_live`]): the history streams, `tatbot:events`, `tatbot:errors` and
//!   `tatbot:param_log` by `XRANGE`/`XREAD BLOCK` from a cursor per stream, and the robot state
//!   and heartbeat documents by polling.
//! - [`McapSink`] writes messages to an MCAP file, one channel per topic.
//! - [`replay`] reads an MCAP file back ([`replay::read_recording`]) and plays it into a Redis.
//!
//! # Times
//!
//! A stream entry's log time is its Redis stream id (milliseconds, so the same clock for every
//! stream and the order Redis wrote them in); its publish time is the document's own
//! `timestamp` when it has one. A polled document (robot state, heartbeat) is logged at its
//! `timestamp` in the backlog and at the time the recorder saw it when live, so a live
//! recording's log times never go back.
//!
//! # Hostile data
//!
//! Any LAN member can write any key. An entry that does not decode (wrong type, missing field,
//! bad JSON, over [`crate::model::MAX_DOCUMENT_BYTES`]) is counted in [`RecordStats::corrupt`],
//! logged with `warn` naming its key and id, and skipped; it never stops a recording.

pub mod replay;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::io::{Seek, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value as RedisValue;
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::history_entry;
use crate::error::{Error, Result};
use crate::follow::io::{RawEntry, parse_entries};
use crate::ids::SessionId;
use crate::keys;
use crate::manager::StateManager;
use crate::model::{ErrorEvent, HistoryEntry, MAX_DOCUMENT_BYTES, NodeHealth, RobotState, StrokeProgress, event_types};

/// Stream entries fetched per `XRANGE` or `XREAD` round trip.
const PAGE: usize = 10_000;

/// Whether a `TYPE` answer lets a stream be read: a stream, or no key yet.
fn is_stream_or_gone(kind: &str) -> bool {
    kind == "stream" || kind == "none"
}

/// `XRANGE` pages of one stream read ahead of the one being decoded, so Redis answers the next
/// while the recorder decodes and writes this one.
const PREFETCH: usize = 2;
/// How long [`Recorder::next_live`] blocks waiting for new stream entries.
pub const LIVE_BLOCK: Duration = Duration::from_millis(200);
/// How often a live recorder re-reads robot states and heartbeats.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One channel of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// One message per history stream entry: [`ProgressRecord`].
    Progress,
    /// One message per entry of the event log `tatbot:events`: [`EventRecord`].
    Events,
    /// Robot state documents: [`RobotState`].
    RobotState,
    /// Heartbeat documents: [`NodeHealth`].
    NodeHealth,
    /// One message per entry of `tatbot:errors`: [`ErrorRecord`].
    Errors,
    /// One message per entry of the parameter audit log: [`ParamRecord`].
    Params,
}

impl Topic {
    /// Every topic, in channel-id order.
    pub const ALL: [Topic; 6] = [
        Topic::Progress,
        Topic::Events,
        Topic::RobotState,
        Topic::NodeHealth,
        Topic::Errors,
        Topic::Params,
    ];

    /// The channel's topic name in MCAP and Foxglove.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Progress => "/tatbot/progress",
            Topic::Events => "/tatbot/events",
            Topic::RobotState => "/tatbot/robot_state",
            Topic::NodeHealth => "/tatbot/node_health",
            Topic::Errors => "/tatbot/errors",
            Topic::Params => "/tatbot/params",
        }
    }

    /// The topic named `name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|topic| topic.name() == name)
    }

    /// The schema's name (`tatbot.ProgressRecord`, ...).
    pub fn schema_name(self) -> &'static str {
        match self {
            Topic::Progress => "tatbot.ProgressRecord",
            Topic::Events => "tatbot.EventRecord",
            Topic::RobotState => "tatbot.RobotState",
            Topic::NodeHealth => "tatbot.NodeHealth",
            Topic::Errors => "tatbot.ErrorRecord",
            Topic::Params => "tatbot.ParamRecord",
        }
    }

    /// The JSON Schema (draft 2020-12) of this topic's messages.
    pub fn json_schema(self) -> String {
        let schema = match self {
            Topic::Progress => schemars::schema_for!(ProgressRecord),
            Topic::Events => schemars::schema_for!(EventRecord),
            Topic::RobotState => schemars::schema_for!(RobotState),
            Topic::NodeHealth => schemars::schema_for!(NodeHealth),
            Topic::Errors => schemars::schema_for!(ErrorRecord),
            Topic::Params => schemars::schema_for!(ParamRecord),
        };
        schema.as_value().to_string()
    }
}

/// A history stream entry with the session it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProgressRecord {
    /// The session (`stream:stroke_history:{session_id}`).
    pub session_id: String,
    /// The entry as stored, with its stream id.
    #[serde(flatten)]
    pub entry: HistoryEntry,
}

/// An entry of the event log `tatbot:events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventRecord {
    /// The stream id.
    pub id: String,
    /// The pub/sub channel it was published on.
    pub channel: String,
    /// The event: a JSON object with a `type` (docs/WIRE.md, Events).
    #[schemars(schema_with = "event_schema")]
    pub event: Value,
}

fn event_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string"},
            "session_id": {"type": "string"},
            "node_id": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"}
        }
    })
}

/// An entry of the error log `tatbot:errors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorRecord {
    /// The stream id.
    pub id: String,
    /// The channel it was published on (`error:events:{category}`).
    pub channel: String,
    /// The error event.
    pub error: ErrorEvent,
}

/// An entry of the parameter audit log `tatbot:param_log` (docs/PARAMS.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ParamRecord {
    /// The stream id.
    pub id: String,
    /// Position in the audit log, consecutive over the log.
    pub seq: u64,
    /// The parameter's name.
    pub name: String,
    /// Its type (`float`, `int[]`, ...).
    #[serde(rename = "type")]
    pub param_type: String,
    /// Its version after the change.
    pub version: u64,
    /// `declare`, `set` or `load`.
    pub op: String,
    /// The writing node.
    pub actor: String,
    /// When, as a wire timestamp.
    pub time: String,
    /// The value before, absent when the change declared the parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// The value after.
    pub new: Value,
}

/// One recorded message: a JSON document on a topic at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its channel.
    pub topic: Topic,
    /// When it was logged, in nanoseconds since the Unix epoch (see the module docs, Times).
    pub log_time: u64,
    /// The document's own time, in nanoseconds since the Unix epoch; the log time when it has none.
    pub publish_time: u64,
    /// The JSON document.
    pub data: Vec<u8>,
}

/// Which sessions a recording keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Everything Redis holds, and everything that arrives.
    All,
    /// These sessions: their history and events, and the robot states, heartbeats, errors and
    /// parameter changes from their first entry on.
    Sessions(Vec<SessionId>),
}

/// What a recorder has read so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Messages produced, per topic.
    pub messages: BTreeMap<&'static str, u64>,
    /// Entries that did not decode and were skipped.
    pub corrupt: u64,
}

/// Reads recordings from one Redis; see the [module docs](self).
pub struct Recorder {
    manager: StateManager,
    /// The sessions asked for, or `None` for all.
    wanted: Option<BTreeSet<SessionId>>,
    /// Sessions whose end was seen (or whose document said so at the start).
    ended: BTreeSet<SessionId>,
    /// Selected sessions whose document says they ended: ended once a live read finds nothing
    /// more in their history (the last entries may come after the document was read).
    ending: BTreeSet<SessionId>,
    /// Selected sessions whose document could not be read, told once.
    unreadable_docs: BTreeSet<SessionId>,
    /// The last id read from each stream; streams not yet read start at `0`.
    cursors: BTreeMap<String, String>,
    /// With a selection, the first time (ms) of the selected sessions: global entries before it
    /// are left out.
    since_ms: Option<u64>,
    /// The document times already recorded per robot state or heartbeat key.
    seen_docs: HashMap<String, String>,
    /// When robot states and heartbeats were last polled by the live loop.
    last_poll: Option<tokio::time::Instant>,
    /// The live loop's connection for its blocking reads, kept from one read to the next and
    /// dropped after a failure (the next read opens one, on the master of the moment).
    live: Option<redis::aio::MultiplexedConnection>,
    /// Streams whose key holds another type: left out of live reads (one such key fails a
    /// whole `XREAD`), and looked at again at each poll.
    not_streams: BTreeSet<String>,
    stats: RecordStats,
}

impl Recorder {
    /// A recorder of `selection`.
    ///
    /// # Errors
    ///
    /// [`Error::SessionNotFound`] for a selected session with neither a progress document nor
    /// history entries, or a Redis failure.
    pub async fn new(manager: &StateManager, selection: Selection) -> Result<Recorder> {
        let mut recorder = Recorder {
            manager: manager.clone(),
            wanted: None,
            ended: BTreeSet::new(),
            ending: BTreeSet::new(),
            unreadable_docs: BTreeSet::new(),
            cursors: BTreeMap::new(),
            since_ms: None,
            seen_docs: HashMap::new(),
            last_poll: None,
            live: None,
            not_streams: BTreeSet::new(),
            stats: RecordStats::default(),
        };
        let sessions = match selection {
            Selection::All => {
                for key in manager.scan(&format!("{}*", keys::HISTORY_PREFIX)).await? {
                    recorder.cursors.insert(key, "0".to_owned());
                }
                return Ok(recorder);
            }
            Selection::Sessions(sessions) => sessions,
        };
        let mut connection = manager.connection();
        for session_id in &sessions {
            let history = keys::history(session_id);
            let progress = manager.get_stroke_progress(session_id).await;
            let first: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&history)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut connection)
                .await
                .or_else(|err| match err.code() {
                    // Something else under the history key: its entries are corrupt, not missing.
                    Some("WRONGTYPE") => Ok(StreamRangeReply::default()),
                    _ => Err(manager.redis_error("record: first history entry", err)),
                })?;
            let exists = matches!(progress, Ok(Some(_)) | Err(_)) || !first.ids.is_empty();
            if !exists {
                return Err(Error::SessionNotFound(session_id.to_string()));
            }
            if let Ok(Some(progress)) = &progress {
                if !progress.is_executing {
                    recorder.ended.insert(session_id.clone());
                }
                let start = u64::try_from(progress.timestamp.unix_millis()).unwrap_or(0);
                recorder.since_ms = Some(recorder.since_ms.map_or(start, |since| since.min(start)));
            }
            if let Some(first_ms) = first.ids.first().and_then(|entry| id_millis(&entry.id)) {
                recorder.since_ms = Some(recorder.since_ms.map_or(first_ms, |since| since.min(first_ms)));
            }
            recorder.cursors.insert(history, "0".to_owned());
        }
        recorder.wanted = Some(sessions.into_iter().collect());
        Ok(recorder)
    }

    /// What was read so far.
    pub fn stats(&self) -> &RecordStats {
        &self.stats
    }

    /// True when every selected session has ended (never with [`Selection::All`]).
    pub fn finished(&self) -> bool {
        self.wanted
            .as_ref()
            .is_some_and(|wanted| wanted.iter().all(|session| self.ended.contains(session)))
    }

    /// How many entries the streams [`Recorder::backlog_with`] reads hold now (`XLEN`): the
    /// most stream messages it can produce, for a progress bar. A key that is not a stream
    /// counts 0.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn backlog_len(&self) -> Result<u64> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for key in self.stream_keys() {
            pipe.cmd("XLEN").arg(key);
        }
        let lengths: Vec<redis::RedisResult<u64>> = pipe
            .query_async(&mut self.manager.connection())
            .await
            .map_err(|err| self.manager.redis_error("record: stream lengths", err))?;
        Ok(lengths.into_iter().filter_map(std::result::Result::ok).sum())
    }

    /// Everything Redis holds for the selection, in log-time order; afterwards
    /// [`Recorder::next_live`] returns only what is newer. Holds the whole backlog in memory:
    /// [`Recorder::backlog_with`] streams it instead.
    ///
    /// # Errors
    ///
    /// A Redis failure. Corrupt entries are skipped and counted, not errors.
    pub async fn backlog(&mut self) -> Result<Vec<Message>> {
        let mut messages = Vec::new();
        self.backlog_with(|message| {
            messages.push(message);
            Ok(())
        })
        .await?;
        Ok(messages)
    }

    /// Hands everything Redis holds for the selection to `emit`, in log-time order (equal
    /// times in stream order, then the robot states and heartbeats), as it is read; afterwards
    /// [`Recorder::next_live`] returns only what is newer.
    ///
    /// Each stream is read by a task of its own in `XRANGE` pages of 10,000 entries, up to
    /// `PREFETCH` pages ahead, and the streams (each already in log-time order) are merged
    /// as they arrive: Redis prepares the next pages while this one is decoded and written,
    /// and only a few pages per stream are held at once.
    ///
    /// # Errors
    ///
    /// A Redis failure, or the first error `emit` returns. Corrupt entries are skipped and
    /// counted, not errors.
    pub async fn backlog_with(&mut self, mut emit: impl FnMut(Message) -> Result<()>) -> Result<()> {
        let mut readers = tokio::task::JoinSet::new();
        let mut streams: Vec<Pending> = Vec::new();
        for key in self.stream_keys() {
            let (pages, receiver) = tokio::sync::mpsc::channel(PREFETCH);
            let after = match self.cursors.get(&key).map(String::as_str) {
                Some("0") | None => None,
                Some(id) => Some(id.to_owned()),
            };
            readers.spawn(read_pages(self.manager.connection(), key.clone(), after, pages));
            streams.push(Pending {
                key,
                pages: Some(receiver),
                buffer: VecDeque::new(),
            });
        }
        let mut documents = Vec::new();
        self.poll_documents(None, &mut documents).await?;
        sort_by_log_time(&mut documents);
        streams.push(Pending {
            key: String::new(),
            pages: None,
            buffer: documents.into(),
        });
        // The stream with the earliest head; equal times go in stream order.
        let mut heads = BinaryHeap::new();
        for (index, stream) in streams.iter_mut().enumerate() {
            self.refill(stream).await?;
            if let Some(head) = stream.buffer.front() {
                heads.push(Reverse((head.log_time, index)));
            }
        }
        while let Some(Reverse((_, index))) = heads.pop() {
            let stream = &mut streams[index];
            let Some(message) = stream.buffer.pop_front() else {
                continue;
            };
            emit(message)?;
            if stream.buffer.is_empty() {
                self.refill(stream).await?;
            }
            if let Some(head) = stream.buffer.front() {
                heads.push(Reverse((head.log_time, index)));
            }
        }
        readers.shutdown().await;
        Ok(())
    }

    /// Decodes pages of `stream` until one gives a message or the stream ends.
    async fn refill(&mut self, stream: &mut Pending) -> Result<()> {
        while stream.buffer.is_empty() {
            let Some(pages) = &mut stream.pages else {
                return Ok(());
            };
            let Some(page) = pages.recv().await else {
                stream.pages = None;
                return Ok(());
            };
            // Lets the reader's next request go out before this page is decoded.
            tokio::task::yield_now().await;
            let entries = match page {
                Ok(entries) => entries,
                Err(err) => {
                    stream.pages = None;
                    self.wrong_type(&stream.key, err)?;
                    Vec::new()
                }
            };
            let mut decoded = Vec::with_capacity(entries.len());
            for entry in &entries {
                self.decode_entry(&stream.key, entry, &mut decoded);
            }
            if let Some(last) = entries.last() {
                self.cursors.insert(stream.key.clone(), last.id_text.clone());
            }
            stream.buffer = decoded.into();
        }
        Ok(())
    }

    /// Starts live reading from now: nothing Redis holds already is returned.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn skip_backlog(&mut self) -> Result<()> {
        for key in self.stream_keys() {
            let reply: RedisValue = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.manager.connection())
                .await
                .or_else(|err| self.wrong_type(&key, err))?;
            if let Some(entry) = self.stream_entries(&key, reply).pop() {
                self.cursors.insert(key, entry.id);
            }
        }
        Ok(())
    }

    /// The entries added since the last call (waiting up to [`LIVE_BLOCK`] for one), and the
    /// robot states and heartbeats that changed (polled every second), in log-time order.
    ///
    /// # Errors
    ///
    /// A Redis failure.
    pub async fn next_live(&mut self) -> Result<Vec<Message>> {
        let mut messages = Vec::new();
        let mut stream_keys = self.stream_keys();
        stream_keys.retain(|key| !self.not_streams.contains(key));
        if stream_keys.is_empty() {
            // Every stream holds another type: wait as a read would, then poll.
            tokio::time::sleep(LIVE_BLOCK).await;
        }
        let ids: Vec<String> = stream_keys
            .iter()
            .map(|key| self.cursors.get(key).cloned().unwrap_or_else(|| "0".to_owned()))
            .collect();
        let options = StreamReadOptions::default()
            .count(PAGE)
            .block(usize::try_from(LIVE_BLOCK.as_millis()).unwrap_or(200));
        let read = if stream_keys.is_empty() {
            Ok(None)
        } else {
            // A dedicated connection: a blocking read must not hold up the shared one. Opened
            // only when there is a stream to read.
            let mut connection = match self.live.take() {
                Some(connection) => connection,
                None => {
                    let config = self.manager.config();
                    // Its answers wait out the block too.
                    self.manager
                        .locator()
                        .dedicated(
                            config.connect_timeout,
                            config.response_timeout + LIVE_BLOCK,
                            "record: live connection",
                        )
                        .await?
                }
            };
            let read = redis::AsyncCommands::xread_options(&mut connection, &stream_keys, &ids, &options).await;
            // Kept unless the connection may be broken.
            if read.as_ref().is_ok() || read.as_ref().is_err_and(crate::decode::is_wrong_type) {
                self.live = Some(connection);
            }
            read
        };
        // Whether this read looked at every stream it names (a failed read looked at none).
        let mut read_all = !stream_keys.is_empty();
        let reply: Option<StreamReadReply> = match read {
            Ok(reply) => reply,
            // A stream replaced by another type: the next read leaves it out.
            Err(err) if crate::decode::is_wrong_type(&err) => {
                read_all = false;
                if !self.find_not_streams(&stream_keys).await? {
                    // Gone again before it was looked at: no busy loop meanwhile.
                    tokio::time::sleep(LIVE_BLOCK).await;
                }
                None
            }
            Err(err) => return Err(self.manager.redis_error("record: live read", err)),
        };
        let streams = reply.map(|reply| reply.keys).unwrap_or_default();
        // A session whose end its document told has ended once a read of every stream found
        // nothing more in its history and caught up with the logs (its `session_end`, errors
        // and parameter changes come before the document said so); a history that cannot be
        // read (another type) has nothing more to give.
        let caught_up = read_all && streams.iter().all(|stream| stream.ids.len() < PAGE);
        let ending = std::mem::take(&mut self.ending);
        for session_id in ending {
            let history = keys::history(&session_id);
            let unreadable = self.not_streams.contains(&history);
            let more = streams
                .iter()
                .any(|stream| stream.key == history && !stream.ids.is_empty());
            if unreadable || (caught_up && !more) {
                self.ended.insert(session_id);
            } else {
                self.ending.insert(session_id);
            }
        }
        for stream in streams {
            for entry in stream.ids {
                self.cursors.insert(stream.key.clone(), entry.id.clone());
                self.decode_entry(&stream.key, &StreamEntry(&entry), &mut messages);
            }
        }
        let due = self.last_poll.is_none_or(|last| last.elapsed() >= POLL_INTERVAL);
        if due {
            self.last_poll = Some(tokio::time::Instant::now());
            self.poll_documents(Some(now_nanos()), &mut messages).await?;
            // A `session_end` may never come (the event log broken by another client, or used
            // up): a selected session whose document says it ended, or that is gone, is ending.
            let open: Vec<SessionId> = self
                .wanted
                .iter()
                .flatten()
                .filter(|session_id| !self.ended.contains(*session_id) && !self.ending.contains(*session_id))
                .cloned()
                .collect();
            for session_id in open {
                match self.manager.get_stroke_progress(&session_id).await {
                    Ok(
                        None
                        | Some(StrokeProgress {
                            is_executing: false, ..
                        }),
                    ) => {
                        self.ending.insert(session_id);
                    }
                    Ok(Some(_)) => {}
                    // Said once per session; such a session ends with a `session_end` only.
                    Err(err) => {
                        if self.unreadable_docs.insert(session_id.clone()) {
                            tracing::warn!(session = %session_id, error = %err.report(), "cannot read the session's document");
                        }
                    }
                }
            }
            // Streams left out that are streams again (or gone) are read again.
            let left_out: Vec<String> = self.not_streams.iter().cloned().collect();
            for (key, kind) in left_out.iter().zip(self.key_types(&left_out).await?) {
                if is_stream_or_gone(&kind) {
                    self.not_streams.remove(key);
                }
            }
        }
        sort_by_log_time(&mut messages);
        Ok(messages)
    }

    /// The streams read: the history streams, then the three logs.
    fn stream_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cursors
            .keys()
            .filter(|key| key.starts_with(keys::HISTORY_PREFIX))
            .cloned()
            .collect();
        keys.extend([keys::EVENT_LOG, keys::ERROR_LOG, keys::PARAM_LOG].map(str::to_owned));
        keys
    }

    /// The type of each of `keys` (`TYPE`), in order; see [`is_stream_or_gone`].
    async fn key_types(&self, keys: &[String]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("TYPE").arg(key);
        }
        pipe.query_async(&mut self.manager.connection())
            .await
            .map_err(|err| self.manager.redis_error("record: key types", err))
    }

    /// Finds which of `keys` hold another type than a stream, leaves them out of live reads and
    /// counts each as one corrupt entry; false when none does.
    async fn find_not_streams(&mut self, keys: &[String]) -> Result<bool> {
        let mut found = false;
        for (key, kind) in keys.iter().zip(self.key_types(keys).await?) {
            if !is_stream_or_gone(&kind) {
                self.stats.corrupt += 1;
                tracing::warn!(key = %key, kind = %kind, "a stream the recorder reads holds another type; left out");
                self.not_streams.insert(key.clone());
                found = true;
            }
        }
        Ok(found)
    }

    /// A key of the wrong type reads as an empty stream and counts as one corrupt entry.
    fn wrong_type(&mut self, key: &str, err: redis::RedisError) -> Result<RedisValue> {
        if err.code() == Some("WRONGTYPE") {
            self.stats.corrupt += 1;
            tracing::warn!(key, "not a stream; skipped");
            return Ok(RedisValue::Array(Vec::new()));
        }
        Err(self.manager.redis_error("record: read stream", err))
    }

    /// The entries of an `XRANGE` reply; a malformed reply counts as corrupt.
    fn stream_entries(&mut self, key: &str, reply: RedisValue) -> Vec<StreamId> {
        match redis::from_redis_value::<StreamRangeReply>(reply) {
            Ok(reply) => reply.ids,
            Err(err) => {
                self.stats.corrupt += 1;
                tracing::warn!(key, error = %err, "unreadable stream reply; skipped");
                Vec::new()
            }
        }
    }

    /// Turns one stream entry into a message (or counts it corrupt), applying the selection.
    fn decode_entry(&mut self, key: &str, entry: &impl Entry, out: &mut Vec<Message>) {
        let id = entry.id();
        let Some(log_ms) = id_millis(id) else {
            return self.corrupt(key, id, "unparsable stream id");
        };
        let log_time = log_ms.saturating_mul(1_000_000);
        let text = |field: &str| entry.text(field);
        if let Some(session) = key.strip_prefix(keys::HISTORY_PREFIX) {
            match history_entry(key, id, text) {
                Ok(history) => self.push(
                    out,
                    Topic::Progress,
                    log_time,
                    None,
                    &ProgressRecord {
                        session_id: session.to_owned(),
                        entry: history,
                    },
                ),
                Err(err) => self.corrupt(key, id, &err.to_string()),
            }
            return;
        }
        let before_window = self.since_ms.is_some_and(|since| log_ms < since);
        let (Some(channel), Some(payload)) = (text("channel"), text("payload")) else {
            if key == keys::PARAM_LOG {
                return self.decode_param(entry, log_time, before_window, out);
            }
            return self.corrupt(key, id, "missing channel or payload");
        };
        if payload.len() > MAX_DOCUMENT_BYTES {
            return self.corrupt(key, id, "payload over 1 MiB");
        }
        let event: Value = match serde_json::from_str(&payload) {
            Ok(event @ Value::Object(_)) => event,
            Ok(_) => return self.corrupt(key, id, "payload is not a JSON object"),
            Err(err) => return self.corrupt(key, id, &format!("payload is not JSON: {err}")),
        };
        let publish_time = event.get("timestamp").and_then(Value::as_str).and_then(timestamp_nanos);
        if key == keys::ERROR_LOG {
            if before_window {
                return;
            }
            match serde_json::from_value::<ErrorEvent>(event) {
                Ok(error) => {
                    let record = ErrorRecord {
                        id: id.to_owned(),
                        channel,
                        error,
                    };
                    self.push(out, Topic::Errors, log_time, publish_time, &record);
                }
                Err(err) => self.corrupt(key, id, &format!("not an error event: {err}")),
            }
            return;
        }
        self.note_session_event(&event, &channel);
        let session = event.get("session_id").and_then(Value::as_str);
        let keep = match (&self.wanted, session) {
            (None, _) => true,
            (Some(wanted), Some(session)) => wanted.iter().any(|wanted| wanted.as_str() == session),
            (Some(_), None) => !before_window,
        };
        if keep {
            let record = EventRecord {
                id: id.to_owned(),
                channel,
                event,
            };
            self.push(out, Topic::Events, log_time, publish_time, &record);
        }
    }

    /// Tracks session starts (a new history stream to read, with `--all`) and ends.
    fn note_session_event(&mut self, event: &Value, channel: &str) {
        if channel != keys::SESSION_EVENTS {
            return;
        }
        let Some(session_id) = event
            .get("session_id")
            .and_then(Value::as_str)
            .and_then(|id| SessionId::new(id).ok())
        else {
            return;
        };
        match event.get("type").and_then(Value::as_str) {
            Some(event_types::SESSION_START) if self.wanted.is_none() => {
                self.cursors
                    .entry(keys::history(&session_id))
                    .or_insert_with(|| "0".to_owned());
            }
            Some(event_types::SESSION_END) => {
                self.ended.insert(session_id);
            }
            _ => {}
        }
    }

    fn decode_param(&mut self, entry: &impl Entry, log_time: u64, before_window: bool, out: &mut Vec<Message>) {
        if before_window {
            return;
        }
        let text = |field: &str| entry.text(field);
        let json = |field: &str| text(field).and_then(|raw| serde_json::from_str::<Value>(&raw).ok());
        let number = |field: &str| text(field).and_then(|raw| raw.parse::<u64>().ok());
        let record = (|| {
            Some(ParamRecord {
                id: entry.id().to_owned(),
                seq: number("seq")?,
                name: text("name")?,
                param_type: text("type")?,
                version: number("version")?,
                op: text("op")?,
                actor: text("actor")?,
                time: text("time")?,
                old: json("old"),
                new: json("new")?,
            })
        })();
        match record {
            Some(record) => {
                let publish_time = timestamp_nanos(&record.time);
                self.push(out, Topic::Params, log_time, publish_time, &record);
            }
            None => self.corrupt(keys::PARAM_LOG, entry.id(), "missing or malformed field"),
        }
    }

    /// Reads the robot states and heartbeats; records those whose document time is new. With
    /// `seen_at`, they are logged at that time (live); without, at their own time (backlog).
    async fn poll_documents(&mut self, seen_at: Option<u64>, out: &mut Vec<Message>) -> Result<()> {
        let robot_keys = self.manager.scan(&format!("{}*", keys::ROBOT_STATE_PREFIX)).await?;
        let robots = self
            .manager
            .read_documents::<Value>(
                robot_keys,
                keys::ROBOT_STATE_PREFIX,
                keys::FIELD_STATE,
                ("robot state", "node id"),
            )
            .await?;
        let health_keys = self.manager.scan(keys::HEALTH_PATTERN).await?;
        let healths = self
            .manager
            .read_documents::<Value>(
                health_keys,
                keys::HEALTH_PREFIX,
                keys::FIELD_HEALTH,
                ("node health", "node id"),
            )
            .await?;
        let all = robots
            .into_iter()
            .map(|entry| (Topic::RobotState, entry))
            .chain(healths.into_iter().map(|entry| (Topic::NodeHealth, entry)));
        for (topic, entry) in all {
            let value = match entry.value {
                Ok(value) => value,
                Err(err) => {
                    if self.seen_docs.insert(entry.key.clone(), String::new()).is_none() {
                        self.corrupt(&entry.key, "-", &err.to_string());
                    }
                    continue;
                }
            };
            let stamp = value
                .get("timestamp")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if self.seen_docs.get(&entry.key) == Some(&stamp) {
                continue;
            }
            self.seen_docs.insert(entry.key.clone(), stamp.clone());
            // Decode into the typed document so the message matches its schema.
            let data = match topic {
                Topic::RobotState => serde_json::from_value::<RobotState>(value).map(|doc| serde_json::to_vec(&doc)),
                _ => serde_json::from_value::<NodeHealth>(value).map(|doc| serde_json::to_vec(&doc)),
            };
            let Ok(Ok(data)) = data else {
                self.corrupt(&entry.key, "-", "not the document the wire contract describes");
                continue;
            };
            let doc_time = timestamp_nanos(&stamp);
            if seen_at.is_none()
                && let (Some(since), Some(doc_time)) = (self.since_ms, doc_time)
                && doc_time / 1_000_000 < since
            {
                continue;
            }
            let Some(log_time) = seen_at.or(doc_time) else {
                self.corrupt(&entry.key, "-", "no timestamp");
                continue;
            };
            self.count(topic);
            out.push(Message {
                topic,
                log_time,
                publish_time: doc_time.unwrap_or(log_time),
                data,
            });
        }
        Ok(())
    }

    fn push<T: Serialize>(
        &mut self,
        out: &mut Vec<Message>,
        topic: Topic,
        log_time: u64,
        publish_time: Option<u64>,
        record: &T,
    ) {
        match serde_json::to_vec(record) {
            Ok(data) => {
                self.count(topic);
                out.push(Message {
                    topic,
                    log_time,
                    publish_time: publish_time.unwrap_or(log_time),
                    data,
                });
            }
            // Serializing our own types to a Vec cannot fail; count it rather than panic.
            Err(err) => self.corrupt(topic.name(), "-", &err.to_string()),
        }
    }

    fn count(&mut self, topic: Topic) {
        *self.stats.messages.entry(topic.name()).or_default() += 1;
    }

    fn corrupt(&mut self, key: &str, id: &str, reason: &str) {
        self.stats.corrupt += 1;
        tracing::warn!(key, id, reason = ?reason, "corrupt entry skipped");
    }
}

/// A stream being merged by [`Recorder::backlog_with`].
struct Pending {
    key: String,
    /// Pages from its reader task; `None` once it has ended (or for the documents).
    pages: Option<tokio::sync::mpsc::Receiver<Page>>,
    /// Decoded messages not yet handed out, in log-time order.
    buffer: VecDeque<Message>,
}

/// One `XRANGE` page of a stream, parsed, or the error that ended its reading.
type Page = redis::RedisResult<Vec<RawEntry>>;

/// Reads `key` in `XRANGE` pages after `after` (from the start with `None`) and sends each
/// page, or the error that ends the stream, until a short page or the receiver is gone.
async fn read_pages(
    mut connection: crate::connection::Shared,
    key: String,
    mut after: Option<String>,
    pages: tokio::sync::mpsc::Sender<Page>,
) {
    loop {
        let start = after.as_ref().map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: redis::RedisResult<RedisValue> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut connection)
            .await;
        let full = matches!(&reply, Ok(RedisValue::Array(entries)) if entries.len() == PAGE);
        let page = reply.map(|reply| parse_entries(&reply));
        let next = match &page {
            Ok(entries) if full => entries.last().map(|entry| entry.id_text.clone()),
            _ => None,
        };
        if pages.send(page).await.is_err() {
            return;
        }
        match next {
            Some(id) => after = Some(id),
            None => return,
        }
    }
}

/// A stream entry as decoding needs it: its id and its fields as text.
trait Entry {
    /// The stream id, `<ms>-<seq>`.
    fn id(&self) -> &str;
    /// The field `name`, when it is there and is UTF-8.
    fn text(&self, name: &str) -> Option<String>;
}

/// An entry of a reply decoded by the redis crate.
struct StreamEntry<'a>(&'a StreamId);

impl Entry for StreamEntry<'_> {
    fn id(&self) -> &str {
        &self.0.id
    }

    fn text(&self, name: &str) -> Option<String> {
        self.0.get::<String>(name)
    }
}

impl Entry for RawEntry {
    fn id(&self) -> &str {
        &self.id_text
    }

    fn text(&self, name: &str) -> Option<String> {
        self.field(name).map(str::to_owned)
    }
}

/// Sorts by log time, keeping the read order of equal times.
fn sort_by_log_time(messages: &mut [Message]) {
    messages.sort_by_key(|message| message.log_time);
}

/// The milliseconds of a stream id `<ms>-<seq>`.
fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// A wire timestamp in nanoseconds since the epoch.
fn timestamp_nanos(text: &str) -> Option<u64> {
    let timestamp = crate::Timestamp::parse(text).ok()?;
    u64::try_from(timestamp.as_datetime().timestamp_nanos_opt()?).ok()
}

/// The current time in nanoseconds since the epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes messages to an MCAP file: one JSON-encoded channel per [`Topic`], each with its JSON
/// Schema, uncompressed chunks with indexes and a summary.
pub struct McapSink<W: Write + Seek> {
    writer: mcap::Writer<W>,
    /// The MCAP channel id of each topic, in [`Topic::ALL`] order.
    channel_ids: [u16; 6],
    sequence: u32,
}

impl<W: Write + Seek> McapSink<W> {
    /// Starts a file: header, schemas and channels.
    ///
    /// # Errors
    ///
    /// [`Error::Recording`] when writing fails.
    pub fn new(out: W) -> Result<McapSink<W>> {
        let options = mcap::WriteOptions::new()
            .compression(None)
            .profile("")
            .library(concat!("tatbot-state ", env!("CARGO_PKG_VERSION")));
        let mut writer = options.create(out).map_err(mcap_error)?;
        let mut channel_ids = [0; 6];
        for (topic, channel_id) in Topic::ALL.into_iter().zip(&mut channel_ids) {
            let schema_id = writer
                .add_schema(topic.schema_name(), "jsonschema", topic.json_schema().as_bytes())
                .map_err(mcap_error)?;
            *channel_id = writer
                .add_channel(schema_id, topic.name(), "json", &BTreeMap::new())
                .map_err(mcap_error)?;
        }
        Ok(McapSink {
            writer,
            channel_ids,
            sequence: 0,
        })
    }

    /// Appends one message.
    ///
    /// # Errors
    ///
    /// [`Error::Recording`] when writing fails.
    pub fn write(&mut self, message: &Message) -> Result<()> {
        let index = Topic::ALL.iter().position(|topic| *topic == message.topic).unwrap_or(0);
        self.sequence = self.sequence.wrapping_add(1);
        let header = mcap::records::MessageHeader {
            channel_id: self.channel_ids[index],
            sequence: self.sequence,
            log_time: message.log_time,
            publish_time: message.publish_time,
        };
        self.writer
            .write_to_known_channel(&header, &message.data)
            .map_err(mcap_error)
    }

    /// Writes the indexes and summary and returns the output.
    ///
    /// # Errors
    ///
    /// [`Error::Recording`] when writing fails.
    pub fn finish(mut self) -> Result<W> {
        self.writer.finish().map_err(mcap_error)?;
        Ok(self.writer.into_inner())
    }
}

fn mcap_error(err: mcap::McapError) -> Error {
    Error::Recording(format!("writing MCAP: {err}"))
}

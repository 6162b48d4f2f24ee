//! Reading an MCAP recording back and playing it into a Redis.
//!
//! [`read_recording`] checks the whole file before anything is written: it must be MCAP, every
//! channel must be one of ours ([`Topic`]) in JSON, and a message that does not decode as its
//! topic's record is counted in [`Recording::corrupt`] and left out. A file that is not MCAP, is
//! truncated, or has a channel we do not know is one error whose message says which.
//!
//! [`replay`] then writes each message at its original offset from the first, divided by the
//! rate, as the writers originally did: a history entry is `XADD`ed to its stream and merged into
//! the session's progress document; an event is stored (its session document first, for session
//! events), appended to `tatbot:events` and published; robot states and heartbeats are stored
//! (heartbeats with their TTL); errors go to `tatbot:errors` (the event itself is in the events
//! channel). So the dashboard, the monitor, MCP and `watch` show the session as it happened.
//! Every timestamp written is the replay's time; the original ones stay in the file.
//!
//! Messages due at the same moment go to Redis in one pipeline of at most [`BATCH`] messages,
//! and the next pipeline is built and sent while Redis still works on the one before (two in
//! flight, in order on one connection), which is what lets a fast replay reach Redis's
//! pipelined throughput. Within one pipeline a session's progress document is written once,
//! after its history entries, in the state the last of them left it.
//!
//! # Collisions
//!
//! With [`ReplayOptions::id_prefix`] every node id and session id is renamed to the prefix
//! followed by the original (`replay.stroke_hog_1795626937`, `replay.hog`), so a replay into a
//! live server writes only keys of its own and never touches a live session's or node's; an id
//! that would grow past 64 characters is skipped and counted. Parameter changes rewrite the audit
//! log, so they are replayed only when [`ReplayOptions::params`] is set (a private server).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use mcap::sans_io::linear_reader::{LinearReadEvent, LinearReader, LinearReaderOptions};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::ids::{NodeId, SessionId};
use crate::keys;
use crate::manager::StateManager;
use crate::model::{MAX_DOCUMENT_BYTES, NodeHealth, RobotState, StrokeProgress, event_types};
use crate::record::{ErrorRecord, EventRecord, ParamRecord, ProgressRecord, Topic};
use crate::timestamp::Timestamp;

/// Messages written per pipeline at most.
pub const BATCH: usize = 1_000;
/// The audit log's bound (docs/WIRE.md, Parameters).
const PARAM_LOG_MAXLEN: usize = 10_000;
/// The MCAP magic every file starts (and ends) with.
const MCAP_MAGIC: &[u8] = b"\x89MCAP0\r\n";

/// A decoded recording.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    /// The messages in file order, with their log times.
    pub items: Vec<Item>,
    /// Messages that did not decode as their topic's record, left out.
    pub corrupt: u64,
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Log time, nanoseconds since the Unix epoch.
    pub log_time: u64,
    /// The document.
    pub record: Record,
}

/// A decoded message, by topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A history entry.
    Progress(ProgressRecord),
    /// An event-log entry.
    Event(EventRecord),
    /// A robot state document.
    RobotState(Box<RobotState>),
    /// A heartbeat document.
    NodeHealth(Box<NodeHealth>),
    /// An error-log entry.
    Error(Box<ErrorRecord>),
    /// A parameter change.
    Param(ParamRecord),
}

/// Decodes an MCAP file written by [`crate::record::McapSink`] (or any MCAP with our channels).
///
/// # Errors
///
/// [`Error::Recording`], one line: not MCAP, truncated or corrupt, compressed, a channel we do not
/// know, or a message encoding other than JSON.
pub fn read_recording(bytes: &[u8]) -> Result<Recording> {
    if !bytes.starts_with(MCAP_MAGIC) {
        return Err(Error::Recording(
            "not an MCAP file (it does not start with the MCAP magic); record one with `tatbot-state record`"
                .to_owned(),
        ));
    }
    let mut reader = Reader::default();
    // The crate's `MessageStream` reads chunk contents with no record length limit, and a
    // length near 2^64 then overflows inside it (a panic in debug builds, found by the unit test
    // below); its sans-io reader with the file's size as the limit refuses such a record.
    // Chunks come out whole and are walked here: the crate's own walk subtracts a record's
    // declared length from what is left of its chunk unchecked (an overflow panic in debug
    // builds, found by the `replay_reader` fuzz target).
    let options = LinearReaderOptions::default()
        .with_record_length_limit(bytes.len())
        .with_emit_chunks(true);
    let mut linear = LinearReader::new_with_options(options);
    let mut rest = bytes;
    while let Some(event) = linear.next_event() {
        match event.map_err(read_error)? {
            LinearReadEvent::ReadRequest(need) => {
                let len = need.min(rest.len());
                linear.insert(len).copy_from_slice(&rest[..len]);
                linear.notify_read(len);
                rest = &rest[len..];
            }
            LinearReadEvent::Record { data, opcode } => reader.record(opcode, data)?,
        }
    }
    Ok(reader.recording)
}

/// What [`read_recording`] has read so far.
#[derive(Default)]
struct Reader {
    recording: Recording,
    /// Channel id -> topic, from the channel records seen so far.
    channels: HashMap<u16, Topic>,
}

impl Reader {
    fn record(&mut self, opcode: u8, data: &[u8]) -> Result<()> {
        // Only chunks, channels and messages matter here, and only they are parsed: the crate's
        // parser reserves a string's declared length before reading it, so a 90-byte record
        // claiming a 3.7 GB string took 3.7 GB (found by the `replay_reader` fuzz target).
        // A message has no length-prefixed field; a channel's are checked first.
        match opcode {
            mcap::records::op::CHUNK => return self.chunk(data),
            mcap::records::op::MESSAGE => {}
            mcap::records::op::CHANNEL => check_channel_lengths(data)?,
            _ => return Ok(()),
        }
        match mcap::parse_record(opcode, data).map_err(read_error)? {
            mcap::records::Record::Channel(channel) => {
                let Some(topic) = Topic::from_name(&channel.topic) else {
                    return Err(Error::Recording(format!(
                        "unknown channel {:?} in the recording; tatbot recordings have {}",
                        channel.topic,
                        Topic::ALL.map(Topic::name).join(", ")
                    )));
                };
                if channel.message_encoding != "json" {
                    return Err(Error::Recording(format!(
                        "channel {} is encoded as {:?}, not json; only tatbot's own recordings replay",
                        channel.topic, channel.message_encoding
                    )));
                }
                self.channels.insert(channel.id, topic);
            }
            mcap::records::Record::Message { header, data } => {
                let Some(topic) = self.channels.get(&header.channel_id) else {
                    return Err(Error::Recording(format!(
                        "corrupt MCAP file: message {} names channel {}, which no channel record declares",
                        header.sequence, header.channel_id
                    )));
                };
                match decode(*topic, &data) {
                    Some(record) => self.recording.items.push(Item {
                        log_time: header.log_time,
                        record,
                    }),
                    None => {
                        self.recording.corrupt += 1;
                        tracing::warn!(
                            topic = topic.name(),
                            sequence = header.sequence,
                            "message does not decode; skipped"
                        );
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// An uncompressed chunk: its header (start and end time, size, CRC, compression, records
    /// length), then records, each opcode, length and body, every length checked against what is
    /// left of the chunk.
    fn chunk(&mut self, body: &[u8]) -> Result<()> {
        let corrupt = |what: &str| Error::Recording(format!("corrupt MCAP file: {what}"));
        let compression_len = le_u32(body, 28).ok_or_else(|| corrupt("a chunk's header is cut short"))?;
        let compression = body
            .get(32..32 + compression_len)
            .ok_or_else(|| corrupt("a chunk's compression name overruns the chunk"))?;
        if !compression.is_empty() {
            return Err(Error::Recording(format!(
                "corrupt MCAP file: chunk compressed with {:?} (compressed chunks: this build reads uncompressed recordings only)",
                String::from_utf8_lossy(compression)
            )));
        }
        let records_at = 32 + compression_len + 8;
        let records_len = le_u64(body, records_at - 8).ok_or_else(|| corrupt("a chunk's header is cut short"))?;
        let mut records = records_at
            .checked_add(records_len)
            .and_then(|end| body.get(records_at..end))
            .ok_or_else(|| corrupt("a chunk's records overrun the chunk"))?;
        while !records.is_empty() {
            let (&opcode, after) = records.split_first().expect("not empty");
            let len = le_u64(after, 0)
                .filter(|len| *len <= after.len() - 8)
                .ok_or_else(|| corrupt("a record overruns its chunk"))?;
            // A chunk holds schemas, channels and messages; one inside another would make this
            // walk recurse as deep as the file nests them (49 bytes a level: a stack overflow).
            if opcode == mcap::records::op::CHUNK {
                return Err(corrupt("a chunk inside a chunk"));
            }
            self.record(opcode, &after[8..8 + len])?;
            records = &after[8 + len..];
        }
        Ok(())
    }
}

/// The little-endian `u32` at `at`, as a length.
fn le_u32(body: &[u8], at: usize) -> Option<usize> {
    let bytes = body.get(at..at.checked_add(4)?)?;
    usize::try_from(u32::from_le_bytes(bytes.try_into().ok()?)).ok()
}

/// The little-endian `u64` at `at`, as a length (`None` past the end or beyond `usize`).
fn le_u64(body: &[u8], at: usize) -> Option<usize> {
    let bytes = body.get(at..at.checked_add(8)?)?;
    usize::try_from(u64::from_le_bytes(bytes.try_into().ok()?)).ok()
}

/// Checks that every length prefix of a channel record's body (two strings, then a map of
/// strings with its byte length) stays inside the body, before the crate allocates by them.
fn check_channel_lengths(body: &[u8]) -> Result<()> {
    let corrupt = || Error::Recording("corrupt MCAP file: a channel record's lengths overrun the record".to_owned());
    // id and schema id (u16 each), then topic and message encoding.
    let mut at = 4;
    for _ in 0..2 {
        let len = le_u32(body, at).ok_or_else(corrupt)?;
        at = at
            .checked_add(4 + len)
            .filter(|end| *end <= body.len())
            .ok_or_else(corrupt)?;
    }
    let map_len = le_u32(body, at).ok_or_else(corrupt)?;
    let map_end = (at + 4)
        .checked_add(map_len)
        .filter(|end| *end <= body.len())
        .ok_or_else(corrupt)?;
    at += 4;
    // The crate reads a key and then its value while it is inside the map, so both must fit.
    while at < map_end {
        for _ in 0..2 {
            let len = le_u32(body, at)
                .filter(|len| at + 4 + len <= map_end)
                .ok_or_else(corrupt)?;
            at += 4 + len;
        }
    }
    Ok(())
}

fn read_error(err: mcap::McapError) -> Error {
    let hint = match err {
        mcap::McapError::UnexpectedEof | mcap::McapError::UnexpectedEoc => {
            " (the file is truncated: was the recorder killed?)"
        }
        mcap::McapError::UnsupportedCompression(_) => {
            " (compressed chunks: this build reads uncompressed recordings only)"
        }
        _ => "",
    };
    Error::Recording(format!("corrupt MCAP file: {err}{hint}"))
}

fn decode(topic: Topic, data: &[u8]) -> Option<Record> {
    if data.len() > MAX_DOCUMENT_BYTES {
        return None;
    }
    Some(match topic {
        Topic::Progress => Record::Progress(serde_json::from_slice(data).ok()?),
        Topic::Events => {
            let record: EventRecord = serde_json::from_slice(data).ok()?;
            if !record.event.get("type").is_some_and(Value::is_string) {
                return None;
            }
            Record::Event(record)
        }
        Topic::RobotState => Record::RobotState(Box::new(serde_json::from_slice(data).ok()?)),
        Topic::NodeHealth => Record::NodeHealth(Box::new(serde_json::from_slice(data).ok()?)),
        Topic::Errors => Record::Error(Box::new(serde_json::from_slice(data).ok()?)),
        Topic::Params => Record::Param(serde_json::from_slice(data).ok()?),
    })
}

/// How to play a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOptions {
    /// Speed: 1.0 is the original timing, 10.0 ten times faster. Finite and above zero.
    pub rate: f64,
    /// Prepended to every node and session id (see the module docs, Collisions); empty keeps them.
    pub id_prefix: String,
    /// Also append the parameter changes to the audit log.
    pub params: bool,
}

/// What a replay wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Messages written.
    pub written: u64,
    /// Messages skipped (an id too long with the prefix, or parameters not asked for).
    pub skipped: u64,
    /// True when it was cancelled before the end.
    pub cancelled: bool,
}

/// Plays `recording` into the server of `manager`; see the [module docs](self).
/// `progress` is called after each pipeline with the number of messages handled so far.
///
/// # Errors
///
/// [`Error::InvalidInput`] for a rate that is not a positive finite number, or a Redis failure.
pub async fn replay(
    manager: &StateManager,
    recording: &Recording,
    options: &ReplayOptions,
    cancel: &CancellationToken,
    mut progress: impl FnMut(u64),
) -> Result<ReplayStats> {
    if !(options.rate.is_finite() && options.rate > 0.0) {
        return Err(Error::InvalidInput(format!(
            "rate {} is not a positive number; use 1 for the original speed, 10 for ten times faster",
            options.rate
        )));
    }
    let mut writer = Writer {
        manager,
        options,
        docs: HashMap::new(),
        dirty: HashSet::new(),
        stats: ReplayStats::default(),
    };
    let Some(first) = recording.items.iter().map(|item| item.log_time).min() else {
        return Ok(writer.stats);
    };
    // Items in log-time order; a stable sort keeps the file order of equal times.
    let mut order: Vec<&Item> = recording.items.iter().collect();
    order.sort_by_key(|item| item.log_time);
    let offset = |item: &Item| Duration::from_secs_f64((item.log_time - first) as f64 / 1e9 / options.rate);
    let start = Instant::now();
    let connection = manager.connection();
    // The pipeline sent last and not yet answered, with the messages handled once it is.
    let mut in_flight: Option<(Sending, usize)> = None;
    let mut next = 0;
    while next < order.len() {
        let due = start + offset(order[next]);
        if due > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = cancel.cancelled() => {
                    writer.stats.cancelled = true;
                    return Ok(writer.stats);
                }
            }
        }
        let elapsed = start.elapsed();
        let mut pipe = redis::pipe();
        let batch_end = order[next..]
            .iter()
            .take(BATCH)
            .position(|item| offset(item) > elapsed)
            .map_or((next + BATCH).min(order.len()), |position| next + position.max(1));
        let now = Timestamp::now();
        for item in &order[next..batch_end] {
            writer.add(&mut pipe, &item.record, &now);
        }
        writer.flush_docs(&mut pipe);
        let mut sending = {
            let mut connection = connection.clone();
            Box::pin(async move { pipe.query_async::<()>(&mut connection).await }) as Sending
        };
        // One poll hands the pipeline to the connection's writer, behind the one in flight:
        // Redis runs them in this order.
        let sent_at_once = std::future::poll_fn(|context| Poll::Ready(sending.as_mut().poll(context))).await;
        if let Some((previous, done)) = in_flight.take() {
            previous.await.map_err(|err| manager.redis_error("replay", err))?;
            progress(done as u64);
        }
        match sent_at_once {
            Poll::Ready(result) => {
                result.map_err(|err| manager.redis_error("replay", err))?;
                progress(batch_end as u64);
            }
            Poll::Pending => in_flight = Some((sending, batch_end)),
        }
        next = batch_end;
    }
    if let Some((last, done)) = in_flight {
        last.await.map_err(|err| manager.redis_error("replay", err))?;
        progress(done as u64);
    }
    Ok(writer.stats)
}

/// A pipeline handed to the connection, resolving when Redis has answered it.
type Sending = Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>;

/// Turns records into commands, keeping each session's document as the replay built it.
struct Writer<'a> {
    manager: &'a StateManager,
    options: &'a ReplayOptions,
    /// The progress document of each replayed session (by its replayed id).
    docs: HashMap<SessionId, StrokeProgress>,
    /// Sessions whose document changed since it was last queued for writing.
    dirty: HashSet<SessionId>,
    stats: ReplayStats,
}

impl Writer<'_> {
    fn add(&mut self, pipe: &mut redis::Pipeline, record: &Record, now: &Timestamp) {
        let written = match record {
            Record::Progress(record) => self.progress(pipe, record, now),
            Record::Event(record) => self.event(pipe, record, now),
            Record::RobotState(state) => self.robot_state(pipe, state, now),
            Record::NodeHealth(health) => self.node_health(pipe, health, now),
            Record::Error(record) => self.error(pipe, record, now),
            Record::Param(record) if self.options.params => self.param(pipe, record),
            Record::Param(_) => None,
        };
        match written {
            Some(()) => self.stats.written += 1,
            None => self.stats.skipped += 1,
        }
    }

    fn session(&self, id: &str) -> Option<SessionId> {
        SessionId::new(format!("{}{id}", self.options.id_prefix))
            .inspect_err(|err| tracing::warn!(error = %err, "session id unusable in the replay; message skipped"))
            .ok()
    }

    fn node(&self, id: &str) -> Option<NodeId> {
        NodeId::new(format!("{}{id}", self.options.id_prefix))
            .inspect_err(|err| tracing::warn!(error = %err, "node id unusable in the replay; message skipped"))
            .ok()
    }

    /// The session's document, made executing when the recording did not start with it.
    fn doc(
        &mut self,
        pipe: &mut redis::Pipeline,
        session_id: &SessionId,
        node_id: &NodeId,
        now: &Timestamp,
    ) -> &mut StrokeProgress {
        self.docs.entry(session_id.clone()).or_insert_with(|| {
            pipe.zadd(keys::SESSION_INDEX, session_id.as_str(), now.unix_millis())
                .ignore();
            new_doc(node_id, now)
        })
    }

    /// Queues the document of every session a history entry changed since it was last written.
    fn flush_docs(&mut self, pipe: &mut redis::Pipeline) {
        for session_id in std::mem::take(&mut self.dirty) {
            self.store_doc(pipe, &session_id);
        }
    }

    fn store_doc(&mut self, pipe: &mut redis::Pipeline, session_id: &SessionId) {
        self.dirty.remove(session_id);
        if let Some(doc) = self.docs.get(session_id)
            && let Ok(json) = serde_json::to_string(doc)
        {
            pipe.hset(keys::progress(session_id), keys::FIELD_PROGRESS, json)
                .ignore();
        }
    }

    fn progress(&mut self, pipe: &mut redis::Pipeline, record: &ProgressRecord, now: &Timestamp) -> Option<()> {
        let session_id = self.session(&record.session_id)?;
        let node_id = self.node(&record.entry.node_id)?;
        let entry = &record.entry;
        let doc = self.doc(pipe, &session_id, &node_id, now);
        doc.timestamp = *now;
        doc.node_id = node_id.to_string();
        doc.stroke_idx = entry.stroke_idx;
        doc.pose_idx = entry.pose_idx;
        doc.stroke_description_l.clone_from(&entry.description_l);
        doc.stroke_description_r.clone_from(&entry.description_r);
        // Written once per pipeline (flush_docs), or with the next event that writes it.
        self.dirty.insert(session_id.clone());
        let maxlen = redis::streams::StreamMaxlen::Approx(self.manager.config().history_maxlen);
        let fields = [
            ("stroke_idx", entry.stroke_idx.to_string()),
            ("pose_idx", entry.pose_idx.to_string()),
            ("description_l", entry.description_l.clone()),
            ("description_r", entry.description_r.clone()),
            ("node_id", node_id.to_string()),
        ];
        pipe.xadd_maxlen(keys::history(&session_id), maxlen, "*", &fields)
            .ignore();
        Some(())
    }

    fn event(&mut self, pipe: &mut redis::Pipeline, record: &EventRecord, now: &Timestamp) -> Option<()> {
        let mut event = record.event.clone();
        let object = event.as_object_mut()?;
        let node_id = match object.get("node_id").and_then(Value::as_str) {
            Some(node) => Some(self.node(node)?),
            None => None,
        };
        let session_id = match object.get("session_id").and_then(Value::as_str) {
            Some(session) => Some(self.session(session)?),
            None => None,
        };
        if let Some(node_id) = &node_id {
            object.insert("node_id".to_owned(), Value::from(node_id.as_str()));
        }
        if let Some(session_id) = &session_id {
            object.insert("session_id".to_owned(), Value::from(session_id.as_str()));
        }
        if object.contains_key("timestamp") {
            object.insert("timestamp".to_owned(), Value::from(now.to_string()));
        }
        let event_type = object
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let (Some(session_id), true) = (&session_id, record.channel == keys::SESSION_EVENTS) {
            let node_id = node_id.clone().or_else(|| self.node("replay"))?;
            self.session_event(pipe, session_id, &node_id, &event_type, &event, now);
        }
        // The plan's size travels in progress events only (a session start has no stroke length).
        if let (Some(session_id), event_types::PROGRESS_UPDATE) = (&session_id, event_type.as_str())
            && let Some(doc) = self.docs.get_mut(session_id)
        {
            doc.total_strokes = event
                .get("total_strokes")
                .and_then(Value::as_i64)
                .unwrap_or(doc.total_strokes);
            doc.stroke_length = event
                .get("stroke_length")
                .and_then(Value::as_i64)
                .unwrap_or(doc.stroke_length);
            self.store_doc(pipe, session_id);
        }
        let payload = serde_json::to_string(&event).ok()?;
        let maxlen = redis::streams::StreamMaxlen::Approx(self.manager.config().event_log_maxlen);
        pipe.xadd_maxlen(
            keys::EVENT_LOG,
            maxlen,
            "*",
            &[("channel", record.channel.as_str()), ("payload", payload.as_str())],
        )
        .ignore();
        pipe.publish(&record.channel, payload).ignore();
        Some(())
    }

    fn session_event(
        &mut self,
        pipe: &mut redis::Pipeline,
        session_id: &SessionId,
        node_id: &NodeId,
        event_type: &str,
        event: &Value,
        now: &Timestamp,
    ) {
        let retention = self.manager.config().session_retention;
        let doc = self.doc(pipe, session_id, node_id, now);
        doc.timestamp = *now;
        match event_type {
            event_types::SESSION_START => {
                *doc = new_doc(node_id, now);
                doc.total_strokes = event.get("total_strokes").and_then(Value::as_i64).unwrap_or(0);
                if let Some(scene) = event.get("scene_name").and_then(Value::as_str) {
                    scene.clone_into(&mut doc.scene_name);
                }
            }
            event_types::SESSION_END => {
                doc.is_executing = false;
                doc.is_paused = false;
            }
            event_types::SESSION_PAUSE => doc.is_paused = true,
            event_types::SESSION_RESUME => doc.is_paused = false,
            _ => return,
        }
        self.store_doc(pipe, session_id);
        if event_type == event_types::SESSION_END {
            let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
            pipe.expire(keys::progress(session_id), seconds).ignore();
            pipe.expire(keys::history(session_id), seconds).ignore();
        }
    }

    fn robot_state(&mut self, pipe: &mut redis::Pipeline, state: &RobotState, now: &Timestamp) -> Option<()> {
        let node_id = self.node(&state.node_id)?;
        let mut state = state.clone();
        state.node_id = node_id.to_string();
        state.timestamp = *now;
        let json = serde_json::to_string(&state).ok()?;
        pipe.hset_multiple(
            keys::robot_state(&node_id),
            &[(keys::FIELD_STATE, json), (keys::FIELD_LAST_UPDATED, now.to_string())],
        )
        .ignore();
        Some(())
    }

    fn node_health(&mut self, pipe: &mut redis::Pipeline, health: &NodeHealth, now: &Timestamp) -> Option<()> {
        let node_id = self.node(&health.node_id)?;
        let mut health = health.clone();
        health.node_id = node_id.to_string();
        health.timestamp = *now;
        health.last_heartbeat = *now;
        let json = serde_json::to_string(&health).ok()?;
        let key = keys::health(&node_id);
        let ttl = i64::try_from(self.manager.config().health_ttl.as_secs()).unwrap_or(60);
        pipe.hset(&key, keys::FIELD_HEALTH, json).ignore();
        pipe.expire(&key, ttl).ignore();
        pipe.zadd(keys::NODE_REGISTRY, node_id.as_str(), now.unix_millis())
            .ignore();
        Some(())
    }

    fn error(&mut self, pipe: &mut redis::Pipeline, record: &ErrorRecord, now: &Timestamp) -> Option<()> {
        let node_id = self.node(&record.error.node_id)?;
        let mut error = record.error.clone();
        error.node_id = node_id.to_string();
        error.timestamp = *now;
        let payload = serde_json::to_string(&error).ok()?;
        let maxlen = redis::streams::StreamMaxlen::Approx(self.manager.config().error_log_maxlen);
        pipe.xadd_maxlen(
            keys::ERROR_LOG,
            maxlen,
            "*",
            &[("channel", record.channel.as_str()), ("payload", payload.as_str())],
        )
        .ignore();
        Some(())
    }

    fn param(&mut self, pipe: &mut redis::Pipeline, record: &ParamRecord) -> Option<()> {
        let mut fields = vec![
            ("seq", record.seq.to_string()),
            ("name", record.name.clone()),
            ("type", record.param_type.clone()),
            ("version", record.version.to_string()),
            ("op", record.op.clone()),
            ("actor", record.actor.clone()),
            ("time", record.time.clone()),
        ];
        if let Some(old) = &record.old {
            fields.push(("old", old.to_string()));
        }
        fields.push(("new", record.new.to_string()));
        let maxlen = redis::streams::StreamMaxlen::Approx(PARAM_LOG_MAXLEN);
        pipe.xadd_maxlen(keys::PARAM_LOG, maxlen, "*", &fields).ignore();
        Some(())
    }
}

fn new_doc(node_id: &NodeId, now: &Timestamp) -> StrokeProgress {
    StrokeProgress {
        timestamp: *now,
        node_id: node_id.to_string(),
        stroke_idx: 0,
        pose_idx: 0,
        total_strokes: 0,
        stroke_length: 0,
        stroke_description_l: String::new(),
        stroke_description_r: String::new(),
        offset_idx_l: 0,
        offset_idx_r: 0,
        is_executing: true,
        is_paused: false,
        scene_name: "default".to_owned(),
        dataset_name: None,
        extra: crate::model::Extra::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that are not a whole recording give a one-line error, never a panic.
    #[test]
    fn bad_bytes_are_one_line_errors() {
        let mut magic_then_garbage = MCAP_MAGIC.to_vec();
        magic_then_garbage.extend_from_slice(&[0xff; 64]);
        for bytes in [&b""[..], b"hello", MCAP_MAGIC, &magic_then_garbage] {
            let err = read_recording(bytes).expect_err("not a recording");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    /// Inputs the `replay_reader` fuzz target found: a record in an uncompressed chunk longer
    /// than the chunk (the crate's walk overflowed: a panic in debug builds), a header
    /// declaring a 3.7 GB string in 90 bytes, and a channel whose metadata map ends after a key,
    /// so the crate read a 4 GB value length from past the map. Each is a one-line error.
    #[test]
    fn fuzz_findings_are_one_line_errors() {
        for bytes in [
            &include_bytes!("../../tests/data/mcap/chunk-record-overrun.mcap")[..],
            include_bytes!("../../tests/data/mcap/huge-string.mcap"),
            include_bytes!("../../tests/data/mcap/map-value-past-the-map.mcap"),
        ] {
            let err = read_recording(bytes).expect_err("corrupt");
            assert!(err.to_string().starts_with("corrupt MCAP file"), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    /// A chunk inside a chunk is refused, not walked: nested a few MB deep, the walk's
    /// recursion would overflow the stack.
    #[test]
    fn a_chunk_inside_a_chunk_is_refused() {
        // An uncompressed chunk's body: 28 bytes of times and sizes, an empty compression name,
        // the records' length, the records.
        let chunk = |records: &[u8]| {
            let mut body = vec![0; 32];
            body.extend_from_slice(&(records.len() as u64).to_le_bytes());
            body.extend_from_slice(records);
            body
        };
        let inner = chunk(&[]);
        let mut record = vec![mcap::records::op::CHUNK];
        record.extend_from_slice(&(inner.len() as u64).to_le_bytes());
        record.extend_from_slice(&inner);
        let err = Reader::default().chunk(&chunk(&record)).expect_err("nested");
        assert_eq!(err.to_string(), "corrupt MCAP file: a chunk inside a chunk");
        Reader::default().chunk(&inner).expect("an empty chunk is fine");
    }

    /// A channel record whose topic claims 4 GB in a record of a few bytes is refused by its
    /// lengths; the CLI test `replay_refuses_huge_declared_lengths` runs the same bytes under
    /// an address-space limit, which the crate's own parser would exceed.
    #[test]
    fn channel_lengths_must_stay_inside_the_record() {
        let mut body = vec![1, 0, 0, 0];
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(b"x");
        assert!(check_channel_lengths(&body).is_err());
        // A well-formed channel: topic "t", encoding "json", a map {"k": "v"}.
        let mut good = vec![1, 0, 0, 0];
        for text in [&b"t"[..], b"json"] {
            good.extend_from_slice(&(text.len() as u32).to_le_bytes());
            good.extend_from_slice(text);
        }
        good.extend_from_slice(&10u32.to_le_bytes());
        for text in [b"k", b"v"] {
            good.extend_from_slice(&1u32.to_le_bytes());
            good.extend_from_slice(text);
        }
        check_channel_lengths(&good).expect("well-formed");
        // A map of 5 bytes: a key "k", then the value's length would lie past the map.
        let mut key_only = good[..good.len() - 14].to_vec();
        key_only.extend_from_slice(&5u32.to_le_bytes());
        key_only.extend_from_slice(&1u32.to_le_bytes());
        key_only.extend_from_slice(b"k");
        key_only.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(check_channel_lengths(&key_only).is_err());
        let mut map_overrun = good.clone();
        let last = map_overrun.len() - 5;
        map_overrun[last..last + 4].copy_from_slice(&9u32.to_le_bytes());
        assert!(check_channel_lengths(&map_overrun).is_err());
    }
}

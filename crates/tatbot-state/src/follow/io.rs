//! The follower's Redis side: its two connections, the snapshot read, and reply parsing.
//!
//! A follower owns two connections: `blocking` runs nothing but `XREAD BLOCK` (and the `XINFO`
//! checks pipelined behind it), so a blocked read never delays another command; `commands`, a
//! multiplexed connection, runs everything else. `blocking` is a [`Direct`] connection, read by
//! the consumer's task inside [`crate::follow::Follower::next`], so a new entry wakes the
//! consumer without a task in between (issue #18). Both are opened here from the manager's endpoint, with the manager's timeouts;
//! the blocking one waits `block` longer for its answers.
//!
//! Replies are parsed by hand from [`redis::Value`] so both RESP2 arrays and RESP3 maps work.
//! Stored values are decoded through `decode.rs`, like every other read path: the same size
//! bound, and a key of the wrong type, a value that does not decode or a key whose id is invalid
//! becomes a [`CorruptEntry`] for the consumer, never a failed read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::connection::ManagerConfig;
use crate::decode;
use crate::direct::Direct;
use crate::error::{Error, Result};
use crate::follow::cursor::Cursor;
use crate::follow::{FollowConfig, LoggedEvent, NodeView, Scope, Snapshot};
use crate::ids::{EntryId, NodeId, SessionId};
use crate::keys;
use crate::manager::{CorruptEntry, invalid_id_key};
use crate::model::{Event, HistoryEntry, MAX_DOCUMENT_BYTES, NodeHealth, RobotState, StrokeProgress};
use crate::sentinel::Locator;

/// Keys per `SCAN` step.
const SCAN_COUNT: usize = 1000;
/// How many log entries a snapshot looks through for its recent non-progress events.
const RECENT_SCAN_FACTOR: usize = 10;

/// The follower's two connections; see the module docs.
#[derive(Clone)]
pub(crate) struct Connections {
    /// Runs only `XREAD BLOCK` and the checks pipelined behind it; only the follower's task
    /// uses it, and drops it with the rest after any failure.
    pub(crate) blocking: Arc<tokio::sync::Mutex<Direct>>,
    /// How long the blocking connection waits for an answer: the response timeout plus the
    /// block.
    pub(crate) blocking_timeout: Duration,
    /// Runs every other command.
    pub(crate) commands: MultiplexedConnection,
    /// The server answers a blocked `XREAD` with the one stream whose write woke it (Redis
    /// before 7.2), so a second `XREAD` of the event log, without `BLOCK`, follows the
    /// blocking one.
    pub(crate) reread: bool,
}

impl Connections {
    /// Opens both connections and checks the server answers.
    pub(crate) async fn open(config: &ManagerConfig, locator: &Locator, block: Duration) -> Result<Connections> {
        // Looked up on every (re)connect: with Sentinel, the master may have moved.
        let client = locator.client().await?;
        let target = locator.current().to_string();
        let mut commands = crate::connection::dedicated(
            &client,
            &target,
            config.connect_timeout,
            config.response_timeout,
            "follow connect",
        )
        .await?;
        let blocking = match Direct::connect(&client, config.connect_timeout).await {
            Ok(Some(direct)) => direct,
            Ok(None) => {
                return Err(Error::UnexpectedReply {
                    operation: "follow connect",
                    detail: format!("{target} is not a TCP address"),
                });
            }
            Err(err) => return Err(Error::from_connect(&target, err)),
        };
        // The server answers; its version, when this user may ask (`INFO`).
        let (ping, info): (redis::RedisResult<String>, redis::RedisResult<String>) = redis::pipe()
            .ignore_errors()
            .cmd("PING")
            .cmd("INFO")
            .arg("server")
            .query_async(&mut commands)
            .await
            .map_err(|err| Error::from_redis("follow ping", err))?;
        ping.map_err(|err| Error::from_redis("follow ping", err))?;
        Ok(Connections {
            blocking: Arc::new(tokio::sync::Mutex::new(blocking)),
            blocking_timeout: config.response_timeout + block,
            commands,
            reread: info.map_or(true, |info| answers_blocked_reads_with_one_stream(&info)),
        })
    }
}

/// Whether the server of this `INFO server` text answers a blocked multi-stream `XREAD` with
/// the woken stream alone: before Redis 7.2, which runs the whole command again instead. An
/// unknown version counts as old (the second read then only costs a little).
fn answers_blocked_reads_with_one_stream(info: &str) -> bool {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(|version| {
            version
                .trim()
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Vec<_>>()
        });
    match version.as_deref() {
        Some([Some(major), Some(minor), ..]) => (*major, *minor) < (7, 2),
        _ => true,
    }
}

/// One raw stream entry: its id and its fields as text.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub(crate) id: EntryId,
    pub(crate) id_text: String,
    pub(crate) fields: Vec<(String, String)>,
}

impl RawEntry {
    /// The field `name`, when the entry has it as text.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What `XINFO STREAM` says about where a stream's ids are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    /// The newest id ever added.
    pub(crate) last_generated: EntryId,
    /// The newest id deleted by `XDEL`; `0-0` when none was (Redis 7.0 leaves it alone when
    /// trimming, so trimming is told by the counts below).
    pub(crate) max_deleted: EntryId,
    /// The oldest entry still present, if any.
    pub(crate) first_entry: Option<EntryId>,
    /// Entries present.
    pub(crate) length: u64,
    /// Entries ever added (Redis 7+); `length` when unknown.
    pub(crate) entries_added: u64,
    /// Whether the server said `entries-added` (Redis 7+), rather than `length` standing in.
    pub(crate) counts_added: bool,
}

impl StreamInfo {
    /// Why reading on after `cursor` would skip something, if it would.
    ///
    /// Trimming removes the oldest entries, so when any were removed (`entries-added` exceeds
    /// `length`) the removed ones all lie before the first entry still present: if that entry
    /// is past `since`, entries after `since` may be gone. That is exact except when the
    /// removed entries end precisely at `since`, where a resync is unneeded but harmless.
    /// An `XDEL` after `since` (`max-deleted-entry-id`) is a gap too. A `last-generated-id`
    /// before `cursor` means the stream went back: Redis lost entries we already delivered, or
    /// the stream was recreated.
    ///
    /// `since` is `cursor` when this answer and the read it checks were taken at one moment.
    /// A follower that checks before it reads passes the cursor from before its last read:
    /// what was deleted while that read waited is found by the next check (see
    /// `FollowTask::read_batch`).
    pub(crate) fn gap_after(&self, key: &str, since: EntryId, cursor: EntryId) -> Option<String> {
        if self.last_generated < cursor {
            return Some(format!(
                "{key}: the stream went back to {} from {cursor} (data lost by Redis?)",
                self.last_generated
            ));
        }
        if self.max_deleted > since {
            return Some(format!(
                "{key}: entries after {since} were deleted (up to {})",
                self.max_deleted
            ));
        }
        let removed = self.entries_added.saturating_sub(self.length);
        let removed_past_since = match self.first_entry {
            Some(first) => first > since,
            None => self.last_generated > since,
        };
        if removed > 0 && removed_past_since {
            return Some(format!(
                "{key}: entries after {since} were trimmed ({removed} removed so far)"
            ));
        }
        None
    }
}

/// Text of a bulk, simple or verbatim string reply.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(number) => Some(number.to_string()),
        _ => None,
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(number) => Some(*number),
        other => text(other)?.parse().ok(),
    }
}

/// The pairs of a RESP3 map or of a RESP2 flat `[k, v, k, v]` array.
fn pairs(value: &Value) -> Vec<(&Value, &Value)> {
    match value {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(items) => items.chunks_exact(2).map(|pair| (&pair[0], &pair[1])).collect(),
        _ => Vec::new(),
    }
}

/// The largest `XINFO STREAM` answer read again and again (by every follow read, by every
/// subscription's keepalive). Our writers' entries stay far below it (an event of at most
/// [`crate::model::MAX_DOCUMENT_BYTES`], history descriptions of a few KiB), and the answer
/// holds two, the stream's first and last; one over it carries another client's huge entry,
/// which every such answer would send again.
pub(crate) const INFO_REPLY_BOUND: usize = 4 * crate::model::MAX_DOCUMENT_BYTES;

/// How long a stream whose `XINFO STREAM` answer was over [`INFO_REPLY_BOUND`] goes without
/// being asked again.
pub(crate) const INFO_PAUSE: Duration = Duration::from_secs(30);

/// What each value of a reply costs besides its text: its framing on the wire, and about what
/// a decoded [`Value`] takes besides its bytes. Counted so that a reply of a million empty
/// strings is not a reply of no bytes.
pub(crate) const VALUE_OVERHEAD: usize = 16;

/// The bytes of a reply, nested values included: its strings, and [`VALUE_OVERHEAD`] for each
/// value; about what it took on the wire.
pub(crate) fn reply_bytes(value: &Value) -> usize {
    VALUE_OVERHEAD
        + match value {
            Value::BulkString(bytes) => bytes.len(),
            Value::SimpleString(text) | Value::VerbatimString { text, .. } => text.len(),
            Value::Array(items) | Value::Set(items) => items.iter().map(reply_bytes).sum(),
            Value::Map(pairs) => pairs
                .iter()
                .map(|(key, value)| reply_bytes(key) + reply_bytes(value))
                .sum(),
            Value::Attribute { data, attributes } => {
                reply_bytes(data)
                    + attributes
                        .iter()
                        .map(|(key, value)| reply_bytes(key) + reply_bytes(value))
                        .sum::<usize>()
            }
            _ => 0,
        }
}

/// The size of an `XINFO STREAM` answer over [`INFO_REPLY_BOUND`]; `None` within it.
pub(crate) fn oversized_info(value: &Value) -> Option<usize> {
    Some(reply_bytes(value)).filter(|size| *size > INFO_REPLY_BOUND)
}

/// Parses an `XINFO STREAM` reply; `None` when it is not one.
pub(crate) fn parse_info(value: &Value) -> Option<StreamInfo> {
    let mut info = StreamInfo::default();
    let mut found = false;
    let mut entries_added = None;
    let mut recorded_first = None;
    for (key, value) in pairs(value) {
        match text(key).as_deref() {
            Some("last-generated-id") => {
                info.last_generated = text(value)?.parse().ok()?;
                found = true;
            }
            Some("max-deleted-entry-id") => info.max_deleted = text(value)?.parse().ok()?,
            Some("length") => info.length = u64::try_from(integer(value)?).ok()?,
            Some("entries-added") => entries_added = integer(value).and_then(|n| u64::try_from(n).ok()),
            Some("recorded-first-entry-id") => recorded_first = text(value).and_then(|id| id.parse().ok()),
            Some("first-entry") => {
                info.first_entry = match value {
                    Value::Array(parts) => parts.first().and_then(text).and_then(|id| id.parse().ok()),
                    _ => None,
                };
            }
            _ => {}
        }
    }
    info.counts_added = entries_added.is_some();
    info.entries_added = entries_added.unwrap_or(info.length);
    if info.length == 0 {
        info.first_entry = None;
    } else if info.first_entry.is_none() {
        info.first_entry = recorded_first;
    }
    found.then_some(info)
}

/// Parses the entries of an `XRANGE`/`XREVRANGE` reply (or one stream of an `XREAD` reply).
pub(crate) fn parse_entries(value: &Value) -> Vec<RawEntry> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items.iter().filter_map(parse_entry).collect()
}

/// Parses one entry of an `XRANGE` reply (`[id, [field, value, ...]]`).
pub(crate) fn parse_entry(item: &Value) -> Option<RawEntry> {
    let Value::Array(parts) = item else { return None };
    let id_text = text(parts.first()?)?;
    let id = id_text.parse().ok()?;
    let fields = pairs(parts.get(1)?)
        .into_iter()
        .filter_map(|(field, value)| Some((text(field)?, text(value)?)))
        .collect();
    Some(RawEntry { id, id_text, fields })
}

/// Parses an `XREAD` reply into (stream key, entries); a timeout (nil) gives nothing.
pub(crate) fn parse_xread(value: &Value) -> Vec<(String, Vec<RawEntry>)> {
    let streams: Vec<(&Value, &Value)> = match value {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::Array(pair) if pair.len() == 2 => Some((&pair[0], &pair[1])),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .filter_map(|(key, entries)| Some((text(key)?, parse_entries(entries))))
        .collect()
}

/// The entries of several `XREAD` replies by stream key, in id order, each id once.
pub(crate) fn merge_reads(reads: Vec<(String, Vec<RawEntry>)>) -> BTreeMap<String, Vec<RawEntry>> {
    let mut merged: BTreeMap<String, Vec<RawEntry>> = BTreeMap::new();
    for (key, entries) in reads {
        merged.entry(key).or_default().extend(entries);
    }
    for entries in merged.values_mut() {
        entries.sort_by_key(|entry| entry.id);
        entries.dedup_by_key(|entry| entry.id);
    }
    merged
}

/// A history stream entry as a [`HistoryEntry`].
pub(crate) fn decode_history(key: &str, entry: &RawEntry) -> Result<HistoryEntry> {
    crate::decode::history_entry(key, &entry.id_text, |name| entry.field(name).map(str::to_owned))
}

/// An event-log (or error-log) entry as a [`LoggedEvent`].
///
/// A channel or payload over [`MAX_DOCUMENT_BYTES`] is not kept: the event carries a short
/// note in its place, so one huge entry cannot blow up every snapshot that holds it.
pub(crate) fn decode_logged(entry: &RawEntry) -> LoggedEvent {
    let channel = entry.field("channel").unwrap_or_default();
    let raw = entry.field("payload").unwrap_or_default();
    if raw.len() > MAX_DOCUMENT_BYTES || channel.len() > MAX_DOCUMENT_BYTES {
        return LoggedEvent {
            id: entry.id_text.clone(),
            channel: decode::preview(channel),
            event_type: None,
            session_id: None,
            payload: serde_json::Value::String(format!(
                "(corrupt: the entry is {} bytes; the limit is {MAX_DOCUMENT_BYTES})",
                raw.len() + channel.len()
            )),
        };
    }
    let channel = channel.to_owned();
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(json) => logged(entry, channel, json, raw),
        Err(_) => LoggedEvent {
            id: entry.id_text.clone(),
            channel,
            event_type: None,
            session_id: None,
            payload: serde_json::Value::String(raw.to_owned()),
        },
    }
}

fn logged(entry: &RawEntry, channel: String, json: serde_json::Value, raw: &str) -> LoggedEvent {
    let decoded = Event::from_json(raw.as_bytes()).ok();
    let event_type = decoded
        .as_ref()
        .and_then(|event| event.event_type().map(str::to_owned))
        .or_else(|| json.get("type").and_then(|kind| kind.as_str()).map(str::to_owned));
    let session_id = json.get("session_id").and_then(|id| id.as_str()).map(str::to_owned);
    LoggedEvent {
        id: entry.id_text.clone(),
        channel,
        event_type,
        session_id,
        payload: json,
    }
}

/// Whether `event` belongs to `scope`.
pub(crate) fn event_in_scope(scope: &Scope, event: &LoggedEvent) -> bool {
    match scope {
        Scope::All => true,
        Scope::Session(session_id) => event.session_id.as_deref() == Some(session_id.as_str()),
    }
}

/// The progress document at `key` from the text of its field (`None` when there is none).
pub(crate) fn progress_document(key: &str, text: Option<Result<String>>) -> Option<Result<StrokeProgress>> {
    Some(text?.and_then(|raw| decode::document(key, "StrokeProgress", &raw)))
}

/// A [`CorruptEntry`] for `err`, which names `key`.
pub(crate) fn corrupt_entry(key: &str, err: &Error) -> CorruptEntry {
    CorruptEntry {
        key: key.to_owned(),
        error: err.report().to_string(),
    }
}

/// The report for a key that should hold `kind` ("stream", "sorted set", "hash") and holds
/// another type.
pub(crate) fn wrong_type(key: &str, kind: &str) -> CorruptEntry {
    CorruptEntry {
        key: key.to_owned(),
        error: format!("{key}: the key is not a {kind}"),
    }
}

/// Whether a reply is the error of a key that holds another type.
pub(crate) fn is_wrong_type(reply: Option<&redis::RedisResult<Value>>) -> bool {
    reply.is_some_and(|reply| reply.as_ref().is_err_and(decode::is_wrong_type))
}

/// What is wrong with a log, from its `XINFO STREAM` reply: another type under its key, or
/// a stream whose last possible id another client used up, which writers can no longer append
/// to.
pub(crate) fn broken_log(key: &str, reply: Option<&redis::RedisResult<Value>>) -> Option<CorruptEntry> {
    if is_wrong_type(reply) {
        return Some(wrong_type(key, "stream"));
    }
    let info = reply.and_then(|reply| reply.as_ref().ok()).and_then(parse_info)?;
    let last = EntryId {
        ms: u64::MAX,
        seq: u64::MAX,
    };
    (info.last_generated == last).then(|| CorruptEntry {
        key: key.to_owned(),
        error: format!("{key}: the stream has used up its last possible id"),
    })
}

/// All keys matching `pattern`, by `SCAN`.
pub(crate) async fn scan(connection: &mut MultiplexedConnection, pattern: &str) -> Result<Vec<String>> {
    crate::manager::scan_keys(connection, pattern, SCAN_COUNT)
        .await
        .map_err(|err| Error::from_redis("follow scan", err))
}

/// The session ids of every progress hash in `scope`, and (for [`Scope::All`]) the keys
/// whose suffix is not a valid session id, as corrupt: nothing we could name a session by.
pub(crate) async fn scan_sessions(
    connection: &mut MultiplexedConnection,
    scope: &Scope,
) -> Result<(Vec<SessionId>, Vec<CorruptEntry>)> {
    let mut session_ids = Vec::new();
    let mut corrupt = Vec::new();
    for key in scan(connection, keys::PROGRESS_PATTERN).await? {
        let suffix = keys::strip(&key, keys::PROGRESS_PREFIX).unwrap_or_default();
        match SessionId::new(suffix) {
            Ok(session_id) if scope.includes_session(session_id.as_str()) => session_ids.push(session_id),
            Ok(_) => {}
            Err(err) if scope.is_all() => corrupt.push(corrupt_entry(&key, &invalid_id_key(&key, &err))),
            Err(_) => {}
        }
    }
    Ok((session_ids, corrupt))
}

/// Node ids with a live heartbeat or in our registry, with their registry score, and the
/// heartbeat keys whose suffix is not a valid node id, as corrupt.
async fn scan_nodes(
    connection: &mut MultiplexedConnection,
) -> Result<(BTreeMap<NodeId, Option<i64>>, Vec<CorruptEntry>)> {
    let mut nodes: BTreeMap<NodeId, Option<i64>> = BTreeMap::new();
    let mut corrupt = Vec::new();
    for key in scan(connection, keys::HEALTH_PATTERN).await? {
        match NodeId::new(keys::strip(&key, keys::HEALTH_PREFIX).unwrap_or_default()) {
            Ok(node_id) => {
                nodes.insert(node_id, None);
            }
            Err(err) => corrupt.push(corrupt_entry(&key, &invalid_id_key(&key, &err))),
        }
    }
    if let Some(detail) = oversized_collection(connection, keys::NODE_REGISTRY, "ZCARD")
        .await
        .map_err(|err| Error::from_redis("follow node registry", err))?
    {
        // Another client's: the heartbeats alone name the nodes.
        corrupt.push(key_entry(keys::NODE_REGISTRY, &detail));
        return Ok((nodes, corrupt));
    }
    // Members as bytes: one that is not text (another client's) must not fail the whole read.
    let registry: Vec<(Vec<u8>, f64)> = match redis::cmd("ZRANGE")
        .arg(keys::NODE_REGISTRY)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(connection)
        .await
    {
        Ok(registry) => registry,
        // Another client's value under the registry: the heartbeats alone name the nodes.
        Err(err) if decode::is_wrong_type(&err) => {
            corrupt.push(wrong_type(keys::NODE_REGISTRY, "sorted set"));
            Vec::new()
        }
        Err(err) => return Err(Error::from_redis("follow node registry", err)),
    };
    for (node_id, score) in registry {
        if let Ok(node_id) = NodeId::new(String::from_utf8_lossy(&node_id).as_ref()) {
            // Scores are Unix milliseconds, far inside f64's exact integer range.
            nodes.insert(node_id, Some(score as i64));
        }
    }
    Ok((nodes, corrupt))
}

/// The hash fields among `fields` (key, field) whose values are over the size bound, with their
/// lengths, by key (`HSTRLEN`, one pipeline). Such a value is not read: an `HGET` would send it
/// whole, to every follower at every poll (another client's 50 MB heartbeat: 50 MB a second
/// each). A key of another type or a missing field is not in the map.
pub(crate) async fn oversized_fields(
    connection: &mut MultiplexedConnection,
    fields: &[(String, &'static str)],
) -> Result<Oversized> {
    find_oversized(connection, fields)
        .await
        .map_err(|err| Error::from_redis("follow value lengths", err))
}

/// The most Redis may hold under a key that a reader fetches whole (the node registry, the
/// producers' records, the parameter index), as `MEMORY USAGE` counts it: far above what a
/// fleet writes there (a record or a member is a few hundred bytes), far below what a reader
/// should take in one reply.
pub(crate) const MAX_COLLECTION_BYTES: u64 = 8 << 20;

/// The most elements such a key may have: `MEMORY USAGE` counts this many at most (about 3 ms
/// of Redis's time), so its size is exact for every collection that may be read.
pub(crate) const MAX_COLLECTION_ELEMENTS: u64 = 20_000;

/// What is wrong with `key`, a collection a reader fetches whole, when it has more than
/// [`MAX_COLLECTION_ELEMENTS`] or takes more than [`MAX_COLLECTION_BYTES`] in Redis; `count` is
/// the command that counts its elements (`ZCARD`, `HLEN`). Asked in one round trip before the
/// key is read (the count, and `MEMORY USAGE key SAMPLES n`): another client's 50 MB member in
/// the node registry would otherwise be sent to every `status`, every `health` and every
/// follower's poll. `None` for a key within both bounds, a missing key, one of another type
/// (its read says so, as before), or a server that refuses `MEMORY USAGE` (an ACL without it,
/// whose users read as before); a connection failure is the error.
pub(crate) async fn oversized_collection(
    connection: &mut impl redis::aio::ConnectionLike,
    key: &str,
    count: &'static str,
) -> redis::RedisResult<Option<String>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd(count).arg(key);
    pipe.cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(MAX_COLLECTION_ELEMENTS);
    let replies: Vec<redis::RedisResult<Value>> = pipe.query_async(connection).await?;
    let number = |index: usize| -> Option<u64> {
        let reply = replies.get(index)?.as_ref().ok()?;
        u64::try_from(integer(reply)?).ok()
    };
    if let Some(Err(err)) = replies.get(1) {
        tracing::debug!(key, error = %err, "cannot ask a collection's size; reading it whole");
    }
    // The same words while the key stays over the bound, so that a follower, which reports
    // what changed, does not report it again at every poll as its size moves.
    let limits = format!(
        "a collection read whole may have at most {MAX_COLLECTION_ELEMENTS} elements and take at most {MAX_COLLECTION_BYTES} bytes, so it is not read"
    );
    // No count: another type (or no permission to count), which the read reports as before.
    let Some(elements) = number(0) else { return Ok(None) };
    Ok(if elements > MAX_COLLECTION_ELEMENTS {
        Some(format!(
            "the key has more than {MAX_COLLECTION_ELEMENTS} elements; {limits}"
        ))
    } else {
        number(1)
            .filter(|bytes| *bytes > MAX_COLLECTION_BYTES)
            .map(|_| format!("the key takes more than {MAX_COLLECTION_BYTES} bytes in Redis; {limits}"))
    })
}

/// The report of `key` under which a reader found `detail` wrong, worded as [`wrong_type`]'s.
pub(crate) fn key_entry(key: &str, detail: &str) -> CorruptEntry {
    CorruptEntry {
        key: key.to_owned(),
        error: format!("{key}: {detail}"),
    }
}

/// The most a reader takes from one log (the event log, the error log, a session's history) in
/// one call, and the size in Redis over which a log is read one entry at a time: far above
/// what our writers keep there (20,000 events of a few hundred bytes each), far below what a
/// reader on a small node may take at once.
pub(crate) const MAX_LOG_READ_BYTES: u64 = 32 << 20;

/// The most entries a log read in bulk may have (five times the longest our writers keep):
/// `MEMORY USAGE` walks at most this many of a stream's nodes, each of which holds one entry or
/// more, so its size is exact for every log read in bulk, and costs Redis a few milliseconds
/// at most.
pub(crate) const MAX_LOG_ENTRIES: u64 = 100_000;

/// The logs among `keys` that take more than [`MAX_LOG_READ_BYTES`] in Redis or have more than
/// [`MAX_LOG_ENTRIES`], with their sizes (`XLEN` and `MEMORY USAGE key SAMPLES n`, one
/// pipeline). Nothing tells an entry's size short of reading it, so a read of the newest
/// hundred entries of such a log could be any size (another client's hundred 5 MiB entries,
/// with every snapshot a dashboard client takes); [`read_log_pages`] reads those one entry at
/// a time, within the bound. A missing key, one of another type (its read says so, as before)
/// or a server that refuses `MEMORY USAGE` (an ACL without it) is not in the map.
pub(crate) async fn oversized_logs(
    connection: &mut impl redis::aio::ConnectionLike,
    keys: &[&str],
) -> redis::RedisResult<BTreeMap<String, u64>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for key in keys {
        pipe.cmd("XLEN").arg(*key);
        pipe.cmd("MEMORY")
            .arg("USAGE")
            .arg(*key)
            .arg("SAMPLES")
            .arg(MAX_LOG_ENTRIES);
    }
    let replies: Vec<redis::RedisResult<Value>> = pipe.query_async(connection).await?;
    let number = |reply: Option<&redis::RedisResult<Value>>| -> Option<u64> {
        u64::try_from(integer(reply?.as_ref().ok()?)?).ok()
    };
    Ok(keys
        .iter()
        .zip(replies.chunks(2))
        .filter_map(|(key, replies)| {
            // A key of another type has no length.
            let entries = number(replies.first())?;
            let size = number(replies.get(1))?;
            (size > MAX_LOG_READ_BYTES || entries > MAX_LOG_ENTRIES).then(|| ((*key).to_owned(), size))
        })
        .collect())
}

/// Which way a log is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Oldest first (`XRANGE`), from `start` on.
    Forward,
    /// Newest first (`XREVRANGE`), from `start` back.
    Backward,
}

impl Direction {
    /// The read of up to `count` entries of `key` from `start` (an id, `-`, `+`, or an
    /// exclusive `(id`) this way, to its end.
    pub(crate) fn read(self, key: &str, start: &str, count: usize) -> redis::Cmd {
        let (command, end) = match self {
            Direction::Forward => ("XRANGE", "+"),
            Direction::Backward => ("XREVRANGE", "-"),
        };
        let mut read = redis::cmd(command);
        read.arg(key).arg(start).arg(end).arg("COUNT").arg(count);
        read
    }
}

/// What [`read_log_pages`] read.
#[derive(Debug)]
pub(crate) struct LogPages {
    /// The entries, as one `XRANGE` answer holds them.
    pub entries: Value,
    /// How many.
    pub read: usize,
    /// The bytes read (with those read before), when the read stopped at
    /// [`MAX_LOG_READ_BYTES`] with entries left to read.
    pub cut_at: Option<u64>,
}

impl LogPages {
    /// What is said of a log of `size` bytes in Redis whose read stopped at the bound.
    pub(crate) fn cut_detail(&self, size: u64, read_before: usize) -> Option<String> {
        self.cut_at.map(|bytes| {
            format!(
                "the log takes {size} bytes in Redis; the read stopped after {} entries ({bytes} bytes), the most one read takes is {MAX_LOG_READ_BYTES}, and the log may hold more; trim it (XTRIM key MAXLEN n) if another client filled it",
                self.read + read_before
            )
        })
    }
}

/// Up to `count` entries of the log `key` from `start` (an id, `-`, `+`, or an exclusive
/// `(id`) in `direction`, one entry per round trip, stopping once the entries read, and the
/// `read_before` bytes the caller read of the log already, take [`MAX_LOG_READ_BYTES`], or
/// when `enough` says so of the entries read: for a log that [`oversized_logs`] found over the
/// bound, where one read of `count` entries could be any size. An entry larger than the bound
/// is still read whole, once: Redis tells no entry's size without sending it. A key that turns
/// into another type between two pages ends the read (the next read reports it).
pub(crate) async fn read_log_pages(
    connection: &mut impl redis::aio::ConnectionLike,
    key: &str,
    direction: Direction,
    start: String,
    count: usize,
    read_before: u64,
    mut enough: impl FnMut(&Value) -> bool,
) -> redis::RedisResult<LogPages> {
    let mut pages = LogPages {
        entries: Value::Nil,
        read: 0,
        cut_at: None,
    };
    let mut entries = Vec::new();
    let mut bytes = read_before;
    let mut start = start;
    while entries.len() < count {
        if bytes >= MAX_LOG_READ_BYTES {
            pages.cut_at = Some(bytes);
            break;
        }
        let page: Value = match direction.read(key, &start, 1).query_async(connection).await {
            Ok(page) => page,
            Err(err) if decode::is_wrong_type(&err) => break,
            Err(err) => return Err(err),
        };
        let Value::Array(mut page) = page else { break };
        let Some(entry) = page.pop() else { break };
        let Some(id) = (match &entry {
            Value::Array(parts) => parts.first().and_then(text),
            _ => None,
        }) else {
            break;
        };
        bytes += reply_bytes(&entry) as u64;
        start = format!("({id}");
        let done = enough(&entry);
        entries.push(entry);
        if done {
            break;
        }
    }
    pages.read = entries.len();
    pages.entries = Value::Array(entries);
    Ok(pages)
}

/// [`oversized_fields`] on any connection, with the connection's error as it came; the
/// manager's reads use it too (a client reading `status` every second would otherwise make
/// Redis send another client's 50 MB document every second).
pub(crate) async fn find_oversized(
    connection: &mut impl redis::aio::ConnectionLike,
    fields: &[(String, &'static str)],
) -> redis::RedisResult<Oversized> {
    if fields.is_empty() {
        return Ok(Oversized::default());
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (key, field) in fields {
        pipe.cmd("HSTRLEN").arg(key).arg(*field);
    }
    let lengths: Vec<redis::RedisResult<Value>> = pipe.query_async(connection).await?;
    Ok(Oversized::from_lengths(fields.iter().map(|(key, _)| key), lengths))
}

/// `HGET` of each of `fields` (key, field), their lengths asked first ([`find_oversized`]):
/// the answers in order, each for [`Oversized::field_text`], which gives the too-large error
/// for a value over the bound, not read. Run with `ignore_errors`, so that a key of another
/// type is that field's answer, not a failure of the connection.
pub(crate) async fn read_fields(
    connection: &mut impl redis::aio::ConnectionLike,
    fields: &[(String, &'static str)],
) -> redis::RedisResult<(Oversized, Vec<redis::RedisResult<Value>>)> {
    let oversized = find_oversized(connection, fields).await?;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (key, field) in fields {
        oversized.queue_read(&mut pipe, key, field);
    }
    let replies = pipe.query_async(connection).await?;
    Ok((oversized, replies))
}

/// Hash values over the size bound, by key, with their lengths: see [`oversized_fields`].
#[derive(Debug, Default)]
pub(crate) struct Oversized(BTreeMap<String, usize>);

impl Oversized {
    /// The values over the bound among `keys`, from the answers to their `HSTRLEN`s, in order
    /// (run with `ignore_errors`: a key of another type has no length and is not in the map).
    pub(crate) fn from_lengths<'a>(
        keys: impl IntoIterator<Item = &'a String>,
        lengths: Vec<redis::RedisResult<Value>>,
    ) -> Oversized {
        Oversized(
            keys.into_iter()
                .zip(lengths)
                .filter_map(|(key, length)| {
                    let length = usize::try_from(length.ok().as_ref().and_then(integer)?).ok()?;
                    (length > crate::model::MAX_DOCUMENT_BYTES).then(|| (key.clone(), length))
                })
                .collect(),
        )
    }

    /// Queues `HGET key field` on `pipe`, or for a value over the bound its `HSTRLEN` (an
    /// answer of the same place in the pipeline, which [`Oversized::field_text`] does not read).
    pub(crate) fn queue_read(&self, pipe: &mut redis::Pipeline, key: &str, field: &str) {
        let command = if self.0.contains_key(key) { "HSTRLEN" } else { "HGET" };
        pipe.cmd(command).arg(key).arg(field);
    }

    /// [`decode::field_text`] of the answer queued by [`Oversized::queue_read`]: the too-large
    /// error for a value over the bound.
    pub(crate) fn field_text(
        &self,
        key: &str,
        field: &str,
        reply: redis::RedisResult<Value>,
    ) -> Option<Result<String>> {
        match self.0.get(key) {
            Some(length) => Some(Err(decode::too_large(key, &format!("field {field}"), *length))),
            None => decode::field_text(key, field, reply),
        }
    }
}

/// Queues the reads of [`node_views`] for `node_ids` on `pipe`: `HGET health` (see
/// [`Oversized`]) and `PTTL` each.
fn queue_node_reads<'a>(pipe: &mut redis::Pipeline, node_ids: impl Iterator<Item = &'a NodeId>, oversized: &Oversized) {
    for node_id in node_ids {
        let key = keys::health(node_id);
        oversized.queue_read(pipe, &key, keys::FIELD_HEALTH);
        pipe.cmd("PTTL").arg(&key);
    }
}

/// The progress fields of `sessions`, for [`oversized_fields`].
fn session_fields(sessions: &[SessionId]) -> Vec<(String, &'static str)> {
    sessions
        .iter()
        .map(|session_id| (keys::progress(session_id), keys::FIELD_PROGRESS))
        .collect()
}

/// The heartbeat fields of `nodes`, for [`oversized_fields`].
fn health_fields<'a>(nodes: impl Iterator<Item = &'a NodeId>) -> Vec<(String, &'static str)> {
    nodes
        .map(|node_id| (keys::health(node_id), keys::FIELD_HEALTH))
        .collect()
}

/// Builds node views from the replies queued by [`queue_node_reads`]; a heartbeat that does
/// not decode leaves its node without health and is added to `corrupt`.
fn node_views(
    nodes: &BTreeMap<NodeId, Option<i64>>,
    replies: &[redis::RedisResult<Value>],
    oversized: &Oversized,
    now_ms: i64,
    health_ttl: Duration,
    corrupt: &mut Vec<CorruptEntry>,
) -> BTreeMap<String, NodeView> {
    let ttl_ms = i64::try_from(health_ttl.as_millis()).unwrap_or(i64::MAX);
    nodes
        .iter()
        .zip(replies.chunks_exact(2))
        .map(|((node_id, registry_ms), reply)| {
            let key = keys::health(node_id);
            let decoded = oversized
                .field_text(&key, keys::FIELD_HEALTH, reply[0].clone())
                .map(|raw| raw.and_then(|raw| decode::document::<NodeHealth>(&key, "NodeHealth", &raw)));
            let health = match decoded {
                None => None,
                Some(Ok(health)) => Some(health),
                Some(Err(err)) => {
                    corrupt.push(corrupt_entry(&key, &err));
                    None
                }
            };
            let pttl = reply[1]
                .as_ref()
                .ok()
                .and_then(integer)
                .filter(|pttl| (1..=ttl_ms).contains(pttl));
            let clock_skew_ms = health.as_ref().zip(pttl).map(|(health, pttl)| {
                let written_ms = now_ms - (ttl_ms - pttl);
                health.last_heartbeat.unix_millis() - written_ms
            });
            let heartbeat_ms = health.as_ref().map(|health| health.last_heartbeat.unix_millis());
            let last_seen_ms = match (heartbeat_ms, *registry_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let view = NodeView {
                node_id: node_id.to_string(),
                health,
                last_seen_ms,
                clock_skew_ms,
            };
            (node_id.to_string(), view)
        })
        .collect()
}

/// Redis's clock in Unix ms from a `TIME` reply.
fn time_ms(value: &Value) -> Option<i64> {
    let Value::Array(parts) = value else { return None };
    let seconds = integer(parts.first()?)?;
    let micros = integer(parts.get(1)?)?;
    Some(seconds * 1000 + micros / 1000)
}

/// Reads every node's heartbeat and TTL: the poll's node half. Also returns the heartbeat
/// keys that are corrupt (bad id, wrong type, not a heartbeat).
pub(crate) async fn read_nodes(
    connection: &mut MultiplexedConnection,
    health_ttl: Duration,
) -> Result<(BTreeMap<String, NodeView>, Vec<CorruptEntry>)> {
    let (nodes, mut corrupt) = scan_nodes(connection).await?;
    let oversized = oversized_fields(connection, &health_fields(nodes.keys())).await?;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("TIME");
    queue_node_reads(&mut pipe, nodes.keys(), &oversized);
    let replies: Vec<redis::RedisResult<Value>> = pipe
        .query_async(connection)
        .await
        .map_err(|err| Error::from_redis("follow nodes", err))?;
    let now_ms = replies
        .first()
        .and_then(|reply| reply.as_ref().ok())
        .and_then(time_ms)
        .unwrap_or_else(|| crate::timestamp::Timestamp::now().unix_millis());
    let views = node_views(
        &nodes,
        replies.get(1..).unwrap_or_default(),
        &oversized,
        now_ms,
        health_ttl,
        &mut corrupt,
    );
    Ok((views, corrupt))
}

/// Reads every robot state snapshot (`robot:state:*`), by node id: the poll's robot half.
/// Also returns the keys that are corrupt (bad id, wrong type, not a robot state).
///
/// Robot states have no TTL and no event that carries the whole document (`state_update`
/// has only the connection flags and the pose), so they are polled like heartbeats.
pub(crate) async fn read_robots(
    connection: &mut MultiplexedConnection,
) -> Result<(BTreeMap<String, RobotState>, Vec<CorruptEntry>)> {
    let mut node_ids = Vec::new();
    let mut corrupt = Vec::new();
    for key in scan(connection, keys::ROBOT_STATE_PATTERN).await? {
        match NodeId::new(keys::strip(&key, keys::ROBOT_STATE_PREFIX).unwrap_or_default()) {
            Ok(node_id) => node_ids.push(node_id),
            Err(err) => corrupt.push(corrupt_entry(&key, &invalid_id_key(&key, &err))),
        }
    }
    let mut robots = BTreeMap::new();
    for chunk in node_ids.chunks(SCAN_COUNT) {
        let fields: Vec<(String, &'static str)> = chunk
            .iter()
            .map(|node_id| (keys::robot_state(node_id), keys::FIELD_STATE))
            .collect();
        let (oversized, replies) = read_fields(connection, &fields)
            .await
            .map_err(|err| Error::from_redis("follow robots", err))?;
        for (node_id, reply) in chunk.iter().zip(replies) {
            let key = keys::robot_state(node_id);
            let Some(raw) = oversized.field_text(&key, keys::FIELD_STATE, reply) else {
                continue;
            };
            match raw.and_then(|raw| decode::document::<RobotState>(&key, "RobotState", &raw)) {
                Ok(state) => {
                    robots.insert(node_id.to_string(), state);
                }
                Err(err) => corrupt.push(corrupt_entry(&key, &err)),
            }
        }
    }
    Ok((robots, corrupt))
}

/// Takes a snapshot: discovers sessions and nodes with `SCAN`, then reads their documents, the
/// stream positions and the recent events in one `MULTI`, so the cursor matches the contents.
///
/// A session created between the `SCAN` and the `MULTI` is missing from the snapshot; the
/// follower finds it at its first poll and replays it from its first history entry. A log over
/// [`MAX_LOG_READ_BYTES`] in Redis gives only its newest entry to the `MULTI`, and the entries
/// before it one by one afterwards (older than the cursor, so still consistent with it).
pub(crate) async fn read_snapshot(
    connection: &MultiplexedConnection,
    manager_config: &ManagerConfig,
    scope: &Scope,
    config: &FollowConfig,
) -> Result<Snapshot> {
    let mut connection = connection.clone();
    let (session_ids, mut corrupt) = scan_sessions(&mut connection, scope).await?;
    let (nodes, robots) = match scope {
        Scope::All => {
            let (nodes, bad_keys) = scan_nodes(&mut connection).await?;
            corrupt.extend(bad_keys);
            // Outside the MULTI: robot states are polled snapshots, not part of the cursor.
            let (robots, bad_keys) = read_robots(&mut connection).await?;
            corrupt.extend(bad_keys);
            (nodes, robots)
        }
        Scope::Session(_) => (BTreeMap::new(), BTreeMap::new()),
    };
    let scanned_events = config.recent_events.max(1) * RECENT_SCAN_FACTOR;
    // Session documents and heartbeats over the size bound are not read (see `Oversized`):
    // every follower that starts (each dashboard client that connects) takes a snapshot.
    let mut fields = session_fields(&session_ids);
    fields.extend(health_fields(nodes.keys()));
    // The logs' sizes go out with the lengths (two requests on the one connection, one round
    // trip): a log over the bound gives its newest entry here and the rest page by page.
    let mut sizes_connection = connection.clone();
    let (oversized, big_logs) = tokio::join!(
        oversized_fields(&mut connection, &fields),
        oversized_logs(&mut sizes_connection, &[keys::EVENT_LOG, keys::ERROR_LOG]),
    );
    let oversized = oversized?;
    let big_logs = big_logs.map_err(|err| Error::from_redis("follow log sizes", err))?;
    // What each log is read for: the newest events, among which the recent ones of the scope
    // are found, and the newest errors (of the whole fleet only).
    let wanted = [
        (keys::EVENT_LOG, scanned_events),
        (
            keys::ERROR_LOG,
            match scope {
                Scope::All => config.recent_errors,
                Scope::Session(_) => 0,
            },
        ),
    ];
    let counts = wanted.map(|(key, count)| {
        if big_logs.contains_key(key) {
            count.min(1)
        } else {
            count
        }
    });

    let mut pipe = redis::pipe();
    pipe.atomic().ignore_errors();
    pipe.cmd("TIME");
    pipe.cmd("XINFO").arg("STREAM").arg(keys::EVENT_LOG);
    pipe.add_command(Direction::Backward.read(keys::EVENT_LOG, "+", counts[0]));
    pipe.add_command(Direction::Backward.read(keys::ERROR_LOG, "+", counts[1]));
    for session_id in &session_ids {
        oversized.queue_read(&mut pipe, &keys::progress(session_id), keys::FIELD_PROGRESS);
        pipe.cmd("XINFO").arg("STREAM").arg(keys::history(session_id));
    }
    queue_node_reads(&mut pipe, nodes.keys(), &oversized);
    let replies: Vec<redis::RedisResult<Value>> = pipe
        .query_async(&mut connection)
        .await
        .map_err(|err| Error::from_redis("follow snapshot", err))?;
    let reply = |index: usize| replies.get(index).and_then(|reply| reply.as_ref().ok());

    // Logs under which another client stored something else: no events from them, reported.
    // First in the list, which is cut at `MAX_CORRUPT_ENTRIES`: they matter to the whole view.
    if is_wrong_type(replies.get(3)) {
        corrupt.insert(0, wrong_type(keys::ERROR_LOG, "stream"));
    }
    if let Some(entry) = broken_log(keys::EVENT_LOG, replies.get(1)) {
        corrupt.insert(0, entry);
    }
    let server_time_ms = reply(0)
        .and_then(time_ms)
        .unwrap_or_else(|| crate::timestamp::Timestamp::now().unix_millis());
    let mut cursor = Cursor {
        events: reply(1)
            .and_then(parse_info)
            .map_or(EntryId::ZERO, |info| info.last_generated),
        history: BTreeMap::new(),
    };
    // The events the snapshot keeps, and the errors: every error read is kept.
    let recent = |event: &LoggedEvent| !event.is_progress() && event_in_scope(scope, event);
    let keep = [config.recent_events, config.recent_errors];
    let mut logs = Vec::with_capacity(2);
    for (index, (key, count)) in wanted.into_iter().enumerate() {
        let mut entries = reply(2 + index).map(parse_entries).unwrap_or_default();
        if let Some(size) = big_logs.get(key)
            && let Some(newest) = entries.last()
        {
            // Back from the newest entry, which the MULTI read: nothing after the cursor.
            let mut kept = entries
                .iter()
                .map(decode_logged)
                .filter(|event| index == 1 || recent(event))
                .count();
            if kept >= keep[index] {
                logs.push(entries);
                continue;
            }
            let pages = read_log_pages(
                &mut connection,
                key,
                Direction::Backward,
                format!("({}", newest.id_text),
                count.saturating_sub(1),
                reply(2 + index).map_or(0, reply_bytes) as u64,
                |entry| {
                    let event = parse_entry(entry).map(|entry| decode_logged(&entry));
                    kept += usize::from(event.is_some_and(|event| index == 1 || recent(&event)));
                    kept >= keep[index]
                },
            )
            .await
            .map_err(|err| Error::from_redis("follow log pages", err))?;
            entries.extend(parse_entries(&pages.entries));
            if let Some(detail) = pages.cut_detail(*size, 1) {
                corrupt.insert(0, key_entry(key, &detail));
            }
        }
        logs.push(entries);
    }
    let mut recent_events: Vec<LoggedEvent> = logs[0]
        .iter()
        .map(decode_logged)
        .filter(recent)
        .take(config.recent_events)
        .collect();
    recent_events.reverse();
    let mut recent_errors: Vec<LoggedEvent> = logs[1].iter().map(decode_logged).collect();
    recent_errors.reverse();

    let mut sessions = BTreeMap::new();
    for (session_idx, session_id) in session_ids.iter().enumerate() {
        let base = 4 + session_idx * 2;
        let key = keys::progress(session_id);
        let document = replies.get(base).cloned().unwrap_or(Ok(Value::Nil));
        let text = oversized.field_text(&key, keys::FIELD_PROGRESS, document);
        let progress = match progress_document(&key, text) {
            // Expired between SCAN and MULTI.
            None => continue,
            Some(Ok(progress)) => progress,
            Some(Err(err)) => {
                corrupt.push(corrupt_entry(&key, &err));
                continue;
            }
        };
        if progress.is_executing {
            let history_id = reply(base + 1)
                .and_then(parse_info)
                .map_or(EntryId::ZERO, |info| info.last_generated);
            cursor.history.insert(session_id.clone(), history_id);
        }
        sessions.insert(session_id.to_string(), progress);
    }
    let node_base = 4 + session_ids.len() * 2;
    let nodes = node_views(
        &nodes,
        replies.get(node_base..).unwrap_or_default(),
        &oversized,
        server_time_ms,
        manager_config.health_ttl,
        &mut corrupt,
    );
    corrupt.truncate(crate::follow::MAX_CORRUPT_ENTRIES);
    Ok(Snapshot {
        cursor,
        server_time_ms,
        sessions,
        nodes,
        robots,
        recent_events,
        recent_errors,
        recent_events_limit: config.recent_events,
        recent_errors_limit: config.recent_errors,
        corrupt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> EntryId {
        text.parse().unwrap()
    }

    fn info(first: Option<&str>, last: &str, length: u64, added: u64) -> StreamInfo {
        StreamInfo {
            last_generated: id(last),
            max_deleted: EntryId::ZERO,
            first_entry: first.map(id),
            length,
            entries_added: added,
            counts_added: true,
        }
    }

    fn raw(text: &str) -> RawEntry {
        RawEntry {
            id: id(text),
            id_text: text.to_owned(),
            fields: Vec::new(),
        }
    }

    #[test]
    fn servers_before_7_2_answer_a_blocked_read_with_one_stream() {
        let info = |version: &str| format!("# Server\r\nredis_version:{version}\r\nprocess_id:1\r\n");
        assert!(answers_blocked_reads_with_one_stream(&info("7.0.15")));
        assert!(answers_blocked_reads_with_one_stream(&info("6.2.14")));
        assert!(!answers_blocked_reads_with_one_stream(&info("7.2.4")));
        assert!(!answers_blocked_reads_with_one_stream(&info("8.0.2")));
        assert!(
            answers_blocked_reads_with_one_stream("# Server\r\n"),
            "unknown counts as old"
        );
    }

    /// The blocked read and the one pipelined behind it: a stream in either is kept, each
    /// entry once, in id order, also when a trim between the two left the second one shorter.
    #[test]
    fn merged_reads_keep_every_entry_once_in_order() {
        let ids = |entries: &[RawEntry]| entries.iter().map(|entry| entry.id_text.clone()).collect::<Vec<_>>();
        let merged = merge_reads(vec![
            ("history".to_owned(), vec![raw("5-0"), raw("7-0")]),
            ("log".to_owned(), vec![raw("9-0")]),
            ("history".to_owned(), vec![raw("7-0"), raw("8-0")]),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(ids(&merged["history"]), ["5-0", "7-0", "8-0"]);
        assert_eq!(ids(&merged["log"]), ["9-0"]);
    }

    /// Trimming past the cursor, a stream that went back, and XDEL are gaps; trimming behind is not.
    #[test]
    fn gap_rules() {
        let at = |info: &StreamInfo, cursor: &str| info.gap_after("s", id(cursor), id(cursor));
        let untrimmed = info(Some("1-0"), "9-0", 9, 9);
        assert_eq!(at(&untrimmed, "0-0"), None, "replaying a whole stream");
        let trimmed = info(Some("5-0"), "9-0", 5, 9);
        assert_eq!(at(&trimmed, "7-0"), None, "trimmed behind the cursor");
        assert!(at(&trimmed, "3-0").unwrap().contains("trimmed"));
        assert!(at(&trimmed, "0-0").is_some(), "the start is gone");
        let emptied = info(None, "9-0", 0, 9);
        assert!(at(&emptied, "8-0").is_some());
        assert_eq!(at(&emptied, "9-0"), None);
        assert!(at(&untrimmed, "10-0").unwrap().contains("went back"));
        let deleted = StreamInfo {
            max_deleted: id("6-0"),
            ..untrimmed
        };
        assert!(at(&deleted, "4-0").unwrap().contains("deleted"));
    }

    /// Checked from before the last read: what went while it waited is a gap, even past what
    /// it delivered; going back is measured from what was delivered.
    #[test]
    fn gaps_since_the_last_read() {
        let (since, cursor) = (id("3-0"), id("7-0"));
        // The read that moved the cursor from 3-0 to 7-0 found 4-0 and 5-0 already trimmed.
        let trimmed = info(Some("6-0"), "9-0", 4, 9);
        assert!(
            trimmed
                .gap_after("s", since, cursor)
                .unwrap()
                .contains("after 3-0 were trimmed")
        );
        assert_eq!(
            trimmed.gap_after("s", cursor, cursor),
            None,
            "checked from the cursor, it is missed"
        );
        let deleted = StreamInfo {
            max_deleted: id("5-0"),
            ..info(Some("1-0"), "9-0", 8, 9)
        };
        assert!(deleted.gap_after("s", since, cursor).unwrap().contains("deleted"));
        let back = info(Some("1-0"), "5-0", 5, 5);
        assert!(back.gap_after("s", since, cursor).unwrap().contains("went back"));
    }

    /// XINFO STREAM replies parse from RESP3 maps and RESP2 flat arrays alike.
    #[test]
    fn parses_xinfo_in_both_protocols() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let fields = vec![
            (bulk("length"), Value::Int(2)),
            (bulk("last-generated-id"), bulk("9-0")),
            (bulk("max-deleted-entry-id"), bulk("0-0")),
            (bulk("entries-added"), Value::Int(5)),
            (
                bulk("first-entry"),
                Value::Array(vec![bulk("8-0"), Value::Array(vec![bulk("a"), bulk("1")])]),
            ),
        ];
        let expected = info(Some("8-0"), "9-0", 2, 5);
        assert_eq!(parse_info(&Value::Map(fields.clone())), Some(expected));
        let flat = fields.into_iter().flat_map(|(key, value)| [key, value]).collect();
        assert_eq!(parse_info(&Value::Array(flat)), Some(expected));
        assert_eq!(parse_info(&Value::Nil), None);
    }
}

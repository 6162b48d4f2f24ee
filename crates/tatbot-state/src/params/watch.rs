//! [`Watch`]: every parameter change once, in order, from the audit log.
//!
//! Pub/sub keeps nothing for a listener that is between two reads or reconnecting, so a watch
//! tails the audit stream [`keys::PARAM_LOG`] with `XREAD BLOCK` instead, on a connection of
//! its own (a blocked connection can run nothing else, and the manager's is shared). The watch
//! keeps the id of the last entry it read and asks for what comes after it: a change made
//! while the caller was busy, or while the connection was down, is simply read next.
//!
//! The start is resolved when the watch is made, in one `MULTI` with the entry counter, so every
//! change committed after [`crate::params::Params::watch`] returns is delivered.
//!
//! The log is capped. Each entry carries `seq`, the value of a counter the write script bumps
//! once per entry; a watch that finds a jump in `seq` fell behind by more than the cap, and a
//! `seq` that goes back means Redis lost entries (a restart without fsync). Both come out as
//! one error from [`Watch::next`] saying how many changes are gone, and the next call carries
//! on with the entry after the gap.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use redis::AsyncCommands;
use redis::Value as RedisValue;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::NodeId;
use crate::keys;
use crate::manager::StateManager;
use crate::params::value::{ParamName, ParamType, ParamValue, Prefix, from_json};
use crate::params::{AUDIT_LOG_MAXLEN, ChangeOp};
use crate::timestamp::Timestamp;

/// How long one `XREAD` blocks before it asks again; a dead connection shows up within this
/// plus the response timeout.
pub const WATCH_BLOCK: Duration = Duration::from_secs(1);
/// Entries read per round trip.
const WATCH_BATCH: usize = 500;

/// One change of one parameter, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The audit log entry id.
    pub id: String,
    /// The entry's number: consecutive over all parameters.
    pub seq: u64,
    /// The parameter.
    pub name: ParamName,
    /// Its type.
    #[serde(rename = "type")]
    pub param_type: ParamType,
    /// Its version after the change: consecutive per parameter.
    pub version: u64,
    /// What made the change.
    pub op: ChangeOp,
    /// The node that made it.
    pub actor: NodeId,
    /// When.
    pub time: Timestamp,
    /// The value before; `None` when the change declared the parameter.
    pub old: Option<ParamValue>,
    /// The value after.
    pub new: ParamValue,
}

/// A live watch on parameter changes; see the module docs. Dropping it closes its connection.
pub struct Watch {
    /// Source of the client and the timeouts.
    state: StateManager,
    prefix: Prefix,
    /// Runs nothing but `XREAD BLOCK`; `None` after a failure, until the next read reopens it.
    connection: Option<MultiplexedConnection>,
    /// Id of the last entry read: the next `XREAD` starts after it.
    cursor: String,
    /// `seq` of the last entry handed on (or skipped by the prefix).
    last_seq: u64,
    /// Entries read but not handed on yet, oldest first.
    pending: VecDeque<StreamId>,
}

impl Watch {
    /// Resolves the start (after the newest entry) and opens the blocking connection.
    pub(crate) async fn open(state: &StateManager, prefix: Prefix) -> Result<Watch> {
        // The newest entry carries its own change number, so one read gives a consistent cursor
        // and count without MULTI (which the read-only `viewer` ACL user may not run).
        let newest: StreamRangeReply = state
            .connection()
            .xrevrange_count(keys::PARAM_LOG, "+", "-", 1)
            .await
            .map_err(|err| state.redis_error("watch_params", err))?;
        let newest = newest.ids.first();
        let mut watch = Watch {
            state: state.clone(),
            prefix,
            connection: None,
            cursor: newest.map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone()),
            last_seq: newest
                .and_then(|entry| entry.get::<String>("seq"))
                .and_then(|seq| seq.parse().ok())
                .unwrap_or(0),
            pending: VecDeque::new(),
        };
        watch.connection = Some(watch.connect().await?);
        Ok(watch)
    }

    /// The prefix watched.
    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// Waits for the next change under the prefix.
    ///
    /// Cancel-safe: dropping the future loses nothing, the next call reads from the same place.
    ///
    /// # Errors
    ///
    /// A connection error (the next call reconnects and resumes where this one stopped), an
    /// entry that does not decode ([`Error::Corrupt`], skipped by the next call), or a gap in
    /// the log ([`Error::WatchGap`] saying how many changes are gone; the next call
    /// continues after it).
    pub async fn next(&mut self) -> Result<Change> {
        loop {
            while let Some(entry) = self.pending.pop_front() {
                if let Some(change) = self.accept(entry)? {
                    return Ok(change);
                }
            }
            self.read().await?;
        }
    }

    /// Checks an entry's place in the sequence, decodes it and applies the prefix.
    fn accept(&mut self, entry: StreamId) -> Result<Option<Change>> {
        let fields = Fields::new(&entry);
        let seq: u64 = fields.parse("seq")?;
        let expected = self.last_seq + 1;
        if seq != expected {
            // Hand this entry on next time, after the gap has been reported.
            self.last_seq = seq.saturating_sub(1);
            self.pending.push_front(entry);
            let log = keys::PARAM_LOG;
            let message = if seq > expected {
                format!(
                    "parameter watch missed {} changes: {log} (capped at about {AUDIT_LOG_MAXLEN} entries) dropped them before they were read",
                    seq - expected
                )
            } else {
                format!(
                    "{log} went back from change {} to {seq}: Redis lost changes (a restart without fsync?)",
                    expected - 1
                )
            };
            return Err(Error::WatchGap(message));
        }
        self.last_seq = seq;
        let change = decode(&entry)?;
        Ok(self.prefix.matches(&change.name).then_some(change))
    }

    /// One `XREAD BLOCK` after the cursor; queues what it returns.
    async fn read(&mut self) -> Result<()> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self.connection.insert(self.connect().await?),
        };
        let block_ms = u64::try_from(WATCH_BLOCK.as_millis()).unwrap_or(u64::MAX);
        let reply: redis::RedisResult<RedisValue> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(WATCH_BATCH)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(keys::PARAM_LOG)
            .arg(&self.cursor)
            .query_async(connection)
            .await;
        let entries = match reply {
            Ok(value) => read_entries(value)?,
            // Another client's value under the log: said at the pace of a blocked read, on the
            // same connection, until the log is a stream again.
            Err(err) if crate::decode::is_wrong_type(&err) => {
                tokio::time::sleep(WATCH_BLOCK).await;
                return Err(Error::wrong_type(keys::PARAM_LOG, "stream"));
            }
            Err(err) => {
                self.connection = None;
                return Err(match Error::from_redis("watch_params", err) {
                    Error::Timeout { operation, .. } => Error::Timeout {
                        operation,
                        after: self.state.config().response_timeout + WATCH_BLOCK,
                    },
                    other => other,
                });
            }
        };
        if let Some(last) = entries.last() {
            self.cursor.clone_from(&last.id);
        }
        self.pending.extend(entries);
        Ok(())
    }

    async fn connect(&self) -> Result<MultiplexedConnection> {
        let config = self.state.config();
        self.state
            .locator()
            .dedicated(
                config.connect_timeout,
                config.response_timeout + WATCH_BLOCK,
                "watch_params connect",
            )
            .await
    }
}

/// The entries of an `XREAD` reply on one stream: a RESP3 map or a RESP2 array, or nil when the
/// block timed out.
fn read_entries(value: RedisValue) -> Result<Vec<StreamId>> {
    let entries = match value {
        RedisValue::Nil => return Ok(Vec::new()),
        RedisValue::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
        RedisValue::Array(streams) => streams.into_iter().next().and_then(|stream| match stream {
            RedisValue::Array(mut pair) if pair.len() == 2 => pair.pop(),
            _ => None,
        }),
        _ => None,
    };
    let Some(entries) = entries else {
        return Ok(Vec::new());
    };
    let reply: StreamRangeReply = redis::from_redis_value(entries).map_err(|err| Error::Corrupt {
        key: keys::PARAM_LOG.to_owned(),
        detail: format!("unexpected XREAD reply: {err}"),
    })?;
    Ok(reply.ids)
}

/// An audit log entry's fields as text.
struct Fields<'a> {
    id: &'a str,
    map: &'a HashMap<String, RedisValue>,
}

impl<'a> Fields<'a> {
    fn new(entry: &'a StreamId) -> Fields<'a> {
        Fields {
            id: &entry.id,
            map: &entry.map,
        }
    }

    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            key: keys::PARAM_LOG.to_owned(),
            detail: format!("entry {}: {detail}", self.id),
        }
    }

    /// A field's text, held to the size bound every read path shares (`decode.rs`).
    fn text(&self, name: &str) -> Result<Option<String>> {
        match self.map.get(name) {
            None => Ok(None),
            Some(value) => crate::decode::field_text(keys::PARAM_LOG, name, Ok(value.clone()))
                .transpose()
                .map_err(|err| match err {
                    Error::Corrupt { detail, .. } => self.corrupt(detail),
                    other => other,
                }),
        }
    }

    fn required(&self, name: &str) -> Result<String> {
        self.text(name)?.ok_or_else(|| self.corrupt(format!("no field {name}")))
    }

    fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let text = self.required(name)?;
        text.parse()
            .map_err(|err| self.corrupt(format!("field {name} {text:?}: {err}")))
    }

    fn value(&self, name: &str, param_type: ParamType) -> Result<Option<ParamValue>> {
        let Some(text) = self.text(name)? else {
            return Ok(None);
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|err| self.corrupt(format!("field {name}: {err}")))?;
        from_json(&json, param_type)
            .map(Some)
            .map_err(|violation| self.corrupt(format!("field {name}: {}", violation.rule)))
    }
}

/// Decodes one audit log entry.
pub(crate) fn decode(entry: &StreamId) -> Result<Change> {
    let fields = Fields::new(entry);
    let param_type: ParamType = fields.parse("type")?;
    let time = fields.required("time")?;
    Ok(Change {
        id: entry.id.clone(),
        seq: fields.parse("seq")?,
        name: fields.parse("name")?,
        param_type,
        version: fields.parse("version")?,
        op: fields.parse("op")?,
        actor: fields.parse("actor")?,
        time: Timestamp::parse(&time).map_err(|err| fields.corrupt(err))?,
        old: fields.value("old", param_type)?,
        new: fields
            .value("new", param_type)?
            .ok_or_else(|| fields.corrupt("no field new".to_owned()))?,
    })
}

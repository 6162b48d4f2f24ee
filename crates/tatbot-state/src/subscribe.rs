//! [`Subscription`]: typed pub/sub messages on a connection of their own, that comes back by
//! itself.
//!
//! A Redis connection in subscribe mode can run nothing but (un)subscribe commands and `PING`,
//! so a subscription never shares the manager's connection; like mini-redis's `Subscriber`, it
//! is its own type with its own methods. Every message is handed over with its raw payload and
//! the decode result, so a reader can show a malformed message from another client instead of
//! losing it.
//!
//! The connection is watched: after [`KEEPALIVE`] without a message the subscription sends a
//! `PING`, and a `PING` unanswered within [`PING_TIMEOUT`] (a half-open connection), a closed
//! connection or a Redis restart make it reconnect with capped backoff and subscribe to the
//! same patterns again.
//!
//! Pub/sub keeps nothing for absent listeners, but every event our writers publish also goes to
//! the event log stream (`tatbot:events`, `channel` and `payload` per entry), so a subscription
//! fills its gaps from there. It keeps a mark in that log: the log's end read before a
//! moment when it had seen every message published so far (right after subscribing, and at
//! every keepalive: the log's end is read first, then a `PING` on the subscription
//! connection, whose answer comes after every message published before it). After a
//! reconnect it subscribes again, reads the log from the mark, and hands over first the entries
//! on its channels that it had not delivered (it remembers a hash of the last
//! [`DELIVERED_MEMORY`] messages), then the live ones, skipping a live message it just handed
//! over from the log. [`Subscription::recovered`] counts what came from the log.
//!
//! What it cannot recover: messages that never went to the log (anything published by other
//! clients with a plain `PUBLISH`), and entries trimmed from the log (`MAXLEN ~ 20000`) before
//! the reconnect. The second it tells: the mark holds the log's `entries-added` too, and the
//! gap's read compares the entries it finds after the mark with the entries added since; a
//! gap the log no longer holds, like one the log could not be read for, is counted in
//! [`Subscription::unrecovered`] and logged as a warning. The follow API
//! ([`crate::follow`]) reads the streams themselves and has no gap.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{PushKind, Value};
use tokio_util::task::AbortOnDropHandle;
use wildmatch::WildMatch;

use crate::backoff::Backoff;
use crate::connection::ManagerConfig;
use crate::direct::Direct;
use crate::error::{Error, Result};
use crate::follow::io::{self, parse_info};
use crate::ids::EntryId;
use crate::keys;
use crate::model::Event;
use crate::sentinel::Locator;

/// What a log read run as a task of its own ends with: the log connection (given back for the
/// next read), one reply per command (an error reply as [`Value::ServerError`]) and when they
/// were read, or why not.
type LogRead = std::result::Result<(redis::aio::MultiplexedConnection, Vec<Value>, Instant), String>;

/// Silence after which the subscription checks its connection with a `PING`.
pub const KEEPALIVE: Duration = Duration::from_secs(2);
/// How long that `PING` may take before the connection counts as dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// First delay between reconnect attempts; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Cap on the delay between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How many delivered messages a subscription remembers, to skip them when it reads the event
/// log after a reconnect: more than two keepalive intervals of a robot at 1 kHz.
pub const DELIVERED_MEMORY: usize = 16_384;
/// Most log entries read to fill one gap.
const MAX_RECOVERED: usize = 20_000;

/// One received message.
#[derive(Debug)]
pub struct Message {
    /// The channel it was published on.
    pub channel: String,
    /// The pattern that matched it.
    pub pattern: Option<String>,
    /// The body as received (lossy UTF-8).
    pub payload: String,
    /// The decoded event, or why the body did not decode.
    pub event: Result<Event>,
    /// It was missed while the subscription reconnected and read from the event log instead.
    pub from_log: bool,
}

/// A live `PSUBSCRIBE` on a dedicated connection; dropping it unsubscribes.
pub struct Subscription {
    /// Finds the master on every reconnect (with Sentinel, it may have moved).
    locator: Locator,
    connect_timeout: Duration,
    patterns: Vec<String>,
    /// The patterns as matchers, for entries read from the event log.
    matchers: Vec<WildMatch>,
    /// The live connection, read by the task that awaits the next message (no driver task in
    /// between: [`crate::direct`]); `None` between a failure and the next successful
    /// reconnect. Dropping it closes it.
    live: Option<Direct>,
    /// A keepalive `PING` is on the wire: the log's end read just before it (the next mark),
    /// and when the connection counts as dead without its answer.
    ping: Option<(Option<Mark>, tokio::time::Instant)>,
    /// What [`Subscription::counts`] hands out.
    counts: SubscriptionCounts,
    /// A connection for reading the event log, opened when first needed.
    log: Option<redis::aio::MultiplexedConnection>,
    /// The place in the event log up to which every message on our channels was delivered;
    /// `None` when the log could not be read (then a gap is not filled).
    mark: Option<Mark>,
    /// Hashes of the last delivered messages, oldest first, and the same as a set.
    delivered: VecDeque<u64>,
    delivered_set: HashSet<u64>,
    /// The connection was lost and the messages published meanwhile are not queued from the
    /// log yet. Kept across calls: a `next` cancelled between the reconnect and the log read
    /// (a caller's timeout) leaves it set, and the next call reads the log before anything
    /// live, instead of going on live with the gap unfilled.
    gap_open: bool,
    /// The resubscribe attempt under way, awaited until it is done (see `reconnect`).
    connecting: Option<AbortOnDropHandle<Result<Direct>>>,
    /// No attempt before this, after a failed one.
    retry_at: Option<tokio::time::Instant>,
    /// Delays between failed attempts, reset by a successful one.
    backoff: Backoff,
    /// The gap's log read, started by `fill_gap` and awaited until it is done.
    gap_read: Option<AbortOnDropHandle<LogRead>>,
    /// The keepalive's read of the log's tail, started when a keepalive is due and awaited
    /// until it is done, then the `PING` goes out.
    tail_read: Option<AbortOnDropHandle<LogRead>>,
    /// The tail read under way replaces one that came back too old; this one is used however
    /// old it is.
    tail_reread: bool,
    /// The log's `XINFO STREAM` answered over [`io::INFO_REPLY_BOUND`] (another client's huge
    /// entry, first or last, which every answer repeats): until then keepalives read no tail
    /// and keep the mark they have.
    tail_paused_until: Option<tokio::time::Instant>,
    /// Messages from the log waiting to be handed over, before any live one.
    backlog: VecDeque<Message>,
    /// Hashes of messages handed over from the log that may still arrive live.
    from_log: HashSet<u64>,
    hasher: RandomState,
    /// When the next keepalive (a `PING` and a new mark) is due, whatever the traffic.
    keepalive_at: tokio::time::Instant,
}

impl Subscription {
    pub(crate) async fn open(locator: &Locator, config: &ManagerConfig, patterns: &[&str]) -> Result<Subscription> {
        if patterns.is_empty() {
            // `PSUBSCRIBE` with no pattern is an error reply, which `next` would take for a
            // broken connection and resubscribe, forever.
            return Err(Error::InvalidInput(
                "subscribe needs at least one channel pattern, such as stroke:events:*".to_owned(),
            ));
        }
        let mut subscription = Subscription {
            locator: locator.clone(),
            connect_timeout: config.connect_timeout,
            patterns: patterns.iter().map(|pattern| (*pattern).to_owned()).collect(),
            matchers: patterns.iter().map(|pattern| WildMatch::new(pattern)).collect(),
            live: None,
            ping: None,
            counts: SubscriptionCounts::default(),
            log: None,
            mark: None,
            delivered: VecDeque::new(),
            delivered_set: HashSet::new(),
            gap_open: false,
            connecting: None,
            retry_at: None,
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
            gap_read: None,
            tail_read: None,
            tail_reread: false,
            tail_paused_until: None,
            backlog: VecDeque::new(),
            from_log: HashSet::new(),
            hasher: RandomState::new(),
            keepalive_at: tokio::time::Instant::now() + KEEPALIVE,
        };
        let target = locator.describe();
        subscription.live = Some(subscription.connect().await.map_err(|err| match err {
            Error::Redis { source, .. } => Error::from_connect(&target, source),
            other => other,
        })?);
        // Subscribed first, so everything in the log up to here was published before.
        subscription.mark = subscription.log_tail().await;
        Ok(subscription)
    }

    /// Runs `reads` (the log's `XINFO STREAM`, after an `XRANGE` for a gap) on the log
    /// connection, opened first when there is none, in a task of its own bounded by the connect
    /// timeout. The task goes on when the `next` that awaits it is dropped, so the next call
    /// awaits the same read instead of starting it again: a caller whose timeouts are shorter
    /// than a slow read still gets it done.
    fn spawn_log_read(&self, mut reads: redis::Pipeline) -> AbortOnDropHandle<LogRead> {
        let (locator, log, limit) = (self.locator.clone(), self.log.clone(), self.connect_timeout);
        let read = async move {
            let mut connection = match log {
                Some(connection) => connection,
                None => {
                    let client = locator.client().await.map_err(|err| err.report().to_string())?;
                    // redis-rs's own response timeout (500 ms) would cut a long gap's read
                    // short of the limit this read is given.
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(limit))
                        .set_response_timeout(Some(limit));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(|err| err.to_string())?
                }
            };
            let replies = reads
                .ignore_errors()
                .query_async::<Vec<Value>>(&mut connection)
                .await
                .map_err(|err| err.to_string())?;
            Ok((connection, replies, Instant::now()))
        };
        AbortOnDropHandle::new(tokio::spawn(async move {
            tokio::time::timeout(limit, read)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
        }))
    }

    /// The event log's end as a [`Mark`], or `None` when it cannot be read: at subscribe time
    /// and at each keepalive. A read of its own (see
    /// [`Subscription::spawn_log_read`]), so that the keepalive's `PING` goes out within the
    /// connect timeout even when the log connection hangs and every `next` is cut short sooner.
    async fn log_tail(&mut self) -> Option<Mark> {
        loop {
            if self.tail_read.is_none() {
                let mut tail = redis::pipe();
                tail.cmd("XINFO").arg("STREAM").arg(keys::EVENT_LOG);
                self.tail_read = Some(self.spawn_log_read(tail));
            }
            let read = self.tail_read.as_mut()?;
            let outcome = read.await;
            self.tail_read = None;
            // A tail read long ago (the caller came back late) still makes a safe mark, but an
            // old one: the next gap would be read from there, longer than it is. Read it again,
            // once: a caller whose every call is cut short might never see a fresh one, and the
            // PING must go out.
            if let Ok(Ok((connection, _, at))) = &outcome
                && at.elapsed() > KEEPALIVE
                && !self.tail_reread
            {
                self.log = Some(connection.clone());
                self.tail_reread = true;
                continue;
            }
            self.tail_reread = false;
            return self.tail_of(outcome);
        }
    }

    /// The mark a finished tail read gives.
    fn tail_of(&mut self, outcome: std::result::Result<LogRead, tokio::task::JoinError>) -> Option<Mark> {
        let replies = self.replies(outcome);
        let oversized = replies
            .as_ref()
            .ok()
            .and_then(|replies| replies.first())
            .and_then(io::oversized_info);
        if let Some(size) = oversized {
            tracing::warn!(
                key = keys::EVENT_LOG,
                bytes = size,
                "XINFO STREAM answer over the bound; the subscription's keepalive keeps its mark for {:?}",
                io::INFO_PAUSE
            );
            self.tail_paused_until = Some(tokio::time::Instant::now() + io::INFO_PAUSE);
        }
        match replies.and_then(|replies| Mark::of(replies.first())) {
            Ok(mark) => Some(mark),
            Err(error) => {
                tracing::debug!(error, "cannot read the event log; a gap would not be filled");
                None
            }
        }
    }

    /// The replies of a finished log read, keeping its connection for the next read; or why
    /// it failed, dropping the connection.
    fn replies(
        &mut self,
        outcome: std::result::Result<LogRead, tokio::task::JoinError>,
    ) -> std::result::Result<Vec<Value>, String> {
        match outcome {
            Ok(Ok((connection, replies, _))) => {
                self.log = Some(connection);
                Ok(replies)
            }
            Ok(Err(error)) => {
                self.log = None;
                Err(error)
            }
            Err(join) => {
                self.log = None;
                Err(join.to_string())
            }
        }
    }

    /// No mark any more: a gap until the next one is not filled. The keepalive reads the log
    /// again and sets one: now, not in 2 s.
    fn forget_mark(&mut self) {
        self.mark = None;
        self.keepalive_at = tokio::time::Instant::now();
    }

    /// After a reconnect: queues the logged messages on our channels after the mark that were
    /// not delivered yet, tells whether the log still held all of them, and moves the mark to
    /// the log's end.
    ///
    /// The log read runs as a task of its own, kept in `gap_read` until it is done: a caller
    /// whose timeout cuts `next` short (a GUI polling every few milliseconds) waits for the same
    /// read at its next call instead of starting it again, so a long read still finishes.
    async fn fill_gap(&mut self) {
        let Some(mark) = self.mark else {
            self.counts.unrecovered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                patterns = ?self.patterns,
                "resubscribed with no mark in the event log (it could not be read); messages published meanwhile are not recovered"
            );
            self.forget_mark();
            return;
        };
        if self.gap_read.is_none() {
            // The entries after the mark, and how many the log says were added (in one
            // transaction, so that both see the same log): fewer entries than were added means
            // some are gone.
            let mut reads = redis::pipe();
            reads.atomic();
            reads
                .cmd("XRANGE")
                .arg(keys::EVENT_LOG)
                .arg(format!("({}", mark.id))
                .arg("+")
                .arg("COUNT")
                // One more than is filled, to tell a longer gap.
                .arg(MAX_RECOVERED + 1);
            reads.cmd("XINFO").arg("STREAM").arg(keys::EVENT_LOG);
            self.gap_read = Some(self.spawn_log_read(reads));
        }
        let Some(read) = self.gap_read.as_mut() else { return };
        // Cancel-safe: the task goes on, and the next call awaits it again.
        let outcome = read.await;
        self.gap_read = None;
        let read = self
            .replies(outcome)
            .and_then(|replies| range_reply(replies.first()).map(|reply| (Mark::of(replies.get(1)), reply)));
        let (end, mut reply) = match read {
            Ok(read) => read,
            Err(error) => {
                self.counts.unrecovered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error,
                    "cannot read the event log after resubscribing; messages of the gap are lost"
                );
                self.forget_mark();
                return;
            }
        };
        match &end {
            Ok(end) => {
                if let Some(reason) = mark.lost_before(end, reply.ids.len()) {
                    self.counts.unrecovered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        reason,
                        patterns = ?self.patterns,
                        "the event log does not hold the whole gap; some messages published while disconnected are lost"
                    );
                }
            }
            Err(error) => {
                self.counts.unrecovered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error,
                    "cannot tell whether the event log held the whole gap (XINFO STREAM failed); counted as unrecovered"
                );
            }
        }
        reply.ids.truncate(MAX_RECOVERED);
        let mut filled = 0;
        for entry in &reply.ids {
            let (Some(channel), Some(payload)) = (entry.get::<String>("channel"), entry.get::<Vec<u8>>("payload"))
            else {
                continue;
            };
            let Some(pattern) = self.matchers.iter().position(|matcher| matcher.matches(&channel)) else {
                continue;
            };
            if payload.len() > crate::model::MAX_DOCUMENT_BYTES {
                tracing::warn!(
                    channel,
                    bytes = payload.len(),
                    "skipped an oversized event in the event log"
                );
                continue;
            }
            let hash = self.hash(&channel, &payload);
            if self.delivered_set.contains(&hash) {
                continue;
            }
            let mut message = decode_parts(channel, Some(self.patterns[pattern].clone()), &payload);
            message.from_log = true;
            self.from_log.insert(hash);
            self.backlog.push_back(message);
            filled += 1;
        }
        // Past a gap too long for one read, the rest is skipped (and was reported above).
        match end {
            Ok(end) => self.mark = Some(end),
            Err(_) => self.forget_mark(),
        }
        if filled > 0 {
            tracing::info!(messages = filled, "filled the subscription's gap from the event log");
        }
    }

    fn hash(&self, channel: &str, payload: &[u8]) -> u64 {
        self.hasher.hash_one((channel, payload))
    }

    /// Remembers a handed-over message, so the log does not hand it over again.
    fn delivered(&mut self, hash: u64) {
        if self.delivered_set.insert(hash) {
            self.delivered.push_back(hash);
            if self.delivered.len() > DELIVERED_MEMORY
                && let Some(oldest) = self.delivered.pop_front()
            {
                self.delivered_set.remove(&oldest);
            }
        }
    }

    async fn connect(&self) -> Result<Direct> {
        subscribe_on(self.locator.clone(), self.patterns.clone(), self.connect_timeout).await
    }

    /// The patterns subscribed to.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether the subscription holds a connection it takes as live: false from a failure (a
    /// closed connection, a `PING` unanswered in time) until the next successful resubscribe.
    pub fn is_connected(&self) -> bool {
        self.live.is_some()
    }

    /// How many times the connection was lost and made again.
    pub fn reconnects(&self) -> u64 {
        self.counts.reconnects()
    }

    /// How many messages were handed over from the event log after reconnects.
    pub fn recovered(&self) -> u64 {
        self.counts.recovered()
    }

    /// How many reconnects left messages behind that the event log could not give back: it
    /// could not be read, or it no longer holds every entry published while the connection
    /// was down (trimmed to its `MAXLEN`, deleted, or lost by Redis). Each is logged as a
    /// warning with its reason.
    pub fn unrecovered(&self) -> u64 {
        self.counts.unrecovered()
    }

    /// The counts of [`Subscription::reconnects`], [`Subscription::recovered`] and
    /// [`Subscription::unrecovered`], as a handle that reads them while the subscription is in
    /// use (a `next` pending on another task or thread).
    pub fn counts(&self) -> SubscriptionCounts {
        self.counts.clone()
    }

    /// Waits for the next message, reconnecting as often as needed; `None` never comes while
    /// the subscription lives (the `Option` is kept for `while let` loops).
    ///
    /// Cancel-safe: dropping the future (a timeout around it) loses no message. A message is
    /// only taken off the connection or the backlog when it is returned, and a gap found
    /// before the cancellation is filled at the next call (`gap_open`).
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(message) = self.backlog.pop_front() {
                self.counts.recovered.fetch_add(1, Ordering::Relaxed);
                let hash = self.hash(&message.channel, message.payload.as_bytes());
                self.delivered(hash);
                return Some(message);
            }
            if self.live.is_none() {
                self.reconnect().await;
            }
            if self.gap_open {
                // Changes nothing until its log read is back, so a cancellation here only
                // means it runs again at the next call.
                self.fill_gap().await;
                self.gap_open = false;
                continue;
            }
            if let Some(live) = &mut self.live {
                let pong_due = self.ping.as_ref().map(|(_, due)| *due);
                tokio::select! {
                    answer = live.next_answer() => match answer {
                        Ok(Value::Push { kind: PushKind::PMessage, data }) => {
                            let Some((pattern, channel, payload)) = pmessage(data) else {
                                tracing::warn!("skipped a pmessage that is not three strings");
                                continue;
                            };
                            let hash = self.hash(&channel, &payload);
                            if self.from_log.remove(&hash) {
                                // Handed over from the log already.
                                continue;
                            }
                            self.delivered(hash);
                            return Some(decode_parts(channel, Some(pattern), &payload));
                        }
                        Ok(Value::SimpleString(pong)) if pong == "PONG" && self.ping.is_some() => {
                            // The answer follows every message published before the log read.
                            if let Some((Some(tail), _)) = self.ping.take() {
                                self.mark = Some(tail);
                                self.from_log.clear();
                            }
                            continue;
                        }
                        // Other pushes (a subscription count, a server's notice) carry no message.
                        Ok(Value::Push { .. }) => continue,
                        Ok(other) => tracing::warn!(answer = ?other, "subscription connection answered out of turn; resubscribing"),
                        Err(err) => tracing::warn!(error = %err, "subscription connection closed; resubscribing"),
                    },
                    () = tokio::time::sleep_until(self.keepalive_at), if pong_due.is_none() => {
                        // The log's tail first, then a PING whose answer follows every message
                        // published before that read: past it, the tail is a safe mark. The
                        // keepalive stays due until the PING is out, so a `next` cut short
                        // during the read comes back to it.
                        // Paused: no new mark from this keepalive, unless there is none.
                        let paused = self.mark.is_some()
                            && self
                                .tail_paused_until
                                .is_some_and(|until| tokio::time::Instant::now() < until);
                        let tail = if paused { None } else { self.log_tail().await };
                        self.keepalive_at = tokio::time::Instant::now() + KEEPALIVE;
                        let Some(live) = &mut self.live else { continue };
                        let ping = redis::cmd("PING").get_packed_command();
                        if live.send(&ping, 1).await.is_ok() {
                            self.ping = Some((tail, tokio::time::Instant::now() + PING_TIMEOUT));
                            continue;
                        }
                        tracing::warn!("subscription connection closed; resubscribing");
                    }
                    () = tokio::time::sleep_until(pong_due.unwrap_or(self.keepalive_at)), if pong_due.is_some() => {
                        tracing::warn!("subscription connection silent; resubscribing");
                    }
                }
            }
            self.ping = None;
            self.live = None;
            self.gap_open = true;
        }
    }

    /// Resubscribes, with capped backoff between attempts. Cancel-safe: the attempt runs as a
    /// task of its own (`connecting`) and the backoff lives in the subscription, so a caller
    /// whose timeouts are shorter than a connect (a lookup through Sentinel, a slow link) waits
    /// for the same attempt at its next call, and a down server is not tried at the caller's
    /// polling rate.
    async fn reconnect(&mut self) {
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            let attempt = match self.connecting.as_mut() {
                Some(attempt) => attempt,
                None => {
                    let connect = subscribe_on(self.locator.clone(), self.patterns.clone(), self.connect_timeout);
                    self.connecting.insert(AbortOnDropHandle::new(tokio::spawn(connect)))
                }
            };
            let outcome = attempt.await;
            self.connecting = None;
            match outcome {
                Ok(Ok(live)) => {
                    self.live = Some(live);
                    self.backoff.reset();
                    // The log connection may be on the server the subscription just left
                    // (with Sentinel, an old master); the next read opens one on the new one.
                    // A read still running there is dropped with it (the gap is read again,
                    // from the same mark).
                    self.log = None;
                    self.tail_read = None;
                    self.tail_reread = false;
                    self.gap_read = None;
                    self.counts.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(patterns = ?self.patterns, "resubscribed");
                    return;
                }
                Ok(Err(err)) => tracing::debug!(error = %err, "resubscribe failed"),
                Err(join) => tracing::debug!(error = %join, "resubscribe failed"),
            }
            self.retry_at = Some(tokio::time::Instant::now() + self.backoff.next_delay());
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("patterns", &self.patterns)
            .field("connected", &self.live.is_some())
            .field("reconnects", &self.reconnects())
            .field("recovered", &self.recovered())
            .field("unrecovered", &self.unrecovered())
            .field("mark", &self.mark.map(|mark| mark.id.to_string()))
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` reply read in a pipeline, or why it failed.
fn range_reply(reply: Option<&Value>) -> std::result::Result<redis::streams::StreamRangeReply, String> {
    match reply {
        None => Err("no reply to the event log read".to_owned()),
        Some(Value::ServerError(err)) => Err(err.to_string()),
        Some(reply) => redis::FromRedisValue::from_redis_value_ref(reply).map_err(|err| err.to_string()),
    }
}

/// A [`Subscription`]'s counts, shared with it: see [`Subscription::counts`].
#[derive(Debug, Clone, Default)]
pub struct SubscriptionCounts {
    reconnects: Arc<AtomicU64>,
    recovered: Arc<AtomicU64>,
    unrecovered: Arc<AtomicU64>,
}

impl SubscriptionCounts {
    /// See [`Subscription::reconnects`].
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// See [`Subscription::recovered`].
    pub fn recovered(&self) -> u64 {
        self.recovered.load(Ordering::Relaxed)
    }

    /// See [`Subscription::unrecovered`].
    pub fn unrecovered(&self) -> u64 {
        self.unrecovered.load(Ordering::Relaxed)
    }
}

/// A place in the event log: every message on our channels logged up to `id` was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    /// The log's `last-generated-id` then: `0-0` when the log did not exist.
    id: EntryId,
    /// The log's `entries-added` then; with its value later, how many entries came after `id`.
    /// `None` from a server that does not count them (before Redis 7.0).
    added: Option<u64>,
}

impl Mark {
    /// The log's end, from its `XINFO STREAM` reply: `0-0` with nothing added when the log
    /// does not exist; why not for any other answer.
    fn of(reply: Option<&Value>) -> std::result::Result<Mark, String> {
        match reply {
            None => Err("no reply to the event log read".to_owned()),
            Some(Value::ServerError(err)) if err.details().is_some_and(|details| details.contains("no such key")) => {
                Ok(Mark {
                    id: EntryId::ZERO,
                    added: Some(0),
                })
            }
            Some(Value::ServerError(err)) => Err(err.to_string()),
            Some(reply) => parse_info(reply)
                .map(|info| Mark {
                    id: info.last_generated,
                    added: info.counts_added.then_some(info.entries_added),
                })
                .ok_or_else(|| format!("{}: XINFO STREAM answered {reply:?}", keys::EVENT_LOG)),
        }
    }

    /// Why a gap read of `read` entries after this mark, with the log's `end` seen in the same
    /// transaction, did not get every entry added after the mark; `None` when it did.
    ///
    /// Every entry added to the log after the mark counts in `entries-added`, so the read must
    /// find `end.added - self.added` of them: fewer means some were trimmed (`MAXLEN`) or
    /// deleted, and a log that counts fewer than at the mark, or whose end went back, is not the
    /// log the mark was taken in (deleted, or lost by Redis), so what was published between
    /// the mark and its loss is gone. Entries trimmed at or before the mark were delivered
    /// already and do not count.
    /// Without the counts (a server before Redis 7.0) only a log that went back and a gap too
    /// long for one read are told.
    fn lost_before(&self, end: &Mark, read: usize) -> Option<String> {
        let log = keys::EVENT_LOG;
        let cap = u64::try_from(MAX_RECOVERED).unwrap_or(u64::MAX);
        let read = u64::try_from(read).unwrap_or(u64::MAX);
        if end.id < self.id {
            return Some(format!(
                "{log} went back to {} from {}: deleted, or lost by Redis",
                end.id, self.id
            ));
        }
        let (Some(then), Some(now)) = (self.added, end.added) else {
            return (read > cap).then(|| {
                format!(
                    "more than {MAX_RECOVERED} entries after {}; the later ones are skipped",
                    self.id
                )
            });
        };
        if now < then {
            return Some(format!(
                "{log} counts {now} entries added where it counted {then} at {}: deleted, or lost by Redis",
                self.id
            ));
        }
        let added = now - then;
        let wanted = added.min(cap + 1);
        if read < wanted {
            return Some(format!(
                "{log}: {} of the {added} entries added after {} are gone (trimmed or deleted)",
                wanted - read,
                self.id
            ));
        }
        if read > added {
            return Some(format!(
                "{log} holds {read} entries after {} where {added} were added since: it was deleted and written again",
                self.id
            ));
        }
        if added > cap {
            return Some(format!(
                "{added} entries after {}, more than the {MAX_RECOVERED} read; the later ones are skipped",
                self.id
            ));
        }
        None
    }
}

/// Connects to the server `locator` finds and subscribes to `patterns`, within twice
/// `connect_timeout` (with Sentinel, the lookup comes first).
async fn subscribe_on(locator: Locator, patterns: Vec<String>, connect_timeout: Duration) -> Result<Direct> {
    let attempt = async {
        let client = locator.client().await?;
        let mut live = Direct::connect(&client, connect_timeout)
            .await
            .map_err(|err| Error::from_redis("subscribe", err))?
            .ok_or_else(|| Error::UnexpectedReply {
                operation: "subscribe",
                detail: "the server's address is not TCP".to_owned(),
            })?;
        let command = redis::cmd("PSUBSCRIBE").arg(&patterns).get_packed_command();
        live.send(&command, patterns.len())
            .await
            .map_err(|err| Error::from_redis("subscribe", err))?;
        for _ in &patterns {
            let answer = live.next_answer().await.and_then(Value::extract_error);
            match answer.map_err(|err| Error::from_redis("subscribe", err))? {
                Value::Push {
                    kind: PushKind::PSubscribe,
                    ..
                } => {}
                other => {
                    return Err(Error::UnexpectedReply {
                        operation: "subscribe",
                        detail: format!(
                            "{:?} instead of a psubscribe confirmation",
                            crate::decode::preview(&format!("{other:?}"))
                        ),
                    });
                }
            }
        }
        Ok::<_, Error>(live)
    };
    let limit = connect_timeout * 2;
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(live)) => Ok(live),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(Error::Timeout {
            operation: "subscribe",
            after: limit,
        }),
    }
}

/// The pattern, channel and payload of a `pmessage` push; `None` when it is not three strings.
fn pmessage(data: Vec<Value>) -> Option<(String, String, Vec<u8>)> {
    let mut parts = data.into_iter().map(|part| match part {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    });
    let pattern = String::from_utf8_lossy(&parts.next()??).into_owned();
    let channel = String::from_utf8_lossy(&parts.next()??).into_owned();
    let payload = parts.next()??;
    Some((pattern, channel, payload))
}

fn decode_parts(channel: String, pattern: Option<String>, bytes: &[u8]) -> Message {
    let event = Event::from_json(bytes).map_err(|source| Error::Decode {
        key: format!("channel {channel}"),
        what: "event",
        source,
    });
    Message {
        channel,
        pattern,
        payload: String::from_utf8_lossy(bytes).into_owned(),
        event,
        from_log: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(id: &str, added: u64) -> Mark {
        Mark {
            id: id.parse().unwrap(),
            added: Some(added),
        }
    }

    /// The read must find every entry added after the mark: fewer were trimmed or deleted, more
    /// or a count that went back mean another log; trimming at or before the mark is no loss.
    #[test]
    fn gaps_the_log_cannot_fill() {
        let at = mark("5-0", 5);
        assert_eq!(at.lost_before(&mark("9-0", 9), 4), None, "4 added, 4 read");
        assert_eq!(at.lost_before(&mark("5-0", 5), 0), None, "nothing added");
        assert!(at.lost_before(&mark("9-0", 9), 3).unwrap().contains("1 of the 4"));
        assert!(at.lost_before(&mark("9-0", 3), 1).unwrap().contains("where it counted"));
        assert!(at.lost_before(&mark("4-0", 9), 4).unwrap().contains("went back"));
        assert!(at.lost_before(&mark("9-0", 6), 4).unwrap().contains("written again"));
        let cap = u64::try_from(MAX_RECOVERED).unwrap();
        let long = mark("99999-0", 5 + cap + 10);
        assert!(at.lost_before(&long, MAX_RECOVERED + 1).unwrap().contains("more than"));
        assert!(at.lost_before(&long, MAX_RECOVERED).unwrap().contains("are gone"));
        assert_eq!(at.lost_before(&mark("99999-0", 5 + cap), MAX_RECOVERED), None);
        let empty = mark("0-0", 0);
        assert_eq!(empty.lost_before(&mark("3-0", 3), 3), None, "a log made after the mark");
        let uncounted = |id: &str| Mark {
            id: id.parse().unwrap(),
            added: None,
        };
        assert_eq!(
            uncounted("5-0").lost_before(&uncounted("9-0"), 1),
            None,
            "no counts, no claim"
        );
        assert!(
            uncounted("5-0")
                .lost_before(&uncounted("4-0"), 0)
                .unwrap()
                .contains("went back")
        );
    }
}

//! The follow itself, run inside [`crate::follow::Follower::next`]: connect, snapshot or
//! resume, then read, poll and reconnect forever.
//!
//! The task keeps the follower's own view of what it already sent (`docs`, `nodes`) so that
//! polls send only differences, and the [`Cursor`] that every change carries. Three things end
//! a pass of the main loop: the consumer is gone (the task ends), Redis failed (reconnect with
//! backoff, then resume from the cursor), or the cursor points at something that no longer
//! exists (send a resync and a fresh snapshot).
//!
//! Bad stored data is none of these: a key of the wrong type or a value that does not decode
//! is reported once as a [`ChangeKind::Corrupt`] (`corrupt` remembers what was reported) and
//! the loop goes on. Only errors of the connection itself end a pass.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use redis::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::connection::ManagerConfig;
use crate::decode;
use crate::direct;
use crate::error::Error;
use crate::follow::cursor::Cursor;
use crate::follow::io::{self, Connections, RawEntry};
use crate::follow::{Change, ChangeKind, FollowConfig, FollowItem, LoggedEvent, NodeView, Scope};
use crate::ids::{EntryId, SessionId};
use crate::keys;
use crate::manager::{CorruptEntry, StateManager};
use crate::model::{RobotState, StrokeProgress, event_types};
use crate::sentinel::Locator;

/// First wait before reconnecting; doubled after each failure up to `max_backoff`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Why a pass of the main loop ended.
enum Stop {
    /// The consumer dropped the follower.
    Closed,
    /// Redis failed or could not be reached.
    Redis(Error),
    /// The cursor points past trimmed or lost entries; the reason is for a person.
    Gap(String),
}

impl From<Error> for Stop {
    fn from(err: Error) -> Stop {
        Stop::Redis(err)
    }
}

/// A session document as read now.
enum DocRead {
    /// No progress hash.
    Missing,
    /// A key whose document does not decode (or that is not a hash); treated as unchanged.
    Corrupt(CorruptEntry),
    /// The document.
    Doc(Box<StrokeProgress>),
}

/// The state of one follower; see the module docs.
pub(crate) struct FollowTask {
    manager_config: ManagerConfig,
    /// Finds the master on every reconnect (with Sentinel, it may have moved).
    locator: Locator,
    scope: Scope,
    config: FollowConfig,
    /// The consumer's end is the [`crate::follow::Follower`]; a failed send means it is gone.
    tx: mpsc::Sender<FollowItem>,
    /// `None` while disconnected.
    connections: Option<Connections>,
    cursor: Cursor,
    /// The cursor from before the last read: a read checks the streams before it reads them
    /// (in the same pipeline), so what was deleted while the read before it waited is looked
    /// for from here (see [`FollowTask::read_batch`]).
    checked_from: Cursor,
    /// The last document sent for each session.
    docs: BTreeMap<SessionId, StrokeProgress>,
    /// The last view sent for each node.
    nodes: BTreeMap<String, NodeView>,
    /// The last robot state sent for each node.
    robots: BTreeMap<String, RobotState>,
    /// The corrupt keys the consumer was told of, with the error told; a key is told again
    /// only when its error changes or after it read well in between.
    corrupt: BTreeMap<String, String>,
    /// True for a resumed follower until its first poll: sessions it has not sent yet that
    /// are not executing are sent as documents only, since the consumer had them already.
    baseline: bool,
    /// Whether the last read drained the event log; polls wait for it, so a resumed follower
    /// replays the log (and learns of the sessions started meanwhile) before polling.
    caught_up: bool,
    /// The event log's key holds another type (any client can store anything): reads leave it
    /// out, and polls alone find new sessions, until it is a stream again or gone.
    log_unreadable: bool,
    /// Streams whose `XINFO STREAM` answer was over [`io::INFO_REPLY_BOUND`] (another client wrote
    /// a huge first or last entry, which every such answer repeats), with when to check them
    /// again: meanwhile each read asks for their length alone.
    info_paused: BTreeMap<String, Instant>,
    next_poll: Instant,
}

impl FollowTask {
    pub(crate) fn new(
        manager: &StateManager,
        scope: Scope,
        config: FollowConfig,
        tx: mpsc::Sender<FollowItem>,
    ) -> FollowTask {
        FollowTask {
            manager_config: manager.config().clone(),
            locator: manager.locator().clone(),
            scope,
            config,
            tx,
            connections: None,
            cursor: Cursor::default(),
            checked_from: Cursor::default(),
            docs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            robots: BTreeMap::new(),
            corrupt: BTreeMap::new(),
            baseline: false,
            caught_up: false,
            log_unreadable: false,
            info_paused: BTreeMap::new(),
            next_poll: Instant::now(),
        }
    }

    /// Runs until the consumer is gone (cancellation is the caller's `select!`).
    #[tracing::instrument(name = "follow", skip_all, fields(scope = ?self.scope))]
    pub(crate) async fn run(mut self, mut resume: Option<Cursor>) {
        let mut started = false;
        let mut lost = false;
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let outcome = match Connections::open(&self.manager_config, &self.locator, self.config.block).await {
                Err(err) => Err(Stop::Redis(err)),
                Ok(connections) => {
                    self.connections = Some(connections);
                    backoff = INITIAL_BACKOFF;
                    if lost {
                        lost = false;
                        tracing::info!("redis reachable again; resuming from the cursor");
                        if self.send(FollowItem::Reconnected).await.is_err() {
                            return;
                        }
                    }
                    self.serve(&mut started, &mut resume).await
                }
            };
            let error = match outcome {
                Ok(never) => match never {},
                Err(Stop::Closed) => return,
                Err(Stop::Redis(err)) => err.report().to_string(),
                // `serve` answers gaps itself; should one escape, a reconnect resyncs too.
                Err(Stop::Gap(reason)) => reason,
            };
            self.connections = None;
            if !lost {
                lost = true;
                tracing::warn!(error = %error, "follow lost redis");
                if self.send(FollowItem::ConnectionLost { error }).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// Starts (snapshot or resume) and follows until Redis fails or the consumer goes; a gap
    /// is answered here with a resync and a fresh snapshot.
    async fn serve(&mut self, started: &mut bool, resume: &mut Option<Cursor>) -> Result<Infallible, Stop> {
        loop {
            match self.serve_once(started, resume).await {
                Err(Stop::Gap(reason)) => {
                    tracing::info!(reason = %reason, "follow cursor is gone; resyncing");
                    self.send(FollowItem::Resync { reason }).await?;
                    *started = false;
                    *resume = None;
                }
                other => return other,
            }
        }
    }

    async fn serve_once(&mut self, started: &mut bool, resume: &mut Option<Cursor>) -> Result<Infallible, Stop> {
        if !*started {
            match resume.take() {
                None => self.send_snapshot().await?,
                Some(cursor) => {
                    self.cursor = cursor;
                    self.baseline = true;
                    self.caught_up = false;
                }
            }
            self.checked_from = self.cursor.clone();
            *started = true;
        }
        self.check_cursor().await?;
        loop {
            if self.caught_up && Instant::now() >= self.next_poll {
                self.poll().await?;
                self.next_poll = Instant::now() + self.config.poll_interval;
            }
            self.read_batch().await?;
        }
    }

    fn connections(&self) -> Result<Connections, Stop> {
        // Only called from `serve`, which runs after the connections were opened.
        self.connections
            .clone()
            .ok_or_else(|| Stop::Redis(Error::NotConnected("follow")))
    }

    async fn send(&self, item: FollowItem) -> Result<(), Stop> {
        self.tx.send(item).await.map_err(|_| Stop::Closed)?;
        if self.tx.capacity() + 1 == self.tx.max_capacity() {
            // The only item waiting: the consumer is in `Follower::next` for it. Hand the turn
            // back, so that `next` returns it now rather than after this follow has written
            // its next read (a system call) and found nothing more to do.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn emit(&self, kind: ChangeKind) -> Result<(), Stop> {
        let change = Change {
            cursor: self.cursor.clone(),
            kind,
        };
        self.send(FollowItem::Change(change)).await
    }

    /// Tells the consumer that `entry`'s key is corrupt, unless it was told so already.
    async fn report(&mut self, entry: CorruptEntry) -> Result<(), Stop> {
        if self.corrupt.get(&entry.key) == Some(&entry.error) {
            return Ok(());
        }
        tracing::debug!(key = %entry.key, error = %entry.error, "corrupt entry");
        self.corrupt.insert(entry.key.clone(), entry.error.clone());
        let CorruptEntry { key, error } = entry;
        self.emit(ChangeKind::Corrupt { key, error }).await
    }

    /// Stops tailing a session whose history key is not a stream, and reports it.
    async fn history_not_a_stream(&mut self, session_id: &SessionId) -> Result<(), Stop> {
        self.cursor.history.remove(session_id);
        self.report(io::wrong_type(&keys::history(session_id), "stream")).await
    }

    async fn send_snapshot(&mut self) -> Result<(), Stop> {
        let connections = self.connections()?;
        let snapshot =
            io::read_snapshot(&connections.commands, &self.manager_config, &self.scope, &self.config).await?;
        self.cursor = snapshot.cursor.clone();
        self.docs = snapshot
            .sessions
            .iter()
            .filter_map(|(session_id, progress)| Some((SessionId::new(session_id.as_str()).ok()?, progress.clone())))
            .collect();
        self.nodes = snapshot.nodes.clone();
        self.robots = snapshot.robots.clone();
        self.corrupt = snapshot
            .corrupt
            .iter()
            .map(|entry| (entry.key.clone(), entry.error.clone()))
            .collect();
        self.baseline = false;
        self.caught_up = true;
        self.next_poll = Instant::now() + self.config.poll_interval;
        self.send(FollowItem::Snapshot(Box::new(snapshot))).await
    }

    /// Fails with a gap when the event log or a tailed history lost entries after the cursor,
    /// or during the last read (reconnecting after a read that delivered entries: its check
    /// from [`FollowTask::checked_from`] had not run yet).
    async fn check_cursor(&mut self) -> Result<(), Stop> {
        let mut connection = self.connections()?.commands;
        let tracked: Vec<SessionId> = self.cursor.history.keys().cloned().collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("XINFO").arg("STREAM").arg(keys::EVENT_LOG);
        for session_id in &tracked {
            pipe.cmd("XINFO").arg("STREAM").arg(keys::history(session_id));
        }
        let replies: Vec<redis::RedisResult<Value>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|err| Error::from_redis("follow check cursor", err))?;
        self.check_event_log(replies.first())?;
        for (session_id, reply) in tracked.iter().zip(replies.iter().skip(1)) {
            self.check_history(session_id, reply)?;
        }
        // Nothing is lost up to the cursor: the reads' checks start from it.
        self.checked_from = self.cursor.clone();
        Ok(())
    }

    /// A log of another type is a gap when the cursor is in the log (what it held after the
    /// cursor is gone); from a cursor at the start, the reads leave it out
    /// ([`FollowTask::log_unreadable`]) and the check is made once it is a stream again, or gone.
    ///
    /// Entries deleted after [`FollowTask::checked_from`] are a gap; see [`io::StreamInfo::gap_after`].
    fn check_event_log(&self, reply: Option<&redis::RedisResult<Value>>) -> Result<(), Stop> {
        if io::is_wrong_type(reply) {
            return self.log_lost();
        }
        let since = self.checked_from.events.min(self.cursor.events);
        match reply.and_then(|reply| reply.as_ref().ok()).and_then(io::parse_info) {
            Some(info) => match info.gap_after(keys::EVENT_LOG, since, self.cursor.events) {
                Some(reason) => Err(Stop::Gap(reason)),
                None => Ok(()),
            },
            None if self.cursor.events > EntryId::ZERO => {
                Err(Stop::Gap(format!("{} is gone (Redis lost its data?)", keys::EVENT_LOG)))
            }
            None => Ok(()),
        }
    }

    /// The event log holds another type now: a gap when the cursor pointed into it.
    fn log_lost(&self) -> Result<(), Stop> {
        if self.cursor.events > EntryId::ZERO {
            return Err(Stop::Gap(format!(
                "{}: the key is not a stream any more; what it held after {} is gone",
                keys::EVENT_LOG,
                self.cursor.events
            )));
        }
        Ok(())
    }

    /// A missing history is not a gap: the session was cleared or expired, which the next
    /// document read reports. Entries deleted after [`FollowTask::checked_from`] (the cursor
    /// for a session tailed since) are a gap; see [`io::StreamInfo::gap_after`].
    fn check_history(&self, session_id: &SessionId, reply: &redis::RedisResult<Value>) -> Result<(), Stop> {
        let Some(position) = self.cursor.history(session_id) else {
            return Ok(());
        };
        let since = self
            .checked_from
            .history(session_id)
            .map_or(position, |since| since.min(position));
        let info = reply.as_ref().ok().and_then(io::parse_info);
        match info.and_then(|info| info.gap_after(&keys::history(session_id), since, position)) {
            Some(reason) => Err(Stop::Gap(reason)),
            None => Ok(()),
        }
    }

    /// The checks (`XINFO STREAM` of every stream read), then one `XREAD BLOCK` over the event
    /// log and every tailed history, in one pipeline.
    ///
    /// The checks run before the read, so Redis answers them at once and the answer the read
    /// waits for carries the entries alone: checked after the read, they made the follow's
    /// latency about 20 us worse at the median and 50 us at p99 (issue #18, docs/PERFORMANCE.md).
    /// Each check looks for entries deleted since the cursor from before the *previous* read
    /// ([`FollowTask::checked_from`]), so what was deleted during a read is found by the next
    /// read's checks at the latest:
    /// - what was deleted before a read's checks is found by them, before its entries go out;
    /// - a read that waits is answered right after the command, script or transaction that
    ///   wrote what it waits for, so the only entries past the cursor it can miss are ones that
    ///   same step both wrote and deleted (an `XADD` and an `XTRIM` in one `MULTI`), which no
    ///   client could ever read;
    /// - a read that finds its data at once runs right after its checks, unless the pipeline
    ///   reached Redis in two parts (over a network, with many streams) and another client's
    ///   command ran in between; and on Redis before 7.2 a trim or an `XDEL` can come between
    ///   the blocking read and the re-read below.
    ///
    /// In those three cases the entries read go out first, and the resync comes when the next
    /// read is answered (at the next entry, or at the end of its block, 1 s by default); a
    /// follower resumed from the cursor of such an entry before that does not report the gap.
    ///
    /// When caught up, on a server before Redis 7.2, an `XREAD` of the event log without
    /// `BLOCK` is pipelined behind the blocking one: such a server answers a blocked read with
    /// the one stream whose write woke it, which for a progress update (its history and the
    /// event log written in one script, the history first) is the history, so the log's entry
    /// would otherwise take a second round trip. The second read runs after the first is
    /// answered (other clients' commands may run in between) from the same id, so its entries
    /// of the log are a superset of the first's unless a trim or an `XDEL` came in between,
    /// which the next read's checks find; the two are merged. (Reading every stream again
    /// doubled the data of each read and made the follow's median latency 20 to 35 us worse.)
    async fn read_batch(&mut self) -> Result<(), Stop> {
        let connections = self.connections()?;
        let mut blocking = connections.blocking.lock().await;
        let tracked: Vec<(SessionId, EntryId)> = self
            .cursor
            .history
            .iter()
            .map(|(session_id, id)| (session_id.clone(), *id))
            .collect();
        let history_keys: Vec<String> = tracked
            .iter()
            .map(|(session_id, _)| keys::history(session_id))
            .collect();
        // The streams read: the event log (unless it holds another type), then the histories.
        let read_log = !self.log_unreadable;
        let mut stream_keys: Vec<&str> = Vec::with_capacity(history_keys.len() + 1);
        let mut ids = Vec::with_capacity(history_keys.len() + 1);
        if read_log {
            stream_keys.push(keys::EVENT_LOG);
            ids.push(self.cursor.events.to_string());
        }
        stream_keys.extend(history_keys.iter().map(String::as_str));
        ids.extend(tracked.iter().map(|(_, id)| id.to_string()));
        let block_ms = u64::try_from(self.config.block.as_millis()).unwrap_or(u64::MAX).max(1);
        // The cursor this read starts from: the next read's checks start from it.
        let before = self.cursor.clone();

        // The checks go first: Redis answers them at once, while the read waits for data, so
        // the answer that wakes the read carries the entries alone. Every read checks the event
        // log, read or not: it tells when the log is back. A stream whose last `XINFO STREAM`
        // was over the bound is asked its length instead until its pause ends: that still tells
        // another type, but not trims and deletions.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let now = Instant::now();
        let info_keys: Vec<&str> = std::iter::once(keys::EVENT_LOG)
            .chain(history_keys.iter().map(String::as_str))
            .collect();
        // Streams no longer followed are forgotten.
        self.info_paused.retain(|key, _| info_keys.contains(&key.as_str()));
        let checked: Vec<bool> = info_keys
            .iter()
            .map(|key| self.info_paused.get(*key).is_none_or(|until| now >= *until))
            .collect();
        for (key, checked) in info_keys.iter().zip(&checked) {
            if *checked {
                pipe.cmd("XINFO").arg("STREAM").arg(*key);
            } else {
                pipe.cmd("XLEN").arg(*key);
            }
        }
        let mut reads = 0;
        if !stream_keys.is_empty() {
            pipe.cmd("XREAD")
                .arg("COUNT")
                .arg(self.config.batch)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&stream_keys)
                .arg(&ids);
            reads += 1;
        }
        if read_log && self.caught_up && connections.reread {
            pipe.cmd("XREAD")
                .arg("COUNT")
                .arg(self.config.batch)
                .arg("STREAMS")
                .arg(keys::EVENT_LOG)
                .arg(&ids[0]);
            reads += 1;
        }
        if reads == 0 {
            // Nothing to block on: wait as a blocked read would, so that polls keep their pace.
            drop(blocking);
            tokio::time::sleep(Duration::from_millis(block_ms)).await;
            blocking = connections.blocking.lock().await;
        }
        let packed = pipe.get_packed_pipeline();
        let read = blocking.query(&packed, pipe.len());
        let mut infos: Vec<redis::RedisResult<Value>> = tokio::time::timeout(connections.blocking_timeout, read)
            .await
            .unwrap_or_else(|_| Err(direct::timed_out("follow read")))
            .map_err(|err| Error::from_redis("follow read", err))?
            .into_iter()
            .map(Value::extract_error)
            .collect();
        drop(blocking);
        let commands = info_keys.len() + reads;
        if infos.len() != commands {
            return Err(Stop::Redis(Error::UnexpectedReply {
                operation: "follow read",
                detail: format!("{} replies for {commands} commands", infos.len()),
            }));
        }
        let replies = infos.split_off(info_keys.len());
        // Another client stored something else under the event log: read without it from now
        // on, and say so; once it is a stream again, or gone, read it again (the next read's
        // check then finds any gap).
        let log_wrong_type = io::is_wrong_type(infos.first());
        if log_wrong_type != self.log_unreadable {
            self.log_unreadable = log_wrong_type;
            if log_wrong_type {
                tracing::warn!(
                    key = keys::EVENT_LOG,
                    "the event log is not a stream; following without it"
                );
                // The fresh snapshot of a resync lists the key and starts the log's cursor at 0.
                self.log_lost()?;
                self.report(io::wrong_type(keys::EVENT_LOG, "stream")).await?;
            } else {
                // Reported again if it breaks again.
                self.corrupt.remove(keys::EVENT_LOG);
            }
            return Ok(());
        }
        // The size of each `XINFO` answer over the bound, measured once.
        let oversized: Vec<Option<usize>> = infos
            .iter()
            .zip(&checked)
            .map(|(reply, checked)| reply.as_ref().ok().filter(|_| *checked).and_then(io::oversized_info))
            .collect();
        if checked[0] {
            match io::broken_log(keys::EVENT_LOG, infos.first()) {
                // Used up: still read (what it holds is delivered), said once.
                Some(entry) => self.report(entry).await?,
                // Reads well (unless its answer is over the bound, which is reported below):
                // reported again if it breaks again.
                None if oversized[0].is_none() => {
                    self.corrupt.remove(keys::EVENT_LOG);
                }
                None => {}
            }
        }
        // A tailed history that is not a stream fails the whole XREAD with WRONGTYPE, and its
        // XINFO says which one it is: stop tailing it and read again without it.
        let mut wrong_type = false;
        for ((session_id, _), info) in tracked.iter().zip(infos.iter().skip(1)) {
            if info.as_ref().is_err_and(decode::is_wrong_type) {
                wrong_type = true;
                self.history_not_a_stream(session_id).await?;
            }
        }
        if wrong_type {
            return Ok(());
        }
        self.pause_huge_infos(&info_keys, &checked, &oversized, now).await?;
        let mut read = Vec::new();
        for reply in replies {
            match reply {
                Ok(value) => read.extend(io::parse_xread(&value)),
                // A key became another type between the checks and the read: the next checks
                // say which.
                Err(err) if decode::is_wrong_type(&err) => {
                    tracing::debug!("a followed key changed type between the checks and the read; reading again");
                    return Ok(());
                }
                Err(err) => return Err(Stop::Redis(Error::from_redis("follow read", err))),
            }
        }

        // From the cursor before the last read, so that what was deleted while it waited (in
        // the step that woke it) is found too: see `StreamInfo::gap_after`.
        if checked[0] {
            self.check_event_log(infos.first())?;
        }
        for (((session_id, _), reply), checked) in tracked.iter().zip(infos.iter().skip(1)).zip(&checked[1..]) {
            if *checked {
                self.check_history(session_id, reply)?;
            }
        }
        self.checked_from = before;

        let mut read = io::merge_reads(read);
        let log_entries = read.remove(keys::EVENT_LOG).unwrap_or_default();
        let mut history = read;
        // A stream whose answer was over the bound is asked its length alone by the next read,
        // so what this read's wait deleted is told only by this read's size, as for a paused one.
        let covered: Vec<bool> = checked
            .iter()
            .zip(&oversized)
            .map(|(checked, oversized)| *checked && oversized.is_none())
            .collect();
        self.check_paused(&tracked, &covered, &log_entries, &history)?;
        self.caught_up = log_entries.len() < self.config.batch;
        for (session_id, _) in &tracked {
            if let Some(entries) = history.remove(&keys::history(session_id)) {
                self.deliver_history(session_id, &entries).await?;
            }
        }
        for entry in &log_entries {
            if entry.id > self.cursor.events {
                self.handle_log_entry(entry).await?;
            }
        }
        Ok(())
    }

    /// The check a paused stream gets instead of `XINFO STREAM`'s: trims reach past the cursor
    /// only when a stream holds at least its `MAXLEN` entries after it (trimming keeps that
    /// many), so a read that came back with that many, or a full batch, may have missed some,
    /// and resyncs rather than risk a silent gap. Another client's `XTRIM` or `XDEL` below that
    /// goes unnoticed while the pause lasts.
    fn check_paused(
        &self,
        tracked: &[(SessionId, EntryId)],
        checked: &[bool],
        log_entries: &[RawEntry],
        history: &BTreeMap<String, Vec<RawEntry>>,
    ) -> Result<(), Stop> {
        let full = |entries: usize, maxlen: usize| entries >= self.config.batch.min(maxlen.max(1));
        let mut paused_full = (!checked[0] && full(log_entries.len(), self.manager_config.event_log_maxlen))
            .then_some(keys::EVENT_LOG.to_owned());
        for ((session_id, _), checked) in tracked.iter().zip(&checked[1..]) {
            let key = keys::history(session_id);
            let read = history.get(&key).map_or(0, Vec::len);
            if !checked && full(read, self.manager_config.history_maxlen) {
                paused_full.get_or_insert(key);
            }
        }
        match paused_full {
            Some(key) => Err(Stop::Gap(format!(
                "{key}: a full read while its XINFO STREAM checks are paused (an entry over the size bound); resyncing rather than risk a gap"
            ))),
            None => Ok(()),
        }
    }

    /// Pauses the `XINFO STREAM` checks of each stream whose answer was over
    /// [`io::INFO_REPLY_BOUND`] (`oversized`, its size) for [`io::INFO_PAUSE`], and reports it;
    /// ends the pause of one that answered within it.
    async fn pause_huge_infos(
        &mut self,
        info_keys: &[&str],
        checked: &[bool],
        oversized: &[Option<usize>],
        now: Instant,
    ) -> Result<(), Stop> {
        for ((key, checked), oversized) in info_keys.iter().zip(checked).zip(oversized) {
            if !checked {
                continue;
            }
            let Some(size) = *oversized else {
                self.info_paused.remove(*key);
                continue;
            };
            tracing::warn!(key = %key, bytes = size, "XINFO STREAM answer over the bound; checking it less often");
            self.info_paused.insert((*key).to_owned(), now + io::INFO_PAUSE);
            let error = format!(
                "{key}: XINFO STREAM answers {size} bytes (a first or last entry over the size bound); its trims \
                 and deletions are checked once every {} s until it answers less than {}",
                io::INFO_PAUSE.as_secs(),
                io::INFO_REPLY_BOUND
            );
            self.report(CorruptEntry {
                key: (*key).to_owned(),
                error,
            })
            .await?;
        }
        Ok(())
    }

    /// Sends the entries of a tailed session's history that are past its cursor.
    async fn deliver_history(&mut self, session_id: &SessionId, entries: &[RawEntry]) -> Result<(), Stop> {
        let key = keys::history(session_id);
        for entry in entries {
            let Some(position) = self.cursor.history.get_mut(session_id) else {
                return Ok(());
            };
            if entry.id <= *position {
                continue;
            }
            *position = entry.id;
            match io::decode_history(&key, entry) {
                Ok(entry) => {
                    // Our copy follows the consumer's fold, so a document read later that
                    // differs from what the entries made of it is sent.
                    if let Some(progress) = self.docs.get_mut(session_id) {
                        crate::follow::apply_entry(progress, &entry);
                    }
                    let session_id = session_id.clone();
                    self.emit(ChangeKind::Progress { session_id, entry }).await?;
                }
                Err(err) => self.report(io::corrupt_entry(&key, &err)).await?,
            }
        }
        Ok(())
    }

    async fn handle_log_entry(&mut self, entry: &RawEntry) -> Result<(), Stop> {
        let event = io::decode_logged(entry);
        if event.is_progress() || !io::event_in_scope(&self.scope, &event) {
            self.cursor.events = entry.id;
            return Ok(());
        }
        let session_event = matches!(
            event.event_type.as_deref(),
            Some(
                event_types::SESSION_START
                    | event_types::SESSION_PAUSE
                    | event_types::SESSION_RESUME
                    | event_types::SESSION_END
            )
        );
        let session_id = event
            .session_id
            .as_deref()
            .and_then(|session_id| SessionId::new(session_id).ok())
            .filter(|_| session_event);
        let Some(session_id) = session_id else {
            self.cursor.events = entry.id;
            return self.emit(ChangeKind::Event { event }).await;
        };
        let is_new = !self.docs.contains_key(&session_id) && !self.cursor.history.contains_key(&session_id);
        if is_new {
            self.cursor.events = entry.id;
            return self.announce_session(&session_id, Some(event)).await;
        }
        // History written before this event goes out before it, with the cursor from before it.
        self.drain(&session_id).await?;
        self.cursor.events = entry.id;
        self.emit(ChangeKind::Event { event }).await?;
        self.refresh_doc(&session_id).await
    }

    /// Sends a session the consumer has not seen: (its start event,) its document, its whole
    /// history from the first entry, and its document again if that moved on meanwhile.
    async fn announce_session(&mut self, session_id: &SessionId, start: Option<LoggedEvent>) -> Result<(), Stop> {
        let doc = self.read_doc(session_id).await?;
        // Tracked from 0-0 at once, so a consumer resuming from any of the cursors below gets
        // the history it has not seen.
        self.cursor.history.insert(session_id.clone(), EntryId::ZERO);
        if let Some(event) = start {
            self.emit(ChangeKind::Event { event }).await?;
        }
        match doc {
            DocRead::Doc(progress) => self.send_doc(session_id, *progress).await?,
            DocRead::Missing => {
                self.cursor.history.remove(session_id);
                return Ok(());
            }
            DocRead::Corrupt(entry) => {
                self.cursor.history.remove(session_id);
                return self.report(entry).await;
            }
        }
        self.drain(session_id).await?;
        self.refresh_doc(session_id).await
    }

    /// Sends a tailed session's history entries past its cursor, up to now.
    async fn drain(&mut self, session_id: &SessionId) -> Result<(), Stop> {
        let mut connection = self.connections()?.commands;
        let key = keys::history(session_id);
        loop {
            let Some(position) = self.cursor.history(session_id) else {
                return Ok(());
            };
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            pipe.cmd("XRANGE")
                .arg(&key)
                .arg(format!("({position}"))
                .arg("+")
                .arg("COUNT")
                .arg(self.config.batch);
            pipe.cmd("XINFO").arg("STREAM").arg(&key);
            let replies: Vec<redis::RedisResult<Value>> = pipe
                .query_async(&mut connection)
                .await
                .map_err(|err| Error::from_redis("follow drain history", err))?;
            let entries = match replies.first() {
                Some(Ok(value)) => io::parse_entries(value),
                Some(Err(err)) if decode::is_wrong_type(err) => return self.history_not_a_stream(session_id).await,
                Some(Err(err)) => return Err(Stop::Redis(Error::from_redis("follow drain history", err.clone()))),
                None => Vec::new(),
            };
            if let Some(reply) = replies.get(1) {
                // From before the last read, as a read's checks: the session may stop being
                // tailed after this drain, before a read's checks would look back at that wait.
                self.check_history(session_id, reply)?;
            }
            self.deliver_history(session_id, &entries).await?;
            if entries.len() < self.config.batch {
                return Ok(());
            }
        }
    }

    /// Reads a session's document; a key of the wrong type or a document that does not
    /// decode is [`DocRead::Corrupt`], not an error of the read.
    async fn read_doc(&mut self, session_id: &SessionId) -> Result<DocRead, Stop> {
        let mut connection = self.connections()?.commands;
        let key = keys::progress(session_id);
        // Its length first: a document over the size bound is not read (see `io::Oversized`).
        let (oversized, mut replies) = io::read_fields(&mut connection, &[(key.clone(), keys::FIELD_PROGRESS)])
            .await
            .map_err(|err| Error::from_redis("follow read session", err))?;
        let reply = replies.pop().unwrap_or(Ok(Value::Nil));
        let text = oversized.field_text(&key, keys::FIELD_PROGRESS, reply);
        Ok(match io::progress_document(&key, text) {
            None => DocRead::Missing,
            Some(Ok(progress)) => {
                // Read well: a later corruption of this key is news again.
                self.corrupt.remove(&key);
                DocRead::Doc(Box::new(progress))
            }
            Some(Err(err)) => DocRead::Corrupt(io::corrupt_entry(&key, &err)),
        })
    }

    /// Re-reads a session's document and sends it when it changed; stops tailing a session
    /// that no longer executes, after sending the history it wrote before it stopped, and
    /// reports one whose document is gone.
    async fn refresh_doc(&mut self, session_id: &SessionId) -> Result<(), Stop> {
        match self.read_doc(session_id).await? {
            DocRead::Corrupt(entry) => self.report(entry).await,
            DocRead::Missing => {
                self.cursor.history.remove(session_id);
                if self.docs.remove(session_id).is_some() {
                    let session_id = session_id.clone();
                    self.emit(ChangeKind::SessionRemoved { session_id }).await?;
                }
                Ok(())
            }
            DocRead::Doc(progress) => {
                if !progress.is_executing {
                    // Its last updates may have come after the caller's drain and before the
                    // stop this document shows (a poll drains, then reads the document): their
                    // history entries are stored by now, written with or before the document.
                    // Untracked without them, they were never sent.
                    self.drain(session_id).await?;
                    self.cursor.history.remove(session_id);
                }
                self.send_doc(session_id, *progress).await
            }
        }
    }

    async fn send_doc(&mut self, session_id: &SessionId, progress: StrokeProgress) -> Result<(), Stop> {
        if self.docs.get(session_id) == Some(&progress) {
            return Ok(());
        }
        self.docs.insert(session_id.clone(), progress.clone());
        let session_id = session_id.clone();
        let progress = Box::new(progress);
        self.emit(ChangeKind::Session { session_id, progress }).await
    }

    /// Heartbeats, new and vanished sessions, and the documents of tailed sessions.
    async fn poll(&mut self) -> Result<(), Stop> {
        if self.scope.is_all() {
            self.poll_nodes().await?;
            self.poll_robots().await?;
        }
        let mut connection = self.connections()?.commands;
        let (session_ids, bad_keys) = io::scan_sessions(&mut connection, &self.scope).await?;
        for entry in bad_keys {
            self.report(entry).await?;
        }
        for session_id in &session_ids {
            if self.cursor.history.contains_key(session_id) {
                self.drain(session_id).await?;
                self.refresh_doc(session_id).await?;
                continue;
            }
            if !self.docs.contains_key(session_id) {
                let read = self.read_doc(session_id).await?;
                match read {
                    DocRead::Doc(progress) if self.baseline && !progress.is_executing => {
                        self.send_doc(session_id, *progress).await?;
                    }
                    DocRead::Doc(_) => self.announce_session(session_id, None).await?,
                    DocRead::Missing => {}
                    DocRead::Corrupt(entry) => self.report(entry).await?,
                }
                continue;
            }
            self.refresh_doc(session_id).await?;
        }
        let vanished: Vec<SessionId> = self
            .docs
            .keys()
            .filter(|session_id| session_ids.binary_search(session_id).is_err())
            .cloned()
            .collect();
        for session_id in vanished {
            self.refresh_doc(&session_id).await?;
        }
        self.baseline = false;
        Ok(())
    }

    async fn poll_robots(&mut self) -> Result<(), Stop> {
        let mut connection = self.connections()?.commands;
        let (current, corrupt) = io::read_robots(&mut connection).await?;
        for entry in corrupt {
            self.report(entry).await?;
        }
        let gone: Vec<String> = self
            .robots
            .keys()
            .filter(|node_id| !current.contains_key(*node_id))
            .cloned()
            .collect();
        for node_id in gone {
            self.robots.remove(&node_id);
            self.emit(ChangeKind::Robot { node_id, state: None }).await?;
        }
        for (node_id, state) in current {
            if let Ok(id) = crate::ids::NodeId::new(node_id.as_str()) {
                // Read well: a later corruption of this state is news again.
                self.corrupt.remove(&keys::robot_state(&id));
            }
            if self.robots.get(&node_id) == Some(&state) {
                continue;
            }
            self.robots.insert(node_id.clone(), state.clone());
            let state = Some(Box::new(state));
            self.emit(ChangeKind::Robot { node_id, state }).await?;
        }
        Ok(())
    }

    async fn poll_nodes(&mut self) -> Result<(), Stop> {
        let mut connection = self.connections()?.commands;
        let (mut current, corrupt) = io::read_nodes(&mut connection, self.manager_config.health_ttl).await?;
        for entry in corrupt {
            self.report(entry).await?;
        }
        // A node that vanished from both the heartbeats and the registry stays, offline.
        for (node_id, old) in &self.nodes {
            if !current.contains_key(node_id) {
                let offline = NodeView {
                    health: None,
                    clock_skew_ms: None,
                    ..old.clone()
                };
                current.insert(node_id.clone(), offline);
            }
        }
        for (node_id, node) in current {
            let changed = match self.nodes.get(&node_id) {
                Some(old) => old.health != node.health || old.last_seen_ms != node.last_seen_ms,
                None => true,
            };
            if node.health.is_some()
                && let Ok(id) = crate::ids::NodeId::new(node_id.as_str())
            {
                // Read well: a later corruption of this heartbeat is news again.
                self.corrupt.remove(&keys::health(&id));
            }
            if changed {
                self.nodes.insert(node_id, node.clone());
                let node = Box::new(node);
                self.emit(ChangeKind::Node { node }).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tatbot_state_testkit::RedisServer;

    use super::*;
    use crate::model::{ProgressUpdate, SessionPlan};
    use crate::{Endpoint, NodeId};

    /// A poll drains a tailed session's history, then reads its document. The session's last
    /// update and its end, written in between, made the document say it had stopped, and the
    /// follower stopped tailing it without that update: a gap the consumer could not see (one
    /// run in seven of `follow::snapshot_then_every_change` under CPU load). The interleaving
    /// is forced here: a drain, the writes, then the document's read.
    #[tokio::test]
    async fn a_session_that_stopped_since_the_last_drain_sends_its_last_updates() {
        let server = RedisServer::start();
        let endpoint = Endpoint::new(server.host(), server.port());
        let manager = StateManager::connect(ManagerConfig::new(endpoint, NodeId::new("hog").unwrap()))
            .await
            .unwrap();
        let plan = SessionPlan {
            total_strokes: 1,
            stroke_length: 2,
            scene: "race".into(),
        };
        let session = manager.start_stroke_session(&plan).await.unwrap();
        manager
            .update_stroke_progress(&session, &ProgressUpdate::new(0, 0))
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let mut task = FollowTask::new(&manager, Scope::All, FollowConfig::default(), tx);
        let connections = Connections::open(&task.manager_config, &task.locator, task.config.block)
            .await
            .unwrap();
        task.connections = Some(connections);
        task.cursor.history.insert(session.clone(), EntryId::ZERO);
        assert!(task.drain(&session).await.is_ok());

        manager
            .update_stroke_progress(&session, &ProgressUpdate::new(0, 1))
            .await
            .unwrap();
        manager.end_stroke_session(&session).await.unwrap();
        assert!(task.refresh_doc(&session).await.is_ok());
        assert!(task.cursor.history(&session).is_none(), "no longer tailed");
        drop(task);

        let mut poses = Vec::new();
        while let Some(item) = rx.recv().await {
            if let FollowItem::Change(Change {
                kind: ChangeKind::Progress { entry, .. },
                ..
            }) = item
            {
                poses.push(entry.pose_idx);
            }
        }
        assert_eq!(poses, [0, 1]);
    }
}

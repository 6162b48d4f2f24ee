//! The hub: one follower and one parameter watch for the whole process, fanned out to every
//! open stream.
//!
//! Why: a follower per stream cost a task, two Redis connections, a buffer of
//! [`tatbot_state::follow::FOLLOW_BUFFER`] items and a parameter watch with one more
//! connection, about 0.5 MiB per stream, and every stream serialized every item again
//! (issue #7). Here one task, started by the first stream, owns the only
//! [`Follower`](tatbot_state::follow::Follower) (`Scope::All`) and the only [`ParamsFeed`];
//! a stream costs its HTTP connection and a [`Subscription`].
//!
//! # Mechanism
//!
//! Everything clients read is in [`Shared`], behind one short `std` mutex (nothing awaits
//! while holding it):
//!
//! - a ring of the newest items as finished SSE frames ([`Bytes`], serialized once and shared
//!   by every client), each with a sequence number;
//! - the current state: the last [`Snapshot`] with every later change applied, and that
//!   state as a `snapshot` frame, serialized at most once per version and only when a client
//!   asks for it;
//! - the latest `params` frame and, during an outage, the `redis` frame that announced it;
//! - the Redis server's time of the newest snapshot and the instant it arrived, from which a
//!   stream tells each page the server's time at send (a `clock` frame, see `sse.rs`).
//!
//! The hub task publishes an item by pushing it onto the ring (and updating the state) under
//! the lock, then bumping a [`watch`] with the next sequence number. A subscription is a
//! position in the ring: it reads under the lock, and waits on the watch when it has read
//! everything. Subscribing takes the catch-up frames and the position under the same lock,
//! so nothing is missed or sent twice between a snapshot and the items after it.
//!
//! # Subscribing
//!
//! - No cursor, or one the ring cannot resume from: the current state as a `snapshot` (none
//!   before the follower's first one: it comes live then), the `redis` frame if Redis is
//!   down, the latest `params`, then every later item.
//! - A cursor that is the id of an item in the ring: the latest `params`, then every item
//!   after the *first* item with that id (ids repeat: a poll sends several changes with the
//!   same cursor, and a change that replaces state, such as a node or a session document, may
//!   be sent twice to such a client, which is harmless; skipping one would not be), except
//!   the older `params` items. If an item dropped from the ring had the same event-log id as
//!   the cursor, it may have had the very same id, so the client gets a snapshot instead.
//! - A subscription that falls more than the ring's length behind (its client reads too
//!   slowly) gets a `resync`, then the same frames as a new client. Nothing is buffered per
//!   client, so memory stays bounded by the ring.
//!
//! # Redis
//!
//! The follower reports outages and gaps itself (`ConnectionLost`, `Reconnected`, `Resync`
//! followed by a `Snapshot`); the hub forwards them to every stream. A `Resync` drops the
//! current state until its snapshot arrives, so a client joining in between waits for that
//! snapshot instead of getting a stale one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::Value;
use tatbot_state::follow::{EntryId, FollowConfig, FollowItem, Scope};
use tatbot_state::{Cursor, Snapshot, StateManager};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio::time::error::Elapsed;
use tokio_util::sync::CancellationToken;

use crate::params::{self, ParamsFeed};
use crate::{REQUEST_TIMEOUT, sse};

/// How long the hub waits before reading the parameters again after a read failed.
const PARAMS_RETRY: Duration = Duration::from_secs(2);

/// The process's single follower and parameter watch, and what clients read; see the module
/// docs.
pub(crate) struct Hub {
    shared: Mutex<Shared>,
    /// `Shared::next_seq` after each publish. Each [`Subscription`] holds a receiver and waits
    /// on it once it has read everything; the sender lives with the hub, which every
    /// subscription keeps alive.
    published: watch::Sender<u64>,
}

/// What the hub task publishes and clients read, under [`Hub::shared`].
struct Shared {
    /// The newest items, oldest first; at most `capacity`.
    ring: VecDeque<Item>,
    capacity: usize,
    /// Sequence number of the next item: the ring holds `next_seq - ring.len()..next_seq`.
    next_seq: u64,
    /// The last snapshot with every later change applied. `None` before the first snapshot
    /// and from a resync to the snapshot that follows it.
    state: Option<Snapshot>,
    /// Bumped whenever `state` changes.
    version: u64,
    /// `state` as a `snapshot` frame, with the version it was serialized at.
    snapshot: Option<(u64, Bytes)>,
    /// The newest event-log id of a snapshot or change dropped from the ring; see
    /// [`Shared::find`].
    evicted_events: Option<EntryId>,
    /// The `redis` frame of the current outage; `None` while Redis answers.
    redis_lost: Option<Bytes>,
    /// The newest `params` frame; `None` until the first read.
    params: Option<Bytes>,
    /// The Redis server's time of the newest snapshot and when the hub received it: the
    /// server's time now is that plus the time since ([`Hub::server_time_ms`]).
    clock: Option<(i64, Instant)>,
}

/// One published item.
struct Item {
    /// The SSE frame as every client gets it.
    frame: Bytes,
    tag: Tag,
}

/// What a subscription needs to know about an item besides its frame.
enum Tag {
    /// A `snapshot` or `change`: its SSE id (the cursor text) and the cursor's event-log id.
    Follow { id: Box<str>, events: EntryId },
    /// A `params` list.
    Params,
    /// A `resync` or `redis` frame.
    Status,
}

impl Hub {
    /// Starts the hub task with `capacity` items in its ring; it runs until `shutdown`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub(crate) fn start(
        manager: &StateManager,
        config: FollowConfig,
        capacity: usize,
        shutdown: &CancellationToken,
    ) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            shared: Mutex::new(Shared::new(capacity)),
            published: watch::Sender::new(0),
        });
        tokio::spawn(run(hub.clone(), manager.clone(), config, shutdown.clone()));
        tokio::spawn(announce_stale(manager.clone(), shutdown.clone()));
        hub
    }

    /// A new client's subscription: from `resume` when the ring can resume from it, else from
    /// the current state; see the module docs.
    pub(crate) fn subscribe(self: &Arc<Hub>, resume: Option<&Cursor>) -> Subscription {
        let mut shared = self.lock();
        let mut position = Position {
            prelude: VecDeque::new(),
            next_seq: shared.next_seq,
            params_from: shared.next_seq,
        };
        match resume.and_then(|cursor| shared.find(cursor)) {
            Some(seq) => {
                position.next_seq = seq + 1;
                position.prelude.extend(shared.params.clone());
            }
            None => shared.catch_up(&mut position.prelude),
        }
        // Subscribed under the lock, though the order does not matter: a subscription checks
        // the ring after marking the watch seen, never the other way round.
        let published = self.published.subscribe();
        drop(shared);
        Subscription {
            hub: self.clone(),
            position,
            published,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Every update under the lock is a push, a pop or an assignment, so even after a panic
        // (a bug) the data is whole: carry on rather than fail every stream.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes one follower item to every subscription.
    fn publish(&self, item: FollowItem) {
        let (frame, id) = sse::encode(&item);
        let tag = match (&item, id) {
            (FollowItem::Snapshot(snapshot), Some(id)) => Tag::Follow {
                id: id.into_boxed_str(),
                events: snapshot.cursor.events(),
            },
            (FollowItem::Change(change), Some(id)) => Tag::Follow {
                id: id.into_boxed_str(),
                events: change.cursor.events(),
            },
            _ => Tag::Status,
        };
        let mut shared = self.lock();
        match item {
            FollowItem::Snapshot(snapshot) => {
                shared.clock = Some((snapshot.server_time_ms, Instant::now()));
                shared.state = Some(*snapshot);
                shared.version += 1;
                shared.snapshot = Some((shared.version, frame.clone()));
            }
            FollowItem::Change(change) => {
                if let Some(state) = shared.state.as_mut() {
                    state.apply(&change);
                    shared.version += 1;
                }
            }
            FollowItem::Resync { .. } => {
                shared.state = None;
                shared.snapshot = None;
            }
            FollowItem::ConnectionLost { .. } => shared.redis_lost = Some(frame.clone()),
            FollowItem::Reconnected => shared.redis_lost = None,
        }
        shared.push(Item { frame, tag });
        self.published.send_replace(shared.next_seq);
    }

    /// Publishes a parameter list, unless it is the one published last.
    fn publish_params(&self, list: &Value) {
        let frame = sse::params_frame(list);
        let mut shared = self.lock();
        if shared.params.as_ref() == Some(&frame) {
            return;
        }
        shared.params = Some(frame.clone());
        shared.push(Item {
            frame,
            tag: Tag::Params,
        });
        self.published.send_replace(shared.next_seq);
    }

    /// The Redis server's time now, in Unix milliseconds: the newest snapshot's time plus the
    /// time since it arrived (on this process's monotonic clock). `None` before the first
    /// snapshot.
    ///
    /// The current state is a snapshot with later changes applied, so its own
    /// `server_time_ms` may be minutes old; a page must measure ages against this instead.
    pub(crate) fn server_time_ms(&self) -> Option<i64> {
        let (server_time_ms, received) = self.lock().clock?;
        let elapsed = i64::try_from(received.elapsed().as_millis()).unwrap_or(i64::MAX);
        Some(server_time_ms.saturating_add(elapsed))
    }

    /// The next frame for `position`, if one was published that it has not read.
    fn read(&self, position: &mut Position) -> Option<Bytes> {
        let mut shared = self.lock();
        let front_seq = shared.next_seq - shared.ring.len() as u64;
        if position.next_seq < front_seq {
            tracing::debug!(
                behind = shared.next_seq - position.next_seq,
                "a stream fell behind; resyncing it"
            );
            let reason = format!(
                "this dashboard fell more than {} items behind the live stream",
                shared.capacity
            );
            position.prelude.push_back(sse::resync_frame(&reason));
            shared.catch_up(&mut position.prelude);
            position.next_seq = shared.next_seq;
            position.params_from = shared.next_seq;
            return position.prelude.pop_front();
        }
        while position.next_seq < shared.next_seq {
            let seq = position.next_seq;
            position.next_seq += 1;
            // In range: front_seq <= seq < next_seq, and the ring holds exactly those (and
            // fewer than `capacity`, a usize).
            let item = &shared.ring[(seq - front_seq) as usize];
            if matches!(item.tag, Tag::Params) && seq < position.params_from {
                continue;
            }
            return Some(item.frame.clone());
        }
        None
    }
}

impl Shared {
    fn new(capacity: usize) -> Shared {
        let capacity = capacity.max(1);
        Shared {
            ring: VecDeque::with_capacity(capacity),
            capacity,
            next_seq: 0,
            state: None,
            version: 0,
            snapshot: None,
            evicted_events: None,
            redis_lost: None,
            params: None,
            clock: None,
        }
    }

    fn push(&mut self, item: Item) {
        if self.ring.len() == self.capacity
            && let Some(evicted) = self.ring.pop_front()
            && let Tag::Follow { events, .. } = evicted.tag
        {
            self.evicted_events = Some(self.evicted_events.map_or(events, |old| old.max(events)));
        }
        self.ring.push_back(item);
        self.next_seq += 1;
    }

    /// The sequence number of the first item whose id is `cursor`, when resuming after it
    /// misses nothing.
    ///
    /// Ids repeat (see the module docs), and resuming after a later copy of one would skip
    /// what came between the copies. Dropped items are older than the ring's, and within one
    /// follow the cursor's event-log id never goes back: if every dropped snapshot and change
    /// had an event-log id below the cursor's, none had its id, and the first copy is here.
    fn find(&self, cursor: &Cursor) -> Option<u64> {
        if self.evicted_events.is_some_and(|evicted| cursor.events() <= evicted) {
            return None;
        }
        let text = cursor.to_string();
        let index = self
            .ring
            .iter()
            .position(|item| matches!(&item.tag, Tag::Follow { id, .. } if **id == *text))?;
        Some(self.next_seq - self.ring.len() as u64 + index as u64)
    }

    /// What a client starting from the current state gets before the next item.
    fn catch_up(&mut self, prelude: &mut VecDeque<Bytes>) {
        prelude.extend(self.snapshot_frame());
        prelude.extend(self.redis_lost.clone());
        prelude.extend(self.params.clone());
    }

    /// The current state as a `snapshot` frame, serialized once per version.
    fn snapshot_frame(&mut self) -> Option<Bytes> {
        let state = self.state.as_ref()?;
        if let Some((version, frame)) = &self.snapshot
            && *version == self.version
        {
            return Some(frame.clone());
        }
        let frame = sse::snapshot_frame(state);
        self.snapshot = Some((self.version, frame.clone()));
        Some(frame)
    }
}

/// One client's read position in the hub; dropping it unsubscribes.
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    position: Position,
    /// Changes when the hub publishes; see [`Hub::published`].
    published: watch::Receiver<u64>,
}

/// Where a subscription is.
struct Position {
    /// Frames to send before reading the ring: catch-up frames (snapshot, Redis state,
    /// parameters), taken under the lock together with `next_seq`.
    prelude: VecDeque<Bytes>,
    /// Sequence number of the next ring item to send.
    next_seq: u64,
    /// `params` items before this one are older than the list the prelude carries: skipped.
    params_from: u64,
}

impl Subscription {
    /// The next frame, waiting until one is published. Cancel-safe: dropping the future
    /// loses nothing.
    pub(crate) async fn next(&mut self) -> Bytes {
        loop {
            if let Some(frame) = self.position.prelude.pop_front() {
                return frame;
            }
            // Marked seen before reading, so an item published after the read wakes us.
            self.published.mark_unchanged();
            if let Some(frame) = self.hub.read(&mut self.position) {
                return frame;
            }
            if self.published.changed().await.is_err() {
                // Cannot happen: the sender lives in the hub, which `self.hub` keeps alive.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A parameter read in flight, bounded by [`REQUEST_TIMEOUT`].
type ParamsRead = Pin<Box<dyn Future<Output = Result<Result<Value, String>, Elapsed>> + Send>>;

/// How often the dashboard looks for stale sessions to announce.
const STALE_INTERVAL: Duration = Duration::from_secs(2);

/// Announces stale sessions (`session_stale`, once per session whichever watcher notices
/// first) every [`STALE_INTERVAL`] until `shutdown`. A viewer user may not write; then another
/// watcher announces, and this only logs at `debug`.
async fn announce_stale(manager: StateManager, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(STALE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let look = async {
            let sessions = manager.list_sessions().await?;
            let stale: Vec<_> = sessions
                .into_iter()
                .filter_map(|entry| {
                    let progress = entry.value.ok()?;
                    (progress.state() == tatbot_state::model::SessionState::Stale)
                        .then(|| Some((tatbot_state::SessionId::new(entry.id).ok()?, progress)))
                        .flatten()
                })
                .collect();
            manager.announce_stale_sessions(&stale).await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, look).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::debug!(%error, "cannot announce stale sessions"),
            Err(_) => tracing::debug!("looking for stale sessions timed out"),
        }
    }
}

/// The hub task: publishes every follower item, and the parameter list whenever it may have
/// changed (the watch opened or saw a change, a snapshot, Redis back), until `shutdown`.
///
/// A parameter read runs beside the follower rather than before it: with Redis paused it can
/// take [`REQUEST_TIMEOUT`], and every page waits on this task.
#[tracing::instrument(name = "viz_hub", skip_all)]
async fn run(hub: Arc<Hub>, manager: StateManager, config: FollowConfig, shutdown: CancellationToken) {
    let mut follower = manager.follow_with(Scope::All, None, config, &shutdown);
    let params_feed = ParamsFeed::start(&manager, &shutdown);
    let mut params_stale = false;
    let mut params_read: Option<ParamsRead> = None;
    let mut params_retry: Option<Instant> = None;
    tracing::info!("dashboard hub following");
    loop {
        // A change seen during a read is read again once that read is done.
        if params_stale && params_read.is_none() {
            params_stale = false;
            params_retry = None;
            let manager = manager.clone();
            params_read = Some(Box::pin(async move {
                tokio::time::timeout(REQUEST_TIMEOUT, params::list(&manager)).await
            }));
        }
        let retry = params_retry;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = params_feed.changed() => params_stale = true,
            () = sleep_until(retry), if retry.is_some() => params_stale = true,
            read = finish(&mut params_read), if params_read.is_some() => {
                params_read = None;
                match read {
                    Ok(Ok(list)) => hub.publish_params(&list),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "cannot read the parameters; retrying");
                        params_retry = Some(Instant::now() + PARAMS_RETRY);
                    }
                    Err(_) => {
                        tracing::debug!(timeout = ?REQUEST_TIMEOUT, "reading the parameters timed out; retrying");
                        params_retry = Some(Instant::now() + PARAMS_RETRY);
                    }
                }
            }
            item = follower.next() => {
                // `None` only once the follower was cancelled, which is shutdown.
                let Some(item) = item else { return };
                if matches!(item, FollowItem::Snapshot(_) | FollowItem::Reconnected) {
                    params_stale = true;
                }
                hub.publish(item);
            }
        }
    }
}

/// Waits for the read in flight; forever when there is none (the branch is disabled then).
async fn finish(read: &mut Option<ParamsRead>) -> Result<Result<Value, String>, Elapsed> {
    match read {
        Some(read) => read.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; forever when there is none (the branch is disabled then anyway).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow(id: &str) -> Item {
        let cursor: Cursor = id.parse().unwrap();
        Item {
            frame: Bytes::from(id.to_owned()),
            tag: Tag::Follow {
                id: id.into(),
                events: cursor.events(),
            },
        }
    }

    /// Resuming starts after the first copy of a repeated id, and not at all once a copy of it
    /// may have been dropped from the ring.
    #[test]
    fn find_resumes_after_the_first_copy() {
        let cursor = |text: &str| text.parse::<Cursor>().unwrap();
        let mut shared = Shared::new(3);
        for id in ["1;1-0", "1;2-0;s=5-0", "1;2-0;s=5-0"] {
            shared.push(follow(id));
        }
        assert_eq!(shared.find(&cursor("1;1-0")), Some(0));
        assert_eq!(shared.find(&cursor("1;2-0;s=5-0")), Some(1));
        shared.push(follow("1;2-0;s=6-0"));
        assert_eq!(shared.find(&cursor("1;2-0;s=5-0")), Some(1), "only 1;1-0 was dropped");
        assert_eq!(shared.find(&cursor("1;1-0")), None);
        shared.push(follow("1;3-0"));
        assert_eq!(shared.find(&cursor("1;2-0;s=5-0")), None, "its first copy was dropped");
        assert_eq!(
            shared.find(&cursor("1;2-0;s=6-0")),
            None,
            "same event-log id as a dropped item"
        );
        assert_eq!(shared.find(&cursor("1;3-0")), Some(4));
        assert_eq!(shared.find(&cursor("1;9-0")), None);
    }
}

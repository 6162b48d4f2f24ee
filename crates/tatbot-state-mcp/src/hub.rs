//! Live updates: which subscribed resources changed, fed from Redis pub/sub and the parameter
//! audit log.
//!
//! One [`Hub`] per server process keeps the registry of [`Subscriber`]s: one per MCP connection
//! that used `resources/subscribe` (2025-11 model) and one per open `subscriptions/listen`
//! request (2026-07 model). Three tasks feed it:
//!
//! - [`listen_events`] holds one `PSUBSCRIBE` on `stroke:events:*`, `robot:events` and
//!   `error:events:*` and maps each message to the URIs it changes ([`affected_uris`]). Opening
//!   it is retried with capped exponential backoff; once open, the library's subscription
//!   re-subscribes by itself after a lost connection or a Redis restart.
//! - [`watch_params`] tails the parameter audit log ([`tatbot_state::params::Watch`]) and marks
//!   `state://params` and `state://params/{name}` for each change. Parameters publish nothing
//!   on pub/sub; the log is their event stream, and unlike pub/sub it keeps what was written
//!   while the watch was reconnecting, so an outage loses no change.
//! - [`watch_redis`] covers what has no pub/sub event. Heartbeats are keys with a TTL that are
//!   rewritten every few seconds and expire silently: while somebody subscribes to a URI that
//!   depends on them (`state://nodes`, `state://status`, `state://health/*`), it compares every
//!   node's last heartbeat every [`HEARTBEAT_POLL_INTERVAL`] (one `SCAN` and one pipelined read)
//!   and marks what changed. The same check notices Redis going away and coming back, and marks
//!   every subscribed URI both times: reads fail in between, and pub/sub does not replay the
//!   events of the gap. Polling is reserved for these cases; everything with an event is pushed.
//!
//! Marking never blocks and never queues per event: a subscriber keeps a *set* of pending URIs
//! and a [`Notify`]; whoever sends its notifications drains the set when woken. A burst of a
//! thousand progress events therefore becomes one `notifications/resources/updated` per URI,
//! and a slow client can never make the hub (or Redis) wait. The hub holds subscribers weakly,
//! so a connection that goes away is dropped from the registry without an explicit unregister.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tatbot_state::model::Event;
use tatbot_state::params::{Prefix, Watch};
use tatbot_state::{Message, NodeId, ParamName, SessionId, Subscription};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::reader::Reader;
use crate::uri;

/// The channel patterns we listen to: the ones an operator watches.
pub const EVENT_PATTERNS: [&str; 3] = tatbot_state::keys::DEFAULT_EVENT_PATTERNS;
/// First wait before re-subscribing after the pub/sub connection failed.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between re-subscribe attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long after a failed attempt (Redis down) the parameter watch is opened again, until it
/// opens. Parameter changes are rare and the watch resumes from the audit log, so a slow retry
/// loses nothing.
const PARAMS_REOPEN_INTERVAL: Duration = Duration::from_secs(5);
/// How often heartbeats are compared while somebody subscribes to a URI that depends on them.
///
/// Heartbeats are written every 10 s by default and expire after 60 s, so 5 s sees every
/// heartbeat and an expiry within 5 s, for one `SCAN` of `node:health:*` per period.
pub const HEARTBEAT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The registry of subscribers.
#[derive(Default)]
pub struct Hub {
    /// Held weakly: the connection or listen request owns its subscriber, and dead entries are
    /// pruned whenever the list is walked.
    subscribers: Mutex<Vec<Weak<Subscriber>>>,
}

/// One party that receives update notifications: a connection (2025-11 model) or a listen
/// request (2026-07 model).
#[derive(Default)]
pub struct Subscriber {
    state: Mutex<SubscriberState>,
    /// Woken when `pending` gains a URI; the one task that sends this subscriber's
    /// notifications waits on it. `notify_one` stores a permit, so a wake-up between two waits
    /// is not lost.
    wake: Notify,
}

#[derive(Default)]
struct SubscriberState {
    /// URIs subscribed to.
    uris: BTreeSet<String>,
    /// Subscribed URIs that changed since the last drain; bounded by `uris`.
    pending: BTreeSet<String>,
}

impl Subscriber {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubscriberState> {
        // The critical sections only insert into and take from sets; a panic inside one cannot
        // leave the sets inconsistent, so a poisoned lock is still good to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `uri` to the subscribed set.
    pub fn subscribe(&self, uri: String) {
        self.lock().uris.insert(uri);
    }

    /// Removes `uri`; returns whether it was subscribed.
    pub fn unsubscribe(&self, uri: &str) -> bool {
        let mut state = self.lock();
        state.pending.remove(uri);
        state.uris.remove(uri)
    }

    /// Waits until some subscribed URI changed, and takes the changed ones.
    pub async fn changed(&self) -> BTreeSet<String> {
        loop {
            let pending = std::mem::take(&mut self.lock().pending);
            if !pending.is_empty() {
                return pending;
            }
            self.wake.notified().await;
        }
    }

    /// Marks the subscribed URIs among `uris` as changed.
    fn mark(&self, uris: &[String]) {
        let mut state = self.lock();
        let mut woke = false;
        for uri in uris {
            if state.uris.contains(uri) {
                state.pending.insert(uri.clone());
                woke = true;
            }
        }
        drop(state);
        if woke {
            self.wake.notify_one();
        }
    }

    /// Marks the subscribed URIs for which `wanted` is true as changed.
    fn mark_where(&self, wanted: &impl Fn(&str) -> bool) {
        let mut state = self.lock();
        let uris: Vec<String> = state.uris.iter().filter(|uri| wanted(uri.as_str())).cloned().collect();
        if uris.is_empty() {
            return;
        }
        state.pending.extend(uris);
        drop(state);
        self.wake.notify_one();
    }
}

impl Hub {
    /// Registers a new subscriber; it stays registered while the returned `Arc` lives.
    pub fn register(&self) -> Arc<Subscriber> {
        let subscriber = Arc::new(Subscriber::default());
        self.with_live(|live| live.push(Arc::downgrade(&subscriber)));
        subscriber
    }

    /// Runs `f` on the list after pruning subscribers that are gone.
    fn with_live<R>(&self, f: impl FnOnce(&mut Vec<Weak<Subscriber>>) -> R) -> R {
        // As in `Subscriber::lock`, the list stays consistent across a panic.
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|subscriber| subscriber.strong_count() > 0);
        f(&mut subscribers)
    }

    fn live(&self) -> Vec<Arc<Subscriber>> {
        self.with_live(|live| live.iter().filter_map(Weak::upgrade).collect())
    }

    /// Marks `uris` changed for every subscriber that subscribed to them.
    pub fn mark(&self, uris: &[String]) {
        if uris.is_empty() {
            return;
        }
        for subscriber in self.live() {
            subscriber.mark(uris);
        }
    }

    /// Marks every subscribed URI of every subscriber changed.
    pub fn mark_all(&self) {
        self.mark_where(|_| true);
    }

    /// Marks the subscribed URIs for which `wanted` is true changed, for every subscriber.
    pub fn mark_where(&self, wanted: impl Fn(&str) -> bool) {
        for subscriber in self.live() {
            subscriber.mark_where(&wanted);
        }
    }

    /// Whether any subscriber subscribed to a URI for which `wanted` is true.
    pub fn any_subscribed(&self, wanted: impl Fn(&str) -> bool) -> bool {
        self.live()
            .iter()
            .any(|subscriber| subscriber.lock().uris.iter().any(|uri| wanted(uri)))
    }
}

/// The URIs whose content a pub/sub message changes.
///
/// Session and progress events name their session; an event we cannot decode on a stroke
/// channel still changes the session-wide resources. `robot:events` changes none of our
/// resources (none shows robot state), so it maps to nothing.
pub fn affected_uris(message: &Message) -> Vec<String> {
    let channel = message.channel.as_str();
    if channel.starts_with(tatbot_state::keys::ERROR_EVENTS_PREFIX) {
        return vec![uri::ERRORS.to_owned()];
    }
    if channel == tatbot_state::keys::ROBOT_EVENTS {
        let mut uris = vec![uri::ROBOTS.to_owned()];
        if let Some(Event::StateUpdate(update)) = message.event.as_ref().ok()
            && let Ok(node_id) = NodeId::new(update.node_id.as_str())
        {
            uris.push(uri::robot_uri(&node_id));
        }
        return uris;
    }
    if !channel.starts_with("stroke:events:") {
        return Vec::new();
    }
    let mut uris = vec![uri::LATEST_PROGRESS.to_owned(), uri::SESSIONS.to_owned()];
    let event = message.event.as_ref().ok();
    // A progress update moves the indices only; every other event on a stroke channel (start,
    // end, pause, resume, or one we do not know) can change the active-session count.
    if !matches!(event, Some(Event::ProgressUpdate(_))) {
        uris.push(uri::STATUS.to_owned());
    }
    // Validated like any id from outside: a malformed one names no resource.
    if let Some(session_id) = event.and_then(Event::session_id).and_then(|id| SessionId::new(id).ok()) {
        uris.push(uri::progress_uri(&session_id));
    }
    uris
}

/// The URIs a change of parameter `name` changes: the list and the parameter's own.
pub fn param_uris(name: &ParamName) -> Vec<String> {
    vec![uri::PARAMS.to_owned(), uri::param_uri(name)]
}

/// Marks the URIs of every parameter change until `shutdown`.
///
/// `watch` is the watch the server opened before it started serving (see
/// [`crate::server::ServerState::start`]), or `None` when Redis refused it then; this task
/// then tries again every [`PARAMS_REOPEN_INTERVAL`], and marks every parameter URI once it
/// has, since changes made until then were not watched.
///
/// An open watch reconnects by itself and resumes after the last change it read, so a lost
/// connection loses nothing: this waits (with capped exponential backoff, so a dead Redis is
/// not hammered) and reads on. An error that may have skipped changes (the log was trimmed
/// past the watch, or an entry does not decode) marks every parameter URI.
pub async fn watch_params(reader: Reader, hub: Arc<Hub>, watch: Option<Watch>, shutdown: CancellationToken) {
    let all = Prefix::all();
    let mut watch = match watch {
        Some(watch) => watch,
        None => loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PARAMS_REOPEN_INTERVAL) => {}
            }
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return,
                attempt = reader.watch_params(&all) => attempt,
            };
            match attempt {
                Ok(watch) => {
                    tracing::info!("watching parameter changes");
                    hub.mark_where(uri::shows_params);
                    break watch;
                }
                // `ServerState::start` warned already.
                Err(err) => {
                    tracing::debug!(error = %err, "still cannot watch parameter changes; trying again later")
                }
            }
        },
    };
    let mut backoff = MIN_BACKOFF;
    // One warning per run of failures: an outage would otherwise log every few seconds.
    let mut failing = false;
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = watch.next() => next,
        };
        let err = match next {
            Ok(change) => {
                tracing::trace!(param = %change.name, version = change.version, "parameter changed");
                hub.mark(&param_uris(&change.name));
                backoff = MIN_BACKOFF;
                failing = false;
                continue;
            }
            Err(err) => err,
        };
        if !err.is_connection_error() {
            hub.mark_where(uri::shows_params);
        }
        if failing {
            tracing::debug!(error = %err, retry_in = ?backoff, "parameter watch still failing");
        } else {
            tracing::warn!(error = %err, retry_in = ?backoff, "parameter watch failed; it resumes where it stopped");
        }
        failing = true;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps a `PSUBSCRIBE` on [`EVENT_PATTERNS`] open until `shutdown`, marking what each message
/// changes.
///
/// `subscription` is the one the server opened before it started serving (see
/// [`crate::server::ServerState::start`]), or `None` when Redis refused it then. Opening is
/// then retried with capped exponential backoff; once open, the library's
/// [`tatbot_state::Subscription`] reconnects by itself, and a reconnect seen here (its counter
/// moved) marks every subscribed URI, since the events of the gap are gone.
pub async fn listen_events(
    reader: Reader,
    hub: Arc<Hub>,
    subscription: Option<Subscription>,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let mut subscription = match subscription {
        Some(subscription) => subscription,
        None => loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return,
                attempt = reader.subscribe(&EVENT_PATTERNS) => attempt,
            };
            match attempt {
                Ok(subscription) => {
                    // Events published before now are gone.
                    hub.mark_all();
                    break subscription;
                }
                Err(err) => {
                    // `ServerState::start` warned already; the manager logs the wait for Redis.
                    tracing::debug!(error = %err, retry_in = ?backoff, "still cannot subscribe to state events");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        },
    };
    tracing::info!(patterns = ?EVENT_PATTERNS, "subscribed to state events");
    let mut reconnects = subscription.reconnects();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = subscription.next() => message,
        };
        // `next` reconnects by itself and never ends while the subscription lives.
        let Some(message) = message else { return };
        if subscription.reconnects() != reconnects {
            reconnects = subscription.reconnects();
            hub.mark_all();
        }
        tracing::trace!(channel = %message.channel, payload = %message.payload, "state event");
        hub.mark(&affected_uris(&message));
    }
}

/// Watches what pub/sub cannot tell, every [`HEARTBEAT_POLL_INTERVAL`] while anybody subscribes
/// to anything, until `shutdown`:
///
/// - whether Redis answers: losing it and getting it back mark every subscribed URI changed
///   (reads fail in between, and events of the gap are lost), so clients re-read promptly;
/// - while a URI that depends on heartbeats is subscribed, every node's last heartbeat: a
///   renewed, new or expired one marks the URIs it changes.
pub async fn watch_redis(reader: Reader, hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(HEARTBEAT_POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    // Node id -> fingerprint of its last heartbeat; `None` until a poll sets the baseline.
    let mut previous: Option<BTreeMap<String, String>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !hub.any_subscribed(|_| true) {
            previous = None;
            continue;
        }
        let heartbeats = if hub.any_subscribed(uri::depends_on_heartbeats) {
            reader.get_all_nodes_health().await.map(Some)
        } else {
            reader.ping().await.map(|_| None)
        };
        let entries = match heartbeats {
            Ok(entries) => entries,
            Err(err) => {
                if reachable {
                    tracing::warn!(error = %err, "redis does not answer; subscribers are told to re-read");
                    reachable = false;
                    previous = None;
                    hub.mark_all();
                }
                continue;
            }
        };
        if !reachable {
            tracing::info!("redis answers again; subscribers are told to re-read");
            reachable = true;
            hub.mark_all();
        }
        let Some(entries) = entries else {
            previous = None;
            continue;
        };
        let current: BTreeMap<String, String> = entries
            .into_iter()
            .map(|entry| {
                let fingerprint = match entry.value {
                    Ok(health) => health.last_heartbeat.to_string(),
                    Err(err) => format!("corrupt: {}", err.report()),
                };
                (entry.id, fingerprint)
            })
            .collect();
        if let Some(previous) = &previous {
            hub.mark(&heartbeat_changes(previous, &current));
        }
        previous = Some(current);
    }
}

/// The URIs that differ between two heartbeat snapshots (node id -> fingerprint).
fn heartbeat_changes(previous: &BTreeMap<String, String>, current: &BTreeMap<String, String>) -> Vec<String> {
    let mut uris = Vec::new();
    let changed_nodes: BTreeSet<&String> = previous
        .iter()
        .filter(|(node, fingerprint)| current.get(*node) != Some(fingerprint))
        .chain(current.iter().filter(|(node, _)| !previous.contains_key(*node)))
        .map(|(node, _)| node)
        .collect();
    for node in &changed_nodes {
        if let Ok(node_id) = NodeId::new(node.as_str()) {
            uris.push(uri::health_uri(&node_id));
        }
    }
    if !changed_nodes.is_empty() {
        uris.push(uri::NODES.to_owned());
    }
    // "Nodes online" (and the corrupt list) are in the status; a renewed heartbeat changes
    // neither, an appearing, expiring or newly corrupt one does.
    let online_changed = !previous.keys().eq(current.keys());
    let corrupt = |map: &BTreeMap<String, String>| map.values().filter(|value| value.starts_with("corrupt")).count();
    if online_changed || corrupt(previous) != corrupt(current) {
        uris.push(uri::STATUS.to_owned());
    }
    uris
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, payload: &str) -> Message {
        Message {
            channel: channel.to_owned(),
            pattern: None,
            payload: payload.to_owned(),
            event: Event::from_json(payload.as_bytes()).map_err(|source| tatbot_state::Error::Decode {
                key: channel.to_owned(),
                what: "event",
                source,
            }),
            from_log: false,
        }
    }

    /// Each event changes the resources that show what it is about, and nothing else.
    #[test]
    fn events_map_to_uris() {
        let progress = message(
            "stroke:events:progress",
            r#"{"type": "progress_update", "session_id": "stroke_hog_1", "node_id": "hog", "timestamp": "2026-11-25T17:15:37"}"#,
        );
        assert_eq!(
            affected_uris(&progress),
            [
                "state://stroke/progress",
                "state://sessions",
                "state://stroke/progress/stroke_hog_1"
            ]
        );
        let start = message(
            "stroke:events:session",
            r#"{"type": "session_start", "session_id": "stroke_hog_1", "node_id": "hog", "timestamp": "2026-11-25T17:15:37"}"#,
        );
        assert!(affected_uris(&start).contains(&"state://status".to_owned()));
        let hostile = message(
            "stroke:events:session",
            r#"{"type": "session_end", "session_id": "*", "node_id": "hog", "timestamp": "2026-11-25T17:15:37"}"#,
        );
        assert_eq!(
            affected_uris(&hostile),
            ["state://stroke/progress", "state://sessions", "state://status"]
        );
        assert_eq!(affected_uris(&message("stroke:events:progress", "not json")).len(), 3);
        assert_eq!(
            affected_uris(&message("error:events:hardware", "{}")),
            ["state://errors"]
        );
        assert_eq!(affected_uris(&message("robot:events", "{}")), ["state://robot"]);
        let update = message(
            "robot:events",
            r#"{"type": "state_update", "node_id": "hog", "is_connected_l": true, "is_connected_r": true, "current_pose": "ready", "timestamp": "2026-11-25T17:15:37"}"#,
        );
        assert_eq!(affected_uris(&update), ["state://robot", "state://robot/hog"]);
    }

    /// A subscriber is marked only for what it subscribed to, and a burst coalesces.
    #[tokio::test]
    async fn marks_coalesce_per_subscriber() {
        let hub = Hub::default();
        let subscriber = hub.register();
        subscriber.subscribe(uri::STATUS.to_owned());
        for _ in 0..1000 {
            hub.mark(&[uri::STATUS.to_owned(), uri::NODES.to_owned()]);
        }
        assert_eq!(subscriber.changed().await, BTreeSet::from([uri::STATUS.to_owned()]));
        assert!(subscriber.unsubscribe(uri::STATUS));
        assert!(!hub.any_subscribed(|_| true));
        drop(subscriber);
        assert!(hub.live().is_empty());
    }

    /// A parameter change marks the list and that parameter; marking by predicate reaches
    /// only what matches.
    #[tokio::test]
    async fn param_changes_mark_params() {
        let name = ParamName::new("arms.goal_time_slow").unwrap();
        assert_eq!(
            param_uris(&name),
            ["state://params", "state://params/arms.goal_time_slow"]
        );
        let hub = Hub::default();
        let subscriber = hub.register();
        for subscribed in [
            "state://params/arms.goal_time_slow",
            "state://params/arms.other",
            uri::STATUS,
        ] {
            subscriber.subscribe(subscribed.to_owned());
        }
        hub.mark(&param_uris(&name));
        assert_eq!(
            subscriber.changed().await,
            BTreeSet::from(["state://params/arms.goal_time_slow".to_owned()])
        );
        hub.mark_where(uri::shows_params);
        assert_eq!(
            subscriber.changed().await,
            BTreeSet::from([
                "state://params/arms.goal_time_slow".to_owned(),
                "state://params/arms.other".to_owned()
            ])
        );
    }

    /// A renewed heartbeat changes the node and the list; a new or expired one also the status.
    #[test]
    fn heartbeat_diffs() {
        let before = BTreeMap::from([("hog".to_owned(), "t1".to_owned())]);
        let renewed = BTreeMap::from([("hog".to_owned(), "t2".to_owned())]);
        assert_eq!(
            heartbeat_changes(&before, &renewed),
            ["state://health/hog", "state://nodes"]
        );
        let joined = BTreeMap::from([("hog".to_owned(), "t1".to_owned()), ("eek".to_owned(), "t1".to_owned())]);
        assert_eq!(
            heartbeat_changes(&before, &joined),
            ["state://health/eek", "state://nodes", "state://status"]
        );
        assert_eq!(
            heartbeat_changes(&joined, &BTreeMap::new()),
            [
                "state://health/eek",
                "state://health/hog",
                "state://nodes",
                "state://status"
            ]
        );
        assert!(heartbeat_changes(&before, &before).is_empty());
    }
}

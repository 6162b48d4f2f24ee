//! The long-lived readers: [`Subscription`] (pub/sub with patterns) and [`Follower`]
//! (snapshot, then every change, resumable from a cursor).
//!
//! Both hold their library object behind an async mutex shared with the call in flight, so
//! `next` can be awaited from asyncio or waited for from a thread, and `close` from another
//! thread (or task) ends a pending `next` with `None` at once: the cancellation token is what
//! a blocked GUI thread is woken by.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use serde_json::json;
use tatbot_state::follow::Scope;
use tatbot_state::{CancellationToken, Cursor, FollowItem, SessionId, StateManager};
use tokio::sync::Mutex;

use crate::{Call, Reply, py_error, to_duration, to_json};

/// Waits for `next` until `timeout` (forever when `None`) or until `closed` fires; `None` for
/// either of those.
async fn next_or_none<T>(
    next: impl Future<Output = Option<T>>,
    timeout: Option<Duration>,
    closed: &CancellationToken,
) -> Option<T> {
    let limited = async {
        match timeout {
            None => next.await,
            Some(limit) => tokio::time::timeout(limit, next).await.ok().flatten(),
        }
    };
    tokio::select! {
        () = closed.cancelled() => None,
        item = limited => item,
    }
}

fn timeout(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    seconds.map(|seconds| to_duration("timeout", seconds)).transpose()
}

/// A live `PSUBSCRIBE` that reconnects by itself and fills gaps from the event log.
#[pyclass(frozen, module = "tatbot_state._native")]
pub(crate) struct Subscription {
    subscription: Arc<Mutex<tatbot_state::Subscription>>,
    /// Cancelled by `close`; ends every pending and later `next` with `None`.
    closed: CancellationToken,
    /// The subscription's counts, read while a `next` holds the subscription.
    counts: tatbot_state::SubscriptionCounts,
}

impl Subscription {
    pub(crate) fn new(subscription: tatbot_state::Subscription) -> Subscription {
        Subscription {
            counts: subscription.counts(),
            subscription: Arc::new(Mutex::new(subscription)),
            closed: CancellationToken::new(),
        }
    }
}

#[pymethods]
impl Subscription {
    /// The next message as `[channel, pattern, payload]`, or `None` after `timeout` seconds or
    /// once closed.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, timeout: Option<f64>) -> PyResult<Call> {
        let timeout = self::timeout(timeout)?;
        let subscription = self.subscription.clone();
        let closed = self.closed.clone();
        Ok(Call::new(async move {
            let mut subscription = subscription.lock().await;
            let message = next_or_none(subscription.next(), timeout, &closed).await;
            Ok(match message {
                None => Reply::None,
                Some(message) => Reply::Texts(vec![Some(message.channel), message.pattern, Some(message.payload)]),
            })
        }))
    }

    /// How many times the connection was lost and made again.
    fn reconnects(&self) -> u64 {
        self.counts.reconnects()
    }

    /// How many reconnects left messages behind that the event log could not give back.
    fn unrecovered(&self) -> u64 {
        self.counts.unrecovered()
    }

    /// Ends the subscription: pending and later `next` calls answer `None`.
    fn close(&self) {
        self.closed.cancel();
    }
}

/// A follower of the whole system or of one session.
#[pyclass(frozen, module = "tatbot_state._native")]
pub(crate) struct Follower {
    follower: Arc<Mutex<tatbot_state::Follower>>,
    /// Cancelled by `close`; ends every pending and later `next` with `None`.
    closed: CancellationToken,
}

impl Follower {
    pub(crate) fn start(state: &StateManager, session_id: Option<&str>, cursor: Option<&str>) -> PyResult<Follower> {
        let scope = match session_id {
            None => Scope::All,
            Some(text) => Scope::Session(SessionId::new(text).map_err(py_error)?),
        };
        let resume = cursor.map(str::parse::<Cursor>).transpose().map_err(py_error)?;
        let follower = state.follow(scope, resume);
        Ok(Follower {
            follower: Arc::new(Mutex::new(follower)),
            closed: CancellationToken::new(),
        })
    }
}

/// A follow item as JSON with a `type`: `snapshot` and `change` carry the `cursor` to resume
/// after them.
fn item_json(item: &FollowItem) -> PyResult<String> {
    let value = match item {
        FollowItem::Snapshot(snapshot) => {
            json!({"type": "snapshot", "cursor": snapshot.cursor, "snapshot": snapshot})
        }
        FollowItem::Change(change) => json!({"type": "change", "cursor": change.cursor, "change": change}),
        FollowItem::Resync { reason } => json!({"type": "resync", "reason": reason}),
        FollowItem::ConnectionLost { error } => json!({"type": "connection_lost", "error": error}),
        FollowItem::Reconnected => json!({"type": "reconnected"}),
    };
    to_json(&value)
}

#[pymethods]
impl Follower {
    /// The next item as JSON, or `None` after `timeout` seconds or once closed.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, timeout: Option<f64>) -> PyResult<Call> {
        let timeout = self::timeout(timeout)?;
        let follower = self.follower.clone();
        let closed = self.closed.clone();
        Ok(Call::new(async move {
            let mut follower = follower.lock().await;
            let item = next_or_none(follower.next(), timeout, &closed).await;
            Ok(Reply::MaybeText(item.as_ref().map(item_json).transpose()?))
        }))
    }

    /// Ends the follow: pending and later `next` calls answer `None`.
    fn close(&self) {
        self.closed.cancel();
    }
}

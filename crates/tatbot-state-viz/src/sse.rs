//! The live stream: one follower per client, each item an SSE event.
//!
//! | SSE `event` | `id` | `data` |
//! |---|---|---|
//! | `snapshot` | the cursor | a [`Snapshot`](tatbot_state::Snapshot) |
//! | `change` | the cursor | a [`Change`](tatbot_state::follow::Change): `cursor`, `kind` and its fields |
//! | `resync` | none | `{"reason": ...}`; a `snapshot` follows |
//! | `redis` | none | `{"connected": false, "error": ...}` or `{"connected": true}` |
//! | `params` | none | `{"params": [...]}`: every parameter (see `params.rs`) |
//!
//! The browser keeps the last `id` it saw and sends it back as `Last-Event-ID` when it
//! reconnects; the page also passes it as `?cursor=` when the sync toggle is switched back on.
//! A cursor that does not parse is ignored: that client gets a fresh snapshot.
//!
//! A `params` event carries no `id`, and an SSE event without one leaves the browser's last id
//! as it was, so parameters never move the follow cursor. Parameters are not part of the follow
//! API and have a cursor of their own (the audit log's), so instead of resuming, every stream
//! sends the whole list: once its parameter watch is open, after every change, and after each
//! `snapshot` and `Reconnected` (Redis may have lost data). A list equal to the last one sent
//! is not sent again.

use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tatbot_state::follow::{self, FollowItem, Follower, Scope};
use tatbot_state::{Cursor, StateManager};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::params::{self, ParamsFeed};
use crate::{REQUEST_TIMEOUT, VizState};

/// How long a stream waits before reading the parameters again after a read failed.
const PARAMS_RETRY: Duration = Duration::from_secs(2);

/// `?cursor=` of `/api/stream`.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    cursor: Option<String>,
}

/// `GET /api/stream`: the SSE stream of one client.
pub(crate) async fn stream(
    State(state): State<VizState>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Response {
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live viewers; close another dashboard",
        )
            .into_response();
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .or(query.cursor.as_deref())
        .and_then(|text| text.parse::<Cursor>().ok());
    tracing::debug!(resume = ?resume.as_ref().map(ToString::to_string), "stream opened");
    let follower = follow::follow_with(
        &state.manager,
        Scope::All,
        resume,
        state.follow_config.clone(),
        &state.shutdown,
    );
    let feed = Feed {
        params: ParamsFeed::start(&state.manager, &state.shutdown),
        follower,
        manager: state.manager.clone(),
        shutdown: state.shutdown.clone(),
        params_stale: false,
        params_retry: None,
        params_sent: None,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<Event, Infallible>(event), feed))
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// What one stream reads from: its follower and its parameter feed.
struct Feed {
    follower: Follower,
    params: ParamsFeed,
    manager: StateManager,
    /// Ends the stream at shutdown.
    shutdown: CancellationToken,
    /// The parameters may differ from what the page has: read and send them next.
    params_stale: bool,
    /// When to read the parameters again after a failed read.
    params_retry: Option<Instant>,
    /// Hash of the `data` of the last `params` event, to skip sending the same list twice
    /// (a hash rather than the text: a stream holds it for hours, and the list can be long).
    params_sent: Option<u64>,
    /// Held for the stream's life and released when its body is dropped: one of
    /// [`crate::MAX_STREAMS`].
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    /// The next event; `None` ends the stream (shutdown, or the follower stopped).
    async fn next(&mut self) -> Option<Event> {
        loop {
            // Checked before waiting, so a busy follower cannot hold the parameters back.
            if self.params_stale {
                self.params_stale = false;
                if let Some(event) = self.read_params().await? {
                    return Some(event);
                }
            }
            let retry = self.params_retry;
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                item = self.follower.next() => {
                    let item = item?;
                    if matches!(item, FollowItem::Snapshot(_) | FollowItem::Reconnected) {
                        self.params_stale = true;
                    }
                    return Some(to_event(&item));
                }
                () = self.params.changed() => self.params_stale = true,
                () = sleep_until(retry), if retry.is_some() => self.params_stale = true,
            }
        }
    }

    /// Reads the parameters: `Some(Some(event))` when the list differs from the last one sent,
    /// `Some(None)` when it does not or the read failed (retried after [`PARAMS_RETRY`]), and
    /// `None` at shutdown.
    async fn read_params(&mut self) -> Option<Option<Event>> {
        self.params_retry = None;
        let read = tokio::select! {
            () = self.shutdown.cancelled() => return None,
            read = tokio::time::timeout(REQUEST_TIMEOUT, params::list(&self.manager)) => read,
        };
        let list = match read {
            Ok(Ok(list)) => list,
            Ok(Err(error)) => {
                tracing::debug!(%error, "cannot read the parameters for a stream; retrying");
                self.params_retry = Some(Instant::now() + PARAMS_RETRY);
                return Some(None);
            }
            Err(_) => {
                tracing::debug!(timeout = ?REQUEST_TIMEOUT, "reading the parameters timed out; retrying");
                self.params_retry = Some(Instant::now() + PARAMS_RETRY);
                return Some(None);
            }
        };
        let data = list.to_string();
        let hash = {
            let mut hasher = DefaultHasher::new();
            data.hash(&mut hasher);
            hasher.finish()
        };
        if self.params_sent == Some(hash) {
            return Some(None);
        }
        self.params_sent = Some(hash);
        Some(Some(Event::default().event("params").data(data)))
    }
}

/// Sleeps until `deadline`; forever when there is none (the branch is disabled then anyway).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn to_event(item: &FollowItem) -> Event {
    let (name, id, data) = match item {
        FollowItem::Snapshot(snapshot) => ("snapshot", Some(snapshot.cursor.to_string()), json!(snapshot)),
        FollowItem::Change(change) => ("change", Some(change.cursor.to_string()), json!(change)),
        FollowItem::Resync { reason } => ("resync", None, json!({ "reason": reason })),
        FollowItem::ConnectionLost { error } => ("redis", None, json!({ "connected": false, "error": error })),
        FollowItem::Reconnected => ("redis", None, json!({ "connected": true })),
    };
    // Compact JSON has no newlines, and a cursor holds none either, which is all `data` and
    // `id` require.
    let event = Event::default().event(name).data(data.to_string());
    match id {
        Some(id) => event.id(id),
        None => event,
    }
}

//! The live stream: one follower per client, each item an SSE event.
//!
//! | SSE `event` | `id` | `data` |
//! |---|---|---|
//! | `snapshot` | the cursor | a [`Snapshot`](tatbot_state::Snapshot) |
//! | `change` | the cursor | a [`Change`](tatbot_state::follow::Change): `cursor`, `kind` and its fields |
//! | `resync` | none | `{"reason": ...}`; a `snapshot` follows |
//! | `redis` | none | `{"connected": false, "error": ...}` or `{"connected": true}` |
//!
//! The browser keeps the last `id` it saw and sends it back as `Last-Event-ID` when it
//! reconnects; the page also passes it as `?cursor=` when the sync toggle is switched back on.
//! A cursor that does not parse is ignored: that client gets a fresh snapshot.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tatbot_state::Cursor;
use tatbot_state::follow::{self, FollowItem, Scope};

use crate::VizState;

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
    let shutdown = state.shutdown.clone();
    // The permit lives in the stream's state, so it is released when the body is dropped.
    let events = futures_util::stream::unfold(
        (follower, permit, shutdown),
        |(mut follower, permit, shutdown)| async move {
            let item = tokio::select! {
                () = shutdown.cancelled() => None,
                item = follower.next() => item,
            }?;
            Some((Ok::<Event, Infallible>(to_event(&item)), (follower, permit, shutdown)))
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
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

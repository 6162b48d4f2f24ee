//! The live stream: the SSE protocol, and one response body per client fed by the hub.
//!
//! | SSE `event` | `id` | `data` |
//! |---|---|---|
//! | `snapshot` | the cursor | a [`Snapshot`] |
//! | `change` | the cursor | a [`Change`](tatbot_state::follow::Change): `cursor`, `kind` and its fields |
//! | `resync` | none | `{"reason": ...}`; a `snapshot` follows |
//! | `redis` | none | `{"connected": false, "error": ...}` or `{"connected": true}` |
//! | `params` | none | `{"params": [...]}`: every parameter (see `params.rs`) |
//! | `clock` | none | `{"server_time_ms": ...}`: the Redis server's time when this frame was sent |
//!
//! The page measures every age (heartbeats, parameters) against the last `clock`, never
//! against a snapshot's `server_time_ms`: the snapshot a new page gets is the hub's current
//! state, serialized when that state was last snapshotted, maybe minutes ago (issue #14: a
//! page opened from a 71 s old snapshot showed a 48 s old heartbeat as "0 s ago"). A stream
//! sends a `clock` right after every `snapshot` frame, so a page that replaced its view also
//! has the time to measure it against.
//!
//! The browser keeps the last `id` it saw and sends it back as `Last-Event-ID` when it
//! reconnects; the page also passes it as `?cursor=` when the sync toggle is switched back on.
//! A cursor that the hub can resume from gets exactly the items after it; any other cursor
//! (one that does not parse, one older than the hub's ring, one from an earlier process)
//! gets a fresh snapshot, which the page puts in place of what it had (see `hub.rs`).
//!
//! A `params` event carries no `id`, and an SSE event without one leaves the browser's last id
//! as it was, so parameters never move the follow cursor. Parameters are not part of the follow
//! API and have a cursor of their own (the audit log's), so instead of resuming, every stream
//! gets the whole list: when it opens (after its snapshot, if any), and whenever the hub reads
//! a list that differs from the last one (the watch saw a change, after a `snapshot` and
//! after Redis came back).
//!
//! Frames are built once, by the hub, as the bytes that go on the wire; every stream sends the
//! same [`Bytes`]. That is why the body is a plain stream of bytes rather than axum's `Sse`,
//! whose events are buffers built per client. It writes what `Sse` wrote: the same
//! headers, `event:`, `id:` and `data:` lines, and an empty comment every
//! [`KEEP_ALIVE_INTERVAL`] of silence.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tatbot_state::follow::FollowItem;
use tatbot_state::{Cursor, Snapshot};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::VizState;
use crate::hub::{Hub, Subscription};

/// Longest silence on a stream before a keep-alive comment.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// An empty SSE comment: keeps proxies and the browser from timing the stream out.
const KEEP_ALIVE: Bytes = Bytes::from_static(b":\n\n");

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
    let hub = state.hub().clone();
    let feed = Feed {
        subscription: hub.subscribe(resume.as_ref()),
        hub,
        clock_due: false,
        shutdown: state.shutdown.clone(),
        keep_alive: Instant::now() + KEEP_ALIVE_INTERVAL,
        _permit: permit,
    };
    let frames = futures_util::stream::unfold(feed, |mut feed| async move {
        let frame = feed.next().await?;
        Some((Ok::<Bytes, Infallible>(frame), feed))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

/// What one stream reads from; dropped with the response body when the client goes.
struct Feed {
    subscription: Subscription,
    /// Where the `clock` frames' time comes from.
    hub: Arc<Hub>,
    /// A `snapshot` frame was just sent: the next frame is a `clock`.
    clock_due: bool,
    /// Ends the stream at shutdown.
    shutdown: CancellationToken,
    /// When to send a keep-alive if nothing else was sent.
    keep_alive: Instant,
    /// Held for the stream's life and released when its body is dropped: one of
    /// [`crate::MAX_STREAMS`].
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    /// The next frame; `None` ends the stream (shutdown).
    async fn next(&mut self) -> Option<Bytes> {
        if std::mem::take(&mut self.clock_due)
            && let Some(server_time_ms) = self.hub.server_time_ms()
        {
            return Some(clock_frame(server_time_ms));
        }
        let frame = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return None,
            frame = self.subscription.next() => frame,
            () = tokio::time::sleep_until(self.keep_alive) => KEEP_ALIVE,
        };
        self.keep_alive = Instant::now() + KEEP_ALIVE_INTERVAL;
        self.clock_due = frame.starts_with(SNAPSHOT_PREFIX);
        Some(frame)
    }
}

/// How every `snapshot` frame starts (see [`frame`]).
const SNAPSHOT_PREFIX: &[u8] = b"event: snapshot\n";

/// A `clock` frame: the Redis server's time when it is sent.
fn clock_frame(server_time_ms: i64) -> Bytes {
    frame("clock", None, &json!({ "server_time_ms": server_time_ms }))
}

/// A follower item as a frame, and its `id` (the cursor text) when it has one.
pub(crate) fn encode(item: &FollowItem) -> (Bytes, Option<String>) {
    match item {
        FollowItem::Snapshot(snapshot) => {
            let id = snapshot.cursor.to_string();
            (frame("snapshot", Some(&id), snapshot), Some(id))
        }
        FollowItem::Change(change) => {
            let id = change.cursor.to_string();
            (frame("change", Some(&id), change), Some(id))
        }
        FollowItem::Resync { reason } => (resync_frame(reason), None),
        FollowItem::ConnectionLost { error } => (
            frame("redis", None, &json!({ "connected": false, "error": error })),
            None,
        ),
        FollowItem::Reconnected => (frame("redis", None, &json!({ "connected": true })), None),
    }
}

/// A `snapshot` frame of `snapshot`.
pub(crate) fn snapshot_frame(snapshot: &Snapshot) -> Bytes {
    frame("snapshot", Some(&snapshot.cursor.to_string()), snapshot)
}

/// A `resync` frame; a `snapshot` must follow it.
pub(crate) fn resync_frame(reason: &str) -> Bytes {
    frame("resync", None, &json!({ "reason": reason }))
}

/// A `params` frame of a list from [`crate::params::list`].
pub(crate) fn params_frame(list: &Value) -> Bytes {
    frame("params", None, list)
}

/// One SSE event: `event:`, `id:` when given, one `data:` line of compact JSON, blank line.
///
/// Compact JSON has no newlines (serde_json escapes them in strings), and a cursor holds none
/// either, which is all `data` and `id` require.
fn frame(event: &str, id: Option<&str>, data: &impl Serialize) -> Bytes {
    let mut buffer = Vec::with_capacity(256);
    buffer.extend_from_slice(b"event: ");
    buffer.extend_from_slice(event.as_bytes());
    if let Some(id) = id {
        buffer.extend_from_slice(b"\nid: ");
        buffer.extend_from_slice(id.as_bytes());
    }
    buffer.extend_from_slice(b"\ndata: ");
    // Writing to a Vec cannot fail, and serde_json fails only for maps whose keys are not
    // strings or for Serialize impls that return errors: ours are derived (or write strings)
    // and their maps are keyed by strings.
    serde_json::to_writer(&mut buffer, data).expect("follow items serialize to JSON");
    buffer.extend_from_slice(b"\n\n");
    // The hub keeps frames for a while; don't keep the growth slack with them.
    buffer.shrink_to_fit();
    Bytes::from(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames are what axum's `Sse` wrote for the same event, fields in a different order.
    #[test]
    fn frames_are_sse_events() {
        let frame = frame("change", Some("1;7-0"), &json!({"kind": "node", "text": "a\nb"}));
        assert_eq!(
            &frame[..],
            b"event: change\nid: 1;7-0\ndata: {\"kind\":\"node\",\"text\":\"a\\nb\"}\n\n"
        );
        assert_eq!(
            &resync_frame("gone")[..],
            b"event: resync\ndata: {\"reason\":\"gone\"}\n\n"
        );
        assert_eq!(
            &clock_frame(1_700_000_000_123)[..],
            b"event: clock\ndata: {\"server_time_ms\":1700000000123}\n\n"
        );
        let snapshot: Snapshot = serde_json::from_value(json!({
            "cursor": "1;1-0", "server_time_ms": 1, "sessions": {}, "nodes": {}, "recent_events": [],
            "recent_errors": [], "recent_events_limit": 1, "recent_errors_limit": 1,
        }))
        .unwrap_or_else(|err| panic!("{err}"));
        assert!(snapshot_frame(&snapshot).starts_with(SNAPSHOT_PREFIX));
    }
}

//! The router: the page, its embedded assets, the JSON API and the live stream.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the page |
//! | `GET /assets/app.js`, `GET /assets/style.css` | its script and style |
//! | `GET /api/status` | the system summary ([`tatbot_state::SystemStatus`]) |
//! | `GET /api/sessions` | `{"cursor", "server_time_ms", "sessions": {id: progress}, "corrupt": [...]}` |
//! | `GET /api/nodes` | `{"server_time_ms", "nodes": {id: node}, "corrupt": [...]}` |
//! | `GET /api/events` | `{"events": [...], "errors": [...]}`, oldest first |
//! | `GET /api/params` | `{"params": [...], "corrupt": [...]}`: every parameter by name ([`tatbot_state::Param`]) |
//! | `GET /api/stream` | the SSE stream (see `sse.rs`) |
//! | `GET /api/sessions/{id}/timeline` | one session's history for its timeline: `{"session_id", "progress", "entries": [...], "events": [...]}` (see [`timeline`]) |
//!
//! The three snapshot endpoints read one consistent snapshot each. A Redis failure answers
//! `503` with `{"error": ...}`. Stored values that are corrupt (the wrong type, over the 1 MiB
//! bound, not decodable, under an invalid id) never fail a request: each is a
//! `{"key", "error"}` in `corrupt` ([`tatbot_state::CorruptEntry`]), the sessions' and
//! parameters' under their endpoints and the heartbeats' under `/api/nodes`.

use std::future::Future;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tatbot_state::follow::Scope;
use tatbot_state::{HistoryCursor, Snapshot};

use crate::{REQUEST_TIMEOUT, VizState, params, sse};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Builds the dashboard's router; see the module docs for the routes.
pub fn app(state: VizState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(script))
        .route("/assets/style.css", get(style))
        .route("/api/status", get(status))
        .route("/api/sessions", get(sessions))
        .route("/api/nodes", get(nodes))
        .route("/api/events", get(events))
        .route("/api/params", get(param_list))
        .route("/api/stream", get(sse::stream))
        .route("/api/sessions/{id}/timeline", get(timeline))
        .with_state(state)
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn status(State(state): State<VizState>) -> Response {
    bounded(async move { Ok(json!(state.manager.system_status().await)) }).await
}

async fn sessions(State(state): State<VizState>) -> Response {
    with_snapshot(state, |snapshot| {
        json!({
            "cursor": snapshot.cursor,
            "server_time_ms": snapshot.server_time_ms,
            "sessions": snapshot.sessions,
            "corrupt": corrupt_where(&snapshot, |key| !key.starts_with(NODE_KEYS)),
        })
    })
    .await
}

async fn nodes(State(state): State<VizState>) -> Response {
    with_snapshot(state, |snapshot| {
        json!({
            "server_time_ms": snapshot.server_time_ms,
            "nodes": snapshot.nodes,
            "corrupt": corrupt_where(&snapshot, |key| key.starts_with(NODE_KEYS)),
        })
    })
    .await
}

async fn events(State(state): State<VizState>) -> Response {
    with_snapshot(
        state,
        |snapshot| json!({"events": snapshot.recent_events, "errors": snapshot.recent_errors}),
    )
    .await
}

async fn param_list(State(state): State<VizState>) -> Response {
    bounded(async move { params::list(&state.manager).await }).await
}

/// Where heartbeat keys live; every other corrupt key of a snapshot is a session's.
const NODE_KEYS: &str = "node:";

/// The snapshot's corrupt entries whose key passes `wanted`.
fn corrupt_where(snapshot: &Snapshot, wanted: impl Fn(&str) -> bool) -> Vec<&tatbot_state::CorruptEntry> {
    snapshot.corrupt.iter().filter(|entry| wanted(&entry.key)).collect()
}

async fn with_snapshot(state: VizState, shape: impl FnOnce(Snapshot) -> Value) -> Response {
    bounded(async move {
        let snapshot = state
            .manager
            .snapshot(&Scope::All, &state.follow_config)
            .await
            .map_err(|err| err.report().to_string())?;
        Ok(shape(snapshot))
    })
    .await
}

/// Runs a JSON handler within [`REQUEST_TIMEOUT`]; a failure or timeout answers 503.
async fn bounded(work: impl Future<Output = Result<Value, String>>) -> Response {
    let error = match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(Ok(value)) => return Json(value).into_response(),
        Ok(Err(error)) => error,
        Err(_) => format!("no answer from Redis within {REQUEST_TIMEOUT:?}"),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": error }))).into_response()
}

/// History entries a timeline shows at most: the history stream's own bound.
const TIMELINE_ENTRIES: usize = 10_000;
/// Entries fetched per round trip.
const TIMELINE_PAGE: usize = 1_000;
/// Session events (start, pauses, resumes, errors, end) a timeline shows at most.
const TIMELINE_EVENTS: usize = 1_000;

/// One session's timeline: its document, every stored history entry with its time (from the
/// stream id), and every event of the session the event log still holds (start, pauses,
/// resumes, errors, end), however long the session ran.
/// An ended session answers while its keys are stored; an unknown one is `404`, an invalid id
/// `400`, each with `{"error": ...}`.
async fn timeline(State(state): State<VizState>, Path(id): Path<String>) -> Response {
    let session_id = match tatbot_state::SessionId::new(id) {
        Ok(session_id) => session_id,
        Err(err) => return (StatusCode::BAD_REQUEST, Json(json!({ "error": err.to_string() }))).into_response(),
    };
    let work = async move {
        let manager = &state.manager;
        let progress = manager
            .get_stroke_progress(&session_id)
            .await
            .map_err(|err| err.to_string())?;
        let mut entries = Vec::new();
        let mut after = HistoryCursor::Start;
        while entries.len() < TIMELINE_ENTRIES {
            let page = manager
                .get_history(&session_id, &after, TIMELINE_PAGE)
                .await
                .map_err(|err| err.to_string())?;
            let full = page.len() == TIMELINE_PAGE;
            if let Some(last) = page.last() {
                after = HistoryCursor::After(last.id);
            }
            entries.extend(page.into_iter().map(|entry| {
                let ms = entry.id.ms;
                json!({
                    "id": entry.id, "t_ms": ms, "stroke_idx": entry.stroke_idx, "pose_idx": entry.pose_idx,
                    "description_l": entry.description_l, "description_r": entry.description_r,
                })
            }));
            if !full {
                break;
            }
        }
        if progress.is_none() && entries.is_empty() {
            return Ok::<_, String>(None);
        }
        let events: Vec<Value> = manager
            .session_events(&session_id, TIMELINE_EVENTS)
            .await
            .map_err(|err| err.to_string())?
            .iter()
            .filter_map(|logged| serde_json::to_value(logged).ok())
            .collect();
        Ok(Some(json!({
            "session_id": session_id.as_str(), "progress": progress, "entries": entries, "events": events,
        })))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(Ok(Some(value))) => Json(value).into_response(),
        Ok(Ok(None)) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such session (never started, or expired)" })),
        )
            .into_response(),
        Ok(Err(error)) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": error }))).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("no answer from Redis within {REQUEST_TIMEOUT:?}") })),
        )
            .into_response(),
    }
}

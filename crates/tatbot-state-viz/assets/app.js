// tatbot live dashboard: folds the SSE stream of /api/stream into a view and renders it.
//
// Every `snapshot` replaces the view; every `change` is applied to it as the Rust
// `Snapshot::apply` does. The browser's EventSource resends the last event id as
// Last-Event-ID when it reconnects, so nothing is missed; when the sync toggle is switched
// back on, the last id goes in `?cursor=` for the same effect. A `params` event carries the
// whole parameter list and no id, so it replaces the list and leaves the cursor alone. Ages
// are measured against the server's time from the last `clock` event (sent right after every
// snapshot), never against a snapshot's own server_time_ms, which may be minutes old. Text
// from Redis is inserted with textContent only, never as HTML.
//
// Nothing old is shown as live: a session whose owner let its lease lapse is "stale" (the
// rule of `StrokeProgress::state_at` in the library, on the server's clock), every session
// card shows the age of its last update, and while the stream is down nodes and sessions
// turn grey with "last seen N s ago". Before the first snapshot the panels say "Loading".
"use strict";

const view = { loaded: false, sessions: {}, nodes: {}, robots: {}, params: [], events: [], errors: [], eventsLimit: 50, errorsLimit: 20, serverOffsetMs: 0 };
// As the library's DEFAULT_SESSION_LEASE and MAX_SESSION_LEASE.
const DEFAULT_LEASE_SECS = 15;
const MAX_LEASE_SECS = 3600;
const conn = { state: "pending", detail: "", redisDown: false, lastId: null, lastUpdate: null, source: null, retry: null };
const SHOWN_SESSIONS = 12;
// The ids of the history entries received per session, for tests and debugging.
const entries = {};
const ENTRIES_KEPT = 10000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "style") node.style.cssText = value; else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function wireTime(text) {
  if (!text) return null;
  const zoned = /[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text + "Z";
  const ms = Date.parse(zoned);
  return Number.isNaN(ms) ? null : ms;
}

function clock(ms) {
  return ms === null ? "?" : new Date(ms).toLocaleTimeString([], { hour12: false });
}

function pushBounded(list, item, limit) {
  list.push(item);
  if (list.length > limit) list.splice(0, list.length - limit);
}

function applySnapshot(snapshot) {
  view.loaded = true;
  view.sessions = snapshot.sessions;
  view.nodes = snapshot.nodes;
  view.robots = snapshot.robots || {};
  view.events = snapshot.recent_events;
  view.errors = snapshot.recent_errors;
  view.eventsLimit = snapshot.recent_events_limit;
  view.errorsLimit = snapshot.recent_errors_limit;
}

function applyChange(change) {
  switch (change.kind) {
    case "progress": {
      pushBounded(entries[change.session_id] = entries[change.session_id] || [], change.entry.id, ENTRIES_KEPT);
      const progress = view.sessions[change.session_id];
      if (!progress) break;
      progress.stroke_idx = change.entry.stroke_idx;
      progress.pose_idx = change.entry.pose_idx;
      progress.stroke_description_l = change.entry.description_l;
      progress.stroke_description_r = change.entry.description_r;
      progress.node_id = change.entry.node_id;
      break;
    }
    case "session": view.sessions[change.session_id] = change.progress; break;
    case "session_removed": delete view.sessions[change.session_id]; break;
    case "event":
      if (change.event.event_type === "error") pushBounded(view.errors, change.event, view.errorsLimit);
      if (change.event.event_type !== "progress_update") pushBounded(view.events, change.event, view.eventsLimit);
      break;
    case "node": view.nodes[change.node.node_id] = change.node; break;
    case "robot":
      if (change.state) view.robots[change.node_id] = change.state; else delete view.robots[change.node_id];
      break;
  }
}

// `detail` is for people; `cause` (an internal error string) only goes in the tooltip.
function setConnection(state, detail, cause) {
  conn.state = state;
  conn.detail = detail || "";
  conn.cause = cause || "";
  schedule();
}

function received(event) {
  if (event.lastEventId) conn.lastId = event.lastEventId;
  conn.lastUpdate = Date.now();
}

function open() {
  clearTimeout(conn.retry);
  const url = conn.lastId ? "/api/stream?cursor=" + encodeURIComponent(conn.lastId) : "/api/stream";
  const source = new EventSource(url);
  conn.source = source;
  source.addEventListener("snapshot", (event) => {
    received(event);
    conn.redisDown = false;
    applySnapshot(JSON.parse(event.data));
    setConnection("connected");
  });
  source.addEventListener("change", (event) => {
    received(event);
    applyChange(JSON.parse(event.data));
    if (conn.state !== "connected") setConnection("connected"); else schedule();
  });
  source.addEventListener("clock", (event) => {
    view.serverOffsetMs = JSON.parse(event.data).server_time_ms - Date.now();
    schedule();
  });
  source.addEventListener("params", (event) => {
    received(event);
    view.params = JSON.parse(event.data).params;
    schedule();
  });
  source.addEventListener("resync", (event) => {
    received(event);
    setConnection("pending", "catching up after a gap", JSON.parse(event.data).reason);
  });
  source.addEventListener("redis", (event) => {
    received(event);
    const status = JSON.parse(event.data);
    conn.redisDown = !status.connected;
    if (status.connected) setConnection("connected");
    else setConnection("disconnected", "Redis is unreachable; retrying", status.error);
  });
  source.onerror = () => {
    if (conn.source !== source) return;
    if (source.readyState === EventSource.CLOSED) {
      setConnection("error", "the dashboard server is unavailable; retrying");
      conn.retry = setTimeout(open, 2000);
    } else {
      setConnection("disconnected", "lost the dashboard server; reconnecting");
    }
  };
}

function close() {
  clearTimeout(conn.retry);
  if (conn.source) conn.source.close();
  conn.source = null;
  setConnection("paused", "sync is off");
}

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  setTimeout(() => { pending = false; render(); }, 50);
}

function serverNow() {
  return Date.now() + view.serverOffsetMs;
}

// The lease the owner promised, as the library reads it.
function leaseMs(progress) {
  const secs = Number(progress.lease_secs);
  if (typeof progress.lease_secs !== "number" || !Number.isFinite(secs)) return DEFAULT_LEASE_SECS * 1000;
  return Math.min(Math.max(secs, 1), MAX_LEASE_SECS) * 1000;
}

function lastAlive(progress) {
  const written = wireTime(progress.timestamp) || 0;
  const renewed = typeof progress.lease_renewed === "string" ? wireTime(progress.lease_renewed) || 0 : 0;
  return Math.max(written, renewed);
}

function sessionState(progress, now) {
  if (!progress.is_executing) return progress.aborted === true ? "aborted" : "ended";
  if (now - lastAlive(progress) > leaseMs(progress)) return "stale";
  return progress.is_paused ? "paused" : "executing";
}

function live() {
  return conn.state === "connected";
}

function renderSessions() {
  const container = document.getElementById("sessions");
  if (!view.loaded) {
    container.replaceChildren(el("p", { class: "empty loading" }, "Loading…"));
    return;
  }
  const now = serverNow();
  const ids = Object.keys(view.sessions);
  const rank = (id) => (view.sessions[id].is_executing ? 0 : 1);
  ids.sort((a, b) => rank(a) - rank(b) || (wireTime(view.sessions[b].timestamp) || 0) - (wireTime(view.sessions[a].timestamp) || 0));
  const states = ids.map((id) => sessionState(view.sessions[id], now));
  const active = states.filter((state) => state === "executing").length;
  const stale = states.filter((state) => state === "stale").length;
  document.getElementById("session-count").textContent =
    `${active} active, ${stale ? stale + " stale, " : ""}${ids.length} stored`;
  if (ids.length === 0) {
    container.replaceChildren(el("p", { class: "empty" }, "No sessions yet."));
    return;
  }
  container.replaceChildren(...ids.slice(0, SHOWN_SESSIONS).map((id) => {
    const p = view.sessions[id];
    const state = sessionState(p, now);
    const updated = wireTime(p.timestamp);
    const age = updated === null ? "?" : ago(now - updated);
    const ageText = live() ? `updated ${age}` : `last seen ${age}`;
    const length = Math.max(p.stroke_length, 1);
    const total = p.total_strokes * length;
    const done = Math.min(p.stroke_idx * length + p.pose_idx + 1, total);
    const percent = total > 0 ? Math.max(0, (100 * done) / total) : 0;
    const text = `stroke ${Math.min(p.stroke_idx + 1, p.total_strokes)}/${p.total_strokes} · pose ${p.pose_idx + 1}/${p.stroke_length}`;
    return el("div", { class: "session " + state, "data-session": id },
      el("div", { class: "title" },
        el("span", { class: "id" }, id),
        el("span", { class: "state " + state, title: state === "stale" ? "its robot stopped writing; end or abort it with tatbot-state sessions" : "" }, state),
        el("span", { class: "progress-text" }, text),
        el("span", { class: "age", title: p.timestamp }, ageText),
        el("span", { class: "dim" }, `${p.scene_name} · node ${p.node_id} · ${percent.toFixed(0)}%`)),
      el("div", { class: "bar" }, el("div", { style: `width: ${percent.toFixed(2)}%` })),
      el("dl", { class: "details" },
        el("dt", {}, "left"), el("dd", { class: "left" }, `${p.stroke_description_l || "—"} (offset ${p.offset_idx_l})`),
        el("dt", {}, "right"), el("dd", { class: "right" }, `${p.stroke_description_r || "—"} (offset ${p.offset_idx_r})`)));
  }));
}

function percent(value) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(0)}%`;
}

function renderNodes() {
  const body = document.querySelector("#nodes tbody");
  if (!view.loaded) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "8", class: "empty loading" }, "Loading…")));
    return;
  }
  const ids = Object.keys(view.nodes).sort();
  const online = ids.filter((id) => view.nodes[id].health).length;
  document.getElementById("node-count").textContent = `${online} online, ${ids.length} known`;
  if (ids.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "8", class: "empty" }, "No nodes yet.")));
    return;
  }
  const now = Date.now() + view.serverOffsetMs;
  body.replaceChildren(...ids.map((id) => {
    const node = view.nodes[id];
    const health = node.health;
    const seen = health ? wireTime(health.last_heartbeat) : node.last_seen_ms;
    const age = seen === null || seen === undefined ? "never" : `${Math.max(0, Math.round((now - seen) / 1000))} s ago`;
    // While the stream is down the last known state is shown as such, not as live.
    const stateText = !live() ? (seen === null || seen === undefined ? "unknown" : `last seen ${age}`) : health ? "online" : "offline";
    const stateClass = !live() ? "unknown" : health ? "online" : "offline";
    const gpu = health && health.gpu_available ? percent(health.gpu_percent) : "none";
    const skew = node.clock_skew_ms === null || node.clock_skew_ms === undefined ? "—" : `${(Math.abs(node.clock_skew_ms) < 5 ? 0 : node.clock_skew_ms / 1000).toFixed(2)} s`;
    return el("tr", { "data-node": id },
      el("td", {}, id),
      el("td", { class: stateClass }, stateText),
      el("td", {}, age),
      el("td", {}, health ? percent(health.cpu_percent) : "—"),
      el("td", {}, health ? percent(health.memory_percent) : "—"),
      el("td", {}, health ? percent(health.disk_percent) : "—"),
      el("td", {}, health ? gpu : "—"),
      el("td", {}, skew));
  }));
}

// Joint values as "[0.10, -1.57]"; anything but an array of numbers is shown as it is not.
function jointsText(values) {
  if (values === null || values === undefined) return "—";
  if (!Array.isArray(values)) return "invalid";
  const shown = values.slice(0, 16).map((value) => (typeof value === "number" ? value.toFixed(2) : "invalid"));
  if (values.length > 16) shown.push("…");
  return "[" + shown.join(", ") + "]";
}

function renderRobots() {
  const body = document.querySelector("#robots tbody");
  const ids = Object.keys(view.robots).sort();
  document.getElementById("robot-count").textContent = `${ids.length} stored`;
  if (ids.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "7", class: "empty" }, "No robot state yet.")));
    return;
  }
  const now = Date.now() + view.serverOffsetMs;
  const arm = (connected) => el("td", { class: connected ? "online" : "offline" }, connected ? "connected" : "disconnected");
  body.replaceChildren(...ids.map((id) => {
    const robot = view.robots[id];
    const updated = wireTime(robot.timestamp);
    return el("tr", { "data-robot": id },
      el("td", {}, id),
      arm(robot.is_connected_l),
      arm(robot.is_connected_r),
      el("td", { class: "pose" }, String(robot.current_pose)),
      el("td", { title: String(robot.timestamp) }, updated === null ? "?" : ago(now - updated)),
      el("td", { class: "joints" }, jointsText(robot.joints_l)),
      el("td", { class: "joints" }, jointsText(robot.joints_r)));
  }));
}

// "12 s ago", "5 min ago", "3 h ago", "2 d ago": parameters live long.
function ago(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 120) return `${seconds} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

// A value as the CLI prints it: compact JSON, with floats that are whole keeping their ".0".
function paramText(value, type) {
  const float = (number) => (Number.isInteger(number) ? number.toFixed(1) : String(number));
  if (type === "float") return float(value);
  if (type === "float[]") return "[" + value.map(float).join(",") + "]";
  return JSON.stringify(value);
}

function renderParams() {
  const body = document.querySelector("#params tbody");
  document.getElementById("param-count").textContent = `${view.params.length} declared`;
  if (view.params.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "empty" }, "No parameters yet.")));
    return;
  }
  const now = Date.now() + view.serverOffsetMs;
  body.replaceChildren(...view.params.map((param) => {
    const descriptor = param.descriptor;
    const updated = wireTime(param.updated);
    const text = paramText(param.value, descriptor.type);
    return el("tr", { "data-param": param.name },
      el("td", { class: "name", title: descriptor.description || "" }, param.name),
      el("td", { class: "value", title: text }, text),
      el("td", { class: "type" }, descriptor.type, descriptor.read_only ? el("span", { class: "dim" }, " read-only") : null),
      el("td", { class: "version" }, String(param.version)),
      el("td", { class: "actor" }, param.actor),
      el("td", { class: "age", title: param.updated }, updated === null ? "?" : ago(now - updated)));
  }));
}

function describe(event) {
  const payload = typeof event.payload === "object" && event.payload !== null ? event.payload : {};
  const parts = [];
  if (event.session_id) parts.push(event.session_id);
  if (payload.node_id) parts.push("node " + payload.node_id);
  if (payload.message) parts.push(payload.message);
  if (payload.current_pose) parts.push("pose " + payload.current_pose);
  if (typeof event.payload === "string") parts.push(event.payload);
  return parts.join(" · ");
}

function renderLog(id, events, empty) {
  const list = document.getElementById(id);
  if (events.length === 0) {
    list.replaceChildren(el("li", { class: "empty" }, empty));
    return;
  }
  list.replaceChildren(...events.slice().reverse().map((event) => {
    const when = wireTime(event.payload && event.payload.timestamp);
    return el("li", {}, el("span", { class: "when" }, clock(when)),
      el("span", { class: "type" }, event.event_type || event.channel), describe(event));
  }));
}

function renderHeader() {
  const badge = document.getElementById("connection");
  const words = { pending: "Connecting", connected: "Connected", disconnected: "Disconnected", error: "Error", paused: "Paused" };
  badge.className = "badge " + conn.state;
  badge.textContent = words[conn.state] + (conn.detail ? ` — ${conn.detail}` : "");
  badge.title = conn.cause || "";
  document.body.classList.toggle("not-live", view.loaded && !live());
  // A banner while Redis is down: before the first snapshot the page has nothing to show yet.
  const banner = document.getElementById("redis-banner");
  banner.hidden = !conn.redisDown;
  banner.textContent = !conn.redisDown ? "" : view.loaded
    ? "Redis is unreachable; showing what was last seen until it is back."
    : "Waiting for Redis" + (conn.cause ? ` (${conn.cause})` : "") + "; the dashboard fills in when it answers.";
  document.getElementById("last-update").textContent = conn.lastUpdate === null ? "never" : clock(conn.lastUpdate);
}

function render() {
  renderHeader();
  renderSessions();
  renderNodes();
  renderRobots();
  renderParams();
  renderLog("events", view.events, "No events yet.");
  renderLog("errors", view.errors, "No errors.");
}

document.getElementById("sync").addEventListener("change", (event) => {
  if (event.target.checked) open(); else close();
});
// Heartbeat and parameter ages move on their own.
setInterval(schedule, 1000);
window.tatbot = { view, conn, entries };
open();
render();

// Session timeline: click a session to see its progress over time from its history stream,
// with its pauses, resumes and end marked, and scrub through its entries.
const timeline = { id: null, data: null };

function timelineDone(entry, progress) {
  const length = Math.max((progress && progress.stroke_length) || 1, 1);
  return entry.stroke_idx * length + entry.pose_idx + 1;
}

function renderTimeline() {
  const panel = document.getElementById("timeline-panel");
  const data = timeline.data;
  if (!data) { panel.hidden = true; return; }
  panel.hidden = false;
  const entries = data.entries;
  const state = data.progress ? sessionState(data.progress) : "stored";
  document.getElementById("timeline-title").textContent = `${data.session_id} · ${entries.length} entries · ${state}`;
  const svg = document.getElementById("timeline-plot");
  const ns = "http://www.w3.org/2000/svg";
  const times = entries.map((e) => e.t_ms || 0);
  const first = Math.min(...times, Infinity), last = Math.max(...times, -Infinity);
  const span = Math.max(last - first, 1);
  const top = Math.max(...entries.map((e) => timelineDone(e, data.progress)), 1);
  const x = (t) => (600 * (t - first)) / span;
  const y = (done) => 115 - (110 * done) / top;
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", entries.map((e) => `${x(e.t_ms).toFixed(1)},${y(timelineDone(e, data.progress)).toFixed(1)}`).join(" "));
  line.setAttribute("class", "timeline-line");
  const marks = data.events.map((logged) => {
    const t = Number(String(logged.id).split("-")[0]);
    const mark = document.createElementNS(ns, "line");
    mark.setAttribute("x1", x(t)); mark.setAttribute("x2", x(t));
    mark.setAttribute("y1", 0); mark.setAttribute("y2", 120);
    mark.setAttribute("class", "timeline-mark " + (logged.event_type || "event"));
    const title = document.createElementNS(ns, "title");
    title.textContent = logged.event_type || "event";
    mark.append(title);
    return mark;
  });
  const cursor = document.createElementNS(ns, "line");
  cursor.setAttribute("id", "timeline-cursor");
  cursor.setAttribute("y1", 0); cursor.setAttribute("y2", 120);
  svg.replaceChildren(line, ...marks, cursor);
  const scrub = document.getElementById("timeline-scrub");
  scrub.max = Math.max(entries.length - 1, 0);
  if (Number(scrub.value) > Number(scrub.max) || timeline.fresh) scrub.value = scrub.max;
  timeline.fresh = false;
  showTimelineAt(Number(scrub.value));
}

function showTimelineAt(index) {
  const data = timeline.data;
  const entry = data && data.entries[index];
  const at = document.getElementById("timeline-at");
  if (!entry) { at.textContent = "No history entries stored."; return; }
  const times = data.entries.map((e) => e.t_ms || 0);
  const first = Math.min(...times), span = Math.max(Math.max(...times) - first, 1);
  const cursor = document.getElementById("timeline-cursor");
  const cx = (600 * ((entry.t_ms || 0) - first)) / span;
  cursor.setAttribute("x1", cx); cursor.setAttribute("x2", cx);
  at.textContent = `${index + 1}/${data.entries.length} · ${clock(entry.t_ms)} · stroke ${entry.stroke_idx + 1} pose ${entry.pose_idx + 1} · ${entry.description_l || "—"} | ${entry.description_r || "—"}`;
}

async function openTimeline(id) {
  timeline.id = id;
  const response = await fetch(`/api/sessions/${encodeURIComponent(id)}/timeline`);
  const body = await response.json();
  if (timeline.id !== id) return;
  if (!response.ok) {
    timeline.data = { session_id: id, progress: null, entries: [], events: [] };
    renderTimeline();
    document.getElementById("timeline-at").textContent = body.error || `HTTP ${response.status}`;
    return;
  }
  timeline.data = body;
  timeline.fresh = true;
  renderTimeline();
}

document.getElementById("sessions").addEventListener("click", (event) => {
  const card = event.target.closest("[data-session]");
  if (card) openTimeline(card.getAttribute("data-session"));
});
document.getElementById("timeline-scrub").addEventListener("input", (event) => showTimelineAt(Number(event.target.value)));
window.tatbot.timeline = timeline;

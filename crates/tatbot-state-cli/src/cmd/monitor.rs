//! `tatbot-state monitor`: a live terminal monitor built on the follow API and ratatui.
//!
//! The screen has five panels: a header (Redis state, nodes online, active and stale sessions,
//! time of the last update), stroke progress (one bar per session, executing, paused and stale
//! first, with the left and right descriptions and offsets and the age of the last update),
//! node health (state by heartbeat, CPU, memory, disk, GPU, clock skew), parameters (name,
//! value, version; re-read every [`PARAMS_INTERVAL`]) and recent events. It fits 80×24 and
//! uses more room when there is. Text too long for its place ends in `…`, never clipped
//! silently. Started before Redis is up, the header is a banner ("waiting for Redis at
//! HOST:PORT: why") until the first snapshot. While Redis is unreachable, sessions and nodes are grey: they are what was last
//! seen, not what is. The parameter re-read also announces stale sessions (`session_stale`,
//! once per session whoever notices first).
//!
//! State comes from a [`tatbot_state::Follower`]: a snapshot, then every change, so nothing
//! published while the monitor was away from Redis is lost. The screen is redrawn
//! `--refresh` times a second (changes between two frames are folded, not drawn one by one);
//! keys are read without blocking at each frame. `q`, Esc or Ctrl-C quits, as does SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use tatbot_state::follow::{FollowItem, LoggedEvent, NodeView, Scope};
use tatbot_state::model::{SessionState, StrokeProgress};
use tatbot_state::text::{joints, shown};
use tatbot_state::{Snapshot, Timestamp};

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::signal::shutdown_signal;

/// Most session lines the progress panel takes.
const MAX_SESSION_LINES: usize = 6;
/// Most node rows the health panel takes.
const MAX_NODE_ROWS: usize = 4;
/// Most robot rows the robot panel takes.
const MAX_ROBOT_ROWS: usize = 3;
/// Width of a progress bar in characters.
const BAR_WIDTH: usize = 16;
/// Widest description line of the progress panel: an 80-column screen less the borders.
const DESCRIPTION_WIDTH: usize = 78;
/// Most parameter rows the parameters panel takes.
const MAX_PARAM_ROWS: usize = 3;
/// How often the parameters are re-read (and stale sessions announced).
const PARAMS_INTERVAL: Duration = Duration::from_secs(2);

/// Flags of `monitor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Screen refreshes per second
    #[arg(long, default_value_t = 4.0, value_parser = parse_refresh)]
    pub refresh: f64,
}

fn parse_refresh(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.2..=60.0).contains(&rate) {
        return Err(format!(
            "the refresh rate must be between 0.2 and 60 per second (got {rate})"
        ));
    }
    Ok(rate)
}

/// Whether the monitor has Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisState {
    /// No snapshot yet.
    Connecting,
    /// Following.
    Connected,
    /// Lost; the follower keeps trying.
    Disconnected(String),
}

/// Everything the screen shows.
#[derive(Debug, Clone)]
pub struct Monitor {
    /// Where Redis is, as shown in the header.
    pub endpoint: String,
    /// The Redis connection.
    pub redis: RedisState,
    /// The folded view, once the first snapshot came.
    pub view: Option<Snapshot>,
    /// When the last item arrived.
    pub last_update: Option<Timestamp>,
    /// The parameters as last read: name, value as text, version; or why they could not be.
    pub params: Result<Vec<(String, String, u64)>, String>,
}

impl Monitor {
    /// Folds one follower item into the monitor.
    pub fn apply(&mut self, item: FollowItem) {
        self.last_update = Some(Timestamp::now());
        match item {
            FollowItem::Snapshot(snapshot) => {
                self.view = Some(*snapshot);
                self.redis = RedisState::Connected;
            }
            FollowItem::Change(change) => {
                if let Some(view) = self.view.as_mut() {
                    view.apply(&change);
                }
            }
            FollowItem::Resync { .. } => {}
            FollowItem::ConnectionLost { error } => self.redis = RedisState::Disconnected(error),
            FollowItem::Reconnected => self.redis = RedisState::Connected,
        }
    }
}

/// Runs `monitor`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    // Starts before Redis is up: the header shows the wait until the first snapshot.
    let (manager, _waiting) = global.manager_or_lazy().await?;
    let mut monitor = Monitor {
        endpoint: manager.current_master().to_string(),
        redis: RedisState::Connecting,
        view: None,
        last_update: None,
        params: Ok(Vec::new()),
    };
    let params = manager.params();
    let mut params_tick = tokio::time::interval(PARAMS_INTERVAL);
    params_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut follower = manager.follow(Scope::All, None);
    let mut terminal = ratatui::try_init().context("the monitor needs a terminal (stdout is not one)")?;
    let mut frames = tokio::time::interval(Duration::from_secs_f64(1.0 / args.refresh));
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            item = follower.next() => match item {
                Some(item) => monitor.apply(item),
                None => break Ok(()),
            },
            _ = params_tick.tick() => {
                monitor.params = read_params(&params).await;
                announce_stale(&manager, &monitor).await;
            }
            _ = frames.tick() => {
                match quit_requested() {
                    Ok(true) => break Ok(()),
                    Ok(false) => {}
                    Err(err) => break Err(err),
                }
                let now_ms = Timestamp::now().unix_millis();
                if let Err(err) = terminal.draw(|frame| draw(frame, &monitor, now_ms)) {
                    break Err(err).context("drawing the monitor");
                }
            }
        }
    };
    ratatui::restore();
    outcome.map(|()| exit::SUCCESS)
}

/// Every declared parameter as (name, value, version), or why they could not be read.
async fn read_params(params: &tatbot_state::Params) -> Result<Vec<(String, String, u64)>, String> {
    let entries = params
        .list_entries(&tatbot_state::params::Prefix::all())
        .await
        .map_err(|_| "cannot read the parameters".to_owned())?;
    Ok(entries
        .into_iter()
        .map(|entry| match entry.value {
            Ok(param) => (param.name.to_string(), param.value.to_string(), param.version),
            Err(_) => (entry.id, "corrupt".to_owned(), 0),
        })
        .collect())
}

/// Announces the stale sessions of the view; a viewer user may not, and another watcher will.
async fn announce_stale(manager: &tatbot_state::StateManager, monitor: &Monitor) {
    let Some(view) = &monitor.view else { return };
    let stale: Vec<(tatbot_state::SessionId, StrokeProgress)> = view
        .sessions
        .iter()
        .filter(|(_, progress)| progress.state() == SessionState::Stale)
        .filter_map(|(id, progress)| Some((tatbot_state::SessionId::new(id.as_str()).ok()?, progress.clone())))
        .collect();
    if let Err(err) = manager.announce_stale_sessions(&stale).await {
        tracing::debug!(error = %err, "cannot announce stale sessions");
    }
}

/// `text` cut to `width` characters, ending in `…` when it was longer.
fn ellipsized(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Reads the pending key presses without blocking; true on `q`, Esc or Ctrl-C.
fn quit_requested() -> anyhow::Result<bool> {
    while event::poll(Duration::ZERO).context("reading the keyboard")? {
        let TermEvent::Key(key) = event::read().context("reading the keyboard")? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Draws the whole screen; `now_ms` ages the heartbeats.
pub fn draw(frame: &mut Frame, monitor: &Monitor, now_ms: i64) {
    let empty = Snapshot {
        cursor: Default::default(),
        server_time_ms: now_ms,
        sessions: Default::default(),
        nodes: Default::default(),
        robots: Default::default(),
        recent_events: Vec::new(),
        recent_errors: Vec::new(),
        recent_events_limit: 0,
        recent_errors_limit: 0,
        corrupt: Vec::new(),
    };
    let view = monitor.view.as_ref().unwrap_or(&empty);
    let disconnected = matches!(monitor.redis, RedisState::Disconnected(_));
    let sessions = session_lines(view, now_ms, disconnected);
    let node_rows = view.nodes.len().clamp(1, MAX_NODE_ROWS);
    let param_rows = monitor
        .params
        .as_ref()
        .map_or(1, |params| params.len().clamp(1, MAX_PARAM_ROWS));
    let robot_rows = view.robots.len().clamp(1, MAX_ROBOT_ROWS);
    let [header, progress, nodes, robots, params, events] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(u16::try_from(sessions.len().clamp(1, MAX_SESSION_LINES)).unwrap_or(1) + 2),
        Constraint::Length(u16::try_from(node_rows).unwrap_or(1) + 3),
        Constraint::Length(u16::try_from(robot_rows).unwrap_or(1) + 3),
        Constraint::Length(u16::try_from(param_rows).unwrap_or(1) + 2),
        Constraint::Min(3),
    ])
    .areas(frame.area());
    draw_header(frame, header, monitor, view, now_ms);
    frame.render_widget(
        Paragraph::new(sessions).block(Block::default().borders(Borders::ALL).title(" Stroke progress ")),
        progress,
    );
    draw_nodes(frame, nodes, view, now_ms, disconnected);
    draw_robots(frame, robots, view, now_ms);
    draw_params(frame, params, monitor);
    draw_events(frame, events, view);
}

fn draw_header(frame: &mut Frame, area: Rect, monitor: &Monitor, view: &Snapshot, now_ms: i64) {
    if let (RedisState::Disconnected(reason), None) = (&monitor.redis, &monitor.view) {
        // Never connected yet: a banner that says what the monitor waits for.
        let banner = Line::from(Span::styled(
            ellipsized(
                &format!("waiting for Redis at {}: {reason}; retrying", monitor.endpoint),
                usize::from(area.width.saturating_sub(2)),
            ),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
        let block = Block::default()
            .borders(Borders::ALL)
            .title(format!(" tatbot-state monitor · {} ", monitor.endpoint))
            .title_bottom(Line::from(" q quits ").right_aligned());
        frame.render_widget(Paragraph::new(banner).block(block), area);
        return;
    }
    let (redis, color) = match &monitor.redis {
        RedisState::Connecting => ("connecting".to_owned(), Color::Blue),
        RedisState::Connected => ("connected".to_owned(), Color::Green),
        RedisState::Disconnected(_) => ("DISCONNECTED".to_owned(), Color::Red),
    };
    let online = view.nodes.values().filter(|node| node.health.is_some()).count();
    let now = Timestamp::from_unix_millis(now_ms);
    let active = view
        .sessions
        .values()
        .filter(|progress| progress.state_at(now) == SessionState::Executing)
        .count();
    let stale = view
        .sessions
        .values()
        .filter(|progress| progress.state_at(now) == SessionState::Stale)
        .count();
    let updated = monitor.last_update.map_or_else(
        || "never".to_owned(),
        |at| at.as_datetime().format("%H:%M:%S").to_string(),
    );
    let sessions = if active == 1 { "session" } else { "sessions" };
    let mut spans = vec![
        Span::raw("Redis "),
        Span::styled(redis, Style::default().fg(color).add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            " · nodes {online}/{} online · {active} active",
            view.nodes.len()
        )),
    ];
    // Stale sessions are counted apart; the line stays within 80 columns with them.
    if stale > 0 {
        spans.push(Span::raw(" · "));
        spans.push(Span::styled(
            format!("{stale} stale"),
            Style::default().fg(Color::Magenta).add_modifier(Modifier::BOLD),
        ));
    } else {
        spans.push(Span::raw(format!(" {sessions}")));
    }
    spans.push(Span::raw(format!(" · updated {updated}")));
    if !view.corrupt.is_empty() {
        // Bad data is the data's problem, not Redis's: shown beside the Redis state, not as it.
        spans.push(Span::styled(
            format!(" · {} corrupt", view.corrupt.len()),
            Style::default().fg(Color::Yellow),
        ));
    }
    let line = Line::from(spans);
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" tatbot-state monitor · {} ", monitor.endpoint))
        .title_bottom(Line::from(" q quits ").right_aligned());
    frame.render_widget(Paragraph::new(line).block(block), area);
}

/// Progress lines: executing, paused and stale sessions first (bar, then descriptions), then
/// ended ones; each with the age of its last update at `now_ms`. While `disconnected`, every
/// line is grey: it shows what was last seen, not what is.
fn session_lines(view: &Snapshot, now_ms: i64, disconnected: bool) -> Vec<Line<'static>> {
    let now = Timestamp::from_unix_millis(now_ms);
    let mut sessions: Vec<(&String, &StrokeProgress)> = view.sessions.iter().collect();
    sessions.sort_by(|(_, a), (_, b)| b.is_executing.cmp(&a.is_executing).then(b.timestamp.cmp(&a.timestamp)));
    let mut lines = Vec::new();
    for (session_id, progress) in sessions {
        let state = progress.state_at(now);
        let color = match state {
            _ if disconnected => Color::DarkGray,
            SessionState::Executing => Color::Green,
            SessionState::Paused => Color::Yellow,
            SessionState::Stale => Color::Magenta,
            SessionState::Ended | SessionState::Aborted => Color::DarkGray,
        };
        let age = format!(" {}s ago", progress.age_secs_at(now));
        let state = state.as_str();
        let fraction = progress.fraction();
        // The fraction is clamped to 0..=1, so the product fits the bar.
        let filled = (fraction * BAR_WIDTH as f64).round() as usize;
        lines.push(Line::from(vec![
            Span::styled(
                format!("{:<22} ", ellipsized(session_id, 22)),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::styled("█".repeat(filled), Style::default().fg(color)),
            Span::styled(
                "░".repeat(BAR_WIDTH - filled.min(BAR_WIDTH)),
                Style::default().fg(Color::DarkGray),
            ),
            Span::raw(format!(
                " {:>3.0}% stroke {}/{} pose {}/{} ",
                fraction * 100.0,
                (progress.stroke_idx + 1).min(progress.total_strokes),
                progress.total_strokes,
                progress.pose_idx + 1,
                progress.stroke_length
            )),
            Span::styled(state, Style::default().fg(color)),
            Span::styled(age, Style::default().fg(Color::DarkGray)),
        ]));
        if progress.is_executing {
            lines.push(Line::styled(
                ellipsized(
                    &format!(
                        "  L {} (offset {}) · R {} (offset {})",
                        or_dash(&progress.stroke_description_l),
                        progress.offset_idx_l,
                        or_dash(&progress.stroke_description_r),
                        progress.offset_idx_r
                    ),
                    DESCRIPTION_WIDTH,
                ),
                Style::default().fg(Color::Gray),
            ));
        }
    }
    if lines.is_empty() {
        lines.push(Line::styled("no sessions", Style::default().fg(Color::DarkGray)));
    }
    lines
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "—" } else { text }
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |value| format!("{value:.0}%"))
}

/// Node rows; while `disconnected` they are grey and say `last seen`: what was last known.
fn draw_nodes(frame: &mut Frame, area: Rect, view: &Snapshot, now_ms: i64, disconnected: bool) {
    let rows: Vec<Row> = view
        .nodes
        .values()
        .map(|node: &NodeView| {
            let (state, color) = match &node.health {
                _ if disconnected => ("unknown", Color::DarkGray),
                Some(_) => ("online", Color::Green),
                None => ("offline", Color::Red),
            };
            let seen_ms = node
                .health
                .as_ref()
                .map(|health| health.last_heartbeat.unix_millis())
                .or(node.last_seen_ms);
            let age = seen_ms.map_or_else(
                || "never".to_owned(),
                |seen| format!("{}s", (now_ms - seen).max(0) / 1000),
            );
            let health = node.health.as_ref();
            let gpu = match health {
                Some(health) if health.gpu_available => percent(health.gpu_percent),
                Some(_) => "none".to_owned(),
                None => "—".to_owned(),
            };
            let skew = node
                .clock_skew_ms
                .map_or_else(|| "—".to_owned(), |skew| format!("{:.2}s", skew as f64 / 1000.0));
            let row_style = if disconnected {
                Style::default().fg(Color::DarkGray)
            } else {
                Style::default()
            };
            Row::new(vec![
                Cell::from(node.node_id.clone()),
                Cell::from(state).style(Style::default().fg(color)),
                Cell::from(age),
                Cell::from(percent(health.map(|health| health.cpu_percent))),
                Cell::from(percent(health.map(|health| health.memory_percent))),
                Cell::from(percent(health.map(|health| health.disk_percent))),
                Cell::from(gpu),
                Cell::from(skew),
            ])
            .style(row_style)
        })
        .collect();
    let widths = [
        Constraint::Min(10),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(7),
    ];
    let header = Row::new(["node", "state", "beat", "cpu", "mem", "disk", "gpu", "skew"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(" Node health "));
    frame.render_widget(table, area);
}

/// The parameters panel: `name = value (vN)`, each cut with an ellipsis to the panel's width.
fn draw_params(frame: &mut Frame, area: Rect, monitor: &Monitor) {
    let width = usize::from(area.width.saturating_sub(2));
    let lines: Vec<Line> = match &monitor.params {
        Err(why) => vec![Line::styled(why.clone(), Style::default().fg(Color::Yellow))],
        Ok(params) if params.is_empty() => vec![Line::styled("no parameters", Style::default().fg(Color::DarkGray))],
        Ok(params) => {
            let mut lines: Vec<Line> = params
                .iter()
                .take(MAX_PARAM_ROWS)
                .map(|(name, value, version)| Line::raw(ellipsized(&format!("{name} = {value} (v{version})"), width)))
                .collect();
            if params.len() > MAX_PARAM_ROWS
                && let Some(last) = lines.last_mut()
            {
                *last = Line::styled(
                    format!(
                        "… and {} more (tatbot-state param list)",
                        params.len() - MAX_PARAM_ROWS + 1
                    ),
                    Style::default().fg(Color::DarkGray),
                );
            }
            lines
        }
    };
    let block = Block::default().borders(Borders::ALL).title(" Parameters ");
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// One row per robot state: arms, pose, age of the snapshot and the left and right joints.
fn draw_robots(frame: &mut Frame, area: Rect, view: &Snapshot, now_ms: i64) {
    let arm = |is_connected: bool| match is_connected {
        true => Cell::from("up").style(Style::default().fg(Color::Green)),
        false => Cell::from("down").style(Style::default().fg(Color::Red)),
    };
    let rows: Vec<Row> = view
        .robots
        .iter()
        .map(|(node_id, robot)| {
            let age = (now_ms - robot.timestamp.unix_millis()).max(0) / 1000;
            Row::new(vec![
                Cell::from(shown(node_id).into_owned()),
                arm(robot.is_connected_l),
                arm(robot.is_connected_r),
                Cell::from(shown(&robot.current_pose).into_owned()),
                Cell::from(format!("{age}s")),
                Cell::from(format!(
                    "{} {}",
                    joints(robot.joints_l.as_deref()),
                    joints(robot.joints_r.as_deref())
                )),
            ])
        })
        .collect();
    let rows = if rows.is_empty() {
        vec![Row::new(vec![
            Cell::from("none").style(Style::default().fg(Color::DarkGray)),
        ])]
    } else {
        rows
    };
    let widths = [
        Constraint::Min(10),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(12),
        Constraint::Length(6),
        Constraint::Fill(3),
    ];
    let header = Row::new(["robot", "left", "right", "pose", "age", "joints L R"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(" Robots "));
    frame.render_widget(table, area);
}

fn describe(event: &LoggedEvent) -> String {
    let when = event
        .payload
        .get("timestamp")
        .and_then(|value| value.as_str())
        .and_then(|text| Timestamp::parse(text).ok())
        .map_or_else(
            || "--:--:--".to_owned(),
            |at| at.as_datetime().format("%H:%M:%S").to_string(),
        );
    let kind = event.event_type.as_deref().unwrap_or(&event.channel);
    let mut text = format!("{when} {kind}");
    for detail in [
        event.session_id.as_deref(),
        event.payload.get("message").and_then(|value| value.as_str()),
        event.payload.get("current_pose").and_then(|value| value.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        text.push(' ');
        text.push_str(detail);
    }
    text
}

fn draw_events(frame: &mut Frame, area: Rect, view: &Snapshot) {
    let width = usize::from(area.width.saturating_sub(2));
    let lines: Vec<Line> = view
        .recent_events
        .iter()
        .rev()
        .map(|event| {
            let style = if event.event_type.as_deref() == Some("error") {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            Line::styled(ellipsized(&describe(event), width), style)
        })
        .collect();
    let lines = if lines.is_empty() {
        vec![Line::styled("no events yet", Style::default().fg(Color::DarkGray))]
    } else {
        lines
    };
    let block = Block::default().borders(Borders::ALL).title(" Recent events ");
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;
    use tatbot_state::follow::{Change, ChangeKind};
    use tatbot_state::model::NodeHealth;

    use super::*;

    fn known_state() -> Snapshot {
        let progress = |stroke: i64, pose: i64, executing: bool, paused: bool| -> StrokeProgress {
            serde_json::from_value(json!({
                "timestamp": "2026-11-25T17:15:37", "node_id": "hog", "stroke_idx": stroke, "pose_idx": pose,
                "total_strokes": 4, "stroke_length": 5, "stroke_description_l": "left arc",
                "stroke_description_r": "right dot", "offset_idx_l": 2, "offset_idx_r": 3,
                "is_executing": executing, "is_paused": paused,
            }))
            .unwrap()
        };
        let mut health = NodeHealth::new("eek");
        health.cpu_percent = 42.0;
        health.memory_percent = 55.0;
        health.disk_percent = 61.0;
        health.last_heartbeat = Timestamp::parse("2026-11-25T17:15:30").unwrap();
        let nodes = BTreeMap::from([
            (
                "eek".to_owned(),
                NodeView {
                    node_id: "eek".into(),
                    health: Some(health),
                    last_seen_ms: None,
                    clock_skew_ms: Some(-120),
                },
            ),
            (
                "ook".to_owned(),
                NodeView {
                    node_id: "ook".into(),
                    health: None,
                    last_seen_ms: None,
                    clock_skew_ms: None,
                },
            ),
        ]);
        let mut robot = tatbot_state::model::RobotState::new("eek");
        robot.timestamp = Timestamp::parse("2026-11-25T17:15:38").unwrap();
        robot.is_connected_l = true;
        robot.current_pose = "ready".into();
        robot.joints_l = Some(vec![0.1, -1.5]);
        let robots = BTreeMap::from([("eek".to_owned(), robot)]);
        let event = LoggedEvent {
            id: "1-0".into(),
            channel: "error:events:hardware".into(),
            event_type: Some("error".into()),
            session_id: None,
            payload: json!({"type": "error", "message": "arm l timeout", "timestamp": "2026-11-25T17:15:36"}),
        };
        Snapshot {
            cursor: Default::default(),
            server_time_ms: 0,
            sessions: BTreeMap::from([
                ("stroke_hog_1795626937".to_owned(), progress(2, 1, true, false)),
                ("stroke_hog_1795620000".to_owned(), progress(3, 4, false, false)),
            ]),
            nodes,
            robots,
            recent_events: vec![event],
            recent_errors: Vec::new(),
            recent_events_limit: 50,
            recent_errors_limit: 20,
            corrupt: Vec::new(),
        }
    }

    fn screen(monitor: &Monitor, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        let now_ms = Timestamp::parse("2026-11-25T17:15:40").unwrap().unix_millis();
        terminal.draw(|frame| draw(frame, monitor, now_ms)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    fn monitor(view: Option<Snapshot>, redis: RedisState) -> Monitor {
        Monitor {
            endpoint: "127.0.0.1:6379".into(),
            redis,
            view,
            last_update: None,
            params: Ok(vec![("needle.depth_mm".into(), "1.5".into(), 3)]),
        }
    }

    /// A known state renders every panel legibly in 80×24.
    #[test]
    fn renders_known_state_in_80x24() {
        let lines = screen(&monitor(Some(known_state()), RedisState::Connected), 80, 24);
        let text = lines.join("\n");
        let expect = [
            "tatbot-state monitor · 127.0.0.1:6379",
            "Redis connected · nodes 1/2 online · 1 active session · updated never",
            "stroke_hog_1795626937",
            "60% stroke 3/4 pose 2/5 executing",
            "L left arc (offset 2) · R right dot (offset 3)",
            "100% stroke 4/4 pose 5/5 ended",
            "eek",
            "online  10s",
            "42%",
            "-0.12s",
            "ook",
            "offline",
            "17:15:36 error arm l timeout",
            "Robots",
            "eek         up    down  ready        2s     [0.10, -1.50] -",
            "q quits",
        ];
        for needle in expect {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert!(lines.iter().all(|line| line.chars().count() == 80));
    }

    /// A lost connection shows in the header, and changes fold into the view.
    #[test]
    fn shows_disconnect_and_folds_changes() {
        let mut monitor = monitor(Some(known_state()), RedisState::Connected);
        monitor.apply(FollowItem::ConnectionLost {
            error: "connection refused".into(),
        });
        let mut progress = known_state().sessions["stroke_hog_1795626937"].clone();
        progress.is_paused = true;
        monitor.apply(FollowItem::Change(Change {
            cursor: Default::default(),
            kind: ChangeKind::Session {
                session_id: tatbot_state::SessionId::new("stroke_hog_1795626937").unwrap(),
                progress: Box::new(progress),
            },
        }));
        let mut robot = known_state().robots["eek"].clone();
        robot.current_pose = "drawing".into();
        monitor.apply(FollowItem::Change(Change {
            cursor: Default::default(),
            kind: ChangeKind::Robot {
                node_id: "eek".into(),
                state: Some(Box::new(robot)),
            },
        }));
        let text = screen(&monitor, 80, 24).join("\n");
        assert!(text.contains("Redis DISCONNECTED"), "{text}");
        assert!(text.contains("pose 2/5 paused"), "{text}");
        assert!(text.contains("drawing"), "{text}");
    }

    /// Issue #13 point 2: a session whose owner went silent past its lease shows `stale`, never
    /// `executing`, with the age of its last update, and the header counts it apart.
    #[test]
    fn dead_owner_session_shows_stale() {
        let mut view = known_state();
        let progress = view.sessions.get_mut("stroke_hog_1795626937").unwrap();
        progress.timestamp = Timestamp::parse("2026-11-25T17:15:00").unwrap();
        let text = screen(&monitor(Some(view), RedisState::Connected), 80, 24).join("\n");
        assert!(text.contains("pose 2/5 stale 40s ago"), "{text}");
        assert!(text.contains("0 active · 1 stale · updated never"), "{text}");
    }

    /// Disconnected: nodes and sessions are grey, nodes say their state is unknown.
    #[test]
    fn disconnected_marks_everything_grey() {
        let monitor = monitor(
            Some(known_state()),
            RedisState::Disconnected("connection refused".into()),
        );
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let now_ms = Timestamp::parse("2026-11-25T17:15:40").unwrap().unix_millis();
        terminal.draw(|frame| draw(frame, &monitor, now_ms)).unwrap();
        let buffer = terminal.backend().buffer();
        let lines: Vec<String> = (0..24)
            .map(|y| (0..80).map(|x| buffer[(x, y)].symbol()).collect::<String>())
            .collect();
        let text = lines.join("\n");
        assert!(text.contains("unknown") && !text.contains("online  10s"), "{text}");
        let row = lines.iter().position(|line| line.contains("executing")).unwrap();
        let column = lines[row].find("executing").unwrap();
        let column = u16::try_from(lines[row][..column].chars().count()).unwrap();
        let cell = &buffer[(column, u16::try_from(row).unwrap())];
        assert_eq!(cell.fg, Color::DarkGray, "the session is grey while disconnected");
    }

    /// Issue #13 point 5: the parameters panel shows each parameter, and text longer than its
    /// place ends in an ellipsis instead of being clipped.
    #[test]
    fn parameters_panel_and_ellipses() {
        let mut view = known_state();
        let progress = view.sessions.get_mut("stroke_hog_1795626937").unwrap();
        progress.stroke_description_l = "a very long left stroke description ".repeat(4);
        let mut monitor = monitor(Some(view), RedisState::Connected);
        monitor.params = Ok(vec![("needle.depth_mm".into(), "x".repeat(200), 3)]);
        let text = screen(&monitor, 80, 24).join("\n");
        assert!(
            text.contains("Parameters") && text.contains("needle.depth_mm = xxx"),
            "{text}"
        );
        assert!(text.contains("xxx…│"), "the long value ends in an ellipsis:\n{text}");
        let short = screen(&monitor, 80, 24)
            .into_iter()
            .find(|line| line.contains("L a very long"))
            .unwrap();
        assert!(short.trim_end_matches('│').trim_end().ends_with('…'), "{short}");
    }

    /// Before the first snapshot the screen says so instead of showing stale panels.
    #[test]
    fn renders_before_first_snapshot() {
        let text = screen(&monitor(None, RedisState::Connecting), 80, 24).join("\n");
        assert!(text.contains("Redis connecting"), "{text}");
        assert!(text.contains("no sessions") && text.contains("no events yet"), "{text}");
        assert!(text.contains("│none "), "{text}");
    }
}

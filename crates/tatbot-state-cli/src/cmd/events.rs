//! `tatbot-state events [PATTERN...]`: print pub/sub events as they arrive.
//!
//! Subscribes with `PSUBSCRIBE` (by default to [`DEFAULT_EVENT_PATTERNS`], what an operator
//! watches with `redis-cli psubscribe`) and prints one line per message: a short summary, or with
//! `--json` one object per line holding the channel, the matching pattern, the decoded event, the
//! raw payload and the decode error. A message that does not decode (another client's typo) is
//! printed with its error and never stops the stream. Once subscribed, a line goes to stderr, so
//! a script can wait for it before publishing.
//!
//! Exits 0 after `--count` events or on Ctrl-C/SIGTERM, and 3 when the connection drops.

use std::io::Write as _;

use anyhow::Context as _;
use serde_json::{Value, json};
use tatbot_state::Message;
use tatbot_state::keys::DEFAULT_EVENT_PATTERNS;
use tatbot_state::model::Event;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::signal::shutdown_signal;

/// Flags of `events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Channel patterns to subscribe to [default: stroke:events:* robot:events error:events:*]
    pub patterns: Vec<String>,
    /// Exit after N events
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
}

/// Runs `events`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let patterns: Vec<&str> = if args.patterns.is_empty() {
        DEFAULT_EVENT_PATTERNS.to_vec()
    } else {
        args.patterns.iter().map(String::as_str).collect()
    };
    let manager = global.manager_waiting().await?;
    let mut subscription = manager.subscribe(&patterns).await.context("subscribing to events")?;
    // Stderr is diagnostics only; if it is closed there is no one to tell.
    let _ = writeln!(std::io::stderr(), "subscribed to {}", patterns.join(", "));
    if args.count == Some(0) {
        return Ok(exit::SUCCESS);
    }

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut received: u64 = 0;
    loop {
        let message = tokio::select! {
            () = &mut shutdown => return Ok(exit::SUCCESS),
            message = subscription.next() => message,
        };
        let Some(message) = message else {
            return Err(anyhow::Error::new(tatbot_state::Error::SubscriptionClosed)
                .context("receiving events (check the server with `tatbot-state doctor`)"));
        };
        let line = if global.json {
            json_line(&message)
        } else {
            text_line(&message)
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        received += 1;
        if args.count.is_some_and(|count| received >= count) {
            return Ok(exit::SUCCESS);
        }
    }
}

/// `{"channel", "pattern", "event", "payload", "error"}` on one line.
fn json_line(message: &Message) -> String {
    let (event, error) = match &message.event {
        Ok(event) => (event.to_value(), Value::Null),
        Err(err) => (Value::Null, Value::String(format!("{err:#}"))),
    };
    json!({
        "channel": message.channel,
        "pattern": message.pattern,
        "event": event,
        "payload": message.payload,
        "error": error,
    })
    .to_string()
}

/// `channel type key=value...`, or the channel, the error and the raw payload.
fn text_line(message: &Message) -> String {
    let event = match &message.event {
        Ok(event) => event,
        Err(err) => return format!("{} malformed: {err:#}; payload {:?}", message.channel, message.payload),
    };
    let summary = match event {
        Event::StateUpdate(update) => format!(
            "state_update node={} pose={} connected_l={} connected_r={}",
            update.node_id, update.current_pose, update.is_connected_l, update.is_connected_r
        ),
        Event::SessionStart(start) => format!(
            "session_start session={} node={} strokes={} scene={}",
            start.session_id, start.node_id, start.total_strokes, start.scene_name
        ),
        Event::SessionEnd(end) | Event::SessionPause(end) | Event::SessionResume(end) => format!(
            "{} session={} node={}",
            event.event_type().unwrap_or("session"),
            end.session_id,
            end.node_id
        ),
        Event::ProgressUpdate(update) => format!(
            "progress_update session={} node={} stroke={}/{} pose={}/{} left={:?} right={:?}",
            update.session_id,
            update.node_id,
            update.stroke_idx + 1,
            update.total_strokes,
            update.pose_idx + 1,
            update.stroke_length,
            update.description_l,
            update.description_r
        ),
        Event::Error(error) => format!(
            "error category={} node={} message={:?} details={}",
            error.category, error.node_id, error.message, error.details
        ),
        // Unknown types (and any future variant) are shown as they came.
        _ => format!("{} {}", event.event_type().unwrap_or("(no type)"), message.payload),
    };
    format!("{} {summary}", message.channel)
}

//! `tatbot-state events [PATTERN...]`: print pub/sub events as they arrive.
//!
//! Subscribes with `PSUBSCRIBE` (by default to [`DEFAULT_EVENT_PATTERNS`], what an operator
//! watches with `redis-cli psubscribe`) and prints one line per message: the time it arrived
//! (`HH:MM:SS.mmm`, UTC) and a short summary with 1-based stroke and pose positions, or with
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
use tatbot_state::text::{position, shown};

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
            return Err(anyhow::Error::new(tatbot_state::Error::SubscriptionClosed).context("receiving events"));
        };
        let line = if global.json {
            json_line(&message)
        } else {
            // Every field may hold control characters from any publisher on the LAN.
            format!(
                "{} {}",
                tatbot_state::Timestamp::now().as_datetime().format("%H:%M:%S%.3f"),
                text_line(&message)
            )
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

/// `channel type key=value...`, or the channel, the error and the raw payload; every value
/// goes through [`shown`], so control characters are escaped and long values cut.
fn text_line(message: &Message) -> String {
    let event = match &message.event {
        Ok(event) => event,
        Err(err) => {
            return format!(
                "{} malformed: {}; payload {}",
                shown(&message.channel),
                shown(&format!("{err:#}")),
                shown(&format!("{:?}", message.payload))
            );
        }
    };
    let summary = match event {
        Event::StateUpdate(update) => format!(
            "state_update node={} pose={} connected_l={} connected_r={}",
            shown(&update.node_id),
            shown(&update.current_pose),
            update.is_connected_l,
            update.is_connected_r
        ),
        Event::SessionStart(start) => format!(
            "session_start session={} node={} strokes={} scene={}",
            shown(&start.session_id),
            shown(&start.node_id),
            start.total_strokes,
            shown(&start.scene_name)
        ),
        Event::SessionEnd(end) | Event::SessionPause(end) | Event::SessionResume(end) => format!(
            "{} session={} node={}",
            event.event_type().unwrap_or("session"),
            shown(&end.session_id),
            shown(&end.node_id)
        ),
        Event::ProgressUpdate(update) => format!(
            "progress_update session={} node={} stroke={} pose={} left={} right={}",
            shown(&update.session_id),
            shown(&update.node_id),
            position(update.stroke_idx, update.total_strokes),
            position(update.pose_idx, update.stroke_length),
            shown(&format!("{:?}", update.description_l)),
            shown(&format!("{:?}", update.description_r))
        ),
        Event::Error(error) => format!(
            "error category={} node={} message={} details={}",
            shown(&error.category),
            shown(&error.node_id),
            shown(&format!("{:?}", error.message)),
            shown(&error.details.to_string())
        ),
        // Unknown types (and any future variant) are shown as they came, escaped.
        _ => format!(
            "{} {}",
            shown(event.event_type().unwrap_or("(no type)")),
            shown(&message.payload)
        ),
    };
    format!("{} {summary}", shown(&message.channel))
}

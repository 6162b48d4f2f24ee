//! `tatbot-state history SESSION`: a session's history stream, oldest first.
//!
//! Pages through `stream:stroke_history:{session_id}` with
//! [`tatbot_state::StateManager::history_entries`], one page per round trip, each page starting
//! after the last id printed. An entry that does not decode (a missing field, a non-integer
//! index, a field over the 1 MiB bound) is printed in its place as `ID  corrupt: ...` (with
//! `--json`, `{"id", "error"}`) and the rest of the history still prints; text goes through
//! `shown`, so stored control characters are escaped. `--follow` then keeps polling after that id every
//! [`FOLLOW_INTERVAL`] and prints new entries until Ctrl-C/SIGTERM or `--count`. Polling was
//! chosen over `XREAD BLOCK` because the library reads history only by range, and a fifth of a
//! second is well below what a person watching notices. A session with neither a progress hash
//! nor history entries does not exist (exit 5).
//!
//! Each text line starts with the time the entry was stored (from its stream id, `HH:MM:SS.mmm`
//! UTC) and numbers strokes and poses from 1, as every text view does; `--json` keeps the stored
//! 0-based indices, because that is the raw log a script replays.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use tatbot_state::model::HistoryEntry;
use tatbot_state::{Entry, HistoryCursor, SessionId, StateManager};

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::output::shown;
use crate::signal::shutdown_signal;

/// Entries fetched per round trip.
const PAGE: usize = 1000;
/// Time between polls with `--follow`.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Flags of `history`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The session id
    pub session: String,
    /// Keep printing new entries until Ctrl-C
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Stop after N entries
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
}

/// Runs `history`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let session_id = SessionId::new(args.session)?;
    let manager = if args.follow {
        global.manager_waiting().await?
    } else {
        global.manager().await?
    };
    let mut printer = Printer {
        json_output: global.json,
        printed: 0,
        count: args.count,
        last_id: HistoryCursor::Start,
    };

    let first = fetch(&manager, &session_id, &HistoryCursor::Start).await?;
    if first.is_empty() {
        let progress = manager
            .get_stroke_progress(&session_id)
            .await
            .with_context(|| format!("reading the progress of {session_id}"))?;
        if progress.is_none() {
            return Err(tatbot_state::Error::SessionNotFound(session_id.to_string()).into());
        }
    }
    let mut page = first;
    loop {
        // A page that ends in an error may be one whose read stopped at the size bound of a
        // log another client filled (its last entry says so): the rest is read on.
        let full = page.len() == PAGE || page.last().is_some_and(|entry| entry.value.is_err());
        if printer.print(&page)? {
            return Ok(exit::SUCCESS);
        }
        if !full {
            break;
        }
        page = fetch(&manager, &session_id, &printer.last_id).await?;
    }
    if !args.follow {
        return Ok(exit::SUCCESS);
    }

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut poll = tokio::time::interval(FOLLOW_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(exit::SUCCESS),
            _ = poll.tick() => {}
        }
        let page = fetch(&manager, &session_id, &printer.last_id).await?;
        if printer.print(&page)? {
            return Ok(exit::SUCCESS);
        }
    }
}

async fn fetch(
    manager: &StateManager,
    session_id: &SessionId,
    after: &HistoryCursor,
) -> anyhow::Result<Vec<Entry<HistoryEntry>>> {
    manager
        .history_entries(session_id, after, PAGE)
        .await
        .with_context(|| format!("reading the history of {session_id}"))
}

/// Prints entries and remembers where it is.
struct Printer {
    json_output: bool,
    printed: u64,
    count: Option<u64>,
    /// Just after the last entry printed: where the next page starts.
    last_id: HistoryCursor,
}

impl Printer {
    /// Prints `entries` up to the count; returns true once the count is reached.
    fn print(&mut self, entries: &[Entry<HistoryEntry>]) -> anyhow::Result<bool> {
        let mut out = std::io::stdout().lock();
        for entry in entries {
            if self.count.is_some_and(|count| self.printed >= count) {
                break;
            }
            match (&entry.value, self.json_output) {
                (Ok(decoded), true) => writeln!(out, "{}", serde_json::to_string(decoded)?)?,
                (Err(err), true) => writeln!(out, "{}", serde_json::json!({"id": entry.id, "error": err.to_string()}))?,
                (Ok(decoded), false) => writeln!(
                    out,
                    "{} {}  stroke {} pose {}  {}  L: {}  R: {}",
                    entry_time(&entry.id),
                    decoded.id,
                    decoded.stroke_idx.saturating_add(1),
                    decoded.pose_idx.saturating_add(1),
                    shown(&decoded.node_id),
                    shown(&decoded.description_l),
                    shown(&decoded.description_r)
                )?,
                (Err(err), false) => writeln!(
                    out,
                    "{} {}  corrupt: {}",
                    entry_time(&entry.id),
                    entry.id,
                    shown(&err.report().to_string())
                )?,
            }
            self.printed += 1;
            self.last_id = HistoryCursor::After(entry.id.parse()?);
        }
        out.flush()?;
        Ok(self.count.is_some_and(|count| self.printed >= count))
    }
}

/// When a stream entry was stored, from its id (`<ms>-<seq>`), as `HH:MM:SS.mmm` UTC.
fn entry_time(id: &str) -> String {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse::<i64>().ok())
        .map_or_else(
            || "--:--:--.---".to_owned(),
            |ms| {
                tatbot_state::Timestamp::from_unix_millis(ms)
                    .as_datetime()
                    .format("%H:%M:%S%.3f")
                    .to_string()
            },
        )
}

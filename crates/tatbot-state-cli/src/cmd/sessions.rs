//! `tatbot-state sessions`: active and recent stroke sessions, newest first; `sessions end ID`
//! and `sessions abort ID --reason TEXT` close one.
//!
//! Sessions are every `stroke:progress:*` hash (ours and the Python nodes'); ended sessions stay
//! listed until their retention expires. A session whose owner's lease lapsed (its robot died)
//! is listed `stale`, never `executing`, and the listing announces it once with
//! `session_stale` when the user may write. Ending and aborting are operator actions on
//! any node's session: a viewer user is refused with a message naming the roles that may. Text shows 1-based positions (`3/3` is the last stroke
//! of three); JSON carries the stored 0-based document. A progress value that does not decode is
//! listed after the others with its error.

use std::io::Write as _;

use anyhow::Context as _;
use serde_json::json;
use tatbot_state::model::{SessionState, StrokeProgress};
use tatbot_state::{SessionId, StateManager};

use tatbot_state::text::position;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::output::{age_secs, format_age, table};

/// How many sessions are listed without `--limit` or `--all`.
const DEFAULT_LIMIT: usize = 20;

/// Flags of `sessions`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Close a session instead of listing.
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Only sessions that are executing or paused
    #[arg(long)]
    pub active: bool,
    /// List at most N sessions (newest first)
    #[arg(short = 'n', long, value_name = "N", default_value_t = DEFAULT_LIMIT, conflicts_with = "all")]
    pub limit: usize,
    /// List every stored session
    #[arg(long)]
    pub all: bool,
}

/// Closing a session (admin operations).
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// End a session (for example a stale one whose robot died): publishes `session_end`
    #[command(after_help = "Examples:\n  tatbot-state sessions end stroke_ook_1764990000")]
    End {
        /// The session id, as `tatbot-state sessions` lists it
        session_id: String,
    },
    /// Abort a session with a reason: publishes `session_abort`
    #[command(after_help = "Examples:\n  tatbot-state sessions abort stroke_ook_1764990000 --reason \"robot crashed\"")]
    Abort {
        /// The session id, as `tatbot-state sessions` lists it
        session_id: String,
        /// Why, for the people who read the event log
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

/// A session's run state as shown: `executing`, `paused`, `stale`, `ended` or `aborted`.
pub fn run_state(progress: &StrokeProgress) -> &'static str {
    progress.state().as_str()
}

/// Runs `sessions`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let manager = global.manager().await?;
    if let Some(action) = args.action {
        return close(&manager, action).await;
    }
    let entries = manager.list_sessions().await.context("listing stroke sessions")?;
    let (mut sessions, corrupt): (Vec<_>, Vec<_>) = entries.into_iter().partition(|entry| entry.value.is_ok());
    // Newest first by the progress document's own timestamp, which every write refreshes.
    sessions.sort_by_key(|entry| std::cmp::Reverse(entry.value.as_ref().ok().map(|progress| progress.timestamp)));
    let stale: Vec<(SessionId, StrokeProgress)> = sessions
        .iter()
        .filter_map(|entry| {
            let progress = entry
                .value
                .as_ref()
                .ok()
                .filter(|progress| progress.state() == SessionState::Stale)?;
            Some((SessionId::new(entry.id.as_str()).ok()?, progress.clone()))
        })
        .collect();
    // Whoever looks first announces a stale session; a viewer may not, and need not.
    if let Err(err) = manager.announce_stale_sessions(&stale).await {
        tracing::debug!(error = %err, "cannot announce stale sessions");
    }
    if args.active {
        // Stale sessions stay listed: they claim to run and need an operator.
        sessions.retain(|entry| entry.value.as_ref().is_ok_and(|progress| progress.is_executing));
    }
    if !args.all {
        sessions.truncate(args.limit);
    }

    let mut out = std::io::stdout().lock();
    if global.json {
        let mut listed = Vec::with_capacity(sessions.len() + corrupt.len());
        for entry in sessions.iter().chain(&corrupt) {
            listed.push(match &entry.value {
                Ok(progress) => json!({
                    "session_id": entry.id,
                    "state": run_state(progress),
                    "age_secs": age_secs(progress.timestamp),
                    "owner": progress.owner(),
                    "lease_secs": progress.lease().as_secs(),
                    "progress": progress,
                    "error": null,
                }),
                Err(err) => json!({
                    "session_id": entry.id,
                    "state": null,
                    "age_secs": null,
                    "owner": null,
                    "lease_secs": null,
                    "progress": null,
                    "error": format!("{err:#}"),
                }),
            });
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&listed)?)?;
        return Ok(exit::SUCCESS);
    }

    if sessions.is_empty() && corrupt.is_empty() {
        let which = if args.active { "active " } else { "" };
        writeln!(out, "no {which}stroke sessions")?;
        return Ok(exit::SUCCESS);
    }
    let mut rows = Vec::with_capacity(sessions.len() + corrupt.len());
    for entry in sessions.iter().chain(&corrupt) {
        rows.push(match &entry.value {
            Ok(progress) => vec![
                entry.id.clone(),
                progress.node_id.clone(),
                progress.scene_name.clone(),
                position(progress.stroke_idx, progress.total_strokes),
                position(progress.pose_idx, progress.stroke_length),
                run_state(progress).to_owned(),
                format_age(age_secs(progress.timestamp)),
            ],
            Err(err) => vec![entry.id.clone(), format!("error: {err:#}")],
        });
    }
    let headers = ["SESSION", "NODE", "SCENE", "STROKE", "POSE", "STATE", "AGE"];
    write!(out, "{}", table(&headers, &rows))?;
    Ok(exit::SUCCESS)
}

/// Ends or aborts one session, after checking it exists and still runs.
async fn close(manager: &StateManager, action: Action) -> anyhow::Result<u8> {
    let (id, reason) = match &action {
        Action::End { session_id } => (session_id, None),
        Action::Abort { session_id, reason } => (session_id, Some(reason.as_str())),
    };
    let session_id = SessionId::new(id.as_str()).context("reading the session id")?;
    let progress = manager
        .get_stroke_progress(&session_id)
        .await
        .with_context(|| format!("reading session {session_id}"))?
        .ok_or_else(|| tatbot_state::Error::SessionNotFound(session_id.to_string()))?;
    let state = progress.state();
    if matches!(state, SessionState::Ended | SessionState::Aborted) {
        anyhow::bail!(
            "session {session_id} is already {state}; nothing to close (hint: `tatbot-state sessions` lists the running and stale ones)"
        );
    }
    let (verb, done) = match reason {
        None => ("ending", manager.end_stroke_session(&session_id).await),
        Some(reason) => ("aborting", manager.abort_stroke_session(&session_id, reason).await),
    };
    if let Err(err) = done {
        let hint = matches!(err, tatbot_state::Error::PermissionDenied { .. })
            .then_some(" (an admin operation: the viewer role only reads; use the admin or robot user)")
            .unwrap_or_default();
        return Err(anyhow::Error::new(err).context(format!("{verb} session {session_id}{hint}")));
    }
    let closed = if reason.is_some() { "aborted" } else { "ended" };
    writeln!(std::io::stdout().lock(), "session {session_id} {closed} (was {state})")?;
    Ok(exit::SUCCESS)
}

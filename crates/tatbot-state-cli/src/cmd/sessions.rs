//! `tatbot-state sessions`: active and recent stroke sessions, newest first.
//!
//! Sessions are every `stroke:progress:*` hash (ours and the Python nodes'); ended sessions stay
//! listed until their retention expires. Text shows 1-based positions (`3/3` is the last stroke
//! of three); JSON carries the stored 0-based document. A progress value that does not decode is
//! listed after the others with its error.

use std::io::Write as _;

use anyhow::Context as _;
use serde_json::json;
use tatbot_state::model::StrokeProgress;

use tatbot_state::text::position;

use crate::cmd::status::{age_secs, format_age, table};
use crate::ctx::GlobalArgs;
use crate::exit;

/// How many sessions are listed without `--limit` or `--all`.
const DEFAULT_LIMIT: usize = 20;

/// Flags of `sessions`.
#[derive(Debug, clap::Args)]
pub struct Args {
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

/// A session's run state as shown: `executing`, `paused` or `ended`.
pub fn run_state(progress: &StrokeProgress) -> &'static str {
    match (progress.is_executing, progress.is_paused) {
        (true, true) => "paused",
        (true, false) => "executing",
        (false, _) => "ended",
    }
}

/// Runs `sessions`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let manager = global.manager().await?;
    let entries = manager.list_sessions().await.context("listing stroke sessions")?;
    let (mut sessions, corrupt): (Vec<_>, Vec<_>) = entries.into_iter().partition(|entry| entry.value.is_ok());
    // Newest first by the progress document's own timestamp, which every write refreshes.
    sessions.sort_by_key(|entry| std::cmp::Reverse(entry.value.as_ref().ok().map(|progress| progress.timestamp)));
    if args.active {
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
                    "progress": progress,
                    "error": null,
                }),
                Err(err) => json!({
                    "session_id": entry.id,
                    "state": null,
                    "age_secs": null,
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

//! `tatbot-state progress [SESSION]`: one session's progress.
//!
//! Without a session id it shows the most recently written executing session of any node, which
//! is what the old MCP progress resource meant to do (known fault 7 of the reference). Text shows
//! 1-based positions; JSON carries the stored 0-based document under `progress`.

use std::io::Write as _;

use anyhow::Context as _;
use serde_json::json;
use tatbot_state::SessionId;
use tatbot_state::model::StrokeProgress;

use crate::cmd::sessions::run_state;
use tatbot_state::text::position;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::output::{age_secs, format_ago, shown};

/// Flags of `progress`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The session id [default: the latest active session]
    pub session: Option<String>,
}

/// Runs `progress`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let session_id = args.session.map(SessionId::new).transpose()?;
    let manager = global.manager().await?;
    let (session_id, progress) = match session_id {
        Some(session_id) => {
            let progress = manager
                .get_stroke_progress(&session_id)
                .await
                .with_context(|| format!("reading the progress of {session_id}"))?
                .ok_or_else(|| tatbot_state::Error::SessionNotFound(session_id.to_string()))?;
            (session_id, progress)
        }
        None => {
            let latest = manager
                .latest_active_session()
                .await
                .context("looking for the latest active session")?;
            let Some(latest) = latest else {
                return Err(exit::not_found(
                    "no active stroke session; hint: list recent ones with `tatbot-state sessions`".to_owned(),
                ));
            };
            (latest.session_id, latest.progress)
        }
    };
    print_progress(&session_id, &progress, global.json)?;
    Ok(exit::SUCCESS)
}

fn print_progress(session_id: &SessionId, progress: &StrokeProgress, json_output: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json_output {
        let shown = json!({
            "session_id": session_id.as_str(),
            "state": run_state(progress),
            "fraction": progress.fraction(),
            "age_secs": age_secs(progress.timestamp),
            "progress": progress,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&shown)?)?;
        return Ok(());
    }
    writeln!(out, "Session: {session_id}")?;
    writeln!(out, "Node: {}", shown(&progress.node_id))?;
    writeln!(out, "Scene: {}", shown(&progress.scene_name))?;
    if let Some(dataset) = &progress.dataset_name {
        writeln!(out, "Dataset: {}", shown(dataset))?;
    }
    writeln!(out, "State: {}", run_state(progress))?;
    writeln!(out, "Stroke: {}", position(progress.stroke_idx, progress.total_strokes))?;
    writeln!(out, "Pose: {}", position(progress.pose_idx, progress.stroke_length))?;
    match progress.problem() {
        None => writeln!(out, "Progress: {:.1}%", 100.0 * progress.fraction())?,
        Some(problem) => writeln!(out, "Progress: invalid ({})", shown(&problem))?,
    }
    writeln!(
        out,
        "Left: {} (offset {})",
        shown(&progress.stroke_description_l),
        progress.offset_idx_l
    )?;
    writeln!(
        out,
        "Right: {} (offset {})",
        shown(&progress.stroke_description_r),
        progress.offset_idx_r
    )?;
    writeln!(
        out,
        "Updated: {} ({})",
        progress.timestamp,
        format_ago(progress.timestamp)
    )?;
    Ok(())
}

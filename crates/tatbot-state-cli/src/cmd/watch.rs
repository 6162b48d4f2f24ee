//! `tatbot-state watch`: live progress of every active stroke session until they all end.
//!
//! Polls [`tatbot_state::StateManager::list_sessions`] every [`POLL_INTERVAL`]. Polling rather
//! than subscribing to `stroke:events:*` means a session started before `watch`, or by a Python
//! node, shows up the same way, and a missed message cannot leave a bar stuck; one `SCAN` five
//! times a second is cheap. Sessions that start while watching are picked up too.
//!
//! When stdout is a terminal (and `--json` is off) each session gets an indicatif bar. Otherwise
//! a plain line (or a JSON object with `--json`) is printed whenever a session's stroke, pose or
//! state changes, which is what a log file or a test wants. `--once` prints one snapshot of the
//! active sessions as lines and exits.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tatbot_state::StateManager;
use tatbot_state::model::StrokeProgress;
use tatbot_state::text::{position, shown};

use crate::cmd::sessions::run_state;
use crate::ctx::GlobalArgs;
use crate::exit;
use crate::signal::shutdown_signal;

/// Time between polls of the session list.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Width of the text bar in plain lines.
const BAR_WIDTH: usize = 20;
/// The indicatif bar layout.
const BAR_TEMPLATE: &str = "{prefix} [{bar:30}] {percent:>3}% {msg}";

/// Flags of `watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the active sessions once and exit
    #[arg(long)]
    pub once: bool,
}

/// Runs `watch`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let manager = if args.once {
        global.manager().await?
    } else {
        global.manager_waiting().await?
    };
    let active = active_sessions(&manager).await?;
    if active.is_empty() {
        if !global.json {
            writeln!(std::io::stdout().lock(), "no active stroke sessions")?;
        }
        return Ok(exit::SUCCESS);
    }
    if args.once {
        let mut out = std::io::stdout().lock();
        for (session_id, progress) in &active {
            writeln!(out, "{}", line(session_id, progress, global.json))?;
        }
        return Ok(exit::SUCCESS);
    }

    let use_bars = !global.json && std::io::stdout().is_terminal();
    let mut display = Display {
        json_output: global.json,
        bars: use_bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
        style: ProgressStyle::with_template(BAR_TEMPLATE)
            .context("building the progress bar style")?
            .progress_chars("#>-"),
        tracked: BTreeMap::new(),
    };
    display.update(&active, &BTreeMap::new())?;

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the snapshot above already covers it.
    poll.tick().await;
    while !display.tracked.is_empty() {
        tokio::select! {
            () = &mut shutdown => break,
            _ = poll.tick() => {}
        }
        let all = all_sessions(&manager).await?;
        let active: BTreeMap<String, StrokeProgress> = all
            .iter()
            .filter(|(_, progress)| progress.is_executing)
            .map(|(id, progress)| (id.clone(), progress.clone()))
            .collect();
        display.update(&active, &all)?;
    }
    Ok(exit::SUCCESS)
}

/// Every session that decodes, by id; values that do not decode are skipped here (`sessions`
/// shows them with their errors).
async fn all_sessions(manager: &StateManager) -> anyhow::Result<BTreeMap<String, StrokeProgress>> {
    let entries = manager.list_sessions().await.context("listing stroke sessions")?;
    Ok(entries
        .into_iter()
        .filter_map(|entry| match entry.value {
            Ok(progress) => Some((entry.id, progress)),
            Err(err) => {
                tracing::debug!(key = %entry.key, error = %err, "skipping a session that does not decode");
                None
            }
        })
        .collect())
}

async fn active_sessions(manager: &StateManager) -> anyhow::Result<BTreeMap<String, StrokeProgress>> {
    let mut sessions = all_sessions(manager).await?;
    sessions.retain(|_, progress| progress.is_executing);
    Ok(sessions)
}

/// What is on screen for each tracked session.
struct Display {
    json_output: bool,
    /// The bars, when stdout is a terminal; `None` prints lines instead.
    bars: Option<MultiProgress>,
    style: ProgressStyle,
    /// Sessions being watched: the last (stroke, pose, state) shown and the session's bar.
    tracked: BTreeMap<String, Tracked>,
}

struct Tracked {
    /// The stroke, pose and state last drawn; `None` before the first draw.
    shown: Option<(i64, i64, &'static str)>,
    bar: Option<ProgressBar>,
}

impl Display {
    /// Shows changes in `active`; sessions tracked but no longer active are shown as they ended
    /// (their final state from `all`) and dropped.
    fn update(
        &mut self,
        active: &BTreeMap<String, StrokeProgress>,
        all: &BTreeMap<String, StrokeProgress>,
    ) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        for (session_id, progress) in active {
            let shown = (progress.stroke_idx, progress.pose_idx, run_state(progress));
            if !self.tracked.contains_key(session_id) {
                let bar = self.bars.as_ref().map(|bars| {
                    let bar = bars.add(ProgressBar::new(total_poses(progress)));
                    bar.set_style(self.style.clone());
                    bar.set_prefix(session_id.clone());
                    bar
                });
                // `None` so the new session is drawn below.
                self.tracked.insert(session_id.clone(), Tracked { shown: None, bar });
            }
            let Some(tracked) = self.tracked.get_mut(session_id) else {
                continue;
            };
            if tracked.shown == Some(shown) {
                continue;
            }
            tracked.shown = Some(shown);
            match &tracked.bar {
                Some(bar) => {
                    bar.set_length(total_poses(progress));
                    bar.set_position(done_poses(progress));
                    bar.set_message(bar_message(progress));
                }
                None => writeln!(out, "{}", line(session_id, progress, self.json_output))?,
            }
        }
        let ended: Vec<String> = self
            .tracked
            .keys()
            .filter(|id| !active.contains_key(*id))
            .cloned()
            .collect();
        for session_id in ended {
            let Some(tracked) = self.tracked.remove(&session_id) else {
                continue;
            };
            let final_progress = all.get(&session_id);
            match (&tracked.bar, final_progress) {
                (Some(bar), Some(progress)) => {
                    bar.set_position(done_poses(progress));
                    bar.finish_with_message(bar_message(progress));
                }
                (Some(bar), None) => bar.abandon_with_message("gone (deleted or expired)"),
                (None, Some(progress)) => writeln!(out, "{}", line(&session_id, progress, self.json_output))?,
                (None, None) if self.json_output => {
                    writeln!(out, "{}", json!({"session_id": session_id, "state": "gone"}))?;
                }
                (None, None) => writeln!(out, "{} gone (deleted or expired)", shown(&session_id))?,
            }
        }
        out.flush()?;
        Ok(())
    }
}

fn total_poses(progress: &StrokeProgress) -> u64 {
    u64::try_from(progress.total_strokes.saturating_mul(progress.stroke_length.max(1))).unwrap_or(0)
}

fn done_poses(progress: &StrokeProgress) -> u64 {
    (progress.fraction() * total_poses(progress) as f64).round() as u64
}

fn bar_message(progress: &StrokeProgress) -> String {
    format!(
        "stroke {} pose {} {}",
        position(progress.stroke_idx, progress.total_strokes),
        position(progress.pose_idx, progress.stroke_length),
        run_state(progress)
    )
}

/// One session as a plain line with a text bar, or as a JSON object.
fn line(session_id: &str, progress: &StrokeProgress, json_output: bool) -> String {
    let fraction = progress.fraction();
    if json_output {
        return json!({
            "session_id": session_id,
            "state": run_state(progress),
            "fraction": fraction,
            "progress": progress,
        })
        .to_string();
    }
    // `fraction` is clamped to 0..=1, so this is at most BAR_WIDTH.
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    let percent = match progress.problem() {
        None => format!("{:5.1}%", 100.0 * fraction),
        Some(_) => "invalid".to_owned(),
    };
    format!(
        "{} {} {} [{}{}] {percent} {}",
        shown(session_id),
        shown(&progress.node_id),
        shown(&progress.scene_name),
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled.min(BAR_WIDTH)),
        bar_message(progress)
    )
}

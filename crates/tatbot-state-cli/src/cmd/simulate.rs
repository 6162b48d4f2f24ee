//! `tatbot-state simulate`: a robot producer for demos and tests.
//!
//! [`simulate_robot`] plays what the real stroke tool does on a robot node, through the same
//! library calls: it publishes the robot state (`connecting`, then `ready`), sends one
//! heartbeat, starts a stroke session, moves to `executing`, sends exactly one progress update
//! per pose (`strokes × stroke_length` updates, optionally paced to a rate), reports an error
//! every few strokes when asked, ends the session and goes back to `ready`. Every call is
//! awaited, so when it returns everything it sent has been acknowledged by Redis; it then reads
//! the progress back and checks it equals the last update sent.
//!
//! The `demo` command runs the same function. The CLI prints the session id as the first line
//! of stdout as soon as it is known (tests read it while the simulation runs) and a summary at
//! the end.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tatbot_state::heartbeat::{self, HeartbeatOptions, MetricsSampler};
use tatbot_state::model::{RobotState, StrokeProgress};
use tatbot_state::{Category, ProgressUpdate, SessionId, StateManager};

use crate::ctx::GlobalArgs;

/// The error category of simulated errors.
const ERROR_CATEGORY: &str = "simulation";

/// Flags of `simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Strokes in the session
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub strokes: u32,
    /// Poses per stroke
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub stroke_length: u32,
    /// Progress updates per second (0 = as fast as Redis acknowledges them)
    #[arg(long, default_value_t = 20.0, value_parser = parse_hz)]
    pub hz: f64,
    /// Scene name stored in the session
    #[arg(long, default_value = "demo")]
    pub scene: String,
    /// Report an error (category "simulation") every K strokes (0 = never)
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub error_every: u32,
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Strokes in the session (at least 1).
    pub strokes: u32,
    /// Poses per stroke (at least 1).
    pub stroke_length: u32,
    /// Progress updates per second; 0 sends them as fast as they are acknowledged.
    pub hz: f64,
    /// Scene name stored in the session.
    pub scene: String,
    /// Report an error every this many strokes; 0 never does.
    pub error_every: u32,
}

/// What a simulation did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The session it ran.
    pub session_id: SessionId,
    /// Progress updates sent and acknowledged.
    pub updates_sent: u64,
    /// From the first write to the read-back.
    pub elapsed: Duration,
    /// The progress read back after the session ended.
    pub final_progress: StrokeProgress,
    /// Whether the read-back equals the last update sent (stroke, pose and descriptions).
    pub verified: bool,
}

/// Runs one simulated stroke session on `manager` (as its node) and reports on it.
///
/// `on_update(session, done, total)` is called after each acknowledged progress update.
///
/// # Errors
///
/// A plan with zero strokes, zero poses or a negative or non-finite rate, a Redis failure
/// (with the step that failed), or the session vanishing before the read-back.
pub async fn simulate_robot(
    manager: &StateManager,
    plan: &Plan,
    on_update: &mut (dyn FnMut(&SessionId, u64, u64) + Send),
) -> anyhow::Result<Report> {
    if plan.strokes == 0 || plan.stroke_length == 0 {
        return Err(anyhow::anyhow!(
            "a simulation needs at least one stroke of at least one pose (got {} × {})",
            plan.strokes,
            plan.stroke_length
        ));
    }
    if !plan.hz.is_finite() || plan.hz < 0.0 {
        return Err(anyhow::anyhow!(
            "the update rate must be 0 or a positive number of updates per second (got {})",
            plan.hz
        ));
    }
    let started = Instant::now();
    let node_id = manager.node_id().to_string();
    let category = Category::new(ERROR_CATEGORY).context("building the error category")?;

    set_pose(manager, &node_id, "connecting", false).await?;
    let heartbeat_options = HeartbeatOptions::default();
    let mut sampler = MetricsSampler::new(Path::new("/"));
    heartbeat::beat(manager, &mut sampler, &heartbeat_options)
        .await
        .context("sending the heartbeat")?;
    set_pose(manager, &node_id, "ready", true).await?;

    let session_id = manager
        .start_stroke_session(plan.strokes, plan.stroke_length, &plan.scene)
        .await
        .context("starting the stroke session")?;
    set_pose(manager, &node_id, "executing", true).await?;

    let total = u64::from(plan.strokes) * u64::from(plan.stroke_length);
    // `interval` ticks at once and then every period; Delay keeps the rate after a slow call
    // instead of bursting to catch up.
    let mut pacer = (plan.hz > 0.0).then(|| {
        let mut pacer = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.hz));
        pacer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pacer
    });
    let mut updates_sent = 0;
    let mut last_update = ProgressUpdate::default();
    for stroke_idx in 0..plan.strokes {
        for pose_idx in 0..plan.stroke_length {
            if let Some(pacer) = pacer.as_mut() {
                pacer.tick().await;
            }
            let offset = i64::from(stroke_idx % 4);
            last_update = ProgressUpdate::new(stroke_idx, pose_idx)
                .descriptions(
                    format!("left stroke {stroke_idx} pose {pose_idx}"),
                    format!("right stroke {stroke_idx} pose {pose_idx}"),
                )
                .offsets(offset, offset + 1);
            manager
                .update_stroke_progress(&session_id, &last_update)
                .await
                .with_context(|| format!("sending progress stroke {stroke_idx} pose {pose_idx} of {session_id}"))?;
            updates_sent += 1;
            on_update(&session_id, updates_sent, total);
        }
        if plan.error_every > 0 && (stroke_idx + 1) % plan.error_every == 0 {
            let details = json!({"session_id": session_id.as_str(), "stroke_idx": stroke_idx});
            let message = format!("simulated error after stroke {stroke_idx}");
            manager
                .report_error(&category, &message, details)
                .await
                .context("reporting the simulated error")?;
        }
    }

    manager
        .end_stroke_session(&session_id)
        .await
        .with_context(|| format!("ending session {session_id}"))?;
    set_pose(manager, &node_id, "ready", true).await?;

    let final_progress = manager
        .get_stroke_progress(&session_id)
        .await
        .with_context(|| format!("reading back the progress of {session_id}"))?
        .ok_or_else(|| tatbot_state::Error::SessionNotFound(session_id.to_string()))
        .with_context(|| format!("reading back the progress of {session_id}"))?;
    let verified = final_progress.stroke_idx == i64::from(last_update.stroke_idx)
        && final_progress.pose_idx == i64::from(last_update.pose_idx)
        && Some(&final_progress.stroke_description_l) == last_update.description_l.as_ref()
        && Some(&final_progress.stroke_description_r) == last_update.description_r.as_ref()
        && !final_progress.is_executing;
    Ok(Report {
        session_id,
        updates_sent,
        elapsed: started.elapsed(),
        final_progress,
        verified,
    })
}

/// Publishes this node's robot state with both arms `connected` or not, in pose `pose`.
async fn set_pose(manager: &StateManager, node_id: &str, pose: &str, connected: bool) -> anyhow::Result<()> {
    let mut state = RobotState::new(node_id);
    state.is_connected_l = connected;
    state.is_connected_r = connected;
    state.current_pose = pose.to_owned();
    manager
        .update_robot_state(&state)
        .await
        .with_context(|| format!("publishing robot state {pose:?}"))
}

/// Runs `simulate`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let manager = global.manager().await?;
    let plan = Plan {
        strokes: args.strokes,
        stroke_length: args.stroke_length,
        hz: args.hz,
        scene: args.scene,
        error_every: args.error_every,
    };
    let json_output = global.json;
    // The callback cannot return an error, so the first stdout failure (a closed pipe) is kept
    // here and returned after the simulation, which still runs to its end.
    let mut write_error: Option<std::io::Error> = None;
    let mut announced = false;
    let mut on_update = |session_id: &SessionId, _done: u64, _total: u64| {
        if announced {
            return;
        }
        announced = true;
        let mut out = std::io::stdout().lock();
        let written = if json_output {
            writeln!(out, "{}", json!({"session_id": session_id.as_str()}))
        } else {
            writeln!(out, "{session_id}")
        };
        if let Err(err) = written.and_then(|()| out.flush()) {
            write_error = Some(err);
        }
    };
    let report = simulate_robot(&manager, &plan, &mut on_update).await?;
    if let Some(err) = write_error {
        return Err(anyhow::Error::new(err).context("printing the session id"));
    }

    let seconds = report.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        report.updates_sent as f64 / seconds
    } else {
        0.0
    };
    let progress = &report.final_progress;
    let mut out = std::io::stdout().lock();
    if json_output {
        let summary = json!({
            "session_id": report.session_id.as_str(),
            "updates_sent": report.updates_sent,
            "elapsed_secs": seconds,
            "rate_per_sec": rate,
            "verified": report.verified,
            "final_progress": progress,
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out, "updates sent: {}", report.updates_sent)?;
        writeln!(out, "elapsed: {seconds:.3} s")?;
        writeln!(out, "rate: {rate:.1} updates/s")?;
        writeln!(
            out,
            "final progress: stroke {}/{} pose {}/{} ({})",
            progress.stroke_idx + 1,
            progress.total_strokes,
            progress.pose_idx + 1,
            progress.stroke_length,
            if report.verified { "verified" } else { "MISMATCH" }
        )?;
    }
    if !report.verified {
        return Err(anyhow::anyhow!(
            "the stored progress of {} (stroke {}, pose {}) is not the last update sent; another writer may have changed it",
            report.session_id,
            progress.stroke_idx,
            progress.pose_idx
        ));
    }
    Ok(crate::exit::SUCCESS)
}

/// Parses `--hz`: a finite, non-negative number.
fn parse_hz(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(hz) if hz.is_finite() && hz >= 0.0 => Ok(hz),
        _ => Err(format!("{text:?} is not a rate: give updates per second, 0 or more")),
    }
}

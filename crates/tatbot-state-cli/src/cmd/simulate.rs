//! `tatbot-state simulate`: a robot producer for demos and tests.
//!
//! [`simulate_robot`] plays what the real stroke tool does on a robot node, through the same
//! library calls: it publishes the robot state (`connecting`, then `ready`), sends one
//! heartbeat, starts a stroke session, moves to `executing`, sends exactly one progress update
//! per pose (`strokes × stroke_length` updates, optionally paced to a rate), reports an error
//! every few strokes when asked, ends the session and goes back to `ready`.
//!
//! By default it writes as a robot should, through the non-blocking [`Producer`]: calls never
//! wait on Redis, so a Redis crash, restart or pause during the run costs nothing but time, and
//! the producer replays what the crash lost. At the end it closes the producer with a bounded
//! wait. With `--awaited` every call is awaited instead (the first Redis failure ends the run).
//! Either way it then reads back the final progress and the history stream and counts updates
//! stored, missing and duplicated: the run is verified only when every update is stored exactly
//! once and the progress equals the last update sent.
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
use tatbot_state::{
    CancellationToken, Category, HistoryCursor, Producer, ProducerConfig, ProgressUpdate, SessionId, SessionPlan,
    StateManager,
};

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
    /// Await every call instead of writing through the non-blocking producer
    #[arg(long)]
    pub awaited: bool,
    /// Seconds to wait at the end for Redis to store what was sent
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub flush_timeout: u64,
    /// Seconds the session stays live without a write from this robot; after that every view
    /// shows it stale (the robot died)
    #[arg(long, value_name = "SECS", default_value_t = tatbot_state::model::DEFAULT_SESSION_LEASE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=tatbot_state::model::MAX_SESSION_LEASE.as_secs()))]
    pub lease: u64,
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
    /// Await every call rather than write through a [`Producer`].
    pub awaited: bool,
    /// How long the end may wait for Redis to store what was sent.
    pub flush_timeout: Duration,
}

impl Plan {
    /// A plan with the CLI's defaults for the rest.
    pub fn new(strokes: u32, stroke_length: u32, hz: f64, scene: &str) -> Plan {
        Plan {
            strokes,
            stroke_length,
            hz,
            scene: scene.to_owned(),
            error_every: 0,
            awaited: false,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
        }
    }

    /// Progress updates the plan sends.
    pub fn total(&self) -> u64 {
        u64::from(self.strokes) * u64::from(self.stroke_length)
    }
}

/// The default bound on the final wait for Redis.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// How many updates may wait unacknowledged when no rate is set, before the robot waits.
const UNPACED_WINDOW: u64 = 2_000;

/// What a simulation did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The session it ran.
    pub session_id: SessionId,
    /// Progress updates sent.
    pub updates_sent: u64,
    /// Distinct updates the history stream holds.
    pub updates_stored: u64,
    /// Updates sent that the history stream does not hold (of those it should still keep).
    pub missing: u64,
    /// History entries beyond the first for the same update.
    pub duplicated: u64,
    /// The history stream is capped and keeps only the newest entries: how many it keeps.
    pub history_cap: Option<usize>,
    /// From the first write to the read-back.
    pub elapsed: Duration,
    /// The progress read back after the session ended.
    pub final_progress: StrokeProgress,
    /// The producer's counters at the end (`None` with `--awaited`).
    pub producer: Option<tatbot_state::ProducerStats>,
    /// Whether the read-back equals the last update sent (stroke, pose and descriptions), the
    /// session ended, and every update is stored exactly once.
    pub verified: bool,
}

/// Where the robot's writes go: awaited one by one, or queued on a producer.
enum Writes<'a> {
    Awaited(&'a StateManager),
    Queued(Producer),
}

impl Writes<'_> {
    async fn robot_state(&self, node_id: &str, pose: &str, connected: bool) -> anyhow::Result<()> {
        let mut state = RobotState::new(node_id);
        state.is_connected_l = connected;
        state.is_connected_r = connected;
        state.current_pose = pose.to_owned();
        let written = match self {
            Writes::Awaited(manager) => manager.update_robot_state(&state).await,
            Writes::Queued(producer) => producer.update_robot_state(&state).map(drop),
        };
        written.with_context(|| format!("publishing robot state {pose:?}"))
    }

    async fn progress(&self, session_id: &SessionId, update: &ProgressUpdate) -> anyhow::Result<u64> {
        let sent = match self {
            Writes::Awaited(manager) => manager.update_stroke_progress(session_id, update).await.map(|_| 0),
            Writes::Queued(producer) => producer.update_stroke_progress(session_id, update),
        };
        sent.with_context(|| {
            format!(
                "sending progress stroke {} pose {} of {session_id}",
                update.stroke_idx, update.pose_idx
            )
        })
    }

    async fn error(&self, category: &Category, message: &str, details: serde_json::Value) -> anyhow::Result<()> {
        let reported = match self {
            Writes::Awaited(manager) => manager.report_error(category, message, details).await,
            Writes::Queued(producer) => producer.report_error(category, message, details).map(drop),
        };
        reported.context("reporting the simulated error")
    }

    async fn end(&self, session_id: &SessionId) -> anyhow::Result<()> {
        match self {
            Writes::Awaited(manager) => manager
                .end_stroke_session(session_id)
                .await
                .with_context(|| format!("ending session {session_id}")),
            Writes::Queued(producer) => {
                producer.end_stroke_session(session_id);
                Ok(())
            }
        }
    }
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
    let shutdown = CancellationToken::new();
    let _stop_writer = shutdown.clone().drop_guard();
    let writes = if plan.awaited {
        Writes::Awaited(manager)
    } else {
        Writes::Queued(manager.producer(ProducerConfig::default(), shutdown.clone()))
    };

    writes.robot_state(&node_id, "connecting", false).await?;
    let heartbeat_options = HeartbeatOptions::default();
    let mut sampler = MetricsSampler::new(Path::new("/"));
    match &writes {
        Writes::Awaited(manager) => manager
            .send_heartbeat(&mut sampler, &heartbeat_options)
            .await
            .map(drop)
            .context("sending the heartbeat")?,
        Writes::Queued(producer) => {
            let metrics = sampler.sample().await;
            let health = heartbeat::health_document(&node_id, &metrics, None, &heartbeat_options);
            producer.update_node_health(&health).context("sending the heartbeat")?;
        }
    }
    writes.robot_state(&node_id, "ready", true).await?;

    let session_plan = SessionPlan {
        total_strokes: plan.strokes,
        stroke_length: plan.stroke_length,
        scene: plan.scene.clone(),
    };
    let session_id = match &writes {
        Writes::Awaited(manager) => manager.start_stroke_session(&session_plan).await,
        Writes::Queued(producer) => producer.start_stroke_session(&session_plan).await,
    }
    .context("starting the stroke session")?;
    writes.robot_state(&node_id, "executing", true).await?;

    let total = plan.total();
    // `interval` ticks at once and then every period; Delay keeps the rate after a slow call
    // instead of bursting to catch up.
    let mut pacer = (plan.hz > 0.0).then(|| {
        let mut pacer = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.hz));
        pacer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pacer
    });
    let mut updates_sent = 0;
    let mut last_update = ProgressUpdate::default();
    let mut sent_seqs = std::collections::VecDeque::new();
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
            let seq = writes.progress(&session_id, &last_update).await?;
            updates_sent += 1;
            on_update(&session_id, updates_sent, total);
            // Unpaced, the robot goes as fast as Redis takes the updates, not faster than the
            // queue can hold them.
            if let (Writes::Queued(producer), None) = (&writes, &pacer) {
                sent_seqs.push_back(seq);
                if sent_seqs.len() as u64 > UNPACED_WINDOW
                    && let Some(oldest) = sent_seqs.pop_front()
                {
                    producer
                        .wait_for(oldest, plan.flush_timeout)
                        .await
                        .context("waiting for Redis to take the updates")?;
                }
            }
        }
        if plan.error_every > 0 && (stroke_idx + 1) % plan.error_every == 0 {
            let details = json!({"session_id": session_id.as_str(), "stroke_idx": stroke_idx});
            let message = format!("simulated error after stroke {stroke_idx}");
            writes.error(&category, &message, details).await?;
        }
    }

    writes.end(&session_id).await?;
    writes.robot_state(&node_id, "ready", true).await?;
    let producer = match &writes {
        Writes::Queued(producer) => {
            producer
                .close(plan.flush_timeout)
                .await
                .context("waiting for Redis to store the updates")?;
            Some(producer.stats())
        }
        Writes::Awaited(_) => None,
    };

    let final_progress = read_back(manager, plan, &session_id, |manager, session_id| async move {
        manager.get_stroke_progress(&session_id).await
    })
    .await
    .with_context(|| format!("reading back the progress of {session_id}"))?
    .ok_or_else(|| tatbot_state::Error::SessionNotFound(session_id.to_string()))
    .with_context(|| format!("reading back the progress of {session_id}"))?;
    let history = count_history(manager, plan, &session_id).await?;
    let progress_matches = final_progress.stroke_idx == i64::from(last_update.stroke_idx)
        && final_progress.pose_idx == i64::from(last_update.pose_idx)
        && Some(&final_progress.stroke_description_l) == last_update.description_l.as_ref()
        && Some(&final_progress.stroke_description_r) == last_update.description_r.as_ref()
        && !final_progress.is_executing;
    Ok(Report {
        session_id,
        updates_sent,
        updates_stored: history.stored,
        missing: history.missing,
        duplicated: history.duplicated,
        history_cap: history.cap,
        elapsed: started.elapsed(),
        final_progress,
        producer,
        verified: progress_matches && history.missing == 0 && history.duplicated == 0,
    })
}

/// What the history stream of a simulated session holds.
struct HistoryCount {
    stored: u64,
    missing: u64,
    duplicated: u64,
    cap: Option<usize>,
}

/// Reads the whole history of `session_id` and counts the updates of `plan` in it.
async fn count_history(manager: &StateManager, plan: &Plan, session_id: &SessionId) -> anyhow::Result<HistoryCount> {
    let total = plan.total();
    let mut seen = vec![0u32; usize::try_from(total).unwrap_or(usize::MAX)];
    let mut after = HistoryCursor::Start;
    loop {
        let cursor = after.clone();
        let page = read_back(manager, plan, session_id, |manager, session_id| {
            let cursor = cursor.clone();
            async move { manager.get_history(&session_id, &cursor, 1000).await }
        })
        .await
        .with_context(|| format!("reading back the history of {session_id}"))?;
        let Some(last) = page.last() else { break };
        after = HistoryCursor::After(last.id);
        for entry in &page {
            let index = entry.stroke_idx * i64::from(plan.stroke_length) + entry.pose_idx;
            if let Some(count) = usize::try_from(index).ok().and_then(|index| seen.get_mut(index)) {
                *count += 1;
            }
        }
    }
    let cap = manager.config().history_maxlen;
    // A capped stream keeps the newest entries: count from the oldest it still holds.
    let first = if total as usize > cap {
        seen.iter().position(|count| *count > 0).unwrap_or(seen.len())
    } else {
        0
    };
    let kept = &seen[first..];
    let stored = kept.iter().filter(|count| **count > 0).count() as u64;
    Ok(HistoryCount {
        stored,
        missing: kept.len() as u64 - stored,
        duplicated: kept.iter().map(|count| u64::from(count.saturating_sub(1))).sum(),
        cap: (total as usize > cap).then_some(cap),
    })
}

/// Runs a read, retrying while Redis is unreachable (it may be restarting) for up to the
/// plan's flush timeout.
async fn read_back<T, F, Fut>(
    manager: &StateManager,
    plan: &Plan,
    session_id: &SessionId,
    read: F,
) -> tatbot_state::Result<T>
where
    F: Fn(StateManager, SessionId) -> Fut,
    Fut: std::future::Future<Output = tatbot_state::Result<T>>,
{
    let deadline = Instant::now() + plan.flush_timeout;
    loop {
        match read(manager.clone(), session_id.clone()).await {
            Err(err) if err.is_connection_error() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Runs `simulate`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let endpoint = tatbot_state::Endpoint::from(&global.target()?);
    let lease = Duration::from_secs(args.lease);
    let manager = global
        .manager_configured(endpoint, |config| config.session_lease = lease)
        .await?;
    let plan = Plan {
        strokes: args.strokes,
        stroke_length: args.stroke_length,
        hz: args.hz,
        scene: args.scene,
        error_every: args.error_every,
        awaited: args.awaited,
        flush_timeout: Duration::from_secs(args.flush_timeout),
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
            "mode": if plan.awaited { "awaited" } else { "producer" },
            "updates_sent": report.updates_sent,
            "updates_stored": report.updates_stored,
            "missing": report.missing,
            "duplicated": report.duplicated,
            "history_cap": report.history_cap,
            "elapsed_secs": seconds,
            "rate_per_sec": rate,
            "verified": report.verified,
            "producer": report.producer,
            "final_progress": progress,
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out, "updates sent: {}", report.updates_sent)?;
        writeln!(
            out,
            "updates stored: {} (missing {}, duplicated {}){}",
            report.updates_stored,
            report.missing,
            report.duplicated,
            report
                .history_cap
                .map_or_else(String::new, |cap| format!("; the history keeps the newest {cap}"))
        )?;
        if let Some(stats) = &report.producer {
            writeln!(
                out,
                "producer: {} Redis restarts survived, {} writes replayed, {} retries",
                stats.restarts, stats.replayed, stats.retries
            )?;
        }
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
    if report.missing > 0 || report.duplicated > 0 {
        return Err(anyhow::anyhow!(
            "the history of {} misses {} and repeats {} of the {} updates sent",
            report.session_id,
            report.missing,
            report.duplicated,
            report.updates_sent
        ));
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

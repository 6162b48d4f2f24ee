//! `tatbot-state robot [NODE]`: one robot's state snapshot, or a table of every robot.
//!
//! Robot states are the `robot:state:{node_id}` hashes written by the robot nodes (ours and the
//! Python ones). They have no TTL: a state's age tells how current it is. A state that does not
//! decode is a row carrying its error, so one bad value never hides the other robots.

use std::io::Write as _;

use anyhow::Context as _;
use serde_json::json;
use tatbot_state::NodeId;
use tatbot_state::model::RobotState;
use tatbot_state::text::joints;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::output::{age_secs, format_age, format_ago, shown, table};

/// Flags of `robot`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show this node's robot only [default: a table of all robots]
    pub node: Option<String>,
}

/// Runs `robot`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    match args.node {
        Some(node) => show_robot(global, &node).await,
        None => show_all(global).await,
    }
}

async fn show_robot(global: &GlobalArgs, node: &str) -> anyhow::Result<u8> {
    let node_id = NodeId::new(node)?;
    let manager = global.manager().await?;
    let state = manager
        .get_robot_state(&node_id)
        .await
        .with_context(|| format!("reading the robot state of node {node_id}"))?;
    let Some(state) = state else {
        return Err(exit::not_found(format!(
            "no robot state from node {node_id}; list robots with `tatbot-state robot`"
        )));
    };
    let mut out = std::io::stdout().lock();
    if global.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&state)?)?;
        return Ok(exit::SUCCESS);
    }
    writeln!(out, "Node: {}", shown(&state.node_id))?;
    writeln!(out, "Updated: {} ({})", state.timestamp, format_ago(state.timestamp))?;
    writeln!(out, "Pose: {}", shown(&state.current_pose))?;
    writeln!(out, "Left Arm: {}", connected(state.is_connected_l))?;
    writeln!(out, "  Joints: {}", joints(state.joints_l.as_deref()))?;
    writeln!(out, "  Velocities: {}", joints(state.velocities_l.as_deref()))?;
    writeln!(out, "Right Arm: {}", connected(state.is_connected_r))?;
    writeln!(out, "  Joints: {}", joints(state.joints_r.as_deref()))?;
    writeln!(out, "  Velocities: {}", joints(state.velocities_r.as_deref()))?;
    writeln!(
        out,
        "Goal Times: slow {}s, fast {}s",
        state.goal_time_slow, state.goal_time_fast
    )?;
    Ok(exit::SUCCESS)
}

fn connected(is_connected: bool) -> &'static str {
    if is_connected { "connected" } else { "disconnected" }
}

async fn show_all(global: &GlobalArgs) -> anyhow::Result<u8> {
    let manager = global.manager().await?;
    let mut robots = manager
        .get_all_robot_states()
        .await
        .context("reading the robot states")?;
    robots.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = std::io::stdout().lock();
    if global.json {
        let rows: Vec<_> = robots
            .iter()
            .map(|entry| match &entry.value {
                Ok(state) => json!({
                    "node_id": entry.id,
                    "age_secs": age_secs(state.timestamp),
                    "state": state,
                    "error": null,
                }),
                Err(err) => json!({
                    "node_id": entry.id,
                    "age_secs": null,
                    "state": null,
                    "error": format!("{err:#}"),
                }),
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(exit::SUCCESS);
    }
    if robots.is_empty() {
        writeln!(out, "no robot has stored its state")?;
        return Ok(exit::SUCCESS);
    }
    let rows: Vec<Vec<String>> = robots
        .iter()
        .map(|entry| match &entry.value {
            Ok(state) => row(&entry.id, state),
            Err(err) => vec![entry.id.clone(), format!("error: {err:#}")],
        })
        .collect();
    let headers = ["NODE", "AGE", "POSE", "LEFT", "RIGHT", "JOINTS L", "JOINTS R"];
    write!(out, "{}", table(&headers, &rows))?;
    Ok(exit::SUCCESS)
}

fn row(node_id: &str, state: &RobotState) -> Vec<String> {
    let arm = |is_connected: bool| if is_connected { "up" } else { "down" }.to_owned();
    vec![
        node_id.to_owned(),
        format_age(age_secs(state.timestamp)),
        state.current_pose.clone(),
        arm(state.is_connected_l),
        arm(state.is_connected_r),
        joints(state.joints_l.as_deref()),
        joints(state.joints_r.as_deref()),
    ]
}

//! `tatbot-state health [NODE]`: one node's last heartbeat, or a table of every node.
//!
//! Live nodes are the `node:health:*` keys (ours and the Python nodes'), which expire 60 s after
//! the last heartbeat. Nodes that sent a heartbeat through tatbot-state once but whose key has
//! expired are taken from the node registry and shown as offline. A heartbeat that does not
//! decode is a row carrying its error: one bad value never hides the other nodes.

use std::collections::BTreeSet;
use std::io::Write as _;

use anyhow::Context as _;
use serde_json::json;
use tatbot_state::NodeId;
use tatbot_state::model::NodeHealth;

use tatbot_state::text::percent;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::output::{age_secs, format_age, format_ago, shown, table};

/// Flags of `health`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show this node only [default: a table of all nodes]
    pub node: Option<String>,
}

/// Runs `health`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    match args.node {
        Some(node) => show_node(global, &node).await,
        None => show_all(global).await,
    }
}

async fn show_node(global: &GlobalArgs, node: &str) -> anyhow::Result<u8> {
    let node_id = NodeId::new(node)?;
    let manager = global.manager().await?;
    let health = manager
        .get_node_health(&node_id)
        .await
        .with_context(|| format!("reading the health of node {node_id}"))?;
    let Some(health) = health else {
        return Err(exit::not_found(format!(
            "no heartbeat from node {node_id} (expired or never sent); hint: list nodes with `tatbot-state health`"
        )));
    };
    print_health(&health, global.json)?;
    Ok(exit::SUCCESS)
}

/// Prints one heartbeat: the document as JSON, or one `Label: value` line per figure.
///
/// # Errors
///
/// Writing to stdout failed.
pub fn print_health(health: &NodeHealth, json_output: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json_output {
        writeln!(out, "{}", serde_json::to_string_pretty(health)?)?;
        return Ok(());
    }
    let gpu = match health.gpu_percent {
        Some(gpu_percent) if health.gpu_available => {
            format!(
                "{} (memory {})",
                percent(gpu_percent),
                percent_or_dash(health.gpu_memory_percent)
            )
        }
        _ => "none".to_owned(),
    };
    let mcp = match (health.mcp_server_running, health.mcp_port) {
        (true, Some(port)) => format!("running on port {port}"),
        (true, None) => "running".to_owned(),
        (false, _) => "not running".to_owned(),
    };
    writeln!(out, "Node: {}", shown(&health.node_id))?;
    writeln!(
        out,
        "Last Heartbeat: {} ({})",
        health.last_heartbeat,
        format_ago(health.last_heartbeat)
    )?;
    writeln!(out, "Reachable: {}", health.is_reachable)?;
    writeln!(out, "CPU: {}", percent(health.cpu_percent))?;
    writeln!(out, "Memory: {}", percent(health.memory_percent))?;
    writeln!(out, "Disk: {}", percent(health.disk_percent))?;
    writeln!(out, "GPU: {gpu}")?;
    writeln!(out, "Ping: {}", ms_or_dash(health.ping_latency_ms))?;
    writeln!(out, "MCP Server: {mcp}")?;
    Ok(())
}

async fn show_all(global: &GlobalArgs) -> anyhow::Result<u8> {
    let manager = global.manager().await?;
    let mut live = manager
        .get_all_nodes_health()
        .await
        .context("reading the heartbeats of all nodes")?;
    let known = match manager.known_nodes().await {
        Ok(known) => known,
        // Another client's value under the registry: the live nodes are still listed.
        Err(err @ tatbot_state::Error::Corrupt { .. }) => {
            let _ = writeln!(
                std::io::stderr(),
                "tatbot-state: {}; offline nodes are not listed",
                err.report()
            );
            Vec::new()
        }
        Err(err) => return Err(anyhow::Error::new(err).context("reading the node registry")),
    };
    live.sort_by(|a, b| a.id.cmp(&b.id));
    let live_ids: BTreeSet<&str> = live.iter().map(|entry| entry.id.as_str()).collect();
    let mut offline: Vec<(String, f64)> = known
        .iter()
        .filter(|node| !live_ids.contains(node.node_id.as_str()))
        .map(|node| {
            let age = (tatbot_state::Timestamp::now().unix_millis() - node.last_heartbeat_ms) as f64 / 1000.0;
            (node.node_id.clone(), age)
        })
        .collect();
    offline.sort_by(|a, b| a.0.cmp(&b.0));

    let mut out = std::io::stdout().lock();
    if global.json {
        let mut nodes = Vec::with_capacity(live.len() + offline.len());
        for entry in &live {
            nodes.push(match &entry.value {
                Ok(health) => json!({
                    "node_id": entry.id,
                    "online": true,
                    "age_secs": age_secs(health.last_heartbeat),
                    "health": health,
                    "error": null,
                }),
                Err(err) => json!({
                    "node_id": entry.id,
                    "online": true,
                    "age_secs": null,
                    "health": null,
                    "error": format!("{err:#}"),
                }),
            });
        }
        for (node, age) in &offline {
            nodes.push(json!({"node_id": node, "online": false, "age_secs": age, "health": null, "error": null}));
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&nodes)?)?;
        return Ok(exit::SUCCESS);
    }

    if live.is_empty() && offline.is_empty() {
        writeln!(out, "no nodes have sent a heartbeat")?;
        return Ok(exit::SUCCESS);
    }
    let mut rows = Vec::with_capacity(live.len() + offline.len());
    for entry in &live {
        rows.push(match &entry.value {
            Ok(health) => vec![
                entry.id.clone(),
                "yes".to_owned(),
                format_age(age_secs(health.last_heartbeat)),
                percent(health.cpu_percent),
                percent(health.memory_percent),
                percent(health.disk_percent),
                if health.gpu_available {
                    percent_or_dash(health.gpu_percent)
                } else {
                    "-".to_owned()
                },
                ms_or_dash(health.ping_latency_ms),
            ],
            Err(err) => vec![entry.id.clone(), "yes".to_owned(), format!("error: {err:#}")],
        });
    }
    for (node, age) in &offline {
        rows.push(vec![
            node.clone(),
            "no".to_owned(),
            format_age(*age),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
        ]);
    }
    let headers = ["NODE", "ONLINE", "AGE", "CPU", "MEM", "DISK", "GPU", "PING"];
    write!(out, "{}", table(&headers, &rows))?;
    Ok(exit::SUCCESS)
}

fn percent_or_dash(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), percent)
}

fn ms_or_dash(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(ms) if ms.is_finite() && (0.0..1e9).contains(&ms) => format!("{ms:.2}ms"),
        Some(_) => "invalid".to_owned(),
    }
}

//! The node heartbeat agent: writes this node's [`NodeHealth`] every few seconds.
//!
//! Each beat samples CPU, memory and disk with `sysinfo`, GPU use with `nvidia-smi` when an
//! NVIDIA GPU is visible, and the round trip to Redis, then stores the document with the
//! contract's 60 s TTL. A node that stops beating drops out of "nodes online" by itself when its
//! key expires. CPU use is measured between two samples, so the sampler is kept across beats.
//! A failed beat (Redis down) is logged and the agent keeps going; it stops only when its
//! cancellation token fires.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sysinfo::{Disks, System};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::manager::StateManager;
use crate::model::NodeHealth;
use crate::timestamp::Timestamp;

/// Default time between beats.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// How long `nvidia-smi` may take before the GPU counts as unavailable.
const GPU_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct HeartbeatOptions {
    /// Time between beats.
    pub interval: Duration,
    /// Whether this node serves MCP (`mcp_server_running`); also true whenever `mcp_port` is set.
    pub mcp_server_running: bool,
    /// The MCP server's HTTP port (`mcp_port`); `None` on stdio or without MCP.
    pub mcp_port: Option<u16>,
    /// The disk whose use is reported is the one holding this path.
    pub disk_path: PathBuf,
}

impl Default for HeartbeatOptions {
    fn default() -> HeartbeatOptions {
        HeartbeatOptions {
            interval: DEFAULT_INTERVAL,
            mcp_server_running: false,
            mcp_port: None,
            disk_path: PathBuf::from("/"),
        }
    }
}

/// GPU figures from `nvidia-smi`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuMetrics {
    /// Utilisation, 0 to 100.
    pub percent: f64,
    /// Memory in use, 0 to 100.
    pub memory_percent: f64,
}

/// One sample of this machine's resource use.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// CPU use since the previous sample, 0 to 100.
    pub cpu_percent: f64,
    /// Memory in use, 0 to 100.
    pub memory_percent: f64,
    /// Disk in use, 0 to 100.
    pub disk_percent: f64,
    /// GPU figures, when an NVIDIA GPU is visible.
    pub gpu: Option<GpuMetrics>,
}

/// Samples system metrics; keep one across beats so CPU use covers the interval between them.
pub struct MetricsSampler {
    system: System,
    disks: Disks,
    disk_path: PathBuf,
}

impl MetricsSampler {
    /// A sampler reporting the disk that holds `disk_path`.
    pub fn new(disk_path: &Path) -> MetricsSampler {
        let mut system = System::new();
        // The first CPU reading is relative to this one.
        system.refresh_cpu_usage();
        MetricsSampler {
            system,
            disks: Disks::new_with_refreshed_list(),
            disk_path: disk_path.to_owned(),
        }
    }

    /// CPU, memory and disk now, plus the GPU when `nvidia-smi` answers.
    pub async fn sample(&mut self) -> Metrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        let total_memory = self.system.total_memory();
        let memory_percent = if total_memory == 0 {
            0.0
        } else {
            100.0 * self.system.used_memory() as f64 / total_memory as f64
        };
        Metrics {
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            memory_percent,
            disk_percent: self.disk_percent(),
            gpu: probe_gpu().await,
        }
    }

    /// Use of the disk mounted at the longest prefix of the configured path.
    fn disk_percent(&self) -> f64 {
        let disk = self
            .disks
            .list()
            .iter()
            .filter(|disk| self.disk_path.starts_with(disk.mount_point()))
            .max_by_key(|disk| disk.mount_point().as_os_str().len());
        let Some(disk) = disk else { return 0.0 };
        let total = disk.total_space();
        if total == 0 {
            return 0.0;
        }
        100.0 * (total - disk.available_space().min(total)) as f64 / total as f64
    }
}

/// Asks `nvidia-smi` for utilisation and memory; `None` when it is missing, fails or hangs.
async fn probe_gpu() -> Option<GpuMetrics> {
    let mut command = tokio::process::Command::new("nvidia-smi");
    command
        .args([
            "--query-gpu=utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .kill_on_drop(true);
    let output = tokio::time::timeout(GPU_PROBE_TIMEOUT, command.output())
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        return None;
    }
    parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout))
}

/// Parses `nvidia-smi` CSV (one line per GPU), averaging over GPUs.
fn parse_nvidia_smi(text: &str) -> Option<GpuMetrics> {
    let mut gpus = 0.0;
    let (mut percent, mut memory_percent) = (0.0, 0.0);
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<f64> = line
            .split(',')
            .map(|field| field.trim().parse().ok())
            .collect::<Option<_>>()?;
        let [utilisation, used, total] = fields[..] else {
            return None;
        };
        percent += utilisation;
        memory_percent += if total > 0.0 { 100.0 * used / total } else { 0.0 };
        gpus += 1.0;
    }
    (gpus > 0.0).then(|| GpuMetrics {
        percent: percent / gpus,
        memory_percent: memory_percent / gpus,
    })
}

/// Builds this node's health document from a sample and a Redis round trip.
pub fn health_document(
    node_id: &str,
    metrics: &Metrics,
    ping: Option<Duration>,
    options: &HeartbeatOptions,
) -> NodeHealth {
    let mut health = NodeHealth::new(node_id);
    health.cpu_percent = metrics.cpu_percent;
    health.memory_percent = metrics.memory_percent;
    health.disk_percent = metrics.disk_percent;
    health.gpu_available = metrics.gpu.is_some();
    health.gpu_percent = metrics.gpu.map(|gpu| gpu.percent);
    health.gpu_memory_percent = metrics.gpu.map(|gpu| gpu.memory_percent);
    health.ping_latency_ms = ping.map(|rtt| rtt.as_secs_f64() * 1000.0);
    health.mcp_server_running = options.mcp_server_running || options.mcp_port.is_some();
    health.mcp_port = options.mcp_port;
    health.last_heartbeat = Timestamp::now();
    health
}

impl StateManager {
    /// Sends one heartbeat of this node, renews the leases of the sessions this manager
    /// started, and returns what was written.
    ///
    /// # Errors
    ///
    /// Redis could not be reached.
    pub async fn send_heartbeat(&self, sampler: &mut MetricsSampler, options: &HeartbeatOptions) -> Result<NodeHealth> {
        beat(self, sampler, options).await
    }

    /// Runs the heartbeat agent of this node until `shutdown` is cancelled: one beat at once,
    /// then one per interval.
    ///
    /// Failed beats are logged at `warn` once per run of failures and retried at the next interval, so the agent rides
    /// out a Redis restart. On `shutdown` it finishes the beat in flight (if any), then deletes
    /// its heartbeat so that the node shows offline at once rather than for up to the TTL; an
    /// agent that is killed leaves its heartbeat to expire.
    ///
    /// # Errors
    ///
    /// [`crate::Error::PermissionDenied`] at once when the Redis user may not write heartbeats
    /// (a read-only role): retrying cannot succeed, so the agent stops instead of warning every
    /// interval. Every other failure is retried.
    pub async fn heartbeat(&self, options: HeartbeatOptions, shutdown: CancellationToken) -> Result<()> {
        run(self, options, shutdown).await
    }
}

/// See [`StateManager::send_heartbeat`].
async fn beat(manager: &StateManager, sampler: &mut MetricsSampler, options: &HeartbeatOptions) -> Result<NodeHealth> {
    let ping = manager.ping().await?;
    let metrics = sampler.sample().await;
    let health = health_document(manager.node_id().as_str(), &metrics, Some(ping), options);
    manager.update_node_health(&health).await?;
    // A robot that beats is alive: the sessions it started stay live while it is idle.
    manager.renew_session_leases().await?;
    Ok(health)
}

/// How long a stopping agent tries to delete its heartbeat.
const OFFLINE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// See [`StateManager::heartbeat`].
async fn run(manager: &StateManager, options: HeartbeatOptions, shutdown: CancellationToken) -> Result<()> {
    let mut sampler = MetricsSampler::new(&options.disk_path);
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match beat(manager, &mut sampler, &options).await {
            Ok(health) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(node_id = %health.node_id, "heartbeat sent again");
                }
                tracing::debug!(node_id = %health.node_id, cpu = health.cpu_percent, "heartbeat sent");
            }
            Err(err @ crate::Error::PermissionDenied { .. }) => return Err(err),
            // One warning per run of failures: while Redis is down, a line every interval
            // would bury the wait that the daemon logs already.
            Err(err) if failing => tracing::debug!(error = %err, "heartbeat still failing"),
            Err(err) => {
                failing = true;
                tracing::warn!(error = %err, "heartbeat failed; retrying every interval");
            }
        }
    }
    // Bounded: a paused Redis must not hold the exit; the TTL is the fallback.
    match tokio::time::timeout(OFFLINE_DEADLINE, manager.remove_node_health()).await {
        Ok(Ok(())) => tracing::info!(node_id = %manager.node_id(), "heartbeat agent stopped; node marked offline"),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "heartbeat agent stopped; could not mark the node offline, its heartbeat expires by TTL")
        }
        Err(_) => {
            tracing::warn!(deadline = ?OFFLINE_DEADLINE, "heartbeat agent stopped; marking the node offline timed out, its heartbeat expires by TTL")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nvidia-smi CSV is averaged over GPUs; junk gives no GPU.
    #[test]
    fn parses_nvidia_smi() {
        let gpu = parse_nvidia_smi("10, 1000, 4000\n30, 3000, 4000\n").unwrap();
        assert_eq!(
            gpu,
            GpuMetrics {
                percent: 20.0,
                memory_percent: 50.0
            }
        );
        assert_eq!(parse_nvidia_smi(""), None);
        assert_eq!(parse_nvidia_smi("[N/A], 1, 2"), None);
    }

    /// A real sample of this machine is within 0..=100 and finds the root disk.
    #[tokio::test]
    async fn samples_this_machine() {
        let mut sampler = MetricsSampler::new(Path::new("/"));
        let metrics = sampler.sample().await;
        for value in [metrics.cpu_percent, metrics.memory_percent, metrics.disk_percent] {
            assert!((0.0..=100.0).contains(&value), "{metrics:?}");
        }
        assert!(metrics.memory_percent > 0.0, "{metrics:?}");
        assert!(metrics.disk_percent > 0.0, "{metrics:?}");
    }
}

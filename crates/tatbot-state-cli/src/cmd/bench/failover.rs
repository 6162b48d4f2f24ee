//! Section 7, `--only failover`: the time from a kill -9 of the master to the first write
//! acknowledged on the new one, through a [`tatbot_state::Producer`] that finds the master via
//! Sentinel (docs/HA.md).
//!
//! Each run starts its own loopback fleet with the test kit (a primary, a replica and three
//! Sentinels with `down-after-milliseconds 1000`, the shipped value), never touching the
//! operator's server, writes at 1 kHz, kills the primary, queues one more update and waits for
//! its acknowledgement, which only the promoted replica can give. The median of the runs is
//! reported. It is not part of the default run: each run starts five processes and takes about
//! fifteen seconds.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tatbot_state::sentinel::SentinelTarget;
use tatbot_state::{CancellationToken, Endpoint, ManagerConfig, NodeId, ProducerConfig, ProgressUpdate, StateManager};
use tatbot_state_testkit::SentinelCluster;

/// The acceptance target: kill to first acknowledged write, median.
pub const TARGET: Duration = Duration::from_secs(5);
/// Bound on one failover.
const LIMIT: Duration = Duration::from_secs(30);
/// Updates written at 1 kHz before the kill.
const BEFORE_KILL: u32 = 500;

/// Runs `runs` failovers and returns each one's time, in milliseconds.
///
/// # Errors
///
/// A fleet that does not start, or a failover that does not complete within 30 s.
pub async fn measure(runs: usize, shutdown: &CancellationToken) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        if shutdown.is_cancelled() {
            anyhow::bail!("interrupted");
        }
        let cluster = tokio::task::spawn_blocking(|| SentinelCluster::builder().try_start())
            .await
            .context("bug: the fleet start panicked")?
            .context("starting a loopback fleet (primary, replica, three sentinels)")?;
        let elapsed = one(cluster).await?;
        crate::cmd::bench::progress(&format!("  failover {}: {} ms", run + 1, elapsed.as_millis()));
        times.push(elapsed.as_secs_f64() * 1000.0);
    }
    Ok(times)
}

async fn one(mut cluster: SentinelCluster) -> anyhow::Result<Duration> {
    let primary = &cluster.servers()[0];
    let mut config = ManagerConfig::new(
        Endpoint::new(primary.host(), primary.port()),
        NodeId::new("bench-failover").context("bug: invalid node id")?,
    );
    config.sentinel = Some(SentinelTarget {
        sentinels: cluster
            .sentinels()
            .iter()
            .map(|sentinel| Endpoint::new(sentinel.host(), sentinel.port()))
            .collect(),
        master_name: cluster.master_name().to_owned(),
    });
    let old = primary.port();
    let manager = StateManager::connect(config).await?;
    let session = manager
        .start_stroke_session(&tatbot_state::SessionPlan {
            total_strokes: 100,
            stroke_length: 50,
            scene: "bench-failover".into(),
        })
        .await?;
    let producer = manager.producer(ProducerConfig::default(), CancellationToken::new());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..BEFORE_KILL {
        tick.tick().await;
        producer.update_stroke_progress(&session, &ProgressUpdate::new(i / 50, i % 50))?;
    }
    producer.flush(LIMIT).await?;
    let killed = Instant::now();
    cluster.server_mut(old).kill();
    let seq = producer.update_stroke_progress(&session, &ProgressUpdate::new(BEFORE_KILL / 50, BEFORE_KILL % 50))?;
    producer
        .wait_for(seq, LIMIT)
        .await
        .context("waiting for the first write after the kill")?;
    let elapsed = killed.elapsed();
    producer.close(LIMIT).await?;
    drop(manager);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .context("bug: stopping the fleet panicked")?;
    Ok(elapsed)
}

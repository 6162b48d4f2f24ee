//! The doctor's high-availability checks, run only with Sentinel settings (`--sentinel`,
//! `REDIS_SENTINELS`, the YAML's `sentinels`): `sentinels` (each reachable, all naming the same
//! master, `SENTINEL CKQUORUM` passing) before the data checks, which then run against the
//! master the Sentinels name, and `replication` (the master's replicas and their lag) after them.

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;
use tatbot_state::Endpoint;
use tatbot_state::config::SentinelSettings;
use tatbot_state::sentinel;

use crate::cmd::doctor::{NETWORK_TIMEOUT, Report};
use crate::cmd::server::link;

/// A replica further behind than this many bytes is worth a warning.
const LAG_WARN_BYTES: u64 = 1024 * 1024;
/// A replica whose last acknowledgement is older than this (seconds) is worth a warning.
const LAG_WARN_SECONDS: u64 = 2;

/// Asks every Sentinel; returns the master they agree on (with the Redis credentials).
pub async fn sentinels_check(
    settings: &SentinelSettings,
    credentials: &Endpoint,
    report: &mut Report,
) -> Option<Endpoint> {
    let target = settings.target();
    let views = sentinel::inspect(&target, NETWORK_TIMEOUT).await;
    let mut problems = Vec::new();
    let mut masters: BTreeMap<(String, u16), usize> = BTreeMap::new();
    let mut quorum_ok = 0;
    for view in &views {
        match &view.master {
            Ok(Some(master)) => *masters.entry(master.clone()).or_default() += 1,
            Ok(None) => problems.push(format!("{} does not monitor {:?}", view.sentinel, target.master_name)),
            Err(err) => problems.push(format!("{}: {}", view.sentinel, err.report())),
        }
        match &view.quorum {
            Ok(_) => quorum_ok += 1,
            Err(why) if view.master.is_ok() => problems.push(format!("{}: {why}", view.sentinel)),
            Err(_) => {}
        }
    }
    let reachable = views.iter().filter(|view| view.master.is_ok()).count();
    let Some(((host, port), agreeing)) = masters.iter().max_by_key(|(_, count)| **count) else {
        report.fail(
            "sentinels",
            format!("no sentinel names a master: {}", problems.join("; ")),
            "start them with `tatbot-state server sentinel start --monitor HOST:PORT --quorum 2`, and check --master-name (REDIS_MASTER_NAME)",
        );
        return None;
    };
    let detail = format!(
        "{reachable}/{} reachable, {agreeing} name master {} at {host}:{port}, quorum ok on {quorum_ok}",
        views.len(),
        target.master_name
    );
    let master = Endpoint {
        host: host.clone(),
        port: *port,
        ..credentials.clone()
    };
    if masters.len() > 1 {
        report.fail(
            "sentinels",
            format!("{detail}; they disagree: {masters:?}"),
            "a failover may be under way; if it persists, check the sentinels' logs and the network between them",
        );
    } else if quorum_ok == 0 {
        report.fail(
            "sentinels",
            format!("{detail}; {}", problems.join("; ")),
            "too few sentinels agree to fail over: run three, on three machines, with --quorum 2",
        );
    } else if !problems.is_empty() {
        report.warn(
            "sentinels",
            format!("{detail}; {}", problems.join("; ")),
            "a sentinel is down or misconfigured: a second loss would stop failovers",
        );
    } else {
        report.ok("sentinels", detail);
    }
    Some(master)
}

/// The master's replicas and how far each lags.
pub async fn replication_check(connection: &mut MultiplexedConnection, report: &mut Report) {
    let info = match link::info(connection, &["replication"], NETWORK_TIMEOUT).await {
        Ok(info) => info,
        Err(err) => {
            return report.warn(
                "replication",
                format!("INFO replication failed: {}", link::one_line(&err)),
                "the user may lack INFO; check with redis-cli",
            );
        }
    };
    let replication = crate::cmd::server::ha::Replication::from_info(&info);
    if replication.role.as_deref() != Some("master") {
        return report.fail(
            "replication",
            format!(
                "the server the sentinels name is a {}",
                replication.role.unwrap_or_default()
            ),
            "a failover may be under way; run doctor again in a few seconds",
        );
    }
    if replication.replicas.is_empty() {
        return report.warn(
            "replication",
            "the master has no replica: a failover has nothing to promote",
            "start one with `tatbot-state server start --replica-of HOST:PORT` on a second node",
        );
    }
    let lines: Vec<String> = replication
        .replicas
        .iter()
        .map(|replica| {
            format!(
                "{} {} lag {} bytes {} s",
                replica.address,
                replica.state,
                replica.lag_bytes.map_or_else(|| "?".to_owned(), |n| n.to_string()),
                replica.lag_seconds.map_or_else(|| "?".to_owned(), |n| n.to_string())
            )
        })
        .collect();
    let lagging = replication.replicas.iter().any(|replica| {
        replica.state != "online"
            || replica.lag_bytes.is_some_and(|lag| lag > LAG_WARN_BYTES)
            || replica.lag_seconds.is_some_and(|lag| lag > LAG_WARN_SECONDS)
    });
    if lagging {
        report.warn(
            "replication",
            lines.join("; "),
            "a lagging replica loses more in a failover: check the network and the replica's log",
        );
    } else {
        report.ok("replication", lines.join("; "));
    }
}

//! `tatbot-state bench`: latency and throughput, each against a baseline measured in the same
//! run on the same Redis server.
//!
//! These machines are noisy (two cores shared with builds, the robot, the viz), so an absolute
//! figure says little; a ratio against the server's own raw speed, measured minutes apart on
//! the same server, says whether our code adds cost. The sections:
//!
//! 1. Awaited progress update latency against the manager's `PING` (interleaved), against
//!    `redis-benchmark -c 1 -P 1 PING`, against `redis-benchmark -c 1 -P 1` of the very command
//!    an update sends, run after each of five rounds of the updates, and against the same
//!    command from a plain blocking client, interleaved and timed exactly
//!    ([`baseline::PlainClient`]; `redis-benchmark`'s percentiles are 8 us buckets).
//! 2. Sustained updates per second through one [`tatbot_state::Producer`], against
//!    `redis-benchmark -c 1 -P 32` running the very command an update sends (captured with
//!    `MONITOR`), the reference `EVAL` (HSET + XADD + PUBLISH) and `PING`.
//! 3. The time a producer call takes with Redis up, frozen (SIGSTOP, private server only) and
//!    down (nothing listening).
//! 4. Producer-to-subscriber latency at 1 kHz through pub/sub and through the follow API,
//!    against a plain client's `PING` at the same pace (the manager's beside it), a plain
//!    `PUBLISH` to `SUBSCRIBE` and the update's own command from a plain client to a plain
//!    subscriber (the same work without the library), in five rounds.
//! 5. `status` and all-nodes health over 100 to 10,000 sessions ([`scale`]).
//! 6. Peak memory of `mcp --transport http` and `viz` with 100 clients ([`memory`]).
//! 7. Record and replay throughput of one session's history: Redis to MCAP and back
//!    ([`recording`]).
//! 8. MCP over streamable HTTP with rmcp's client: 1,000 sessions at once (initialize,
//!    subscribe, read), and requests on a kept-alive connection ([`mcp`]).
//! 9. Only with `--only failover`: kill -9 of the master to the first write acknowledged on
//!    the new one, through Sentinel, on a loopback fleet of its own ([`failover`]).
//!
//! Each section fills its own struct of figures, and the table prints each section from its
//! struct ([`report`]); `--json` flattens them into one object with the same keys whichever
//! sections ran.
//!
//! By default the bench starts a private `redis-server` (the project's config, AOF on) on a
//! free loopback port and stops it at the end ([`PrivateServer`]). With `-h`/`-p` (and the
//! usual credentials) or `--redis URL` it benches that server instead: it then writes bench
//! sessions and nodes (ids starting with `bench`) and deletes them at the end, and skips the
//! frozen-server case.
//!
//! The measurements run on a runtime of their own with two worker threads, on a thread of
//! their own: a robot's producer writes from a background task while its control loop calls
//! it, and the CLI's single-threaded runtime would hide exactly that contention. Ctrl-C or
//! SIGTERM cancels the run; the private server and the child servers are stopped either way.
//! Every loop is bounded by a count and every wait by a deadline. Figures are never checked
//! by tests: `--quick` (small counts, a few seconds) only proves the benchmark works.

mod baseline;
mod failover;
mod mcp;
mod measure;
mod memory;
mod recording;
mod report;
mod scale;
mod stats;

use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum as _;
use serde::Serialize;
use tatbot_state::{CancellationToken, Endpoint, ManagerConfig, NodeId, StateManager, Wake};
use tokio::sync::oneshot;

use crate::cmd::bench::baseline::RedisBenchmark;
use crate::cmd::bench::measure::{EndToEnd, POLL_INTERVAL, Path};
use crate::cmd::bench::report::{
    AwaitedFigures, CallFigures, E2eFigures, FailoverFigures, Machine, McpFigures, MemoryFigures, RecordFigures,
    Report, StatusFigures, ThroughputFigures, load_average, render,
};
use crate::cmd::bench::stats::{Samples, median};
use crate::ctx::GlobalArgs;
use crate::exit::{self, Coded};
use crate::private_server::{PrivateServer, free_port};
use crate::signal::shutdown_signal;

/// The node id the bench writes as.
const BENCH_NODE: &str = "bench";
/// Worker threads of the measuring runtime: a robot process's loop and its writer.
const WORKER_THREADS: usize = 2;
/// How long a cancelled run gets to stop its servers.
const CANCEL_DEADLINE: Duration = Duration::from_secs(30);
/// Rounds of section 1, each followed by `redis-benchmark` of the same command.
const AWAITED_ROUNDS: usize = 5;

/// Targets of issue #7, each relative to a baseline of the same run where one applies.
mod target {
    /// Record and replay, messages per second of wall time (issue #17).
    pub const RECORD_PER_S: f64 = 100_000.0;
    /// Sustained producer updates/s, at least this times the pipelined limit.
    pub const THROUGHPUT_RATIO: f64 = 0.7;
    /// Awaited update p50, at most this times the manager's `PING` p50.
    pub const AWAITED_RATIO: f64 = 1.3;
    /// Awaited update p50, at most this times `redis-benchmark -c 1 -P 1` of the same command,
    /// and the same command from the plain client (issue #18).
    pub const AWAITED_FLOOR_RATIO: f64 = 1.1;
    /// Producer call p99, microseconds, whether Redis is up, paused or down.
    pub const CALL_P99_US: f64 = 5.0;
    /// Producer-to-subscriber p99, at most this times a plain client's paced `PING` p99.
    pub const E2E_RATIO: f64 = 2.0;
    /// `status` over 1,000 nodes and 10,000 sessions, milliseconds.
    pub const STATUS_MS: f64 = 50.0;
    /// Time growth for ten times the data: linear is 10; the rest is noise allowance.
    pub const GROWTH: f64 = 12.0;
    /// Peak RSS of a server with 100 clients, MiB.
    pub const RSS_MB: f64 = 20.0;
    /// 1,000 MCP sessions opened at once, each subscribed and read, seconds (issue #18).
    pub const MCP_SESSIONS_S: f64 = 10.0;
    /// An MCP request on a kept-alive connection, milliseconds (issue #18).
    pub const MCP_KEPT_ALIVE_MS: f64 = 2.0;
}

/// Flags of `bench`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without -h/-p or --redis, the bench starts a private redis-server on a free loopback \
port and stops it at the end. Against a given server it writes sessions and nodes whose ids start with \
\"bench\" and deletes them at the end: do not run it against the robot's server while the robot works. \
Figures go to stdout (a table, or one JSON object with --json); progress goes to stderr."
)]
pub struct Args {
    /// Bench this Redis instead of a private one: redis://[user[:pass]@]host[:port]
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Small counts, a few seconds: proves the benchmark works; the figures mean little
    #[arg(long)]
    quick: bool,
    /// Run only these sections (comma-separated); the others' figures are null
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SECTION")]
    only: Vec<Section>,
}

/// The sections, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// 1: awaited updates against PING
    Awaited,
    /// 2: producer throughput against redis-benchmark -P 32
    Throughput,
    /// 3: producer call time with Redis up, paused and down
    Calls,
    /// 4: producer to subscriber latency
    E2e,
    /// 5: status and all-nodes health at scale
    Status,
    /// 6: peak memory of mcp and viz with 100 clients
    Memory,
    /// 7: record and replay throughput
    Record,
    /// 8: MCP over HTTP: 1,000 sessions at once, and requests on a kept-alive connection
    Mcp,
    /// 9 (only when named): kill -9 of the master to the first acknowledged write, via Sentinel
    Failover,
}

/// Counts and durations of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Whether this is the `--quick` plan.
    pub quick: bool,
    /// Awaited updates (and `PING`s) not timed before the timed ones.
    pub warmup: usize,
    /// Timed awaited updates (and as many `PING`s).
    pub awaited: usize,
    /// Runs of the throughput measurement and of its pipelined baseline (medians reported).
    pub repeats: usize,
    /// Updates per throughput run.
    pub throughput: usize,
    /// `redis-benchmark -P 1 PING` requests.
    pub ping_requests: u64,
    /// `redis-benchmark -P 32` requests of the update command and of the reference `EVAL`.
    pub pipelined_requests: u64,
    /// `redis-benchmark -P 32 PING` requests.
    pub pipelined_ping_requests: u64,
    /// Producer calls per condition (up, paused, down).
    pub calls: usize,
    /// Updates per end-to-end path, at 1 kHz.
    pub e2e: usize,
    /// Timings per scale step (medians reported).
    pub status_repeats: usize,
    /// Clients per server in the memory section.
    pub clients: usize,
    /// How long the clients follow before memory is read.
    pub hold: Duration,
    /// MCP sessions opened at once.
    pub mcp_sessions: usize,
    /// History entries recorded and replayed per record/replay run.
    pub record_messages: usize,
    /// The sections to run; empty runs them all.
    pub only: Vec<Section>,
}

impl Plan {
    /// Whether `section` runs: every section does unless `--only` named some.
    pub fn runs(&self, section: Section) -> bool {
        // The failover section starts fleets of its own and takes a while: only when named.
        (self.only.is_empty() && section != Section::Failover) || self.only.contains(&section)
    }

    /// Failovers timed (median reported).
    fn failovers(&self) -> usize {
        if self.quick { 1 } else { 3 }
    }

    /// The full run (about two minutes) or the quick one (a few seconds).
    pub fn new(quick: bool) -> Plan {
        if quick {
            return Plan {
                quick,
                warmup: 20,
                awaited: 200,
                repeats: 1,
                throughput: 2_000,
                ping_requests: 2_000,
                pipelined_requests: 5_000,
                pipelined_ping_requests: 20_000,
                calls: 1_000,
                e2e: 200,
                status_repeats: 1,
                clients: 100,
                hold: Duration::from_secs(1),
                mcp_sessions: 50,
                record_messages: 5_000,
                only: Vec::new(),
            };
        }
        Plan {
            quick,
            warmup: 200,
            awaited: 5_000,
            repeats: 3,
            throughput: 50_000,
            ping_requests: 20_000,
            pipelined_requests: 100_000,
            pipelined_ping_requests: 500_000,
            calls: 20_000,
            e2e: 5_000,
            status_repeats: 5,
            clients: 100,
            hold: Duration::from_secs(5),
            mcp_sessions: 1_000,
            record_messages: 100_000,
            only: Vec::new(),
        }
    }
}

/// Which server to bench.
enum Target {
    /// A private `redis-server` started and stopped by the bench.
    Private,
    /// The operator's server.
    Given(Endpoint),
}

/// Runs `bench`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let target = match (&args.redis, global.host.is_some() || global.port.is_some()) {
        (Some(url), _) => Target::Given(global.endpoint_from_url(url)?),
        (None, true) => Target::Given(Endpoint::from(&global.target()?)),
        (None, false) => Target::Private,
    };
    let plan = Plan {
        only: args.only,
        ..Plan::new(args.quick)
    };
    let shutdown = CancellationToken::new();
    let (tx, rx) = oneshot::channel();
    let token = shutdown.clone();
    std::thread::Builder::new()
        .name("bench".to_owned())
        .spawn(move || {
            let outcome = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(bench(target, plan, token)),
                Err(err) => Err(anyhow::Error::new(err).context("starting the measuring runtime")),
            };
            // The receiver is gone only if `run` itself was dropped; nobody is left to tell.
            let _ = tx.send(outcome);
        })
        .context("starting the measuring thread")?;

    tokio::pin!(rx);
    let outcome = tokio::select! {
        outcome = &mut rx => outcome,
        () = shutdown_signal() => {
            eprintln!("bench: interrupted; stopping what it started");
            shutdown.cancel();
            match tokio::time::timeout(CANCEL_DEADLINE, &mut rx).await {
                Ok(_) => return Err(interrupted()),
                Err(_) => anyhow::bail!("bench: the run did not stop within {} s", CANCEL_DEADLINE.as_secs()),
            }
        }
    };
    let report = outcome.context("bug: the measuring thread ended without a result")??;
    if global.json {
        let mut json = serde_json::to_value(&report).context("encoding the report")?;
        round_floats(&mut json);
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&json).context("encoding the report")?
        )?;
    } else {
        crate::out!("{}", render(&report))?;
    }
    if !report.failures.is_empty() {
        return Err(anyhow::Error::new(Coded(
            exit::FAILURE,
            format!(
                "{} bench section(s) failed: {}",
                report.failures.len(),
                report.failures.join("; ")
            ),
        )));
    }
    Ok(exit::SUCCESS)
}

/// Rounds every non-integer number to three decimals (nanoseconds for `_us`, microseconds for
/// `_ms`), below the noise of any figure here.
fn round_floats(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(number) if number.is_f64() => {
            if let Some(rounded) = number
                .as_f64()
                .and_then(|float| serde_json::Number::from_f64((float * 1000.0).round() / 1000.0))
            {
                *number = rounded;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(round_floats),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(round_floats),
        _ => {}
    }
}

fn interrupted() -> anyhow::Error {
    anyhow::Error::new(Coded(
        exit::FAILURE,
        "bench interrupted; everything it started has been stopped".to_owned(),
    ))
}

/// The whole run on the measuring runtime: start the private server if needed, measure,
/// clean up whatever happened.
async fn bench(target: Target, plan: Plan, shutdown: CancellationToken) -> anyhow::Result<Report> {
    let mut report = Report {
        quick: plan.quick,
        machine: Machine::now(),
        sections: Section::value_variants()
            .iter()
            .copied()
            .filter(|section| plan.runs(*section))
            .collect(),
        ..Report::default()
    };
    let (endpoint, private) = match target {
        Target::Given(endpoint) => {
            report.server = "given";
            (endpoint, None)
        }
        Target::Private => {
            report.server = "private";
            let server = tokio::select! {
                server = PrivateServer::start("tatbot-bench-") => server?,
                () = shutdown.cancelled() => return Err(interrupted()),
            };
            progress(&format!(
                "started a private redis-server, pid {}, in {} (stopped and removed at exit)",
                server.pid(),
                server.dir().display()
            ));
            (server.endpoint(), Some(server))
        }
    };
    let outcome = tokio::select! {
        outcome = sections(&endpoint, private.as_ref(), &plan, &mut report, &shutdown) => outcome,
        () = shutdown.cancelled() => Err(interrupted()),
    };
    shutdown.cancel();
    if let Some(server) = private {
        server.stop().await?;
    }
    report.machine.load_end = load_average();
    outcome.map(|()| report)
}

/// Records a section's failure in the report and gives its value otherwise.
fn section<T>(report: &mut Report, name: &str, result: anyhow::Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) => {
            eprintln!("bench: {name} failed: {err:#}");
            report.failures.push(format!("{name}: {err:#}"));
            None
        }
    }
}

/// Rounds of section 4: its baseline and each path take turns, so that all of them share the
/// machine's changes of pace (on these machines a p99 moves by half between minutes).
const E2E_ROUNDS: usize = 5;

/// Section 4 in [`E2E_ROUNDS`] rounds, each measuring every path in turn on `plan.e2e /
/// E2E_ROUNDS` updates: the paced `PING` baselines (the manager's, a plain client's), plain
/// pub/sub, the update's own command from a plain client to a plain subscriber, the producer's
/// pub/sub with each wake policy, and the follow API. A path that fails is reported once and
/// left out of the later rounds.
async fn end_to_end_rounds(
    manager: &StateManager,
    endpoint: &Endpoint,
    plan: &Plan,
    report: &mut Report,
    shutdown: &CancellationToken,
) -> E2eFigures {
    let per_round = plan.e2e.div_ceil(E2E_ROUNDS);
    let producer_paths = [
        ("pub/sub latency", Path::PubSub, Wake::default()),
        ("pub/sub latency, woken by calls", Path::PubSub, Wake::Immediate),
        ("pub/sub latency, polled wake", Path::PubSub, Wake::Poll(POLL_INTERVAL)),
        ("follow latency", Path::Follow, Wake::default()),
    ];
    // The two PING baselines, plain pub/sub, the update's command from a plain client, then
    // the producer's paths in the order above.
    let mut totals: [Option<EndToEnd>; 8] = Default::default();
    totals.iter_mut().for_each(|total| *total = Some(EndToEnd::default()));
    let mut same_work = match measure::IndexedUpdate::capture(endpoint, manager).await {
        Ok(update) => Some(update),
        Err(err) => {
            report.notes.push(format!(
                "could not capture the update command ({err:#}): no same-work path in section 4"
            ));
            totals[3] = None;
            None
        }
    };
    // A round runs (its future is awaited) only while its path has not failed.
    async fn add(
        report: &mut Report,
        name: &str,
        total: &mut Option<EndToEnd>,
        round: impl Future<Output = anyhow::Result<EndToEnd>>,
    ) {
        if let Some(sum) = total {
            match section(report, name, round.await) {
                Some(round) => sum.extend(round),
                None => *total = None,
            }
        }
    }
    for _ in 0..E2E_ROUNDS {
        let [ping, plain_ping, raw, plain_update, producers @ ..] = &mut totals;
        add(report, "paced PING", ping, measure::paced_pings(manager, per_round)).await;
        add(
            report,
            "paced plain PING",
            plain_ping,
            measure::paced_plain_pings(endpoint, per_round),
        )
        .await;
        add(
            report,
            "raw pub/sub latency",
            raw,
            measure::raw_pubsub(endpoint, per_round),
        )
        .await;
        if let Some(update) = &mut same_work {
            let round = measure::plain_update_pubsub(endpoint, update, per_round);
            add(report, "plain update->subscriber", plain_update, round).await;
        }
        for ((name, path, wake), total) in producer_paths.iter().zip(producers) {
            let round = measure::end_to_end(manager, per_round, *path, *wake, shutdown);
            add(report, name, total, round).await;
        }
    }
    if let Some(update) = &same_work {
        update.clear(endpoint, manager).await;
    }
    let mut figures = E2eFigures::default();
    let [ping, plain_ping, raw, plain_update, pubsub, immediate, polled, follow] = &mut totals;
    let percentiles = |total: &mut Option<EndToEnd>| match total {
        Some(total) => (
            total.samples.percentile_us(0.5),
            total.samples.percentile_us(0.99),
            Some(total.missed),
        ),
        None => (None, None, None),
    };
    (figures.e2e_ping_p50_us, figures.e2e_ping_p99_us, _) = percentiles(ping);
    (figures.e2e_plain_ping_p50_us, figures.e2e_plain_ping_p99_us, _) = percentiles(plain_ping);
    (figures.e2e_raw_publish_p50_us, figures.e2e_raw_publish_p99_us, _) = percentiles(raw);
    (
        figures.e2e_plain_update_p50_us,
        figures.e2e_plain_update_p99_us,
        figures.e2e_plain_update_missed,
    ) = percentiles(plain_update);
    (
        figures.e2e_pubsub_p50_us,
        figures.e2e_pubsub_p99_us,
        figures.e2e_pubsub_missed,
    ) = percentiles(pubsub);
    (
        figures.e2e_pubsub_p50_us_immediate,
        figures.e2e_pubsub_p99_us_immediate,
        figures.e2e_pubsub_missed_immediate,
    ) = percentiles(immediate);
    (
        figures.e2e_pubsub_p50_us_polled,
        figures.e2e_pubsub_p99_us_polled,
        figures.e2e_pubsub_missed_polled,
    ) = percentiles(polled);
    (
        figures.e2e_follow_p50_us,
        figures.e2e_follow_p99_us,
        figures.e2e_follow_missed,
    ) = percentiles(follow);
    figures
}

/// Prints a progress line on stderr.
pub(crate) fn progress(text: &str) {
    eprintln!("bench: {text}");
}

async fn sections(
    endpoint: &Endpoint,
    private: Option<&PrivateServer>,
    plan: &Plan,
    report: &mut Report,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let node_id = NodeId::new(BENCH_NODE).context("bug: the bench node id is invalid")?;
    let manager = StateManager::connect(ManagerConfig::new(endpoint.clone(), node_id))
        .await
        .map_err(|err| crate::ctx::connect_error(err, &endpoint.to_string()))?;
    report.redis_version = manager.system_status().await.redis_version;
    match baseline::aof_enabled(endpoint).await {
        Ok(aof) => report.redis_aof = Some(aof),
        Err(err) => report
            .notes
            .push(format!("cannot tell whether the server keeps an AOF: {err:#}")),
    }
    let redis_benchmark = RedisBenchmark::find(endpoint);
    if redis_benchmark.is_none() {
        report
            .notes
            .push("redis-benchmark is not installed (apt-get install redis-tools): no pipelined baselines".to_owned());
    }
    progress(&format!("benching {endpoint} ({} server)", report.server));
    let session = measure::start_session(&manager).await?;
    let mut sessions = vec![session.clone()];

    // The command an update sends, for redis-benchmark and a plain client to repeat in
    // sections 1 and 2.
    let wanted = plan.runs(Section::Awaited) || (plan.runs(Section::Throughput) && redis_benchmark.is_some());
    let command = if wanted {
        match measure::capture_update(endpoint, &manager, &session).await {
            Ok(command) => Some(command),
            Err(err) => {
                report.notes.push(format!(
                    "could not capture the update command with MONITOR ({err:#}): no same-work baseline"
                ));
                None
            }
        }
    } else {
        None
    };

    if plan.runs(Section::Awaited) {
        progress("1/8 awaited updates against PING");
        let mut figures = AwaitedFigures::default();
        // In rounds, each followed by redis-benchmark sending the same command one at a time, so
        // that both are measured in the same stretch of the machine's weather: measured minutes
        // apart, either p50 moved by up to a quarter between runs.
        let mut awaited = measure::Awaited::with_capacity(plan.awaited);
        // The plain client repeats the command on a session of its own: on the manager's, each
        // would find the document the other stored, and the script would merge it every time.
        let mut plain = None;
        if command.is_some() {
            let client = async {
                let own = measure::start_session(&manager).await?;
                sessions.push(own.clone());
                let command = measure::capture_update(endpoint, &manager, &own).await?;
                baseline::PlainClient::connect(endpoint, &command).await
            };
            match client.await {
                Ok(client) => plain = Some(client),
                Err(err) => report.notes.push(format!(
                    "could not start the plain client ({err:#}): no exact same-work baseline"
                )),
            }
        }
        let (mut per_call, mut floors, mut complete) = (Vec::new(), Vec::new(), true);
        for _ in 0..AWAITED_ROUNDS {
            let round = measure::awaited(
                &manager,
                &session,
                plan.warmup,
                plan.awaited / AWAITED_ROUNDS,
                &mut plain,
                &mut awaited,
            );
            // Other clients' EVALSHAs on a given server mix in; on the private one only ours run.
            let (done, server_time) = baseline::evalsha_time(endpoint, round).await;
            if section(report, "awaited", done).is_none() {
                complete = false;
                break;
            }
            per_call.extend(server_time);
            if let (Some(tool), Some(command)) = (&redis_benchmark, &command) {
                let single = tool.run(1, plan.ping_requests / AWAITED_ROUNDS as u64, command).await;
                floors.extend(section(report, "redis-benchmark update command -P 1", single).map(|run| run.p50_us));
            }
        }
        if complete {
            figures.ping_rtt_p50_us = awaited.ping.percentile_us(0.5);
            figures.ping_rtt_p99_us = awaited.ping.percentile_us(0.99);
            figures.update_awaited_p50_us = awaited.update.percentile_us(0.5);
            figures.update_awaited_p99_us = awaited.update.percentile_us(0.99);
            figures.update_awaited_p50_us_waiting = awaited.update_waiting.percentile_us(0.5);
            figures.update_alone_p50_us = awaited.alone.percentile_us(0.5);
            figures.redis_benchmark_update_p50_us = median(&floors);
            if let Some(err) = awaited.plain_failed.take() {
                report
                    .notes
                    .push(format!("the plain client failed ({err}): no exact same-work baseline"));
            } else {
                figures.plain_update_p50_us = awaited.plain.percentile_us(0.5);
            }
            figures.server_update_us = median(&per_call);
        }
        if let Some(tool) = &redis_benchmark {
            let ping = tool.run(1, plan.ping_requests, &["PING".to_owned()]).await;
            if let Some(run) = section(report, "redis-benchmark PING", ping) {
                figures.redis_benchmark_ping_p50_us = Some(run.p50_us);
                figures.redis_benchmark_ping_p99_us = Some(run.p99_us);
            }
        }
        report.awaited = figures;
    }

    if plan.runs(Section::Throughput) {
        progress("2/8 producer throughput against redis-benchmark -P 32");
        let mut figures = ThroughputFigures::default();
        let mut rates = Vec::with_capacity(plan.repeats);
        let mut limits = Vec::with_capacity(plan.repeats);
        let (mut producer_times, mut tool_times) = (Vec::new(), Vec::new());
        for _ in 0..plan.repeats {
            let run = measure::throughput(&manager, &session, plan.throughput, shutdown);
            let (rate, per_call) = baseline::evalsha_time(endpoint, run).await;
            rates.extend(section(report, "throughput", rate));
            producer_times.extend(per_call);
            if let (Some(tool), Some(command)) = (&redis_benchmark, &command) {
                let run = tool.run(32, plan.pipelined_requests, command);
                let (limit, per_call) = baseline::evalsha_time(endpoint, run).await;
                limits.extend(section(report, "redis-benchmark update command", limit).map(|run| run.rps));
                tool_times.extend(per_call);
            }
        }
        figures.server_update_us_producer = median(&producer_times);
        figures.server_update_us_pipelined = median(&tool_times);
        figures.throughput_updates_per_s = median(&rates);
        figures.pipelined_limit_per_s = median(&limits);
        if let Some(tool) = &redis_benchmark {
            let reference = match measure::reference_command(&manager, &session).await {
                Ok(reference) => tool.run(32, plan.pipelined_requests, &reference).await,
                Err(err) => Err(err),
            };
            figures.pipelined_reference_eval_per_s =
                section(report, "redis-benchmark reference EVAL", reference).map(|run| run.rps);
            let ping = tool.run(32, plan.pipelined_ping_requests, &["PING".to_owned()]).await;
            figures.pipelined_ping_per_s = section(report, "redis-benchmark PING -P 32", ping).map(|run| run.rps);
        }
        report.throughput = figures;
    }

    if plan.runs(Section::Calls) {
        progress("3/8 producer call time with Redis up, paused and down");
        if private.is_none() {
            report
                .notes
                .push("paused: skipped, the bench freezes (SIGSTOP) only a server it started itself".to_owned());
        }
        let dead_port = free_port()?;
        let calls = measure::producer_calls(&manager, &session, plan, private, dead_port, shutdown).await;
        let mut figures = CallFigures::default();
        if let Some(mut calls) = section(report, "producer calls", calls) {
            let percentiles = |samples: &mut Samples| {
                (
                    samples.percentile_us(0.5),
                    samples.percentile_us(0.99),
                    samples.percentile_us(0.999),
                )
            };
            (
                figures.producer_call_p50_us_up,
                figures.producer_call_p99_us_up,
                figures.producer_call_p999_us_up,
            ) = percentiles(&mut calls.up);
            figures.producer_wake_anticipated = Some(calls.up_wakes.anticipated);
            figures.producer_wake_missed = Some(calls.up_wakes.missed);
            figures.producer_wake_late = Some(calls.up_wakes.late);
            figures.producer_wake_by_calls = Some(calls.up_wakes.call_wakes);
            figures.producer_cpu_pct_up = Some(calls.cpu_share_up * 100.0);
            figures.producer_cpu_pct_up_immediate = Some(calls.cpu_share_immediate * 100.0);
            figures.producer_cpu_pct_up_polled = Some(calls.cpu_share_polled * 100.0);
            (
                figures.producer_call_p50_us_up_immediate,
                figures.producer_call_p99_us_up_immediate,
                figures.producer_call_p999_us_up_immediate,
            ) = percentiles(&mut calls.up_immediate);
            (
                figures.producer_call_p50_us_up_polled,
                figures.producer_call_p99_us_up_polled,
                figures.producer_call_p999_us_up_polled,
            ) = percentiles(&mut calls.up_polled);
            if let Some(paused) = &mut calls.paused {
                (
                    figures.producer_call_p50_us_paused,
                    figures.producer_call_p99_us_paused,
                    figures.producer_call_p999_us_paused,
                ) = percentiles(paused);
            }
            (
                figures.producer_call_p50_us_down,
                figures.producer_call_p99_us_down,
                figures.producer_call_p999_us_down,
            ) = percentiles(&mut calls.down);
        }
        report.calls = figures;
    }

    if plan.runs(Section::E2e) {
        progress(
            "4/8 producer to subscriber at 1 kHz, in rounds: PING, plain pub/sub, the producer's pub/sub, the follow API",
        );
        report.e2e = end_to_end_rounds(&manager, endpoint, plan, report, shutdown).await;
    }

    if plan.runs(Section::Status) {
        progress("5/8 status and all-nodes health over 100, 1,000 and 10,000 sessions");
        let mut seeded = scale::Seeded::connect(endpoint).await?;
        let steps = scale::measure(&manager, &mut seeded, plan.status_repeats).await;
        let removed = seeded.remove().await;
        let mut figures = StatusFigures::default();
        if let Some(steps) = section(report, "status scale", steps)
            && let [small, medium, large] = steps.as_slice()
        {
            figures.status_10_nodes_100_sessions_ms = Some(small.status_ms);
            figures.status_100_nodes_1000_sessions_ms = Some(medium.status_ms);
            figures.status_1000_nodes_10000_sessions_ms = Some(large.status_ms);
            figures.health_10_nodes_ms = Some(small.health_ms);
            figures.health_100_nodes_ms = Some(medium.health_ms);
            figures.health_1000_nodes_ms = Some(large.health_ms);
            figures.status_growth_100_to_1000 = Some(medium.status_ms / small.status_ms);
            figures.status_growth_1000_to_10000 = Some(large.status_ms / medium.status_ms);
            figures.health_growth_10_to_100 = Some(medium.health_ms / small.health_ms);
            figures.health_growth_100_to_1000 = Some(large.health_ms / medium.health_ms);
        }
        report.status = figures;
        section(report, "removing the seeded sessions", removed);
    }

    if plan.runs(Section::Memory) {
        progress(&format!(
            "6/8 memory of mcp and viz with {} clients following a session",
            plan.clients
        ));
        let memory_session = measure::start_session(&manager).await?;
        sessions.push(memory_session.clone());
        let robot = CancellationToken::new();
        let robot_task = tokio::spawn(measure::run_session(
            manager.clone(),
            memory_session.clone(),
            robot.clone(),
        ));
        let mut figures = MemoryFigures::default();
        for server in [memory::Server::Mcp, memory::Server::Viz] {
            let peak = memory::measure(server, endpoint, &memory_session, plan.clients, plan.hold).await;
            let name = match server {
                memory::Server::Mcp => "mcp memory",
                memory::Server::Viz => "viz memory",
            };
            if let Some(peak) = section(report, name, peak) {
                let (rss, end, idle, anon, anon_idle, connected, updated) = match server {
                    memory::Server::Mcp => (
                        &mut figures.rss_mcp_100_clients_mb,
                        &mut figures.rss_mcp_end_mb,
                        &mut figures.rss_mcp_idle_mb,
                        &mut figures.rss_mcp_anon_mb,
                        &mut figures.rss_mcp_anon_idle_mb,
                        &mut figures.mcp_clients_connected,
                        &mut figures.mcp_clients_updated,
                    ),
                    memory::Server::Viz => (
                        &mut figures.rss_viz_100_clients_mb,
                        &mut figures.rss_viz_end_mb,
                        &mut figures.rss_viz_idle_mb,
                        &mut figures.rss_viz_anon_mb,
                        &mut figures.rss_viz_anon_idle_mb,
                        &mut figures.viz_clients_connected,
                        &mut figures.viz_clients_updated,
                    ),
                };
                *rss = Some(peak.hwm_mb);
                *end = Some(peak.rss_mb);
                *idle = Some(peak.idle_mb);
                *anon = Some(peak.anon_mb);
                *anon_idle = Some(peak.idle_anon_mb);
                *connected = Some(peak.connected);
                *updated = Some(peak.updated);
                if peak.connected < plan.clients {
                    report.notes.push(format!(
                        "{name}: the server accepted {} of {} clients",
                        peak.connected, plan.clients
                    ));
                }
            }
        }
        report.memory = figures;
        robot.cancel();
        let ran = robot_task.await.context("bug: the session task panicked")?;
        section(report, "running the followed session", ran);
    }

    if plan.runs(Section::Record) {
        progress(&format!(
            "7/8 record and replay of {} history entries, {} run(s)",
            plan.record_messages, plan.repeats
        ));
        let mut figures = RecordFigures::default();
        let mut runs = Vec::with_capacity(plan.repeats);
        for _ in 0..plan.repeats {
            let run = recording::measure(
                endpoint,
                private.map(PrivateServer::pid),
                &manager,
                plan.record_messages,
                shutdown,
            )
            .await;
            runs.extend(section(report, "record and replay", run));
        }
        if let Some(first) = runs.first() {
            figures.record_messages = Some(first.messages);
            figures.record_file_bytes = Some(first.file_bytes);
        }
        let rates = |rate: fn(&recording::Run) -> f64| runs.iter().map(rate).collect::<Vec<f64>>();
        figures.record_runs_per_s = rates(|run| run.record.per_s(run.messages));
        figures.replay_runs_per_s = rates(|run| run.replay.per_s(run.messages));
        figures.record_per_s = median(&figures.record_runs_per_s);
        figures.replay_per_s = median(&figures.replay_runs_per_s);
        figures.record_per_cpu_s = median(&rates(|run| run.record.per_cpu_s(run.messages)));
        figures.replay_per_cpu_s = median(&rates(|run| run.replay.per_cpu_s(run.messages)));
        let per_100k = |time: Duration, messages: u64| time.as_secs_f64() * 100_000.0 / messages.max(1) as f64;
        let client = |step: fn(&recording::Run) -> recording::Timing| {
            median(
                &runs
                    .iter()
                    .map(|run| per_100k(step(run).cpu, run.messages))
                    .collect::<Vec<_>>(),
            )
        };
        let server = |step: fn(&recording::Run) -> recording::Timing| {
            median(
                &runs
                    .iter()
                    .filter_map(|run| Some(per_100k(step(run).server_cpu?, run.messages)))
                    .collect::<Vec<_>>(),
            )
        };
        figures.record_client_cpu_s_per_100k = client(|run| run.record);
        figures.record_server_cpu_s_per_100k = server(|run| run.record);
        figures.replay_client_cpu_s_per_100k = client(|run| run.replay);
        figures.replay_server_cpu_s_per_100k = server(|run| run.replay);
        report.record = figures;
    }

    if plan.runs(Section::Mcp) {
        progress(&format!(
            "8/8 mcp over http: {} sessions at once, then requests on a kept-alive connection",
            plan.mcp_sessions
        ));
        let mcp_session = measure::start_session(&manager).await?;
        sessions.push(mcp_session.clone());
        let measured = mcp::measure(endpoint, &mcp_session, plan.mcp_sessions).await;
        let mut figures = McpFigures::default();
        if let Some(measured) = section(report, "mcp sessions", measured) {
            figures.mcp_sessions_started = Some(measured.started);
            figures.mcp_sessions_completed = Some(measured.completed);
            figures.mcp_sessions_wall_ms = Some(measured.wall_ms);
            figures.mcp_session_p50_ms = measured.session_p50_ms;
            figures.mcp_session_p99_ms = measured.session_p99_ms;
            figures.rss_mcp_sessions_mb = measured.peak_rss_mb;
            figures.mcp_ping_p50_ms = measured.ping_p50_ms;
            figures.mcp_ping_p99_ms = measured.ping_p99_ms;
            figures.mcp_rmcp_ping_p50_ms = measured.rmcp_ping_p50_ms;
            figures.mcp_rmcp_ping_p99_ms = measured.rmcp_ping_p99_ms;
            figures.mcp_read_p50_ms = measured.read_p50_ms;
            figures.mcp_read_p99_ms = measured.read_p99_ms;
            if let Some(error) = measured.first_error {
                report.notes.push(format!(
                    "mcp sessions: {} of {} failed; the first: {error}",
                    measured.started - measured.completed,
                    measured.started
                ));
            }
        }
        report.mcp = figures;
    }

    if plan.runs(Section::Failover) {
        progress(&format!(
            "9/9 failover: kill -9 of the master to the first acknowledged write, {} run(s)",
            plan.failovers()
        ));
        let times = failover::measure(plan.failovers(), shutdown).await;
        if let Some(times) = section(report, "failover", times) {
            report.failover = FailoverFigures {
                failover_ms: median(&times),
                failover_runs_ms: times,
            };
        }
    }

    // The bench's own sessions; the event log keeps their events until it is trimmed.
    for session in &sessions {
        let _ = manager.clear_session_data(session).await;
    }
    memory::forget_nodes(endpoint).await;
    Ok(())
}

//! `tatbot-state demo`: the whole system on one machine, checked end to end.
//!
//! Without `--redis` it starts a private `redis-server` (the project's config rendered into a
//! temporary directory, a free loopback port, AOF on) as a child process in its own process
//! group, so a Ctrl-C in the terminal reaches only the demo, which then shuts the server down
//! in order. On that server it runs two heartbeat agents (`demo-robot`, `demo-viz`) and a
//! simulated robot executing a stroke session ([`crate::cmd::simulate::simulate_robot`]) with
//! a live progress bar, tells the operator how to watch from another terminal, and at the end
//! prints a summary of what it checked: the final progress is the last update sent, the
//! history stream holds every update, both demo nodes are online, and every simulated error
//! was stored.
//!
//! With `--chaos` the private server is killed with SIGKILL twice mid-run and restarted on the
//! same port and AOF ([`PrivateServer::crash_and_restart`]); the robot writes through the
//! producer, which replays what the crash lost, so the checks still find the session exact.
//!
//! In a terminal the demo then keeps serving the live viz and the MCP server, with the robot
//! idling (its heartbeats go on), until Ctrl-C, so the operator can look at what it advertised;
//! `--exit`, or a stdout that is not a terminal (scripts, CI), ends it after the checks.
//!
//! Shutdown: one [`CancellationToken`] is cancelled by SIGINT or SIGTERM; every task the demo
//! starts gets a child of it and runs on a [`TaskTracker`]. Whether the demo ends normally,
//! fails or is interrupted, it cancels the tasks, waits for them with a deadline, stops the
//! private server (SIGTERM, which makes Redis flush and exit; SIGKILL after a deadline), reaps
//! it and removes the temporary directory. The child is also `kill_on_drop`, so even an early
//! error return cannot leave a server behind.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tatbot_state::heartbeat::HeartbeatOptions;
use tatbot_state::{CancellationToken, Endpoint, HistoryCursor, ManagerConfig, NodeId, SessionId, StateManager};
use tatbot_state_mcp::{ConfigDescription, ConfigRow, HttpOptions};
use tatbot_state_viz::VizState;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::cmd::server::process;
use crate::cmd::simulate::{self, Plan, Report};
use crate::ctx::GlobalArgs;
use crate::exit::{self, Coded};
use crate::private_server::PrivateServer;
use crate::signal::shutdown_signal;

/// The simulated robot's node id; it also sends heartbeats.
const ROBOT_NODE: &str = "demo-robot";
/// The viz and the MCP server listen on loopback only, on ports the OS picks.
const LOOPBACK_ANY_PORT: (std::net::Ipv4Addr, u16) = (std::net::Ipv4Addr::LOCALHOST, 0);
/// A second node that only sends heartbeats, standing in for the viz.
const VIZ_NODE: &str = "demo-viz";
/// Time between the demo nodes' heartbeats.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long the demo's tasks get to finish after they are cancelled.
const TASKS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long both demo nodes get to show up as online.
const NODES_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `--chaos` looks whether it is time for the next crash.
const CHAOS_POLL: Duration = Duration::from_millis(10);
/// Plain progress lines (when stdout is not a terminal) are printed every this many percent.
const PLAIN_PROGRESS_STEP: u64 = 10;

/// Flags of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use this Redis instead of starting a private one: redis://[user[:pass]@]host[:port]
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// A small plan sent as fast as possible (seconds instead of about 30 s)
    #[arg(long)]
    fast: bool,
    /// Kill -9 the private Redis twice mid-run and restart it (same port, same AOF): the
    /// robot's producer must still store the session exactly
    #[arg(long, conflicts_with = "redis")]
    chaos: bool,
    /// End after the checks even in a terminal (by default a terminal keeps the viz, the MCP
    /// server and the idling robot until Ctrl-C; scripts and CI, not being terminals, end)
    #[arg(long)]
    exit: bool,
}

/// Runs `demo`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal_token.cancel();
    });

    let plan = if args.fast && args.chaos {
        // Paced, so the run lasts long enough (about 1.5 s) for two crashes in the middle.
        Plan {
            error_every: 2,
            ..Plan::new(4, 40, 100.0, "demo")
        }
    } else if args.fast {
        Plan {
            error_every: 2,
            ..Plan::new(3, 4, 0.0, "demo")
        }
    } else {
        Plan {
            error_every: 5,
            ..Plan::new(12, 25, 10.0, "demo")
        }
    };
    let options = Options {
        chaos: args.chaos,
        keep_serving: !args.exit && std::io::stdout().is_terminal(),
    };
    let (endpoint, mut private) = match &args.redis {
        Some(url) => (global.endpoint_from_url(url)?, None),
        None => {
            let server = tokio::select! {
                server = PrivateServer::start("tatbot-demo-") => server?,
                () = shutdown.cancelled() => return Err(interrupted()),
            };
            (server.endpoint(), Some(server))
        }
    };
    let outcome = run_on(&endpoint, private.as_mut(), &plan, options, &shutdown).await;
    if let Some(server) = private {
        let (pid, dir) = (server.pid(), server.dir().display().to_string());
        server.stop().await?;
        eprintln!("demo: stopped the private redis-server (pid {pid}) and removed {dir}");
    }
    outcome
}

fn interrupted() -> anyhow::Error {
    anyhow::Error::new(Coded(
        exit::FAILURE,
        "demo interrupted; everything it started has been stopped".to_owned(),
    ))
}

/// How the demo runs besides its plan.
#[derive(Debug, Clone, Copy)]
struct Options {
    /// Crash and restart the private server twice mid-run.
    chaos: bool,
    /// After the checks, keep serving until Ctrl-C.
    keep_serving: bool,
}

/// Runs the demo on a server that is up, and cleans up its own tasks whatever happens.
async fn run_on(
    endpoint: &Endpoint,
    mut private: Option<&mut PrivateServer>,
    plan: &Plan,
    demo: Options,
    shutdown: &CancellationToken,
) -> anyhow::Result<u8> {
    let robot = connect(endpoint, ROBOT_NODE).await?;
    let viz = connect(endpoint, VIZ_NODE).await?;
    // The live viz and the MCP server, on free loopback ports, reading the same Redis.
    let viz_listener = TcpListener::bind(LOOPBACK_ANY_PORT)
        .await
        .context("binding the live viz")?;
    let mcp_listener = TcpListener::bind(LOOPBACK_ANY_PORT)
        .await
        .context("binding the MCP server")?;
    let viz_addr = viz_listener.local_addr().context("reading the live viz address")?;
    let mcp_addr = mcp_listener.local_addr().context("reading the MCP server address")?;
    print_intro(endpoint, private.as_deref(), plan)?;
    crate::outln!("  live viz   http://{viz_addr}/")?;
    crate::outln!("  MCP server http://{mcp_addr}{}", tatbot_state_mcp::MCP_PATH)?;
    crate::outln!("Ctrl-C stops the demo and everything it started.")?;

    let tracker = TaskTracker::new();
    let tasks = shutdown.child_token();
    let viz_token = tasks.child_token();
    tracker.spawn(async move {
        if let Err(err) = tatbot_state_viz::serve(viz_listener, VizState::new(viz.clone()), viz_token).await {
            tracing::warn!(error = %err, "the demo's live viz stopped");
        }
    });
    let mcp_config = ConfigDescription {
        target: endpoint.to_string(),
        fields: vec![ConfigRow {
            field: "target".to_owned(),
            value: endpoint.to_string(),
            source: "demo".to_owned(),
        }],
    };
    let mcp_reader = connect(endpoint, VIZ_NODE).await?;
    let mcp_token = tasks.child_token();
    tracker.spawn(async move {
        if let Err(err) =
            tatbot_state_mcp::serve_http(mcp_listener, mcp_reader, mcp_config, HttpOptions::default(), mcp_token).await
        {
            tracing::warn!(error = %err, "the demo's MCP server stopped");
        }
    });
    let options = HeartbeatOptions {
        interval: HEARTBEAT_INTERVAL,
        ..HeartbeatOptions::default()
    };
    for manager in [robot.clone(), connect(endpoint, VIZ_NODE).await?] {
        let (options, token) = (options.clone(), tasks.child_token());
        tracker.spawn(async move {
            if let Err(err) = manager.heartbeat(options, token).await {
                tracing::warn!(error = %err, node_id = %manager.node_id(), "the demo's heartbeat stopped");
            }
        });
    }
    tracker.close();

    let sent = AtomicU64::new(0);
    let crashes = AtomicU64::new(0);
    let servers = Servers {
        viz: viz_addr,
        mcp: mcp_addr,
    };
    let simulation = simulate_and_check(&robot, plan, servers, &sent, demo.chaos.then_some(&crashes));
    tokio::pin!(simulation);
    let chaos = async {
        match private.as_deref_mut() {
            Some(server) if demo.chaos => crash_twice(server, &sent, plan.total(), &crashes).await,
            _ => std::future::pending().await,
        }
    };
    tokio::pin!(chaos);
    let mut chaos_done = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut simulation => break outcome,
            crashed = &mut chaos, if !chaos_done => {
                chaos_done = true;
                if let Err(err) = crashed {
                    break Err(err.context("crashing and restarting the private redis-server"));
                }
            }
            () = shutdown.cancelled() => break Err(interrupted()),
        }
    };
    if demo.keep_serving && !shutdown.is_cancelled() {
        crate::outln!("demo: still serving the live viz and the MCP server (the robot idles); Ctrl-C to stop")?;
        shutdown.cancelled().await;
    }
    tasks.cancel();
    if tokio::time::timeout(TASKS_TIMEOUT, tracker.wait()).await.is_err() {
        tracing::warn!("the heartbeat agents did not stop within {} s", TASKS_TIMEOUT.as_secs());
    }
    outcome
}

async fn connect(endpoint: &Endpoint, node: &str) -> anyhow::Result<StateManager> {
    // Both ids are constants that satisfy the id rules.
    let node_id = NodeId::new(node).with_context(|| format!("bug: {node:?} is not a valid node id"))?;
    StateManager::connect(ManagerConfig::new(endpoint.clone(), node_id))
        .await
        .with_context(|| format!("connecting {node} to Redis at {endpoint}"))
}

fn print_intro(endpoint: &Endpoint, private: Option<&PrivateServer>, plan: &Plan) -> std::io::Result<()> {
    let updates = u64::from(plan.strokes) * u64::from(plan.stroke_length);
    let pace = if plan.hz > 0.0 {
        format!("at {} Hz (about {:.0} s)", plan.hz, updates as f64 / plan.hz)
    } else {
        "as fast as Redis acknowledges".to_owned()
    };
    let host = if endpoint.host == "127.0.0.1" {
        String::new()
    } else {
        format!("-h {} ", endpoint.host)
    };
    let auth = if endpoint.password.is_some() {
        "-a PASSWORD "
    } else {
        ""
    };
    let port = endpoint.port;
    crate::outln!("tatbot-state demo")?;
    crate::outln!("  redis      {endpoint}")?;
    if let Some(server) = private {
        crate::outln!(
            "  server     private redis-server, pid {} (AOF on; stopped at exit)",
            server.pid()
        )?;
        crate::outln!("  temp dir   {} (removed at exit)", server.dir().display())?;
    }
    crate::outln!(
        "  nodes      {ROBOT_NODE}, {VIZ_NODE} (heartbeat every {} s)",
        HEARTBEAT_INTERVAL.as_secs()
    )?;
    crate::outln!(
        "  plan       {} strokes x {} poses {pace}, an error every {} strokes",
        plan.strokes,
        plan.stroke_length,
        plan.error_every
    )?;
    crate::outln!("Watch from another terminal:")?;
    crate::outln!("  redis-cli {host}-p {port} {auth}psubscribe 'stroke:events:*'")?;
    crate::outln!("  tatbot-state {host}-p {port} {auth}watch")?;
    crate::outln!("  tatbot-state {host}-p {port} {auth}status")?;
    crate::outln!("  tatbot-state {host}-p {port} {auth}events")?;
    Ok(())
}

/// Kills the private server with SIGKILL and restarts it twice, once a third and once two
/// thirds of the `total` updates are `sent`; counts each in `crashes`.
async fn crash_twice(
    server: &mut PrivateServer,
    sent: &AtomicU64,
    total: u64,
    crashes: &AtomicU64,
) -> anyhow::Result<()> {
    for third in 1..=2 {
        let due = total * third / 3;
        while sent.load(Ordering::Relaxed) < due {
            tokio::time::sleep(CHAOS_POLL).await;
        }
        let (old_pid, at) = (server.pid(), sent.load(Ordering::Relaxed));
        let new_pid = server.crash_and_restart().await?;
        crashes.fetch_add(1, Ordering::Relaxed);
        crate::outln!(
            "chaos: kill -9 redis-server (pid {old_pid}) at {at}/{total} poses; restarted it as pid {new_pid} on the same port and AOF"
        )?;
    }
    Ok(())
}

/// Runs the simulated robot with a progress display, then checks what Redis holds; `sent`
/// follows the updates sent. With `crashes` (`--chaos`), one more check: the robot's producer
/// saw each crash as a restart and replayed what it lost.
async fn simulate_and_check(
    robot: &StateManager,
    plan: &Plan,
    servers: Servers,
    sent: &AtomicU64,
    crashes: Option<&AtomicU64>,
) -> anyhow::Result<u8> {
    let total = u64::from(plan.strokes) * u64::from(plan.stroke_length);
    let mut display = ProgressDisplay::new(total);
    let mut on_update = |_session: &SessionId, done: u64, total: u64| {
        sent.store(done, Ordering::Relaxed);
        display.update(done, total);
    };
    let report = simulate::simulate_robot(robot, plan, &mut on_update).await;
    display.finish();
    let report = report.context("running the simulated robot")?;

    let mut checks = verify(robot, plan, &report).await?;
    checks.extend(check_servers(servers, &report.session_id).await);
    if let Some(crashes) = crashes {
        let crashes = crashes.load(Ordering::Relaxed);
        let restarts = report.producer.as_ref().map_or(0, |stats| stats.restarts);
        checks.push((
            crashes == 2 && restarts >= crashes,
            "chaos",
            format!(
                "{crashes} kill -9s of redis-server; the robot's producer saw {restarts} restarts and stored every update once"
            ),
        ));
    }
    crate::outln!("Checked:")?;
    for (passed, name, detail) in &checks {
        crate::outln!("  {} {name:<9} {detail}", if *passed { "[ok]  " } else { "[FAIL]" })?;
    }
    let seconds = report.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        report.updates_sent as f64 / seconds
    } else {
        0.0
    };
    let failed = checks.iter().filter(|(passed, ..)| !passed).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} demo checks failed (see above)", checks.len());
    }
    crate::outln!(
        "demo: {} updates in {seconds:.1} s ({rate:.1}/s); all checks passed",
        report.updates_sent
    )?;
    Ok(exit::SUCCESS)
}

/// The checks: `(passed, name, detail)` each.
async fn verify(
    robot: &StateManager,
    plan: &Plan,
    report: &Report,
) -> anyhow::Result<Vec<(bool, &'static str, String)>> {
    let session_id = &report.session_id;
    let mut checks = Vec::new();

    let stored = robot
        .get_stroke_progress(session_id)
        .await
        .with_context(|| format!("reading the progress of {session_id}"))?;
    let (last_stroke, last_pose) = (i64::from(plan.strokes) - 1, i64::from(plan.stroke_length) - 1);
    let progress_ok = report.verified
        && stored.as_ref().is_some_and(|progress| {
            progress.stroke_idx == last_stroke && progress.pose_idx == last_pose && !progress.is_executing
        });
    let found = stored.as_ref().map_or_else(
        || "no progress stored".to_owned(),
        |progress| {
            let state = if progress.is_executing {
                "still executing"
            } else {
                "session ended"
            };
            format!("stroke {}, pose {}, {state}", progress.stroke_idx, progress.pose_idx)
        },
    );
    checks.push((
        progress_ok,
        "progress",
        format!("{found} (sent: stroke {last_stroke}, pose {last_pose}, then ended)"),
    ));

    let expected_entries = report.updates_sent;
    let history = robot
        .get_history(
            session_id,
            &HistoryCursor::Start,
            usize::try_from(expected_entries + 1).unwrap_or(usize::MAX),
        )
        .await
        .with_context(|| format!("reading the history of {session_id}"))?;
    let entries = history.len() as u64;
    checks.push((
        entries == expected_entries && expected_entries == u64::from(plan.strokes) * u64::from(plan.stroke_length),
        "history",
        format!(
            "{entries} entries in {} (sent {} x {})",
            tatbot_state::keys::history(session_id),
            plan.strokes,
            plan.stroke_length
        ),
    ));

    let node_ids = [NodeId::new(ROBOT_NODE)?, NodeId::new(VIZ_NODE)?];
    let online = process::poll_until(NODES_TIMEOUT, || async {
        let health = robot.get_nodes_health(&node_ids).await.ok()?;
        health.iter().all(|lookup| lookup.found().is_some()).then_some(())
    })
    .await
    .is_some();
    let status = robot.system_status().await;
    checks.push((
        online && status.redis_connected && status.nodes_online >= node_ids.len(),
        "nodes",
        format!(
            "{ROBOT_NODE} and {VIZ_NODE} {} (system status: {} nodes online)",
            if online { "online" } else { "NOT both online" },
            status.nodes_online
        ),
    ));

    // No errors are reported when `error_every` is 0.
    let expected_errors = plan.strokes.checked_div(plan.error_every).unwrap_or(0);
    let stored_errors = robot
        .list_errors(1000)
        .await
        .context("reading the error log")?
        .into_iter()
        .filter_map(|entry| entry.value.ok())
        .filter(|event| event.details.get("session_id").and_then(|id| id.as_str()) == Some(session_id.as_str()))
        .count() as u64;
    checks.push((
        stored_errors == u64::from(expected_errors),
        "errors",
        format!("{expected_errors} simulated errors reported, {stored_errors} of this session in the error log"),
    ));
    Ok(checks)
}

/// A progress bar on a terminal, otherwise a plain line every [`PLAIN_PROGRESS_STEP`] percent.
struct ProgressDisplay {
    bar: Option<ProgressBar>,
    last_step: u64,
}

impl ProgressDisplay {
    fn new(total: u64) -> ProgressDisplay {
        if !std::io::stdout().is_terminal() {
            return ProgressDisplay {
                bar: None,
                last_step: 0,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
        // The template is a constant; should it ever fail to parse, the default style is fine.
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} robot [{bar:40}] {pos}/{len} poses {per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        ProgressDisplay {
            bar: Some(bar),
            last_step: 0,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let step = done * 100 / total.max(1) / PLAIN_PROGRESS_STEP;
        if step > self.last_step || done == total {
            self.last_step = step;
            // A closed stdout must not stop the demo's servers mid-run; the checks at the end
            // fail on it instead.
            let _ = crate::outln!("progress: {done}/{total} poses ({}%)", done * 100 / total.max(1));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Where the demo's live viz and MCP server listen.
struct Servers {
    viz: std::net::SocketAddr,
    mcp: std::net::SocketAddr,
}

/// Checks that the live viz lists the session and the MCP server answers `initialize`.
async fn check_servers(servers: Servers, session_id: &SessionId) -> Vec<(bool, &'static str, String)> {
    let viz = http(servers.viz, "GET /api/sessions HTTP/1.1", "").await;
    let viz_check = match viz {
        Ok(response) if response.starts_with("HTTP/1.1 200") && response.contains(session_id.as_str()) => (
            true,
            "viz",
            format!("http://{}/api/sessions lists {session_id}", servers.viz),
        ),
        Ok(response) => (false, "viz", format!("unexpected answer: {}", first_line(&response))),
        Err(err) => (false, "viz", format!("no answer: {err:#}")),
    };
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"demo","version":"1"}}}"#;
    let mcp = http(
        servers.mcp,
        &format!("POST {} HTTP/1.1", tatbot_state_mcp::MCP_PATH),
        initialize,
    )
    .await;
    let mcp_check = match mcp {
        Ok(response) if response.starts_with("HTTP/1.1 200") && response.contains("serverInfo") => (
            true,
            "mcp",
            format!(
                "http://{}{} answers initialize",
                servers.mcp,
                tatbot_state_mcp::MCP_PATH
            ),
        ),
        Ok(response) => (false, "mcp", format!("unexpected answer: {}", first_line(&response))),
        Err(err) => (false, "mcp", format!("no answer: {err:#}")),
    };
    vec![viz_check, mcp_check]
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), the whole response as text,
/// within [`TASKS_TIMEOUT`].
async fn http(addr: std::net::SocketAddr, request_line: &str, body: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{request_line}\r\nHost: {addr}\r\nAccept: application/json, text/event-stream\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // An SSE answer may stay open; what arrives before the deadline is enough to check.
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(TASKS_TIMEOUT, exchange)
        .await
        .context("timed out")?
}

//! `tatbot-state server start | stop | status`: run the state server on this host.
//!
//! This replaces the ops doc's "Setup" and "Manage" sections (copy a config to /etc, make
//! directories as root, `redis-server ... --daemonize yes`, `redis-cli shutdown`, `ps | grep`)
//! with three commands that need no root. `start` renders the project's config template
//! ([`conf::TEMPLATE`], embedded in the binary) into one base directory that holds the
//! config, the data, the log and the pid file, daemonizes `redis-server` on it, and returns
//! once the server answers `PING` with its own pid. `stop` sends `SHUTDOWN`, which flushes the
//! AOF, and waits until the process is gone. `status` reports what an operator checks first:
//! pid, uptime, clients, memory, persistence health and the addresses it listens on.
//!
//! The server's password is the resolved one (`-a`, `REDIS_PASSWORD`, env file, YAML), so a
//! node configured to connect can also start, stop and inspect it with the same settings.
//! Loopback is always bound; LAN addresses are bound only when passed with `--bind`.

pub mod aof;
pub mod conf;
pub mod ha;
pub mod link;
pub mod process;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tatbot_state::Endpoint;
use tatbot_state::config;

use crate::cmd::server::conf::{ConfSpec, Layout};
use crate::cmd::server::link::Failure;
use crate::ctx::GlobalArgs;
use crate::exit::{self, Coded};

/// Deadline of one connect or command while probing or inspecting a server.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a starting server gets to load its data and answer `PING` with its pid.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `redis-server` may take to check the config and fork into the background.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `SHUTDOWN` (AOF fsync plus an RDB save) may take before the process is gone.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The line Redis logs once it has bound its ports and loaded its data.
const READY_LOG_LINE: &str = "Ready to accept connections";
/// Log lines shown when a start fails.
const LOG_TAIL_LINES: usize = 4;

/// Flags of `server`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    action: Action,
}

/// The `server` subcommands.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Start redis-server in the background with the project's config; -p is its port, -a its requirepass
    Start(StartArgs),
    /// Shut the server down with SHUTDOWN (flushes the AOF) and wait until it has exited
    Stop(DirArgs),
    /// Show pid, uptime, clients, memory, persistence health, listening addresses, role and replication lag
    Status(DirArgs),
    /// Repair the AOF after a crash by start's rule: cut a write the crash cut short, refuse damage (for a redis-server you run yourself)
    Repair(RepairArgs),
    /// Run a Redis Sentinel that watches the master and promotes a replica when it fails (docs/HA.md)
    Sentinel(ha::SentinelArgs),
}

/// Flags of `server start`.
#[derive(Debug, clap::Args)]
struct StartArgs {
    /// Also listen on this address, e.g. the LAN IP (repeatable; loopback is always bound)
    #[arg(long = "bind", value_name = "ADDR")]
    bind: Vec<IpAddr>,
    /// Base dir for redis.conf, data/, redis.log and redis.pid [default: $XDG_STATE_HOME/tatbot-state, else ~/.local/state/tatbot-state]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Load ACL users from this file (aclfile)
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// A member of a Sentinel-watched fleet: append config/redis/ha.conf (min-replicas-to-write, masterauth)
    #[arg(long)]
    ha: bool,
    /// Start as a replica of this master, HOST:PORT (implies --ha)
    #[arg(long, value_name = "HOST:PORT")]
    replica_of: Option<String>,
}

/// Flags of `server stop` and `server status`.
#[derive(Debug, clap::Args)]
struct DirArgs {
    /// Base dir the server was started with; its pid file tells whether the server is ours [default: as for start]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Flags of `server repair`.
#[derive(Debug, clap::Args)]
struct RepairArgs {
    /// Base dir of a server `start` manages; its data/ is repaired [default: as for start]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The data dir of a redis-server you run yourself (its `dir`, which holds appendonlydir/), instead of --dir
    #[arg(long, value_name = "DIR", conflicts_with = "dir")]
    data: Option<PathBuf>,
}

/// Runs `server`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    match args.action {
        Action::Start(start_args) => start(global, start_args).await,
        Action::Stop(dir_args) => stop(global, dir_args).await,
        Action::Status(dir_args) => status(global, dir_args).await,
        Action::Repair(repair_args) => repair(repair_args).await,
        Action::Sentinel(sentinel_args) => ha::run(global, sentinel_args).await,
    }
}

/// The base dir: `--dir`, else `$XDG_STATE_HOME/tatbot-state`, else `~/.local/state/tatbot-state`,
/// made absolute because Redis resolves relative paths against its own working directory.
pub(crate) fn layout(dir: Option<PathBuf>) -> anyhow::Result<Layout> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    let base = match dir {
        Some(dir) => dir,
        None => match (var("XDG_STATE_HOME"), var("HOME")) {
            (Some(state), _) => state.join("tatbot-state"),
            (None, Some(home)) => home.join(".local/state/tatbot-state"),
            (None, None) => anyhow::bail!("neither XDG_STATE_HOME nor HOME is set: pass the base dir with --dir"),
        },
    };
    let base = std::path::absolute(&base).with_context(|| format!("making {} absolute", base.display()))?;
    Ok(Layout { base })
}

/// What answers on a port.
pub enum Probe {
    /// Nothing: the connection was refused.
    Nothing,
    /// A Redis server; its pid when `INFO` was allowed and it is done loading its data (ready
    /// for commands).
    Redis { pid: Option<u32> },
    /// Something that is not a Redis server we can talk to, and why.
    Other(String),
}

/// Looks at what answers on `endpoint`, authenticating with its credentials.
pub async fn probe(endpoint: &Endpoint) -> Probe {
    let mut connection = match link::connect(endpoint, COMMAND_TIMEOUT).await {
        Ok(connection) => connection,
        Err(err) if err.is_connection_refusal() => return Probe::Nothing,
        Err(err) if link::classify(&err) == Failure::Auth => return Probe::Redis { pid: None },
        Err(err) => return Probe::Other(link::one_line(&err)),
    };
    match link::info(&mut connection, &["server", "persistence"], COMMAND_TIMEOUT).await {
        // Still loading its data (it answers `INFO` meanwhile, other commands with -LOADING):
        // Redis, not ready yet.
        Ok(info) if info.get("loading").is_some_and(|loading| loading == "1") => Probe::Redis { pid: None },
        Ok(info) => Probe::Redis {
            pid: info.get("process_id").and_then(|pid| pid.parse().ok()),
        },
        Err(err) => match link::classify(&err) {
            Failure::Auth | Failure::Permission => Probe::Redis { pid: None },
            // A server still loading its AOF answers -LOADING: it is Redis, just not ready.
            _ if err.code() == Some("LOADING") => Probe::Redis { pid: None },
            _ => Probe::Other(link::one_line(&err)),
        },
    }
}

/// The endpoint a local server is probed on: loopback, which is always bound.
fn loopback(port: u16, username: Option<String>, password: Option<String>) -> Endpoint {
    Endpoint {
        host: "127.0.0.1".to_owned(),
        port,
        username,
        password,
    }
}

/// The summary `start` prints.
#[derive(Debug, Serialize)]
struct Started {
    already_running: bool,
    pid: u32,
    port: u16,
    bind: Vec<String>,
    password: bool,
    conf: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pidfile: PathBuf,
}

async fn start(global: &GlobalArgs, args: StartArgs) -> anyhow::Result<u8> {
    // Only the port and credentials matter here, so the host is never looked up: starting a
    // server must not fail because the configured Redis host does not resolve on this node.
    let target = config::resolve(&global.config_inputs(), &|_| true)?;
    let port = target.port.value;
    let password = target.password.value.clone();
    let layout = layout(args.dir)?;
    let endpoint = loopback(port, target.username.value.clone(), password.clone());
    let acl_file = match &args.acl_file {
        Some(path) => Some(
            std::fs::canonicalize(path)
                .with_context(|| format!("reading --acl-file {}: check the path", path.display()))?,
        ),
        None => None,
    };
    let replica_of = match &args.replica_of {
        Some(text) => Some(ha::parse_host_port(text, "--replica-of")?),
        None => None,
    };
    let bind = conf::bind_addresses(&args.bind);
    let started = |pid: u32, already_running: bool| Started {
        already_running,
        pid,
        port,
        bind: bind.clone(),
        password: password.is_some(),
        conf: layout.conf(),
        data: layout.data(),
        log: layout.log(),
        pidfile: layout.pidfile(),
    };

    if let Some(pid) = process::read_pidfile(&layout.pidfile()).filter(|pid| is_redis_process(*pid)) {
        match probe(&endpoint).await {
            Probe::Redis { pid: Some(answering) } if answering == pid => {
                print_started(global, &started(pid, true))?;
                return Ok(exit::SUCCESS);
            }
            // A Redis that is not ready (still loading its data, or refusing `INFO`): ours when
            // it comes up with our pid, or says so in our log.
            Probe::Redis { pid: None } => {
                let offset = first_log_line_of(&layout.log(), pid);
                let pid = wait_until_ready(&endpoint, &layout, offset).await?;
                print_started(global, &started(pid, true))?;
                return Ok(exit::SUCCESS);
            }
            _ => {}
        }
        anyhow::bail!(
            "a redis-server started from {} is already running (pid {pid}) but not on port {port}: stop it with `tatbot-state server stop --dir {} -p PORT` (its port is in {})",
            layout.base.display(),
            layout.base.display(),
            layout.conf().display()
        );
    }
    match probe(&endpoint).await {
        Probe::Nothing => {}
        Probe::Redis { pid } => {
            let pid = pid.map_or_else(String::new, |pid| format!(" (pid {pid})"));
            anyhow::bail!(
                "port {port} is already served by another redis-server{pid}: stop that one, or pick another port with -p"
            );
        }
        Probe::Other(why) => anyhow::bail!(
            "port {port} on 127.0.0.1 is in use by something that is not a usable redis-server ({why}): pick another port with -p"
        ),
    }

    let binary = process::redis_server_binary()?;
    create_private_dir(&layout.base)?;
    create_private_dir(&layout.data())?;
    let mut text = conf::render(&ConfSpec {
        extra_bind: &args.bind,
        port,
        daemonize: true,
        layout: &layout,
        password: password.as_deref(),
        acl_file: acl_file.as_deref(),
    })?;
    if args.ha || replica_of.is_some() {
        text.push_str(&ha::ha_block(replica_of.as_ref(), password.as_deref()));
    }
    write_private_file(&layout.conf(), &text)?;
    // A pid file left by a crash names a dead process; removing it means any pid file seen
    // from now on is the new server's.
    remove_if_exists(&layout.pidfile())?;
    let log_offset = std::fs::metadata(layout.log()).map_or(0, |meta| meta.len());

    // After a crash the AOF may end inside a script's MULTI block, which Redis 7.0 would keep
    // open and merge with later writes (see `aof`).
    aof::repair_logged(&binary, &layout.data()).await?;
    launch_daemon(&binary, &layout).await?;
    let pid = wait_until_ready(&endpoint, &layout, log_offset).await?;
    print_started(global, &started(pid, false))?;
    Ok(exit::SUCCESS)
}

/// Repairs the AOF under a data dir by the rule `start` follows ([`aof::repair`]), after checking
/// that no process has it open (a running Redis appends to it).
async fn repair(args: RepairArgs) -> anyhow::Result<u8> {
    let data = match args.data {
        Some(data) => std::path::absolute(&data).with_context(|| format!("making {} absolute", data.display()))?,
        None => layout(args.dir)?.data(),
    };
    anyhow::ensure!(
        data.is_dir(),
        "{} is not a directory: pass a server's base dir with --dir, or the data dir of a redis-server you run yourself with --data",
        data.display()
    );
    let manifest = tatbot_state_testkit::aof::manifest(&data);
    let found = manifest.try_exists().with_context(|| {
        format!(
            "cannot look for {} (run as the server's user, or with sudo)",
            manifest.display()
        )
    })?;
    if !found {
        let single = data.join("appendonly.aof");
        anyhow::ensure!(
            !single.exists(),
            "{} is a single-file AOF (Redis 6 or older): this repair reads Redis 7's appendonlydir only; check it with `redis-check-aof {}`",
            single.display(),
            single.display()
        );
        println!("no AOF manifest at {}: nothing to repair", manifest.display());
        return Ok(exit::SUCCESS);
    }
    let aof_dir = manifest.parent().unwrap_or(&data);
    let holder = process::holder_of(aof_dir).with_context(|| {
        format!(
            "cannot tell whether a process has the AOF in {} open (run as the server's user, or with sudo)",
            aof_dir.display()
        )
    })?;
    match holder {
        process::Holder::Nobody => {}
        process::Holder::Process(pid, name) => anyhow::bail!(
            "process {pid} ({name}) has the AOF in {} open: stop it first (`tatbot-state server stop`, or SHUTDOWN for a redis-server), then repair",
            aof_dir.display()
        ),
        process::Holder::Unseen(pid) => anyhow::bail!(
            "redis-server {pid} belongs to another user, so whether it has the AOF in {} open cannot be seen: stop it, or run this as root",
            aof_dir.display()
        ),
    }
    let binary = process::redis_server_binary()?;
    match aof::repair(&binary, &data).await? {
        aof::Repair::Intact => println!("the AOF in {} ends with a whole write: nothing to cut", data.display()),
        aof::Repair::Cut { said } => {
            println!(
                "the AOF in {} ended inside a write (a crash); cut it back to the last whole write: {said}",
                data.display()
            );
        }
    }
    Ok(exit::SUCCESS)
}

/// Runs `redis-server CONF` and waits for it to fork into the background; config errors
/// surface here, since Redis checks the config before forking.
async fn launch_daemon(binary: &Path, layout: &Layout) -> anyhow::Result<()> {
    let launch = tokio::process::Command::new(binary)
        .arg(layout.conf())
        .current_dir(&layout.base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LAUNCH_TIMEOUT, launch)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{} did not fork into the background within {} s: see {}",
                binary.display(),
                LAUNCH_TIMEOUT.as_secs(),
                layout.log().display()
            )
        })?
        .with_context(|| format!("running {}: check that it is executable", binary.display()))?;
    if !output.status.success() {
        let mut said = String::from_utf8_lossy(&output.stderr).into_owned();
        said.push_str(&String::from_utf8_lossy(&output.stdout));
        let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
        anyhow::bail!(
            "redis-server refused {} ({}): {said}",
            layout.conf().display(),
            output.status
        );
    }
    Ok(())
}

/// Waits until the daemon answers `PING` with its own pid; returns the pid.
///
/// The daemon's pid comes from the pid file or, before Redis writes that (it does so only
/// after binding its ports), from the `PID:M` prefix of its log lines; a pid that dies means
/// the start failed, and the log says why.
async fn wait_until_ready(endpoint: &Endpoint, layout: &Layout, log_offset: u64) -> anyhow::Result<u32> {
    let outcome = process::poll_until(STARTUP_TIMEOUT, || async {
        let log = read_from(&layout.log(), log_offset);
        let pid = process::read_pidfile(&layout.pidfile()).or_else(|| daemon_pid_from_log(&log))?;
        if !process::is_alive(pid) {
            return Some(Err(pid));
        }
        match probe(endpoint).await {
            Probe::Redis { pid: Some(answering) } if answering == pid => Some(Ok(pid)),
            // INFO refused (an ACL file without a usable default user): trust our own log.
            Probe::Redis { pid: None } if log.contains(READY_LOG_LINE) => Some(Ok(pid)),
            _ => None,
        }
    })
    .await;
    match outcome {
        Some(Ok(pid)) => Ok(pid),
        Some(Err(pid)) => anyhow::bail!(
            "redis-server (pid {pid}) exited during startup: {} (log {})",
            process::log_tail(&layout.log(), LOG_TAIL_LINES),
            layout.log().display()
        ),
        None => anyhow::bail!(
            "redis-server did not answer PING on port {} within {} s: {} (log {})",
            endpoint.port,
            STARTUP_TIMEOUT.as_secs(),
            process::log_tail(&layout.log(), LOG_TAIL_LINES),
            layout.log().display()
        ),
    }
}

/// Where the log lines of the daemon `pid` (`PID:M` ...) start in the log at `path`; 0 when
/// there are none.
fn first_log_line_of(path: &Path, pid: u32) -> u64 {
    let data = std::fs::read(path).unwrap_or_default();
    let prefix = format!("{pid}:");
    let mut offset = 0;
    for line in data.split_inclusive(|byte| *byte == b'\n') {
        if line.starts_with(prefix.as_bytes()) {
            return u64::try_from(offset).unwrap_or(0);
        }
        offset += line.len();
    }
    0
}

/// The pid of the last `PID:M` (main process) log line, i.e. the daemon after the fork.
fn daemon_pid_from_log(log: &str) -> Option<u32> {
    log.lines()
        .rev()
        .find_map(|line| line.split_once(":M ").and_then(|(pid, _)| pid.trim().parse().ok()))
}

/// The text of `path` from byte `offset` on (all of it if the file shrank).
fn read_from(path: &Path, offset: u64) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .ok()
        .filter(|start| *start <= data.len())
        .unwrap_or(0);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// Whether `pid` is alive and, where `/proc` tells, a redis-server (pids get reused).
fn is_redis_process(pid: u32) -> bool {
    process::is_alive(pid) && process::cmdline(pid).is_none_or(|cmdline| cmdline.contains("redis-server"))
}

pub(crate) fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}: pick a writable base dir with --dir", path.display()))
}

/// Writes a file only its owner can read: it may hold `requirepass`.
pub(crate) fn write_private_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}: pick a writable base dir with --dir", path.display()))?;
    // `mode` only applies to new files; an older config may have been readable by others.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}: is the disk full?", path.display()))
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => {
            Err(err).with_context(|| format!("removing the stale pid file {}: remove it by hand", path.display()))
        }
    }
}

fn print_started(global: &GlobalArgs, started: &Started) -> anyhow::Result<()> {
    if global.json {
        return print_json(started);
    }
    let port = started.port;
    let mut out = String::new();
    let what = if started.already_running {
        "is already running"
    } else {
        "started"
    };
    let _ = writeln!(
        out,
        "redis-server {what}: pid {}, port {port}, listening on {}",
        started.pid,
        started.bind.join(" ")
    );
    let _ = writeln!(out, "  config  {}", started.conf.display());
    let _ = writeln!(out, "  data    {} (AOF, fsync every second)", started.data.display());
    let _ = writeln!(out, "  log     {}", started.log.display());
    let _ = writeln!(out, "  pid     {}", started.pidfile.display());
    let auth = if started.password { " -a PASSWORD" } else { "" };
    let _ = writeln!(out, "connect: redis-cli -p {port}{auth} ping");
    let _ = writeln!(out, "         tatbot-state -p {port} doctor");
    for lan in started.bind.iter().filter(|address| !link::is_loopback_bind(address)) {
        let _ = writeln!(out, "nodes:   export REDIS_HOST={lan} REDIS_PORT={port}");
    }
    let _ = writeln!(
        out,
        "stop:    tatbot-state server stop -p {port} --dir {}",
        shell_word(&started.conf)
    );
    crate::out!("{out}")?;
    Ok(())
}

/// The directory of `conf` for a copy-pasteable command line, quoted when it needs to be.
fn shell_word(conf: &Path) -> String {
    let dir = conf.parent().unwrap_or(conf).display().to_string();
    if dir.chars().all(|c| c.is_ascii_alphanumeric() || "/._-~".contains(c)) {
        dir
    } else {
        format!("'{}'", dir.replace('\'', r"'\''"))
    }
}

pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    crate::outln!("{text}")?;
    Ok(())
}

/// Whether `host` names this machine's loopback, where a pid from `INFO` is a local process.
fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn stop(global: &GlobalArgs, args: DirArgs) -> anyhow::Result<u8> {
    let target = global.target()?;
    let endpoint = Endpoint::from(&target);
    let layout = layout(args.dir)?;
    let mut connection = link::connect(&endpoint, COMMAND_TIMEOUT)
        .await
        .map_err(|err| link::to_error(&err, &endpoint, "cannot stop redis-server: no connection"))?;
    let pid = link::info(&mut connection, &["server"], COMMAND_TIMEOUT)
        .await
        .ok()
        .and_then(|info| info.get("process_id").and_then(|pid| pid.parse::<u32>().ok()));
    // Redis answers a successful SHUTDOWN by closing the connection, so a dropped
    // connection is success and a reply is a refusal.
    match link::call::<redis::Value>(&mut connection, &redis::cmd("SHUTDOWN"), SHUTDOWN_TIMEOUT).await {
        Ok(reply) => {
            anyhow::bail!("redis-server at {endpoint} answered SHUTDOWN with {reply:?} instead of exiting: see its log")
        }
        Err(err) if err.is_timeout() => {
            anyhow::bail!(
                "redis-server at {endpoint} did not finish SHUTDOWN within {} s: see its log",
                SHUTDOWN_TIMEOUT.as_secs()
            )
        }
        Err(err) if link::classify(&err) != Failure::Unreachable => {
            return Err(link::to_error(&err, &endpoint, "redis-server refused SHUTDOWN"));
        }
        Err(_) => {}
    }
    drop(connection);
    let ours = pid.is_some() && process::read_pidfile(&layout.pidfile()) == pid;
    let gone = match pid {
        Some(pid) if ours || is_loopback_host(&endpoint.host) => process::wait_for_exit(pid, SHUTDOWN_TIMEOUT).await,
        // A remote server: wait until its port stops answering.
        _ => process::poll_until(SHUTDOWN_TIMEOUT, || async {
            matches!(probe(&endpoint).await, Probe::Nothing).then_some(())
        })
        .await
        .is_some(),
    };
    if !gone {
        anyhow::bail!(
            "redis-server at {endpoint} accepted SHUTDOWN but is still running after {} s: see its log",
            SHUTDOWN_TIMEOUT.as_secs()
        );
    }
    let pid_text = pid.map_or_else(String::new, |pid| format!(" (pid {pid})"));
    if global.json {
        print_json(&serde_json::json!({ "stopped": true, "pid": pid, "address": endpoint.to_string() }))?;
    } else {
        crate::outln!("redis-server{pid_text} at {endpoint} stopped; its AOF was flushed to disk")?;
    }
    Ok(exit::SUCCESS)
}

/// What `status` reports.
#[derive(Debug, Serialize)]
struct ServerStatus {
    address: String,
    pid: Option<u32>,
    ours: bool,
    version: Option<String>,
    uptime_seconds: Option<u64>,
    config_file: Option<String>,
    connected_clients: Option<u64>,
    used_memory: Option<u64>,
    used_memory_human: Option<String>,
    aof_enabled: bool,
    appendfsync: Option<String>,
    aof_last_write_status: Option<String>,
    aof_last_bgrewrite_status: Option<String>,
    aof_rewrite_in_progress: bool,
    rdb_last_bgsave_status: Option<String>,
    rdb_changes_since_last_save: Option<u64>,
    rdb_last_save_time: Option<i64>,
    bind: Vec<String>,
    port: Option<u16>,
    protected_mode: Option<String>,
    data_dir: Option<String>,
    logfile: Option<String>,
    replication: ha::Replication,
}

async fn status(global: &GlobalArgs, args: DirArgs) -> anyhow::Result<u8> {
    let target = global.target()?;
    let endpoint = Endpoint::from(&target);
    let layout = layout(args.dir)?;
    let mut connection = link::connect(&endpoint, COMMAND_TIMEOUT).await.map_err(|err| {
        if link::classify(&err) == Failure::Unreachable {
            let message = format!(
                "no redis-server answers at {endpoint} ({}): start it with `tatbot-state server start`",
                link::one_line(&err)
            );
            return anyhow::Error::new(Coded(exit::UNREACHABLE, message));
        }
        link::to_error(&err, &endpoint, "cannot read the server status")
    })?;
    let info = link::info(
        &mut connection,
        &["server", "clients", "memory", "persistence", "replication"],
        COMMAND_TIMEOUT,
    )
    .await
    .map_err(|err| link::to_error(&err, &endpoint, "INFO failed"))?;
    // CONFIG is often denied to ACL users; what it would show is then left out.
    let mut settings = BTreeMap::new();
    for name in ["appendfsync", "bind", "port", "protected-mode", "dir", "logfile"] {
        if let Ok(Some(value)) = link::config_get(&mut connection, name, COMMAND_TIMEOUT).await {
            settings.insert(name, value);
        }
    }
    let text = |field: &str| info.get(field).cloned();
    let number = |field: &str| info.get(field).and_then(|value| value.parse::<u64>().ok());
    let pid = number("process_id").and_then(|pid| u32::try_from(pid).ok());
    let report = ServerStatus {
        address: endpoint.to_string(),
        pid,
        ours: pid.is_some() && process::read_pidfile(&layout.pidfile()) == pid,
        version: text("redis_version"),
        uptime_seconds: number("uptime_in_seconds"),
        config_file: text("config_file").filter(|file| !file.is_empty()),
        connected_clients: number("connected_clients"),
        used_memory: number("used_memory"),
        used_memory_human: text("used_memory_human"),
        aof_enabled: text("aof_enabled").as_deref() == Some("1"),
        appendfsync: settings.get("appendfsync").cloned(),
        aof_last_write_status: text("aof_last_write_status"),
        aof_last_bgrewrite_status: text("aof_last_bgrewrite_status"),
        aof_rewrite_in_progress: text("aof_rewrite_in_progress").as_deref() == Some("1"),
        rdb_last_bgsave_status: text("rdb_last_bgsave_status"),
        rdb_changes_since_last_save: number("rdb_changes_since_last_save"),
        rdb_last_save_time: info.get("rdb_last_save_time").and_then(|value| value.parse().ok()),
        bind: settings
            .get("bind")
            .map(|bind| bind.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        port: settings.get("port").and_then(|port| port.parse().ok()),
        protected_mode: settings.get("protected-mode").cloned(),
        data_dir: settings.get("dir").cloned(),
        logfile: settings.get("logfile").cloned().filter(|file| !file.is_empty()),
        replication: ha::Replication::from_info(&info),
    };
    if global.json {
        print_json(&report)?;
    } else {
        crate::out!("{}", status_text(&report))?;
    }
    Ok(exit::SUCCESS)
}

fn status_text(report: &ServerStatus) -> String {
    let unknown = || "?".to_owned();
    let mut out = String::new();
    let pid = report.pid.map_or_else(unknown, |pid| pid.to_string());
    let uptime = report.uptime_seconds.map_or_else(unknown, format_uptime);
    let ours = if report.ours {
        ", started from this base dir"
    } else {
        ""
    };
    let version = report.version.clone().unwrap_or_else(unknown);
    let _ = writeln!(
        out,
        "redis-server {version} at {}: pid {pid}, up {uptime}{ours}",
        report.address
    );
    let bind = if report.bind.is_empty() {
        unknown()
    } else {
        report.bind.join(" ")
    };
    let port = report.port.map_or_else(unknown, |port| port.to_string());
    let protected = report.protected_mode.clone().unwrap_or_else(unknown);
    let _ = writeln!(out, "  listens   {bind} port {port} (protected-mode {protected})");
    let clients = report.connected_clients.map_or_else(unknown, |n| n.to_string());
    let _ = writeln!(out, "  clients   {clients} connected");
    out.push_str(&report.replication.text());
    let _ = writeln!(
        out,
        "  memory    {} used",
        report.used_memory_human.clone().unwrap_or_else(unknown)
    );
    let aof = if report.aof_enabled {
        format!(
            "on, appendfsync {}, last write {}, last rewrite {}{}",
            report.appendfsync.clone().unwrap_or_else(unknown),
            report.aof_last_write_status.clone().unwrap_or_else(unknown),
            report.aof_last_bgrewrite_status.clone().unwrap_or_else(unknown),
            if report.aof_rewrite_in_progress {
                " (rewrite in progress)"
            } else {
                ""
            },
        )
    } else {
        "OFF: writes are lost when the server stops (start it with `tatbot-state server start`)".to_owned()
    };
    let _ = writeln!(out, "  aof       {aof}");
    let _ = writeln!(
        out,
        "  rdb       last save {}, {} changes since",
        report.rdb_last_bgsave_status.clone().unwrap_or_else(unknown),
        report
            .rdb_changes_since_last_save
            .map_or_else(unknown, |n| n.to_string())
    );
    let _ = writeln!(out, "  data dir  {}", report.data_dir.clone().unwrap_or_else(unknown));
    let _ = writeln!(
        out,
        "  log       {}",
        report.logfile.clone().unwrap_or_else(|| "(stdout)".to_owned())
    );
    let _ = writeln!(
        out,
        "  config    {}",
        report.config_file.clone().unwrap_or_else(|| "(none)".to_owned())
    );
    out
}

/// `3d 4h`, `2h 5m`, `7m 12s` or `40s`.
fn format_uptime(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m {secs}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's pid is taken from its main-process log lines, not the launcher's.
    #[test]
    fn daemon_pid_comes_from_main_log_lines() {
        let log = "100:C 25 Nov 2026 17:00:00.000 # oO0OoO0OoO0Oo Redis is starting\n\
                   101:C 25 Nov 2026 17:00:00.001 * Redis version=7.0.15\n\
                   101:M 25 Nov 2026 17:00:00.002 # Warning: Could not create server TCP listening socket\n";
        assert_eq!(daemon_pid_from_log(log), Some(101));
        assert_eq!(daemon_pid_from_log("100:C 25 Nov * starting\n"), None);
    }

    /// Uptimes are shown in their two largest units.
    #[test]
    fn uptime_format() {
        assert_eq!(format_uptime(40), "40s");
        assert_eq!(format_uptime(432), "7m 12s");
        assert_eq!(format_uptime(7500), "2h 5m");
        assert_eq!(format_uptime(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
    }
}

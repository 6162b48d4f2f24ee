//! `tatbot-state doctor`: the ops doc's "Troubleshooting" section as checks.
//!
//! Each check prints one line: a verdict (`[ok]`, `[warn]`, `[FAIL]`, `[skip]`), its name, what
//! it found, and on a warning or failure a hint saying what to do. The checks run in the
//! order a person would debug by hand: where the settings come from, whether the host
//! resolves (and whether the node inventory stood in for DNS, i.e. HOME mode), TCP, the
//! credentials, PING and its latency, the server's version, persistence, exposure, clock skew
//! and a pub/sub round trip. When a step that later ones depend on fails, the later ones are
//! printed as `[skip]` so the output always has the same shape.
//!
//! Nothing here can hang: the DNS lookup runs on a thread of its own with a deadline, and every
//! network step has a timeout. The exit code is 0 when nothing failed (warnings allowed) and 1
//! otherwise.

mod ha;

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tatbot_state::Endpoint;
use tatbot_state::config::{self, ConfigError, RedisTarget};

use crate::cmd::server::link::{self, Failure};
use crate::ctx::GlobalArgs;
use crate::exit;

/// Every check, in the order they run and print.
const CHECKS: [&str; 11] = [
    "config",
    "resolve",
    "tcp",
    "auth",
    "ping",
    "latency",
    "version",
    "persistence",
    "exposure",
    "clock",
    "pubsub",
];
/// Deadline of the TCP connect and of each Redis command.
pub(crate) const NETWORK_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of the host name lookup (the system resolver has no timeout of its own).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// PINGs whose median is the reported latency.
const LATENCY_PINGS: usize = 5;
/// A median PING above this is worth a warning on a LAN.
const LATENCY_WARN: Duration = Duration::from_millis(50);
/// Clock skew between this node and Redis above which timestamps disagree visibly.
const SKEW_WARN_SECS: f64 = 0.5;
/// The oldest major version the library works with (it speaks RESP3 via `HELLO`).
const MIN_MAJOR_VERSION: u32 = 6;
/// The address shown in hints: the node that normally runs Redis.
const EXAMPLE_IP: &str = "192.168.1.97";

/// Flags of `doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "[ok]",
            Verdict::Warn => "[warn]",
            Verdict::Fail => "[FAIL]",
            Verdict::Skip => "[skip]",
        }
    }
}

/// One printed line.
#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    verdict: Verdict,
    detail: String,
    hint: Option<String>,
}

/// The checks so far.
#[derive(Debug, Default)]
pub(crate) struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, check: &'static str, verdict: Verdict, detail: impl Into<String>, hint: Option<String>) {
        self.checks.push(Check {
            check,
            verdict,
            detail: detail.into(),
            hint,
        });
    }

    fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(check, Verdict::Ok, detail, None);
    }

    fn warn(&mut self, check: &'static str, detail: impl Into<String>, hint: impl Into<String>) {
        self.push(check, Verdict::Warn, detail, Some(hint.into()));
    }

    fn fail(&mut self, check: &'static str, detail: impl Into<String>, hint: impl Into<String>) {
        self.push(check, Verdict::Fail, detail, Some(hint.into()));
    }

    fn skip(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(check, Verdict::Skip, detail, None);
    }

    /// Marks every check that has not run yet as skipped, because of `reason`.
    fn skip_rest(&mut self, reason: &str) {
        for name in CHECKS {
            if !self.checks.iter().any(|check| check.check == name) {
                self.skip(name, format!("skipped: {reason}"));
            }
        }
    }

    fn failed(&self) -> bool {
        self.checks.iter().any(|check| check.verdict == Verdict::Fail)
    }
}

/// Runs `doctor`.
pub async fn run(global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    let mut report = Report::default();
    diagnose(global, &mut report).await;
    report.skip_rest("an earlier check failed");
    if global.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report.checks)?)?;
    } else {
        crate::out!("{}", render(&report))?;
    }
    Ok(if report.failed() { exit::FAILURE } else { exit::SUCCESS })
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    for check in &report.checks {
        let _ = write!(out, "{:<6} {:<11} {}", check.verdict.label(), check.check, check.detail);
        if let Some(hint) = &check.hint {
            let _ = write!(out, "; hint: {hint}");
        }
        out.push('\n');
    }
    let count = |verdict| report.checks.iter().filter(|check| check.verdict == verdict).count();
    let _ = writeln!(
        out,
        "doctor: {} ok, {} warn, {} failed, {} skipped",
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail),
        count(Verdict::Skip)
    );
    out
}

/// Runs the checks in order, returning at the first one that later checks depend on.
async fn diagnose(global: &GlobalArgs, report: &mut Report) {
    let inputs = global.config_inputs();
    // Layering without DNS first, so that a bad setting and an unknown host are told apart.
    match config::resolve(&inputs, &|_| true) {
        Ok(target) => report.ok("config", config_detail(&target)),
        Err(err) => {
            return report.fail(
                "config",
                err.to_string(),
                "fix the file or variable named above; `tatbot-state config` shows where each value comes from",
            );
        }
    }
    let sentinel = match global.sentinel() {
        Ok(sentinel) => sentinel,
        Err(err) => {
            return report.fail(
                "config",
                format!("{err:#}"),
                "fix the sentinel setting named above; `tatbot-state config` shows where it comes from",
            );
        }
    };
    let Some(target) = resolve_check(inputs, report).await else {
        return;
    };
    let mut endpoint = Endpoint::from(&target);
    if let Some(settings) = &sentinel {
        // The data checks run against the master the Sentinels name.
        match ha::sentinels_check(settings, &endpoint, report).await {
            Some(master) => endpoint = master,
            None => return,
        }
    }
    if !tcp_check(&endpoint, report).await {
        return;
    }
    let Some(mut session) = auth_check(&endpoint, report).await else {
        return;
    };
    if !ping_check(&endpoint, &mut session.connection, report).await {
        return;
    }
    latency_check(&mut session.connection, report).await;
    let info = version_check(&mut session.connection, report).await;
    persistence_check(&mut session.connection, info.as_ref(), report).await;
    exposure_check(&mut session.connection, session.password_required, report).await;
    clock_check(&mut session.connection, report).await;
    pubsub_check(&session.endpoint, &mut session.connection, report).await;
    if sentinel.is_some() {
        ha::replication_check(&mut session.connection, report).await;
    }
}

/// `host X (source), port ... ; conf dir ...; env file ...` from the resolved rows.
fn config_detail(target: &RedisTarget) -> String {
    let rows = target.describe();
    let mut fields = Vec::new();
    let mut places = Vec::new();
    for (field, value, source) in rows {
        match field {
            "connect" => {}
            "conf dir" | "env file" => places.push(format!("{field} {value}")),
            _ => fields.push(format!("{field} {} ({source})", value.trim_matches(['(', ')']))),
        }
    }
    format!("{}; {}", fields.join(", "), places.join(", "))
}

/// Resolves the host for real, on a thread with a deadline because the system resolver can
/// block for a long time. Returns the target when the host (or the inventory) gave an address.
async fn resolve_check(inputs: config::ConfigInputs, report: &mut Report) -> Option<RedisTarget> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread rather than `spawn_blocking`: the runtime waits for blocking tasks when
    // it shuts down, and a lookup that never returns must not keep the process alive.
    std::thread::spawn(move || {
        let looked_up = Cell::new(false);
        let lookup = |host: &str| {
            looked_up.set(true);
            config::resolve_host_system(host)
        };
        let result = config::resolve(&inputs, &lookup);
        // The receiver is gone only when the deadline passed; nobody wants the answer then.
        let _ = tx.send((result, looked_up.get()));
    });
    let Ok(Ok((result, looked_up))) = tokio::time::timeout(LOOKUP_TIMEOUT, rx).await else {
        report.fail(
            "resolve",
            format!(
                "looking up the Redis host took longer than {} s",
                LOOKUP_TIMEOUT.as_secs()
            ),
            format!("DNS is not answering: set REDIS_HOST to the Redis IP, e.g. export REDIS_HOST={EXAMPLE_IP}"),
        );
        return None;
    };
    match result {
        Ok(target) => {
            let host = &target.host.value;
            let detail = match &target.inventory_fallback {
                Some(fallback) => format!(
                    "{} does not resolve; the node inventory {} gives {} (HOME mode)",
                    fallback.name,
                    fallback.inventory.display(),
                    fallback.ip
                ),
                None if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() => {
                    format!("{host} is an IP address, nothing to resolve (works in HOME and EDGE mode)")
                }
                None if looked_up => format!("{host} resolves by name (EDGE mode)"),
                None => format!("{host} resolves"),
            };
            report.ok("resolve", detail);
            Some(target)
        }
        Err(ConfigError::Unresolvable {
            host,
            inventory,
            inventory_found,
            ..
        }) => {
            let why = match (inventory, inventory_found) {
                (Some(path), true) => format!("the node inventory {} has no entry for it", path.display()),
                (Some(path), false) => format!("there is no node inventory at {}", path.display()),
                (None, _) => "there is no conf dir with a node inventory".to_owned(),
            };
            report.fail(
                "resolve",
                format!("{host} does not resolve and {why}"),
                format!(
                    "set REDIS_HOST to the Redis IP (export REDIS_HOST={EXAMPLE_IP}) or pass -h IP; or list {host} with its ip in nodes.yaml of the conf dir (HOME mode)"
                ),
            );
            None
        }
        Err(err) => {
            report.fail("resolve", err.to_string(), "fix the node inventory named above");
            None
        }
    }
}

async fn tcp_check(endpoint: &Endpoint, report: &mut Report) -> bool {
    let started = Instant::now();
    let connect = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port));
    let host = &endpoint.host;
    match tokio::time::timeout(NETWORK_TIMEOUT, connect).await {
        Ok(Ok(stream)) => {
            let peer = stream
                .peer_addr()
                .map_or_else(|_| endpoint.to_string(), |addr| addr.to_string());
            report.ok("tcp", format!("connected to {peer} in {}", millis(started.elapsed())));
            true
        }
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            report.fail(
                "tcp",
                format!("{endpoint} refused the connection"),
                "nothing listens there: is redis-server running (`tatbot-state server status` on its host, `tatbot-state server start` to start it)? is REDIS_PORT right?",
            );
            false
        }
        Ok(Err(err)) => {
            report.fail(
                "tcp",
                format!("cannot connect to {endpoint}: {err}"),
                format!("check the network: `ping {host}`; is REDIS_HOST right?"),
            );
            false
        }
        Err(_) => {
            report.fail(
                "tcp",
                format!("no answer from {endpoint} within {} s", NETWORK_TIMEOUT.as_secs()),
                format!("the host is down or a firewall drops the packets: `ping {host}`; is REDIS_HOST right?"),
            );
            false
        }
    }
}

/// An authenticated connection and what the server told about passwords.
struct Session {
    connection: MultiplexedConnection,
    /// The endpoint to open further connections with: without the password when the
    /// server has none (it would refuse the `AUTH`).
    endpoint: Endpoint,
    /// Whether the server refused `PING` before `AUTH` (`NOAUTH`).
    password_required: bool,
}

/// Sends `PING` before authenticating (does the server want a password?), then `AUTH` with the
/// configured credentials, and reports which of the usual mistakes it is.
async fn auth_check(endpoint: &Endpoint, report: &mut Report) -> Option<Session> {
    let mut connection = match link::connect_unauthenticated(endpoint, NETWORK_TIMEOUT).await {
        Ok(connection) => connection,
        Err(err) => {
            report.fail(
                "auth",
                format!("cannot open a Redis connection: {}", link::one_line(&err)),
                "see the server log",
            );
            return None;
        }
    };
    let password_required = match link::call::<String>(&mut connection, &redis::cmd("PING"), NETWORK_TIMEOUT).await {
        Ok(_) => false,
        Err(err) if err.code() == Some("NOAUTH") => true,
        Err(err) => {
            let (detail, hint) = match link::classify(&err) {
                Failure::Unreachable => (
                    format!(
                        "the server accepted the connection but did not answer PING: {}",
                        link::one_line(&err)
                    ),
                    "is redis-server paused or overloaded? is something else on this port? see the server log",
                ),
                _ => (
                    format!("the server does not answer PING like Redis: {}", link::one_line(&err)),
                    "is REDIS_PORT the Redis port?",
                ),
            };
            report.fail("auth", detail, hint);
            return None;
        }
    };
    let user = endpoint.username.as_deref();
    let who = user.map_or_else(|| "the default user".to_owned(), |user| format!("user {user}"));
    let Some(password) = &endpoint.password else {
        if password_required {
            report.fail(
                "auth",
                "the server requires a password (NOAUTH) and none is configured",
                "set REDIS_PASSWORD (in the env file or the environment) or pass -a; ACL users also need REDIS_USERNAME or --user",
            );
            return None;
        }
        match user {
            Some(user) => report.warn(
                "auth",
                format!(
                    "user {user} is configured without a password, so it is not used; connected as the default user"
                ),
                "set REDIS_PASSWORD for the ACL user, or drop REDIS_USERNAME",
            ),
            None => report.ok("auth", "no password needed, none configured"),
        }
        return Some(Session {
            connection,
            endpoint: endpoint.clone(),
            password_required,
        });
    };
    let mut auth = redis::cmd("AUTH");
    if let Some(user) = user {
        auth.arg(user);
    }
    auth.arg(password);
    let mut session_endpoint = endpoint.clone();
    match link::call::<String>(&mut connection, &auth, NETWORK_TIMEOUT).await {
        Ok(_) => report.ok("auth", format!("password accepted for {who}")),
        Err(err) if err.code() == Some("WRONGPASS") => {
            let (detail, hint) = match user {
                Some(user) => (
                    format!("user {user}: wrong password, or no such user, or the user is disabled (WRONGPASS)"),
                    "check REDIS_USERNAME/--user and REDIS_PASSWORD/-a; `ACL LIST` on the server shows its users",
                ),
                None => (
                    "wrong password (WRONGPASS)".to_owned(),
                    "check REDIS_PASSWORD (env file, environment) or -a against requirepass in the server's redis.conf",
                ),
            };
            report.fail("auth", detail, hint);
            return None;
        }
        Err(err) if user.is_none() && err.to_string().contains("without any password configured") => {
            report.warn(
                "auth",
                "a password is configured but the server has none; it is ignored",
                "remove REDIS_PASSWORD, or set requirepass on the server (`tatbot-state server start -a ...`)",
            );
            session_endpoint.password = None;
        }
        Err(err) => {
            report.fail(
                "auth",
                format!("AUTH failed: {}", link::one_line(&err)),
                "check REDIS_USERNAME and REDIS_PASSWORD",
            );
            return None;
        }
    }
    Some(Session {
        connection,
        endpoint: session_endpoint,
        password_required,
    })
}

async fn ping_check(endpoint: &Endpoint, connection: &mut MultiplexedConnection, report: &mut Report) -> bool {
    match link::call::<String>(connection, &redis::cmd("PING"), NETWORK_TIMEOUT).await {
        Ok(reply) if reply == "PONG" => {
            report.ok("ping", format!("{endpoint} answered PONG"));
            true
        }
        Ok(reply) => {
            report.fail(
                "ping",
                format!("{endpoint} answered PING with {reply:?}"),
                "is REDIS_PORT the Redis port?",
            );
            false
        }
        Err(err) if link::classify(&err) == Failure::Permission => {
            let user = endpoint.username.as_deref().unwrap_or("default");
            report.fail(
                "ping",
                format!("ACL user {user} may not run PING (NOPERM)"),
                "grant the user +@connection (and the tatbot key and channel patterns)",
            );
            false
        }
        Err(err) => {
            report.fail(
                "ping",
                format!("PING failed: {}", link::one_line(&err)),
                "see the server log",
            );
            false
        }
    }
}

async fn latency_check(connection: &mut MultiplexedConnection, report: &mut Report) {
    let mut samples = Vec::with_capacity(LATENCY_PINGS);
    for _ in 0..LATENCY_PINGS {
        let started = Instant::now();
        if let Err(err) = link::call::<String>(connection, &redis::cmd("PING"), NETWORK_TIMEOUT).await {
            report.warn(
                "latency",
                format!("a PING failed: {}", link::one_line(&err)),
                "the connection is flaky: check the network and the server load",
            );
            return;
        }
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    let median = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    let detail = format!(
        "median {} over {LATENCY_PINGS} PINGs (max {})",
        millis(median),
        millis(max)
    );
    if median > LATENCY_WARN {
        report.warn(
            "latency",
            detail,
            format!(
                "above {} on a LAN: check Wi-Fi, the network and the server load",
                millis(LATENCY_WARN)
            ),
        );
    } else {
        report.ok("latency", detail);
    }
}

/// Reports the version; returns `INFO server persistence` for the persistence check.
async fn version_check(
    connection: &mut MultiplexedConnection,
    report: &mut Report,
) -> Option<std::collections::BTreeMap<String, String>> {
    let info = match link::info(connection, &["server", "persistence"], NETWORK_TIMEOUT).await {
        Ok(info) => info,
        Err(err) => {
            report.warn(
                "version",
                format!("INFO failed: {}", link::one_line(&err)),
                "the ACL user needs +info to be diagnosed",
            );
            return None;
        }
    };
    let version = info.get("redis_version").cloned().unwrap_or_else(|| "?".to_owned());
    let mode = info
        .get("redis_mode")
        .map_or_else(String::new, |mode| format!(" ({mode})"));
    let uptime = info
        .get("uptime_in_seconds")
        .map_or_else(String::new, |secs| format!(", up {secs} s"));
    let detail = format!("redis {version}{mode}{uptime}");
    let major = version.split('.').next().and_then(|major| major.parse::<u32>().ok());
    match major {
        Some(major) if major < MIN_MAJOR_VERSION => report.fail(
            "version",
            detail,
            "tatbot-state needs Redis 6 or newer (it speaks RESP3): install Redis 7",
        ),
        Some(_) => report.ok("version", detail),
        None => report.warn("version", detail, "could not read the version from INFO"),
    }
    Some(info)
}

async fn persistence_check(
    connection: &mut MultiplexedConnection,
    info: Option<&std::collections::BTreeMap<String, String>>,
    report: &mut Report,
) {
    let Some(info) = info else {
        report.skip("persistence", "skipped: INFO is not available");
        return;
    };
    let field = |name: &str| info.get(name).map_or("?", String::as_str);
    let fsync = link::config_get(connection, "appendfsync", NETWORK_TIMEOUT)
        .await
        .ok()
        .flatten();
    let fsync_text = fsync.as_deref().unwrap_or("?");
    if field("aof_last_write_status") == "err" {
        report.fail(
            "persistence",
            "the last AOF write failed (aof_last_write_status:err)",
            "the disk may be full or read-only: check it and the server log",
        );
        return;
    }
    if field("rdb_last_bgsave_status") == "err" {
        report.fail(
            "persistence",
            "the last RDB snapshot failed (rdb_last_bgsave_status:err); Redis refuses writes until one succeeds",
            "check disk space and permissions of the data dir and the server log",
        );
        return;
    }
    if field("aof_enabled") != "1" {
        report.warn(
            "persistence",
            "AOF is off: state written since the last snapshot is lost when Redis stops",
            "run the server with the project's config (`tatbot-state server start`), or set appendonly yes and appendfsync everysec",
        );
        return;
    }
    let detail = format!(
        "AOF on, appendfsync {fsync_text}, last write {}, last rewrite {}",
        field("aof_last_write_status"),
        field("aof_last_bgrewrite_status")
    );
    match fsync.as_deref() {
        Some("everysec") => report.ok("persistence", detail),
        Some(_) => report.warn(
            "persistence",
            detail,
            "the project's config uses appendfsync everysec: \"no\" can lose more than a second of state, \"always\" slows every write",
        ),
        None => report.warn("persistence", detail, "CONFIG GET appendfsync was refused; the ACL user needs +config|get to check it"),
    }
}

async fn exposure_check(connection: &mut MultiplexedConnection, password_required: bool, report: &mut Report) {
    let bind = link::config_get(connection, "bind", NETWORK_TIMEOUT).await;
    let protected = link::config_get(connection, "protected-mode", NETWORK_TIMEOUT).await;
    let (Ok(Some(bind)), Ok(Some(protected))) = (bind, protected) else {
        let password = if password_required {
            "password required"
        } else {
            "no password"
        };
        report.skip("exposure", format!("skipped: CONFIG GET is not permitted ({password})"));
        return;
    };
    let entries: Vec<&str> = bind.split_whitespace().collect();
    let exposed: Vec<&str> = entries
        .iter()
        .copied()
        .filter(|entry| !link::is_loopback_bind(entry))
        .collect();
    let listens = if entries.is_empty() {
        "all interfaces".to_owned()
    } else {
        entries.join(" ")
    };
    let password = if password_required {
        "password required"
    } else {
        "no password"
    };
    let detail = format!("bind {listens}, protected-mode {protected}, {password}");
    if password_required {
        report.ok("exposure", detail);
    } else if exposed.is_empty() && !entries.is_empty() {
        report.ok(
            "exposure",
            format!("{detail} (loopback only: other nodes cannot connect)"),
        );
    } else {
        report.warn(
            "exposure",
            format!("{detail}: anyone who can reach {} can read and change robot state", if exposed.is_empty() { listens.clone() } else { exposed.join(" ") }),
            "fine on the robot's private LAN (the ops doc's setup); elsewhere set a password (`tatbot-state server start -a ...`) or bind loopback only",
        );
    }
}

async fn clock_check(connection: &mut MultiplexedConnection, report: &mut Report) {
    let started = Instant::now();
    let sent_at = SystemTime::now();
    let time: Vec<String> = match link::call(connection, &redis::cmd("TIME"), NETWORK_TIMEOUT).await {
        Ok(time) => time,
        Err(err) => {
            report.warn(
                "clock",
                format!("TIME failed: {}", link::one_line(&err)),
                "the ACL user needs +time to check the clock",
            );
            return;
        }
    };
    let round_trip = started.elapsed();
    let parsed = match time.as_slice() {
        [secs, micros] => secs.parse::<f64>().ok().zip(micros.parse::<f64>().ok()),
        _ => None,
    };
    let Some((secs, micros)) = parsed else {
        report.warn("clock", format!("TIME answered {time:?}"), "is this a Redis server?");
        return;
    };
    let server = secs + micros / 1e6;
    // The server read its clock about halfway through the round trip.
    let local = sent_at
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
        + round_trip.as_secs_f64() / 2.0;
    let skew = server - local;
    let direction = if skew >= 0.0 { "ahead of" } else { "behind" };
    let detail = format!("Redis's clock is {:.3} s {direction} this node's", skew.abs());
    if skew.abs() > SKEW_WARN_SECS {
        report.warn(
            "clock",
            detail,
            format!("more than {SKEW_WARN_SECS} s: sync the clocks with NTP (chrony); every node stamps state with its own clock"),
        );
    } else {
        report.ok("clock", detail);
    }
}

async fn pubsub_check(endpoint: &Endpoint, connection: &mut MultiplexedConnection, report: &mut Report) {
    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
    );
    let channel = tatbot_state::keys::doctor_channel(&nonce);
    let started = Instant::now();
    let mut pubsub = match link::connect_pubsub(endpoint, NETWORK_TIMEOUT).await {
        Ok(pubsub) => pubsub,
        Err(err) => {
            report.fail(
                "pubsub",
                format!("cannot open a pub/sub connection: {}", link::one_line(&err)),
                "see the server log",
            );
            return;
        }
    };
    if let Err(err) = link::within(NETWORK_TIMEOUT, pubsub.subscribe(&channel)).await {
        report.fail(
            "pubsub",
            format!("SUBSCRIBE {channel} failed: {}", link::one_line(&err)),
            pubsub_hint(&err),
        );
        return;
    }
    let mut messages = pubsub.into_on_message();
    let publish = redis::cmd("PUBLISH").arg(&channel).arg(&nonce).clone();
    let receivers = match link::call::<i64>(connection, &publish, NETWORK_TIMEOUT).await {
        Ok(receivers) => receivers,
        // A read-only role (the `viewer` of config/redis/users.acl) may subscribe but not
        // publish, and needs no more: the subscribing half is what it uses.
        Err(err) if matches!(link::classify(&err), Failure::Permission) => {
            let user = endpoint.username.as_deref().unwrap_or("default");
            report.ok(
                "pubsub",
                format!(
                    "SUBSCRIBE {channel} works; user {user} may not PUBLISH, so the round trip was skipped (right for a read-only viewer; a node that writes state needs +publish)"
                ),
            );
            return;
        }
        Err(err) => {
            report.fail(
                "pubsub",
                format!("PUBLISH {channel} failed: {}", link::one_line(&err)),
                pubsub_hint(&err),
            );
            return;
        }
    };
    let received = tokio::time::timeout(NETWORK_TIMEOUT, async {
        while let Some(message) = messages.next().await {
            if message.get_channel_name() == channel && message.get_payload_bytes() == nonce.as_bytes() {
                return true;
            }
        }
        false
    })
    .await;
    match received {
        Ok(true) => report.ok("pubsub", format!("round trip on {channel} in {}", millis(started.elapsed()))),
        Ok(false) => report.fail("pubsub", "the pub/sub connection closed before the message arrived", "see the server log"),
        Err(_) => report.fail(
            "pubsub",
            format!("published on {channel} ({receivers} receivers) but nothing arrived within {} s", NETWORK_TIMEOUT.as_secs()),
            "is a proxy between this node and Redis dropping pub/sub? `redis-cli psubscribe 'stroke:events:*'` shows live events",
        ),
    }
}

fn pubsub_hint(err: &redis::RedisError) -> &'static str {
    match link::classify(err) {
        Failure::Permission => {
            "the ACL user needs +subscribe +publish and access to the channels (&* or &tatbot:* &stroke:*)"
        }
        _ => "see the server log",
    }
}

/// A duration in milliseconds with one decimal, e.g. `0.3 ms`.
fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

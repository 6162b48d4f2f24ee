//! The high-availability parts of `server` (docs/HA.md): the HA block appended to a primary's
//! or replica's config (`--ha`, `--replica-of HOST:PORT`), `server sentinel start`, and the
//! replication lines of `server status`.
//!
//! Both configs are embedded like the main template: `config/redis/ha.conf` is appended as is
//! (plus `masterauth` and `replicaof`), and `config/redis/sentinel.conf` is rendered once into
//! the Sentinel's own directory. A Sentinel rewrites its config as it learns the fleet (the
//! current master after a failover, the other Sentinels), so a start finds an existing config
//! and keeps it: re-rendering would make it forget a failover.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tatbot_state::Endpoint;
use tatbot_state::config;

use crate::cmd::server::conf::{bind_addresses, quote};
use crate::cmd::server::{
    Probe, STARTUP_TIMEOUT, create_private_dir, layout, print_json, probe, process, write_private_file,
};
use crate::ctx::GlobalArgs;
use crate::exit;

/// `config/redis/ha.conf`, appended for `--ha` and `--replica-of`.
pub const HA_CONF: &str = include_str!("../../../../../config/redis/ha.conf");
/// `config/redis/sentinel.conf`, the Sentinel template.
pub const SENTINEL_TEMPLATE: &str = include_str!("../../../../../config/redis/sentinel.conf");
/// The Sentinel port when `--port` is not given.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// How long `redis-server --sentinel` may take to check its config and fork.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `HOST:PORT` (`[v6]:PORT` for IPv6) into a host and a port.
///
/// # Errors
///
/// Text that is not `HOST:PORT`, with the form expected.
pub fn parse_host_port(text: &str, flag: &str) -> anyhow::Result<(String, u16)> {
    let parsed = text.rsplit_once(':').and_then(|(host, port)| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse::<u16>().ok().filter(|port| *port != 0)?;
        let valid = !host.is_empty() && !host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"');
        valid.then(|| (host.to_owned(), port))
    });
    parsed.with_context(|| format!("{flag} {text:?} is not HOST:PORT (e.g. {flag} 192.168.1.97:6379)"))
}

/// The text appended to a data server's config: the HA settings, `masterauth` (so it can sync
/// from whichever member is master) and, for a replica, `replicaof`.
pub fn ha_block(replica_of: Option<&(String, u16)>, password: Option<&str>) -> String {
    let mut text = format!("\n# High availability (config/redis/ha.conf).\n{HA_CONF}");
    if let Some(password) = password {
        let _ = writeln!(text, "masterauth {}", quote(password));
    }
    if let Some((host, port)) = replica_of {
        let _ = writeln!(text, "replicaof {} {port}", quote(host));
    }
    text
}

/// Flags of `server sentinel`.
#[derive(Debug, clap::Args)]
pub struct SentinelArgs {
    /// What to do.
    #[command(subcommand)]
    action: SentinelAction,
}

/// The `server sentinel` subcommands.
#[derive(Debug, clap::Subcommand)]
enum SentinelAction {
    /// Start a Sentinel in the background that monitors the master (config/redis/sentinel.conf)
    Start(SentinelStartArgs),
}

/// Flags of `server sentinel start`.
#[derive(Debug, clap::Args)]
struct SentinelStartArgs {
    /// The master to monitor, HOST:PORT (its address as the other nodes reach it)
    #[arg(long, value_name = "HOST:PORT")]
    monitor: String,
    /// How many Sentinels must agree that the master is down (2 of 3)
    #[arg(long, default_value_t = 2)]
    quorum: u32,
    /// The Sentinel's port
    #[arg(long = "sentinel-port", default_value_t = DEFAULT_SENTINEL_PORT, value_name = "PORT")]
    port: u16,
    /// Also listen on this address, e.g. the LAN IP (repeatable; loopback is always bound)
    #[arg(long = "bind", value_name = "ADDR")]
    bind: Vec<IpAddr>,
    /// Base dir; the Sentinel keeps its files in DIR/sentinel-PORT [default: as for server start]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Runs `server sentinel`.
pub async fn run(global: &GlobalArgs, args: SentinelArgs) -> anyhow::Result<u8> {
    match args.action {
        SentinelAction::Start(start_args) => start(global, start_args).await,
    }
}

/// The summary `server sentinel start` prints.
#[derive(Debug, Serialize)]
struct Started {
    already_running: bool,
    pid: u32,
    port: u16,
    master_name: String,
    monitor: String,
    quorum: u32,
    conf: PathBuf,
    log: PathBuf,
}

async fn start(global: &GlobalArgs, args: SentinelStartArgs) -> anyhow::Result<u8> {
    let (master_host, master_port) = parse_host_port(&args.monitor, "--monitor")?;
    if args.quorum == 0 {
        anyhow::bail!("--quorum 0 would let no Sentinel decide: use 2 with three Sentinels");
    }
    // Only the password and the Sentinel settings matter; the Redis host is never looked up.
    let target = config::resolve(&global.config_inputs(), &|_| true)?;
    let sentinel = global.sentinel()?;
    let master_name = sentinel.as_ref().map_or_else(
        || tatbot_state::sentinel::DEFAULT_MASTER_NAME.to_owned(),
        |settings| settings.master_name.value.clone(),
    );
    let sentinel_password = sentinel.as_ref().and_then(|settings| settings.password.value.clone());
    let base = layout(args.dir)?.base.join(format!("sentinel-{}", args.port));
    let conf = base.join("sentinel.conf");
    let log = base.join("sentinel.log");
    let pidfile = base.join("sentinel.pid");
    let endpoint = Endpoint {
        host: "127.0.0.1".to_owned(),
        port: args.port,
        username: None,
        password: sentinel_password.clone(),
    };
    let started = |pid: u32, already_running: bool| Started {
        already_running,
        pid,
        port: args.port,
        master_name: master_name.clone(),
        monitor: format!("{master_host}:{master_port}"),
        quorum: args.quorum,
        conf: conf.clone(),
        log: log.clone(),
    };
    let running = process::read_pidfile(&pidfile).filter(|pid| process::is_alive(*pid));
    if let Some(pid) = running
        && let Probe::Redis { pid: Some(answering) } = probe(&endpoint).await
        && answering == pid
    {
        print_started(global, &started(pid, true))?;
        return Ok(exit::SUCCESS);
    }
    if !matches!(probe(&endpoint).await, Probe::Nothing) {
        anyhow::bail!(
            "port {} on 127.0.0.1 is already in use: pick another with --sentinel-port",
            args.port
        );
    }
    create_private_dir(&base)?;
    if conf.exists() {
        tracing::info!(conf = %conf.display(), "keeping the existing sentinel config: it holds what the sentinel learned");
    } else {
        let mut auth = Vec::new();
        if let Some(password) = &target.password.value {
            auth.push(format!("sentinel auth-pass {master_name} {}", quote(password)));
        }
        if let Some(password) = &sentinel_password {
            auth.push(format!("requirepass {}", quote(password)));
            auth.push(format!("sentinel sentinel-pass {}", quote(password)));
        }
        let utf8 = |path: &std::path::Path| {
            path.to_str()
                .map(quote)
                .with_context(|| format!("path {} is not UTF-8: choose another --dir", path.display()))
        };
        let values = [
            ("bind", bind_addresses(&args.bind).join(" ")),
            ("port", args.port.to_string()),
            ("pidfile", utf8(&pidfile)?),
            ("logfile", utf8(&log)?),
            ("dir", utf8(&base)?),
            ("master_name", master_name.clone()),
            ("master_host", quote(&master_host)),
            ("master_port", master_port.to_string()),
            ("quorum", args.quorum.to_string()),
            ("auth", auth.join("\n")),
        ];
        let mut text = SENTINEL_TEMPLATE.to_owned();
        for (name, value) in values {
            text = text.replace(&format!("{{{{{name}}}}}"), &value);
        }
        write_private_file(&conf, &text)?;
    }
    let binary = process::redis_server_binary()?;
    let launch = tokio::process::Command::new(&binary)
        .arg(&conf)
        .arg("--sentinel")
        .current_dir(&base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LAUNCH_TIMEOUT, launch)
        .await
        .map_err(|_| anyhow::anyhow!("the sentinel did not fork within 10 s: see {}", log.display()))?
        .with_context(|| format!("running {}: check that it is executable", binary.display()))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        anyhow::bail!("redis-server --sentinel refused {}: {said}", conf.display());
    }
    let ready = process::poll_until(STARTUP_TIMEOUT, || async {
        let pid = process::read_pidfile(&pidfile)?;
        match probe(&endpoint).await {
            Probe::Redis { pid: Some(answering) } if answering == pid => Some(pid),
            _ => None,
        }
    })
    .await;
    let Some(pid) = ready else {
        anyhow::bail!(
            "the sentinel did not answer on port {} within {} s: {} (log {})",
            args.port,
            STARTUP_TIMEOUT.as_secs(),
            process::log_tail(&log, 4),
            log.display()
        );
    };
    print_started(global, &started(pid, false))?;
    Ok(exit::SUCCESS)
}

fn print_started(global: &GlobalArgs, started: &Started) -> anyhow::Result<()> {
    if global.json {
        return print_json(started);
    }
    let what = if started.already_running {
        "is already running"
    } else {
        "started"
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sentinel {what}: pid {}, port {}, monitoring master {} at {} (quorum {})",
        started.pid, started.port, started.master_name, started.monitor, started.quorum
    );
    let _ = writeln!(out, "  config  {}", started.conf.display());
    let _ = writeln!(out, "  log     {}", started.log.display());
    let _ = writeln!(
        out,
        "clients: export REDIS_SENTINELS=HOST:{},... REDIS_MASTER_NAME={}",
        started.port, started.master_name
    );
    crate::out!("{out}")?;
    Ok(())
}

/// The replication part of `server status`.
#[derive(Debug, Default, Serialize)]
pub struct Replication {
    /// `master` or `replica`.
    pub role: Option<String>,
    /// `master_repl_offset`: bytes of the replication stream so far.
    pub offset: Option<u64>,
    /// For a replica: its master, the link state and how far it lags.
    pub master: Option<MasterLink>,
    /// For a master: its replicas and how far each lags.
    pub replicas: Vec<ReplicaLag>,
}

/// A replica's view of its master.
#[derive(Debug, Serialize)]
pub struct MasterLink {
    /// `host:port`.
    pub address: String,
    /// `up` or `down`.
    pub link_status: Option<String>,
    /// Seconds since the master last talked.
    pub last_io_seconds_ago: Option<i64>,
}

/// A master's view of one replica.
#[derive(Debug, Serialize)]
pub struct ReplicaLag {
    /// `ip:port`.
    pub address: String,
    /// `online`, `wait_bgsave`, `send_bulk`.
    pub state: String,
    /// Bytes the replica has not acknowledged yet.
    pub lag_bytes: Option<u64>,
    /// Seconds since its last acknowledgement.
    pub lag_seconds: Option<u64>,
}

impl Replication {
    /// Reads the `replication` section of `INFO`.
    pub fn from_info(info: &BTreeMap<String, String>) -> Replication {
        let role = info.get("role").map(|role| match role.as_str() {
            "slave" => "replica".to_owned(),
            other => other.to_owned(),
        });
        let offset: Option<u64> = info.get("master_repl_offset").and_then(|value| value.parse().ok());
        let master = match (info.get("master_host"), info.get("master_port")) {
            (Some(host), Some(port)) => Some(MasterLink {
                address: format!("{host}:{port}"),
                link_status: info.get("master_link_status").cloned(),
                last_io_seconds_ago: info
                    .get("master_last_io_seconds_ago")
                    .and_then(|value| value.parse().ok()),
            }),
            _ => None,
        };
        let replicas = info
            .iter()
            .filter(|(field, _)| field.strip_prefix("slave").is_some_and(|n| n.parse::<u32>().is_ok()))
            .map(|(_, value)| {
                let fields: BTreeMap<&str, &str> = value.split(',').filter_map(|pair| pair.split_once('=')).collect();
                let acknowledged = fields.get("offset").and_then(|value| value.parse::<u64>().ok());
                ReplicaLag {
                    address: format!(
                        "{}:{}",
                        fields.get("ip").unwrap_or(&"?"),
                        fields.get("port").unwrap_or(&"?")
                    ),
                    state: (*fields.get("state").unwrap_or(&"?")).to_owned(),
                    lag_bytes: offset
                        .zip(acknowledged)
                        .map(|(ours, theirs)| ours.saturating_sub(theirs)),
                    lag_seconds: fields.get("lag").and_then(|value| value.parse().ok()),
                }
            })
            .collect();
        Replication {
            role,
            offset,
            master,
            replicas,
        }
    }

    /// The `replication` line(s) of the status text.
    pub fn text(&self) -> String {
        let unknown = || "?".to_owned();
        let offset = self.offset.map_or_else(unknown, |offset| offset.to_string());
        let mut out = String::new();
        let role = self.role.clone().unwrap_or_else(unknown);
        match &self.master {
            Some(master) => {
                let _ = writeln!(
                    out,
                    "  role      {role} of {}, link {}, last heard {} s ago, offset {offset}",
                    master.address,
                    master.link_status.clone().unwrap_or_else(unknown),
                    master.last_io_seconds_ago.map_or_else(unknown, |s| s.to_string())
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  role      {role}, offset {offset}, {} replica(s)",
                    self.replicas.len()
                );
            }
        }
        for replica in &self.replicas {
            let _ = writeln!(
                out,
                "  replica   {} {}, lag {} bytes, {} s since its last ack",
                replica.address,
                replica.state,
                replica.lag_bytes.map_or_else(unknown, |n| n.to_string()),
                replica.lag_seconds.map_or_else(unknown, |n| n.to_string())
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parses_and_explains() {
        assert_eq!(
            parse_host_port("eek:6379", "--replica-of").unwrap(),
            ("eek".to_owned(), 6379)
        );
        assert_eq!(
            parse_host_port("[::1]:7000", "--monitor").unwrap(),
            ("::1".to_owned(), 7000)
        );
        let err = parse_host_port("eek", "--replica-of").unwrap_err().to_string();
        assert_eq!(
            err,
            "--replica-of \"eek\" is not HOST:PORT (e.g. --replica-of 192.168.1.97:6379)"
        );
        assert!(parse_host_port("eek:0", "--monitor").is_err());
    }

    #[test]
    fn replication_reads_both_roles() {
        let info: BTreeMap<String, String> = [
            ("role", "master"),
            ("master_repl_offset", "1000"),
            ("slave0", "ip=10.0.0.2,port=6379,state=online,offset=900,lag=1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let replication = Replication::from_info(&info);
        assert_eq!(replication.replicas[0].lag_bytes, Some(100));
        assert!(replication.text().contains("10.0.0.2:6379 online, lag 100 bytes, 1 s"));
        let block = ha_block(Some(&("eek".to_owned(), 6379)), Some("pw"));
        assert!(block.contains("min-replicas-to-write 1"));
        assert!(
            block.ends_with("masterauth \"pw\"\nreplicaof \"eek\" 6379\n"),
            "{block}"
        );
    }
}

//! [`SentinelCluster`]: a primary, its replicas and three Sentinels, all throwaway processes on
//! loopback, for failover tests.
//!
//! Every member is a [`RedisServer`] with its own temporary directory; the Sentinels run the same
//! `redis-server` binary with `--sentinel` and a generated `sentinel.conf` (Debian's
//! `redis-sentinel` package is only that binary under another name). Starting waits, by polling
//! conditions and never by sleeping a fixed time, until every replica has synced and every
//! Sentinel knows the primary, the replicas and the other Sentinels, so a failover can start the
//! moment a test kills the primary.
//!
//! ```no_run
//! use std::time::Duration;
//! use tatbot_state_testkit::SentinelCluster;
//!
//! let mut cluster = SentinelCluster::start();
//! let old = cluster.master_port().unwrap();
//! cluster.server_mut(old).kill();
//! let new = cluster.wait_for_new_master(old, Duration::from_secs(20)).unwrap();
//! assert_ne!(old, new);
//! ```

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use crate::{POLL_INTERVAL, RedisServer};

/// The master name the Sentinels monitor unless [`ClusterBuilder::master_name`] says otherwise.
pub const DEFAULT_MASTER_NAME: &str = "tatbot";

/// How long starting waits for replicas to sync and Sentinels to discover each other. Sentinels
/// say hello every 2 s, so discovery takes a few seconds.
const AGREE_TIMEOUT: Duration = Duration::from_secs(30);

/// The timeout of one probe command sent while waiting for a condition.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How many Sentinels a cluster runs: the smallest number with a majority that survives one loss.
const SENTINELS: usize = 3;

/// Configures a [`SentinelCluster`]; obtain one with [`SentinelCluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    master_name: String,
    replicas: usize,
    password: Option<String>,
    sentinel_password: Option<String>,
    down_after: Duration,
    failover_timeout: Duration,
    data_config: Vec<(String, String)>,
}

impl Default for ClusterBuilder {
    fn default() -> ClusterBuilder {
        ClusterBuilder {
            master_name: DEFAULT_MASTER_NAME.to_owned(),
            replicas: 1,
            password: None,
            sentinel_password: None,
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(3000),
            data_config: Vec::new(),
        }
    }
}

impl ClusterBuilder {
    /// The name the Sentinels monitor the primary under.
    #[must_use]
    pub fn master_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.master_name);
        self
    }

    /// How many replicas to start (at least one; default one).
    #[must_use]
    pub fn replicas(mut self, count: usize) -> Self {
        self.replicas = count.max(1);
        self
    }

    /// The password of the data servers (`requirepass`, `masterauth`, `sentinel auth-pass`).
    /// It must be one word without quotes, as it is written into the configs unquoted.
    #[must_use]
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// The password of the Sentinels (`requirepass` and `sentinel sentinel-pass`).
    #[must_use]
    pub fn sentinel_password(mut self, password: &str) -> Self {
        self.sentinel_password = Some(password.to_owned());
        self
    }

    /// `down-after-milliseconds`: how long the primary may be silent before it is down.
    #[must_use]
    pub fn down_after(mut self, after: Duration) -> Self {
        self.down_after = after;
        self
    }

    /// A `redis.conf` directive for every data server (primary and replicas), such as
    /// `min-replicas-to-write 1`.
    #[must_use]
    pub fn data_config(mut self, key: &str, value: &str) -> Self {
        self.data_config.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts everything and waits until the Sentinels agree on the topology.
    ///
    /// # Panics
    ///
    /// With the error from [`try_start`](Self::try_start).
    pub fn start(self) -> SentinelCluster {
        match self.try_start() {
            Ok(cluster) => cluster,
            Err(err) => panic!("tatbot-state-testkit: failed to start a sentinel cluster: {err}"),
        }
    }

    /// Starts the primary, then the replicas (waiting until each has synced), then three
    /// Sentinels (waiting until each sees the primary, every replica and the two others).
    ///
    /// # Errors
    ///
    /// A process that does not start, or a topology not agreed on within 30 s.
    pub fn try_start(self) -> io::Result<SentinelCluster> {
        let data_server = |replica_of: Option<u16>| {
            let mut builder = RedisServer::builder();
            if let Some(password) = &self.password {
                builder = builder.password(password).config("masterauth", password);
            }
            for (key, value) in &self.data_config {
                builder = builder.config(key, value);
            }
            if let Some(port) = replica_of {
                builder = builder.config("replicaof", &format!("127.0.0.1 {port}"));
            }
            builder.try_start()
        };
        let primary = data_server(None)?;
        let primary_port = primary.port();
        let mut servers = vec![primary];
        for _ in 0..self.replicas {
            servers.push(data_server(Some(primary_port))?);
        }
        let deadline = Instant::now() + AGREE_TIMEOUT;
        for replica in &servers[1..] {
            wait_until(deadline, "a replica to sync", || {
                info_field(replica, "replication", "master_link_status").as_deref() == Some("up")
            })?;
        }
        let mut sentinels = Vec::with_capacity(SENTINELS);
        for _ in 0..SENTINELS {
            let name = &self.master_name;
            let mut builder = RedisServer::builder()
                .sentinel(true)
                .config("sentinel", &format!("monitor {name} 127.0.0.1 {primary_port} 2"))
                .config(
                    "sentinel",
                    &format!("down-after-milliseconds {name} {}", self.down_after.as_millis()),
                )
                .config(
                    "sentinel",
                    &format!("failover-timeout {name} {}", self.failover_timeout.as_millis()),
                );
            if let Some(password) = &self.password {
                builder = builder.config("sentinel", &format!("auth-pass {name} {password}"));
            }
            if let Some(password) = &self.sentinel_password {
                builder = builder
                    .password(password)
                    .config("sentinel", &format!("sentinel-pass {password}"));
            }
            let sentinel = builder.try_start()?;
            // Test speed only, failover time is unchanged: Redis 7 lets a Sentinel say hello and
            // poll INFO more often than its defaults (2 s, 10 s), so discovery and the return of
            // an old primary as a replica take a second or two instead of ten.
            let reply = sentinel.command(&["SENTINEL", "DEBUG", "info-period", "1000", "publish-period", "500"])?;
            if !reply.starts_with("+OK") {
                return Err(io::Error::other(format!(
                    "SENTINEL DEBUG refused: {}",
                    reply.trim_end()
                )));
            }
            sentinels.push(sentinel);
        }
        let cluster = SentinelCluster {
            master_name: self.master_name,
            servers,
            sentinels,
        };
        let replicas = self.replicas.to_string();
        let others = (SENTINELS - 1).to_string();
        for sentinel in &cluster.sentinels {
            wait_until(deadline, "the sentinels to agree", || {
                let master = cluster.sentinel_master(sentinel);
                field(&master, "num-slaves") == Some(replicas.as_str())
                    && field(&master, "num-other-sentinels") == Some(others.as_str())
                    && field(&master, "port") == Some(primary_port.to_string().as_str())
            })?;
        }
        Ok(cluster)
    }
}

/// A primary, its replicas and three Sentinels on loopback; see the module docs.
///
/// Data servers are addressed by port, because roles move: after a failover the first server
/// is no longer the primary. Dropping the cluster kills every process.
#[derive(Debug)]
pub struct SentinelCluster {
    master_name: String,
    /// The primary first, then the replicas, as started.
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl SentinelCluster {
    /// A cluster with one replica and the defaults of [`ClusterBuilder`].
    ///
    /// # Panics
    ///
    /// When it cannot start.
    pub fn start() -> SentinelCluster {
        ClusterBuilder::default().start()
    }

    /// A builder for a cluster with non-default settings.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The name the Sentinels know the primary by.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The data servers: the original primary first, then the replicas.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The data server listening on `port`.
    ///
    /// # Panics
    ///
    /// When no data server of this cluster has that port (a bug in the test).
    pub fn server(&self, port: u16) -> &RedisServer {
        match self.servers.iter().find(|server| server.port() == port) {
            Some(server) => server,
            None => panic!("no data server on port {port}"),
        }
    }

    /// The data server listening on `port`, to kill, pause or restart it.
    ///
    /// # Panics
    ///
    /// When no data server of this cluster has that port (a bug in the test).
    pub fn server_mut(&mut self, port: u16) -> &mut RedisServer {
        match self.servers.iter_mut().find(|server| server.port() == port) {
            Some(server) => server,
            None => panic!("no data server on port {port}"),
        }
    }

    /// The three Sentinels.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The Sentinels as `127.0.0.1:PORT`, the form `REDIS_SENTINELS` takes.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port()))
            .collect()
    }

    /// The master port the first Sentinel that answers reports.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels
            .iter()
            .find_map(|sentinel| master_addr(sentinel, &self.master_name))
    }

    /// Waits until every Sentinel reports a master other than `old` that itself answers `ROLE`
    /// with `master`, and returns its port; `None` after `timeout`.
    pub fn wait_for_new_master(&self, old: u16, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        let mut found = None;
        let agreed = wait_until(deadline, "a new master", || {
            let ports: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|sentinel| master_addr(sentinel, &self.master_name))
                .collect();
            let Some(Some(port)) = ports.first().copied() else {
                return false;
            };
            let agreed = port != old && ports.iter().all(|other| *other == Some(port));
            found = Some(port);
            agreed && is_master(self.server(port))
        });
        agreed.ok().and(found)
    }

    /// Waits until the server on `port` is a replica whose link to its master is up.
    ///
    /// # Errors
    ///
    /// `TimedOut` after `timeout`.
    pub fn wait_for_replica(&self, port: u16, timeout: Duration) -> io::Result<()> {
        let server = self.server(port);
        wait_until(Instant::now() + timeout, "a replica to sync", || {
            info_field(server, "replication", "role").as_deref() == Some("slave")
                && info_field(server, "replication", "master_link_status").as_deref() == Some("up")
        })
    }

    /// `SENTINEL MASTER name` from one Sentinel, as raw RESP (empty on failure).
    fn sentinel_master(&self, sentinel: &RedisServer) -> String {
        sentinel
            .command_with_timeout(&["SENTINEL", "MASTER", &self.master_name], PROBE_TIMEOUT)
            .unwrap_or_default()
    }
}

/// Polls `condition` until it holds or `deadline` passes.
fn wait_until(deadline: Instant, what: &str, mut condition: impl FnMut() -> bool) -> io::Result<()> {
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out waiting for {what}"),
            ));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The payload lines of a raw RESP reply (bulk and simple strings, integers), in order.
fn payload(reply: &str) -> Vec<&str> {
    reply
        .split("\r\n")
        .filter(|line| !line.is_empty() && !line.starts_with(['*', '$', '%', '~']))
        .map(|line| line.strip_prefix([':', '+']).unwrap_or(line))
        .collect()
}

/// The value after `name` in a flat field/value reply such as `SENTINEL MASTER`.
fn field<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    let lines = payload(reply);
    lines
        .chunks(2)
        .find(|pair| pair.first() == Some(&name))
        .and_then(|pair| pair.get(1).copied())
}

/// One `INFO section` field of a server.
fn info_field(server: &RedisServer, section: &str, name: &str) -> Option<String> {
    let info = server.command_with_timeout(&["INFO", section], PROBE_TIMEOUT).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

/// The master port a Sentinel reports for `name`.
fn master_addr(sentinel: &RedisServer, name: &str) -> Option<u16> {
    let reply = sentinel
        .command_with_timeout(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name], PROBE_TIMEOUT)
        .ok()?;
    payload(&reply).get(1)?.parse().ok()
}

/// Whether a server answers `ROLE` with `master`.
fn is_master(server: &RedisServer) -> bool {
    server
        .command_with_timeout(&["ROLE"], PROBE_TIMEOUT)
        .is_ok_and(|reply| payload(&reply).first() == Some(&"master"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_flat_replies() {
        let reply = "*4\r\n$4\r\nname\r\n$6\r\ntatbot\r\n$4\r\nport\r\n$4\r\n6379\r\n";
        assert_eq!(field(reply, "port"), Some("6379"));
        assert_eq!(field(reply, "ip"), None);
        assert_eq!(payload("*3\r\n$6\r\nmaster\r\n:42\r\n*0\r\n"), vec!["master", "42"]);
    }
}
